"""MetaImage (``.mha`` / ``.mhd`` + raw) via SimpleITK.

* 2-D images, or 3-D images with exactly one slice (squeezed). Pixels are returned as stored
  (row = image y, column = image x); the direction cosines are not applied.
* MetaImage has no photometric tag: data are taken as "higher value = brighter" (air dark),
  which is what NODE21 / opencxr ``.mha`` radiographs use.
* Scaling (MetaImage does not record the detector bit depth):

  - unsigned integers (and signed integers with no negative value): divided by
    ``2**b - 1`` where ``b`` is the smallest of 8, 10, 12, 14, 16, 32 bits (not above the
    element type's size) that holds the image maximum -- the common detector depths. A
    12-bit radiograph stored as uint16 with values 0..4093 is divided by 4095. This keeps
    absolute intensities (no per-image contrast stretch), like the PNG and JSRT readers;
  - signed integers with negative values, and floats outside ``[0, 1]``: min..max of the
    image; floats already inside ``[0, 1]``: unchanged.

* Multi-component pixels (RGB/RGBA vectors) are reduced to BT.601 luma first.
* The header is read first (``ReadImageInformation``): dimensionality, components per pixel
  and the declared size (decompression-bomb guard,
  :func:`leader.io._common.check_declared_size`) are checked before SimpleITK allocates and
  reads the pixel buffer.
"""

from __future__ import annotations

import os
import re

import numpy as np
import SimpleITK as sitk

from leader.io._common import (Image, ImageMeta, PathLike, check_declared_size, fail, finalize,
                               luminance)

_LADDER = (8, 10, 12, 14, 16, 32)


def _bits_from_pixel_id(pixel_id: int) -> int:
    text = sitk.GetPixelIDValueAsString(pixel_id)  # e.g. "16-bit unsigned integer"
    if "vector of " in text:
        text = text.split("vector of ", 1)[1]
    digits = text.split("-bit", 1)[0].strip().split()[-1] if "-bit" in text else ""
    if digits.isdigit():
        return int(digits)
    if "64-bit float" in text or "double" in text:
        return 64
    if "float" in text:
        return 32
    return 0


def _meta(path: PathLike, size: tuple[int, ...], spacing: tuple[float, ...], bits: int,
          components: int) -> ImageMeta:
    if len(size) == 3 and size[2] == 1:
        size, spacing = size[:2], spacing[:2]
    if len(size) != 2:
        raise fail(path, f"MetaImage of size {tuple(size)} is not a 2-D image (or one slice)")
    sx, sy = (float(v) for v in spacing[:2])
    ps = (sy, sx) if sx > 0 and sy > 0 and np.isfinite([sx, sy]).all() else None
    return ImageMeta(
        path=os.fspath(path),
        format="mha",
        height=int(size[1]),
        width=int(size[0]),
        pixel_spacing=ps,
        bit_depth=int(bits),
        photometric=None,
        channels=int(components),
    )


