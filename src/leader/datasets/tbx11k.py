"""TBX11K tuberculosis reader (COCO-format boxes).

Source: Liu et al., "Rethinking Computer-aided Tuberculosis Diagnosis", CVPR 2020; the
TBX11K release layout ``imgs/{health,sick,tb,test,...}/*.png`` and
``annotations/json/TBX11K_{train,val}.json``; torchxrayvision PR 180 (field report BR-17).

* COCO ``images[]``: ``file_name`` relative to ``imgs/``, ``width``/``height`` (512).
  ``annotations[]``: ``bbox = [x, y, w, h]`` (top-left, float pixels of the 512x512 image),
  ``category_id`` -> ``categories[].name``.
* Boxes become ``(x, y, x + w, y + h)`` labelled with the category name, rescaled by
  ``stored / json`` size when the stored image is not the JSON's size.
* Labels: one column per category name (``ActiveTuberculosis``,
  ``ObsoletePulmonaryTuberculosis``, ``PulmonaryTuberculosis``), OR over an image's boxes,
  plus the harmonised ``Tuberculosis`` = OR of all categories. An image listed in a JSON
  with no annotation has 0 boxes and all TB labels 0. ``PulmonaryTuberculosis`` never
  occurs in train/val: the column is then all 0 (logged as "no positives").
* Images found under ``imgs/health``, ``imgs/sick`` or ``imgs/tb`` but in no JSON are also
  indexed with 0 boxes: ``health``/``sick`` -> all TB labels 0; ``tb`` -> ``Tuberculosis``
  = 1 (the folder says so) with the sub-type labels NaN, because without an annotation
  entry the type is unknown. Their split is ``train``. (Images in other folders such as
  ``imgs/test`` carry no labels and are not indexed.)
* ``normal`` is True for the ``health`` folder. The folder (``health`` / ``sick`` / ``tb``
  / ...) is kept in the extra column ``subset`` (healthy vs sick-but-not-TB).
* ``split`` from the JSON file name: ``*_train.json`` -> ``train``, ``*_val.json`` ->
  ``val``, ``*_test.json`` -> ``test``, ``*trainval*`` -> ``train``. An image listed in
  several JSONs is indexed once (first file in sorted order wins; a warning is issued).
* List files ``lists/*.txt`` (release layout; e.g. ``TBX11K_train.txt``, ``all_test.txt``):
  one image path per line, relative to ``imgs/`` (a leading ``imgs/`` is tolerated; the path
  may contain spaces: it ends with the last field that has an image suffix). Listed
  images that no JSON covers are indexed with the list's split (``*train*`` / ``*trainval*``
  -> ``train``, ``*val*`` -> ``val``, ``*test*`` -> ``test``) and folder-derived labels:
  ``health``/``sick`` -> TB labels 0, ``tb`` -> ``Tuberculosis`` = 1 with sub-types NaN,
  anything else (e.g. ``test/``, whose labels are withheld) -> all labels NaN. An image in
  a JSON keeps the JSON's split and labels. ``list_files=[]`` disables the lists.
* ``id`` ``"tbx11k/<stem>"``; ``patient_id`` is the stem (TBX11K has no patient ids);
  ``view`` ``UNKNOWN``; ``pixel_spacing`` unknown.

Caution (BR-17): TBX11K contains the Montgomery (138) and Shenzhen (662) sets; do not mix
it with NLM TB data without a content-hash duplicate check.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest, make_manifest

from .frames import frame_scale
from ._common import IMAGE_SUFFIXES, as_root, check_on_error, coco_image, coco_objects, read_sizes
from ._common import is_json_id as _is_json_id
from ._common import json_id as _json_id
from ._common import json_size as _json_size
from ._common import load_coco as _load_coco

__all__ = ["read_tbx11k", "TBX11K_CATEGORIES"]

log = logging.getLogger(__name__)

TBX11K_CATEGORIES = ("ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis")
TB = "Tuberculosis"
#: the TBX11K release stores every image at 512 x 512 (the frame when a JSON omits the size)
FRAME = 512
_FOLDERS = ("health", "sick", "tb")


def _list_path(line: str) -> str:
    """The image path of one list-file line. A path may contain spaces, so the line is not
    cut at the first space: the path runs up to the end of the last field that ends in an
    image suffix (any fields after it are ignored); without such a field, the whole line."""
    text = line.strip().replace("\\", "/")
    if not text:
        return ""
    ends = [m.end() for m in re.finditer(r"\S+", text) if Path(m.group()).suffix.lower() in IMAGE_SUFFIXES]
    return text[:ends[-1]] if ends else text


def _split_of(json_path: Path) -> str:
    s = json_path.stem.lower()
    if "trainval" in s:
        return "train"
    for suffix, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if s.endswith(suffix):
            return split
    return "train"


def _default_jsons(root: Path) -> list[Path]:
    d = root / "annotations" / "json"
    if not d.is_dir():
        return []
    files = sorted(p for p in d.iterdir() if p.suffix.lower() == ".json")
    tbx = [p for p in files if p.name.lower().startswith("tbx11k_")]
    if tbx:
        files = tbx
    has_parts = any(p.stem.lower().endswith(("_train", "_val")) for p in files)
    if has_parts:
        files = [p for p in files if "trainval" not in p.stem.lower()]
    return files


def read_tbx11k(
    root: str | os.PathLike,
    json_files: Sequence[str | os.PathLike] | None = None,
    *,
    check_files: bool = True,
    include_unlisted: bool = True,
    list_files: Sequence[str | os.PathLike] | None = None,
    on_error: str = "raise",
) -> Manifest:
    """Read TBX11K under ``root`` (dataset ``tbx11k``); see the module docstring.

    Args:
        root: folder with ``imgs/`` and ``annotations/json/``.
        json_files: COCO JSON files (default: ``annotations/json/TBX11K_*.json`` without
            ``trainval`` when train/val parts exist; else every JSON there).
        check_files: skip (with one warning) images whose file is missing and read the
            stored size from the header; False touches no image file and takes the size
            from the JSON.
        include_unlisted: also index ``imgs/{health,sick,tb}`` images that no JSON lists.
        list_files: split lists (default ``lists/*.txt`` when that folder exists).
        on_error: ``"raise"`` or ``"skip"`` for unreadable image headers.

    Raises:
        ManifestError: unreadable JSON (not UTF-8, not JSON: names the line; not a COCO
            object), a malformed or duplicate image / category entry, a width/height that
            is not a positive integer, an annotation whose image or category id is unknown,
            a malformed bbox (names the JSON file and annotation id), an unreadable list file.
        BoxError: a zero-area or non-finite box (names file, annotation and image).
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable,
            truncated or corrupt image (message starts with its path).
    """
    check_on_error(on_error)
    root = as_root(root)
    jsons = [Path(p) for p in json_files] if json_files is not None else _default_jsons(root)
    imgs_dir = root / "imgs"

    cat_names: list[str] = []
    entries: dict[str, dict] = {}  # file_name -> info
    dup: list[str] = []
    for jp in jsons:
        coco = _load_coco(jp)
        cats = {}
        for k, c in coco_objects(jp, coco, "categories"):
            cid = _json_id(jp, f"categories[{k}].id", c.get("id"))
            name = c.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ManifestError(f"{jp}: category {cid!r}: name must be a non-empty string, got {name!r}")
            if cid in cats:
                raise ManifestError(f"{jp}: duplicate category id {cid!r}")
            cats[cid] = name
            if name not in cat_names:
                cat_names.append(name)
        split = _split_of(jp)
        by_id: dict = {}
        for k, im in coco_objects(jp, coco, "images"):
            iid, fn = coco_image(jp, k, im)
            fn = fn.strip().replace("\\", "/")
            if Path(fn).name in ("", ".", "..") or "\x00" in fn:
                raise ManifestError(f"{jp}: image id {iid!r}: file_name {fn!r} does not name a file")
            if iid in by_id:
                raise ManifestError(f"{jp}: duplicate image id {iid!r} ({fn})")
            jw = _json_size(jp, iid, "width", im.get("width"))
            jh = _json_size(jp, iid, "height", im.get("height"))
            if fn in entries:
                dup.append(fn)
                by_id[iid] = None
                continue
            info = {
                "file_name": fn,
                "json_w": jw,
                "json_h": jh,
                "split": split,
                "ann": [],  # (label, x, y, w, h, ann_id)
                "listed": True,
                "source": jp,
            }
            entries[fn] = info
            by_id[iid] = info
        for k, a in coco_objects(jp, coco, "annotations"):
            aid = a.get("id", f"#{k}")
            img_ref = a.get("image_id")
            if not _is_json_id(img_ref) or img_ref not in by_id:
                raise ManifestError(f"{jp}: annotation {aid!r} refers to unknown image_id {img_ref!r}")
            info = by_id[img_ref]
            if info is None:  # image already indexed from an earlier JSON
                continue
            cat_ref = a.get("category_id")
            if not _is_json_id(cat_ref) or cat_ref not in cats:
                raise ManifestError(f"{jp}: annotation {aid!r} has unknown category_id {cat_ref!r}")
            bb = a.get("bbox")
            if not isinstance(bb, (list, tuple)) or len(bb) != 4:
                raise ManifestError(f"{jp}: annotation {aid!r} ({info['file_name']}): bbox must be [x, y, w, h], got {bb!r}")
            if any(isinstance(v, bool) for v in bb):
                raise ManifestError(f"{jp}: annotation {aid!r} ({info['file_name']}): non-numeric bbox {bb!r}")
            try:
                x, y, w, h = (float(v) for v in bb)
            except (TypeError, ValueError, OverflowError):
                raise ManifestError(f"{jp}: annotation {aid!r} ({info['file_name']}): non-numeric bbox {bb!r}") from None
            info["ann"].append((cats[cat_ref], x, y, w, h, aid))
    if dup:
        warnings.warn(
            f"tbx11k: {len(dup)} image(s) listed in more than one JSON were indexed once "
            f"(first: {dup[:5]})",
            stacklevel=2,
        )
    for name in TBX11K_CATEGORIES:  # keep the standard columns even if a JSON omits one
        if name not in cat_names and (jsons or include_unlisted):
            cat_names.append(name)

    lists = [Path(p) for p in list_files] if list_files is not None else (
        sorted(p for p in (root / "lists").iterdir() if p.suffix.lower() == ".txt")
        if (root / "lists").is_dir() else [])
    for lp in lists:
        try:
            lines = lp.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"{lp}: cannot read TBX11K list: {e}") from None
        split = _split_of(lp)
        for ln in lines:
            fn = _list_path(ln)
            if not fn:
                continue
            if fn.startswith("imgs/"):
                fn = fn[len("imgs/"):]
            if fn not in entries:
                entries[fn] = {"file_name": fn, "json_w": None, "json_h": None, "split": split,
                               "ann": [], "listed": False, "source": lp}

    if include_unlisted:
        for folder in _FOLDERS:
            d = imgs_dir / folder
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                fn = f"{folder}/{p.name}"
                if fn not in entries:
                    entries[fn] = {"file_name": fn, "json_w": None, "json_h": None, "split": "train",
                                   "ann": [], "listed": False, "source": d}

    fns = list(entries)
    paths = [str(imgs_dir / fn) for fn in fns]
    stems = [Path(fn).stem for fn in fns]
    ids = [f"tbx11k/{s}" for s in stems]
    if len(set(ids)) != len(ids):
        ids = [f"tbx11k/{Path(fn).with_suffix('').as_posix()}" for fn in fns]

    if check_files:
        infos, _, _ = read_sizes("tbx11k", root, ids, paths, on_error)
    else:
        infos = [None] * len(fns)

    records = []
    for k, fn in enumerate(fns):
        info = entries[fn]
        if check_files and infos[k] is None:
            continue
        jw, jh = info["json_w"] or FRAME, info["json_h"] or FRAME  # the release's 512 when absent
        if check_files:
            sw, sh = infos[k].width, infos[k].height
        else:
            sw, sh = info["json_w"], info["json_h"]
        sx, sy = frame_scale((sw, sh), (jw, jh)) if (sw and sh) else (1.0, 1.0)
        boxes = []
        for label, x, y, w, h, aid in info["ann"]:
            try:
                boxes.append(Box(x * sx, y * sy, (x + w) * sx, (y + h) * sy, label))
            except BoxError as e:
                raise BoxError(f"{info['source']}: annotation {aid!r} ({fn}): {e}") from None
        parts_ = fn.split("/")[:-1]
        folder = next((f for f in reversed(parts_) if f in _FOLDERS), parts_[0] if parts_ else "")
        present = {b.label for b in boxes}
        if info["listed"]:
            labels = {c: float(c in present) for c in cat_names}
            labels[TB] = float(bool(present))
        elif folder == "tb":
            labels = {c: np.nan for c in cat_names}
            labels[TB] = 1.0
        elif folder in ("health", "sick"):  # not in a JSON
            labels = {c: 0.0 for c in cat_names}
            labels[TB] = 0.0
        else:  # e.g. imgs/test from a list file: labels withheld
            labels = {c: np.nan for c in cat_names}
            labels[TB] = np.nan
        records.append(
            {
                "id": ids[k],
                "path": paths[k],
                "dataset": "tbx11k",
                "split": info["split"],
                "patient_id": stems[k],
                "width": sw,
                "height": sh,
                "view": "UNKNOWN",
                "normal": folder == "health",
                "boxes": boxes,
                "labels": labels,
                "subset": folder,
            }
        )
    m = make_manifest(records)
    if len(m):
        counts = m.label_counts()
        none = counts.loc[counts["positive"] == 0, "label"].tolist()
        if none:
            log.info("tbx11k: label(s) with no positives in %d images: %s", len(m), none)
    return m
