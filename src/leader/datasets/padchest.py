"""PadChest (BIMCV, Hospital San Juan, Alicante) reader.

Source: Bustos et al., "PadChest: A large chest x-ray image dataset with multi-label
annotated reports", Medical Image Analysis 66 (2020); release file
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]`` and image folders
``0/ ... 54/`` (16-bit PNG, BR-04 / BR-14).

Columns used
------------
``ImageID`` (PNG file name), ``ImageDir`` (sub-folder number), ``PatientID``, ``StudyID``,
``Projection``, ``ViewPosition_DICOM``, ``Rows_DICOM``, ``Columns_DICOM``,
``SpatialResolution_DICOM`` (mm per pixel; ``None`` when absent), ``MethodLabel``
(``Physician`` / ``RNN_model``), ``Labels``. The first, unnamed column is a row index and
is ignored.

Labels
------
``Labels`` is a Python-list string such as ``"['pleural effusion', ' pneumonia']"``.
Terms are stripped (the release has ``' pneumonia'`` beside ``'pneumonia'``), empty terms
(``''``) are dropped. Each term of the vocabulary becomes one label column in PadChest's own
words (193 terms in the 160K release, ``normal`` and ``exclude`` included): 1 when the
report lists it, 0 otherwise (PadChest labels are report-derived: not listed = absent).
A blank ``Labels`` cell (103 rows in the release) or a string that is not a list of
strings makes **all** labels NaN for that image, with one :class:`UnreadableRowWarning`
naming the count, the file and the first data rows (1-based; the CSV has multi-line
quoted fields, so file line numbers differ). ``normal`` is True where the list contains
``normal``. See :mod:`leader.datasets.harmonise` for the harmonised names.

Views
-----
``Projection``: ``PA`` -> ``PA``; ``AP`` and ``AP_horizontal`` (AP, patient lying) -> ``AP``;
``L`` -> ``LATERAL``; ``UNK`` / blank -> ``UNKNOWN``; ``COSTAL`` (rib series) and
``EXCLUDE`` are kept as such and therefore excluded by the frontal / lateral filters. The
raw value is kept in the extra column ``projection``.

Output
------
``id`` ``"padchest/<ImageID stem>"``; ``path`` ``root/<ImageDir>/<ImageID>`` (or, when the
numbered folders are absent, the file of that name found by listing ``root`` and
``root/images``); ``patient_id`` = ``PatientID``; extras ``study_id``, ``projection``,
``method_label``. ``width``/``height`` = ``Columns_DICOM``/``Rows_DICOM`` (the PNGs keep the
DICOM matrix); ``pixel_spacing`` = ``SpatialResolution_DICOM``; with ``check_files=True``
the PNG header gives the size. No official split: ``train`` (use
:func:`leader.datasets.splits.assign_splits`). No boxes.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, normalize_view

from ._common import (as_root, check_on_error, read_table, require_columns,
                      resolve_metadata, stored_sizes, table_manifest, warn_rows)

__all__ = ["read_padchest", "parse_padchest_labels", "PADCHEST_PROJECTIONS"]

log = logging.getLogger(__name__)

#: ``Projection`` value -> manifest view (others are upper-cased by normalize_view).
PADCHEST_PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL", "UNK": "UNKNOWN",
                        "COSTAL": "COSTAL", "EXCLUDE": "EXCLUDE"}

_LIST_RE = re.compile(r"\[\s*(?:'[^'\\]*'\s*(?:,\s*'[^'\\]*'\s*)*)?\]")
_ITEM_RE = re.compile(r"'([^'\\]*)'")

_USECOLS = ["ImageID", "ImageDir", "PatientID", "StudyID", "Projection", "ViewPosition_DICOM", "Rows_DICOM",
            "Columns_DICOM", "SpatialResolution_DICOM", "MethodLabel", "Labels"]


def parse_padchest_labels(s) -> list[str] | None:
    """One ``Labels`` cell -> stripped, non-empty terms in order (duplicates removed), or
    None when the cell is blank or not a Python list of strings."""
    if s is None or (isinstance(s, float) and np.isnan(s)):
        return None
    text = str(s).strip()
    if not text:
        return None
    if _LIST_RE.fullmatch(text):  # fast path: ['a', 'b', ...] without escapes
        terms = _ITEM_RE.findall(text)
        return list(dict.fromkeys(t.strip() for t in terms if t.strip()))
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(t, str) for t in v):
        return None
    return list(dict.fromkeys(t.strip() for t in v if t.strip()))


def read_padchest(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    labels: Sequence[str] | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read PadChest under ``root`` (dataset ``padchest``); see the module docstring.

    Args:
        metadata: the PadChest CSV (default ``PADCHEST_chest_x_ray_images_labels_*.csv[.gz]``
            within two folder levels).
        labels: label columns to emit (PadChest terms); default every term that occurs.
            A requested term that never occurs is all 0 (NaN for unparseable rows).
        check_files: True skips rows whose PNG is missing (one warning) and reads sizes
            from headers; False opens and stats nothing.

    Raises:
        ManifestError: CSV missing / unreadable, required columns missing, an empty or
            duplicate ``ImageID`` (names file and line).
    """
    check_on_error(on_error)
    root = as_root(root)
    csv_path = resolve_metadata(root, metadata, ["PADCHEST_chest_x_ray_images_labels*.csv",
                                                 "PADCHEST_chest_x_ray_images_labels*.csv.gz"],
                                "PadChest labels CSV")[0]
    df = read_table(csv_path, what="PadChest CSV", usecols=lambda c: c.strip() in _USECOLS)
    require_columns(df, csv_path, ["ImageID", "Labels"])
    n = len(df)
    image = df["ImageID"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    if (image == "").any():
        raise ManifestError(f"{csv_path}: line {int(np.flatnonzero(image == '')[0]) + 2}: empty ImageID")
    dup = pd.Series(image).duplicated().to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise ManifestError(f"{csv_path}: line {k + 2}: duplicate ImageID {image[k]!r}")

    # ---- labels (parse each distinct string once) -----------------------------------
    codes, uniq = pd.factorize(df["Labels"], use_na_sentinel=True)
    parsed = [parse_padchest_labels(u) for u in uniq]
    vocab: list[str] = []
    seen: set[str] = set()
    for terms in parsed:
        for t in terms or ():
            if t not in seen:
                seen.add(t)
                vocab.append(t)
    if labels is None:
        counts: dict[str, int] = {}
        ucount = np.bincount(codes[codes >= 0], minlength=len(uniq))
        for terms, c in zip(parsed, ucount):
            for t in terms or ():
                counts[t] = counts.get(t, 0) + int(c)
        names = sorted(vocab, key=lambda t: (-counts[t], t))
    else:
        names = list(dict.fromkeys(labels))
    col = {t: j for j, t in enumerate(names)}
    U = np.zeros((len(uniq) + 1, len(names)), dtype=np.float32)  # last row: blank cell
    U[-1, :] = np.nan
    normal_u = np.zeros(len(uniq) + 1, dtype=bool)
    for k, terms in enumerate(parsed):
        if terms is None:
            U[k, :] = np.nan
            continue
        for t in terms:
            j = col.get(t)
            if j is not None:
                U[k, j] = 1.0
        normal_u[k] = "normal" in terms
    idx = np.where(codes >= 0, codes, len(uniq))
    mat = U[idx]
    normal = normal_u[idx]
    bad_u = np.array([p is None for p in parsed] + [True], dtype=bool)
    bad_rows = np.flatnonzero(bad_u[idx])
    if len(bad_rows):
        raw = df["Labels"].to_numpy(dtype=object)
        warn_rows("padchest", csv_path,
                  [f"row {k + 1} ({image[k]}) Labels={'<blank>' if not isinstance(raw[k], str) else repr(raw[k])}"
                   for k in bad_rows],
                  "have a blank or unparseable 'Labels' list; all labels NaN")
    label_arrays = (names, mat)

    # ---- views ----------------------------------------------------------------------
    proj = df["Projection"] if "Projection" in df else pd.Series([np.nan] * n)
    pu = pd.unique(proj.fillna("").astype(str))
    pmap = {u: normalize_view(PADCHEST_PROJECTIONS.get(u.strip().upper(), u)) for u in pu}
    view = proj.fillna("").astype(str).map(pmap).to_numpy(dtype=object)

    # ---- paths ----------------------------------------------------------------------
    idir = df["ImageDir"].fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True) \
        if "ImageDir" in df else pd.Series([""] * n)
    idir_a = idir.to_numpy(dtype=object)
    numbered = any((root / d).is_dir() for d in pd.unique(idir_a)[:60] if d)
    if numbered or not check_files:
        b = str(root)
        paths = np.array([f"{b}/{d}/{f}" if d else f"{b}/{f}" for d, f in zip(idir_a, image)], dtype=object)
        if not numbered:  # flat layout: look up names without stat'ing images
            found = _list_flat(root)
            if found:
                paths = np.array([found.get(f, p) for f, p in zip(image, paths)], dtype=object)
    else:
        found = _list_flat(root)
        b = str(root)
        paths = np.array([found.get(f, f"{b}/{d}/{f}") for d, f in zip(idir_a, image)], dtype=object)
    ids = np.array(["padchest/" + os.path.splitext(f)[0] for f in image], dtype=object)

    def num(c):
        return pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64) if c in df else None

    w, h, sp_mm, keep = stored_sizes("padchest", root, ids, paths, check_files, on_error,
                                     default_w=num("Columns_DICOM"), default_h=num("Rows_DICOM"))
    res = num("SpatialResolution_DICOM")
    if res is not None:
        sp_mm = np.where(np.isnan(sp_mm), res, sp_mm)
    sp_mm = np.where(sp_mm > 0, sp_mm, np.nan)
    pid = df["PatientID"].fillna("").astype(str).str.strip().to_numpy(dtype=object) if "PatientID" in df else None
    if pid is None:
        pid = np.array([os.path.splitext(f)[0] for f in image], dtype=object)
    else:
        blank = pid == ""
        if blank.any():
            pid[blank] = [os.path.splitext(f)[0] for f in image[blank]]
    extras = {
        "study_id": df["StudyID"].fillna("").astype(str).to_numpy(dtype=object) if "StudyID" in df else "",
        "projection": proj.fillna("").astype(str).to_numpy(dtype=object),
        "method_label": df["MethodLabel"].fillna("").astype(str).to_numpy(dtype=object) if "MethodLabel" in df else "",
    }
    return table_manifest(ids=ids, paths=paths, dataset="padchest", split="train", patient_id=pid,
                          width=w, height=h, pixel_spacing=sp_mm, view=view, normal=normal,
                          labels=label_arrays, extras=extras, keep=keep)


def _list_flat(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in (root, root / "images"):
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    if e.name.lower().endswith(".png") and e.name not in out:
                        out[e.name] = os.path.join(d, e.name)
    return out