def _header(path: PathLike, max_pixels: int | None, max_side: int | None
            ) -> tuple[sitk.ImageFileReader, ImageMeta]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise fail(path, f"cannot read MetaImage header: {str(exc).strip()[-300:]}") from exc
    meta = _meta(path, reader.GetSize(), reader.GetSpacing(),
                 _bits_from_pixel_id(reader.GetPixelID()), reader.GetNumberOfComponents())
    check_declared_size(path, meta.height, meta.width, max_pixels=max_pixels, max_side=max_side,
                        what="MetaImage header")
    if meta.channels not in (1, 3, 4):
        raise fail(path, f"unsupported MetaImage with {meta.channels} components per pixel")
    _check_data_size(path, meta.height * meta.width * meta.channels * max(meta.bit_depth, 8) // 8)
    return reader, meta


_ZLIB_MAX_RATIO = 1100  # deflate cannot expand more than ~1032:1


def _check_data_size(path: PathLike, needed: int) -> None:
    """Refuse a MetaImage whose pixel data cannot hold ``needed`` bytes: uncompressed data
    shorter than that, or compressed data that would have to expand more than deflate can
    (a tiny file declaring a huge image), before SimpleITK allocates the buffer. Multi-file
    data (``LIST`` / printf pattern) is refused."""
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise fail(path, f"cannot open file: {exc.strerror or exc}") from exc
    text = head.decode("latin-1")
    m = re.search(r"(?im)^[ \t]*ElementDataFile[ \t]*=[ \t]*([^\r\n]*?)[ \t]*(\r?\n|$)", text)
    if m is None:
        return
    target = m.group(1).strip()
    compressed = re.search(r"(?im)^[ \t]*CompressedData[ \t]*=[ \t]*true\b", text[:m.start()]) is not None
    if target.upper() == "LOCAL":
        available = size - m.end()
        where = f"{p} (after its {m.end()}-byte header)"
    elif target.upper().startswith("LIST") or "%" in target or not target:
        # one file per slice (LIST / printf pattern): not a 2-D radiograph; SimpleITK would
        # allocate the declared size before finding out what the files hold
        raise fail(path, f"unsupported MetaImage ElementDataFile {target!r}: expected LOCAL or "
                         "one data file")
    else:
        data_file = os.path.join(os.path.dirname(p), target)
        try:
            available = os.path.getsize(data_file)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
            raise fail(path, f"MetaImage data file {data_file!r} cannot be opened: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
        where = data_file
    limit = available * (_ZLIB_MAX_RATIO if compressed else 1)
    if needed > limit:
        kind = "compressed " if compressed else ""
        raise fail(path, f"truncated MetaImage: the header declares {needed} bytes of pixel data, "
                         f"but {where} holds only {available} bytes of {kind}data")


def read_mha_header(path: PathLike, *, max_pixels: int | None = None,
                    max_side: int | None = None) -> ImageMeta:
    """Header only (``sitk.ImageFileReader.ReadImageInformation``); size, spacing, type.

    ``pixel_spacing`` is ``(row_mm, col_mm)`` = ``(spacing[1], spacing[0])`` because ITK
    orders spacing as (x, y). ``bit_depth`` is the element type's size in bits.

    Raises:
        ImageReadError: unreadable header, not 2-D, unsupported component count, declared
            size above the limit.
    """
    return _header(path, max_pixels, max_side)[1]


def _execute(path: PathLike, reader: sitk.ImageFileReader) -> sitk.Image:
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise fail(path, f"cannot read MetaImage: {str(exc).strip()[-300:]}") from exc


def verify_mha(path: PathLike, *, max_pixels: int | None = None,
               max_side: int | None = None) -> ImageMeta:
    """Header checks of :func:`read_mha_header`, then the pixel data are read (and
    decompressed) once to prove they are complete; no scaling. Returns the header meta.

    Raises:
        ImageReadError: as :func:`read_mha_header`, or missing / truncated / corrupt data.
    """
    reader, meta = _header(path, max_pixels, max_side)
    _execute(path, reader)
    return meta


def _scale(path: PathLike, arr: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """Scale ``values`` (default ``arr``) to [0, 1] by the rule chosen from ``arr``'s dtype."""
    if not np.isfinite(arr).all():
        raise fail(path, "MetaImage contains NaN or infinite values")
    vals = (arr if values is None else values).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0:
        storage = arr.dtype.itemsize * 8 - (1 if np.issubdtype(arr.dtype, np.signedinteger) else 0)
        bits = next((b for b in _LADDER if b <= max(storage, 8) and hi <= 2**b - 1), storage)
        return vals / float(2**bits - 1)
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return vals
    vlo, vhi = float(vals.min()), float(vals.max())
    if vhi > vlo:
        return (vals - vlo) / (vhi - vlo)
    return np.zeros(vals.shape, dtype=np.float64)


def read_mha(path: PathLike, *, allow_constant: bool = False, max_pixels: int | None = None,
             max_side: int | None = None) -> Image:
    """Read a 2-D (or single-slice 3-D) MetaImage.

    ``max_pixels`` / ``max_side``: size limits checked on the header before the pixel data
    are read (see :func:`leader.io.read_image`).

    Returns:
        :class:`Image` float32 ``[H, W]`` in ``[0, 1]`` (scaling in the module docstring);
        ``meta.pixel_spacing`` from the image spacing as ``(row_mm, col_mm)``.

    Raises:
        ImageReadError: SimpleITK cannot read the file, more than one slice, declared size
            above the limit, non-finite values, unsupported component count, constant image.
            Message starts with path.
    """
    reader, _ = _header(path, max_pixels, max_side)
    img = _execute(path, reader)
    comps = img.GetNumberOfComponentsPerPixel()
    meta = _meta(path, img.GetSize(), img.GetSpacing(), _bits_from_pixel_id(img.GetPixelID()),
                 comps)
    arr = sitk.GetArrayFromImage(img)  # [z,] y, x [, c]
    if img.GetDimension() == 3:
        arr = arr[0]
    if comps == 1:
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        values = _scale(path, arr)
    elif comps in (3, 4):
        values = _scale(path, arr[..., :3], luminance(arr[..., :3]))
    else:
        raise fail(path, f"unsupported MetaImage with {comps} components per pixel")
    return finalize(path, values, meta, allow_constant)
