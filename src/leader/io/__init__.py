"""Radiograph readers: every format to float32 ``[H, W]`` in ``[0, 1]``, air dark.

Public API::

    read_image(path, *, allow_constant=False, jsrt_shape=(2048, 2048),
               assume_transfer_syntax=None, max_pixels=None, max_side=None) -> Image
    read_header(path, *, jsrt_shape=(2048, 2048), max_pixels=None, max_side=None) -> ImageMeta
    verify_image(path, *, jsrt_shape=(2048, 2048), max_pixels=None, max_side=None) -> ImageMeta
    sniff_format(path, *, jsrt_shape=(2048, 2048)) -> 'png'|'jpeg'|'dicom'|'mha'|'jsrt_raw'
    read_jsrt_raw(path, shape=(2048, 2048), *, allow_constant=False) -> Image
    read_dicom(path, *, allow_constant=False, assume_transfer_syntax=None) -> Image

Errors are :class:`leader.errors.ImageReadError` (message starts with the path) and its
subclass :class:`leader.errors.DicomReadError`; ``reason_code(exc)`` gives a short category
(``"truncated"``, ``"too large"``, ...) for skip reports. Declared image sizes above
``MAX_PIXELS`` (2**28) pixels or ``MAX_SIDE`` (32768) per side are refused before decoding.
"""

from leader.io._common import MAX_PIXELS, MAX_SIDE, Image, ImageMeta, reason_code
from leader.io.api import read_header, read_image, verify_image
from leader.io.dicom import read_dicom
from leader.io.jsrt import read_jsrt_raw
from leader.io.mha import read_mha
from leader.io.raster import read_raster
from leader.io.sniff import sniff_format

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "Image",
    "ImageMeta",
    "read_dicom",
    "read_header",
    "read_image",
    "read_jsrt_raw",
    "read_mha",
    "read_raster",
    "reason_code",
    "sniff_format",
    "verify_image",
]
