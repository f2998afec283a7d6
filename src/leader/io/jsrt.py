"""JSRT raw ``.IMG``: headerless, big-endian uint16, 12 bits used, 2048 x 2048, 0.175 mm.

JSRT raw files store the radiograph with air bright (air has the highest values, the opposite
of the display convention used here), so the reader inverts:
``pixels = 1 - v / 4095`` (HybridGNet uses ``1 - v/4096``; 4095 is the 12-bit maximum, so
the value 0 maps to exactly 1 and 4095 to exactly 0). ``meta.photometric`` is reported as
``'MONOCHROME1'`` to record that stored polarity. Reading in native (little-endian) order
would give byte-swapped values above 4095, which are rejected (field report BR-15).
"""

from __future__ import annotations

import os

import numpy as np

from leader.io._common import Image, ImageMeta, PathLike, check_declared_size, fail, finalize
from leader.io.sniff import jsrt_expected_bytes

JSRT_SHAPE = (2048, 2048)
JSRT_SPACING_MM = 0.175
JSRT_MAX = 4095


def _check_size(path: PathLike, shape: tuple[int, int], max_pixels: int | None = None,
                max_side: int | None = None) -> tuple[int, int]:
    rows, cols = (int(s) for s in shape)
    if rows <= 0 or cols <= 0:
        raise fail(path, f"invalid JSRT shape {shape}")
    check_declared_size(path, rows, cols, max_pixels=max_pixels, max_side=max_side,
                        what="the JSRT shape")
    expected = jsrt_expected_bytes((rows, cols))
    try:
        size = os.path.getsize(os.fspath(path))
    except OSError as exc:
        raise fail(path, f"cannot open file: {exc.strerror or exc}") from exc
    if size != expected:
        raise fail(
            path,
            f"JSRT raw file is {size} bytes; expected {expected} bytes for shape "
            f"({rows}, {cols}) (rows*cols*2, big-endian uint16)",
        )
    return rows, cols


def _meta(path: PathLike, rows: int, cols: int) -> ImageMeta:
    spacing = (JSRT_SPACING_MM, JSRT_SPACING_MM) if (rows, cols) == JSRT_SHAPE else None
    return ImageMeta(path=os.fspath(path), format="jsrt_raw", height=rows, width=cols,
                     pixel_spacing=spacing, bit_depth=12, photometric="MONOCHROME1", channels=1)


def read_jsrt_header(path: PathLike, shape: tuple[int, int] = JSRT_SHAPE, *,
                     max_pixels: int | None = None, max_side: int | None = None) -> ImageMeta:
    """Header of a JSRT raw file: checks the byte size; spacing 0.175 mm for 2048x2048 only.

    Raises:
        ImageReadError: wrong file size, ``shape`` above the size limit.
    """
    rows, cols = _check_size(path, shape, max_pixels, max_side)
    return _meta(path, rows, cols)


def read_jsrt_raw(path: PathLike, shape: tuple[int, int] = JSRT_SHAPE, *,
                  allow_constant: bool = False, max_pixels: int | None = None,
                  max_side: int | None = None) -> Image:
    """Read a headerless JSRT raw image.

    Args:
        path: the ``.IMG`` file.
        shape: ``(rows, cols)``; the file must be exactly ``rows*cols*2`` bytes.
        allow_constant: accept a constant image.
        max_pixels, max_side: size limits (see :func:`leader.io.read_image`).

    Returns:
        :class:`Image` float32 ``[rows, cols]``, ``1 - v/4095`` (air dark), in ``[0, 1]``.

    Raises:
        ImageReadError: wrong file size (message gives the expected byte count), ``shape``
            above the size limit, a value above 4095 (not 12-bit big-endian data), constant
            image. Message starts with the path.
    """
    rows, cols = _check_size(path, shape, max_pixels, max_side)
    try:
        raw = np.fromfile(os.fspath(path), dtype=">u2").reshape(rows, cols)
    except (OSError, ValueError) as exc:  # file changed or vanished since the size check
        raise fail(path, f"cannot read JSRT raw data: {exc}") from exc
    vmax = int(raw.max())
    if vmax > JSRT_MAX:
        raise fail(
            path,
            f"value {vmax} exceeds the 12-bit maximum {JSRT_MAX}: not big-endian 12-bit "
            "JSRT raw data (byte-swapped or another format?)",
        )
    values = 1.0 - raw.astype(np.float64) / JSRT_MAX
    return finalize(path, values, _meta(path, rows, cols), allow_constant)
