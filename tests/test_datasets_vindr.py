"""VinDr-CXR reader on small files in the Kaggle and PhysioNet formats (BR-09a, radiologist policies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import UnknownLabelWarning, detect_dataset, harmonise, read_dataset, read_vindr
from leader.datasets.vindr import canonical_vindr_class, group_boxes
from leader.errors import BoxError, ManifestError
from leader.manifest import Box

KAGGLE = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
# img a: three readers; R1 and R2 mark overlapping Cardiomegaly boxes, R3 a far-away one;
#        R1 alone marks a Nodule/Mass; R3 marks Aortic enlargement (case variant spelling)
# img b: all three readers 'No finding'
ROWS = (
    "a,Cardiomegaly,3,R1,1000,800,1400,1300\n"
    "a,cardiomegaly,3,R2,1010,810,1390,1290\n"
    "a,Cardiomegaly,3,R3,100,100,200,200\n"
    "a,nodule/mass,8,R1,500,500,560,560\n"
    "a,AORTIC ENLARGEMENT,0,R3,900,400,1100,600\n"
    "a,Aortic enlargement,0,R2,905,405,1095,605\n"
    "b,No finding,14,R1,,,,\n"
    "b,No finding,14,R2,,,,\n"
    "b,No Finding,14,R3,,,,\n"
)


def _root(tmp_path: Path, rows: str = ROWS, name: str = "train.csv") -> Path:
    root = tmp_path / "vindr"
    root.mkdir(exist_ok=True)
    (root / name).write_text(KAGGLE + rows)
    return root


def _png(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), dtype=np.uint8) + 7).save(path)


def _boxes(m, iid):
    return m.boxes(m.index_of(iid))


def test_br09a_resized_png_uses_true_original_size(tmp_path):
    root = _root(tmp_path, "d,Cardiomegaly,3,R1,1000,800,1400,1300\n")
    _png(root / "train" / "d.png", 1024, 1024)
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\nd,2500,2000\n")  # Rows=2500, Columns=2000
    m = read_vindr(root)
    b = m.boxes(0)[0]
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((512.0, 327.68, 716.8, 532.48))
    assert (m.df["original_width"].iloc[0], m.df["original_height"].iloc[0]) == (2000, 2500)
    # the same without touching files: stored_size states the PNG size
    m2 = read_vindr(root, check_files=False, stored_size=1024)
    assert m2.boxes(0)[0] == b
    # width/height named explicitly, as a mapping
    m3 = read_vindr(root, metadata=[root / "train.csv"], original_sizes={"d": (2000, 2500)})
    assert m3.boxes(0)[0] == b
    # without the original size a resized PNG cannot be converted: a clear error naming the image
    (root / "train_meta.csv").unlink()
    with pytest.raises(ManifestError, match=r"1 stored image\(s\) with boxes have no known original size.*'d'"):
        read_vindr(root)
    # with check_files=False and no stored size the boxes stay in the original (DICOM) frame
    m4 = read_vindr(root, check_files=False)
    assert m4.boxes(0)[0] == Box(1000, 800, 1400, 1300, "Cardiomegaly") and m4.df["width"].isna().all()


def test_vindr_policy_all(tmp_path):
    m = read_vindr(_root(tmp_path), check_files=False)
    assert m.ids == ["vindr/a", "vindr/b"]
    assert m.label_names == ["Aortic enlargement", "Cardiomegaly", "Nodule/Mass"]  # canonical, case-insensitive
    np.testing.assert_array_equal(m.labels_array(), [[1, 1, 1], [0, 0, 0]])
    assert m.df["normal"].tolist() == [False, True]
    a = _boxes(m, "vindr/a")
    assert [b.label for b in a] == ["Cardiomegaly"] * 3 + ["Nodule/Mass"] + ["Aortic enlargement"] * 2
    assert m.df["box_rads"].iloc[0] == ["R1", "R2", "R3", "R1", "R3", "R2"]
    assert m.df["rad_ids"].tolist() == ["R1,R2,R3", "R1,R2,R3"]
    assert _boxes(m, "vindr/b") == []  # No finding rows: no NaN box


def test_vindr_policy_union_and_consensus(tmp_path):
    root = _root(tmp_path)
    u = read_vindr(root, radiologists="union", check_files=False)
    ub = _boxes(u, "vindr/a")
    assert Box(1000, 800, 1400, 1300, "Cardiomegaly") in ub  # enclosing box of R1+R2
    assert Box(100, 100, 200, 200, "Cardiomegaly") in ub and len(ub) == 4
    np.testing.assert_array_equal(u.labels_array(), [[1, 1, 1], [0, 0, 0]])
    c = read_vindr(root, radiologists="consensus", check_files=False)
    cb = _boxes(c, "vindr/a")
    # 2 of 3 readers: the mean of R1 and R2's Cardiomegaly boxes and of R2+R3's aortic boxes
    assert Box(1005, 805, 1395, 1295, "Cardiomegaly") in cb
    assert Box(902.5, 402.5, 1097.5, 602.5, "Aortic enlargement") in cb and len(cb) == 2
    # Nodule/Mass marked by one reader of three: disagreement -> unknown, not 0 or 1
    row = c.df.set_index("id").loc["vindr/a"]
    assert row["label:Cardiomegaly"] == 1 and row["label:Aortic enlargement"] == 1
    assert np.isnan(row["label:Nodule/Mass"]) and not row["normal"]
    assert c.df.set_index("id").loc["vindr/b", "normal"]
    # min_votes=1 makes consensus keep every group
    c1 = read_vindr(root, radiologists="consensus", min_votes=1, check_files=False)
    assert len(_boxes(c1, "vindr/a")) == 4
    with pytest.raises(ValueError, match="radiologists must be one of"):
        read_vindr(root, radiologists="majority", check_files=False)


def test_vindr_errors(tmp_path):
    root = _root(tmp_path, ROWS + "c,Pneumothorax,12,R1,10,,30,40\n")
    with pytest.raises(ManifestError, match=r"train.csv: line 11: image 'c': class 'Pneumothorax' row with a missing"):
        read_vindr(root, check_files=False)
    root = _root(tmp_path, ROWS + "c,Pneumothorax,12,R1,30,20,10,40\n")
    with pytest.raises(BoxError, match=r"line 11: image 'c'"):
        read_vindr(root, check_files=False)
    root = _root(tmp_path, ROWS + "c,Lung nodule thing,99,R1,1,2,3,4\n")
    with pytest.raises(ManifestError, match=r"line 11: unknown VinDr-CXR class 'Lung nodule thing'"):
        read_vindr(root, check_files=False)
    with pytest.warns(UnknownLabelWarning, match="Lung nodule thing"):
        m = read_vindr(root, check_files=False, on_unknown="keep")
    assert "Lung nodule thing" in m.label_names


def test_vindr_physionet_layout_with_image_labels_and_dicom(tmp_path):
    root = tmp_path / "vindr-cxr" / "1.0.0"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotations_test.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "t1,R11,Lung Opacity,10,20,110,220\nt2,R11,No finding,,,,\n")
    (root / "annotations" / "image_labels_test.csv").write_text(
        "image_id,Aortic enlargement,Lung Opacity,Pneumonia,Tuberculosis,Other diseases,No finding\n"
        "t1,0,1,1,0,0,0\nt2,0,0,0,0,0,1\n")
    assert detect_dataset(tmp_path / "vindr-cxr") == "vindr"
    m = read_dataset("vindr-cxr", tmp_path / "vindr-cxr", check_files=False)
    assert m.df["split"].tolist() == ["test", "test"]
    df = m.df.set_index("id")
    assert df.loc["vindr/t1", "label:Pneumonia"] == 1 and df.loc["vindr/t1", "label:Lung Opacity"] == 1
    assert df.loc["vindr/t2", "label:Pneumonia"] == 0 and bool(df.loc["vindr/t2", "normal"])
    assert df.loc["vindr/t1", "path"].endswith("test/t1.dicom")
    h = harmonise(m)
    assert h.df.set_index("id").loc["vindr/t1", "label:Pneumonia"] == 1
    assert "Nodule" not in h.label_names  # VinDr has only Nodule/Mass


def test_vindr_stored_dicom_is_original(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = _root(tmp_path, "e,Cardiomegaly,3,R1,100,80,140,130\n")
    (root / "train").mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 300, 200
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(300 * 200, dtype=np.uint16) % 4096).tobytes()
    ds.save_as(root / "train" / "e.dicom", enforce_file_format=True)
    m = read_vindr(root)
    assert (m.df["width"].iloc[0], m.df["height"].iloc[0]) == (200, 300)
    assert m.boxes(0) == [Box(100, 80, 140, 130, "Cardiomegaly")]


def test_vindr_helpers():
    assert canonical_vindr_class("  lung   OPACITY ") == "Lung Opacity"
    assert canonical_vindr_class("Other disease") == "Other diseases"
    assert canonical_vindr_class("Lung nodule") is None
    assert group_boxes([(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (2, 2, 12, 12)], 0.5) == [[0, 1, 3], [2]]
