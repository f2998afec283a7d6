"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) reader.

Source: Johnson et al., "MIMIC-CXR-JPG, a large publicly available database of labeled
chest radiographs", arXiv:1901.07042 and the PhysioNet release; MIT-LCP/mimic-cxr issue 15
and mimic-code issue 1284 (missing ``ViewPosition``); RoentGen-v2 issue 3 (rare values);
field reports BR-10 and BR-12.

Files (``.csv`` or ``.csv.gz``, found within two folder levels of ``root``)
---------------------------------------------------------------------------
``mimic-cxr-2.0.0-metadata.csv`` (required): one row per image; columns used
    ``dicom_id, subject_id, study_id, ViewPosition, Rows, Columns`` (others are ignored).
``mimic-cxr-2.0.0-chexpert.csv`` (or ``-negbio.csv``): one row per **study**
    (``subject_id, study_id`` + the 14 CheXpert observations, values 1.0 / 0.0 / -1.0 /
    blank). Every image of a study gets the study's labels; an image whose study has no
    label row gets NaN for all labels (counted in one :class:`UnknownLabelWarning`).
``mimic-cxr-2.0.0-split.csv``: ``dicom_id, study_id, subject_id, split`` with ``train`` /
    ``validate`` / ``test`` -> manifest ``train`` / ``val`` / ``test`` (the official,
    patient-disjoint split). Images missing from it are ``train`` (counted in a warning).

Label policies are the CheXpert ones (:func:`leader.datasets.chexpert.chexpert_values`):
``uncertain="ignore"`` (default; -1 -> NaN) / ``"ones"`` / ``"zeros"``; ``blank="zeros"``
(default; not mentioned -> 0) / ``"ignore"``.

Views (BR-12)
-------------
``ViewPosition`` through :func:`leader.manifest.normalize_view`: ``PA``, ``AP``, ``LATERAL``
and ``LL`` -> ``LATERAL``; blank (~15,700 rows in the release) -> ``UNKNOWN``; rare values
are kept upper-cased (``AP AXIAL``, ``PA LLD``, ``SWIMMERS``, ``XTABLE LATERAL``, ...) so
a frontal (``PA``/``AP``) or lateral filter excludes them by default
(:func:`leader.datasets.views.filter_views`). ``view_map`` overrides the mapping, e.g.
``{"AP AXIAL": "AP"}``. Counts per view are logged at INFO.

