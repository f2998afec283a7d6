"""Shared types and helpers of :mod:`leader.io`.

Every reader returns an :class:`Image` whose ``pixels`` are float32 ``[H, W]`` in ``[0, 1]``
with air dark, and whose ``meta`` is an :class:`ImageMeta` describing the *file* (size,
declared bit depth, photometric interpretation, channels as stored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np

from leader.errors import ImageReadError

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("png", "jpeg", "dicom", "mha", "jsrt_raw")

# ITU-R BT.601 luma weights, the same weights Pillow's ``convert('L')`` uses; applied here in
# floating point so 16-bit data is never clamped to 8 bits (field report BR-04).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImageMeta:
    """What the file says about the image (no pixel statistics).

    Attributes:
        path: the path as given to the reader (``os.fspath``).
        format: one of ``'png' | 'jpeg' | 'dicom' | 'mha' | 'jsrt_raw'``, sniffed from content.
        height, width: stored image size in pixels (rows, columns).
        pixel_spacing: ``(row_mm, col_mm)`` (distance between adjacent rows, adjacent
            columns) or ``None`` when the file does not say.
        bit_depth: bits per sample as declared by the file (PNG IHDR bit depth, JPEG SOF
            precision, DICOM BitsStored, MetaImage element type size, 12 for JSRT raw).
        photometric: DICOM PhotometricInterpretation; ``'MONOCHROME1'`` for JSRT raw (stored
            with air bright); ``None`` for PNG/JPEG/MetaImage.
        channels: samples per pixel in the file (RGBA PNG = 4, palette PNG = 1).
    """

    path: str
    format: str
    height: int
    width: int
    pixel_spacing: tuple[float, float] | None
    bit_depth: int
    photometric: str | None
    channels: int


@dataclass
class Image:
    """A decoded radiograph.

    Attributes:
        pixels: ``np.ndarray`` float32, shape ``[H, W]``, values in ``[0, 1]``, air dark.
        meta: the file's :class:`ImageMeta`.
    """

    pixels: np.ndarray
    meta: ImageMeta


def fail(path: PathLike, reason: str, cls: type[ImageReadError] = ImageReadError) -> ImageReadError:
    """Build an error whose message starts with the path (project convention)."""
    return cls(f"{os.fspath(path)}: {reason}")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, >=3]`` -> ``[H, W]`` float64 luma (BT.601); channels beyond 3 (alpha) ignored."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = LUMA_WEIGHTS
    return r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def finalize(path: PathLike, values: np.ndarray, meta: ImageMeta, allow_constant: bool) -> Image:
    """Check and package already-scaled values as an :class:`Image`.

    ``values`` must be 2-D and finite and are expected in ``[0, 1]``; they are clamped to that
    range (rounding of window/luma arithmetic) and cast to float32.

    Raises:
        ImageReadError: not 2-D, non-finite values, shape differs from the header, or the
            image is constant (``max == min``) and ``allow_constant`` is false.
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise fail(path, f"decoded array has shape {arr.shape}, expected a 2-D image")
    if arr.shape != (meta.height, meta.width):
        raise fail(
            path,
            f"decoded shape {arr.shape} differs from the header size "
            f"({meta.height}, {meta.width})",
        )
    if arr.size == 0:
        raise fail(path, "image has no pixels")
    arr = arr.astype(np.float32, copy=True)
    if not np.isfinite(arr).all():
        raise fail(path, "image contains NaN or infinite values")
    np.clip(arr, 0.0, 1.0, out=arr)
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi and not allow_constant:
        raise fail(
            path,
            f"constant image (every pixel = {lo:.6g} after scaling); refusing to return it "
            "(pass allow_constant=True to accept constant images)",
        )
    return Image(pixels=np.ascontiguousarray(arr), meta=meta)
