"""RSNA Pneumonia Detection Challenge (2018) reader.

Source: Kaggle ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``) and
optionally ``stage_2_detailed_class_info.csv`` (``patientId,class``); images
``<patientId>.dcm`` (1024x1024 DICOM, derived from NIH ChestX-ray14). Field report BR-07.

* The label CSV has **one row per box**: a ``patientId`` with several opacities repeats
  (30,227 rows cover 26,684 images in stage 2). Rows are grouped, so each image appears
  once with all its boxes.
* ``Target=0`` rows have empty x, y, width, height: such an image gets 0 boxes (never a
  NaN or 0x0 box). A ``Target=1`` row must have all four coordinates.
* Boxes: ``(x, y, x + width, y + height)``, top-left corner, pixels of the 1024x1024
  DICOM, scaled to the stored size; box label and image label ``Pneumonia`` (the
  challenge's "Lung Opacity" suspicious for pneumonia, harmonised as in torchxrayvision).
* ``normal`` is True when the detailed class file says ``Normal`` (not for
  ``No Lung Opacity / Not Normal``); False when that file is absent.
* ``id`` ``"rsna/<patientId>"``; ``patient_id`` = ``patientId`` (one image per patient,
  so a split by ``patient_id`` is a split by patient); ``view`` / ``pixel_spacing`` from the
  DICOM header when ``check_files=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest, normalize_view

from .frames import frame_scale
from ._common import as_root, check_on_error, find_first, find_required, read_table, stored_sizes, table_manifest

__all__ = ["read_rsna", "read_rsna_labels"]

RSNA_FRAME = 1024.0


def read_rsna_labels(path: str | os.PathLike) -> pd.DataFrame:
    """One row per image: ``patientId``, ``target`` (0/1) and ``boxes`` (list of
    ``(x, y, w, h)`` in the 1024 frame), in order of first appearance.

    Raises:
        ManifestError: unreadable CSV (not UTF-8, wrong column count: names the line);
            missing columns; a ``Target=1`` row with a missing coordinate, a
            ``Target=0`` row with coordinates, a Target other than 0/1, or an image with
            both targets (names the file, line and patientId).
    """
    path = Path(path)
    df = read_table(path, what="RSNA labels")
    need = ["patientId", "x", "y", "width", "height", "Target"]
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise ManifestError(f"{path}: missing column(s) {miss}; have {list(df.columns)}")
    line = np.arange(2, len(df) + 2)
    coords = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    target = pd.to_numeric(df["Target"], errors="coerce")

    def fail(mask, what):
        k = int(np.flatnonzero(mask.to_numpy())[0])
        raise ManifestError(f"{path}: line {line[k]}: patientId {df['patientId'].iloc[k]!r}: {what}")

    if df["patientId"].isna().any():
        fail(df["patientId"].isna(), "empty patientId")
    bad = ~target.isin([0, 1])
    if bad.any():
        fail(bad, f"Target must be 0 or 1, got {df['Target'][bad].iloc[0]!r}")
    pos = target == 1
    if (pos & coords.isna().any(axis=1)).any():
        fail(pos & coords.isna().any(axis=1), "Target=1 row with a missing coordinate")
    if (~pos & coords.notna().any(axis=1)).any():
        fail(~pos & coords.notna().any(axis=1), "Target=0 row with coordinates")
    mixed = target.groupby(df["patientId"]).transform("nunique") > 1
    if mixed.any():
        fail(mixed, "rows with both Target=0 and Target=1")

    ids = pd.unique(df["patientId"])
    t = target.groupby(df["patientId"], sort=False).max().reindex(ids)
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    pdf = coords[pos]
    for pid, x, y, w, h in zip(df["patientId"][pos], pdf["x"], pdf["y"], pdf["width"], pdf["height"]):
        boxes.setdefault(pid, []).append((float(x), float(y), float(w), float(h)))
    return pd.DataFrame({"patientId": ids, "target": t.to_numpy(dtype=float),
                         "boxes": [boxes.get(i, []) for i in ids]})


def read_rsna(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    stored_size: int | None = None,
    class_info: str | os.PathLike | None = None,
    on_error: str = "raise",
) -> Manifest:
    """Read RSNA Pneumonia under ``root`` (dataset ``rsna``); see the module docstring.

    Args:
        labels_csv: default ``*train_labels*.csv[.zip|.gz]`` in ``root`` or one folder down.
        check_files: True skips images that are missing (one warning) and reads sizes,
            view and spacing from the header; False opens nothing, size ``stored_size``
            (default 1024).
        class_info: explicit ``stage_2_detailed_class_info.csv`` (default: searched).

    Raises:
        ManifestError: no label CSV, malformed label or class-info CSV (names file and line).
        BoxError: a box that is invalid in its stored image (names the patientId).
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable image.
    """
    check_on_error(on_error)
    root = as_root(root)
    if labels_csv is None:
        labels_csv = find_required(root, ["*train_labels*.csv", "*train_labels*.csv.zip", "*train_labels*.csv.gz"],
                                   "RSNA *train_labels*.csv", max_depth=1)[0]
    lab = read_rsna_labels(labels_csv)
    normal_ids: set[str] = set()
    cls = [Path(class_info)] if class_info is not None else find_first(
        root, ["*detailed_class_info*.csv", "*detailed_class_info*.csv.zip"], max_depth=1)
    if cls:
        c = read_table(cls[0], what="RSNA detailed class info")
        if {"patientId", "class"} <= set(c.columns):
            normal_ids = set(c.loc[c["class"].fillna("").astype(str).str.strip() == "Normal", "patientId"])

    on_disk: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext.lower() in (".dcm", ".png", ".jpg", ".jpeg"):
                on_disk.setdefault(stem, os.path.join(dirpath, f))
    pids = lab["patientId"].tolist()
    rs = str(root)
    paths = np.array([on_disk.get(p) or f"{rs}/{p}.dcm" for p in pids], dtype=object)
    ids = np.array([f"rsna/{p}" for p in pids], dtype=object)
    n = len(pids)
    if check_files:
        w, h, sp_mm, keep = stored_sizes("rsna", root, ids, paths, True, on_error)
    else:
        w = h = np.full(n, float(stored_size or RSNA_FRAME))
        sp_mm, keep = np.full(n, np.nan), np.ones(n, dtype=bool)
    box_lists = lab["boxes"].tolist()
    boxes: list[list[dict]] = []
    views = np.full(n, "UNKNOWN", dtype=object)
    for k, pid in enumerate(pids):
        if not keep[k]:
            boxes.append([])
            continue
        sx, sy = frame_scale((w[k], h[k]), (RSNA_FRAME, RSNA_FRAME))
        bl = []
        for x, y, bw, bh in box_lists[k]:
            try:
                bl.append(Box(x * sx, y * sy, (x + bw) * sx, (y + bh) * sy, "Pneumonia").to_dict())
            except BoxError as e:
                raise BoxError(f"{labels_csv}: patientId {pid!r}: {e}") from None
        boxes.append(bl)
        if check_files and paths[k].lower().endswith(".dcm"):
            from .siim import _dicom_tags

            views[k] = normalize_view(_dicom_tags(Path(paths[k]))[1])
    return table_manifest(ids=ids, paths=paths, dataset="rsna", split="train", patient_id=pids, width=w, height=h,
                          pixel_spacing=sp_mm, view=views, normal=np.array([p in normal_ids for p in pids], dtype=bool),
                          boxes=boxes, labels={"Pneumonia": lab["target"].to_numpy(dtype=np.float32)}, keep=keep)
