"""JSRT (Japanese Society of Radiological Technology) chest radiograph reader.

Source: Shiraishi et al., AJR 2000 (the JSRT database): 247 PA radiographs, 2048x2048,
12-bit, 0.175 mm/pixel, headerless big-endian ``<ID>.IMG``; 154 nodule cases
``JPCLN###`` listed in ``CLNDAT_EN.txt`` and 93 non-nodule cases ``JPCNN###`` in
``CNNDAT_EN.TXT``. Landmarks: HybridGNet (Gaggion et al.), derived from the SCR masks
(van Ginneken et al. 2006).

Layouts
-------
* HybridGNet: ``images/<ID>.png`` or ``images/<ID>-checkpoint.png`` (1024x1024),
  ``landmarks/<ID>.npy`` (shape ``(332,)`` float64 = 166 flattened (x, y) points in pixels
  of the 1024x1024 image; order right lung 44, left lung 50, heart 26, right clavicle 23,
  left clavicle 23) and ``Clinical_Information/CLNDAT_EN.txt``, ``CNNDAT_EN.TXT``.
* Raw JSRT: ``<ID>.IMG`` (2048x2048) anywhere under ``root`` with the two list files.

Clinical files
--------------
Records are separated by CR (``\\r``), LF or CRLF. ``CLNDAT_EN.txt`` fields are
tab-separated (some long text fields contain stray tabs, so the fields after the 7th are
joined): file name, subtlety (1-5), nodule size (mm), age, sex, nodule centre x, y
(pixels of the 2048x2048 original, 0.175 mm/px), malignant/benign, location, diagnosis.
``CNNDAT_EN.TXT`` is whitespace-separated; only the file name is used.

Output
------
* ``id`` ``"jsrt/<ID>"``, ``patient_id`` ``<ID>``, ``view`` ``PA``, ``split`` from a
  ``Train``/``Val``/``Test`` folder in the image path, else ``train``.
* Label ``Nodule``: 1 for nodule cases, 0 for non-nodule cases (which are ``normal``).
* Nodule box (label ``Nodule``), in stored pixels: the centre ± radius with
  ``radius = size_mm / 0.175 / 2`` in the 2048 frame, all scaled by ``stored / 2048``.
  A nodule case without a clinical record has ``Nodule=1`` and no box.
* ``landmarks`` from ``<ID>.npy``, scaled by ``stored / 1024`` (HybridGNet frame),
  ``landmark_scheme="jsrt166"``; None when there is no landmark file.
* ``pixel_spacing`` = ``0.175 * 2048 / stored_width`` mm.
* Extra columns ``subtlety`` (1-5, NaN for non-nodule) and ``malignancy``.

* SCR masks (van Ginneken et al., Med. Image Anal. 2006): files ``<ID>.gif`` / ``.png`` in
  organ folders (``right lung``, ``left lung``, ``heart``, ``right clavicle``, ``left
  clavicle``) below any folder whose name contains ``mask`` (e.g. ``scratch/masks/heart/
  JPCLN001.gif``; SCR masks are 1024x1024, half the 2048 original). When any is found the
  extra column ``masks`` holds a JSON object ``{organ: path}`` per image (``"{}"`` when the
  image has none). Masks are located, not decoded. (SCR ``.pfs`` landmark files are not read.)

Rows are the images found under ``root`` plus the cases of the clinical lists; with
``check_files=True`` list entries without an image file are skipped (one warning).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest, make_manifest

from .frames import frame_scale, map_points
from ._common import as_root, check_on_error, find_first, read_sizes, split_from_path

__all__ = ["read_jsrt", "parse_clndat", "parse_cnndat", "JSRT_SPACING_MM", "JSRT_SIZE"]

JSRT_SPACING_MM = 0.175
JSRT_SIZE = 2048
HYBRIDGNET_SIZE = 1024
_ID_RE = re.compile(r"^(JPC(?:LN|NN)\d{3})(?:-checkpoint)?$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".png", ".img", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _records(path: Path) -> list[tuple[int, str]]:
    text = path.read_bytes().decode("latin-1")
    recs = re.split(r"\r\n|\r|\n", text)
    return [(i + 1, r) for i, r in enumerate(recs) if r.strip()]


def _case_id(name: str) -> str:
    return Path(name.strip()).stem.upper()


def parse_clndat(path: str | os.PathLike) -> dict[str, dict]:
    """Parse ``CLNDAT_EN.txt`` -> ``{ID: {subtlety, size_mm, age, sex, x, y, malignancy,
    location_diagnosis}}``; ``x, y`` in pixels of the 2048x2048 original.

    Raises:
        ManifestError: a record with fewer than 7 fields or a non-numeric size / centre
            (names file and record number).
    """
    path = Path(path)
    out: dict[str, dict] = {}
    for rec_no, rec in _records(path):
        fields = [f.strip() for f in rec.split("\t") if f.strip()]
        if len(fields) < 7:
            fields = rec.split()
        if len(fields) < 7:
            raise ManifestError(f"{path}: record {rec_no}: expected >= 7 fields, got {fields!r}")
        cid = _case_id(fields[0])
        try:
            size_mm = float(fields[2])
            x, y = float(fields[5]), float(fields[6])
        except ValueError:
            raise ManifestError(
                f"{path}: record {rec_no} ({cid}): non-numeric size/centre {fields[2]!r}, "
                f"{fields[5]!r}, {fields[6]!r}"
            ) from None

        def num(s: str) -> float:
            try:
                return float(s)
            except ValueError:
                return float("nan")

        out[cid] = {
            "subtlety": num(fields[1]),
            "size_mm": size_mm,
            "age": num(fields[3]),
            "sex": fields[4],
            "x": x,
            "y": y,
            "malignancy": fields[7] if len(fields) > 7 else "",
            "location_diagnosis": " ".join(fields[8:]),
            "record": rec_no,
        }
    return out


def parse_cnndat(path: str | os.PathLike) -> list[str]:
    """Case ids of ``CNNDAT_EN.TXT`` (first whitespace-separated field of each record)."""
    return [_case_id(rec.split()[0]) for _, rec in _records(Path(path))]


def _scan_images(root: Path) -> dict[str, Path]:
    """``{ID: path}``; a plain ``<ID>.*`` wins over ``<ID>-checkpoint.*``, PNG over IMG."""
    best: dict[str, tuple[tuple, Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if "mask" not in d.lower() and d.lower() != "landmarks")
        for f in filenames:
            p = Path(dirpath) / f
            if p.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            m = _ID_RE.match(p.stem)
            if not m:
                continue
            cid = m.group(1).upper()
            rank = ("checkpoint" in p.stem.lower(), _IMAGE_SUFFIXES.index(p.suffix.lower()), str(p))
            if cid not in best or rank < best[cid][0]:
                best[cid] = (rank, p)
    return {k: v[1] for k, v in best.items()}


def _scan_masks(root: Path) -> dict[str, dict[str, str]]:
    """``{ID: {organ folder name: path}}`` for SCR-style masks below ``*mask*`` folders."""
    out: dict[str, dict[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        if not any("mask" in part.lower() for part in rel):
            continue
        organ = rel[-1].lower()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.suffix.lower() not in (".gif", ".png", ".bmp", ".tif", ".tiff"):
                continue
            m = _ID_RE.match(p.stem)
            if m:
                out.setdefault(m.group(1).upper(), {}).setdefault(organ, str(p))
    return out


def _scan_landmarks(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*.npy")):
        m = _ID_RE.match(p.stem)
        if m and m.group(1).upper() not in out:
            out[m.group(1).upper()] = p
    return out


def read_jsrt(
    root: str | os.PathLike,
    *,
    check_files: bool = True,
    stored_size: int | None = None,
    on_error: str = "raise",
) -> Manifest:
    """Read JSRT under ``root`` (dataset ``jsrt``); see the module docstring.

    Args:
        check_files: True: skip list entries without an image (one warning) and read the
            stored size from the header. False: no image is opened; the stored size is
            ``stored_size`` or, by default, 2048 for ``.IMG`` and 1024 otherwise.
        on_error: ``"raise"`` or ``"skip"`` for unreadable image headers.

    Raises:
        ManifestError: malformed clinical files or landmark arrays (names the file).
        BoxError: a nodule box that is invalid (non-positive size).
    """
    check_on_error(on_error)
    root = as_root(root)
    cln_files = find_first(root, ["CLNDAT_EN.txt"], max_depth=3)
    cnn_files = find_first(root, ["CNNDAT_EN.txt"], max_depth=3)
    clinical = parse_clndat(cln_files[0]) if cln_files else {}
    non_nodule = set(parse_cnndat(cnn_files[0])) if cnn_files else set()
    images = _scan_images(root)
    landmarks = _scan_landmarks(root)
    masks = _scan_masks(root)

    case_ids = sorted(set(images) | set(clinical) | non_nodule)
    if not case_ids:
        return make_manifest([])
    img_dir = root / "images"
    paths = []
    for cid in case_ids:
        if cid in images:
            paths.append(images[cid])
        elif img_dir.is_dir():
            paths.append(img_dir / f"{cid}.png")
        else:
            paths.append(root / f"{cid}.IMG")
    ids = [f"jsrt/{cid}" for cid in case_ids]
    if check_files:
        infos, _, _ = read_sizes("jsrt", root, ids, paths, on_error)
    else:
        infos = [None] * len(ids)

    records = []
    for k, cid in enumerate(case_ids):
        p = Path(paths[k])
        if check_files:
            if infos[k] is None:
                continue
            sw, sh = infos[k].width, infos[k].height
        elif stored_size is not None:
            sw = sh = int(stored_size)
        else:
            sw = sh = JSRT_SIZE if p.suffix.lower() == ".img" else HYBRIDGNET_SIZE
        sx, sy = frame_scale((sw, sh), (JSRT_SIZE, JSRT_SIZE))
        is_nodule = cid.startswith("JPCLN") and cid not in non_nodule
        boxes = []
        rec = clinical.get(cid)
        if rec is not None:
            r = rec["size_mm"] / JSRT_SPACING_MM / 2.0
            try:
                boxes.append(Box((rec["x"] - r) * sx, (rec["y"] - r) * sy,
                                 (rec["x"] + r) * sx, (rec["y"] + r) * sy, "Nodule"))
            except BoxError as e:
                raise BoxError(f"{cln_files[0]}: record {rec['record']} ({cid}): {e}") from None
        lm = None
        if cid in landmarks:
            try:
                a = np.load(landmarks[cid], allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ManifestError(f"{landmarks[cid]}: cannot load landmarks: {e}") from None
            a = np.asarray(a, dtype=np.float64).reshape(-1)
            if a.size != 332:
                raise ManifestError(f"{landmarks[cid]}: expected 332 values (166 points), got shape {a.shape}")
            pts = map_points(a, frame_scale((sw, sh), (HYBRIDGNET_SIZE, HYBRIDGNET_SIZE)))
            lm = pts.reshape(-1)
        records.append(
            {
                "id": ids[k],
                "path": str(p),
                "dataset": "jsrt",
                "split": split_from_path(p, root) or "train",
                "patient_id": cid,
                "width": sw,
                "height": sh,
                "pixel_spacing": JSRT_SPACING_MM * JSRT_SIZE / sw,
                "view": "PA",
                "normal": not is_nodule,
                "boxes": boxes,
                "landmarks": lm,
                "landmark_scheme": "jsrt166" if lm is not None else "",
                "labels": {"Nodule": 1.0 if is_nodule else 0.0},
                "subtlety": rec["subtlety"] if rec else np.nan,
                "malignancy": rec["malignancy"] if rec else "",
            }
        )
        if masks:
            import json

            records[-1]["masks"] = json.dumps(masks.get(cid, {}), sort_keys=True)
    return make_manifest(records)
