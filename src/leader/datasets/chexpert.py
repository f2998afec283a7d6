"""CheXpert (Stanford, 2019) reader, and the CheXpert-style label policies shared with MIMIC-CXR.

Source: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels
and Expert Comparison", AAAI 2019; the release files ``CheXpert-v1.0[-small]/train.csv``
and ``valid.csv``; stanfordmlgroup/chexpert-labeler issues 9 and 44; torchxrayvision
issue 22; field report BR-10.

Files
-----
``train.csv`` / ``valid.csv`` (also ``.csv.gz``), header::

    Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,
    Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,
    Pleural Effusion,Pleural Other,Fracture,Support Devices

``Path`` is ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``. The leading
``CheXpert-v1.0*`` folder is stripped **once** and the rest resolved against the image
root: ``root`` itself when it holds ``train/`` or ``valid/`` (or is named like the
prefix), else ``root/<prefix>``. Split: ``train.csv`` -> ``train``, ``valid.csv`` -> ``val``,
``test*.csv`` -> ``test`` (else from the path's second folder).

Label values (BR-10): four different things
-------------------------------------------
======  ==============================  =============================================
value   meaning                         manifest value
======  ==============================  =============================================
1.0     positive                        1
0.0     negative (mentioned, absent)    0
-1.0    uncertain                       ``uncertain`` policy (default NaN)
blank   not mentioned                   ``blank`` policy (default 0)
======  ==============================  =============================================

Policies (named, :data:`UNCERTAIN_POLICIES`, :data:`BLANK_POLICIES`):

* ``uncertain="ignore"`` (**default**): -1 -> NaN, i.e. excluded from losses and AUC (as in
  torchxrayvision); ``"ones"`` (U-Ones): -1 -> 1; ``"zeros"`` (U-Zeros): -1 -> 0. -1 is never
  kept as a value (the manifest only holds 1 / 0 / NaN) and never silently becomes 0.
* ``blank="zeros"`` (**default**, the CheXpert paper's choice: not mentioned = negative);
  ``blank="ignore"``: blank -> NaN.

Any other value (e.g. ``2``, ``x``) is unknown: NaN, with one :class:`UnknownLabelWarning`
giving the count, file, and first lines and columns.

Views (never silently frontal)
------------------------------
``Frontal/Lateral`` = ``Lateral`` -> ``LATERAL``. ``Frontal`` with ``AP/PA`` = ``AP`` /
``PA`` -> ``AP`` / ``PA``. A ``Frontal`` row whose ``AP/PA`` is ``LL`` / ``RL`` (16 + 1 rows
in the public train.csv) or blank contradicts itself: its view is ``UNKNOWN`` (counted in
an INFO log) so that a frontal filter excludes it; the raw fields are kept in the extra
columns ``frontal_lateral`` and ``ap_pa``.

Other columns: ``patient_id`` = ``patientNNNNN``; ``study_id`` (extra) =
``patientNNNNN/studyN``; ``sex``, ``age`` (extras). ``normal`` is True where ``No
Finding`` = 1. Labels keep CheXpert's vocabulary (14 columns, ``No Finding`` included);
see :mod:`leader.datasets.harmonise` for the harmonised names (e.g. ``Pleural Effusion``
-> ``Effusion``). No boxes. Stored size: from the header with ``check_files=True``, else
unknown (the -small release is ~390x320, the full one ~2320x2828; neither is fixed).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest

from ._common import (UnknownLabelWarning, as_root, check_on_error, read_table, require_columns,
                      resolve_metadata, stored_sizes, table_manifest, warn_rows)

__all__ = [
    "read_chexpert", "CHEXPERT_LABELS", "UNCERTAIN_POLICIES", "BLANK_POLICIES",
    "chexpert_values", "check_policy", "parse_policy", "label_policies",
]

log = logging.getLogger(__name__)

#: The 14 CheXpert observations, in the order of the release CSV.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)

#: uncertain (-1) policy name -> manifest value
UNCERTAIN_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}
#: blank (not mentioned) policy name -> manifest value
BLANK_POLICIES = {"zeros": 0.0, "ignore": np.nan}
_ALIASES = {"nan": "ignore", "mask": "ignore", "none": "ignore", "1": "ones", "one": "ones",
            "u-ones": "ones", "0": "zeros", "zero": "zeros", "u-zeros": "zeros"}


def check_policy(value: str, allowed: dict, what: str) -> str:
    """Canonical policy name (aliases ``1``/``one``/``u-ones`` -> ``ones``, ``0``/``zero`` ->
    ``zeros``, ``nan``/``mask`` -> ``ignore``). Raises ValueError for anything else."""
    key = _ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    if key not in allowed:
        raise ValueError(f"{what} policy must be one of {sorted(allowed)}, got {value!r}")
    return key


def parse_policy(text: str) -> dict[str, str]:
    """``"uncertain=ignore, blank=0"`` -> ``{"uncertain": "ignore", "blank": "zeros"}`` (names
    checked with :func:`check_policy`; keys ``uncertain`` / ``blank``, separators ``,`` or
    ``;``). Raises ValueError for an unknown key or value."""
    out: dict[str, str] = {}
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"policy item {part.strip()!r} is not KEY=VALUE")
        k, v = (x.strip().lower() for x in part.split("=", 1))
        if k == "uncertain":
            out[k] = check_policy(v, UNCERTAIN_POLICIES, "uncertain")
        elif k == "blank":
            out[k] = check_policy(v, BLANK_POLICIES, "blank")
        else:
            raise ValueError(f"unknown policy key {k!r} (expected 'uncertain' or 'blank')")
    return out


def label_policies(uncertain: str, blank: str, policy: str | None = None) -> tuple[str, str]:
    """The canonical ``(uncertain, blank)`` policy names a CheXpert-labelled reader applies:
    ``policy`` text (:func:`parse_policy`, e.g. ``"uncertain=ignore, blank=0"``) overrides the
    values it names; each is checked with :func:`check_policy`.

    Raises:
        ValueError: an unknown policy key or name.
    """
    if policy is not None:
        pol = parse_policy(policy)
        uncertain, blank = pol.get("uncertain", uncertain), pol.get("blank", blank)
    return check_policy(uncertain, UNCERTAIN_POLICIES, "uncertain"), check_policy(blank, BLANK_POLICIES, "blank")


def chexpert_values(
    raw: pd.DataFrame,
    columns: Sequence[str],
    *,
    uncertain: str = "ignore",
    blank: str = "zeros",
    path: Path | str = "",
    dataset: str = "chexpert",
    first_line: int = 2,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """CheXpert-style raw strings (``"1.0"``, ``"0.0"``, ``"-1.0"``, blank) -> float32 arrays
    of 1 / 0 / NaN under the named policies (see the module docstring).

    Returns ``(labels, counts)``: ``counts[name]`` has the raw ``positive``, ``negative``,
    ``uncertain``, ``blank`` and ``unknown`` tallies. Unknown values become NaN with one
    :class:`UnknownLabelWarning` naming ``path`` and the first line numbers (``first_line``
    is the file line of row 0).
    """
    u = UNCERTAIN_POLICIES[check_policy(uncertain, UNCERTAIN_POLICIES, "uncertain")]
    b = BLANK_POLICIES[check_policy(blank, BLANK_POLICIES, "blank")]
    out: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    bad: list[str] = []
    for c in columns:
        s = raw[c]
        codes, uniq = pd.factorize(s.to_numpy(dtype=object), use_na_sentinel=True)
        kind = np.empty(len(uniq) + 1, dtype=np.int8)  # 0 pos, 1 neg, 2 unc, 3 blank, 4 unknown
        kind[-1] = 3  # NaN cell
        for j, raw_u in enumerate(uniq):
            t = str(raw_u).strip()
            try:
                f = float(t) if t else None
            except ValueError:
                f = float("nan")
            kind[j] = 3 if f is None else {1.0: 0, 0.0: 1, -1.0: 2}.get(f, 4)
        k = kind[np.where(codes >= 0, codes, len(uniq))]
        v = np.array([1.0, 0.0, u, b, np.nan], dtype=np.float32)[k]
        out[c] = v
        tally = np.bincount(k, minlength=5)
        counts[c] = {"positive": int(tally[0]), "negative": int(tally[1]), "uncertain": int(tally[2]),
                     "blank": int(tally[3]), "unknown": int(tally[4])}
        for r in np.flatnonzero(k == 4):
            bad.append(f"line {r + first_line} {c}={s.iat[r]!r}")
    if bad:
        warn_rows(dataset, path, bad, "have label values outside {1, 0, -1, blank}; set to NaN",
                  UnknownLabelWarning)
    return out, counts


_PREFIX_RE = re.compile(r"^chexpert-v1\.0[^/]*$", re.IGNORECASE)
_PATIENT_RE = re.compile(r"(patient\d+)(?:/(study\d+))?")


def _image_root(root: Path, prefix: str | None) -> Path:
    """Folder the CSV paths (after their prefix) are relative to (see module doc)."""
    if prefix is None:
        return root
    if root.name == prefix or (root / "train").is_dir() or (root / "valid").is_dir():
        return root
    if (root / prefix).is_dir():
        return root / prefix
    return root / prefix


def _split_of(csv_path: Path) -> str | None:
    s = csv_path.name.lower()
    if s.startswith("train"):
        return "train"
    if s.startswith("valid") or s.startswith("val"):
        return "val"
    if s.startswith("test"):
        return "test"
    return None


def read_chexpert(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    uncertain: str = "ignore",
    blank: str = "zeros",
    policy: str | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read CheXpert under ``root`` (dataset ``chexpert``); see the module docstring.

    Args:
        root: folder holding ``train.csv``/``valid.csv`` (or the folder above
            ``CheXpert-v1.0-small/``).
        metadata: explicit CSV file(s); default every ``train.csv``, ``valid.csv``
            (``.gz``) found within two folder levels.
        uncertain: ``"ignore"`` (default, -1 -> NaN) / ``"ones"`` / ``"zeros"``.
        blank: ``"zeros"`` (default, blank -> 0) / ``"ignore"`` (blank -> NaN).
        policy: both at once as text, e.g. ``"uncertain=ignore, blank=0"`` (BR-10's named
            policy; overrides ``uncertain`` / ``blank``).
        check_files: True skips rows whose image is missing (one warning) and reads sizes
            from the headers; False opens and stats no image (sizes unknown).
        on_error: ``"raise"`` / ``"skip"`` for unreadable image headers.

    Raises:
        ManifestError: no CSV found, missing ``Path`` column, an empty or malformed
            ``Path`` (names file and line), duplicate paths.
        ValueError: unknown policy name.
    """
    check_on_error(on_error)
    uncertain, blank = label_policies(uncertain, blank, policy)
    root = as_root(root)
    files = resolve_metadata(root, metadata, ["train.csv", "valid.csv", "train.csv.gz", "valid.csv.gz"],
                             "CheXpert train.csv / valid.csv")
    parts: list[Manifest] = []
    for f in files:
        parts.append(_read_one(root, f, uncertain, blank, check_files, on_error))
    m = Manifest.concat(parts) if len(parts) > 1 else parts[0]
    return m


