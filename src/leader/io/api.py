"""Format-dispatching entry points: :func:`read_image`, :func:`read_header`, :func:`verify_image`."""

from __future__ import annotations

from leader.io._common import Image, ImageMeta, PathLike
from leader.io.dicom import read_dicom, read_dicom_header, verify_dicom
from leader.io.jsrt import JSRT_SHAPE, read_jsrt_header, read_jsrt_raw
from leader.io.mha import read_mha, read_mha_header, verify_mha
from leader.io.raster import read_raster, read_raster_header, verify_raster
from leader.io.sniff import sniff_format


def read_image(
    path: PathLike,
    *,
    allow_constant: bool = False,
    jsrt_shape: tuple[int, int] = JSRT_SHAPE,
    assume_transfer_syntax: str | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
) -> Image:
    """Decode any supported radiograph into a float32 ``[H, W]`` image in ``[0, 1]``, air dark.

    The format is sniffed from the content (:func:`sniff_format`), never from the extension
    (a PNG named ``.jpg`` reads as PNG; a text file named ``.png`` is an error).

    * PNG / JPEG (Pillow): 8-bit /255, 16-bit /65535, colour -> BT.601 luma, alpha ignored;
      truncated or CRC-broken files are rejected.
    * DICOM (pydicom): modality LUT -> VOI LUT/window (PS3.3 C.11) -> MONOCHROME1 inversion
      -> ``[0, 1]``; without any VOI, min..max of the modality values.
    * MetaImage (SimpleITK): unsigned data / (2**b - 1), b the smallest of 8/10/12/14/16/32
      bits holding the maximum.
    * JSRT raw: big-endian uint16 of ``jsrt_shape``, ``1 - v/4095``.

    Before any pixel is decoded, the size the header declares is checked against
    ``max_pixels`` / ``max_side`` (decompression-bomb guard; defaults 2**28 pixels and
    32768 per side, or the environment variables ``LEADER_MAX_IMAGE_PIXELS`` /
    ``LEADER_MAX_IMAGE_SIDE``).

    Args:
        path: image file.
        allow_constant: return constant images instead of raising.
        jsrt_shape: ``(rows, cols)`` of headerless JSRT ``.IMG`` files.
        assume_transfer_syntax: DICOM only: transfer syntax UID assumed when the file meta
            lacks one (otherwise such files raise).
        max_pixels, max_side: limits on the declared image size (None = default).

    Returns:
        :class:`Image` (``pixels`` float32 ``[H, W]`` in ``[0, 1]``, finite; ``meta``
        :class:`ImageMeta`).

    Raises:
        ImageReadError: missing, empty, unreadable, unknown, truncated or corrupt file,
            declared size above the limit, constant image; the message starts with the path.
        DicomReadError: (subclass) DICOM without pixel data / transfer syntax / decoder.
        ValueError: a size limit (argument or environment variable) that is not a positive
            integer.
    """
    lim = {"max_pixels": max_pixels, "max_side": max_side}
    fmt = sniff_format(path, jsrt_shape=jsrt_shape)
    if fmt in ("png", "jpeg"):
        return read_raster(path, fmt, allow_constant=allow_constant, **lim)
    if fmt == "dicom":
        return read_dicom(path, allow_constant=allow_constant,
                          assume_transfer_syntax=assume_transfer_syntax, **lim)
    if fmt == "mha":
        return read_mha(path, allow_constant=allow_constant, **lim)
    return read_jsrt_raw(path, jsrt_shape, allow_constant=allow_constant, **lim)


def read_header(path: PathLike, *, jsrt_shape: tuple[int, int] = JSRT_SHAPE,
                max_pixels: int | None = None, max_side: int | None = None) -> ImageMeta:
    """Read size, spacing, bit depth etc. without decoding pixels.

    Uses Pillow's lazy open (PNG/JPEG), ``pydicom.dcmread(stop_before_pixels=True)`` (DICOM),
    ``SimpleITK.ImageFileReader.ReadImageInformation`` (MetaImage) and the file size (JSRT).
    The result equals ``read_image(path).meta`` for a valid file; it does not validate the
    pixel data (a truncated PNG still has a header: use :func:`verify_image` for that). The
    declared size is checked against ``max_pixels`` / ``max_side`` as in :func:`read_image`.

    Raises:
        ImageReadError / DicomReadError: unknown format, unreadable header, declared size
            above the limit.
    """
    lim = {"max_pixels": max_pixels, "max_side": max_side}
    fmt = sniff_format(path, jsrt_shape=jsrt_shape)
    if fmt in ("png", "jpeg"):
        return read_raster_header(path, fmt, **lim)
    if fmt == "dicom":
        return read_dicom_header(path, **lim)
    if fmt == "mha":
        return read_mha_header(path, **lim)
    return read_jsrt_header(path, jsrt_shape, **lim)


def verify_image(path: PathLike, *, jsrt_shape: tuple[int, int] = JSRT_SHAPE,
                 max_pixels: int | None = None, max_side: int | None = None) -> ImageMeta:
    """The header (as :func:`read_header`) plus a structural check of the whole file,
    without decoding pixels: what indexing uses so that a damaged file is found when the
    index is built, not deep into an epoch (field reports BR-03, BR-14).

    * PNG: every chunk's length and CRC-32, ``IEND`` present; JPEG: an end-of-image marker
      after the last scan (the whole file is read once).
    * DICOM: Pixel Data present, a Transfer Syntax UID with an installed decoder, one
      frame, a supported PhotometricInterpretation, native Pixel Data long enough and inside
      the file (large values are not loaded).
    * MetaImage: the pixel data are read once (complete and decompressible); JSRT raw: the
      byte size.
    * All: the declared size against ``max_pixels`` / ``max_side``.

    What it cannot see without decoding: a constant image, or compressed data that are
    corrupt inside (JPEG/DICOM entropy-coded data); :func:`read_image` still rejects those.

    Returns:
        the header :class:`ImageMeta` (equal to ``read_header(path)``).

    Raises:
        ImageReadError / DicomReadError: as :func:`read_header`, or a truncated / corrupt
            file (message starts with the path).
    """
    lim = {"max_pixels": max_pixels, "max_side": max_side}
    fmt = sniff_format(path, jsrt_shape=jsrt_shape)
    if fmt in ("png", "jpeg"):
        return verify_raster(path, fmt, **lim)
    if fmt == "dicom":
        return verify_dicom(path, **lim)
    if fmt == "mha":
        return verify_mha(path, **lim)
    return read_jsrt_header(path, jsrt_shape, **lim)
