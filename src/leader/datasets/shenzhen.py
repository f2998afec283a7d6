"""NLM tuberculosis sets: Shenzhen (China) and Montgomery County (USA).

Source: Jaeger et al., "Two public chest X-ray datasets for computer-aided screening of
pulmonary diseases", Quant. Imaging Med. Surg. 4(6), 2014; the NLM release folders
``ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png`` + ``ClinicalReadings/CHNCXR_0001_0.txt``
and ``MontgomerySet/CXR_png/MCUCXR_0001_0.png`` + ``ClinicalReadings/MCUCXR_0001_0.txt``
(+ ``ManualMask/`` lung masks for Montgomery).

Format
------
* File names ``CHNCXR_<nnnn>_<t>.png`` (Shenzhen, 662 images) and ``MCUCXR_<nnnn>_<t>.png``
  (Montgomery, 138 images): ``t`` = 0 normal, 1 manifestation of tuberculosis. The name is
  the label; no CSV.
* Clinical readings, one text file per image. Shenzhen: first line sex and age
  (``male 35yrs``, ``female  24yrs``, ``male 9 month``), then the reading (``normal`` or
  e.g. ``STB,ATB in left upper field``). Montgomery: ``Patient's Sex: F``, ``Patient's
  Age: 040Y``, then the reading. A missing or unparseable reading leaves ``sex`` /
  ``age`` blank / NaN (counted in one :class:`UnreadableRowWarning`).

Output
------
* Dataset ``shenzhen`` or ``montgomery`` (from the prefix); ``id`` ``"<dataset>/<stem>"``;
  ``patient_id`` = ``<prefix>_<nnnn>`` (one image per patient in both sets).
* Label ``Tuberculosis`` = ``t``; ``normal`` = (``t`` == 0). Extras ``sex`` (``M``/``F``/``""``),
  ``age`` (years, float; months / days converted), ``reading`` (the text after the header
  lines).
* ``view`` ``UNKNOWN`` by default: the publication describes both sets as frontal (PA for
  Montgomery), but the files carry no view; pass ``view="PA"`` to state it.
* ``split`` ``train`` (no official split). Files in folders whose name contains ``mask``
  are not radiographs and are skipped. BR-17: TBX11K contains Shenzhen and Montgomery
  copies; use :func:`leader.datasets.splits.duplicate_groups` before mixing them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from leader.manifest import Manifest, make_manifest, normalize_view

from ._common import UnreadableRowWarning, as_root, check_on_error, stored_sizes, table_manifest, warn_rows

__all__ = ["read_shenzhen", "parse_clinical_reading", "NLM_PREFIXES"]

NLM_PREFIXES = {"CHNCXR": "shenzhen", "MCUCXR": "montgomery"}
_NAME_RE = re.compile(r"^(CHNCXR|MCUCXR)_(\d{4})_([01])$", re.IGNORECASE)
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(y|yr|yrs|year|years|m|mo|month|months|d|day|days)?\b", re.IGNORECASE)


def _age_years(text: str) -> float:
    m = _AGE_RE.search(text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    unit = (m.group(2) or "y").lower()
    if unit.startswith("m"):
        return v / 12.0
    if unit.startswith("d"):
        return v / 365.25
    return v


def _sex(text: str) -> str:
    t = text.strip().lower()
    if t.startswith(("female", "f")):
        return "F"
    if t.startswith(("male", "m")):
        return "M"
    return ""


def parse_clinical_reading(text: str) -> tuple[str, float, str] | None:
    """``(sex 'M'/'F'/'', age in years or NaN, reading)`` from a Shenzhen or Montgomery
    clinical-reading text; None when neither sex nor age can be found."""
    lines = [ln.strip() for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    if not lines:
        return None
    if lines[0].lower().startswith("patient's sex"):  # Montgomery
        sex = _sex(lines[0].split(":", 1)[-1])
        age = float("nan")
        rest = lines[1:]
        if rest and rest[0].lower().startswith("patient's age"):
            age = _age_years(rest[0].split(":", 1)[-1])
            rest = rest[1:]
        return (sex, age, " ".join(rest)) if (sex or not np.isnan(age)) else None
    first = lines[0]
    sex = _sex(first.split()[0]) if first.split() else ""
    age = _age_years(first)
    if not sex and np.isnan(age):
        return None
    return sex, age, " ".join(lines[1:])


def _scan(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if "mask" not in d.lower())
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm") and _NAME_RE.match(stem):
                out.append(Path(dirpath) / f)
    return out


def _readings(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if "mask" not in d.lower())
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext.lower() == ".txt" and _NAME_RE.match(stem):
                out.setdefault(stem.upper(), Path(dirpath) / f)
    return out


def read_shenzhen(
    root: str | os.PathLike,
    metadata=None,
    *,
    view: str = "UNKNOWN",
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read the Shenzhen and/or Montgomery images under ``root``; see the module docstring.

    ``metadata`` is accepted for a uniform reader signature and ignored (labels are in the
    file names). Folders are listed even with ``check_files=False`` (that opens no
    image); with ``check_files=True`` sizes come from the image headers. Reading texts are
    opened in both modes (they are metadata, not pixels).
    """
    check_on_error(on_error)
    root = as_root(root)
    images = _scan(root)
    if not images:
        return make_manifest([])
    texts = _readings(root)
    stems = [p.stem for p in images]
    ms = [_NAME_RE.match(s) for s in stems]
    datasets = [NLM_PREFIXES[m.group(1).upper()] for m in ms]
    ids = np.array([f"{d}/{s}" for d, s in zip(datasets, stems)], dtype=object)
    if len(set(ids.tolist())) != len(ids):
        ids = np.array([f"{d}/{p.relative_to(root).with_suffix('').as_posix()}" for d, p in zip(datasets, images)],
                       dtype=object)
    w, h, sp_mm, keep = stored_sizes("nlm-tb", root, ids, [str(p) for p in images], check_files, on_error)
    sex, age, reading, bad = [], [], [], []
    for s in stems:
        t = texts.get(s.upper())
        parsed = None
        if t is not None:
            try:
                parsed = parse_clinical_reading(t.read_text(encoding="latin-1"))
            except OSError:
                parsed = None
        if parsed is None:
            bad.append(f"{s} ({'no reading file' if t is None else t.name})")
            parsed = ("", float("nan"), "")
        sex.append(parsed[0])
        age.append(parsed[1])
        reading.append(parsed[2])
    if bad:
        warn_rows("nlm-tb", root, bad, "have no readable clinical reading (sex/age blank)", UnreadableRowWarning)
    tb = np.array([float(m.group(3)) for m in ms], dtype=np.float32)
    parts = []
    ds_arr = np.asarray(datasets, dtype=object)
    for d in dict.fromkeys(datasets):
        sel = ds_arr == d
        parts.append(table_manifest(
            ids=ids[sel], paths=[str(p) for p, s in zip(images, sel) if s], dataset=d, split="train",
            patient_id=[f"{m.group(1).upper()}_{m.group(2)}" for m, s in zip(ms, sel) if s],
            width=w[sel], height=h[sel], pixel_spacing=sp_mm[sel], view=normalize_view(view),
            normal=tb[sel] == 0, labels={"Tuberculosis": tb[sel]},
            extras={"sex": np.asarray(sex, dtype=object)[sel], "age": np.asarray(age, dtype=float)[sel],
                    "reading": np.asarray(reading, dtype=object)[sel]},
            keep=keep[sel]))
    return parts[0] if len(parts) == 1 else Manifest.concat(parts)
