"""PNG and JPEG via Pillow, with explicit bit-depth handling and integrity checks.

* Scaling uses the bit depth of the decoded samples: 8-bit modes (``L``, ``LA``, ``P``,
  ``RGB``, ``RGBA``, JPEG) are divided by 255, 16-bit modes (``I;16*``, and ``I`` for a
  16-bit PNG) by 65535 (field report BR-04). A PNG ``sBIT`` chunk is not used: the PNG
  specification requires encoders to scale samples to the full range of the stored depth.
* Colour images are reduced to grey with BT.601 luma in float64 (alpha ignored); 16-bit data
  is never passed through ``Image.convert('L')``, which clamps values above 255. 16-bit
  grey+alpha / RGB / RGBA PNGs, which Pillow reduces to their high byte, are decoded at full
  precision (see ``_png16_colour``).
* Integrity (field report BR-14): every PNG chunk's length and CRC-32 are checked and
  ``IEND`` must be present (Pillow does not verify IDAT CRCs); JPEG must end its last scan
  with an EOI marker. Pixels are then fully decoded with ``Image.load()``. Pillow's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched, and the structural checks above do
  not depend on it.
* Decompression-bomb guard: the size declared by the PNG IHDR (before Pillow sees the file)
  or by the JPEG frame header (Pillow's lazy open, before ``load()``) is checked with
  :func:`leader.io._common.check_declared_size`.
* EXIF orientation is not applied: pixels are returned as stored, which is the frame that
  dataset annotations use.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image as PILImage

from leader.errors import ImageReadError
from leader.io._common import (Image, ImageMeta, PathLike, check_declared_size, fail, finalize,
                               luminance)
from leader.io.sniff import PNG_SIGNATURE

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error,
               IndexError, KeyError, PILImage.DecompressionBombError)


def check_png_structure(path: PathLike, data: bytes) -> tuple[int, int]:
    """Walk all PNG chunks, verifying lengths and CRC-32s, up to ``IEND``.

    Returns:
        ``(bit_depth, colour_type)`` from IHDR.

    Raises:
        ImageReadError: truncated chunk, bad CRC (naming chunk and offset), missing IHDR/IEND.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise fail(path, "not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    n = len(data)
    ihdr: tuple[int, int] | None = None
    while True:
        if pos + 12 > n:
            raise fail(path, f"truncated PNG: file ends at byte {n} before the IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        name = ctype.decode("latin-1")
        if end > n:
            raise fail(
                path,
                f"truncated PNG: chunk {name!r} at byte {pos} needs {length + 12} bytes, "
                f"only {n - pos} remain",
            )
        stored = struct.unpack(">I", data[end - 4:end])[0]
        computed = zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF
        if stored != computed:
            raise fail(
                path,
                f"corrupt PNG: chunk {name!r} at byte {pos} has CRC 0x{stored:08x}, "
                f"computed 0x{computed:08x}",
            )
        if ihdr is None:
            if ctype != b"IHDR" or length < 13:
                raise fail(path, "corrupt PNG: first chunk is not a valid IHDR")
            ihdr = (data[pos + 16], data[pos + 17])
        if ctype == b"IEND":
            return ihdr
        pos = end


def check_jpeg_structure(path: PathLike, data: bytes) -> None:
    """Require an EOI marker (FF D9) after the last start-of-scan marker (FF DA).

    In entropy-coded data 0xFF is always followed by 0x00 or RSTn, so FF D9 there is the EOI.
    """
    sos = data.rfind(b"\xff\xda")
    if sos < 0:
        raise fail(path, "corrupt JPEG: no start-of-scan marker")
    if data.rfind(b"\xff\xd9") < sos:
        raise fail(path, "truncated JPEG: no end-of-image marker after the last scan")


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(os.fspath(path), "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise fail(path, f"cannot read file: {exc.strerror or exc}") from exc


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel


def _meta_from_pil(path: PathLike, fmt: str, im: PILImage.Image,
                   png_info: tuple[int, int] | None) -> ImageMeta:
    if png_info is not None:
        bit_depth, channels = int(png_info[0]), _PNG_CHANNELS.get(png_info[1], len(im.getbands()))
    else:
        bit_depth, channels = int(getattr(im, "bits", 8) or 8), len(im.getbands())
    return ImageMeta(
        path=os.fspath(path),
        format=fmt,
        height=int(im.height),
        width=int(im.width),
        pixel_spacing=None,  # pHYs / JPEG DPI are print resolution, not detector spacing
        bit_depth=bit_depth,
        photometric=None,
        channels=channels,
    )


def _to_unit(path: PathLike, im: PILImage.Image, png_depth: int | None) -> np.ndarray:
    """Decoded Pillow image -> float64 ``[H, W]`` in [0, 1] (before clamping)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.float64)
    if mode == "L":
        return np.asarray(im, dtype=np.uint8) / 255.0
    if mode in ("LA", "La"):
        return np.asarray(im, dtype=np.uint8)[..., 0] / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float64) / 65535.0
    if mode == "I":
        arr = np.asarray(im).astype(np.float64)
        depth = png_depth if png_depth is not None else 16
        if depth > 16 or (arr.size and (arr.min() < 0 or arr.max() > 2**depth - 1)):
            raise fail(path, f"mode 'I' values outside the {depth}-bit range")
        return arr / float(2**depth - 1)
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return luminance(np.asarray(im, dtype=np.uint8)) / 255.0
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        # palette / other 8-bit colour spaces: converting to RGB(A) is lossless in range
        rgb = im.convert("RGBA" if mode in ("P", "PA") else "RGB")
        return luminance(np.asarray(rgb, dtype=np.uint8)) / 255.0
    raise fail(path, f"unsupported Pillow mode {mode!r}")


def _png16_colour(path: PathLike, data: bytes, colour_type: int) -> np.ndarray:
    """Full-precision decode of 16-bit grey+alpha / RGB / RGBA PNGs -> float64 [H, W] in [0, 1].

    Pillow decodes these to 8 bits (high byte only). Grey+alpha (4 bytes/pixel) is decoded by
    relabelling IHDR as 8-bit RGBA, which has the same bytes per pixel and per row and hence
    identical filtering/interlacing, and recombining ``hi * 256 + lo`` of the grey sample.
    RGB/RGBA 16-bit are decoded by SimpleITK's PNGImageIO (libpng).
    """
    if colour_type == 4:
        hdr = bytearray(data[8:33])  # length, 'IHDR', 13 data bytes, CRC
        hdr[16], hdr[17] = 8, 6
        hdr[21:25] = struct.pack(">I", zlib.crc32(bytes(hdr[4:21])) & 0xFFFFFFFF)
        with PILImage.open(io.BytesIO(data[:8] + bytes(hdr) + data[33:])) as im:
            im.load()
            b = np.asarray(im, dtype=np.uint8).astype(np.float64)
        return (b[..., 0] * 256.0 + b[..., 1]) / 65535.0
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("PNGImageIO")
    reader.SetFileName(os.fspath(path))
    try:
        arr = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        raise fail(path, f"cannot decode 16-bit colour PNG: {str(exc).strip()[-200:]}") from exc
    if arr.ndim != 3 or arr.shape[-1] < 3 or arr.dtype != np.uint16:
        raise fail(path, f"16-bit colour PNG decoded to unexpected {arr.dtype} {arr.shape}")
    return luminance(arr[..., :3]) / 65535.0


def _check_structure(path: PathLike, fmt: str, data: bytes) -> tuple[int, int] | None:
    """Structural integrity (PNG chunks/CRCs/IEND, JPEG EOI); returns the PNG IHDR info."""
    if fmt == "png":
        return check_png_structure(path, data)
    if fmt == "jpeg":
        check_jpeg_structure(path, data)
        return None
    raise fail(path, f"read_raster cannot read format {fmt!r}")


def _png_ihdr_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from the IHDR of a PNG that passed :func:`check_png_structure`."""
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def read_raster(path: PathLike, fmt: str, *, allow_constant: bool = False,
                max_pixels: int | None = None, max_side: int | None = None) -> Image:
    """Read a PNG or JPEG file.

    Args:
        path: file path; ``fmt`` is ``'png'`` or ``'jpeg'`` (from :func:`sniff_format`).
        allow_constant: accept an image whose pixels are all equal.
        max_pixels, max_side: decompression-bomb limits on the declared size (default
            :data:`leader.io._common.MAX_PIXELS` / ``MAX_SIDE`` or the environment).

    Returns:
        :class:`Image` with float32 ``[H, W]`` pixels in ``[0, 1]`` (8-bit /255, 16-bit
        /65535 at full 16-bit precision, colour -> BT.601 luma, alpha ignored).

    Raises:
        ImageReadError: truncated or CRC-broken PNG, truncated JPEG, declared size above the
            limit, Pillow decode failure, unsupported mode, constant image. The message
            starts with the path.
    """
    data = _read_bytes(path)
    png_info = _check_structure(path, fmt, data)
    if png_info is not None:
        check_declared_size(path, *_png_ihdr_size(data), max_pixels=max_pixels, max_side=max_side,
                            what="PNG header")
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            if png_info is None:
                check_declared_size(path, im.height, im.width, max_pixels=max_pixels,
                                    max_side=max_side, what="JPEG header")
            im.load()  # full decode; raises on truncated data
            meta = _meta_from_pil(path, fmt, im, png_info)
            if png_info is not None and png_info[0] == 16 and png_info[1] in (2, 4, 6):
                values = _png16_colour(path, data, png_info[1])
            else:
                values = _to_unit(path, im, png_info[0] if png_info else None)
    except ImageReadError:
        raise
    except _PIL_ERRORS as exc:
        raise fail(path, f"cannot decode {fmt.upper()}: {type(exc).__name__}: {exc}") from exc
    return finalize(path, values, meta, allow_constant)


def verify_raster(path: PathLike, fmt: str, *, max_pixels: int | None = None,
                  max_side: int | None = None) -> ImageMeta:
    """Header plus structural integrity of a PNG/JPEG without decoding pixels.

    Reads the whole file once: every PNG chunk length and CRC-32 and the ``IEND`` chunk, or
    the JPEG end-of-image marker after the last scan; then the header (Pillow lazy open) and
    the declared-size limit. The result equals :func:`read_raster_header`.

    Raises:
        ImageReadError: truncated / CRC-broken file, header Pillow cannot parse, declared size
            above the limit. The message starts with the path.
    """
    data = _read_bytes(path)
    png_info = _check_structure(path, fmt, data)
    if png_info is not None:
        check_declared_size(path, *_png_ihdr_size(data), max_pixels=max_pixels, max_side=max_side,
                            what="PNG header")
    return _pil_header(io.BytesIO(data), path, fmt, png_info, max_pixels, max_side)


def _pil_header(src, path: PathLike, fmt: str, png_info, max_pixels: int | None, max_side: int | None) -> ImageMeta:
    """Header of ``src`` (a path or a byte stream) by Pillow's lazy open; declared size checked."""
    try:
        with PILImage.open(src) as im:
            meta = _meta_from_pil(path, fmt, im, png_info)
    except ImageReadError:
        raise
    except _PIL_ERRORS as exc:
        raise fail(path, f"cannot read {fmt.upper()} header: {type(exc).__name__}: {exc}") from exc
    check_declared_size(path, meta.height, meta.width, max_pixels=max_pixels, max_side=max_side,
                        what=f"{fmt.upper()} header")
    return meta


def read_raster_header(path: PathLike, fmt: str, *, max_pixels: int | None = None,
                       max_side: int | None = None) -> ImageMeta:
    """PNG/JPEG header via Pillow's lazy open (no pixel decoding); declared size checked.

    Raises:
        ImageReadError: missing IHDR, header Pillow cannot parse, declared size above the limit.
    """
    p = os.fspath(path)
    png_info = None
    if fmt == "png":
        try:
            with open(p, "rb") as fh:
                head = fh.read(33)
        except _PIL_ERRORS as exc:
            raise fail(p, f"cannot read PNG header: {type(exc).__name__}: {exc}") from exc
        if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
            raise fail(p, "corrupt PNG: missing IHDR")
        png_info = (head[24], head[25])
        check_declared_size(p, *_png_ihdr_size(head), max_pixels=max_pixels, max_side=max_side,
                            what="PNG header")
    return _pil_header(p, p, fmt, png_info, max_pixels, max_side)
