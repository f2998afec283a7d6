"""DICOM via pydicom (+ pylibjpeg / Pillow plugins for compressed transfer syntaxes).

Greyscale pipeline (PS3.3 C.11 "Softcopy presentation"; PS3.4 N.2.1.1), applied in this order
and exactly once each (field report BR-01):

1. **Stored values**: the decoded array with ``BitsStored`` honoured: bits above
   ``HighBit`` are masked off (old overlays live there) and, when ``PixelRepresentation``
   is 1, the value is sign-extended from ``BitsStored`` bits.
2. **Modality LUT** (PS3.3 C.11.1): ``ModalityLUTSequence`` or ``RescaleSlope`` /
   ``RescaleIntercept`` via :func:`pydicom.pixels.apply_modality_lut`.
3. **VOI LUT** (PS3.3 C.11.2), mapping straight to ``[0, 1]``:

   * ``VOILUTSequence`` (first item) via :func:`pydicom.pixels.apply_voi`; the LUT output is
     then scaled by the min..max of that LUT's entries (some vendors declare 16 bits per
     entry for 12-bit LUT data, so the declared depth is not trusted);
   * else the first ``WindowCenter`` / ``WindowWidth`` pair with ``VOILUTFunction``
     ``LINEAR`` (C.11.2.1.2.1, the default), ``LINEAR_EXACT`` (C.11.2.1.3.2) or ``SIGMOID``
     (C.11.2.1.3.1), output range ``[0, 1]``;
   * else (**no VOI in the file**) the min..max of the modality-LUT output of this image is
     stretched to ``[0, 1]`` -- what a viewer does for an image without a window, and robust
     to files whose ``BitsStored`` overstates the data (e.g. 16 declared, 12 used). For a
     constant image (only returned when ``allow_constant=True``) the value's position in the
     modality-transformed ``BitsStored`` range is used instead.

4. **Polarity**: ``MONOCHROME1`` -> ``1 - y`` (air dark), after VOI, never anywhere else.
5. Clamp to ``[0, 1]``, float32.

Colour data (``RGB``/``YBR_*``, converted to RGB by pydicom) are reduced to BT.601 luma and
divided by ``2**BitsStored - 1`` (no modality/VOI LUT: they apply to greyscale only).

Failures (field report BR-03) raise :class:`~leader.errors.DicomReadError`, naming the path
and the reason: no Pixel Data element, no Transfer Syntax UID in the file meta (unless
``assume_transfer_syntax`` is given), no decoder for / no installed plugin for the transfer
syntax (named), decode errors, multi-frame data. A decode that yields a constant array (e.g.
all zeros) is rejected as a constant image.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID

from leader.errors import DicomReadError, ImageReadError
from leader.io._common import (Image, ImageMeta, PathLike, check_declared_size, fail, finalize,
                               luminance)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def _dfail(path: PathLike, reason: str) -> DicomReadError:
    return fail(path, reason, DicomReadError)  # type: ignore[return-value]


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _materialise(ds: Dataset) -> None:
    """Convert every raw element (recursively into sequences, pixel data excepted) now.

    pydicom parses values lazily, so a malformed element (unknown VR, bad length, undecodable
    text) would otherwise raise an arbitrary exception at first access, far from the read.
    """
    for tag in list(ds.keys()):
        if int(tag) in _PIXEL_TAGS:
            continue
        elem = ds[tag]
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _materialise(item)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and file_meta is not ds:
        _materialise(file_meta)


def _dcmread(path: PathLike, *, stop_before_pixels: bool, defer_size: int | None = None) -> Dataset:
    try:
        ds = pydicom.dcmread(os.fspath(path), force=True, stop_before_pixels=stop_before_pixels,
                             defer_size=defer_size)
        _materialise(ds)
        return ds
    except Exception as exc:  # pydicom raises many types on malformed files
        raise _dfail(path, f"cannot parse DICOM: {type(exc).__name__}: {exc}") from exc


def _first(value: Any) -> Any:
    """First value of a possibly multi-valued element."""
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` from PixelSpacing, else ImagerPixelSpacing (detector plane).

    DICOM orders both as "row spacing \\ column spacing" (PS3.3 10.7.1.3).
    """
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        val = ds.get(kw)
        if val is None:
            continue
        try:
            seq = val if isinstance(val, (list, tuple, MultiValue)) else [val]
            vals = [float(v) for v in seq]
        except (TypeError, ValueError):
            continue
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) >= 2 and all(np.isfinite(v) and v > 0 for v in vals[:2]):
            return (vals[0], vals[1])
    return None


