"""VinDr-CXR (Vingroup Big Data Institute) reader: several radiologists per image.

Sources: Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's
annotations", Scientific Data 9, 429 (2022); the PhysioNet release v1.0.0
(``annotations/annotations_{train,test}.csv``, ``annotations/image_labels_{train,test}.csv``,
``train/ test/ <image_id>.dicom``); the Kaggle "VinBigData Chest X-ray Abnormalities
Detection" ``train.csv``; vinbigdata-medical/vindr-cxr issue 3; field reports BR-03, BR-09.

Files (recognised by their header, ``.csv`` / ``.csv.gz``)
---------------------------------------------------------
Box file (required): one row per (image, radiologist, finding); Kaggle
    ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max`` or PhysioNet
    ``image_id,rad_id,class_name,x_min,y_min,x_max,y_max``. ``No finding`` rows have empty
    coordinates; every other row must have all four (else :class:`ManifestError` naming
    the file and line). Coordinates are pixels of the **original DICOM**, ``(x_min,
    y_min)`` top-left, ``(x_max, y_max)`` bottom-right.
Image-label file (optional, PhysioNet ``image_labels_*.csv``): ``image_id, rad_ID`` (or no
    rad column for the test consensus) and one 0/1 column per label, including the six
    global labels (``COPD``, ``Lung tumor``, ``Pneumonia``, ``Tuberculosis``, ``Other
    diseases``, ``No finding``).
Original sizes (optional; needed when the stored images are resized PNG/JPG): a CSV with
    ``image_id`` and ``width, height`` (or ``original_width, original_height``, or
    ``Columns, Rows``, or the Kaggle-resized ``dim0, dim1`` = rows, columns).

Class names are matched **case-insensitively** onto :data:`VINDR_CLASSES` (``"nodule/mass"``,
``"Lung opacity"`` and ``"Other disease"`` all work); an unknown name raises
:class:`ManifestError` naming the file, line and name (``on_unknown="keep"`` keeps it as
its own label with one :class:`UnknownLabelWarning` instead).

Radiologist policy (``radiologists=``)
--------------------------------------
The Kaggle training images were each read by 3 of 17 radiologists (``R1`` ... ``R17``).
Boxes of one class are grouped across readers by single-linkage on IoU >= ``iou`` (default
0.4). ``votes`` = number of distinct radiologists who marked a class on the image.

===============  ============================  ==============================================
policy           labels (per class)            boxes
===============  ============================  ==============================================
``"all"``        1 if votes >= 1 else 0        every radiologist's box (**default**; the
                                               radiologist of each box is in the extra
                                               column ``box_rads``)
``"union"``      1 if votes >= 1 else 0        one box per group: the enclosing box
``"consensus"``  1 if votes >= ``min_votes``;  one box per group marked by >= ``min_votes``
                 0 if votes == 0; NaN between  radiologists: the mean of the group's boxes
                 (readers disagree)
===============  ============================  ==============================================

``min_votes`` defaults to a strict majority of the radiologists who read the image
(2 of 3; 1 of 1 for the test-set consensus). ``No finding`` is not a label column: ``normal``
is True when every label of the image is 0 under the policy.

Box frame (BR-09a)
------------------
Boxes are converted to pixels of the **stored** image per axis: ``x * stored_w / orig_w``,
``y * stored_h / orig_h``. The original size comes from the ``original_sizes`` file, else
from the DICOM header when the stored file is DICOM (then stored = original). With
``check_files=False`` the stored size is ``stored_size`` (int or ``(w, h)``) when given,
else the original size (stored = original DICOM). A stored non-DICOM image with boxes and
no known original size raises :class:`ManifestError` listing the images.

Output: ``id`` ``"vindr/<image_id>"``; ``patient_id`` = ``image_id`` (VinDr publishes no
patient ids); ``split`` ``train`` / ``test`` from the file name (Kaggle ``train.csv`` is the
official training set); ``view`` ``UNKNOWN`` unless the DICOM header says otherwise
(VinDr-CXR is frontal, but AP/PA is not published); extras ``rad_ids`` (comma-separated
readers) and ``box_rads``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest

from ._common import (UnknownLabelWarning, as_root, check_on_error, csv_header, find_first, read_table,
                      require_columns, stored_sizes, table_manifest)

__all__ = ["read_vindr", "VINDR_CLASSES", "canonical_vindr_class", "group_boxes", "RADIOLOGIST_POLICIES"]

#: VinDr-CXR label vocabulary (22 local + 6 global labels of the PhysioNet release; the
#: Kaggle subset uses 14 local labels + ``No finding``).
VINDR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung cavity",
    "Lung cyst", "Lung Opacity", "Mediastinal shift", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)
NO_FINDING = "No finding"
_ALIASES = {"other disease": "Other diseases", "interstitial lung disease": "ILD", "nodule / mass": "Nodule/Mass",
            "no findings": "No finding"}
_CANON = {c.lower(): c for c in VINDR_CLASSES} | _ALIASES

RADIOLOGIST_POLICIES = ("all", "union", "consensus")


def canonical_vindr_class(name: str) -> str | None:
    """Case-insensitive (and whitespace-tolerant) class name -> :data:`VINDR_CLASSES` entry."""
    key = " ".join(str(name).strip().split()).lower()
    return _CANON.get(key)


def _iou(a, b) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def group_boxes(boxes: Sequence[Sequence[float]], iou: float = 0.4) -> list[list[int]]:
    """Single-linkage groups of boxes ``(x0, y0, x1, y1)``: two boxes are linked when their
    IoU >= ``iou``. Returns lists of indices, each sorted, groups ordered by first index."""
    n = len(boxes)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if _iou(boxes[i], boxes[j]) >= iou:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _kind(path: Path) -> str:
    cols = {c.lower() for c in csv_header(path)}
    if "image_id" in cols and "class_name" in cols:
        return "boxes"
    if "image_id" in cols and ({"dim0", "dim1"} <= cols or {"width", "height"} <= cols
                               or {"original_width", "original_height"} <= cols or {"rows", "columns"} <= cols):
        return "sizes"
    if "image_id" in cols and any(canonical_vindr_class(c) for c in cols):
        return "labels"
    raise ManifestError(f"{path}: not a VinDr-CXR box / image-label / size CSV (header {sorted(cols)[:8]})")


def _split_of(path: Path) -> str:
    s = path.name.lower()
    return "test" if "test" in s else "train"


def _read_sizes(path: Path) -> dict[str, tuple[float, float]]:
    df = read_table(path, what="VinDr original sizes")
    cols = {c.lower(): c for c in df.columns}
    if "dim0" in cols and "dim1" in cols:
        hc, wc = cols["dim0"], cols["dim1"]
    elif "original_width" in cols:
        wc, hc = cols["original_width"], cols["original_height"]
    elif "width" in cols:
        wc, hc = cols["width"], cols["height"]
    else:
        wc, hc = cols["columns"], cols["rows"]
    w = pd.to_numeric(df[wc], errors="coerce").to_numpy(dtype=float)
    h = pd.to_numeric(df[hc], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ManifestError(f"{path}: line {k + 2}: invalid original size {df[wc].iat[k]!r} x {df[hc].iat[k]!r}")
    ids = df[cols["image_id"]].astype(str).str.strip().tolist()
    return {i: (float(a), float(b)) for i, a, b in zip(ids, w, h)}


def read_vindr(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    radiologists: str = "all",
    min_votes: int | None = None,
    iou: float = 0.4,
    original_sizes: str | os.PathLike | Mapping[str, tuple[float, float]] | None = None,
    stored_size: int | tuple[int, int] | None = None,
    on_unknown: str = "raise",
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read VinDr-CXR under ``root`` (dataset ``vindr``); see the module docstring.

    Args:
        metadata: box / image-label / size CSVs (recognised by header); default
            ``annotations*.csv``, ``image_labels*.csv``, ``train.csv``, ``vinbigdata*.csv``
            (``.gz``) within two folder levels.
        radiologists: ``"all"`` (default) / ``"union"`` / ``"consensus"``.
        min_votes: consensus threshold (default: strict majority of the image's readers).
        iou: IoU (0-1] linking boxes of one class into a group (union / consensus).
        original_sizes: CSV path or ``{image_id: (width, height)}`` of the original DICOMs.
        stored_size: stored image size assumed with ``check_files=False``.
        on_unknown: ``"raise"`` (default) or ``"keep"`` for class names outside
            :data:`VINDR_CLASSES`.

    Raises:
        ManifestError: no box file; missing columns; a finding row without coordinates;
            an unknown class (``on_unknown="raise"``); a resized stored image with boxes
            but no original size.
        BoxError: a box with ``x_max <= x_min`` or ``y_max <= y_min`` (names file, line).
        ValueError: unknown policy, ``iou`` outside (0, 1], ``min_votes < 1``.
    """
    check_on_error(on_error)
    if radiologists not in RADIOLOGIST_POLICIES:
        raise ValueError(f"radiologists must be one of {RADIOLOGIST_POLICIES}, got {radiologists!r}")
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    if min_votes is not None and min_votes < 1:
        raise ValueError(f"min_votes must be >= 1, got {min_votes!r}")
    if on_unknown not in ("raise", "keep"):
        raise ValueError(f"on_unknown must be 'raise' or 'keep', got {on_unknown!r}")
    root = as_root(root)
    if metadata is None:
        files = find_first(root, ["annotations*.csv", "annotations*.csv.gz", "image_labels*.csv",
                                  "image_labels*.csv.gz", "train.csv", "train.csv.gz", "vinbigdata*.csv",
                                  "vinbigdata*.csv.gz", "*meta*.csv"], max_depth=2)
    else:
        files = [Path(metadata)] if isinstance(metadata, (str, os.PathLike)) else [Path(f) for f in metadata]
    kinds: dict[str, list[Path]] = {"boxes": [], "labels": [], "sizes": []}
    for f in files:
        try:
            kinds[_kind(f)].append(f)
        except ManifestError:
            if metadata is not None:
                raise
    if not kinds["boxes"]:
        raise ManifestError(f"{root}: no VinDr-CXR box file (image_id, class_name, rad_id, x_min, ...) found")

    sizes: dict[str, tuple[float, float]] = {}
    if isinstance(original_sizes, Mapping):
        sizes.update({str(k): (float(v[0]), float(v[1])) for k, v in original_sizes.items()})
    elif original_sizes is not None:
        sizes.update(_read_sizes(Path(original_sizes)))
    for f in kinds["sizes"]:
        sizes.update(_read_sizes(f))

    # ---- gather per image -----------------------------------------------------------
    order: list[str] = []
    split_of: dict[str, str] = {}
    rads: dict[str, list[str]] = {}
    votes: dict[str, dict[str, set]] = {}  # image -> class -> set(rad)
    raw_boxes: dict[str, list[tuple[str, str, float, float, float, float, str]]] = {}
    vocab: list[str] = []
    unknown: dict[str, list[str]] = {}

    def add_reading(i: str, r: str, split: str) -> None:
        """Image ``i`` read by radiologist ``r``: a new image is added in file order with the
        split of the first file that lists it."""
        if i not in rads:
            order.append(i)
            rads[i] = []
            votes[i] = {}
            raw_boxes[i] = []
            split_of[i] = split
        if r not in rads[i]:
            rads[i].append(r)

    def canon(name: str, where: str) -> str:
        c = canonical_vindr_class(name)
        if c is not None:
            return c
        if on_unknown == "raise":
            raise ManifestError(f"{where}: unknown VinDr-CXR class {name!r} (known: {list(VINDR_CLASSES)})")
        key = " ".join(str(name).strip().split())
        unknown.setdefault(key, []).append(where)
        return key

    for f in kinds["boxes"]:
        df = read_table(f, what="VinDr-CXR box file")
        cols = {c.lower(): c for c in df.columns}
        require_columns(df.rename(columns=str.lower), f, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"])
        rad_c = cols.get("rad_id")
        img = df[cols["image_id"]].fillna("").astype(str).str.strip().to_numpy(dtype=object)
        cls = df[cols["class_name"]].fillna("").astype(str).to_numpy(dtype=object)
        rad = (df[rad_c].fillna("").astype(str).str.strip().to_numpy(dtype=object) if rad_c
               else np.full(len(df), "consensus", dtype=object))
        xy = np.column_stack([pd.to_numeric(df[cols[c]], errors="coerce").to_numpy(dtype=float)
                              for c in ("x_min", "y_min", "x_max", "y_max")])
        ucls = {u: canon(u, f"{f}: line {int(np.flatnonzero(cls == u)[0]) + 2}") for u in pd.unique(cls)}
        split = _split_of(f)
        for k in range(len(df)):
            i = img[k]
            if not i:
                raise ManifestError(f"{f}: line {k + 2}: empty image_id")
            r = rad[k]
            add_reading(i, r, split)
            c = ucls[cls[k]]
            if c == NO_FINDING:
                continue
            if c not in vocab:
                vocab.append(c)
            votes[i].setdefault(c, set()).add(r)
            x0, y0, x1, y1 = xy[k]
            if not all(map(math.isfinite, (x0, y0, x1, y1))):
                raise ManifestError(f"{f}: line {k + 2}: image {i!r}: class {cls[k]!r} row with a missing or "
                                    f"non-numeric coordinate {tuple(df[cols[c_]].iat[k] for c_ in ('x_min', 'y_min', 'x_max', 'y_max'))}")
            if not (x1 > x0 and y1 > y0):
                raise BoxError(f"{f}: line {k + 2}: image {i!r}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero "
                               f"or negative size")
            raw_boxes[i].append((c, r, float(x0), float(y0), float(x1), float(y1), f"{f.name}:{k + 2}"))

    for f in kinds["labels"]:
        df = read_table(f, what="VinDr-CXR image labels")
        cols = {c.lower(): c for c in df.columns}
        rad_c = cols.get("rad_id")
        img = df[cols["image_id"]].fillna("").astype(str).str.strip().to_numpy(dtype=object)
        rad = (df[rad_c].fillna("").astype(str).str.strip().to_numpy(dtype=object) if rad_c
               else np.full(len(df), "consensus", dtype=object))
        lab_cols = [c for c in df.columns if c.lower() not in ("image_id", "rad_id")]
        canon_cols = {c: canon(c, f"{f}: header") for c in lab_cols}
        split = _split_of(f)
        vals = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in lab_cols}
        for c in lab_cols:
            bad = ~np.isin(vals[c], [0.0, 1.0])
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ManifestError(f"{f}: line {k + 2}: label {c!r} = {df[c].iat[k]!r} is not 0/1")
        for k in range(len(df)):
            i = img[k]
            add_reading(i, rad[k], split)
            for c in lab_cols:
                cc = canon_cols[c]
                if cc == NO_FINDING:
                    continue
                if cc not in vocab:
                    vocab.append(cc)
                if vals[c][k] == 1.0:
                    votes[i].setdefault(cc, set()).add(rad[k])
    if unknown:
        warnings.warn(f"vindr: {sum(map(len, unknown.values()))} row(s) with class name(s) outside VINDR_CLASSES "
                      f"kept as their own labels: " + "; ".join(f"{k!r} ({v[0]})" for k, v in list(unknown.items())[:5]),
                      UnknownLabelWarning, stacklevel=2)
    names = [c for c in VINDR_CLASSES if c in vocab] + [c for c in vocab if c not in VINDR_CLASSES]

    # ---- paths / sizes --------------------------------------------------------------
    found: dict[str, str] = {}
    for d in [root / "train", root / "test", root / "images", root]:
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    stem, ext = os.path.splitext(e.name)
                    if ext.lower() in (".dicom", ".dcm", ".png", ".jpg", ".jpeg") and stem not in found:
                        found[stem] = os.path.join(d, e.name)
    rs = str(root)
    paths = np.array([found.get(i) or f"{rs}/{split_of[i]}/{i}.dicom" for i in order], dtype=object)
    ids = np.array([f"vindr/{i}" for i in order], dtype=object)
    n = len(order)
    orig = np.array([sizes.get(i, (np.nan, np.nan)) for i in order], dtype=float).reshape(n, 2)
    if check_files:
        w, h, sp_mm, keep = stored_sizes("vindr", root, ids, paths, True, on_error)
        is_dcm = np.array([p.lower().endswith((".dicom", ".dcm")) for p in paths], dtype=bool)
        # a stored DICOM is the original
        fill = np.isnan(orig[:, 0]) & is_dcm
        orig[fill, 0], orig[fill, 1] = w[fill], h[fill]
    else:
        if stored_size is None:
            w, h = orig[:, 0].copy(), orig[:, 1].copy()
        elif isinstance(stored_size, (tuple, list)):
            w, h = np.full(n, float(stored_size[0])), np.full(n, float(stored_size[1]))
        else:
            w = h = np.full(n, float(stored_size))
        sp_mm, keep = np.full(n, np.nan), np.ones(n, dtype=bool)

    # ---- policy ---------------------------------------------------------------------
    L = np.zeros((n, len(names)), dtype=np.float32)
    col = {c: j for j, c in enumerate(names)}
    boxes: list[list[dict]] = []
    box_rads: list[list[str]] = []
    no_frame: list[str] = []
    for k, i in enumerate(order):
        nr = len(rads[i])
        need = min_votes if min_votes is not None else nr // 2 + 1
        for c, rs in votes[i].items():
            v = len(rs)
            if radiologists == "consensus":
                L[k, col[c]] = 1.0 if v >= need else (np.nan if v > 0 else 0.0)
            else:
                L[k, col[c]] = 1.0
        rb = raw_boxes[i]
        out: list[dict] = []
        out_r: list[str] = []
        if rb and keep[k]:
            ow, oh = orig[k]
            sw, sh = w[k], h[k]
            if np.isnan(ow) or np.isnan(oh):
                if check_files or stored_size is not None:
                    no_frame.append(i)
                    boxes.append([])
                    box_rads.append([])
                    continue
                sx = sy = 1.0  # stored = original, size unknown
            else:
                sx, sy = sw / ow, sh / oh
            sel: list[tuple[str, list[tuple]]] = []
            if radiologists == "all":
                sel = [(b[0], [b]) for b in rb]
            else:
                by_cls: dict[str, list[tuple]] = {}
                for b in rb:
                    by_cls.setdefault(b[0], []).append(b)
                for c, bl in by_cls.items():
                    for g in group_boxes([b[2:6] for b in bl], iou):
                        members = [bl[j] for j in g]
                        if radiologists == "consensus" and len({m[1] for m in members}) < need:
                            continue
                        sel.append((c, members))
            for c, members in sel:
                if len(members) == 1:
                    x0, y0, x1, y1 = members[0][2:6]
                elif radiologists == "union":
                    x0 = min(b[2] for b in members)
                    y0 = min(b[3] for b in members)
                    x1 = max(b[4] for b in members)
                    y1 = max(b[5] for b in members)
                else:
                    k_ = float(len(members))
                    x0, y0, x1, y1 = (sum(b[j] for b in members) / k_ for j in range(2, 6))
                bx = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
                if not (bx[2] > bx[0] and bx[3] > bx[1]):
                    try:
                        Box(*bx, c)
                    except BoxError as e:
                        raise BoxError(f"{members[0][6]}: image {i!r}: {e}") from None
                out.append({"x0": bx[0], "y0": bx[1], "x1": bx[2], "y1": bx[3], "label": c})
                out_r.append(",".join(sorted({m[1] for m in members})))
        boxes.append(out)
        box_rads.append(out_r)
    if no_frame:
        raise ManifestError(
            f"vindr: {len(no_frame)} stored image(s) with boxes have no known original size, so their "
            f"boxes cannot be converted to stored pixels (BR-09): {no_frame[:5]}; pass original_sizes= "
            f"(a CSV with image_id and width/height, or dim0/dim1) or store the original DICOMs")
    normal = ~np.isnan(L).any(axis=1) & (np.nansum(L, axis=1) == 0) if len(names) else np.ones(n, dtype=bool)
    return table_manifest(
        ids=ids, paths=paths, dataset="vindr", split=np.array([split_of[i] for i in order], dtype=object),
        patient_id=np.asarray(order, dtype=object), width=w, height=h, pixel_spacing=sp_mm, view="UNKNOWN",
        normal=normal, boxes=boxes, labels=(names, L),
        extras={"rad_ids": np.array([",".join(rads[i]) for i in order], dtype=object),
                "box_rads": box_rads,
                "original_width": orig[:, 0], "original_height": orig[:, 1]},
        keep=keep)
