"""Format detection from file content (magic bytes), never from the extension alone.

The one exception is JSRT raw, which has no header at all: a file is taken as JSRT raw only
when no known signature matches, its extension is ``.img`` (any case) and its size is exactly
``rows * cols * 2`` bytes for the expected shape.
"""

from __future__ import annotations

import os
import re

from leader.io._common import PathLike, fail

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"  # at byte offset 128, after the preamble (PS3.10 7.1)

_HEAD_BYTES = 65536

# Value representations (PS3.5 6.2) used to recognise preamble-less explicit-VR DICOM.
_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}

# Signatures of formats we recognise but do not read (for a clearer error).
_UNSUPPORTED = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 (JP2)"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x93NUMPY", "NumPy .npy"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "zip"),
)

_METAIMAGE_FIRST_LINE = re.compile(rb"^\s*[A-Za-z][A-Za-z0-9_]*\s*=")


def _is_metaimage(head: bytes) -> bool:
    """MetaIO text header: ``Key = Value`` lines including NDims and ElementDataFile."""
    if not _METAIMAGE_FIRST_LINE.match(head):
        return False
    return re.search(rb"(?m)^\s*NDims\s*=", head) is not None and (
        re.search(rb"(?m)^\s*ElementDataFile\s*=", head) is not None
    )


def _is_preambleless_dicom(head: bytes) -> bool:
    """A raw DICOM data set without the 128-byte preamble (group 0002 or 0008 first)."""
    if len(head) < 8 or head[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in _DICOM_VRS:  # explicit VR little endian
        return True
    # implicit VR little endian: small element number and a short first value
    element = int.from_bytes(head[2:4], "little")
    length = int.from_bytes(head[4:8], "little")
    return element <= 0x0020 and length < 1024


def jsrt_expected_bytes(shape: tuple[int, int]) -> int:
    """Byte size of a headerless big-endian uint16 image of ``shape`` (rows, cols)."""
    rows, cols = (int(s) for s in shape)
    return rows * cols * 2


def sniff_format(path: PathLike, *, jsrt_shape: tuple[int, int] = (2048, 2048)) -> str:
    """Return the image format of ``path`` from its content.

    Args:
        path: file to inspect (only the first 64 KiB and the size are read).
        jsrt_shape: ``(rows, cols)`` expected of a headerless JSRT raw ``.IMG`` file.

    Returns:
        One of ``'png'`` (PNG signature), ``'jpeg'`` (``FF D8 FF``), ``'dicom'`` (``DICM`` at
        offset 128, or a preamble-less data set starting with group 0002/0008), ``'mha'``
        (MetaImage ``.mha``/``.mhd`` text header), ``'jsrt_raw'`` (no signature, ``.img``
        extension and size ``rows*cols*2``).

    Raises:
        ImageReadError: file missing/unreadable/empty, a known but unsupported format, an
            ``.img`` file whose size is not the expected JSRT size (message gives the expected
            byte count), or unrecognised content. The message starts with the path.
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise fail(p, f"cannot open file: {exc.strerror or exc}") from exc
    if size == 0:
        raise fail(p, "empty file (0 bytes)")
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == DICOM_MAGIC:
        return "dicom"
    if _is_metaimage(head):
        return "mha"
    is_img = os.path.splitext(p)[1].lower() == ".img"
    expected = jsrt_expected_bytes(jsrt_shape)
    if is_img and size == expected:
        return "jsrt_raw"
    if _is_preambleless_dicom(head):
        return "dicom"
    for magic, name in _UNSUPPORTED:
        if head.startswith(magic):
            raise fail(p, f"unsupported image format {name} (sniffed from content)")
    if is_img:
        raise fail(
            p,
            f"no known signature and size {size} bytes does not match a headerless JSRT raw "
            f"image of shape {tuple(jsrt_shape)}: expected {expected} bytes "
            "(rows*cols*2, big-endian uint16)",
        )
    ext = os.path.splitext(p)[1]
    what = "text, not an image" if _looks_like_text(head) else f"first bytes {head[:8].hex(' ')}"
    hint = (f"; the format is sniffed from the content, and it does not match a '{ext}' file"
            if ext else "")
    raise fail(p, f"unrecognised image format ({what}){hint}")


def _looks_like_text(head: bytes) -> bool:
    """True when the first 512 bytes are printable UTF-8 text (a CSV, HTML error page...)."""
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the sample end is still text
        try:
            text = sample[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and all(c.isprintable() or c in "\r\n\t" for c in text)