def _int_attr(ds: Dataset, path: PathLike, keyword: str, default: int | None = None) -> int:
    val = ds.get(keyword, default)
    if val is None:
        raise _dfail(path, f"missing required attribute {keyword}")
    try:
        return int(_first(val))
    except (TypeError, ValueError) as exc:
        raise _dfail(path, f"invalid {keyword} value {val!r}") from exc


def _meta(ds: Dataset, path: PathLike) -> ImageMeta:
    rows = _int_attr(ds, path, "Rows")
    cols = _int_attr(ds, path, "Columns")
    bits_alloc = _int_attr(ds, path, "BitsAllocated", 16)
    bits_stored = _int_attr(ds, path, "BitsStored", bits_alloc)
    spp = _int_attr(ds, path, "SamplesPerPixel", 1)
    pi = ds.get("PhotometricInterpretation")
    return ImageMeta(
        path=os.fspath(path),
        format="dicom",
        height=rows,
        width=cols,
        pixel_spacing=pixel_spacing(ds),
        bit_depth=bits_stored,
        photometric=str(pi).strip() if pi is not None else None,
        channels=spp,
    )


def _check_size(meta: ImageMeta, path: PathLike, max_pixels: int | None,
                max_side: int | None) -> None:
    try:
        check_declared_size(path, meta.height, meta.width, max_pixels=max_pixels,
                            max_side=max_side, what="DICOM header (Rows, Columns)")
    except ImageReadError as exc:
        raise DicomReadError(str(exc)) from None


def read_dicom_header(path: PathLike, *, max_pixels: int | None = None,
                      max_side: int | None = None) -> ImageMeta:
    """DICOM header only (``pydicom.dcmread(stop_before_pixels=True)``).

    Raises:
        DicomReadError: unparsable file, missing Rows/Columns, declared size above the limit.
    """
    meta = _meta(_dcmread(path, stop_before_pixels=True), path)
    _check_size(meta, path, max_pixels, max_side)
    return meta


def _check_decodable(ds: Dataset, path: PathLike, assume_transfer_syntax: str | None) -> UID:
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        raise _dfail(path, "missing pixel data: no Pixel Data (7FE0,0010) element")
    file_meta = getattr(ds, "file_meta", None)
    tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not tsuid:
        if assume_transfer_syntax is None:
            raise _dfail(
                path,
                "missing transfer syntax: the file meta has no (0002,0010) Transfer Syntax "
                "UID (pass assume_transfer_syntax=... to decode it under an explicit "
                "assumption)",
            )
        if file_meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(assume_transfer_syntax)
        tsuid = ds.file_meta.TransferSyntaxUID
    ts = UID(str(tsuid))
    label = f"{ts} ({ts.name})" if ts.name != str(ts) else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise _dfail(path, f"no decoder for transfer syntax {label}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise _dfail(
            path, f"no decoder available for transfer syntax {label} (missing: {missing})"
        )
    return ts


