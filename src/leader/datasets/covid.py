"""COVIDx-source metadata readers: Figure 1 and Actualmed COVID-19 chest X-ray initiatives.

Sources: ``agchung/Figure1-COVID-chestxray-dataset`` and
``agchung/Actualmed-COVID-chestxray-dataset`` (``metadata.csv`` + ``images/``), the
ieee8023/covid-chestxray-dataset column convention.

* Figure 1: ``metadata.csv`` is Latin-1 (contains ``0xB0``), LF line ends; ``patientid``
  is the image file stem (any extension, e.g. ``COVID-00015a.png``). Suffix letters mark
  several images of one case (``COVID-00013a``/``b`` share sex, age and offset), so
  ``patient_id`` is the stem without a trailing lower-case letter. Dataset
  ``covid-figure1``.
* Actualmed: CRLF line ends, image file name in ``imagename``; ``patient_id`` is
  ``patientid`` (``ANON191`` has two images). Dataset ``covid-actualmed``.

Labels from ``finding`` (case-insensitive):

===========================  ============  ===========  ==========
finding                      ``COVID-19``  ``Pneumonia`` ``normal``
===========================  ============  ===========  ==========
``COVID-19`` (contains)      1             1            False
``Pneumonia`` (no COVID)     0             1            False
``No finding``               0             0            True
blank                        NaN           NaN          False
anything else                NaN           NaN          False
===========================  ============  ===========  ==========

``COVID-19`` implies ``Pneumonia`` = 1 because these initiatives collect COVID-19
*pneumonia* radiographs (COVIDx groups them as "COVID-19" pneumonia vs "normal" vs
"pneumonia"); a blank finding is unknown, not negative. ``view``: ``AP erect``/``AP`` ->
``AP``, ``PA`` -> ``PA``, lateral spellings -> ``LATERAL``, blank -> ``UNKNOWN``.
Rows whose image file is absent are skipped with one warning (``check_files=True``).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, make_manifest, normalize_view

from ._common import IMAGE_SUFFIXES, as_root, check_on_error, read_sizes

__all__ = ["read_covid_metadata", "covid_finding_labels"]

SOURCES = {"figure1": "covid-figure1", "actualmed": "covid-actualmed"}


def covid_finding_labels(finding) -> tuple[float, float, bool]:
    """``finding`` -> ``(COVID-19, Pneumonia, normal)`` per the table in the module doc."""
    if finding is None or (isinstance(finding, float) and np.isnan(finding)):
        return np.nan, np.nan, False
    f = str(finding).strip().lower()
    if not f:
        return np.nan, np.nan, False
    if "covid" in f:
        return 1.0, 1.0, False
    if f in ("no finding", "normal", "no findings"):
        return 0.0, 0.0, True
    if "pneumonia" in f:
        return 0.0, 1.0, False
    return np.nan, np.nan, False


def _read_csv_text(path: Path) -> pd.DataFrame:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read metadata CSV: {e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # some COVID metadata files are Latin-1
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, ValueError) as e:  # ValueError: EmptyDataError
        raise ManifestError(f"{path}: cannot parse metadata CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _detect_source(df: pd.DataFrame, root: Path) -> str:
    if "imagename" in df.columns:
        return "actualmed"
    return "figure1"


def read_covid_metadata(
    root: str | os.PathLike,
    source: str | None = None,
    *,
    metadata: str | os.PathLike | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read a Figure1 / Actualmed COVID folder (``metadata.csv`` + ``images/``).

    Args:
        root: dataset folder.
        source: ``"figure1"`` or ``"actualmed"``; default detected (an ``imagename``
            column means Actualmed).
        metadata: explicit CSV (default ``root/metadata.csv``).
        check_files: skip rows whose image is missing (one warning) and read sizes from
            headers; False opens no image (paths are best guesses for missing files).

    Raises:
        ManifestError: missing metadata / required columns (names the file).
    """
    check_on_error(on_error)
    root = as_root(root)
    meta = Path(metadata) if metadata is not None else root / "metadata.csv"
    if not meta.is_file():
        raise ManifestError(f"{meta}: metadata CSV not found")
    df = _read_csv_text(meta)
    src = (source or _detect_source(df, root)).lower()
    src = src.replace("covid-", "").replace("-covid", "")
    if src not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    dataset = SOURCES[src]
    need = ["patientid", "finding"] + (["imagename"] if src == "actualmed" else [])
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise ManifestError(f"{meta}: missing column(s) {miss}; have {list(df.columns)}")

    img_dir = root / "images" if (root / "images").is_dir() else root
    listing = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if img_dir.is_dir() else []
    by_name = {p.name: p for p in listing}
    by_stem: dict[str, Path] = {}
    for p in listing:
        by_stem.setdefault(p.stem, p)

    paths, stems, patients = [], [], []
    pids = df["patientid"].tolist()
    names = df["imagename"].tolist() if src == "actualmed" else [None] * len(df)
    for line, (pid, name) in enumerate(zip(pids, names), start=2):
        if src == "actualmed":
            if not isinstance(name, str) or not name.strip():
                raise ManifestError(f"{meta}: line {line}: empty 'imagename'")
            name = name.strip()
            p = by_name.get(name, img_dir / name)
            stem = Path(name).stem
            patient = str(pid).strip() if isinstance(pid, str) and pid.strip() else stem
        else:
            if not isinstance(pid, str) or not pid.strip():
                raise ManifestError(f"{meta}: line {line}: empty 'patientid'")
            stem = pid.strip()
            p = by_stem.get(stem, img_dir / f"{stem}.jpg")
            patient = re.sub(r"(?<=\d)[a-z]$", "", stem)
        paths.append(p)
        stems.append(stem)
        patients.append(patient)
    finding = df["finding"].tolist()
    view = df["view"].tolist() if "view" in df.columns else [None] * len(df)

    ids = [f"{dataset}/{s}" for s in stems]
    dups = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()
    if dups:
        raise ManifestError(f"{meta}: duplicate image(s) {dups[:5]}")
    if check_files:
        infos, _, _ = read_sizes(dataset, root, ids, paths, on_error)
    else:
        infos = [None] * len(ids)

    records, unknown = [], []
    for k in range(len(ids)):
        if check_files and infos[k] is None:
            continue
        cov, pneu, normal = covid_finding_labels(finding[k])
        if np.isnan(cov) and isinstance(finding[k], str) and finding[k].strip():
            unknown.append(f"{ids[k]}={finding[k]!r}")
        records.append(
            {
                "id": ids[k],
                "path": str(paths[k]),
                "dataset": dataset,
                "split": "train",
                "patient_id": patients[k],
                "width": infos[k].width if infos[k] else None,
                "height": infos[k].height if infos[k] else None,
                "pixel_spacing": infos[k].pixel_spacing if infos[k] else None,
                "view": normalize_view(view[k]),
                "normal": normal,
                "labels": {"COVID-19": cov, "Pneumonia": pneu},
                "finding": finding[k] if isinstance(finding[k], str) else None,
            }
        )
    if unknown:
        warnings.warn(
            f"{dataset}: {len(unknown)} finding value(s) not mapped (labels NaN): {unknown[:5]}",
            stacklevel=2,
        )
    return make_manifest(records)
