"""Generic reader: a folder of radiographs, optionally with a CSV of image-level labels.

* Images: files under ``root`` (recursive) with an image suffix (``.png .jpg .jpeg .dcm
  .dicom .mha .mhd .nii .tif .tiff .bmp .img``). A file is skipped when its name or any
  folder between ``root`` and it contains ``mask``, ``_seg`` or ``semantic_masks``
  (case-insensitive): segmentation masks are not radiographs. Files without a suffix are
  not considered.
* ``id`` ``"{dataset}/{stem}"`` (relative path without suffix when stems collide),
  ``patient_id`` the stem, ``view`` ``UNKNOWN``, ``split`` from a ``train``/``val``/``test``
  folder name else ``train``; width/height/pixel_spacing from the image header with
  ``check_files=True``.
* Labels CSV (optional): rows are matched to images by ``path_column`` (path relative to
  ``root``, or to the CSV's folder, or absolute) or else by ``id_column`` (file name or
  stem; default the first column). ``label_columns`` default to every other column whose
  values are all numeric. Values must be 1 / 0 / blank (NaN). Images without a CSV row
  get NaN; without a CSV there are no label columns. CSV rows whose image is missing are
  skipped with one warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest, make_manifest

from ._common import (IMAGE_SUFFIXES, as_root, check_on_error, read_sizes, read_table, record_skipped,
                      split_from_path, unique_ids, warn_skipped)

__all__ = ["read_folder", "is_mask_path", "list_images"]

MASK_MARKERS = ("mask", "_seg", "semantic_masks")


def is_mask_path(path: Path, root: Path) -> bool:
    """True when the file name or a folder below ``root`` marks a segmentation mask."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts[-1:]
    return any(m in part.lower() for part in parts for m in MASK_MARKERS)


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), masks excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask_path(p, root):
                out.append(p)
    return out


def read_folder(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    id_column: str | None = None,
    path_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    dataset: str = "folder",
    *,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Index a folder of images (and optional labels CSV); see the module docstring.

    Raises:
        ManifestError: CSV unreadable (see :func:`~leader.datasets._common.read_table`: not
            UTF-8, wrong column count, duplicate column names), a named column missing, a
            label value outside 1/0/blank (names the CSV row), two CSV rows for one image.
        ImageReadError: (``on_error="raise"``) an unreadable, truncated or corrupt image.
    """
    check_on_error(on_error)
    root = as_root(root)
    images = list_images(root)

    labels_by_path: dict[Path, dict[str, float]] = {}
    names: list[str] = []
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        df = read_table(csv_path, what="labels CSV")
        if not len(df.columns):
            raise ManifestError(f"{csv_path}: labels CSV has no columns")
        if path_column is None and id_column is None:
            id_column = df.columns[0]
        for c in (id_column, path_column):
            if c is not None and c not in df.columns:
                raise ManifestError(f"{csv_path}: column {c!r} not found; have {list(df.columns)}")
        key_cols = {id_column, path_column} - {None}
        if label_columns is None:
            label_columns = []
            for c in df.columns:
                if c in key_cols:
                    continue
                if pd.to_numeric(df[c], errors="coerce").notna().sum() == df[c].notna().sum():
                    label_columns.append(c)
        label_columns = list(label_columns)
        for c in label_columns:
            if c not in df.columns:
                raise ManifestError(f"{csv_path}: label column {c!r} not found; have {list(df.columns)}")
        names = label_columns

        by_name = {p.name: p for p in images}
        by_stem: dict[str, Path] = {}
        for p in images:
            by_stem.setdefault(p.stem, p)
        image_set = set(images)
        for k in range(len(df)):
            line = k + 2
            if path_column is not None:
                rel = str(df[path_column].iloc[k]).strip()
                cands = [Path(rel)] if os.path.isabs(rel) else [root / rel, csv_path.parent / rel]
                p = next((c.resolve() for c in cands if c.resolve() in image_set), None) or cands[0].resolve()
            else:
                key = str(df[id_column].iloc[k]).strip()
                p = by_name.get(key) or by_stem.get(key) or by_stem.get(Path(key).stem)
                if p is None:
                    p = root / key
            vals = {}
            for c in label_columns:
                v = df[c].iloc[k]
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    vals[c] = np.nan
                    continue
                try:
                    f = float(v)
                except ValueError:
                    f = float("inf")
                if f not in (0.0, 1.0):
                    raise ManifestError(f"{csv_path}: line {line}: label {c!r} = {v!r} is not 1/0/blank")
                vals[c] = f
            if p in labels_by_path:
                raise ManifestError(f"{csv_path}: line {line}: second row for image {p}")
            labels_by_path[p] = vals
        extra = [p for p in labels_by_path if p not in image_set]
        if check_files:
            rels = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in extra]
            warn_skipped(dataset, rels, "labelled image not found", root)
            for p, rel in zip(extra, rels):
                stem = Path(rel).with_suffix("").as_posix() if Path(rel).name else rel
                record_skipped(dataset, f"{dataset}/{stem}", p, "missing file",
                               f"{p}: labelled in {csv_path} but the image file is not found")
        else:
            images = images + extra

    ids = unique_ids(dataset, root, images)
    if check_files:
        infos, _, _ = read_sizes(dataset, root, ids, images, on_error)
    else:
        infos = [None] * len(images)

    records = []
    for k, p in enumerate(images):
        if check_files and infos[k] is None:
            continue
        rec = {
            "id": ids[k],
            "path": str(p),
            "dataset": dataset,
            "split": split_from_path(p, root) or "train",
            "patient_id": p.stem,
            "width": infos[k].width if infos[k] else None,
            "height": infos[k].height if infos[k] else None,
            "pixel_spacing": infos[k].pixel_spacing if infos[k] else None,
            "view": "UNKNOWN",
            "normal": False,
        }
        if names:
            lab = labels_by_path.get(p, {})
            rec["labels"] = {n: lab.get(n, np.nan) for n in names}
        records.append(rec)
    m = make_manifest(records)
    if names and not len(m):
        warnings.warn(f"{dataset}: no labelled image found under {root}", stacklevel=2)
    return m