def _stored_values(arr: np.ndarray, ds: Dataset, ts: UID) -> np.ndarray:
    """Honour BitsStored / HighBit / PixelRepresentation on an integer array."""
    if not np.issubdtype(arr.dtype, np.integer):
        return arr
    bits_alloc = int(ds.get("BitsAllocated", arr.dtype.itemsize * 8))
    bits_stored = int(ds.get("BitsStored", bits_alloc))
    high_bit = int(ds.get("HighBit", bits_stored - 1))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits_stored >= 63 or bits_stored < 1:
        return arr
    a = arr.astype(np.int64)
    shift = high_bit + 1 - bits_stored
    if shift > 0 and not ts.is_compressed:
        a = a >> shift
    a &= (1 << bits_stored) - 1
    if signed:
        sign = 1 << (bits_stored - 1)
        a = np.where(a & sign, a - (1 << bits_stored), a)
    return a


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.1/2 SIGMOID/LINEAR_EXACT)."""
    x = x.astype(np.float64)
    if function == "LINEAR_EXACT":
        return (x - center) / width + 0.5
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    # LINEAR
    if width == 1.0:
        return (x > center - 0.5).astype(np.float64)
    return (x - (center - 0.5)) / (width - 1.0) + 0.5


def _modality_range(ds: Dataset, bits_stored: int, signed: bool) -> tuple[float, float]:
    """Range of the BitsStored value range after the modality LUT (constant-image fallback)."""
    if signed:
        lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        lo, hi = 0, 2**bits_stored - 1
    ends = np.array([lo, hi], dtype=np.int64)
    try:
        out = np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)
        return float(out.min()), float(out.max())
    except Exception:  # noqa: BLE001 - fallback only
        return float(lo), float(hi)


def _voi_to_unit(
    path: PathLike, x: np.ndarray, ds: Dataset, bits_stored: int, signed: bool
) -> np.ndarray:
    """Modality values -> [0, 1] by VOI LUT Sequence, window, or min..max (module docstring)."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        xi = np.rint(x).astype(np.int64) if not np.issubdtype(x.dtype, np.integer) else x
        try:
            y = apply_voi(xi, ds, index=0).astype(np.float64)
            item = voi_seq[0]
            lut = np.asarray(apply_voi(
                np.arange(int(item.LUTDescriptor[1]),
                          int(item.LUTDescriptor[1]) + (int(item.LUTDescriptor[0]) or 65536)),
                ds, index=0), dtype=np.float64)
        except Exception as exc:
            reason = f"cannot apply VOI LUT Sequence: {type(exc).__name__}: {exc}"
            raise _dfail(path, reason) from exc
        lo, hi = float(lut.min()), float(lut.max())
        if hi > lo:
            return (y - lo) / (hi - lo)
        warnings.warn(f"{os.fspath(path)}: VOI LUT is constant; ignoring it", stacklevel=3)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(_first(ds.get("VOILUTFunction")) or "LINEAR").strip().upper()
        try:
            c, w = float(center), float(width)
        except (TypeError, ValueError, OverflowError):  # e.g. an invalid DS kept as text
            c = w = float("nan")
        min_width = 1.0 if function == "LINEAR" else 0.0
        if np.isfinite(c) and np.isfinite(w) and (w >= 1.0 if function == "LINEAR" else w > 0):
            return _window(x, c, w, function)
        warnings.warn(
            f"{os.fspath(path)}: invalid window (center={center}, width={width}, function="
            f"{function}, width must be > {min_width:g}); using the data min..max",
            stacklevel=3,
        )
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        return (x - lo) / (hi - lo)
    rlo, rhi = _modality_range(ds, bits_stored, signed)
    if rhi > rlo:
        return (x - rlo) / (rhi - rlo)
    return np.zeros_like(x)


def _frames(ds: Dataset, path: PathLike) -> int:
    raw = _first(ds.get("NumberOfFrames", 1))
    try:
        frames = int(raw) if raw not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise _dfail(path, f"invalid NumberOfFrames value {raw!r}") from exc
    if frames != 1:
        raise _dfail(path, f"multi-frame DICOM ({frames} frames) is not supported")
    return frames


