"""Tests of leader.io: field reports BR-01, BR-03, BR-04, BR-14, BR-15 and the real-cxr pack."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from PIL import ImageFile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from leader.errors import DicomReadError, ImageReadError
from leader.io import Image, ImageMeta, read_header, read_image, read_jsrt_raw, sniff_format

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# --------------------------------------------------------------------------- helpers


def make_dicom(
    path: Path,
    stored,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str | None = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    spacing: tuple[str, str] | None = None,
    pixel_data: bytes | None = None,
) -> Path:
    """Write a 16-bit-allocated single-frame greyscale DICOM (explicit VR LE unless told)."""
    arr = np.asarray(stored)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    if transfer_syntax is not None:
        meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if with_pixels:
        if pixel_data is not None:
            ds.PixelData = pixel_data
        else:
            ds.PixelData = arr.astype("<i2" if signed else "<u2").tobytes()
    if transfer_syntax is None:
        ds.save_as(path, implicit_vr=False, little_endian=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of each chunk."""
    out, pos = [], 8
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((ctype, pos, length))
        pos += 12 + length
    return out


def assert_valid(img: Image) -> None:
    assert isinstance(img, Image) and isinstance(img.meta, ImageMeta)
    assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
    assert img.pixels.shape == (img.meta.height, img.meta.width)
    assert float(img.pixels.min()) >= 0.0 and float(img.pixels.max()) <= 1.0


