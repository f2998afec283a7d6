"""Readers for the formats not in the torchxrayvision wheel, on small files made here in the
published formats (ChestX-Det, NODE21, COVIDx, Shenzhen / Montgomery, TBX11K lists, JSRT raw +
SCR masks, PadChest), plus the real pack files where present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import leader.datasets._common as common
from leader.datasets import (MissingFileWarning, UnreadableRowWarning, collect_skipped, detect_dataset, harmonise,
                             index_root, parse_covidx_line, read_chestx_det, read_covidx, read_dataset, read_jsrt,
                             read_nih, read_node21, read_padchest, read_shenzhen, read_tbx11k)
from leader.errors import BoxError, ManifestError
from leader.manifest import Box, Manifest


def _png(path: Path, w: int, h: int, bits: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        a = (np.arange(w * h, dtype=np.uint16).reshape(h, w) * 13) % 65535
        Image.fromarray(a.astype(np.uint16)).save(path)  # Pillow picks I;16
    else:
        Image.fromarray((np.arange(w * h).reshape(h, w) % 251).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------ ChestX-Det

CXDET_TRAIN = [
    {"file_name": "36199.png", "syms": ["Effusion", "Nodule"], "boxes": [[632, 721, 909, 969], [129, 611, 174, 655]],
     "polygons": [[[632, 721], [909, 721], [909, 969]], [[129, 611], [174, 611], [174, 655], [129, 655]]]},
    {"file_name": "36200.png", "syms": [], "boxes": [], "polygons": []},
]
CXDET10_TEST = [{"file_name": "00000042_006.png", "syms": ["Fibrosis", "Fibrosis"],
                 "boxes": [[632, 721, 909, 969], [129, 611, 474, 909]]}]


def _cxdet(tmp_path: Path) -> Path:
    root = tmp_path / "chestx-det"
    root.mkdir()
    (root / "ChestX_Det_train.json").write_text(json.dumps(CXDET_TRAIN))
    (root / "ChestX_Det_test.json").write_text(json.dumps(CXDET10_TEST))
    return root


def test_chestx_det_boxes_polygons_labels(tmp_path):
    root = _cxdet(tmp_path)
    assert detect_dataset(root) == "chestx-det"
    m = read_chestx_det(root, check_files=False)
    assert m.ids == ["chestx-det/36199", "chestx-det/36200", "chestx-det/00000042_006"]
    assert m.df["split"].tolist() == ["train", "train", "test"]
    assert m.boxes(0) == [Box(632, 721, 909, 969, "Effusion"), Box(129, 611, 174, 655, "Nodule")]
    assert m.df["polygons"].iloc[0][1] == [129, 611, 174, 611, 174, 655, 129, 655]
    assert m.label_names == ["Effusion", "Fibrosis", "Nodule"]
    np.testing.assert_array_equal(m.labels_array(), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert m.df["normal"].tolist() == [False, True, False]
    assert m.df["patient_id"].tolist() == ["36199", "36200", "42"]  # NIH name -> NIH patient
    # stored at 512: boxes and polygons follow, per axis
    _png(root / "train" / "36199.png", 512, 256)
    _png(root / "train" / "36200.png", 512, 512)
    with pytest.warns(MissingFileWarning, match="00000042_006"):
        s = read_chestx_det(root)
    assert s.boxes(0)[0] == Box(316, 180.25, 454.5, 242.25, "Effusion")
    assert s.df["polygons"].iloc[0][1][:2] == [64.5, 152.75]
    h = harmonise(m)
    assert h.df["label:Nodule/Mass"].tolist() == [1, 0, 0] and h.df["label:Effusion"].tolist() == [1, 0, 0]


def test_chestx_det_errors(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "ChestX_Det_train.json").write_text(json.dumps([{"file_name": "1.png", "syms": ["Tumour"], "boxes": [[1, 2, 3, 4]]}]))
    with pytest.raises(ManifestError, match=r"entry 0 \(1.png\): unknown ChestX-Det class 'Tumour'"):
        read_chestx_det(root, check_files=False)
    (root / "ChestX_Det_train.json").write_text(json.dumps([{"file_name": "1.png", "syms": ["Mass"], "boxes": []}]))
    with pytest.raises(ManifestError, match="1 syms but 0 boxes"):
        read_chestx_det(root, check_files=False)
    (root / "ChestX_Det_train.json").write_text(json.dumps([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[5, 5, 5, 9]]}]))
    with pytest.raises(BoxError, match=r"entry 0 \(1.png\)"):
        read_chestx_det(root, check_files=False)


# ---------------------------------------------------------------------------- NODE21

NODE21_CSV = (",img_name,x,y,width,height,label\n"
              "0,n0001.mha,400,300,40,44,1\n"
              "1,n0001.mha,600,500,30,30,1\n"
              "2,c0002.mha,0,0,0,0,0\n")


def test_node21_metadata_and_real_mha(tmp_path, real_pack):
    root = tmp_path / "node21"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text(NODE21_CSV + "3,3.mha,100,200,50,60,1\n")
    # the real NODE21 test input (1024x1024 uint16 .mha, spacing 0.269 mm), linked in place
    os.symlink(real_pack / "node21" / "3.mha", root / "images" / "3.mha")
    assert detect_dataset(root) == "node21"
    m = read_node21(root, check_files=False)
    assert m.ids == ["node21/n0001", "node21/c0002", "node21/3"]
    assert m.boxes(0) == [Box(400, 300, 440, 344, "Nodule"), Box(600, 500, 630, 530, "Nodule")]
    assert m.boxes(1) == [] and m.df["label:Nodule"].tolist() == [1, 0, 1]
    assert not m.df["normal"].any()
    with pytest.warns(MissingFileWarning, match=r"skipped 2 row"):
        r = read_node21(root)
    assert r.ids == ["node21/3"] and (r.df["width"].iloc[0], r.df["height"].iloc[0]) == (1024, 1024)
    assert r.df["pixel_spacing"].iloc[0] == pytest.approx(0.2691650390625)
    assert r.boxes(0) == [Box(100, 200, 150, 260, "Nodule")]


def test_node21_errors(tmp_path):
    root = tmp_path / "n"
    root.mkdir()
    (root / "metadata.csv").write_text(NODE21_CSV + "3,n0003.mha,10,20,,30,1\n")
    with pytest.raises(ManifestError, match=r"line 5: image 'n0003.mha': nodule row with a missing"):
        read_node21(root, check_files=False)
    (root / "metadata.csv").write_text(NODE21_CSV + "3,n0003.mha,10,20,5,30,2\n")
    with pytest.raises(ManifestError, match=r"line 5: image 'n0003.mha': label '2' is not 0/1"):
        read_node21(root, check_files=False)


# ---------------------------------------------------------------------------- COVIDx


def test_covidx_three_class_and_binary(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    (root / "train_COVIDx8A.txt").write_text(
        "3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg pneumonia cohen\n"
        "419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png COVID-19 ricord\n"
        "8cbc9a7f 8cbc9a7f-2e6b-4a35-a4b9-3b6b1d1a2d3c.png normal rsna\n")
    (root / "test_COVIDx8A.txt").write_text("ANON191 ANON191.png COVID-19 actualmed\n")
    assert detect_dataset(root) == "covidx"
    m = read_covidx(root, check_files=False)
    assert m.df["split"].tolist() == ["train", "train", "train", "test"]
    np.testing.assert_array_equal(m.labels_array(), [[0, 1], [1, 0], [0, 0], [1, 0]])
    assert m.label_names == ["COVID-19", "pneumonia"]
    assert m.df["normal"].tolist() == [False, False, True, False]
    assert m.df["patient_id"].tolist()[1] == "419639-003251" and m.df["source"].tolist()[0] == "cohen"
    assert m.df["path"].iloc[3] == str(root / "test" / "ANON191.png")
    h = harmonise(m)
    assert h.df["label:Pneumonia"].tolist() == [1, 1, 0, 1]  # COVID-19 pneumonia counts as pneumonia
    b = tmp_path / "bin"
    b.mkdir()
    (b / "train.txt").write_text("p1 a.png positive bimcv\np2 b.png negative rsna\n")
    (b / "val.txt").write_text("p3 c.png negative sirm\n")
    mb = read_covidx(b, check_files=False)
    assert mb.df["split"].tolist() == ["train", "train", "val"]
    assert mb.df["label:COVID-19"].tolist() == [1, 0, 0] and np.isnan(mb.df["label:pneumonia"]).all()
    assert np.isnan(harmonise(mb).df["label:Pneumonia"].iloc[1])  # negative: pneumonia unknown


def test_covidx_errors_and_files(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "train.txt").write_text("p1 a.png influenza src\n")
    with pytest.raises(ManifestError, match=r"train.txt: line 1: unknown class 'influenza'"):
        read_covidx(root, check_files=False)
    (root / "train.txt").write_text("p1 a.png normal src\n")
    (root / "test.txt").write_text("p9 a.png normal src\n")
    with pytest.raises(ManifestError, match=r"test.txt: line 1: 'a.png' already listed"):
        read_covidx(root, check_files=False)
    (root / "test.txt").write_text("p9 b.png\n")
    with pytest.raises(ManifestError, match="line 1: expected"):
        read_covidx(root, check_files=False)
    (root / "test.txt").write_text("p9 b.png normal src\n")
    _png(root / "train" / "a.png", 30, 20)
    with pytest.warns(MissingFileWarning, match="covidx/b"):
        m = read_covidx(root)
    assert m.ids == ["covidx/a"] and m.df["width"].iloc[0] == 30


def test_covidx_fields_parsed_from_the_end(tmp_path):
    # the patient id may contain spaces; source is the last field when present, else None
    assert parse_covidx_line("COVID 2 COVID(2).png COVID-19 sirm") == ("COVID 2", "COVID(2).png", "COVID-19", "sirm")
    assert parse_covidx_line("COVID  2 COVID(2).png COVID-19") == ("COVID  2", "COVID(2).png", "COVID-19", None)
    assert parse_covidx_line("p1 a.png normal") == ("p1", "a.png", "normal", None)
    with pytest.raises(ValueError, match="unknown class 'influenza'"):
        parse_covidx_line("p1 a.png influenza")
    root = tmp_path / "cx"
    root.mkdir()
    (root / "train.txt").write_text("COVID 2 COVID(2).png COVID-19 sirm\n\nCOVID 3 COVID(3).png COVID-19\n"
                                    "p4 n4.png normal rsna\n")
    (root / "test.txt").write_text("COVID 2 c2b.png COVID-19 sirm\n")
    assert detect_dataset(root) == "covidx"
    m = read_covidx(root, check_files=False)
    assert m.df["patient_id"].tolist() == ["COVID 2", "COVID 3", "p4", "COVID 2"]
    assert m.ids == ["covidx/COVID(2)", "covidx/COVID(3)", "covidx/n4", "covidx/c2b"]
    assert m.df["source"].tolist() == ["sirm", None, "rsna", "sirm"]  # absent source: unknown
    assert m.df["covidx_class"].tolist() == ["covid-19", "covid-19", "normal", "covid-19"]
    # a listed image that is missing is reported with the split file's line
    _png(root / "train" / "COVID(2).png", 8, 8)
    _png(root / "train" / "n4.png", 8, 8)
    _png(root / "test" / "c2b.png", 8, 8)
    with collect_skipped() as log, pytest.warns(MissingFileWarning, match=r"covidx/COVID\(3\) \(.*train.txt: line 3\)"):
        m = read_covidx(root)
    assert len(m) == 3 and log[0].id == "covidx/COVID(3)" and "train.txt: line 3" in log[0].message
    m.save(tmp_path / "cx.parquet")
    assert Manifest.load(tmp_path / "cx.parquet").df["source"].tolist() == ["sirm", "rsna", "sirm"]
    m2 = read_covidx(root, metadata=[root / "train.txt"], check_files=False)
    m2.save(tmp_path / "cx2.parquet")
    assert Manifest.load(tmp_path / "cx2.parquet").df["source"].isna().tolist() == [False, True, False]


def test_tbx11k_list_paths_with_spaces(tmp_path, real_pack):
    root = tmp_path / "tbx"
    _png(root / "imgs" / "sick" / "s 0001.png", 64, 64)
    (root / "lists").mkdir()
    (root / "lists" / "TBX11K_val.txt").write_text("sick/s 0001.png\n")
    (root / "lists" / "extra_train.txt").write_text("imgs/sick/s 0001.png 0\n")
    m = read_tbx11k(root, include_unlisted=False)
    assert m.ids == ["tbx11k/s 0001"] and m.df["split"].tolist() == ["val"]


# ----------------------------------------------------------------- Shenzhen / Montgomery


def test_shenzhen_and_montgomery(tmp_path):
    root = tmp_path / "nlm"
    cn = root / "ChinaSet_AllFiles"
    _png(cn / "CXR_png" / "CHNCXR_0001_0.png", 40, 30)
    _png(cn / "CXR_png" / "CHNCXR_0327_1.png", 30, 40)
    (cn / "ClinicalReadings").mkdir(parents=True)
    (cn / "ClinicalReadings" / "CHNCXR_0001_0.txt").write_text("male 45yrs\nnormal\n")
    (cn / "ClinicalReadings" / "CHNCXR_0327_1.txt").write_text("female  24yrs\r\nSTB,ATB in left upper field\r\n")
    mc = root / "MontgomerySet"
    _png(mc / "CXR_png" / "MCUCXR_0104_1.png", 20, 24)
    _png(mc / "ManualMask" / "leftMask" / "MCUCXR_0104_1.png", 20, 24)  # a mask, not a radiograph
    (mc / "ClinicalReadings").mkdir(parents=True)
    (mc / "ClinicalReadings" / "MCUCXR_0104_1.txt").write_text(
        "Patient's Sex: F\nPatient's Age: 040Y\nright upper lobe cavitary lesion\n")
    assert detect_dataset(cn) == "shenzhen" and detect_dataset(mc) == "shenzhen"
    assert detect_dataset(root) is None  # a folder holding both sets: index_root reads each
    assert sorted(index_root(root, check_files=False).df["dataset"]) == ["montgomery", "shenzhen", "shenzhen"]
    m = read_shenzhen(root)
    assert m.ids == ["shenzhen/CHNCXR_0001_0", "shenzhen/CHNCXR_0327_1", "montgomery/MCUCXR_0104_1"]
    assert m.df["label:Tuberculosis"].tolist() == [0, 1, 1] and m.df["normal"].tolist() == [True, False, False]
    assert m.df["sex"].tolist() == ["M", "F", "F"] and m.df["age"].tolist() == [45, 24, 40]
    assert m.df["reading"].tolist()[1] == "STB,ATB in left upper field"
    assert m.df["width"].tolist() == [40, 30, 20] and set(m.df["view"]) == {"UNKNOWN"}
    assert m.df["patient_id"].tolist() == ["CHNCXR_0001", "CHNCXR_0327", "MCUCXR_0104"]
    pa = read_shenzhen(root, view="PA", check_files=False)
    assert set(pa.df["view"]) == {"PA"} and pa.df["width"].isna().all()
    (cn / "ClinicalReadings" / "CHNCXR_0001_0.txt").unlink()
    with pytest.warns(UnreadableRowWarning, match=r"1 row\(s\).*CHNCXR_0001_0 \(no reading file\)"):
        read_shenzhen(root, check_files=False)


# ------------------------------------------------------------------ TBX11K list files


def test_tbx11k_lists(tmp_path, real_pack):
    root = tmp_path / "tbx"
    (root / "imgs").mkdir(parents=True)
    for sub in ("tb", "health"):
        os.symlink(real_pack / "tbx11k" / "imgs" / sub, root / "imgs" / sub)
    os.symlink(real_pack / "tbx11k" / "annotations", root / "annotations")
    _png(root / "imgs" / "sick" / "s0001.png", 512, 512)
    _png(root / "imgs" / "test" / "t0001.png", 512, 512)
    (root / "lists").mkdir()
    (root / "lists" / "TBX11K_train.txt").write_text("tb/tb0005.png\ntb/tb0007.png\nhealth/h0001.png\nsick/s0001.png\n")
    (root / "lists" / "all_test.txt").write_text("imgs/test/t0001.png\n")
    m = read_tbx11k(root, include_unlisted=False)
    df = m.df.set_index("id")
    assert sorted(m.ids) == ["tbx11k/h0001", "tbx11k/s0001", "tbx11k/t0001", "tbx11k/tb0005", "tbx11k/tb0007"]
    assert df.loc["tbx11k/t0001", "split"] == "test" and np.isnan(df.loc["tbx11k/t0001", "label:Tuberculosis"])
    assert df.loc["tbx11k/s0001", "label:Tuberculosis"] == 0 and df.loc["tbx11k/s0001", "subset"] == "sick"
    assert df.loc["tbx11k/tb0005", "label:ActiveTuberculosis"] == 1  # JSON wins over the list
    assert len(m.boxes(m.index_of("tbx11k/tb0007"))) == 2


# ------------------------------------------------------------- JSRT raw + SCR masks


def test_jsrt_raw_with_scr_masks(tmp_path):
    root = tmp_path / "jsrt"
    root.mkdir()
    with open(root / "JPCLN001.IMG", "wb") as fh:  # headerless 2048x2048 16-bit big-endian
        fh.truncate(2048 * 2048 * 2)
    (root / "CLNDAT_EN.txt").write_bytes(b"JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\r")
    for organ in ("heart", "left lung", "right lung"):
        _png(root / "scr" / "masks" / organ / "JPCLN001.png", 16, 16)
    m = read_jsrt(root)
    assert m.ids == ["jsrt/JPCLN001"] and m.df["width"].iloc[0] == 2048
    assert m.df["pixel_spacing"].iloc[0] == pytest.approx(0.175)
    masks = json.loads(m.df["masks"].iloc[0])
    assert sorted(masks) == ["heart", "left lung", "right lung"]
    assert masks["heart"].endswith("scr/masks/heart/JPCLN001.png")


# --------------------------------------------------------------------- PadChest small

PC_HEADER = (",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,"
             "Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,PhotometricInterpretation_DICOM,"
             "PixelRepresentation_DICOM,PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,"
             "WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,"
             "ExposureInuAs_DICOM,ExposureTime,RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,"
             "Localizations,LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS\n")


def _pc_row(k, image, d, pid, proj, rows, cols, labels, report="sin hallazg ."):
    return (f"{k},{image},{d},20140915,S{pid},{pid},1930.0,F,POSTEROANTERIOR,{proj},Manual review of DICOM fields,"
            f"No,CR,Philips,MONOCHROME2,0,None,0.143,12,2092,2251,{rows},{cols},250,2,2500,10,-1.42,4765777,"
            f"\"{report}\",Physician,{labels},[],\"[['normal']]\",[],[]\n")


def test_padchest_small_16bit(tmp_path):
    root = tmp_path / "padchest"
    root.mkdir()
    rows = [
        _pc_row(0, "a_1.png", 0, "P1", "PA", 48, 40, "\"['normal']\""),
        _pc_row(1, "a_2.png", 0, "P1", "L", 48, 40, "\"['pleural effusion', ' pneumonia', '']\"",
                report="derrame .\nmultiline report"),
        _pc_row(2, "b_1.png", 12, "P2", "AP_horizontal", 30, 20, "nan"),
        _pc_row(3, "b_2.png", 12, "P2", "COSTAL", 30, 20, "\"['pneumonia']\""),
    ]
    (root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text(PC_HEADER + "".join(rows))
    _png(root / "0" / "a_1.png", 40, 48, bits=16)
    _png(root / "0" / "a_2.png", 40, 48, bits=16)
    _png(root / "12" / "b_1.png", 20, 30, bits=16)
    assert detect_dataset(root) == "padchest"
    with pytest.warns(UnreadableRowWarning, match=r"1 row\(s\).*row 3 \(b_1.png\) Labels='nan'"):
        with pytest.warns(MissingFileWarning, match="padchest/b_2"):
            m = read_padchest(root)
    assert m.ids == ["padchest/a_1", "padchest/a_2", "padchest/b_1"]
    assert m.df["view"].tolist() == ["PA", "LATERAL", "AP"]
    assert m.df["width"].tolist() == [40, 40, 20] and m.df["height"].tolist() == [48, 48, 30]
    assert m.df["pixel_spacing"].tolist() == pytest.approx([0.143] * 3)
    assert m.label_names == ["pneumonia", "normal", "pleural effusion"]
    L = m.labels_array()
    np.testing.assert_array_equal(L[:2], [[0, 1, 0], [1, 0, 1]])
    assert np.isnan(L[2]).all()
    assert m.df["normal"].tolist() == [True, False, False] and m.df["patient_id"].tolist() == ["P1", "P1", "P2"]
    with pytest.warns(UnreadableRowWarning):
        m2 = read_padchest(root, check_files=False)
    assert m2.df["view"].tolist()[3] == "COSTAL" and len(m2) == 4


# ------------------------------------------------------------------- NIH split lists


def test_nih_test_list_via_read_dataset(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n"
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171\n")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "test_list.txt").write_text("00000002_000.png\n")
    m = read_dataset("nih", root, [root / "Data_Entry_2017.csv", lists / "test_list.txt"], check_files=False)
    assert m.df["split"].tolist() == ["train", "test"]
    assert read_nih(root, check_files=False).df["split"].tolist() == ["train", "train"]
    with pytest.raises(ValueError, match="unknown dataset 'nihh'"):
        read_dataset("nihh", root)
    with pytest.raises(ValueError, match="takes no --metadata"):
        read_dataset("jsrt", root, [root / "x.txt"])


# ------------------------------------------------ metadata-only indexing never opens images


@pytest.mark.filterwarnings("ignore::leader.datasets.UnreadableRowWarning")
def test_new_readers_check_files_false_touch_no_image(tmp_path, monkeypatch, real_pack):
    # build every small dataset first (this writes images)
    cx = _cxdet(tmp_path)
    n21 = tmp_path / "node21"
    n21.mkdir()
    (n21 / "metadata.csv").write_text(NODE21_CSV)
    cov = tmp_path / "covidx"
    cov.mkdir()
    (cov / "train.txt").write_text("p1 a.png normal src\n")
    _png(cov / "train" / "a.png", 8, 8)
    nlm = tmp_path / "nlm"
    _png(nlm / "CHNCXR_0001_0.png", 8, 8)
    pc = tmp_path / "pc"
    pc.mkdir()
    (pc / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text(
        PC_HEADER + _pc_row(0, "a_1.png", 0, "P1", "PA", 48, 40, "\"['normal']\""))
    _png(pc / "0" / "a_1.png", 40, 48)
    vd = tmp_path / "vindr"
    vd.mkdir()
    (vd / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na,Cardiomegaly,3,R1,1,2,3,4\n")
    _png(vd / "train" / "a.png", 8, 8)

    def boom(*a, **k):
        raise AssertionError("an image file was opened or stat'ed")

    import pydicom
    import PIL.Image
    import SimpleITK

    import leader.io

    monkeypatch.setattr(common, "read_size", boom)
    monkeypatch.setattr(common, "read_sizes", boom)
    monkeypatch.setattr(leader.io, "read_header", boom)
    monkeypatch.setattr(PIL.Image, "open", boom)
    monkeypatch.setattr(pydicom, "dcmread", boom)
    monkeypatch.setattr(SimpleITK, "ReadImage", boom)
    real_is_file = Path.is_file

    def guarded_is_file(self):
        if self.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".mha", ".img"):
            raise AssertionError(f"stat of image {self}")
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", guarded_is_file)
    assert len(read_chestx_det(cx, check_files=False)) == 3
    assert len(read_node21(n21, check_files=False)) == 2
    assert len(read_covidx(cov, check_files=False)) == 1
    assert len(read_shenzhen(nlm, check_files=False)) == 1
    assert len(read_padchest(pc, check_files=False)) == 1
    assert len(read_dataset("vindr", vd, check_files=False)) == 1
    assert len(index_root(real_pack / "nih-chestxray14", check_files=False)) == 39


def test_new_manifests_round_trip_parquet(tmp_path):
    from leader.datasets import read_vindr
    from leader.manifest import Manifest

    cx = read_chestx_det(_cxdet(tmp_path), check_files=False)
    vd = tmp_path / "vd"
    vd.mkdir()
    (vd / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                  "a,Cardiomegaly,3,R1,1,2,3,4\nb,No finding,14,R2,,,,\n")
    n21 = tmp_path / "n21"
    n21.mkdir()
    (n21 / "metadata.csv").write_text(NODE21_CSV)
    for m in (cx, read_vindr(vd, check_files=False), read_node21(n21, check_files=False)):
        p = tmp_path / f"{m.df['dataset'].iloc[0]}.parquet"
        m.save(p)
        r = Manifest.load(p)
        assert r.ids == m.ids and r.label_names == m.label_names
        np.testing.assert_array_equal(r.labels_array(), m.labels_array())
        assert all(r.boxes(i) == m.boxes(i) for i in range(len(m)))


def test_index_root_detects_new_datasets(tmp_path):
    root = tmp_path / "all"
    (root / "chexpert").mkdir(parents=True)
    (root / "chexpert" / "train.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,1.0,-1.0\n")
    (root / "vindr").mkdir()
    (root / "vindr" / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                              "a,Cardiomegaly,3,R1,1,2,3,4\n")
    (root / "node21").mkdir()
    (root / "node21" / "metadata.csv").write_text(NODE21_CSV)
    (root / "covidx").mkdir()
    (root / "covidx" / "train.txt").write_text("p1 a.png normal src\n")
    (root / "cxdet").mkdir()
    (root / "cxdet" / "ChestX_Det_test.json").write_text(json.dumps(CXDET10_TEST))
    m = index_root(root, check_files=False)
    assert m.df["dataset"].value_counts().to_dict() == {"node21": 2, "chexpert": 1, "vindr": 1, "covidx": 1,
                                                         "chestx-det": 1}
    # harmonised names first (canonical order), native-only names after
    assert m.label_names[:4] == ["Cardiomegaly", "Nodule", "Edema", "Fibrosis"]
    h = harmonise(m)
    assert h.df.set_index("id").loc["vindr/a", "label:Cardiomegaly"] == 1
    assert np.isnan(h.df.set_index("id").loc["covidx/a", "label:Cardiomegaly"])