def _native_length_check(ds: Dataset, path: PathLike, meta: ImageMeta, ts: UID) -> None:
    """Native (uncompressed) Pixel Data must hold Rows*Columns*SamplesPerPixel samples and
    lie inside the file; encapsulated data are checked by decoding only."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None or ts.is_compressed:
        return
    length = getattr(elem, "length", None)
    if length is None:  # already a DataElement (small, read eagerly)
        value = elem.value
        length = len(value) if isinstance(value, (bytes, bytearray)) else None
    if length is None or length == 0xFFFFFFFF:
        return
    bits = _int_attr(ds, path, "BitsAllocated", 16)
    samples = meta.height * meta.width * max(meta.channels, 1)
    expected = (samples + 7) // 8 if bits == 1 else samples * max(bits, 1) // 8
    if length < expected:
        raise _dfail(path, f"truncated pixel data: {length} bytes, expected {expected} "
                           f"({meta.height} x {meta.width} x {meta.channels} samples of {bits} bits)")
    tell = getattr(elem, "value_tell", None)
    if tell is not None:
        try:
            size = os.path.getsize(os.fspath(path))
        except OSError:
            return
        if tell + length > size:
            raise _dfail(path, f"truncated file: Pixel Data needs {length} bytes from byte {tell}, "
                               f"the file has {size} bytes")


def verify_dicom(path: PathLike, *, max_pixels: int | None = None,
                 max_side: int | None = None) -> ImageMeta:
    """Index-time check of a DICOM without decoding pixels.

    The file is parsed with large values deferred; then Rows/Columns (and the size limit),
    the presence of Pixel Data, the Transfer Syntax UID and an installed decoder for it,
    single-frame, a supported PhotometricInterpretation and (native syntaxes) a Pixel Data
    length of at least Rows*Columns*SamplesPerPixel samples inside the file are checked.
    A constant image is only found by :func:`read_dicom`.

    Returns:
        the header :class:`ImageMeta` (equal to :func:`read_dicom_header`).

    Raises:
        DicomReadError: any of the checks above fails (message starts with the path).
    """
    ds = _dcmread(path, stop_before_pixels=False, defer_size=4096)
    return _checked(ds, path, None, max_pixels, max_side)[0]


def _checked(ds, path: PathLike, assume_transfer_syntax: str | None, max_pixels: int | None,
             max_side: int | None):
    """``(meta, transfer syntax)`` of a parsed data set after every check short of decoding."""
    meta = _meta(ds, path)
    _check_size(meta, path, max_pixels, max_side)
    ts = _check_decodable(ds, path, assume_transfer_syntax)
    _frames(ds, path)
    pi = (meta.photometric or "").upper()
    if pi not in _GREY + _COLOUR:
        raise _dfail(path, f"unsupported PhotometricInterpretation {meta.photometric!r}")
    _native_length_check(ds, path, meta, ts)
    return meta, ts


def read_dicom(
    path: PathLike,
    *,
    allow_constant: bool = False,
    assume_transfer_syntax: str | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
) -> Image:
    """Decode a single-frame DICOM radiograph.

    Args:
        path: DICOM file (Part 10 with preamble, or a raw data set).
        allow_constant: accept an image whose output pixels are all equal.
        assume_transfer_syntax: UID to use when the file meta lacks (0002,0010); without it
            such files are rejected (the assumption must be explicit, field report BR-03).
        max_pixels, max_side: limits on the declared Rows x Columns, checked before decoding
            (see :func:`leader.io.read_image`).

    Returns:
        :class:`Image`: float32 ``[Rows, Columns]`` in ``[0, 1]``, air dark; see the module
        docstring for the modality LUT -> VOI LUT -> MONOCHROME1 inversion -> scaling order.

    Raises:
        DicomReadError: missing Pixel Data, missing Transfer Syntax UID, no decoder for the
            transfer syntax, declared size above the limit, decode failure, multi-frame or
            unsupported photometric interpretation. Message starts with the path.
        ImageReadError: constant image (unless ``allow_constant``).
    """
    ds = _dcmread(path, stop_before_pixels=False)
    meta, ts = _checked(ds, path, assume_transfer_syntax, max_pixels, max_side)
    pi = (meta.photometric or "").upper()
    try:
        raw = np.asarray(ds.pixel_array)
    except Exception as exc:  # decoder plugins raise assorted types
        raise _dfail(
            path, f"decoding transfer syntax {ts} ({ts.name}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    bits_stored = meta.bit_depth
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if pi in _COLOUR:
        if raw.ndim != 3 or raw.shape[-1] < 3:
            raise _dfail(path, f"colour image decoded to unexpected shape {raw.shape}")
        values = luminance(_stored_values(raw, ds, ts)) / float(2**bits_stored - 1)
    else:
        if raw.ndim != 2:
            raise _dfail(path, f"greyscale image decoded to unexpected shape {raw.shape}")
        stored = _stored_values(raw, ds, ts)
        try:
            modality = np.asarray(apply_modality_lut(stored, ds))
        except Exception as exc:
            raise _dfail(path, f"cannot apply modality LUT: {type(exc).__name__}: {exc}") from exc
        values = _voi_to_unit(path, modality, ds, bits_stored, signed)
        if pi == "MONOCHROME1":
            values = 1.0 - values
    return finalize(path, values, meta, allow_constant)
