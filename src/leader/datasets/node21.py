"""NODE21 (nodule detection challenge, Radboudumc / DIAG Nijmegen) reader.

Sources: Sogancioglu et al., "Nodule detection and generation on chest X-rays: NODE21
Challenge", IEEE TMI 2024; the Zenodo training set (``images/*.mha`` + ``metadata.csv``)
and ``node21.grand-challenge.org/Data``; the reference loader in DIAGNijmegen/node21
``noduledetection/training_utils/dataset.py``.

Format
------
``images/<name>.mha``: preprocessed frontal CXRs, 1024x1024 (resized preserving aspect
ratio, padded), uint16, with spacing in the MetaImage header. ``metadata.csv``: one row per
nodule box with columns ``img_name, x, y, width, height, label`` (an unnamed first index
column may precede them); ``x, y`` is the top-left corner and ``width, height`` the size in
pixels of the 1024x1024 image; ``label`` 1 = nodule, 0 = image without nodule (its box
fields are 0 or blank and ignored).

Output
------
* Boxes ``(x, y, x + width, y + height)`` labelled ``Nodule``, scaled by ``stored / 1024``
  per axis (stored size from the header with ``check_files=True``, else ``stored_size``,
  default 1024).
* Label ``Nodule``: 1 if the image has a ``label=1`` row, else 0. ``normal`` is False:
  NODE21 non-nodule images were selected as "without significant other pathologies",
  which is not a stated normal reading.
* A ``label`` other than 0/1, or a ``label=1`` row with a missing / non-positive size
  raises :class:`ManifestError` naming the file, line and image.
* ``id`` ``"node21/<stem>"``, ``patient_id`` = stem (no patient ids published), ``split``
  ``train`` (the challenge test sets are private), ``view`` ``UNKNOWN`` (frontal, AP/PA not
  given). ``pixel_spacing`` from the ``.mha`` header with ``check_files=True``.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest

from .frames import assumed_size, frame_scale
from ._common import (as_root, check_on_error, read_table, require_columns, resolve_metadata, stored_sizes,
                      table_manifest)

__all__ = ["read_node21"]

FRAME = 1024.0


def read_node21(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    stored_size: int | tuple[int, int] | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read NODE21 under ``root`` (dataset ``node21``); see the module docstring.

    Raises:
        ManifestError: no ``metadata.csv``, missing columns, bad ``label`` or box values
            (names the file, line and image).
        BoxError: a box that is invalid after scaling.
    """
    check_on_error(on_error)
    root = as_root(root)
    csv_path = resolve_metadata(root, metadata, ["metadata.csv"], "NODE21 metadata.csv")[0]
    df = read_table(csv_path, what="NODE21 metadata")
    require_columns(df, csv_path, ["img_name", "x", "y", "width", "height", "label"])
    names = df["img_name"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    if (names == "").any():
        raise ManifestError(f"{csv_path}: line {int(np.flatnonzero(names == '')[0]) + 2}: empty img_name")
    lab = pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(lab, [0.0, 1.0])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ManifestError(f"{csv_path}: line {k + 2}: image {names[k]!r}: label {df['label'].iat[k]!r} is not 0/1")
    xywh = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
                            for c in ("x", "y", "width", "height")])
    pos = lab == 1.0
    badbox = pos & ~(np.isfinite(xywh).all(axis=1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0))
    if badbox.any():
        k = int(np.flatnonzero(badbox)[0])
        raise ManifestError(f"{csv_path}: line {k + 2}: image {names[k]!r}: nodule row with a missing or "
                            f"non-positive box {tuple(df[c].iat[k] for c in ('x', 'y', 'width', 'height'))}")
    order = list(dict.fromkeys(names.tolist()))
    per: dict[str, list[tuple]] = {i: [] for i in order}
    for k in np.flatnonzero(pos):
        per[names[k]].append((*xywh[k], k + 2))
    img_dir = root / "images" if (root / "images").is_dir() else root
    paths = np.array([str(img_dir / i) for i in order], dtype=object)
    stems = [os.path.splitext(i)[0] for i in order]
    ids = np.array([f"node21/{s}" for s in stems], dtype=object)
    dw, dh = assumed_size(stored_size, FRAME)
    w, h, sp_mm, keep = stored_sizes("node21", root, ids, paths, check_files, on_error, dw, dh)
    boxes = []
    for k, i in enumerate(order):
        sx, sy = frame_scale((w[k], h[k]), (FRAME, FRAME)) if keep[k] else (1.0, 1.0)
        bl = []
        for x, y, bw, bh, line in per[i]:
            try:
                bl.append(Box(x * sx, y * sy, (x + bw) * sx, (y + bh) * sy, "Nodule").to_dict())
            except BoxError as e:
                raise BoxError(f"{csv_path}: line {line}: image {i!r}: {e}") from None
        boxes.append(bl)
    nod = np.array([1.0 if per[i] else 0.0 for i in order], dtype=np.float32)
    return table_manifest(ids=ids, paths=paths, dataset="node21", split="train", patient_id=stems,
                          width=w, height=h, pixel_spacing=sp_mm, view="UNKNOWN", normal=False, boxes=boxes,
                          labels={"Nodule": nod}, keep=keep)
