"""ChestX-Det / ChestX-Det10 (Deepwise AI Lab) reader: boxes and polygons on NIH images.

Sources: Lian et al., "A Structure-Aware Relation Network for Thoracic Diseases Detection and
Segmentation", IEEE TMI 2021 (ChestX-Det, 3,578 images, 13 classes, boxes + polygons) and
Liu et al., "ChestX-Det10", arXiv:2006.10550 (3,543 images, 10 classes, boxes); the
Deepwise-AILab/ChestX-Det-Dataset and ChestX-Det10-Dataset READMEs.

Format
------
``ChestX_Det_train.json`` / ``ChestX_Det_test.json`` (ChestX-Det10: ``train.json`` /
``test.json``): a JSON **list**, one object per image::

    {"file_name": "36199.png", "syms": ["Effusion", "Nodule"],
     "boxes": [[x1, y1, x2, y2], ...], "polygons": [[[x, y], [x, y], ...], ...]}

``syms[i]`` is the class of ``boxes[i]`` (and of ``polygons[i]`` when present); ``x1, y1`` is
the left-top and ``x2, y2`` the right-bottom corner in pixels of the 1024x1024 PNG. An image
with no ``syms`` was read and has no finding. Images are in ``train/`` / ``test/`` (or
``train_data/`` / ``test_data/``, or ``images/``).

Output
------
* Boxes ``(x1, y1, x2, y2)`` scaled by ``stored / 1024`` per axis (stored size from the
  header with ``check_files=True``; else ``stored_size``, default 1024). Box label = class.
* Labels: one column per class of :data:`CHESTX_DET_CLASSES` seen in the files (the
  dataset's own names, e.g. ``Effusion``, ``Pleural Thickening``, ``Diffuse Nodule``):
  1 if the image has a box of that class, else 0 (every image was fully annotated).
  ``normal`` when ``syms`` is empty. Unknown class names raise :class:`ManifestError`
  naming the file and entry (``on_unknown="keep"`` keeps them, with a warning).
* ``polygons`` (extra column): one flattened ``[x0, y0, x1, y1, ...]`` list per polygon in
  stored pixels, aligned with ``boxes`` (empty when the file has no polygons).
* ``split`` from the JSON name (``train`` / ``test``); ``id`` ``"chestx-det/<stem>"``;
  ``patient_id``: the NIH patient (``00000042`` -> ``42``) for NIH-style names, else the
  stem (the renamed ChestX-Det files cannot be traced to NIH patients). ``view``
  ``UNKNOWN``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest

from .frames import assumed_size, frame_scale
from ._common import UnknownLabelWarning, as_root, check_on_error, split_files, stored_sizes, table_manifest

__all__ = ["read_chestx_det", "CHESTX_DET_CLASSES"]

#: The 13 ChestX-Det classes (ChestX-Det10 uses the first 10 without Cardiomegaly, Diffuse
#: Nodule and Pleural Thickening).
CHESTX_DET_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion",
    "Emphysema", "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax",
)
_CANON = {c.lower(): c for c in CHESTX_DET_CLASSES}
FRAME = 1024.0
_NIH_RE = re.compile(r"^(\d{8})_\d{3}$")


def _split_of(p: Path) -> str:
    s = p.stem.lower()
    return "test" if "test" in s else ("val" if s.endswith("val") else "train")


def read_chestx_det(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    stored_size: int | tuple[int, int] | None = None,
    on_unknown: str = "raise",
    check_files: bool = True,
    on_error: str = "raise",
) -> Manifest:
    """Read ChestX-Det(10) under ``root`` (dataset ``chestx-det``); see the module docstring.

    Raises:
        ManifestError: no / unreadable JSON, an entry without ``file_name``, ``syms`` and
            ``boxes`` of different lengths, a box that is not 4 numbers, an unknown class
            (names file and entry index), the same image in two entries.
        BoxError: a zero-area box (names file, entry and image).
    """
    check_on_error(on_error)
    if on_unknown not in ("raise", "keep"):
        raise ValueError(f"on_unknown must be 'raise' or 'keep', got {on_unknown!r}")
    root = as_root(root)
    files = split_files(root, metadata, ["ChestX_Det*.json", "train.json", "test.json"],
                        "ChestX-Det JSON (ChestX_Det_train.json / train.json)", _split_of, max_depth=2)

    entries: list[dict] = []
    seen: dict[str, str] = {}
    unknown: list[str] = []
    vocab: list[str] = []
    for f in files:
        try:
            data = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{f}: cannot read ChestX-Det JSON: {e}") from None
        if not isinstance(data, list):
            raise ManifestError(f"{f}: expected a JSON list of image entries, got {type(data).__name__}")
        split = _split_of(Path(f))
        for k, e in enumerate(data):
            where = f"{f}: entry {k}"
            if not isinstance(e, dict) or not str(e.get("file_name", "")).strip():
                raise ManifestError(f"{where}: no 'file_name'")
            fn = str(e["file_name"]).strip()
            where += f" ({fn})"
            if fn in seen:
                raise ManifestError(f"{where}: image already listed in {seen[fn]}")
            seen[fn] = where
            syms = list(e.get("syms") or [])
            boxes = list(e.get("boxes") or [])
            polys = list(e.get("polygons") or [])
            if len(syms) != len(boxes):
                raise ManifestError(f"{where}: {len(syms)} syms but {len(boxes)} boxes")
            if polys and len(polys) != len(syms):
                raise ManifestError(f"{where}: {len(syms)} syms but {len(polys)} polygons")
            cls = []
            for s in syms:
                c = _CANON.get(" ".join(str(s).split()).lower())
                if c is None:
                    if on_unknown == "raise":
                        raise ManifestError(f"{where}: unknown ChestX-Det class {s!r} (known: {list(CHESTX_DET_CLASSES)})")
                    c = str(s).strip()
                    unknown.append(f"{where}: {s!r}")
                cls.append(c)
                if c not in vocab:
                    vocab.append(c)
            xyxy = []
            for b in boxes:
                try:
                    x1, y1, x2, y2 = (float(v) for v in b)
                except (TypeError, ValueError):
                    raise ManifestError(f"{where}: box must be [x1, y1, x2, y2], got {b!r}") from None
                xyxy.append((x1, y1, x2, y2))
            flat = []
            for p in polys:
                try:
                    a = np.asarray(p, dtype=np.float64).reshape(-1)
                except (TypeError, ValueError):
                    raise ManifestError(f"{where}: polygon must be a list of [x, y] points") from None
                if a.size % 2:
                    raise ManifestError(f"{where}: polygon with an odd number of coordinates")
                flat.append(a)
            entries.append({"fn": fn, "split": split, "cls": cls, "boxes": xyxy, "polys": flat, "where": where})
    if unknown:
        warnings.warn(f"chestx-det: {len(unknown)} box(es) with unknown class kept: {unknown[:5]}",
                      UnknownLabelWarning, stacklevel=2)

    found: dict[str, str] = {}
    for d in ("train", "test", "train_data", "test_data", "images", "."):
        dd = root / d
        if dd.is_dir():
            with os.scandir(dd) as it:
                for e in it:
                    if e.is_file() and e.name not in found:
                        found[e.name] = os.path.join(dd, e.name)
    n = len(entries)
    paths = np.array([found.get(e["fn"]) or str(root / e["split"] / e["fn"]) for e in entries], dtype=object)
    stems = [os.path.splitext(e["fn"])[0] for e in entries]
    ids = np.array([f"chestx-det/{s}" for s in stems], dtype=object)
    dw, dh = assumed_size(stored_size, FRAME)
    w, h, sp_mm, keep = stored_sizes("chestx-det", root, ids, paths, check_files, on_error, dw, dh)
    names = [c for c in CHESTX_DET_CLASSES if c in vocab] + [c for c in vocab if c not in CHESTX_DET_CLASSES]
    col = {c: j for j, c in enumerate(names)}
    L = np.zeros((n, len(names)), dtype=np.float32)
    boxes, polys = [], []
    for k, e in enumerate(entries):
        sx, sy = frame_scale((w[k], h[k]), (FRAME, FRAME)) if keep[k] else (1.0, 1.0)
        bl, pl = [], []
        for c, (x1, y1, x2, y2) in zip(e["cls"], e["boxes"]):
            L[k, col[c]] = 1.0
            try:
                bl.append(Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy, c).to_dict())
            except BoxError as err:
                raise BoxError(f"{e['where']}: {err}") from None
        for a in e["polys"]:
            q = a.copy()
            q[0::2] *= sx
            q[1::2] *= sy
            pl.append(q.tolist())
        boxes.append(bl)
        polys.append(pl)
    pid = []
    for s in stems:
        m = _NIH_RE.match(s)
        pid.append(str(int(m.group(1))) if m else s)
    return table_manifest(ids=ids, paths=paths, dataset="chestx-det",
                          split=np.array([e["split"] for e in entries], dtype=object), patient_id=pid,
                          width=w, height=h, pixel_spacing=sp_mm, view="UNKNOWN",
                          normal=np.array([not e["cls"] for e in entries], dtype=bool), boxes=boxes,
                          labels=(names, L), extras={"polygons": polys}, keep=keep)
