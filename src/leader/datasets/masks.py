"""Segmentation masks of manifest rows, decoded from whatever encoding the dataset publishes.

One entry point, :func:`row_mask` (``manifest, i, kind``), gives a binary mask ``bool
[H, W]`` in pixels of the **stored** image of row ``i`` (``H`` = its ``height``, ``W`` =
its ``width``), whatever the source:

==================  =====================================  ======================================
kind / source       manifest column                        published encoding -> mask
==================  =====================================  ======================================
``lungs``: manual   ``lung_mask`` (path)                   binary image (0/255 or 0/1; V7 Labs
  mask file                                                lung masks of the COVID-19 image data
                                                           collection), resized nearest-neighbour
``lungs``: SCR      ``masks`` (JSON ``{organ: path}``,     union of the ``right lung`` and ``left
  organ masks       :func:`~leader.datasets.read_jsrt`)    lung`` masks (SCR: 1024 x 1024 GIF/PNG)
``lungs``: JSRT     ``landmarks`` + ``landmark_scheme``    the two lung contours (points 0-43 and
  contours          ``jsrt166``                            44-93, stored pixels) filled as polygons
``lungs``: model    ``lung_mask_generated`` (path)         only with ``allow_generated=True``
  output                                                   (lungVAE: not ground truth)
``pneumothorax``    ``pneumothorax_rle`` (``list[str]``)   SIIM-ACR run-length encodings, united
                                                           (:func:`decode_siim_rle`), published in
                                                           the 1024 x 1024 DICOM frame
==================  =====================================  ======================================

For ``lungs`` the first available source in the order above is used. :func:`mask_source`
says which one a row has (or None); :func:`has_mask` gives a boolean per row.

SIIM-ACR run-length encoding (challenge ``train-rle.csv``, ``EncodedPixels``): pairs
``start length``, where ``start`` is counted **from the end of the previous run** (relative
offsets; the first from pixel 0), over the pixels in **column-major** order (down the first
column, then the next: flat index ``k`` is pixel ``x = k // H``, ``y = k % H``). ``-1`` (or a
blank) means no pneumothorax; an image with several regions has several rows, which are
united. This is the "uncompressed counts" form of COCO RLE without the final zero run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from leader.errors import ManifestError

__all__ = ["MASK_KINDS", "SIIM_FRAME", "decode_siim_rle", "parse_siim_rle", "read_mask_file", "resize_mask",
           "mask_source", "has_mask", "row_mask"]

#: kinds :func:`row_mask` knows.
MASK_KINDS = ("lungs", "pneumothorax")

#: SIIM-ACR images (and so their RLE masks) are 1024 x 1024 DICOMs.
SIIM_FRAME = (1024, 1024)

_RLE_RE = re.compile(r"^\s*\d+(?:\s+\d+)*\s*$")


def parse_siim_rle(encoding: str) -> np.ndarray | None:
    """The ``int64 [R, 2]`` ``(offset, length)`` pairs of one ``EncodedPixels`` value, or
    None for ``-1`` / blank (no mask).

    Raises:
        ValueError: not whitespace-separated non-negative integers, an odd count, or a
            zero-length run (the message quotes the start of the value).
    """
    text = "" if encoding is None else str(encoding).strip()
    if text in ("", "-1"):
        return None
    if not _RLE_RE.match(text):
        raise ValueError(f"EncodedPixels must be '-1' or non-negative integers, got {text[:40]!r}")
    a = np.array(text.split(), dtype=np.int64)
    if a.size % 2:
        raise ValueError(f"EncodedPixels has an odd number of values ({a.size}): {text[:40]!r}")
    pairs = a.reshape(-1, 2)
    if (pairs[:, 1] == 0).any():
        raise ValueError(f"EncodedPixels has a zero-length run: {text[:40]!r}")
    return pairs


def decode_siim_rle(encodings: str | Sequence[str], width: int = SIIM_FRAME[0],
                    height: int = SIIM_FRAME[1]) -> np.ndarray:
    """Decode SIIM-ACR run-length encodings into one mask ``bool [height, width]``.

    ``encodings``: one ``EncodedPixels`` string or the list of an image's rows (united);
    ``-1`` / blank rows contribute nothing. ``width`` x ``height`` is the frame the runs
    were published in (1024 x 1024 for SIIM-ACR); see the module docstring for the format.

    Raises:
        ValueError: a malformed value (:func:`parse_siim_rle`) or runs that go past the last
            pixel of the ``width`` x ``height`` frame.
    """
    if isinstance(encodings, str):
        encodings = [encodings]
    w, h = int(width), int(height)
    n = w * h
    cover = np.zeros(n + 1, dtype=np.int32)
    for enc in encodings:
        pairs = parse_siim_rle(enc)
        if pairs is None:
            continue
        offsets, lengths = pairs[:, 0], pairs[:, 1]
        # start of run r = sum of all offsets up to r + sum of all lengths before r
        starts = np.cumsum(offsets) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ends = starts + lengths
        if ends[-1] > n:
            raise ValueError(f"EncodedPixels runs end at pixel {int(ends[-1])}, past the {w}x{h} frame ({n} pixels)")
        np.add.at(cover, starts, 1)
        np.add.at(cover, ends, -1)
    flat = np.cumsum(cover[:-1]) > 0
    return np.ascontiguousarray(flat.reshape(w, h).T)  # column-major: flat k -> (x=k//h, y=k%h)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """``bool [height, width]``: ``mask`` (any ``[h, w]`` array, nonzero = inside) resized
    nearest-neighbour (Pillow) to the stored image; returned as is when the size matches."""
    m = np.asarray(mask).astype(bool)
    if m.shape == (int(height), int(width)):
        return m
    from PIL import Image

    im = Image.fromarray(m.astype(np.uint8) * 255)
    return np.asarray(im.resize((int(width), int(height)), Image.Resampling.NEAREST)) > 127


def read_mask_file(path: str | Path) -> np.ndarray:
    """A binary mask image as ``bool [h, w]`` at its own size.

    The format is sniffed from the content (a PNG named ``.jpg`` is read as PNG); colour is
    converted to luminance. Values 0/1 (maximum 1) and 0/255 are both accepted: inside =
    value > max / 2, so JPEG noise around 0 and 255 does not matter.

    Raises:
        ManifestError: the file is missing or not a readable image (names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read mask image: {e}") from None
    a = np.asarray(a)
    top = float(a.max()) if a.size else 0.0
    return a > top / 2.0 if top > 0 else np.zeros(a.shape, dtype=bool)


def _cell(df, column: str, i: int):
    if column not in df.columns:
        return None
    v = df[column].iat[i]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str) and not v:
        return None
    return v


