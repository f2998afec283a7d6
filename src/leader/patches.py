"""Patch tables, cropping and datasets (paper Algorithm 1, lines 1-7).

Algorithm 1 builds, for every dataset with disease boxes, a dataset ``D_ip`` of ``(I, P)``
pairs: *diseased* patches cut around the boxes of diseased images and *random healthy* patches
cut from normal images, each paired with its whole image. The paper's zero-shot anatomy
protocol (§5) additionally cuts 224² patches around anatomical landmarks.

Patch table
    A :class:`pandas.DataFrame` with columns :data:`PATCH_COLUMNS`:
    ``patch_id`` (str, unique, stable: ``"{image_id}::{kind}:{k}"``), ``image_id`` (manifest
    ``id``), ``kind`` (``'disease' | 'healthy' | 'landmark'``), ``label`` (disease box label,
    ``'healthy'``, or landmark name) and the crop region ``x0, y0, x1, y1`` (float64, pixels of
    the *stored* image, top-left origin, ``x1``/``y1`` exclusive). A region may extend past the
    image edges; the outside is zero-padded by :func:`crop`, never wrapped (field report BR-09).

Coordinates
    Everything here is in pixels of the stored image described by the manifest's ``width`` /
    ``height``. Boxes given in another frame (e.g. VinDr boxes in DICOM pixels of an image later
    stored at 1024 px) must first be mapped with :func:`scale_box`, *per axis*, from the true
    original size.

Datasets
    :class:`ImageDataset`, :class:`PatchDataset` and :class:`PairDataset` return dicts of float32
    tensors ``[1, S, S]`` in ``[0, 1]`` plus string ids; they work with
    ``torch.utils.data.default_collate`` (:func:`collate` is that function).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from collections import OrderedDict
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from leader.errors import BoxError, ManifestError

log = logging.getLogger(__name__)

__all__ = [
    "PATCH_COLUMNS",
    "empty_patch_table",
    "scale_box",
    "disease_patch_region",
    "disease_patches",
    "healthy_patches",
    "landmark_patches",
    "crop",
    "ImageDataset",
    "PatchDataset",
    "PairDataset",
    "collate",
    "patch_table",
]

#: Columns of a patch table, in order.
PATCH_COLUMNS: tuple[str, ...] = ("patch_id", "image_id", "kind", "label", "x0", "y0", "x1", "y1")

#: ``collate`` is torch's default collate: tensors are stacked, strings/ints become lists/tensors.
collate = default_collate


# --------------------------------------------------------------------------------------------
# helpers: boxes and manifest rows
# --------------------------------------------------------------------------------------------
def _box_coords(box) -> tuple[float, float, float, float, str]:
    """``(x0, y0, x1, y1, label)`` of a Box / dict / 4- or 5-sequence (label '' if absent)."""
    if isinstance(box, dict):
        return (float(box["x0"]), float(box["y0"]), float(box["x1"]), float(box["y1"]),
                str(box.get("label", "") or ""))
    if hasattr(box, "x0"):
        return (float(box.x0), float(box.y0), float(box.x1), float(box.y1),
                str(getattr(box, "label", "") or ""))
    seq = list(box)
    if len(seq) not in (4, 5):
        raise BoxError(f"box must have x0, y0, x1, y1[, label]; got {box!r}")
    label = str(seq[4]) if len(seq) == 5 else ""
    return (float(seq[0]), float(seq[1]), float(seq[2]), float(seq[3]), label)


def _fmt_box(box) -> str:
    try:
        x0, y0, x1, y1, label = _box_coords(box)
    except Exception:  # noqa: BLE001 - only for messages
        return repr(box)
    return f"Box(x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}, label={label!r})"


def _with_coords(box, x0: float, y0: float, x1: float, y1: float):
    """A copy of ``box`` (same type) with new coordinates."""
    if isinstance(box, dict):
        out = dict(box)
        out.update(x0=x0, y0=y0, x1=x1, y1=y1)
        return out
    if hasattr(box, "_replace"):
        return box._replace(x0=x0, y0=y0, x1=x1, y1=y1)
    if dataclasses.is_dataclass(box) and not isinstance(box, type):
        return dataclasses.replace(box, x0=x0, y0=y0, x1=x1, y1=y1)
    seq = list(box)
    return (x0, y0, x1, y1, *seq[4:])


def _df(manifest) -> pd.DataFrame:
    """The row table of a ``Manifest`` (``.df``) or a bare DataFrame with manifest columns."""
    df = getattr(manifest, "df", manifest)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a leader Manifest or pandas DataFrame, got {type(manifest).__name__}")
    if "id" not in df.columns:
        raise ManifestError("manifest has no 'id' column")
    return df


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _row_boxes(df: pd.DataFrame, i: int) -> list:
    """Raw boxes of row ``i`` (dicts / Box objects), *not* validated here: the per-box checks of
    :func:`disease_patch_region` apply so that ``on_bad_box='skip'`` can skip single boxes."""
    if "boxes" not in df.columns:
        return []
    v = df["boxes"].iloc[i]
    if v is None or (not isinstance(v, (list, tuple, np.ndarray)) and _is_missing(v)):
        return []
    return list(v)


def _row_landmarks(df: pd.DataFrame, i: int) -> np.ndarray | None:
    """Landmarks of row ``i`` as float64 ``[P, 2]`` or None (same as ``Manifest.landmarks``)."""
    if "landmarks" not in df.columns:
        return None
    v = df["landmarks"].iloc[i]
    if v is None or (not isinstance(v, (list, tuple, np.ndarray)) and _is_missing(v)):
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return None
    return a.reshape(-1, 2)


def _row_size(df: pd.DataFrame, i: int) -> tuple[int, int]:
    """``(width, height)`` of row ``i``; ManifestError naming the row when missing/invalid."""
    image_id = str(df["id"].iloc[i])
    if "width" not in df.columns or "height" not in df.columns:
        raise ManifestError(f"{image_id} (row {i}): manifest has no width/height columns; "
                            "patch extraction needs the stored image size")
    w, h = df["width"].iloc[i], df["height"].iloc[i]
    if _is_missing(w) or _is_missing(h):
        raise ManifestError(f"{image_id} (row {i}): width/height missing; patch extraction needs "
                            "the stored image size (fill it with leader.io.read_header)")
    w, h = int(w), int(h)
    if w <= 0 or h <= 0:
        raise ManifestError(f"{image_id} (row {i}): invalid stored size {w}x{h}")
    return w, h


def empty_patch_table() -> pd.DataFrame:
    """A patch table with no rows and the right columns/dtypes."""
    return _make_table([])


def _make_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(PATCH_COLUMNS))
    for c in ("patch_id", "image_id", "kind", "label"):
        df[c] = df[c].astype(object)
    for c in ("x0", "y0", "x1", "y1"):
        df[c] = df[c].astype(np.float64)
    if not df["patch_id"].is_unique:
        dup = df["patch_id"][df["patch_id"].duplicated()].iloc[0]
        raise ManifestError(f"duplicate patch_id {dup!r} (duplicate image ids in the manifest?)")
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
def scale_box(box, from_size: tuple[float, float], to_size: tuple[float, float]):
    """Map a box from one pixel frame to another, **per axis** (field report BR-09 (a)).

    Args:
        box: ``Box`` / dict / ``(x0, y0, x1, y1[, label])`` in pixels of the source frame.
        from_size: ``(width, height)`` of the frame the box was drawn in - the *true* original
            size, e.g. DICOM ``(Columns, Rows)``, not an intermediate resize.
        to_size: ``(width, height)`` of the stored image.

    Returns:
        The same kind of object with ``x`` scaled by ``to_w / from_w`` and ``y`` by
        ``to_h / from_h`` (float pixels). Example: ``(1000, 800, 1400, 1300)`` from
        ``(2000, 2500)`` to ``(1024, 1024)`` -> ``(512.0, 327.68, 716.8, 532.48)``.

    Raises:
        ValueError: a non-positive or non-finite size.
    """
    fw, fh = (float(s) for s in from_size)
    tw, th = (float(s) for s in to_size)
    for name, s in (("from_size", (fw, fh)), ("to_size", (tw, th))):
        if not all(math.isfinite(v) and v > 0 for v in s):
            raise ValueError(f"{name} must be positive (width, height), got {s}")
    x0, y0, x1, y1, _ = _box_coords(box)
    return _with_coords(box, x0 * tw / fw, y0 * th / fh, x1 * tw / fw, y1 * th / fh)


def _check_box(box, image_w: float, image_h: float, image_id: str | None) -> tuple[float, float, float, float]:
    where = image_id if image_id is not None else "<image>"
    try:
        x0, y0, x1, y1, _ = _box_coords(box)
    except (KeyError, TypeError, ValueError) as e:
        raise BoxError(f"{where}: unreadable box {box!r}: {e}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BoxError(f"{where}: box {_fmt_box(box)} has NaN/infinite coordinates")
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"{where}: box {_fmt_box(box)} has zero or negative area")
    if x1 <= 0 or y1 <= 0 or x0 >= image_w or y0 >= image_h:
        raise BoxError(f"{where}: box {_fmt_box(box)} lies fully outside the "
                       f"{int(image_w)}x{int(image_h)} image")
    return x0, y0, x1, y1


def _place(lo: float, side: float, extent: float) -> float:
    """Shift a 1-D interval ``[lo, lo+side)`` to lie inside ``[0, extent)`` where it fits;
    centre it on the image when it is larger than the image."""
    if side >= extent:
        return (extent - side) / 2.0
    if lo < 0:
        return 0.0
    if lo + side > extent:
        return extent - side
    return lo


def disease_patch_region(box, image_w: int, image_h: int, margin: float = 0.25,
                         min_size: float = 32, *, image_id: str | None = None
                         ) -> tuple[float, float, float, float]:
    """Square context region around a disease box (Algorithm 1, line 4).

    The box is enlarged by ``margin`` times its width/height on each side; the region is the
    square of side ``max(enlarged width, enlarged height, min_size)`` centred on the box. It is
    then shifted (not shrunk) to lie inside the image when it fits; a region larger than the
    image is centred on the image and zero-padded by :func:`crop`. The visible part of the box
    is always inside the region.

    Args:
        box: ``Box`` / dict / ``(x0, y0, x1, y1[, label])`` in stored-image pixels.
        image_w, image_h: stored image size in pixels.
        margin: context added on each side, as a fraction of the box size (>= 0).
        min_size: minimum side of the region in pixels (> 0).
        image_id: used in error messages.

    Returns:
        ``(x0, y0, x1, y1)`` float pixels, ``x1 - x0 == y1 - y0``.

    Raises:
        BoxError: NaN/infinite coordinates, zero/negative area, or a box fully outside the
            image; the message names the image and the box (BR-09 (c)).
        ValueError: negative ``margin`` or non-positive ``min_size``/image size.
    """
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be >= 0, got {margin}")
    if min_size <= 0:
        raise ValueError(f"min_size must be > 0, got {min_size}")
    if image_w <= 0 or image_h <= 0:
        raise ValueError(f"image size must be positive, got {image_w}x{image_h}")
    x0, y0, x1, y1 = _check_box(box, image_w, image_h, image_id)
    w, h = x1 - x0, y1 - y0
    side = max(w * (1 + 2 * margin), h * (1 + 2 * margin), float(min_size))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rx0 = _place(cx - side / 2.0, side, float(image_w))
    ry0 = _place(cy - side / 2.0, side, float(image_h))
    return (rx0, ry0, rx0 + side, ry0 + side)


# --------------------------------------------------------------------------------------------
# patch tables
# --------------------------------------------------------------------------------------------
def disease_patches(manifest, margin: float = 0.25, min_size: float = 32,
                    on_bad_box: str = "error") -> tuple[pd.DataFrame, list[tuple[str, Any, str]]]:
    """Diseased patches: one context region per disease box (Algorithm 1, line 4).

    Args:
        manifest: ``leader.manifest.Manifest`` (or a DataFrame with its columns). Uses ``id``,
            ``width``, ``height`` and ``boxes`` (stored-image pixels).
        margin, min_size: see :func:`disease_patch_region`.
        on_bad_box: ``'error'`` raises :class:`BoxError` on the first invalid box;
            ``'skip'`` leaves it out, logs a warning and reports it in ``skipped``.

    Returns:
        ``(patch_table, skipped)``: rows ``kind='disease'``, ``label`` = box label,
        ``patch_id = f"{image_id}::disease:{k}"`` with ``k`` the box's index in its image;
        ``skipped`` is a list of ``(image_id, box, reason)``.

    Raises:
        ManifestError: a row with boxes lacks ``width``/``height`` (message names the row).
        BoxError: invalid box under ``on_bad_box='error'`` (names image and box).
        ValueError: unknown ``on_bad_box``.
    """
    if on_bad_box not in ("error", "skip"):
        raise ValueError(f"on_bad_box must be 'error' or 'skip', got {on_bad_box!r}")
    df = _df(manifest)
    rows: list[dict] = []
    skipped: list[tuple[str, Any, str]] = []
    for i in range(len(df)):
        boxes = _row_boxes(df, i)
        if not boxes:
            continue
        image_id = str(df["id"].iloc[i])
        w, h = _row_size(df, i)
        for k, box in enumerate(boxes):
            try:
                region = disease_patch_region(box, w, h, margin, min_size, image_id=image_id)
            except BoxError as e:
                if on_bad_box == "error":
                    raise
                log.warning("skipping box: %s", e)
                skipped.append((image_id, box, str(e)))
                continue
            label = _box_coords(box)[4]
            rows.append(dict(patch_id=f"{image_id}::disease:{k}", image_id=image_id,
                             kind="disease", label=label, x0=region[0], y0=region[1],
                             x1=region[2], y1=region[3]))
    return _make_table(rows), skipped


def _jsrt_lung_bbox(lm: np.ndarray) -> tuple[float, float, float, float]:
    pts = lm[0:94] if lm.shape[0] == 166 else lm
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def healthy_patches(manifest, n_per_image: int = 2, size_frac: tuple[float, float] = (0.15, 0.35),
                    seed: int = 0, within: str = "body", kind: str = "healthy") -> pd.DataFrame:
    """Random healthy patches from normal images (Algorithm 1, line 5).

    For each row with ``normal == True``, ``n_per_image`` square regions of side
    ``U(size_frac) * min(width, height)`` pixels, always fully inside the image.

    Args:
        manifest: ``Manifest`` or DataFrame (uses ``id``, ``normal``, ``width``, ``height``,
            ``landmarks``).
        n_per_image: patches per normal image (>= 0).
        size_frac: ``(lo, hi)`` with ``0 < lo <= hi <= 1``.
        seed: the regions of an image depend only on ``(seed, image id)``, not on row order.
        within: ``'body'`` - centres inside the bounding box of both lung contours when the row
            has ``jsrt166`` landmarks (any other landmark set: their bounding box), else inside
            the central part of the image ``x in [0.2, 0.8] W, y in [0.15, 0.85] H`` where a
            frontal chest lies; ``'image'`` - anywhere the square fits.

        kind: ``'healthy'`` (normal images only: Algorithm 1 line 5) or ``'context'`` (every
            image, diseased or not: extra anatomical context for the anatomy branch — a lever
            of the claims runner, not part of the paper's recipe).

    Returns:
        Patch table, ``kind`` and ``label`` = ``kind``, ``patch_id = f"{image_id}::{kind}:{k}"``.

    Raises:
        ManifestError: missing ``normal`` column or width/height of a normal row.
        ValueError: bad ``size_frac``, ``n_per_image`` or ``within``.
    """
    lo, hi = (float(v) for v in size_frac)
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"size_frac must satisfy 0 < lo <= hi <= 1, got {size_frac}")
    if n_per_image < 0:
        raise ValueError(f"n_per_image must be >= 0, got {n_per_image}")
    if within not in ("body", "image"):
        raise ValueError(f"within must be 'body' or 'image', got {within!r}")
    if kind not in ("healthy", "context"):
        raise ValueError(f"kind must be 'healthy' or 'context', got {kind!r}")
    df = _df(manifest)
    if kind == "healthy" and "normal" not in df.columns:
        raise ManifestError("manifest has no 'normal' column; cannot pick healthy images")
    rows: list[dict] = []
    for i in range(len(df)):
        nv = df["normal"].iloc[i] if kind == "healthy" else True
        if _is_missing(nv) or not bool(nv):
            continue
        image_id = str(df["id"].iloc[i])
        w, h = _row_size(df, i)
        if within == "body":
            lm = _row_landmarks(df, i)
            if lm is not None and len(lm) > 0:
                bx0, by0, bx1, by1 = _jsrt_lung_bbox(lm)
            else:
                bx0, by0, bx1, by1 = 0.2 * w, 0.15 * h, 0.8 * w, 0.85 * h
        else:
            bx0, by0, bx1, by1 = 0.0, 0.0, float(w), float(h)
        rng = np.random.default_rng([int(seed), zlib.crc32(image_id.encode("utf-8"))] + ([7] if kind == "context" else []))
        m = min(w, h)
        for k in range(int(n_per_image)):
            side = float(rng.uniform(lo, hi)) * m
            half = side / 2.0
            cx = _sample_centre(rng, bx0, bx1, half, w)
            cy = _sample_centre(rng, by0, by1, half, h)
            rows.append(dict(patch_id=f"{image_id}::{kind}:{k}", image_id=image_id,
                             kind=kind, label=kind, x0=cx - half, y0=cy - half,
                             x1=cx + half, y1=cy + half))
    return _make_table(rows)


def _sample_centre(rng: np.random.Generator, lo: float, hi: float, half: float, extent: int) -> float:
    """Uniform centre in ``[lo, hi]`` intersected with ``[half, extent - half]`` (square inside)."""
    a, b = max(lo, half), min(hi, extent - half)
    if a > b:  # the allowed band and the fit band do not overlap: nearest valid centre
        c = min(max((lo + hi) / 2.0, half), extent - half)
        return float(c)
    return float(rng.uniform(a, b))


def landmark_patches(manifest, size: float = 224, reference_width: float = 1024) -> pd.DataFrame:
    """Patches centred on the ten named anatomical landmarks (paper §5, zero-shot anatomy).

    One square per :data:`leader.landmarks.LANDMARK_NAMES` entry for each row with ``jsrt166``
    landmarks. The side is ``size`` pixels at a ``reference_width``-pixel-wide image (the
    paper's 224² patches on 1024-px CXRs), scaled by ``width / reference_width`` for the row.
    Regions stay centred on the landmark and may extend past the image (zero-padded by
    :func:`crop`).

    Returns:
        Patch table, ``kind='landmark'``, ``label`` = landmark name,
        ``patch_id = f"{image_id}::landmark:{name}"``.

    Raises:
        ManifestError: a ``jsrt166`` row without width or with the wrong number of points.
        ValueError: non-positive ``size`` / ``reference_width``.
    """
    from leader.landmarks import JSRT166_NUM_POINTS, named_landmarks

    if size <= 0 or reference_width <= 0:
        raise ValueError(f"size and reference_width must be > 0, got {size}, {reference_width}")
    df = _df(manifest)
    has_scheme = "landmark_scheme" in df.columns
    rows: list[dict] = []
    for i in range(len(df)):
        lm = _row_landmarks(df, i)
        if lm is None:
            continue
        scheme = str(df["landmark_scheme"].iloc[i] or "") if has_scheme else "jsrt166"
        if scheme != "jsrt166":
            continue
        image_id = str(df["id"].iloc[i])
        if lm.shape != (JSRT166_NUM_POINTS, 2):
            raise ManifestError(f"{image_id} (row {i}): jsrt166 landmarks need "
                                f"{JSRT166_NUM_POINTS} points, got {lm.shape[0]}")
        w, _h = _row_size(df, i)
        side = float(size) * w / float(reference_width)
        for name, (x, y) in named_landmarks(lm).items():
            rows.append(dict(patch_id=f"{image_id}::landmark:{name}", image_id=image_id,
                             kind="landmark", label=name, x0=x - side / 2, y0=y - side / 2,
                             x1=x + side / 2, y1=y + side / 2))
    return _make_table(rows)


# --------------------------------------------------------------------------------------------
# crop
# --------------------------------------------------------------------------------------------
def crop(pixels, region, out_size: int) -> np.ndarray:
    """Cut ``region`` out of an image and resize it to ``out_size`` x ``out_size``.

    Args:
        pixels: float ``[H, W]`` array (numpy or torch), usually in ``[0, 1]``.
        region: ``(x0, y0, x1, y1)`` in pixels of ``pixels``; ``x1``/``y1`` exclusive. Fractional
            edges are widened to whole pixels (``floor(x0)``, ``ceil(x1)``, 1e-6 tolerance).
            The region may extend past the image: the outside is **zero-padded**; negative
            indices never wrap around (BR-09 (b)). A region fully outside gives zeros.
        out_size: output side in pixels (>= 1).

    Returns:
        float32 ``[out_size, out_size]``, never empty. The (possibly non-square) region is
        resized (squashed) with ``torch.nn.functional.interpolate(mode='bilinear',
        align_corners=False, antialias=True)``: antialiased (triangle filter widened by the
        scale factor) when shrinking, plain bilinear when enlarging; no overshoot, so values
        stay within the input range. No resize happens when the region is already
        ``out_size`` square.

    Raises:
        BoxError: NaN/infinite coordinates or zero/negative region size.
        ValueError: ``pixels`` not 2-D, or ``out_size < 1``.
    """
    if isinstance(pixels, torch.Tensor):
        pixels = pixels.detach().cpu().numpy()
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"crop expects a 2-D [H, W] image, got shape {pixels.shape}")
    out_size = int(out_size)
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    try:
        x0, y0, x1, y1 = (float(v) for v in region)
    except (TypeError, ValueError) as e:
        raise BoxError(f"crop region must be (x0, y0, x1, y1), got {region!r}") from e
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BoxError(f"crop region {region!r} has NaN/infinite coordinates")
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"crop region {region!r} has zero or negative size")
    H, W = pixels.shape
    xa, ya = math.floor(x0 + 1e-6), math.floor(y0 + 1e-6)
    xb, yb = max(math.ceil(x1 - 1e-6), xa + 1), max(math.ceil(y1 - 1e-6), ya + 1)
    canvas = np.zeros((yb - ya, xb - xa), dtype=np.float32)
    sx0, sx1 = max(xa, 0), min(xb, W)
    sy0, sy1 = max(ya, 0), min(yb, H)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - ya:sy1 - ya, sx0 - xa:sx1 - xa] = pixels[sy0:sy1, sx0:sx1]
    if canvas.shape == (out_size, out_size):
        return canvas
    t = torch.from_numpy(canvas)[None, None]
    out = F.interpolate(t, size=(out_size, out_size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def _default_loader() -> Callable:
    from leader.io import read_image  # lazy: leader.io pulls in optional decoders

    return read_image


def _pixels_of(obj, path) -> np.ndarray:
    px = getattr(obj, "pixels", obj)
    if isinstance(px, torch.Tensor):
        px = px.detach().cpu().numpy()
    px = np.asarray(px, dtype=np.float32)
    if px.ndim != 2:
        raise ValueError(f"{path}: loader returned shape {px.shape}, expected [H, W]")
    return px


class _BoundedCache:
    """In-memory cache of numpy arrays bounded by total bytes; stops adding when full.

    Each DataLoader worker process holds its own copy (entries cached before the workers fork
    are shared copy-on-write)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._d: dict = {}

    def get(self, key):
        return self._d.get(key)

    def put(self, key, arr: np.ndarray) -> None:
        if key in self._d or self.nbytes + arr.nbytes > self.max_bytes:
            return
        self._d[key] = arr
        self.nbytes += arr.nbytes

    def __len__(self) -> int:
        return len(self._d)


class _SourceImages:
    """Loads full-resolution images by manifest row; keeps the last few (LRU) for patch runs."""

    def __init__(self, df: pd.DataFrame, loader: Callable | None, keep: int = 2):
        self.df = df
        self.loader = loader
        self.keep = int(keep)
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._has_size = "width" in df.columns and "height" in df.columns

    def load(self, row: int) -> np.ndarray:
        if row in self._lru:
            self._lru.move_to_end(row)
            return self._lru[row]
        if self.loader is None:
            self.loader = _default_loader()
        path = str(self.df["path"].iloc[row])
        px = _pixels_of(self.loader(path), path)
        if self._has_size:
            w, h = self.df["width"].iloc[row], self.df["height"].iloc[row]
            if not _is_missing(w) and not _is_missing(h) and (int(h), int(w)) != px.shape:
                raise ManifestError(
                    f"{self.df['id'].iloc[row]} (row {row}): manifest says {int(w)}x{int(h)} but "
                    f"{path} decodes to {px.shape[1]}x{px.shape[0]}; boxes/patches would be cut "
                    "from the wrong place (rebuild the manifest)")
        if self.keep > 0:
            self._lru[row] = px
            while len(self._lru) > self.keep:
                self._lru.popitem(last=False)
        return px


def _check_size(image_size) -> int:
    s = int(image_size)
    if s < 1:
        raise ValueError(f"image_size must be >= 1 pixel, got {image_size}")
    return s


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.tensor(arr, dtype=torch.float32).unsqueeze(0)   # copy: cache stays pristine


def _apply(transform, t: torch.Tensor) -> torch.Tensor:
    if transform is None:
        return t
    out = transform(t)
    return out.to(torch.float32).clamp_(0.0, 1.0)


def _whole(px: np.ndarray, size: int) -> np.ndarray:
    """The whole ``[H, W]`` image resized (squashed) to ``[size, size]``."""
    return crop(px, (0, 0, px.shape[1], px.shape[0]), size)


def _cached(cache, key, make) -> np.ndarray:
    """``cache[key]``, computed by ``make()`` and stored on a miss (``cache`` may be None)."""
    arr = cache.get(key) if cache is not None else None
    if arr is None:
        arr = make()
        if cache is not None:
            cache.put(key, arr)
    return arr


class ImageDataset(Dataset):
    """Whole images of a manifest (Algorithm 1, lines 8-14), squashed to ``S x S``.

    Item ``i`` -> ``{"image": float32 Tensor [1, S, S] in [0, 1], "id": str, "index": int}``.

    Args:
        manifest: ``Manifest`` or DataFrame (uses ``id``, ``path``, optionally ``width``/
            ``height`` to check the decoded size).
        image_size: ``S`` in pixels. The whole image is resized (aspect ratio not kept) with
            :func:`crop`'s antialiased bilinear resize.
        transform: callable on ``[1, S, S]`` tensors (e.g. :class:`leader.transforms.PairedAugment`),
            applied after caching; output is clamped to ``[0, 1]``.
        loader: ``path -> Image`` (with ``.pixels``) or ``path -> [H, W]`` array; default
            ``leader.io.read_image`` (imported lazily).
        cache: keep the resized ``S x S`` float32 arrays in memory, at most ``cache_bytes``
            bytes (default 512 MiB, about 2,670 images at S=224); once full, further items are
            decoded and resized on every access. The budget is per process: each DataLoader
            worker fills its own copy, so the worst case is ``num_workers * cache_bytes``.

    Raises (on access): the loader's ``ImageReadError``; ``ManifestError`` if the decoded size
    differs from the manifest's ``width``/``height``.
    """

    def __init__(self, manifest, image_size: int, transform=None, loader=None, cache: bool = True,
                 cache_bytes: int = 512 << 20):
        self.df = _df(manifest)
        if "path" not in self.df.columns:
            raise ManifestError("manifest has no 'path' column")
        self.image_size = _check_size(image_size)
        self.transform = transform
        self._src = _SourceImages(self.df, loader, keep=0)
        self._cache = _BoundedCache(cache_bytes) if cache else None
        self._ids = [str(v) for v in self.df["id"]]

    def __len__(self) -> int:
        return len(self.df)

    def item_id(self, index: int) -> str:
        """Id of item ``index`` without decoding pixels (used by resumable embedding)."""
        return self._ids[index]

    def resized(self, index: int) -> np.ndarray:
        """Un-augmented float32 ``[S, S]`` image of row ``index`` (cached)."""
        return _cached(self._cache, index, lambda: _whole(self._src.load(index), self.image_size))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        img = _apply(self.transform, _to_tensor(self.resized(index)))
        return {"image": img, "id": self._ids[index], "index": index}


def _patch_rows(df: pd.DataFrame, patches: pd.DataFrame) -> np.ndarray:
    missing = [c for c in PATCH_COLUMNS if c not in patches.columns]
    if missing:
        raise ManifestError(f"patch table lacks columns {missing}")
    pos = pd.Series(np.arange(len(df)), index=df["id"].astype(str).values)
    if not pos.index.is_unique:
        raise ManifestError("manifest ids are not unique")
    ids = patches["image_id"].astype(str)
    unknown = ~ids.isin(pos.index)
    if unknown.any():
        bad = patches.loc[unknown, "patch_id"].iloc[0]
        raise ManifestError(f"patch {bad!r}: image {ids[unknown].iloc[0]!r} is not in the manifest")
    return pos.loc[ids.values].to_numpy()


class PatchDataset(Dataset):
    """Patches of a patch table, each cropped from its stored image and resized to ``S x S``.

    Item ``i`` -> ``{"image": float32 Tensor [1, S, S] in [0, 1], "id": patch_id, "index": i}``.
    Crops follow :func:`crop` (zero padding outside the image). The last two decoded source
    images are kept so that consecutive patches of one image decode it once; with
    ``cache=True`` the resized patches are kept (bounded by ``cache_bytes``, see
    :class:`ImageDataset`).

    Raises:
        ManifestError: a patch whose ``image_id`` is not in the manifest (at construction), or a
            decoded size that differs from the manifest (on access).
    """

    def __init__(self, manifest, patches: pd.DataFrame, image_size: int, transform=None,
                 loader=None, cache: bool = True, cache_bytes: int = 512 << 20):
        self.df = _df(manifest)
        self.patches = patches.reset_index(drop=True)
        self._rows = _patch_rows(self.df, self.patches)
        self.image_size = _check_size(image_size)
        self.transform = transform
        self._src = _SourceImages(self.df, loader, keep=2)
        self._cache = _BoundedCache(cache_bytes) if cache else None
        self._regions = self.patches[["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
        self._pids = [str(v) for v in self.patches["patch_id"]]

    def __len__(self) -> int:
        return len(self.patches)

    def item_id(self, index: int) -> str:
        """Patch id of item ``index`` without decoding pixels."""
        return self._pids[index]

    def resized(self, index: int) -> np.ndarray:
        """Un-augmented float32 ``[S, S]`` patch ``index`` (cached)."""
        return _cached(self._cache, index, lambda: crop(self._src.load(int(self._rows[index])),
                                                        tuple(self._regions[index]), self.image_size))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        img = _apply(self.transform, _to_tensor(self.resized(index)))
        return {"image": img, "id": self._pids[index], "index": index}


class PairDataset(Dataset):
    """``(I, P)`` pairs: each patch with its whole image (Algorithm 1, line 6; used in 16-27).

    Item ``i`` -> ``{"image": [1, S, S], "patch": [1, S, S], "image_id": str, "patch_id": str,
    "index": i}`` (float32 tensors in ``[0, 1]``). ``transform`` is called **independently** on
    the image and on the patch: each gets its own random view; the trainer then feeds that same
    view to the student and to every teacher. Image and patch are both ``S x S``.

    Args: as :class:`PatchDataset`; the resized whole images are cached like
    :class:`ImageDataset` (shared ``cache_bytes`` budget with the patches).
    """

    def __init__(self, manifest, patches: pd.DataFrame, image_size: int, transform=None,
                 loader=None, cache: bool = True, cache_bytes: int = 512 << 20):
        self._patches = PatchDataset(manifest, patches, image_size, None, loader, cache, cache_bytes)
        self.df = self._patches.df
        self.patches = self._patches.patches
        self.image_size = int(image_size)
        self.transform = transform
        self._img_cache = self._patches._cache  # one budget for both
        self._image_ids = [str(v) for v in self.patches["image_id"]]

    def __len__(self) -> int:
        return len(self._patches)

    def item_id(self, index: int) -> str:
        """The id a skip report names for pair ``index``: its image's (the file that is read)."""
        return self._image_ids[int(index)]

    def _image(self, row: int) -> np.ndarray:
        return _cached(self._img_cache, ("image", row),
                       lambda: _whole(self._patches._src.load(row), self.image_size))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        patch = self._patches.resized(index)
        image = self._image(int(self._patches._rows[index]))
        return {
            "image": _apply(self.transform, _to_tensor(image)),
            "patch": _apply(self.transform, _to_tensor(patch)),
            "image_id": self._image_ids[index],
            "patch_id": self._patches._pids[index],
            "index": index,
        }


def patch_table(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate patch tables (e.g. disease + healthy for one ``D_ip``); ids must stay unique."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return empty_patch_table()
    return _make_table(pd.concat([f[list(PATCH_COLUMNS)] for f in frames], ignore_index=True)
                       .to_dict("records"))
