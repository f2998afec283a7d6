"""Bad files and rows at indexing time: one test per kind of bad input, asserting the project
error type and that the message names the file (and row), plus the named skip policy and its
JSON report (``leader data index --on-error skip``)."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import ImageFile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from leader.datasets import (MissingFileWarning, UnreadableFileWarning, collect_skipped, read_chexpert,
                             read_folder, read_mimic, read_nih, read_rsna, read_siim, read_tbx11k, read_vindr,
                             skip_report)
from leader.errors import BoxError, DicomReadError, ImageReadError, ManifestError
from leader.io import MAX_PIXELS, MAX_SIDE, read_header, read_image, reason_code, verify_image
from leader.manifest import Manifest, make_manifest

from _imagebytes import jpeg_bytes, png_bytes

# ------------------------------------------------------------------------------ helpers




RAMP = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_dicom(path: Path, arr=None, *, transfer_syntax: str | None = ExplicitVRLittleEndian,
               with_pixels: bool = True, pixel_data: bytes | None = None, rows_cols=None) -> Path:
    arr = np.asarray((np.add.outer(np.arange(8), np.arange(8)) * 250) if arr is None else arr)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    if transfer_syntax is not None:
        meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows_cols or arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if with_pixels:
        ds.PixelData = pixel_data if pixel_data is not None else arr.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax is None:
        ds.save_as(path, implicit_vr=False, little_endian=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A structurally valid PNG (correct CRCs) whose IHDR declares ``width`` x ``height``."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def assert_names(exc: BaseException, *needles) -> None:
    msg = str(exc)
    for n in needles:
        assert str(n) in msg, (n, msg)


def every_reader(path: Path):
    """read_header, verify_image and read_image, each must raise for a bad file."""
    return (lambda: read_header(path), lambda: verify_image(path), lambda: read_image(path))


# ---------------------------------------------------------------------- 1. bad image files


def test_zero_byte_file(tmp_path):
    p = write(tmp_path / "f" / "empty.png", b"")
    for call in every_reader(p):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert str(exc.value).startswith(str(p)) and "empty file (0 bytes)" in str(exc.value)
    with pytest.raises(ImageReadError, match="empty.png: empty file"):
        read_folder(tmp_path / "f")


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_png_jpeg_found_when_indexing(tmp_path, kind):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96)).astype(np.uint8)
    data = png_bytes(noise) if kind == "png" else jpeg_bytes(noise)
    write(tmp_path / "f" / "good.png", png_bytes(RAMP))
    bad = write(tmp_path / "f" / f"cut.{kind}", data[: len(data) * 6 // 10])
    # the header alone still parses (that is why indexing must look further)
    assert (read_header(bad).height, read_header(bad).width) == (96, 96)
    for call in (lambda: verify_image(bad), lambda: read_image(bad)):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert str(exc.value).startswith(str(bad)) and "truncated" in str(exc.value)
    with pytest.raises(ImageReadError) as exc:  # fail fast at index time, not deep into an epoch
        read_folder(tmp_path / "f")
    assert_names(exc.value, bad, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_crc_found_when_indexing(tmp_path):
    data = bytearray(png_bytes(RAMP))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length: idat + 8 + length] = b"\0\0\0\0"
    bad = write(tmp_path / "f" / "crc.png", bytes(data))
    with pytest.raises(ImageReadError) as exc:
        read_folder(tmp_path / "f")
    assert_names(exc.value, bad, "CRC", "IDAT")
    assert reason_code(exc.value) == "corrupt"


def test_dicom_without_pixel_data_found_when_indexing(tmp_path):
    p = make_dicom(tmp_path / "f" / "a.dcm", with_pixels=False)
    read_header(p)  # header fine
    for call in (lambda: verify_image(p), lambda: read_image(p), lambda: read_folder(tmp_path / "f")):
        with pytest.raises(DicomReadError) as exc:
            call()
        assert str(exc.value).startswith(str(p)) and "missing pixel data" in str(exc.value)


def test_dicom_undecodable_transfer_syntax_found_when_indexing(tmp_path):
    mpeg2 = "1.2.840.10008.1.2.4.100"  # no pydicom decoder exists for it
    p = make_dicom(tmp_path / "f" / "m.dcm", transfer_syntax=mpeg2, pixel_data=encapsulate([b"\x00" * 16]))
    for call in (lambda: verify_image(p), lambda: read_folder(tmp_path / "f")):
        with pytest.raises(DicomReadError) as exc:
            call()
        assert_names(exc.value, p, "no decoder for transfer syntax", mpeg2)
    q = make_dicom(tmp_path / "g" / "b.dcm", transfer_syntax=None)
    with pytest.raises(DicomReadError) as exc:
        verify_image(q)
    assert_names(exc.value, q, "missing transfer syntax", "0002,0010")


def test_dicom_truncated_pixel_data(tmp_path):
    p = make_dicom(tmp_path / "t.dcm")
    data = p.read_bytes()
    p.write_bytes(data[:-40])  # the Pixel Data element's declared length now runs past the end
    for call in (lambda: verify_image(p), lambda: read_image(p)):
        with pytest.raises(DicomReadError) as exc:
            call()
        assert str(exc.value).startswith(str(p))
    q = make_dicom(tmp_path / "s.dcm", pixel_data=b"\x00\x01" * 10)  # 20 bytes for 8x8x2
    with pytest.raises(DicomReadError) as exc:
        verify_image(q)
    assert_names(exc.value, q, "truncated pixel data", "20 bytes", "expected 128")


def test_wrong_extension_content_is_sniffed(tmp_path):
    as_jpg = write(tmp_path / "png_named.jpg", png_bytes(RAMP))
    img = read_image(as_jpg)
    assert img.meta.format == "png"
    np.testing.assert_allclose(img.pixels, RAMP / 255, atol=1e-7)
    as_dcm = write(tmp_path / "jpeg_named.dcm", jpeg_bytes(RAMP))
    assert read_image(as_dcm).meta.format == "jpeg"
    text = write(tmp_path / "f" / "notes.png", b"patient,finding\n1,effusion\n")
    for call in every_reader(text):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert_names(exc.value, text, "unrecognised image format", "text, not an image", ".png")
    with pytest.raises(ImageReadError, match="notes.png"):
        read_folder(tmp_path / "f")


# ------------------------------------------------------------- 2. decompression-bomb guard


def test_decompression_bomb_png_refused_before_decoding(tmp_path):
    import PIL.Image

    before = PIL.Image.MAX_IMAGE_PIXELS
    p = write(tmp_path / "bomb.png", png_declaring(40000, 40000))  # 1.6e9 pixels in 200 bytes
    assert p.stat().st_size < 300
    for call in every_reader(p):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert_names(exc.value, p, "40000 x 40000", "above the limit", f"{MAX_SIDE} per side")
        assert reason_code(exc.value) == "too large"
    q = write(tmp_path / "wide.png", png_declaring(100_000, 8))  # few pixels, absurd side
    with pytest.raises(ImageReadError, match="100000 x 8"):
        read_header(q)
    assert PIL.Image.MAX_IMAGE_PIXELS == before and ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert MAX_PIXELS == 2**28


def test_size_limit_is_configurable(tmp_path, monkeypatch):
    p = write(tmp_path / "ok.png", png_bytes(RAMP))  # 32 x 32 = 1024 pixels
    with pytest.raises(ImageReadError, match=r"32 x 32 = 1024 pixels, above the limit \(1000 pixels"):
        read_image(p, max_pixels=1000)
    with pytest.raises(ImageReadError, match="above the limit"):
        read_header(p, max_side=16)
    assert read_image(p, max_pixels=1024).pixels.shape == (32, 32)
    big = write(tmp_path / "big.png", png_declaring(40000, 40000))
    with pytest.raises(ImageReadError) as exc:  # a raised limit lets the header through to decoding
        read_image(big, max_pixels=2**31, max_side=50000)
    assert "above the limit" not in str(exc.value) and str(exc.value).startswith(str(big))
    monkeypatch.setenv("LEADER_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="above the limit"):
        read_folder(tmp_path, check_files=True)  # indexing honours the process-wide setting
    monkeypatch.setenv("LEADER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="LEADER_MAX_IMAGE_PIXELS"):
        read_image(p)


def test_decompression_bomb_dicom_and_mha(tmp_path):
    d = make_dicom(tmp_path / "bomb.dcm", pixel_data=b"\0" * 128, rows_cols=(40000, 40000))
    for call in every_reader(d):
        with pytest.raises(DicomReadError) as exc:
            call()
        assert_names(exc.value, d, "40000 x 40000", "above the limit")
    # a 300-byte MetaImage declaring 16000 x 16000 doubles (2 GB): refused before allocation
    m = write(tmp_path / "bomb.mha", b"ObjectType = Image\nNDims = 2\nDimSize = 16000 16000\n"
              b"ElementType = MET_DOUBLE\nCompressedData = True\nElementDataFile = LOCAL\n" + b"x" * 200)
    for call in every_reader(m):
        with pytest.raises(ImageReadError) as exc:
            call()
        assert_names(exc.value, m, "declares 2048000000 bytes of pixel data", "200 bytes")
    lst = write(tmp_path / "list.mha", b"ObjectType = Image\nNDims = 2\nDimSize = 8 8\n"
                b"ElementType = MET_USHORT\nElementDataFile = LIST\na.raw\n")
    with pytest.raises(ImageReadError, match="unsupported MetaImage ElementDataFile 'LIST'"):
        read_image(lst)
    # a valid MetaImage still reads
    ok = tmp_path / "ok.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint16).reshape(8, 8)), str(ok), True)
    assert read_image(ok).pixels.shape == (8, 8) and verify_image(ok).height == 8


# ---------------------------------------------------------------- 3. bad metadata rows


CHEX = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,1.0,-1.0\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,40,Frontal,PA,1.0,,\n")


def _root(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    root = tmp_path / "root"
    for name, data in files.items():
        write(root / name, data.encode() if isinstance(data, str) else data)
    return root


def test_non_utf8_csv_names_file_and_line(tmp_path):
    bad = CHEX.encode().replace(b"Male,40", b"M\xe4nnlich,40")  # Latin-1 byte
    root = _root(tmp_path, {"train.csv": bad})
    with pytest.raises(ManifestError) as exc:
        read_chexpert(root, check_files=False)
    assert_names(exc.value, root / "train.csv", "line 3", "0xe4", "not valid UTF-8")
    nih = _root(tmp_path / "n", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,No Finding\n"
                                 "b.png,Hernia\n", "BBox_List_2017.csv": b"Image Index,Finding Label,Bbox [x,y,w,h],,,"
                                 b"\nb.png,Hernia,1,2,3,4\nb.png,Hern\xffia,1,2,3,4\n"})
    with pytest.raises(ManifestError) as exc:
        read_nih(nih, check_files=False)
    assert_names(exc.value, "BBox_List_2017.csv", "line 3", "0xff")


def test_damaged_gzip_metadata(tmp_path):
    import gzip

    data = gzip.compress(CHEX.encode() * 50)
    for name, blob in (("cut", data[: len(data) // 2]), ("garbage", data[:10] + b"\xff" * 200)):
        root = _root(tmp_path / name, {"train.csv.gz": blob})
        with pytest.raises(ManifestError) as exc:
            read_chexpert(root, metadata=root / "train.csv.gz", check_files=False)
        assert_names(exc.value, root / "train.csv.gz", "cannot read")
    root = _root(tmp_path / "nih", {"Data_Entry_2017_v2020.csv.gz": data[: len(data) // 3]})
    with pytest.raises(ManifestError, match="Data_Entry_2017_v2020.csv.gz: cannot read"):
        read_nih(root, check_files=False)


def test_wrong_column_count_names_line(tmp_path):
    short = CHEX + "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Female,50,Frontal\n"
    root = _root(tmp_path / "a", {"train.csv": short})
    with pytest.raises(ManifestError) as exc:  # blanks here would silently become negatives
        read_chexpert(root, check_files=False)
    assert_names(exc.value, root / "train.csv", "line 4", "4 fields, fewer fields than the header (8)")
    root = _root(tmp_path / "b", {"stage_2_train_labels.csv": "patientId,x,y,width,height,Target\n"
                                  "p1,,,,,0\np2,264,152,213,379,1,extra\n"})
    with pytest.raises(ManifestError) as exc:
        read_rsna(root, check_files=False)
    assert_names(exc.value, "stage_2_train_labels.csv", "line 3", "more fields than the header")
    root = _root(tmp_path / "c", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels,Patient ID\n"
                                  "a.png,No Finding,1\nb.png,Hernia\n"})
    with pytest.raises(ManifestError, match=r"Data_Entry_2017_v2020.csv: line 3: 2 fields"):
        read_nih(root, check_files=False)
    root = _root(tmp_path / "d", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Hernia\n",
                                  "BBox_List_2017.csv": "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                                        "a.png,Hernia,1,2,3,4,5\n"})
    with pytest.raises(ManifestError, match=r"BBox_List_2017.csv: line 2: image 'a.png': 7 fields"):
        read_nih(root, check_files=False)


def test_duplicate_column_names(tmp_path):
    root = _root(tmp_path, {"train.csv": CHEX.replace("Edema\n", " Edema\n").replace("Cardiomegaly,", "Edema,", 1)})
    with pytest.raises(ManifestError) as exc:
        read_chexpert(root, check_files=False)
    assert_names(exc.value, root / "train.csv", "line 1", "duplicate column name", "Edema")


def test_non_numeric_coordinates_name_the_row(tmp_path):
    root = _root(tmp_path / "r", {"stage_2_train_labels.csv": "patientId,x,y,width,height,Target\n"
                                  "p1,,,,,0\np2,264,abc,213,379,1\n"})
    with pytest.raises(ManifestError) as exc:
        read_rsna(root, check_files=False)
    assert_names(exc.value, "line 3", "p2", "missing coordinate")
    root = _root(tmp_path / "n", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\n",
                                  "BBox_List_2017.csv": "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                                        "a.png,Nodule,10,x20,30,40\n"})
    with pytest.raises(ManifestError) as exc:
        read_nih(root, check_files=False)
    assert_names(exc.value, "BBox_List_2017.csv", "line 2", "a.png", "non-numeric coordinate")
    root = _root(tmp_path / "v", {"train.csv": "image_id,class_name,rad_id,x_min,y_min,x_max,y_max\n"
                                  "a,Cardiomegaly,R1,1000,eight hundred,1400,1300\n"})
    with pytest.raises(ManifestError) as exc:
        read_vindr(root, check_files=False)
    assert_names(exc.value, "train.csv", "line 2", "'a'", "non-numeric coordinate")


@pytest.mark.parametrize("x, y, w, h, needle", [
    ("nan", "20", "30", "40", "non-finite coordinate"),
    ("10", "20", "-30", "40", "non-positive size"),
    ("10", "20", "0", "40", "non-positive size"),
])
def test_bad_boxes_nan_negative_zero_area(tmp_path, x, y, w, h, needle):
    root = _root(tmp_path, {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\n",
                            "BBox_List_2017.csv": "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                                  f"a.png,Nodule,{x},{y},{w},{h}\n"})
    with pytest.raises(ManifestError) as exc:
        read_nih(root, check_files=False)
    assert_names(exc.value, "BBox_List_2017.csv", "line 2", "a.png", needle)


def test_bad_boxes_zero_area_and_outside_image(tmp_path):
    root = _root(tmp_path / "v", {"train.csv": "image_id,class_name,rad_id,x_min,y_min,x_max,y_max\n"
                                  "a,Cardiomegaly,R1,1000,800,1000,1300\n"})
    with pytest.raises(BoxError) as exc:
        read_vindr(root, check_files=False)
    assert_names(exc.value, "train.csv", "line 2", "'a'", "zero or negative size")
    # a box entirely outside its 512 x 512 stored image (BR-09 c)
    root = _root(tmp_path / "r", {"stage_2_train_labels.csv": "patientId,x,y,width,height,Target\n"
                                  "p2,1100,50,40,40,1\n"})
    with pytest.raises(BoxError) as exc:
        read_rsna(root, check_files=False, stored_size=1024)
    assert_names(exc.value, "rsna/p2", "lies entirely outside the 1024x1024 image", "x0=1100")
    with pytest.raises(BoxError, match="lies entirely outside"):
        make_manifest([{"id": "x/a", "path": "a.png", "width": 64, "height": 64,
                        "boxes": [(70.0, 1.0, 80.0, 9.0, "Nodule")]}])


def test_duplicate_image_ids(tmp_path):
    root = _root(tmp_path / "n", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\n"
                                  "b.png,Hernia\na.png,Mass\n"})
    with pytest.raises(ManifestError, match=r"Data_Entry_2017_v2020.csv: line 4: duplicate image 'a.png'"):
        read_nih(root, check_files=False)
    root = _root(tmp_path / "c", {"train.csv": CHEX + CHEX.splitlines(keepends=True)[1]})
    with pytest.raises(ManifestError, match=r"train.csv: line 4: duplicate Path"):
        read_chexpert(root, check_files=False)
    meta = "dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\nd1,10000032,50414267,AP\n"
    root = _root(tmp_path / "m", {"mimic-cxr-2.0.0-metadata.csv": meta})
    with pytest.raises(ManifestError, match=r"metadata.csv: line 3: duplicate dicom_id 'd1'"):
        read_mimic(root, check_files=False)
    coco = {"images": [{"id": 1, "file_name": "tb/a.png"}, {"id": 1, "file_name": "tb/b.png"}],
            "annotations": [], "categories": []}
    root = _root(tmp_path / "t", {"annotations/json/TBX11K_train.json": json.dumps(coco)})
    with pytest.raises(ManifestError, match=r"TBX11K_train.json: duplicate image id 1 \(tb/b.png\)"):
        read_tbx11k(root, check_files=False, include_unlisted=False, list_files=[])
    # two different files with one id (a.png / a.jpg): the error names both paths
    root = _root(tmp_path / "n2", {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\n"
                                   "a.jpg,Hernia\n"})
    with pytest.raises(ManifestError) as exc:
        read_nih(root, check_files=False)
    assert_names(exc.value, "'nih/a'", "a.png", "a.jpg")


def test_malformed_coco_json_and_siim_csv(tmp_path):
    root = _root(tmp_path / "t", {"annotations/json/TBX11K_train.json": b'{"images": [1, 2], "annotations": []}'})
    with pytest.raises(ManifestError, match=r"TBX11K_train.json: images\[0\] must be an object"):
        read_tbx11k(root, check_files=False, include_unlisted=False, list_files=[])
    root = _root(tmp_path / "u", {"annotations/json/TBX11K_train.json": b'{"images": [\n{"id": 1,}]}'})
    with pytest.raises(ManifestError, match=r"TBX11K_train.json: line 2: cannot read COCO JSON"):
        read_tbx11k(root, check_files=False, include_unlisted=False, list_files=[])
    root = _root(tmp_path / "s", {"train-rle.csv": b""})
    with pytest.raises(ManifestError, match="train-rle.csv: cannot read SIIM RLE CSV"):
        read_siim(root, check_files=False)


def test_damaged_manifest_parquet(tmp_path):
    m = make_manifest([{"id": "x/a", "path": "/d/a.png", "width": 8, "height": 8}])
    p = m.save(tmp_path / "m.parquet")
    data = p.read_bytes()
    bad = write(tmp_path / "cut.parquet", data[: len(data) // 2])
    with pytest.raises(ManifestError, match=r"cut.parquet: cannot read manifest Parquet"):
        Manifest.load(bad)
    with pytest.raises(ManifestError, match="missing.parquet"):
        Manifest.load(tmp_path / "missing.parquet")


def test_missing_image_files_are_skipped_and_recorded(tmp_path):
    root = _root(tmp_path, {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\nb.png,Hernia\n"})
    write(root / "images" / "a.png", png_bytes(RAMP))
    with collect_skipped() as skipped, pytest.warns(MissingFileWarning, match="nih/b"):
        m = read_nih(root)
    assert m.ids == ["nih/a"]
    assert [(s.id, s.reason) for s in skipped] == [("nih/b", "missing file")]
    assert skipped[0].path == str(root / "images" / "b.png")


# --------------------------------------------------------------- 4. the skip policy


def _broken_folder(root: Path) -> dict[str, str]:
    """A folder with 2 good images and one bad file of each kind; -> {file name: reason}."""
    good = png_bytes(RAMP)
    write(root / "good.png", good)
    write(root / "good2.jpg", jpeg_bytes(RAMP))
    write(root / "empty.png", b"")
    write(root / "cut.png", good[: len(good) * 6 // 10])
    write(root / "text.png", b"id,label\n1,0\n")
    write(root / "bomb.png", png_declaring(40000, 40000))
    make_dicom(root / "nopixels.dcm", with_pixels=False)
    return {"empty.png": "empty file", "cut.png": "truncated", "text.png": "unrecognised format",
            "bomb.png": "too large", "nopixels.dcm": "no pixel data"}


def test_skip_policy_leaves_bad_items_out_and_lists_them(tmp_path):
    expected = _broken_folder(tmp_path / "f")
    with pytest.raises(ImageReadError):  # default: fail fast
        read_folder(tmp_path / "f")
    with collect_skipped() as skipped, pytest.warns(UnreadableFileWarning, match="skipped 5 row"):
        m = read_folder(tmp_path / "f", on_error="skip")
    assert sorted(m.ids) == ["folder/good", "folder/good2"]
    assert {Path(s.path).name: s.reason for s in skipped} == expected
    for s in skipped:
        assert s.message.startswith(s.path) and s.dataset == "folder" and s.id.startswith("folder/")
    rep = skip_report(skipped, "skip")
    assert rep["count"] == 5 and sum(rep["counts_by_reason"].values()) == 5
    with collect_skipped() as outer:  # nested collectors pass items outwards
        with collect_skipped() as inner, pytest.warns(UnreadableFileWarning):
            read_folder(tmp_path / "f", on_error="skip")
    assert len(inner) == len(outer) == 5


def test_cli_index_skip_report_and_log(tmp_path, caplog, capsys):
    from leader.cli import main

    expected = _broken_folder(tmp_path / "f")
    out = tmp_path / "out" / "M.parquet"
    # fail fast by default: exit code 2, the message names the file, nothing written
    assert main(["data", "index", "--root", str(tmp_path / "f"), "--dataset", "folder", "--out", str(out)]) == 2
    assert "leader: error: " + str(tmp_path / "f") in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out" / "M.skipped.json").exists()
    caplog.set_level(logging.INFO)
    with pytest.warns(UnreadableFileWarning):
        rc = main(["data", "index", "--root", str(tmp_path / "f"), "--dataset", "folder", "--on-error", "skip",
                   "--out", str(out)])
    assert rc == 0 and len(Manifest.load(out)) == 2
    report = json.loads((tmp_path / "out" / "M.skipped.json").read_text())
    assert report["policy"] == "skip" and report["count"] == 5
    assert report["counts_by_reason"] == {r: 1 for r in sorted(expected.values())}
    assert {Path(it["path"]).name: it["reason"] for it in report["items"]} == expected
    assert all(set(it) >= {"id", "path", "reason", "message"} for it in report["items"])
    assert all(it["message"].startswith(it["path"]) for it in report["items"])
    line = ("indexed 2 images, skipped 5 (empty file: 1, no pixel data: 1, too large: 1, truncated: 1, "
            "unrecognised format: 1)")
    assert any(line in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert line in capsys.readouterr().out
    assert not list((tmp_path / "out").glob(".*.tmp"))  # written atomically, no leftovers


def test_cli_index_report_also_lists_missing_files(tmp_path):
    from leader.cli import main

    root = _root(tmp_path, {"Data_Entry_2017_v2020.csv": "Image Index,Finding Labels\na.png,Nodule\nb.png,Hernia\n"})
    write(root / "images" / "a.png", png_bytes(RAMP))
    out = tmp_path / "nih.parquet"
    with pytest.warns(MissingFileWarning):
        assert main(["data", "index", "--root", str(root), "--out", str(out)]) == 0
    report = json.loads((tmp_path / "nih.skipped.json").read_text())
    assert report["policy"] == "raise" and report["count"] == 1
    assert report["items"][0]["id"] == "nih/b" and report["items"][0]["reason"] == "missing file"