def _scr_lungs(df, i: int) -> list[str] | None:
    v = _cell(df, "masks", i)
    if v is None:
        return None
    try:
        organs = json.loads(v) if isinstance(v, str) else dict(v)
    except (ValueError, TypeError):
        return None
    paths = [organs.get(k) for k in ("right lung", "left lung")]
    return paths if all(paths) else None


def _has_contours(df, i: int) -> bool:
    lm = _cell(df, "landmarks", i)
    return lm is not None and _cell(df, "landmark_scheme", i) == "jsrt166" and np.size(lm) == 332


def mask_source(manifest, i: int, kind: str = "lungs", *, allow_generated: bool = False) -> str | None:
    """Which source :func:`row_mask` would use for row ``i``: ``"file"``, ``"scr"``,
    ``"contours"``, ``"generated"`` (lungs) or ``"rle"`` (pneumothorax), or None."""
    df = getattr(manifest, "df", manifest)
    if kind == "lungs":
        if _cell(df, "lung_mask", i) is not None:
            return "file"
        if _scr_lungs(df, i) is not None:
            return "scr"
        if _has_contours(df, i):
            return "contours"
        if allow_generated and _cell(df, "lung_mask_generated", i) is not None:
            return "generated"
        return None
    if kind == "pneumothorax":
        return "rle" if _cell(df, "pneumothorax_rle", i) is not None else None
    raise ValueError(f"unknown mask kind {kind!r}; known: {MASK_KINDS}")


def has_mask(manifest, kind: str = "lungs", *, allow_generated: bool = False) -> np.ndarray:
    """``bool [N]``: rows for which :func:`row_mask` has a source of ``kind``."""
    df = getattr(manifest, "df", manifest)
    return np.array([mask_source(df, i, kind, allow_generated=allow_generated) is not None
                     for i in range(len(df))], dtype=bool)


def _stored_size(df, i: int) -> tuple[int, int]:
    import pandas as pd

    w, h = df["width"].iat[i], df["height"].iat[i]
    if pd.isna(w) or pd.isna(h):
        from leader.io import read_header

        meta = read_header(df["path"].iat[i])
        return int(meta.width), int(meta.height)
    return int(w), int(h)


def row_mask(manifest, i: int, kind: str = "lungs", *, allow_generated: bool = False) -> np.ndarray:
    """The ``kind`` mask of row ``i`` as ``bool [H, W]`` in stored-image pixels.

    Args:
        manifest: a :class:`~leader.manifest.Manifest` (or its DataFrame).
        i: row position.
        kind: ``"lungs"`` (both lungs) or ``"pneumothorax"``; sources in the module table.
        allow_generated: also use model-generated lung masks (``lung_mask_generated``).

    Returns:
        ``bool [H, W]`` with ``H, W`` the row's stored ``height, width`` (read from the image
        header when the manifest does not know them). A SIIM ``-1`` row gives an all-False
        mask.

    Raises:
        ManifestError: the row has no source of that kind, or a mask file / encoding cannot be
            read (names the image id and the file).
        ImageReadError: the manifest does not know the stored size and the image header
            cannot be read.
    """
    df = getattr(manifest, "df", manifest)
    src = mask_source(df, i, kind, allow_generated=allow_generated)
    image_id = str(df["id"].iat[i])
    if src is None:
        need = "lung_mask, SCR masks or jsrt166 contours" if kind == "lungs" else "pneumothorax_rle"
        raise ManifestError(f"{image_id}: no {kind} mask (the row has no {need})")
    w, h = _stored_size(df, i)
    try:
        if src in ("file", "generated"):
            column = "lung_mask" if src == "file" else "lung_mask_generated"
            return resize_mask(read_mask_file(_cell(df, column, i)), w, h)
        if src == "scr":
            right, left = (read_mask_file(p) for p in _scr_lungs(df, i))
            if right.shape != left.shape:
                left = resize_mask(left, right.shape[1], right.shape[0])
            return resize_mask(right | left, w, h)
        if src == "contours":
            from PIL import Image, ImageDraw

            from leader.landmarks import JSRT166_ORGANS, as_points

            p = as_points(df["landmarks"].iat[i])
            img = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(img)
            for organ in ("right_lung", "left_lung"):
                draw.polygon([tuple(map(float, q)) for q in p[JSRT166_ORGANS[organ]]], fill=1)
            return np.asarray(img, dtype=np.uint8) > 0
        rle = list(_cell(df, "pneumothorax_rle", i))
        return resize_mask(decode_siim_rle(rle, *SIIM_FRAME), w, h)
    except ManifestError as e:
        raise ManifestError(f"{image_id}: {e}") from None
    except ValueError as e:
        raise ManifestError(f"{image_id}: cannot decode the {kind} mask: {e}") from None
