"""Format-dispatching entry points: :func:`read_image` and :func:`read_header`."""

from __future__ import annotations

from leader.io._common import Image, ImageMeta, PathLike
from leader.io.dicom import read_dicom, read_dicom_header
from leader.io.jsrt import JSRT_SHAPE, read_jsrt_header, read_jsrt_raw
from leader.io.mha import read_mha, read_mha_header
from leader.io.raster import read_raster, read_raster_header
from leader.io.sniff import sniff_format


def read_image(
    path: PathLike,
    *,
    allow_constant: bool = False,
    jsrt_shape: tuple[int, int] = JSRT_SHAPE,
    assume_transfer_syntax: str | None = None,
) -> Image:
    """Decode any supported radiograph into a float32 ``[H, W]`` image in ``[0, 1]``, air dark.

    The format is sniffed from the content (:func:`sniff_format`), never from the extension.

    * PNG / JPEG (Pillow): 8-bit /255, 16-bit /65535, colour -> BT.601 luma, alpha ignored;
      truncated or CRC-broken files are rejected.
    * DICOM (pydicom): modality LUT -> VOI LUT/window (PS3.3 C.11) -> MONOCHROME1 inversion
      -> ``[0, 1]``; without any VOI, min..max of the modality values.
    * MetaImage (SimpleITK): unsigned data / (2**b - 1), b the smallest of 8/10/12/14/16/32
      bits holding the maximum.
    * JSRT raw: big-endian uint16 of ``jsrt_shape``, ``1 - v/4095``.

    Args:
        path: image file.
        allow_constant: return constant images instead of raising.
        jsrt_shape: ``(rows, cols)`` of headerless JSRT ``.IMG`` files.
        assume_transfer_syntax: DICOM only: transfer syntax UID assumed when the file meta
            lacks one (otherwise such files raise).

    Returns:
        :class:`Image` (``pixels`` float32 ``[H, W]`` in ``[0, 1]``; ``meta``
        :class:`ImageMeta`).

    Raises:
        ImageReadError: unreadable, unknown, truncated or corrupt file, constant image; the
            message starts with the path.
        DicomReadError: (subclass) DICOM without pixel data / transfer syntax / decoder.
    """
    fmt = sniff_format(path, jsrt_shape=jsrt_shape)
    if fmt in ("png", "jpeg"):
        return read_raster(path, fmt, allow_constant=allow_constant)
    if fmt == "dicom":
        return read_dicom(path, allow_constant=allow_constant,
                          assume_transfer_syntax=assume_transfer_syntax)
    if fmt == "mha":
        return read_mha(path, allow_constant=allow_constant)
    return read_jsrt_raw(path, jsrt_shape, allow_constant=allow_constant)


def read_header(path: PathLike, *, jsrt_shape: tuple[int, int] = JSRT_SHAPE) -> ImageMeta:
    """Read size, spacing, bit depth etc. without decoding pixels.

    Uses Pillow's lazy open (PNG/JPEG), ``pydicom.dcmread(stop_before_pixels=True)`` (DICOM),
    ``SimpleITK.ImageFileReader.ReadImageInformation`` (MetaImage) and the file size (JSRT).
    The result equals ``read_image(path).meta`` for a valid file; it does not validate the
    pixel data (a truncated PNG still has a header).

    Raises:
        ImageReadError / DicomReadError: unknown format or unreadable header.
    """
    fmt = sniff_format(path, jsrt_shape=jsrt_shape)
    if fmt in ("png", "jpeg"):
        return read_raster_header(path, fmt)
    if fmt == "dicom":
        return read_dicom_header(path)
    if fmt == "mha":
        return read_mha_header(path)
    return read_jsrt_header(path, jsrt_shape)
