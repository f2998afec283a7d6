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

#: Decompression-bomb guard (see :func:`check_declared_size`): the largest image a reader
#: decodes, as declared by the file's header *before* any pixel is decoded. A chest
#: radiograph is at most about 4300 x 4300 (18.5 M pixels); 2**28 (268 M) pixels and 32768
#: per side leave ample room. Override per call (``max_pixels=`` / ``max_side=`` of
#: :func:`leader.io.read_image`, :func:`leader.io.read_header`, :func:`leader.io.verify_image`)
#: or for the whole process with the environment variables ``LEADER_MAX_IMAGE_PIXELS`` /
#: ``LEADER_MAX_IMAGE_SIDE``. Pillow's own process-wide ``Image.MAX_IMAGE_PIXELS`` is never
#: changed; for PNG/JPEG it still applies on top of this limit (Pillow refuses images above
#: twice its value, about 179 M pixels, which is reported as an ImageReadError too).
MAX_PIXELS = 2**28
MAX_SIDE = 32768

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


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be > 0")
    return value


def size_limits(max_pixels: int | None = None, max_side: int | None = None) -> tuple[int, int]:
    """Effective ``(max_pixels, max_side)``: the arguments, else ``LEADER_MAX_IMAGE_PIXELS`` /
    ``LEADER_MAX_IMAGE_SIDE``, else :data:`MAX_PIXELS` / :data:`MAX_SIDE`.

    Raises:
        ValueError: a limit (argument or environment variable) that is not a positive integer.
    """
    mp = _env_int("LEADER_MAX_IMAGE_PIXELS", MAX_PIXELS) if max_pixels is None else int(max_pixels)
    ms = _env_int("LEADER_MAX_IMAGE_SIDE", MAX_SIDE) if max_side is None else int(max_side)
    if mp <= 0 or ms <= 0:
        raise ValueError(f"image size limits must be > 0, got max_pixels={mp}, max_side={ms}")
    return mp, ms


def check_declared_size(path: PathLike, height: int, width: int, *, max_pixels: int | None = None,
                        max_side: int | None = None, what: str = "header") -> None:
    """Decompression-bomb guard: refuse a declared size that is empty or implausibly large.

    Called with the size the file's header declares, before any pixel is decoded (a few
    hundred bytes of PNG can declare a 100000 x 100000 image that would need 10-40 GB).

    Raises:
        ImageReadError: ``height`` or ``width`` < 1, a side above ``max_side`` or
            ``height * width`` above ``max_pixels`` (limits from :func:`size_limits`); the
            message starts with the path and gives the declared size and the limit.
    """
    mp, ms = size_limits(max_pixels, max_side)
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise fail(path, f"{what} declares an empty image ({w} x {h} pixels)")
    if h > ms or w > ms or h * w > mp:
        raise fail(
            path,
            f"{what} declares an image of {w} x {h} = {h * w} pixels, above the limit "
            f"({mp} pixels, {ms} per side): refusing to decode it (possible decompression "
            "bomb; raise the limit with max_pixels= / max_side= or LEADER_MAX_IMAGE_PIXELS / "
            "LEADER_MAX_IMAGE_SIDE if the image is genuine)",
        )


#: Short reason codes of :func:`reason_code`, in matching order (first match wins).
_REASON_CODES = (
    ("cannot open file", "cannot open"),
    ("empty file (0 bytes)", "empty file"),
    ("above the limit", "too large"),
    ("declares an empty image", "empty image"),
    ("missing pixel data", "no pixel data"),
    ("missing transfer syntax", "no transfer syntax"),
    ("no decoder", "no decoder"),
    ("truncated", "truncated"),
    ("CRC", "corrupt"),
    ("corrupt", "corrupt"),
    ("unsupported image format", "unsupported format"),
    ("unrecognised image format", "unrecognised format"),
    ("does not match a headerless JSRT", "unrecognised format"),
    ("JSRT raw file is", "wrong size"),
    ("constant image", "constant image"),
)


def reason_code(exc: BaseException) -> str:
    """A short category of an :class:`~leader.errors.ImageReadError` for skip reports
    (``"truncated"``, ``"corrupt"``, ``"empty file"``, ``"too large"``, ``"no pixel data"``,
    ``"no transfer syntax"``, ``"no decoder"``, ``"unrecognised format"``, ...); ``"unreadable"``
    (``"unreadable DICOM"`` for a DicomReadError) when nothing more specific applies."""
    from leader.errors import DicomReadError

    msg = str(exc)
    for needle, code in _REASON_CODES:
        if needle in msg:
            return code
    return "unreadable DICOM" if isinstance(exc, DicomReadError) else "unreadable"


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