def linear_window(x, c, w):
    """PS3.3 C.11.2.1.2.1 with output range [0, 1]."""
    return np.clip((np.asarray(x, float) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


# --------------------------------------------------------------------------- BR-01


def test_br01_monochrome1_order_and_values(tmp_path):
    m1 = make_dicom(tmp_path / "m1.dcm", [[4000, 4000], [300, 300]], photometric="MONOCHROME1",
                    window=(2048, 4096), rescale=(1, 0))
    m2 = make_dicom(tmp_path / "m2.dcm", [[95, 95], [3795, 3795]], photometric="MONOCHROME2",
                    window=(2048, 4096), rescale=(1, 0))
    a = read_image(m1)
    b = read_image(m2)
    assert_valid(a)
    air, bone = 0.5 - 1952.5 / 4095, 0.5 + 1747.5 / 4095  # 0.023199, 0.926740
    np.testing.assert_allclose(a.pixels, [[air, air], [bone, bone]], atol=1e-6)
    assert abs(air - 0.023) < 1e-3 and abs(bone - 0.927) < 1e-3
    assert np.abs(a.pixels - b.pixels).max() <= 1 / 4095
    assert a.meta.photometric == "MONOCHROME1" and a.meta.bit_depth == 12
    assert a.meta.format == "dicom" and a.meta.channels == 1
    # reading again never flips it back
    np.testing.assert_array_equal(read_image(m1).pixels, a.pixels)
    np.testing.assert_array_equal(read_image(m1).pixels, a.pixels)


def test_br01_cache_never_flips_back(tmp_path):
    # "Reading the same file twice, or through a cache, never flips it back": the training
    # dataset's in-memory cache returns the reader's polarity on every access.
    from leader.manifest import make_manifest
    from leader.patches import ImageDataset

    m1 = make_dicom(tmp_path / "m1.dcm", [[4000, 4000], [300, 300]], photometric="MONOCHROME1",
                    window=(2048, 4096), rescale=(1, 0))
    direct = read_image(m1).pixels
    ds = ImageDataset(make_manifest([{"id": "x/m1", "path": str(m1), "width": 2, "height": 2}]), 2)
    first = ds[0]["image"][0].numpy()
    np.testing.assert_allclose(first, direct, atol=1e-6)
    assert first[0, 0] < 0.05 and first[1, 0] > 0.9  # air dark, bone bright
    for _ in range(3):  # cached accesses: same array, never inverted again
        np.testing.assert_array_equal(ds[0]["image"][0].numpy(), first)
    np.testing.assert_array_equal(read_image(m1).pixels, direct)


def test_br01_inversion_after_asymmetric_window(tmp_path):
    # With a window that is not centred in the stored range, inverting before VOI gives a
    # different (here constant) answer; the right order is VOI first, then inversion.
    p = make_dicom(tmp_path / "m1.dcm", [[1200, 800], [1000, 1100]], photometric="MONOCHROME1",
                   window=(1000, 401))
    got = read_image(p).pixels
    expected = 1 - linear_window([[1200, 800], [1000, 1100]], 1000, 401)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0, 0] == 0.0 and got[0, 1] > 0.99


def test_modality_lut_before_window(tmp_path):
    # stored 0..3000, slope 2 intercept -1024 -> modality -1024..4976; window on modality values
    stored = np.array([[0, 500], [1000, 3000]])
    p = make_dicom(tmp_path / "r.dcm", stored, window=(0, 2000), rescale=(2, -1024))
    got = read_image(p).pixels
    np.testing.assert_allclose(got, linear_window(stored * 2 - 1024, 0, 2000), atol=1e-6)
    assert got[0, 0] == 0.0 and got[1, 1] == 1.0 and 0 < got[0, 1] < got[1, 0] < 1


@pytest.mark.parametrize(
    "function, expected",
    [
        ("LINEAR_EXACT", lambda x: np.clip((x - 2000) / 1000 + 0.5, 0, 1)),
        ("SIGMOID", lambda x: 1 / (1 + np.exp(-4 * (x - 2000) / 1000))),
    ],
)
def test_voi_lut_functions(tmp_path, function, expected):
    stored = np.array([[1000, 1800], [2000, 2600]], dtype=float)
    p = make_dicom(tmp_path / "f.dcm", stored, window=(2000, 1000), voi_function=function)
    np.testing.assert_allclose(read_image(p).pixels, expected(stored), atol=1e-6)


def test_no_window_uses_min_max_and_inverts_monochrome1(tmp_path):
    stored = [[100, 200], [300, 500]]
    m2 = read_image(make_dicom(tmp_path / "a.dcm", stored)).pixels
    m1 = read_image(make_dicom(tmp_path / "b.dcm", stored, photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(m2, [[0, 0.25], [0.5, 1]], atol=1e-7)
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-7)


def test_bits_stored_masks_high_bits_and_sign_extends(tmp_path):
    # 12-bit unsigned with garbage (overlay) bits above HighBit: 0xF064 -> 0x064 = 100
    raw = np.array([[0xF064, 0x0000], [0x1FFF, 0x0800]], dtype=np.uint16)
    p = make_dicom(tmp_path / "u.dcm", raw, window=(2048, 4096))
    np.testing.assert_allclose(
        read_image(p).pixels, linear_window([[100, 0], [4095, 2048]], 2048, 4096), atol=1e-6)
    # 12-bit signed two's complement in 16-bit words: 0x0FFF=-1, 0x0800=-2048, 0x07FF=2047
    words = np.array([[0x0FFF, 0x0001], [0x0800, 0x07FF]], dtype=np.uint16)
    p = make_dicom(tmp_path / "s.dcm", words, signed=True, window=(0, 4096),
                   pixel_data=words.astype("<u2").tobytes())
    np.testing.assert_allclose(
        read_image(p).pixels, linear_window([[-1, 1], [-2048, 2047]], 0, 4096), atol=1e-6)


def test_voi_lut_sequence_overrides_window(tmp_path):
    from pydicom.dataset import Dataset

    stored = np.array([[0, 1000], [2000, 4095]])
    p = make_dicom(tmp_path / "lut.dcm", stored, photometric="MONOCHROME1", window=(10, 20))
    ds = pydicom.dcmread(p)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 4095).astype(int)  # non-linear
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # declares 16 bits for 12-bit data
    item.add_new(0x00283006, "US", lut.tolist())
    ds.VOILUTSequence = [item]
    ds.save_as(p, enforce_file_format=True)
    # VOI LUT Sequence wins over the window; scaled by the LUT's own min..max; then inverted
    np.testing.assert_allclose(read_image(p).pixels, 1 - lut[stored] / 4095, atol=1e-6)


def test_rgb_dicom_to_luma(tmp_path):
    p = make_dicom(tmp_path / "rgb.dcm", np.zeros((1, 3)))
    ds = pydicom.dcmread(p)
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(p, enforce_file_format=True)
    img = read_image(p)
    assert img.meta.channels == 3
    np.testing.assert_allclose(img.pixels[0], [0.299, 0.587, 0.114], atol=1e-6)


def test_pixel_spacing_and_header_without_pixels(tmp_path):
    p = make_dicom(tmp_path / "sp.dcm", [[0, 1], [2, 3]], spacing=("0.143", "0.139"))
    img = read_image(p)
    assert img.meta.pixel_spacing == pytest.approx((0.143, 0.139))
    assert read_header(p) == img.meta


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_compressed_roundtrip_monochrome1(tmp_path, ts):
    from pydicom.pixels import get_encoder

    if not get_encoder(ts).is_available:
        pytest.skip(f"no encoder for {ts.name}")
    stored = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096  # 12-bit
    stored[0, :2] = (4000, 300)
    p = make_dicom(tmp_path / "c.dcm", stored, photometric="MONOCHROME1", window=(2048, 4096))
    ds = pydicom.dcmread(p)
    ds.compress(ts, stored)
    ds.save_as(p, enforce_file_format=True)
    got = read_image(p).pixels
    np.testing.assert_allclose(got, 1 - linear_window(stored, 2048, 4096), atol=1e-6)


# --------------------------------------------------------------------------- BR-03


def test_br03a_missing_pixel_data(tmp_path):
    p = make_dicom(tmp_path / "a.dcm", [[1, 2], [3, 4]], with_pixels=False)
    with pytest.raises(DicomReadError) as exc:
        read_image(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "missing pixel data" in msg and "7FE0,0010" in msg
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, ImageReadError)
    # the header alone is still readable (read_header does not touch pixels)
    assert (read_header(p).height, read_header(p).width) == (2, 2)


def test_br03b_missing_transfer_syntax(tmp_path):
    p = make_dicom(tmp_path / "b.dcm", [[1, 2], [3, 4]], transfer_syntax=None)
    assert "TransferSyntaxUID" not in pydicom.dcmread(p, force=True).file_meta
    with pytest.raises(DicomReadError) as exc:
        read_image(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "missing transfer syntax" in msg and "0002,0010" in msg
    # only an explicit option lets it through
    img = read_image(p, assume_transfer_syntax=ExplicitVRLittleEndian)
    np.testing.assert_allclose(img.pixels, [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)


def _jpeg_lossless_file(tmp_path: Path) -> Path:
    # Encapsulated fragment: not a real JPEG-lossless bitstream (nothing here can encode one);
    # the reader must refuse before any decoding is attempted.
    frame = b"\xff\xd8\xff\xc3" + b"\x00" * 60 + b"\xff\xd9"
    return make_dicom(tmp_path / "c.dcm", np.zeros((2, 2)), transfer_syntax=JPEGLosslessSV1,
                      pixel_data=encapsulate([frame]))


def test_br03c_no_decoder_installed(tmp_path):
    """Honest (c): a fresh interpreter where the JPEG-lossless plugins cannot be imported."""
    p = _jpeg_lossless_file(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        for name in ("libjpeg", "pylibjpeg", "gdcm"):
            sys.modules[name] = None  # import of these now fails
        from leader.errors import DicomReadError
        from leader.io import read_image
        try:
            read_image({str(p)!r})
        except DicomReadError as exc:
            print("ERR", exc)
        else:
            print("NO ERROR")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith(f"ERR {p}: no decoder available for transfer syntax "
                          f"{JPEGLosslessSV1}"), out
    assert "Process 14" in out and "pylibjpeg" in out


def test_br03c_transfer_syntax_without_any_decoder(tmp_path):
    # MPEG2 has no pydicom pixel decoder at all
    p = make_dicom(tmp_path / "m.dcm", np.zeros((2, 2)), transfer_syntax="1.2.840.10008.1.2.4.100",
                   pixel_data=encapsulate([b"\x00" * 16]))
    msg = r"no decoder for transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100"
    with pytest.raises(DicomReadError, match=msg):
        read_image(p)


def test_br03d_constant_zero_image(tmp_path):
    p = make_dicom(tmp_path / "d.dcm", np.zeros((4, 4)))
    with pytest.raises(ImageReadError) as exc:
        read_image(p)
    assert str(exc.value).startswith(str(p)) and "constant" in str(exc.value)
    img = read_image(p, allow_constant=True)
    np.testing.assert_array_equal(img.pixels, np.zeros((4, 4), np.float32))
    # a windowed constant image is rejected too
    p2 = make_dicom(tmp_path / "d2.dcm", np.full((4, 4), 700), window=(2048, 4096))
    with pytest.raises(ImageReadError, match="constant"):
        read_image(p2)


def test_br03_skip_policy_lists_and_counts_dicom_failures(tmp_path, capsys):
    """Under an explicit skip policy (``leader data index --on-error skip``) the files of
    (a)-(c) are left out of the index and listed with their reason and counted in
    ``<out>.skipped.json``; the default policy fails fast naming the first file."""
    import json

    from leader.cli import main

    root = tmp_path / "dicoms"
    root.mkdir()
    make_dicom(root / "good.dcm", [[100, 200], [300, 400]], window=(2048, 4096))
    a = make_dicom(root / "a_nopixels.dcm", [[1, 2], [3, 4]], with_pixels=False)
    b = make_dicom(root / "b_nots.dcm", [[1, 2], [3, 4]], transfer_syntax=None)
    c = make_dicom(root / "c_nodecoder.dcm", np.zeros((2, 2)), transfer_syntax="1.2.840.10008.1.2.4.100",
                   pixel_data=encapsulate([b"\x00" * 16]))
    out = tmp_path / "idx" / "dicoms.parquet"
    args = ["data", "index", "--root", str(root), "--dataset", "folder", "--out", str(out)]
    assert main(args) == 2  # fail fast by default
    assert str(a) in capsys.readouterr().err and not out.exists()
    with pytest.warns(UserWarning, match="skipped 3 row"):
        assert main(args + ["--on-error", "skip"]) == 0
    from leader.manifest import Manifest

    assert Manifest.load(out).ids == ["folder/good"]
    rep = json.loads((tmp_path / "idx" / "dicoms.skipped.json").read_text())
    assert rep["policy"] == "skip" and rep["count"] == 3
    assert rep["counts_by_reason"] == {"no decoder": 1, "no pixel data": 1, "no transfer syntax": 1}
    reasons = {Path(it["path"]).name: (it["reason"], it["message"]) for it in rep["items"]}
    assert reasons[a.name][0] == "no pixel data" and "missing pixel data" in reasons[a.name][1]
    assert reasons[b.name][0] == "no transfer syntax" and "0002,0010" in reasons[b.name][1]
    assert reasons[c.name][0] == "no decoder" and "1.2.840.10008.1.2.4.100" in reasons[c.name][1]
    assert all(msg.startswith(str(root)) for _, msg in reasons.values())
    assert "indexed 1 images, skipped 3" in capsys.readouterr().out


# --------------------------------------------------------------------------- BR-04


def test_br04_16bit_png(tmp_path):
    p = tmp_path / "p16.png"
    p.write_bytes(png_bytes(np.array([[0, 1000, 4095, 30000, 65535]], dtype=np.uint16)))
    with PILImage.open(p) as im:
        assert im.mode == "I;16"
    img = read_image(p)
    assert_valid(img)
    np.testing.assert_allclose(img.pixels[0], [0, 0.01526, 0.06249, 0.45777, 1.0], atol=1e-5)
    assert img.meta.bit_depth == 16 and img.meta.format == "png" and img.meta.channels == 1


def test_br04_branch_from_file_bit_depth_not_dataset_name(tmp_path):
    vals16 = np.array([[0, 1000, 4095, 30000, 65535]], dtype=np.uint16)
    vals8 = np.array([[0, 64, 128, 255, 255]], dtype=np.uint8)
    # a 16-bit file where an 8-bit dataset lives and an 8-bit file in a "16-bit" dataset
    p16 = tmp_path / "nih-chestxray14" / "images" / "00000001_000.png"
    p8 = tmp_path / "padchest" / "16bit_216840111366964012819207061112010307142602253_04-014-084.png"
    for p, v in ((p16, vals16), (p8, vals8)):
        p.parent.mkdir(parents=True)
        p.write_bytes(png_bytes(v))
    a, b = read_image(p16), read_image(p8)
    assert a.meta.bit_depth == 16 and b.meta.bit_depth == 8
    np.testing.assert_allclose(a.pixels[0], vals16[0] / 65535, atol=1e-7)
    np.testing.assert_allclose(b.pixels[0], vals8[0] / 255, atol=1e-7)
    assert not np.allclose(a.pixels[0], [0, 1, 1, 1, 1], atol=0.05)  # never clamped to 8 bits


def test_br04_replication_to_three_channels_after_scaling(tmp_path):
    """The student gets the scaled [0, 1] grey image and replicates it to 3 channels inside
    its forward, just before its mean/std normalisation (never an 8-bit or unscaled copy)."""
    import torch

    from leader.manifest import make_manifest
    from leader.models import LeaderModel
    from leader.patches import ImageDataset

    rng = np.random.default_rng(0)
    p = tmp_path / "p16.png"
    p.write_bytes(png_bytes(rng.integers(0, 65536, size=(32, 32)).astype(np.uint16)))
    ds = ImageDataset(make_manifest([{"id": "x/p16", "path": str(p), "width": 32, "height": 32}]), 32)
    x = ds[0]["image"].unsqueeze(0)  # [1, 1, 32, 32]
    assert x.shape == (1, 1, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    np.testing.assert_allclose(x[0, 0].numpy(), read_image(p).pixels, atol=1e-6)
    model = LeaderModel("resnet18", {"disease": 4}, img_size=32).eval()
    seen = {}
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    with torch.no_grad():
        model(x)
    got = seen["x"]
    assert got.shape == (1, 3, 32, 32)
    grey = got * model.pixel_std + model.pixel_mean  # undo the normalisation
    for c in range(3):
        torch.testing.assert_close(grey[:, c], x[:, 0], atol=1e-5, rtol=0)


def test_br04_8bit_png(tmp_path):
    p = tmp_path / "p8.png"
    p.write_bytes(png_bytes(np.array([[0, 64, 128, 255, 255]], dtype=np.uint8)))
    img = read_image(p)
    np.testing.assert_allclose(img.pixels[0], np.array([0, 64, 128, 255, 255]) / 255, atol=1e-7)
    assert img.meta.bit_depth == 8


def encode_png(arr: np.ndarray, colour_type: int, depth: int) -> bytes:
    """Minimal PNG encoder (no Pillow) cycling through all five row filters (PNG spec 9)."""
    h, w = arr.shape[:2]
    raw = np.frombuffer(arr.astype(">u2" if depth == 16 else "u1").tobytes(), np.uint8)
    rows = raw.reshape(h, -1).astype(np.int32)
    bpp = max(1, rows.shape[1] // w)
    out, prev = [], np.zeros(rows.shape[1], np.int32)
    for i, row in enumerate(rows):
        a = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        b = prev
        ft = i % 5
        if ft == 0:
            f = row
        elif ft == 1:
            f = row - a
        elif ft == 2:
            f = row - b
        elif ft == 3:
            f = row - (a + b) // 2
        else:
            pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
            f = row - pred
        out.append(bytes([ft]) + (f % 256).astype(np.uint8).tobytes())
        prev = row

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16bit_png_all_colour_types_full_precision(tmp_path, colour_type, channels):
    rng = np.random.default_rng(colour_type)
    grey = rng.integers(0, 65536, size=(7, 6)).astype(np.uint16)
    grey[0, :5] = [0, 1000, 4095, 30000, 65535]
    planes = {1: [grey], 2: [grey, 65535 - grey], 3: [grey] * 3, 4: [grey] * 3 + [grey // 3]}
    arr = np.stack(planes[channels], -1) if channels > 1 else grey
    p = tmp_path / f"c{colour_type}.png"
    p.write_bytes(encode_png(arr, colour_type, 16))
    img = read_image(p)
    assert img.meta.bit_depth == 16 and img.meta.channels == channels
    np.testing.assert_allclose(img.pixels, grey / 65535, atol=2e-7)  # not 8-bit truncated
    np.testing.assert_allclose(img.pixels[0, :5], [0, 0.01526, 0.06249, 0.45777, 1.0], atol=1e-5)
    assert read_header(p) == img.meta


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_png_colour_modes_grey_content(tmp_path, mode):
    grey = np.array([[0, 50, 100], [150, 200, 255]], dtype=np.uint8)
    base = PILImage.fromarray(grey, mode="L")
    if mode == "LA":
        im = PILImage.merge("LA", [base, PILImage.new("L", base.size, 7)])
    elif mode == "RGBA":
        im = PILImage.merge("RGBA", [base, base, base, PILImage.new("L", base.size, 0)])
    else:
        im = base.convert(mode)
    p = tmp_path / f"{mode}.png"
    im.save(p)
    img = read_image(p)
    np.testing.assert_allclose(img.pixels, grey / 255, atol=1e-6)  # alpha ignored
    assert img.meta.channels == {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[mode]


def test_rgb_luminance_weights(tmp_path):
    p = tmp_path / "rgb.png"
    PILImage.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)).save(p)
    np.testing.assert_allclose(read_image(p).pixels[0], [0.299, 0.587, 0.114], atol=1e-6)


def test_jpeg_l_and_rgb(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    for mode in ("L", "RGB"):
        p = tmp_path / f"x_{mode}.jpg"
        PILImage.fromarray(ramp).convert(mode).save(p, quality=95)
        img = read_image(p)
        assert_valid(img)
        assert img.meta.format == "jpeg" and img.meta.channels == len(mode)
        assert np.abs(img.pixels - ramp / 255).max() < 0.03  # lossy


# --------------------------------------------------------------------------- BR-14


@pytest.fixture()
def png16(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(64, 64)).astype(np.uint16)
    p = tmp_path / "valid16.png"
    p.write_bytes(png_bytes(arr))
    return p, arr


def test_br14_valid_png_reads_identically(png16):
    p, arr = png16
    a, b = read_image(p), read_image(p)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_allclose(a.pixels, arr / 65535, atol=1e-7)


def test_br14_truncated_png(png16, tmp_path):
    p, _ = png16
    data = p.read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageReadError) as exc:
        read_image(bad)
    assert str(exc.value).startswith(str(bad)) and "truncated" in str(exc.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT", b"IEND"])
def test_br14_crc_zeroed_png(png16, tmp_path, chunk):
    p, _ = png16
    data = bytearray(p.read_bytes())
    ctype, pos, length = next(c for c in png_chunks(bytes(data)) if c[0] == chunk)
    data[pos + 8 + length: pos + 12 + length] = b"\0\0\0\0"
    bad = tmp_path / f"crc_{chunk.decode()}.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as exc:
        read_image(bad)
    assert str(exc.value).startswith(str(bad)) and "CRC" in str(exc.value)
    assert chunk.decode() in str(exc.value)


def test_br14_skip_policy_excludes_damaged_pngs_at_index_time(png16, tmp_path, capsys):
    """Both damaged copies are found when the index is built (not deep into an epoch): the
    default policy stops naming the file; ``--on-error skip`` excludes them, lists each with
    its reason in ``<out>.skipped.json`` and counts them."""
    import json
    import shutil

    from leader.cli import main
    from leader.manifest import Manifest

    p, _ = png16
    root = tmp_path / "padchest-like"
    root.mkdir()
    shutil.copyfile(p, root / "valid16.png")
    data = p.read_bytes()
    (root / "cut60.png").write_bytes(data[: int(len(data) * 0.6)])
    bad = bytearray(data)
    ctype, pos, length = next(c for c in png_chunks(data) if c[0] == b"IDAT")
    bad[pos + 8 + length: pos + 12 + length] = b"\0\0\0\0"
    (root / "crc0.png").write_bytes(bytes(bad))
    out = tmp_path / "m.parquet"
    args = ["data", "index", "--root", str(root), "--dataset", "folder", "--out", str(out)]
    assert main(args) == 2 and str(root / "crc0.png") in capsys.readouterr().err  # fail fast
    with pytest.warns(UserWarning, match="skipped 2 row"):
        assert main(args + ["--on-error", "skip"]) == 0
    assert Manifest.load(out).ids == ["folder/valid16"]
    rep = json.loads((tmp_path / "m.skipped.json").read_text())
    assert rep["count"] == 2 and rep["counts_by_reason"] == {"corrupt": 1, "truncated": 1}
    by_name = {Path(it["path"]).name: it for it in rep["items"]}
    assert by_name["cut60.png"]["reason"] == "truncated" and "truncated PNG" in by_name["cut60.png"]["message"]
    assert by_name["crc0.png"]["reason"] == "corrupt" and "CRC" in by_name["crc0.png"]["message"]
    assert "skipped 2 (corrupt: 1, truncated: 1)" in capsys.readouterr().out
    # the project never sets Pillow's process-wide flag for truncated images
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    src = Path(__file__).parents[1] / "src" / "leader"
    assert not [f for f in src.rglob("*.py") if "LOAD_TRUNCATED_IMAGES =" in f.read_text()]


def test_br14_damage_detected_even_if_pillow_flag_set(png16, tmp_path, monkeypatch):
    # Someone else's code may set Pillow's process-wide flag; we must still refuse.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    p, _ = png16
    data = p.read_bytes()
    bad = tmp_path / "t.png"
    bad.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageReadError):
        read_image(bad)
    buf = io.BytesIO()
    PILImage.fromarray((np.arange(4096).reshape(64, 64) % 251).astype(np.uint8)).save(buf, "JPEG")
    badj = tmp_path / "t.jpg"
    badj.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(badj)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    PILImage.fromarray((np.arange(4096).reshape(64, 64) % 251).astype(np.uint8)).save(buf, "JPEG")
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(buf.getvalue()[:-2])  # just the EOI marker missing
    with pytest.raises(ImageReadError) as exc:
        read_image(bad)
    assert str(exc.value).startswith(str(bad))


# --------------------------------------------------------------------------- BR-15


def test_br15_jsrt_raw(tmp_path):
    vals = np.arange(16, dtype=np.uint16).reshape(4, 4) * 200
    vals[0, 0], vals[0, 1] = 4095, 16
    p = tmp_path / "JPCLN001.IMG"
    p.write_bytes(vals.astype(">u2").tobytes())
    assert p.read_bytes()[:4] == bytes([0x0F, 0xFF, 0x00, 0x10])
    img = read_jsrt_raw(p, shape=(4, 4))
    assert_valid(img)
    raw = np.rint((1 - img.pixels.astype(np.float64)) * 4095)
    assert raw[0, 0] == 4095 and raw[0, 1] == 16  # not 65295 / 4096
    assert raw.max() <= 4095
    np.testing.assert_allclose(img.pixels, 1 - vals / 4095, atol=1e-7)
    assert img.pixels[0, 0] == 0.0  # highest stored value (air) comes out dark
    assert img.meta.format == "jsrt_raw" and img.meta.bit_depth == 12
    assert img.meta.pixel_spacing is None  # 0.175 mm is only claimed for 2048x2048
    assert sniff_format(p, jsrt_shape=(4, 4)) == "jsrt_raw"
    np.testing.assert_array_equal(read_image(p, jsrt_shape=(4, 4)).pixels, img.pixels)
    assert read_header(p, jsrt_shape=(4, 4)) == img.meta


def test_br15_jsrt_wrong_size_and_byte_order(tmp_path):
    p = tmp_path / "small.img"
    p.write_bytes(b"\x00\x10" * 16)
    for call in (lambda: read_image(p), lambda: read_jsrt_raw(p)):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert str(exc.value).startswith(str(p)) and "8388608" in str(exc.value)
    le = tmp_path / "le.img"
    le.write_bytes(np.array([4095, 16] * 8, dtype="<u2").tobytes())  # little-endian by mistake
    with pytest.raises(ImageReadError, match="exceeds the 12-bit maximum"):
        read_jsrt_raw(le, shape=(4, 4))


# --------------------------------------------------------------------------- sniffing etc.


def test_sniff_ignores_extension(tmp_path):
    ramp = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))
    as_jpg = tmp_path / "really_png.jpg"
    as_jpg.write_bytes(png_bytes(ramp))
    assert sniff_format(as_jpg) == "png"
    img = read_image(as_jpg)
    assert img.meta.format == "png"
    np.testing.assert_allclose(img.pixels, ramp / 255, atol=1e-7)
    as_png = tmp_path / "really_jpeg.png"
    PILImage.fromarray(ramp).save(as_png, format="JPEG")
    assert sniff_format(as_png) == "jpeg"
    dcm = make_dicom(tmp_path / "really_dicom.png", [[1, 2], [3, 4]])
    assert sniff_format(dcm) == "dicom"


def test_sniff_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello world, not an image" * 10)
    tiff = tmp_path / "x.png"
    PILImage.fromarray(np.zeros((2, 2), np.uint8)).save(tiff, format="TIFF")
    for path, needle in [(empty, "empty"), (junk, "unrecognised"), (tiff, "TIFF"),
                         (tmp_path / "missing.png", "cannot open")]:
        with pytest.raises(ImageReadError) as exc:
            read_image(path)
        assert str(exc.value).startswith(str(path)) and needle in str(exc.value)


def test_constant_png_rejected(tmp_path):
    p = tmp_path / "flat.png"
    p.write_bytes(png_bytes(np.full((8, 8), 77, np.uint8)))
    with pytest.raises(ImageReadError, match="constant") as exc:
        read_image(p)
    assert str(exc.value).startswith(str(p))
    np.testing.assert_allclose(read_image(p, allow_constant=True).pixels, 77 / 255, atol=1e-7)


def _write_mha(path: Path, arr: np.ndarray, spacing=(0.2, 0.3)) -> Path:
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing if arr.ndim == 2 else (*spacing, 1.0))
    sitk.WriteImage(im, str(path), True)
    return path


def test_mha_12bit_uint16(tmp_path):
    arr = np.array([[0, 1000], [4000, 4093]], dtype=np.uint16)
    p = _write_mha(tmp_path / "a.mha", arr)
    img = read_image(p)
    assert img.meta.format == "mha" and img.meta.bit_depth == 16
    np.testing.assert_allclose(img.pixels, arr / 4095, atol=1e-7)  # 12-bit inferred
    assert img.meta.pixel_spacing == pytest.approx((0.3, 0.2))  # (row, col) from ITK (x, y)
    assert read_header(p) == img.meta
    arr16 = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(read_image(_write_mha(tmp_path / "b.mha", arr16)).pixels,
                               arr16 / 65535, atol=1e-7)


def test_mha_single_slice_3d_and_float(tmp_path):
    arr = np.array([[[0, 200], [300, 1023]]], dtype=np.uint16)  # z=1 -> 10-bit
    img = read_image(_write_mha(tmp_path / "s.mha", arr))
    assert img.pixels.shape == (2, 2)
    np.testing.assert_allclose(img.pixels, arr[0] / 1023, atol=1e-7)
    vol = _write_mha(tmp_path / "v.mha", np.arange(8, dtype=np.uint16).reshape(2, 2, 2))
    with pytest.raises(ImageReadError, match="2-D"):
        read_image(vol)
    f = _write_mha(tmp_path / "f.mha", np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(read_image(f).pixels, [[0, 0.25], [0.5, 1]], atol=1e-7)


# --------------------------------------------------------------------------- real pack

SIIM = "siim-acr-pneumothorax/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
SIIM_M1 = "siim-acr-pneumothorax/derived/Fake_MONOHR1.dcm"
GDCM_M1 = "dicom-samples/gdcm-CR-MONO1-10-chest.dcm"


@pytest.mark.realdata
def test_real_siim_monochrome_pair(real_pack):
    a = read_image(real_pack / SIIM)
    b = read_image(real_pack / SIIM_M1)
    assert a.meta.photometric == "MONOCHROME2" and b.meta.photometric == "MONOCHROME1"
    assert a.pixels.shape == b.pixels.shape == (1024, 1024)
    assert a.meta.pixel_spacing == pytest.approx((0.168, 0.168))
    # Same stored pixels, no window, data spanning 0..255: a = v/255 and b = 1 - v/255, so
    # a + b = 1 up to float32 rounding of the two values (measured max error: 0.0 exactly;
    # 1e-6 leaves room for float32 rounding of v/255 on other platforms/decoders).
    assert np.abs(a.pixels + b.pixels - 1).max() < 1e-6
    assert np.corrcoef(a.pixels.ravel(), b.pixels.ravel())[0, 1] < -0.999


@pytest.mark.realdata
def test_real_gdcm_monochrome1_air_dark(real_pack):
    p = real_pack / GDCM_M1
    img = read_image(p)
    px = img.pixels
    assert px.shape == (440, 440) and img.meta.bit_depth == 10
    assert img.meta.photometric == "MONOCHROME1" and img.meta.pixel_spacing is None
    stored = pydicom.dcmread(p).pixel_array
    assert np.corrcoef(px.ravel(), stored.ravel())[0, 1] < -0.99  # inverted
    # anatomy (checked by eye on a saved PNG): lungs dark, mediastinum and abdomen bright
    right_lung, left_lung = px[120:260, 90:170].mean(), px[120:260, 270:350].mean()
    mediastinum, abdomen = px[120:260, 205:235].mean(), px[400:440, 150:300].mean()
    assert max(right_lung, left_lung) + 0.2 < mediastinum
    assert max(right_lung, left_lung) + 0.3 < abdomen
    # window from the file (centre 550, width 1024) then inversion
    np.testing.assert_allclose(px, 1 - linear_window(stored, 550, 1024), atol=1e-6)


@pytest.mark.realdata
def test_real_nih_rgba(real_pack):
    img = read_image(real_pack / "nih-chestxray14/images/00000100_000.png")
    assert img.pixels.shape == (1024, 1024) and img.meta.channels == 4
    with PILImage.open(real_pack / "nih-chestxray14/images/00000100_000.png") as im:
        rgba = np.asarray(im)
    np.testing.assert_allclose(img.pixels, rgba[..., 0] / 255, atol=1e-6)  # grey content


@pytest.mark.realdata
def test_real_mask_named_jpg_is_png(real_pack):
    p = real_pack / "covid-chestxray-dataset/semantic_masks_v7labs_lungs/16747_3_1.jpg"
    assert sniff_format(p) == "png"
    img = read_image(p)
    assert img.pixels.shape == (885, 1036)
    assert set(np.unique(img.pixels).tolist()) <= {0.0, 1.0}


@pytest.mark.realdata
def test_real_node21_mha(real_pack):
    img = read_image(real_pack / "node21/3.mha")
    assert img.pixels.shape == (1024, 1024)
    assert img.meta.pixel_spacing == pytest.approx((0.2693, 0.2692), abs=1e-4)
    assert float(img.pixels.max()) == pytest.approx(4093 / 4095)
    h, w = img.pixels.shape
    assert img.pixels[h // 4:3 * h // 4, w // 4:3 * w // 4].mean() > img.pixels[:20, :20].mean()


@pytest.mark.realdata
@pytest.mark.parametrize("rel", [
    "nih-chestxray14/images/00000100_000.png",
    "figure1-covid/images/" + "*.jpg",
    SIIM,
    "node21/3.mha",
])
def test_real_header_matches_image(real_pack, rel):
    path = sorted(real_pack.glob(rel))[0] if "*" in rel else real_pack / rel
    meta = read_header(path)
    img = read_image(path)
    assert (meta.height, meta.width) == img.pixels.shape
    assert meta == img.meta


def _pack_images() -> list[str]:
    root = (Path(__file__).parents[1] / ".." / "shared" / "data" / "real-cxr").resolve()
    if not root.is_dir():
        return []
    exts = {".png", ".jpg", ".jpeg", ".dcm", ".mha"}
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in exts)


@pytest.mark.realdata
@pytest.mark.parametrize("rel", _pack_images() or ["<pack absent>"])
def test_real_every_image_decodes(real_pack, rel):
    img = read_image(real_pack / rel)
    assert_valid(img)
    assert float(img.pixels.max()) > float(img.pixels.min())
    assert img.meta.format in {"png", "jpeg", "dicom", "mha"}
