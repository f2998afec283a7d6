"""Dataset readers (leader.datasets) on synthetic inputs (field reports) and the real pack."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import leader.datasets._common as common
from leader.datasets import (
    HARMONISED_LABELS,
    READERS,
    MissingFileWarning,
    detect_dataset,
    index_root,
    read_covid_metadata,
    read_folder,
    read_jsrt,
    read_nih,
    read_rsna,
    read_siim,
    read_tbx11k,
)
from leader.errors import BoxError, ImageReadError, ManifestError
from leader.manifest import Box, Manifest

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
BR06_BBOX = (
    "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
    "00000001_000.png,Infiltrate,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661\n"
    "00000001_000.png,Nodule,10,20,30,40,,,\n"
)


def _png(path: Path, w: int, h: int, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
    Image.fromarray(a, mode=None).save(path)
    return path


def _nih_root(tmp_path: Path, bbox: str = BR06_BBOX, size: int | None = 224) -> Path:
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text(
        DATA_ENTRY_HEADER + "00000001_000.png,Infiltration|Nodule,0,1,57,M,PA,2682,2749,0.143,0.143\n"
    )
    (root / "BBox_List_2017.csv").write_text(bbox)
    if size:
        _png(root / "images" / "00000001_000.png", size, size)
    return root


# ----------------------------------------------------------------------- NIH BR-06


def test_br06_nih_boxes_scaled_to_stored_size(tmp_path):
    root = _nih_root(tmp_path)
    m = read_nih(root)
    assert len(m) == 1
    boxes = m.boxes(0)
    assert [b.label for b in boxes] == ["Infiltration", "Nodule"]  # Data_Entry vocabulary
    assert m.df["width"].iloc[0] == 224
    assert boxes[0].xywh() == pytest.approx((49.24, 119.66, 18.98, 17.32), abs=0.01)
    assert boxes[1].xywh() == pytest.approx((10 * 0.21875, 20 * 0.21875, 30 * 0.21875, 40 * 0.21875))
    row = m.df.iloc[0]
    assert row["label:Infiltration"] == 1 and row["label:Nodule"] == 1 and row["label:Mass"] == 0
    assert not row["normal"] and row["patient_id"] == "1" and row["view"] == "PA"
    # mm per stored pixel = original spacing * original width / stored width
    assert row["pixel_spacing"] == pytest.approx(0.143 * 2682 / 224)


def test_br06_check_files_false_uses_1024_frame(tmp_path):
    root = _nih_root(tmp_path, size=None)
    m = read_nih(root, check_files=False)
    assert m.df["width"].iloc[0] == 1024
    assert m.boxes(0)[0].xywh() == pytest.approx(
        (225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661)
    )
    m224 = read_nih(root, check_files=False, stored_size=224)
    assert m224.boxes(0)[0].xywh() == pytest.approx((49.24, 119.66, 18.98, 17.32), abs=0.01)


@pytest.mark.parametrize(
    "bad_row",
    ["00000001_000.png,Nodule,10,20,,40", "00000001_000.png,Nodule,10,20,30", "00000001_000.png,Nodule,10,x,30,40"],
)
def test_br06_missing_coordinate_names_file_and_line(tmp_path, bad_row):
    bbox = BR06_BBOX + bad_row + "\n"
    root = _nih_root(tmp_path, bbox=bbox)
    with pytest.raises(ManifestError) as ei:
        read_nih(root)
    msg = str(ei.value)
    assert "BBox_List_2017.csv" in msg and "line 4" in msg and "00000001_000.png" in msg


def test_nih_missing_image_is_skipped_with_count(tmp_path):
    root = _nih_root(tmp_path)
    with open(root / "Data_Entry_2017_v2020.csv", "a") as fh:
        fh.write("00000002_000.png,No Finding,0,2,40,F,AP,2500,2048,0.171,0.171\n")
    with pytest.warns(MissingFileWarning, match=r"skipped 1 row.*nih/00000002_000"):
        m = read_nih(root)
    assert m.ids == ["nih/00000001_000"]
    # without file checks both rows are kept, the second normal with all labels 0
    m2 = read_nih(root, check_files=False)
    assert len(m2) == 2 and bool(m2.df["normal"].iloc[1]) and np.all(m2.labels_array()[1] == 0)
    assert m2.df["view"].iloc[1] == "AP"


def test_nih_unknown_finding_names_line(tmp_path):
    root = _nih_root(tmp_path)
    with open(root / "Data_Entry_2017_v2020.csv", "a") as fh:
        fh.write("00000002_000.png,Nodule|Pneumonitis,0,2,40,F,AP,2500,2048,0.171,0.171\n")
    with pytest.raises(ManifestError, match=r"line 3.*Pneumonitis"):
        read_nih(root, check_files=False)


def test_nih_split_lists(tmp_path):
    root = _nih_root(tmp_path)
    (root / "test_list.txt").write_text("00000001_000.png\n")
    (root / "train_val_list.txt").write_text("")
    assert read_nih(root).df["split"].tolist() == ["test"]


def test_check_files_false_touches_no_image(tmp_path, monkeypatch, real_pack):
    def boom(*a, **k):
        raise AssertionError("an image header was read")

    import pydicom
    import PIL.Image

    import leader.io

    monkeypatch.setattr(common, "read_size", boom)
    for mod in ("nih", "tbx11k", "jsrt", "covid", "siim", "generic"):
        monkeypatch.setattr(f"leader.datasets.{mod}.read_sizes", boom)
    monkeypatch.setattr(leader.io, "read_header", boom)
    monkeypatch.setattr(PIL.Image, "open", boom)
    monkeypatch.setattr(pydicom, "dcmread", boom)
    m = read_nih(real_pack / "nih-chestxray14", check_files=False)
    assert len(m) == 39 and set(m.df["width"]) == {1024}
    assert len(read_tbx11k(real_pack / "tbx11k", check_files=False)) == 3
    assert len(read_jsrt(real_pack / "jsrt-hybridgnet", check_files=False)) == 8
    assert len(read_covid_metadata(real_pack / "figure1-covid", check_files=False)) == 52
    assert len(read_siim(real_pack / "siim-acr-pneumothorax", check_files=False)) == 1


# ------------------------------------------------------------------- NIH real pack

NIH_PACK_COUNTS = {
    "Nodule": 10, "Atelectasis": 8, "Infiltration": 8, "Cardiomegaly": 6, "Effusion": 6, "Mass": 6,
    "Pneumonia": 6, "Consolidation": 5, "Pleural_Thickening": 4, "Edema": 3, "Fibrosis": 3,
    "Pneumothorax": 3, "Emphysema": 2, "Hernia": 2,
}


def test_nih_real_pack(real_pack):
    root = real_pack / "nih-chestxray14"
    m = read_nih(root)
    assert len(m) == 39
    counts = m.label_counts().set_index("label")["positive"].to_dict()
    assert counts == NIH_PACK_COUNTS
    assert int(m.df["normal"].sum()) == 4  # No Finding
    assert m.labels_array()[m.df["normal"].to_numpy()].sum() == 0
    assert sum(len(m.boxes(i)) for i in range(len(m))) == 9
    # BBox_List_2017.csv line: 00026911_000.png,Infiltrate,555.885714285714,235.140740740741,
    #                          206.967195767196,313.159788359788  (1024 frame, image stored at 1024)
    i = m.index_of("nih/00026911_000")
    assert m.boxes(i) == [
        Box(555.885714285714, 235.140740740741, 555.885714285714 + 206.967195767196,
            235.140740740741 + 313.159788359788, "Infiltration")
    ]
    assert m.df["label:Infiltration"].iloc[i] == 1
    # 00015649_000.png,Mass,641.489947089947,299.073015873016,84.5206349206349,74.768253968254
    b = m.boxes(m.index_of("nih/00015649_000"))[0]
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((641.489947089947, 299.073015873016, 726.010582010582, 373.84126984127))
    # the two torchxrayvision copies in images-512/ are 512x512
    small = m.df[m.df["path"].str.contains("images-512")]
    assert sorted(small["id"]) == ["nih/00000001_000", "nih/00027426_000"]
    assert set(small["width"]) == {512} and set(small["height"]) == {512}
    assert m.df.loc[m.df["width"] == 1024].shape[0] == 37
    r = m.df.iloc[m.index_of("nih/00000001_000")]
    assert r["pixel_spacing"] == pytest.approx(0.14300000000000002 * 2682 / 512)
    assert r["label:Cardiomegaly"] == 1
    assert all(Path(p).is_file() for p in m.df["path"])


# The full NIH metadata (112,120 rows) is tested in tests/test_datasets_realmeta.py.


# ------------------------------------------------------------------------ RSNA BR-07

BR07_CSV = "patientId,x,y,width,height,Target\np1,,,,,0\np2,264,152,213,379,1\np2,562,152,256,453,1\n"


def test_br07_rsna_one_row_per_box(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(BR07_CSV)
    assert detect_dataset(root) == "rsna"
    m = read_rsna(root, check_files=False)
    assert m.ids == ["rsna/p1", "rsna/p2"]  # 2 images, not 3
    assert m.df["label:Pneumonia"].tolist() == [0, 1]
    assert m.boxes(0) == []  # no NaN / 0x0 box
    assert m.boxes(1) == [Box(264, 152, 477, 531, "Pneumonia"), Box(562, 152, 818, 605, "Pneumonia")]
    assert m.df["patient_id"].tolist() == ["p1", "p2"]
    # patch extraction: 2 diseased patches for p2, none for p1 (no NaN / empty box)
    from leader.patches import disease_patches

    table, skipped = disease_patches(m)
    assert skipped == [] and table["image_id"].value_counts().to_dict() == {"rsna/p2": 2}
    # stored at 512: boxes follow the stored size
    _png(root / "p1.png", 512, 512)
    _png(root / "p2.png", 512, 512)
    m2 = read_rsna(root)
    assert m2.boxes(1)[0] == Box(132, 76, 238.5, 265.5, "Pneumonia")


def test_br07_rsna_missing_coordinate_names_patient(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(BR07_CSV + "p3,10,,20,20,1\n")
    with pytest.raises(ManifestError, match=r"line 5: patientId 'p3'.*missing coordinate"):
        read_rsna(root, check_files=False)


# The full RSNA label file (30,227 rows) is tested in tests/test_datasets_realmeta.py.


# ---------------------------------------------------------------------- TBX11K BR-17


def _tbx_root(tmp_path: Path) -> Path:
    root = tmp_path / "tbx"
    for rel in ("tb/tb0007.png", "tb/tb0005.png", "health/h0001.png", "sick/s0001.png", "tb/tb0099.png"):
        _png(root / "imgs" / rel, 512, 512, mode="RGB")
    coco = {
        "categories": [
            {"id": 1, "name": "ActiveTuberculosis"},
            {"id": 2, "name": "ObsoletePulmonaryTuberculosis"},
            {"id": 3, "name": "PulmonaryTuberculosis"},
        ],
        "images": [
            {"id": 7, "file_name": "tb/tb0007.png", "width": 512, "height": 512},
            {"id": 5, "file_name": "tb/tb0005.png", "width": 512, "height": 512},
            {"id": 601, "file_name": "health/h0001.png", "width": 512, "height": 512},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [307.3, 62.1, 135.5, 146.6]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [144.1, 52.9, 126.2, 116.2]},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [381.8, 126.9, 40.2, 44.6]},
        ],
    }
    jd = root / "annotations" / "json"
    jd.mkdir(parents=True)
    (jd / "TBX11K_train.json").write_text(json.dumps(coco))
    return root


def test_br17_tbx11k_synthetic(tmp_path):
    m = read_tbx11k(_tbx_root(tmp_path))
    df = m.df.set_index("id")
    assert len(m) == 5
    t7 = df.loc["tbx11k/tb0007"]
    assert t7["label:ObsoletePulmonaryTuberculosis"] == 1 and t7["label:ActiveTuberculosis"] == 0
    assert t7["label:Tuberculosis"] == 1 and t7["split"] == "train" and t7["subset"] == "tb"
    boxes = m.boxes(m.index_of("tbx11k/tb0007"))
    assert [b.label for b in boxes] == ["ObsoletePulmonaryTuberculosis"] * 2
    assert (boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1) == pytest.approx((307.3, 62.1, 307.3 + 135.5, 62.1 + 146.6))
    assert (boxes[1].x0, boxes[1].y0, boxes[1].x1, boxes[1].y1) == pytest.approx((144.1, 52.9, 144.1 + 126.2, 52.9 + 116.2))
    for iid, subset, normal in (("tbx11k/h0001", "health", True), ("tbx11k/s0001", "sick", False)):
        assert m.boxes(m.index_of(iid)) == []
        r = df.loc[iid]
        assert r["subset"] == subset and bool(r["normal"]) is normal
        for c in ("Tuberculosis", "ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"):
            assert r[f"label:{c}"] == 0
    # a tb/ image without annotation entry: TB known from the folder, type unknown
    u = df.loc["tbx11k/tb0099"]
    assert u["label:Tuberculosis"] == 1 and np.isnan(u["label:ActiveTuberculosis"])
    counts = m.label_counts().set_index("label")
    assert counts.loc["PulmonaryTuberculosis", "positive"] == 0  # reported: no positives
    assert counts.loc["PulmonaryTuberculosis", "unknown"] == 1


def test_br17_empty_class_all_zero_and_reported(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="leader.datasets.tbx11k")
    m = read_tbx11k(_tbx_root(tmp_path), include_unlisted=False)
    assert len(m) == 3 and m.df["label:PulmonaryTuberculosis"].tolist() == [0, 0, 0]  # all 0, no NaN
    assert any("no positives" in r.getMessage() and "PulmonaryTuberculosis" in r.getMessage()
               for r in caplog.records)


def test_tbx11k_split_from_json_name_and_bad_box(tmp_path):
    root = _tbx_root(tmp_path)
    jd = root / "annotations" / "json"
    (jd / "TBX11K_train.json").rename(jd / "TBX11K_val.json")
    m = read_tbx11k(root, include_unlisted=False)
    assert set(m.df["split"]) == {"val"} and len(m) == 3
    coco = json.loads((jd / "TBX11K_val.json").read_text())
    coco["annotations"][0]["bbox"] = [307.3, 62.1, 0.0, 146.6]
    (jd / "TBX11K_val.json").write_text(json.dumps(coco))
    with pytest.raises(BoxError, match=r"annotation 1.*tb0007"):
        read_tbx11k(root)


def test_tbx11k_real_pack(real_pack):
    m = read_tbx11k(real_pack / "tbx11k")
    assert sorted(m.ids) == ["tbx11k/h0001", "tbx11k/tb0005", "tbx11k/tb0007"]
    b5 = m.boxes(m.index_of("tbx11k/tb0005"))
    assert [b.label for b in b5] == ["ActiveTuberculosis"]
    # annotation 1: bbox [381.8337097167969, 126.8733901977539, 40.236907958984375, 44.565773010253906]
    assert b5[0].xywh() == pytest.approx((381.8337097167969, 126.8733901977539, 40.236907958984375, 44.565773010253906))
    b7 = m.boxes(m.index_of("tbx11k/tb0007"))
    assert [b.label for b in b7] == ["ObsoletePulmonaryTuberculosis"] * 2
    h = m.index_of("tbx11k/h0001")
    assert m.boxes(h) == [] and bool(m.df["normal"].iloc[h])
    assert m.df["label:Tuberculosis"].tolist() == [1, 1, 0]
    assert set(m.df["width"]) == {512}


# -------------------------------------------------------------------------- JSRT


def test_jsrt_real_pack(real_pack):
    m = read_jsrt(real_pack / "jsrt-hybridgnet")
    assert len(m) == 8
    nb = [len(m.boxes(i)) for i in range(len(m))]
    assert sorted(nb) == [0] + [1] * 7
    assert all(b.label == "Nodule" for i in range(len(m)) for b in m.boxes(i))
    assert m.df["label:Nodule"].sum() == 7
    for i in range(len(m)):
        lm = m.landmarks(i)
        assert lm.shape == (166, 2)
        assert (lm >= 0).all() and (lm < 1024).all()
    assert set(m.df["landmark_scheme"]) == {"jsrt166"}
    assert m.df["pixel_spacing"].tolist() == pytest.approx([0.35] * 8)
    # CLNDAT_EN.txt: JPCLN013.IMG  4  25 mm  ... centre (1380, 377) in the 2048 frame
    b = m.boxes(m.index_of("jsrt/JPCLN013"))[0]
    assert b.center == pytest.approx((690.0, 188.5))
    assert 0 <= b.x0 < b.x1 <= 1024 and 0 <= b.y0 < b.y1 <= 1024
    assert b.width == pytest.approx(25 / 0.175 / 2)  # diameter in 1024-px units
    n = m.df.iloc[m.index_of("jsrt/JPCNN043")]
    assert bool(n["normal"]) and n["label:Nodule"] == 0 and m.boxes(m.index_of("jsrt/JPCNN043")) == []
    # stray tabs inside text fields are tolerated
    assert m.df["malignancy"].iloc[m.index_of("jsrt/JPCLN112")] == "malignant"
    # the nodule centre lies inside the left-lung contour (points 44-93; patient's left = image right)
    from matplotlib.path import Path as MplPath

    lm = m.landmarks(m.index_of("jsrt/JPCLN013"))
    assert MplPath(lm[44:94]).contains_point((690.0, 188.5))


def test_jsrt_raw_layout(tmp_path):
    root = tmp_path / "jsrt"
    root.mkdir()
    with open(root / "JPCLN001.IMG", "wb") as fh:  # 2048x2048 16-bit, sparse
        fh.truncate(2048 * 2048 * 2)
    (root / "CLNDAT_EN.txt").write_bytes(
        b"JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper\tlobe\tlung cancer\r"
        b"JPCLN002.IMG\t4\t30\t60\tfemale\t1000\t1000\tbenign\tr.lower lobe\tgranuloma\r"
    )
    (root / "CNNDAT_EN.TXT").write_bytes(b"JPCNN001.IMG 52  female   non-nodule\r")
    with pytest.warns(MissingFileWarning, match="skipped 2 row"):
        m = read_jsrt(root)
    assert m.ids == ["jsrt/JPCLN001"]
    assert m.df["width"].iloc[0] == 2048 and m.df["pixel_spacing"].iloc[0] == pytest.approx(0.175)
    b = m.boxes(0)[0]
    r = 15 / 0.175 / 2
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((1634 - r, 692 - r, 1634 + r, 692 + r))
    assert m.landmarks(0) is None
    m2 = read_jsrt(root, check_files=False)
    assert len(m2) == 3 and m2.df.set_index("id").loc["jsrt/JPCNN001", "normal"]


def test_jsrt_bad_clinical_record(tmp_path):
    root = tmp_path / "jsrt"
    root.mkdir()
    (root / "CLNDAT_EN.txt").write_bytes(b"JPCLN001.IMG\t3\t15\t53\tmale\tabc\t692\tmalignant\r")
    with pytest.raises(ManifestError, match=r"CLNDAT_EN.txt: record 1 \(JPCLN001\)"):
        read_jsrt(root, check_files=False)


# ------------------------------------------------------------------------- COVID


def test_covid_figure1_real(real_pack):
    m = read_covid_metadata(real_pack / "figure1-covid")
    assert len(m) == 52 and set(m.df["dataset"]) == {"covid-figure1"}
    f = m.df["finding"].fillna("<blank>").value_counts().to_dict()
    assert f == {"COVID-19": 33, "<blank>": 14, "No finding": 3, "Pneumonia": 2}
    c = m.label_counts().set_index("label")
    assert (c.loc["COVID-19", "positive"], c.loc["COVID-19", "negative"], c.loc["COVID-19", "unknown"]) == (33, 5, 14)
    assert (c.loc["Pneumonia", "positive"], c.loc["Pneumonia", "negative"]) == (35, 3)
    assert int(m.df["normal"].sum()) == 3
    assert m.df["view"].value_counts().to_dict() == {"UNKNOWN": 37, "AP": 13, "PA": 2}
    df = m.df.set_index("id")
    assert df.loc["covid-figure1/COVID-00015a", "path"].endswith(".png")
    assert df.loc["covid-figure1/COVID-00013a", "patient_id"] == df.loc["covid-figure1/COVID-00013b", "patient_id"]
    assert df["width"].notna().all()


def test_covid_actualmed_real(real_pack):
    m = read_covid_metadata(real_pack / "actualmed-covid")
    assert len(m) == 14 and set(m.df["dataset"]) == {"covid-actualmed"}
    f = m.df["finding"].fillna("<blank>").value_counts().to_dict()
    assert f == {"COVID-19": 6, "No finding": 6, "<blank>": 2}
    assert m.df["view"].value_counts().to_dict() == {"AP": 9, "PA": 5}
    assert int(m.df["normal"].sum()) == 6
    assert m.df["patient_id"].nunique() == 13  # ANON191 has two images


def test_covid_latin1_and_missing_images(tmp_path):
    root = tmp_path / "fig1"
    (root / "images").mkdir(parents=True)
    _png(root / "images" / "COVID-00001.jpg", 40, 30)
    _png(root / "images" / "COVID-00002.png", 20, 20)
    text = (
        "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,artifacts/distortion,notes\n"
        "COVID-00001,,M,33,COVID-19,,38.5\xb0C,,AP erect,X-ray,,\n"
        "COVID-00002,,F,40,Pneumonia,,,,PA,X-ray,,\n"
        "COVID-00003,,F,40,No finding,,,,,X-ray,,\n"
    )
    (root / "metadata.csv").write_bytes(text.encode("latin-1"))
    with pytest.warns(MissingFileWarning, match=r"skipped 1 row.*COVID-00003"):
        m = read_covid_metadata(root)
    assert m.ids == ["covid-figure1/COVID-00001", "covid-figure1/COVID-00002"]
    np.testing.assert_array_equal(m.labels_array(), [[1, 1], [0, 1]])
    assert m.df["width"].tolist() == [40, 20] and m.df["view"].tolist() == ["AP", "PA"]


# -------------------------------------------------------------------------- SIIM


def test_siim_real_pack(real_pack):
    m = read_siim(real_pack / "siim-acr-pneumothorax")
    assert len(m) == 1  # derived/Fake_MONOHR1.dcm is not a dataset image
    assert m.ids == ["siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"]
    r = m.df.iloc[0]
    assert r["label:Pneumothorax"] == 0 and r["width"] == 1024 and r["pixel_spacing"] == pytest.approx(0.168)
    assert r["view"] == "PA" and "derived" not in r["path"]


def test_siim_rle_multi_rows(tmp_path):
    root = tmp_path / "siim"
    root.mkdir()
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\na, -1\nb, 5 3 10 2\nb, 40 4\nc,-1\n")
    m = read_siim(root, check_files=False)
    assert m.ids == ["siim/a", "siim/b", "siim/c"]
    assert m.df["label:Pneumothorax"].tolist() == [0, 1, 0]


# ----------------------------------------------------------------------- generic


def test_read_folder_excludes_masks(real_pack):
    m = read_folder(real_pack / "opencxr", dataset="opencxr")
    assert sorted(m.ids) == ["opencxr/c0001_8bit", "opencxr/c3574", "opencxr/g0536", "opencxr/test_img1"]
    assert m.label_names == []
    c = read_folder(real_pack / "covid-chestxray-dataset", dataset="c")
    assert len(c) == 2 and not any("semantic_masks" in p for p in c.df["path"])
    ls = read_folder(real_pack / "lung-segmentation-2d", dataset="ls")
    assert sorted(ls.ids) == ["ls/1", "ls/2", "ls/3", "ls/4"]
    assert set(ls.df["width"]) == {512}


def test_read_folder_with_labels_csv(tmp_path):
    root = tmp_path / "f"
    for n in ("a", "b", "c"):
        _png(root / "imgs" / f"{n}.png", 16, 16)
    _png(root / "imgs" / "a_mask.png", 16, 16)
    (root / "labels.csv").write_text("name,Effusion,note\na.png,1,x\nb,0,y\nz.png,1,q\n")
    with pytest.warns(MissingFileWarning, match="skipped 1"):
        m = read_folder(root, labels_csv=root / "labels.csv", dataset="f")
    assert m.ids == ["f/a", "f/b", "f/c"] and m.label_names == ["Effusion"]
    a = m.labels_array()[:, 0]
    assert a[0] == 1 and a[1] == 0 and np.isnan(a[2])
    (root / "bad.csv").write_text("name,Effusion\na.png,-1\n")
    with pytest.raises(ManifestError, match="line 2"):
        read_folder(root, labels_csv=root / "bad.csv", label_columns=["Effusion"])


def test_unreadable_header_policy(tmp_path):
    root = tmp_path / "f"
    _png(root / "good.png", 8, 8)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_folder(root)
    with pytest.warns(UserWarning, match="bad.png"):
        m = read_folder(root, on_error="skip")
    assert m.ids == ["folder/good"]


# -------------------------------------------------------------------------- pack


def test_detect_dataset(real_pack):
    assert detect_dataset(real_pack / "nih-chestxray14") == "nih"
    assert detect_dataset(real_pack / "tbx11k") == "tbx11k"
    assert detect_dataset(real_pack / "jsrt-hybridgnet") == "jsrt"
    assert detect_dataset(real_pack / "figure1-covid") == "covid"
    assert detect_dataset(real_pack / "actualmed-covid") == "covid"
    assert detect_dataset(real_pack / "siim-acr-pneumothorax") == "siim"
    assert detect_dataset(real_pack / "opencxr") is None
    assert detect_dataset(real_pack) is None
    assert set(READERS) == {"nih", "tbx11k", "jsrt", "covid", "siim", "rsna", "folder", "chexpert", "mimic",
                            "padchest", "vindr", "chestx-det", "node21", "covidx", "shenzhen"}
    # the unlabelled pack folders stay plain folders
    for name in ("opencxr", "node21", "dicom-samples", "lung-segmentation-2d", "covid-chestxray-dataset"):
        assert detect_dataset(real_pack / name) is None, name


def test_index_root_real_pack(real_pack, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingFileWarning)  # every indexed image exists
        m = index_root(real_pack)
    # 129 = nih 39 (37 images/ + 2 images-512/) + tbx11k 3 + jsrt 8 + covid-figure1 52
    #     + covid-actualmed 14 + siim 1 + covid-chestxray-dataset 2 + opencxr 4
    #     (c0001_8bit, c3574, test_img1, g0536.mha; test_img1_lung_seg is a mask)
    #     + node21 1 + dicom-samples 1 + lung-segmentation-2d 4 (the -mask.png files excluded)
    #   = the 130 images of MANIFEST.md minus siim derived/Fake_MONOHR1.dcm.
    assert len(m) == 129
    assert m.df["dataset"].value_counts().to_dict() == {
        "covid-figure1": 52, "nih": 39, "covid-actualmed": 14, "jsrt": 8, "lung-segmentation-2d": 4,
        "opencxr": 4, "tbx11k": 3, "covid-chestxray-dataset": 2, "dicom-samples": 1, "node21": 1, "siim": 1,
    }
    # the pack's labels: the first 19 harmonised names, in that order
    assert m.label_names == list(HARMONISED_LABELS[:19])
    assert m.df["id"].is_unique and m.df["width"].notna().all() and m.df["height"].notna().all()
    assert sum(len(m.boxes(i)) for i in range(len(m))) == 9 + 3 + 7
    assert sum(m.landmarks(i) is not None for i in range(len(m))) == 8
    assert not any("mask" in Path(p).name or "_seg" in Path(p).name for p in m.df["path"])
    # labels a dataset does not annotate are unknown, not negative
    nih = m.df["dataset"] == "nih"
    assert m.df.loc[nih, "label:COVID-19"].isna().all()
    unl = m.df["dataset"].isin(["opencxr", "node21", "dicom-samples", "lung-segmentation-2d", "covid-chestxray-dataset"])
    assert np.isnan(m.labels_array()[unl.to_numpy()]).all()
    # the whole index round-trips through Parquet
    m.save(tmp_path / "pack.parquet")
    r = Manifest.load(tmp_path / "pack.parquet")
    assert r.ids == m.ids
    np.testing.assert_array_equal(r.labels_array(), m.labels_array())
    assert all(r.boxes(i) == m.boxes(i) for i in range(len(m)))
    assert np.array_equal(r.landmarks(m.index_of("jsrt/JPCLN013")), m.landmarks(m.index_of("jsrt/JPCLN013")))


def test_index_root_single_dataset_and_filter(real_pack):
    m = index_root(real_pack / "nih-chestxray14")
    assert len(m) == 39 and set(m.df["dataset"]) == {"nih"}
    f = index_root(real_pack, datasets=["tbx11k", "jsrt"])
    assert len(f) == 11 and set(f.df["dataset"]) == {"tbx11k", "jsrt"}


def test_index_root_empty(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(ManifestError, match="no known dataset"):
        index_root(tmp_path)