Output
------
``id`` ``"mimic/<dicom_id>"``; ``path`` ``files/p<first 2 digits>/p<subject_id>/s<study_id>/
<dicom_id>.jpg`` under the folder holding ``files/`` (``root``, or up to two levels down;
else the metadata CSV's folder);
``patient_id`` = ``subject_id``; extra ``study_id``. ``width``/``height`` = ``Columns`` /
``Rows`` (MIMIC-CXR-JPG keeps the DICOM matrix size); the header wins with
``check_files=True``. ``normal`` where ``No Finding`` = 1. No boxes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, normalize_view

from ._common import (UnknownLabelWarning, UnreadableRowWarning, as_paths, as_root, check_on_error,
                      csv_header, find_first, read_table, require_columns, stored_sizes, table_manifest, warn_rows)
from .chexpert import CHEXPERT_LABELS, chexpert_values, label_policies

__all__ = ["read_mimic", "MIMIC_SPLITS"]

log = logging.getLogger(__name__)

MIMIC_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _id_column(df: pd.DataFrame, name: str, path: Path) -> np.ndarray:
    """Stripped string ids (a float-looking ``"123.0"`` -> ``"123"``); a blank cell raises
    :class:`ManifestError` naming the file and line."""
    col = df[name].fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    vals = col.to_numpy(dtype=object)
    empty = vals == ""
    if empty.any():
        raise ManifestError(f"{path}: line {int(np.flatnonzero(empty)[0]) + 2}: empty {name}")
    return vals


def _classify(files: Sequence[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        cols = set(csv_header(f))
        if "dicom_id" in cols and "ViewPosition" in cols:
            out.setdefault("metadata", f)
        elif "dicom_id" in cols and "split" in cols:
            out.setdefault("split", f)
        elif "study_id" in cols and cols & set(CHEXPERT_LABELS):
            key = "negbio" if "negbio" in f.name.lower() else "chexpert"
            out.setdefault(key, f)
        else:
            raise ManifestError(f"{f}: not a MIMIC-CXR metadata / label / split CSV (header {sorted(cols)[:8]})")
    return out


def read_mimic(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    labeler: str = "chexpert",
    uncertain: str = "ignore",
    blank: str = "zeros",
    policy: str | None = None,
    view_map: Mapping[str, str] | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read MIMIC-CXR-JPG under ``root`` (dataset ``mimic``); see the module docstring.

    Args:
        metadata: explicit CSV files (metadata / chexpert or negbio / split, recognised by
            their headers); default ``mimic-cxr-2.0.0-*.csv[.gz]`` under ``root``.
        labeler: ``"chexpert"`` (default) or ``"negbio"`` label file.
        uncertain, blank: CheXpert label policies (defaults ``ignore`` / ``zeros``);
            ``policy="uncertain=ones, blank=0"`` sets both as text.
        view_map: raw ``ViewPosition`` (upper-cased) -> view, applied before
            :func:`normalize_view`.
        check_files: True skips rows whose JPG is missing (one warning) and reads sizes
            from headers; False opens nothing (sizes from ``Rows``/``Columns``).

    Raises:
        ManifestError: no metadata CSV, malformed CSV (invalid UTF-8, wrong column count),
            missing columns, empty / duplicate ``dicom_id``, empty ``subject_id`` /
            ``study_id`` (names file and line), an unknown ``split`` value.
        ValueError: unknown policy / labeler.
    """
    check_on_error(on_error)
    uncertain, blank = label_policies(uncertain, blank, policy)
    if labeler not in ("chexpert", "negbio"):
        raise ValueError(f"labeler must be 'chexpert' or 'negbio', got {labeler!r}")
    root = as_root(root)
    if metadata is None:
        files = find_first(root, ["mimic-cxr-2.*.csv", "mimic-cxr-2.*.csv.gz"], max_depth=2)
    else:
        files = as_paths(metadata)
    kinds = _classify(files)
    if "metadata" not in kinds:
        raise ManifestError(f"{root}: no MIMIC-CXR metadata CSV (mimic-cxr-2.0.0-metadata.csv[.gz]) found")
    meta_path = kinds["metadata"]
    meta = read_table(meta_path, what="MIMIC-CXR metadata")
    require_columns(meta, meta_path, ["dicom_id", "subject_id", "study_id"])
    n = len(meta)
    dicom = meta["dicom_id"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    if (dicom == "").any():
        raise ManifestError(f"{meta_path}: line {int(np.flatnonzero(dicom == '')[0]) + 2}: empty dicom_id")
    dup = pd.Series(dicom).duplicated().to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise ManifestError(f"{meta_path}: line {k + 2}: duplicate dicom_id {dicom[k]!r}")
    subj = _id_column(meta, "subject_id", meta_path)
    study = _id_column(meta, "study_id", meta_path)

    # ---- views ----------------------------------------------------------------------
    raw_view = meta["ViewPosition"] if "ViewPosition" in meta else pd.Series([np.nan] * n)
    vm = {str(k).strip().upper(): v for k, v in (view_map or {}).items()}
    uniq = pd.unique(raw_view.fillna("").astype(str))
    mapped = {u: normalize_view(vm.get(u.strip().upper(), u)) for u in uniq}
    view = raw_view.fillna("").astype(str).map(mapped).to_numpy(dtype=object)
    log.info("mimic: views %s", pd.Series(view).value_counts().to_dict())

    # ---- labels ---------------------------------------------------------------------
    labels: dict[str, np.ndarray] = {}
    normal = np.zeros(n, dtype=bool)
    lab_path = kinds.get(labeler)
    if lab_path is not None:
        lab = read_table(lab_path, what=f"MIMIC-CXR {labeler} labels")
        require_columns(lab, lab_path, ["study_id"])
        lab_study = pd.Series(_id_column(lab, "study_id", lab_path), dtype=object)
        d = lab_study.duplicated().to_numpy()
        if d.any():
            k = int(np.flatnonzero(d)[0])
            raise ManifestError(f"{lab_path}: line {k + 2}: second label row for study {lab_study.iat[k]!r}")
        cols = [c for c in CHEXPERT_LABELS if c in lab.columns]
        vals, _ = chexpert_values(lab, cols, uncertain=uncertain, blank=blank, path=lab_path, dataset="mimic")
        pos = pd.Index(lab_study.to_numpy(dtype=object)).get_indexer(study)
        has = pos >= 0
        for c in cols:
            v = np.full(n, np.nan, dtype=np.float32)
            v[has] = vals[c][pos[has]]
            labels[c] = v
        if "No Finding" in lab.columns:
            nf = pd.to_numeric(lab["No Finding"], errors="coerce").to_numpy() == 1.0
            normal[has] = nf[pos[has]]
        if (~has).any():
            miss = [f"line {k + 2} study {study[k]}" for k in np.flatnonzero(~has)]
            warn_rows("mimic", meta_path, miss, f"have no label row in {lab_path.name}; labels NaN",
                      UnknownLabelWarning)

    # ---- split ----------------------------------------------------------------------
    split = np.full(n, "train", dtype=object)
    if "split" in kinds:
        sp_path = kinds["split"]
        sp = read_table(sp_path, what="MIMIC-CXR split")
        require_columns(sp, sp_path, ["dicom_id", "split"])
        sv = sp["split"].fillna("").astype(str).str.strip().str.lower()
        bad = ~sv.isin(list(MIMIC_SPLITS))
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(f"{sp_path}: line {k + 2}: unknown split {sp['split'].iat[k]!r} "
                                f"(expected {sorted(MIMIC_SPLITS)})")
        smap = pd.Series(sv.map(MIMIC_SPLITS).to_numpy(dtype=object),
                         index=sp["dicom_id"].fillna("").astype(str).str.strip().to_numpy(dtype=object))
        smap = smap[~smap.index.duplicated()]
        got = smap.reindex(dicom)
        missing = got.isna().to_numpy()
        split = np.where(missing, "train", got.to_numpy(dtype=object)).astype(object)
        if missing.any():
            warn_rows("mimic", meta_path, [f"line {k + 2} {dicom[k]}" for k in np.flatnonzero(missing)],
                      f"are not in {sp_path.name}; split 'train'", UnreadableRowWarning)

    # ---- paths and sizes ------------------------------------------------------------
    base = root
    if not (root / "files").is_dir():
        hits = sorted(d.parent for d in root.glob("*/files") if d.is_dir()) + \
            sorted(d.parent for d in root.glob("*/*/files") if d.is_dir())
        base = hits[0] if hits else meta_path.parent
    b = str(base)
    paths = np.array([f"{b}/files/p{s[:2]}/p{s}/s{st}/{d}.jpg" for s, st, d in zip(subj, study, dicom)],
                     dtype=object)
    ids = np.array(["mimic/" + d for d in dicom], dtype=object)
    rows = pd.to_numeric(meta["Rows"], errors="coerce").to_numpy(dtype=np.float64) if "Rows" in meta else None
    cols_ = pd.to_numeric(meta["Columns"], errors="coerce").to_numpy(dtype=np.float64) if "Columns" in meta else None
    w, h, sp_mm, keep = stored_sizes("mimic", root, ids, paths, check_files, on_error,
                                     default_w=cols_, default_h=rows)
    return table_manifest(ids=ids, paths=paths, dataset="mimic", split=split, patient_id=subj,
                          width=w, height=h, pixel_spacing=sp_mm, view=view, normal=normal,
                          labels=labels, extras={"study_id": study,
                                                 "view_position": raw_view.fillna("").astype(str).to_numpy(dtype=object)},
                          keep=keep)