def _read_one(root: Path, csv_path: Path, uncertain: str, blank: str, check_files: bool,
              on_error: str) -> Manifest:
    df = read_table(csv_path, what="CheXpert CSV")
    require_columns(df, csv_path, ["Path"])
    n = len(df)
    paths_raw = df["Path"].fillna("").astype(str).str.strip().str.replace("\\", "/", regex=False)
    empty = (paths_raw == "").to_numpy()
    if empty.any():
        raise ManifestError(f"{csv_path}: line {int(np.flatnonzero(empty)[0]) + 2}: empty 'Path'")
    dup = paths_raw.duplicated().to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise ManifestError(f"{csv_path}: line {k + 2}: duplicate Path {paths_raw.iat[k]!r}")
    raw_list = paths_raw.tolist()
    rel_list: list[str] = []
    prefix = None
    for r in raw_list:
        head, sep, tail = r.partition("/")
        if sep and _PREFIX_RE.match(head):
            prefix = prefix or head
            rel_list.append(tail)
        else:
            rel_list.append(r)
    img_root = _image_root(root, prefix)
    pid_l, study_l, ids_l, abs_l = [], [], [], []
    base = str(img_root) + "/"
    for k, r in enumerate(rel_list):
        m = _PATIENT_RE.search(r)
        if m is None:
            raise ManifestError(f"{csv_path}: line {k + 2}: Path {raw_list[k]!r} has no 'patientNNNNN' folder")
        pid_l.append(m.group(1))
        study_l.append(m.group(0) if m.group(2) else m.group(1))
        dot = r.rfind(".")
        ids_l.append("chexpert/" + (r[:dot] if dot > r.rfind("/") else r))
        abs_l.append(base + r)
    pid = np.asarray(pid_l, dtype=object)
    study = np.asarray(study_l, dtype=object)
    abs_paths = np.asarray(abs_l, dtype=object)
    ids = np.asarray(ids_l, dtype=object)

    split = _split_of(csv_path)
    if split is None:
        words = {"train": "train", "valid": "val", "val": "val", "test": "test"}
        split_arr = np.array([words.get(r.split("/", 1)[0].lower(), "train") for r in rel_list], dtype=object)
    else:
        split_arr = split

    # views
    def col(name):
        if name not in df:
            return np.full(n, "", dtype=object)
        return np.array([("" if not isinstance(v, str) else v.strip()) for v in df[name].to_numpy(dtype=object)],
                        dtype=object)

    fl = col("Frontal/Lateral")
    appa = np.array([v.upper() for v in col("AP/PA")], dtype=object)
    fl_low = np.array([v.lower() for v in fl], dtype=object)
    view = np.full(n, "UNKNOWN", dtype=object)
    is_lat = fl_low == "lateral"
    is_front = fl_low == "frontal"
    view[is_lat] = "LATERAL"
    for v in ("AP", "PA"):
        view[is_front & (appa == v)] = v
    if n and not (fl != "").any():  # no view columns (e.g. a test CSV): use the file name
        view[np.array(["_lateral" in r.lower() for r in rel_list], dtype=bool)] = "LATERAL"
    conflict = is_front & ~np.isin(appa, ["AP", "PA"])
    if conflict.any():
        log.info("chexpert: %s: %d 'Frontal' row(s) with AP/PA %s -> view UNKNOWN", csv_path,
                 int(conflict.sum()), sorted(set(appa[conflict])))

    cols = [c for c in df.columns if c in CHEXPERT_LABELS]
    labels, _ = chexpert_values(df, cols, uncertain=uncertain, blank=blank, path=csv_path)
    nf = pd.to_numeric(df["No Finding"], errors="coerce").to_numpy() == 1.0 if "No Finding" in df else False

    w, h, sp_mm, keep = stored_sizes("chexpert", root, ids, abs_paths, check_files, on_error)
    extras = {"study_id": study, "frontal_lateral": fl, "ap_pa": appa}
    if "Sex" in df:
        extras["sex"] = df["Sex"].fillna("").to_numpy(dtype=object)
    if "Age" in df:
        extras["age"] = pd.to_numeric(df["Age"], errors="coerce").to_numpy(dtype=np.float64)
    return table_manifest(ids=ids, paths=abs_paths, dataset="chexpert", split=split_arr,
                          patient_id=pid, width=w, height=h, pixel_spacing=sp_mm,
                          view=view, normal=nf, labels=labels, extras=extras, keep=keep)
