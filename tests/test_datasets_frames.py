"""Annotation frames: every reader with boxes or points maps the frame its dataset publishes them
in onto the image **as stored**, with the stored size read from the file header.

Each test makes a resized copy of a dataset in tmp_path (real files of the packs where they
exist: NIH, TBX11K, JSRT, the COVID-19 collection's lung boxes; else images painted with the
published box, resized like a public downscaled mirror) and checks that the boxes follow the
pixels: per-axis scaled values, and for painted images that the mapped box covers the
painted region of the stored file.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import (MissingFileWarning, read_chestx_det, read_covid_metadata, read_jsrt, read_nih,
                             read_node21, read_rsna, read_tbx11k, read_vindr)
from leader.datasets.frames import aspect_differs, frame_scale, map_points, map_xywh
from leader.errors import ManifestError
from leader.io import read_image
from leader.manifest import Box, make_manifest

BG, FG = 20, 230


def _resize_to(src: Path, dst: Path, size: tuple[int, int]) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.load()
        im.resize(size, Image.Resampling.BILINEAR).save(dst, format=im.format)
    return dst


def _painted(size: tuple[int, int], boxes_xyxy) -> Image.Image:
    w, h = size
    a = np.full((h, w), BG, np.uint8)
    for x0, y0, x1, y1 in boxes_xyxy:
        a[int(y0):int(y1), int(x0):int(x1)] = FG
    return Image.fromarray(a)


def _lands(path: str | Path, box: Box) -> None:
    """The mapped box covers the painted (bright) region of the stored file: bright inside
    (2 px in from the edges), dark in a ring 3-6 px outside."""
    px = read_image(path).pixels
    h, w = px.shape
    x0, y0, x1, y1 = (int(round(v)) for v in (box.x0, box.y0, box.x1, box.y1))
    inside = px[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    ring = np.zeros_like(px, bool)
    ring[max(y0 - 6, 0):min(y1 + 6, h), max(x0 - 6, 0):min(x1 + 6, w)] = True
    ring[max(y0 - 3, 0):min(y1 + 3, h), max(x0 - 3, 0):min(x1 + 3, w)] = False
    assert inside.size and ring.any()
    assert inside.min() > 0.8 * px.max(), f"{path}: box {box} is not on the painted region"
    assert px[ring].max() < 0.3 * px.max(), f"{path}: painted region leaks outside box {box}"


def _scaled(b: Box, sx: float, sy: float) -> tuple:
    return pytest.approx((b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy), rel=1e-9)


# ----------------------------------------------------------------------------- helpers


def test_frame_helpers():
    assert frame_scale((512, 512), (1024, 1024)) == (0.5, 0.5)
    assert frame_scale((600, 800), (2000, 2500)) == (0.3, 0.32)
    assert map_xywh(10, 20, 30, 40, (0.5, 2.0)) == (5.0, 40.0, 20.0, 120.0)
    np.testing.assert_allclose(map_points([2, 4, 6, 8], (0.5, 0.25)), [[1, 1], [3, 2]])
    assert not aspect_differs((512, 512), (1024, 1024)) and aspect_differs((512, 492), (466, 399))
    with pytest.raises(ValueError, match="stored width"):
        frame_scale((0, 5), (10, 10))
    with pytest.raises(ValueError, match="frame height"):
        frame_scale((5, 5), (10, float("nan")))


def test_box_in_mm():
    b = Box(10, 20, 30, 60, "Nodule")
    assert b.to_mm(0.5).xywh() == (5, 10, 10, 20)
    assert b.to_mm((0.2, 0.1)).xywh() == pytest.approx((1, 4, 2, 8))  # (row mm, column mm)
    with pytest.raises(ValueError, match="positive mm"):
        b.to_mm(0)
    m = make_manifest([{"id": "a/x", "path": "x.png", "width": 100, "height": 100, "pixel_spacing": 0.25,
                        "boxes": [b]},
                       {"id": "a/y", "path": "y.png", "width": 100, "height": 100, "boxes": [b]}])
    assert m.boxes_mm(0) == [Box(2.5, 5, 7.5, 15, "Nodule")]
    with pytest.raises(ManifestError, match="a/y: pixel spacing unknown"):
        m.boxes_mm(1)


# ------------------------------------------------------------------------- real files


NIH_BOX_IMAGES = ("00001369_000", "00009745_000", "00002578_000", "00013911_000", "00022084_000",
                  "00001933_000", "00004296_000", "00026911_000", "00015649_000")


def test_nih_resized_copy(real_pack, tmp_path):
    src = real_pack / "nih-chestxray14"
    orig = read_nih(src)
    root = tmp_path / "nih"
    for f in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        shutil.copy(src / f, root / f) if root.is_dir() else (root.mkdir(), shutil.copy(src / f, root / f))
    for stem in NIH_BOX_IMAGES:  # 1024 x 1024 published -> 300 x 260 (not even square)
        _resize_to(src / "images" / f"{stem}.png", root / "images" / f"{stem}.png", (300, 260))
        _resize_to(src / "images" / f"{stem}.png", tmp_path / "sq" / "images" / f"{stem}.png", (512, 512))
    with pytest.warns(MissingFileWarning):
        m = read_nih(root)
    assert len(m) == 9 and set(m.df["width"]) == {300} and set(m.df["height"]) == {260}
    for i, image_id in enumerate(m.ids):
        k = orig.index_of(image_id)
        assert orig.df["width"].iat[k] == 1024
        assert [b.label for b in m.boxes(i)] == [b.label for b in orig.boxes(k)]
        for b, o in zip(m.boxes(i), orig.boxes(k)):
            assert (b.x0, b.y0, b.x1, b.y1) == _scaled(o, 300 / 1024, 260 / 1024)
    # in millimetres a box does not depend on the stored size (NIH spacing = original spacing x
    # original width / stored width)
    for f in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        shutil.copy(src / f, tmp_path / "sq" / f)
    with pytest.warns(MissingFileWarning):
        sq = read_nih(tmp_path / "sq")
    for i, image_id in enumerate(sq.ids):
        k = orig.index_of(image_id)
        for b, o in zip(sq.boxes_mm(i), orig.boxes_mm(k)):
            assert b.xywh() == pytest.approx(o.xywh(), rel=1e-9)


def test_tbx11k_resized_copy(real_pack, tmp_path):
    src = real_pack / "tbx11k"
    orig = read_tbx11k(src)
    root = tmp_path / "tbx11k"
    shutil.copytree(src / "annotations", root / "annotations")
    for p in sorted((src / "imgs").rglob("*.png")):  # 512 x 512 (the COCO width/height) -> 384 x 320
        _resize_to(p, root / "imgs" / p.relative_to(src / "imgs"), (384, 320))
    m = read_tbx11k(root)
    assert m.ids == orig.ids and sum(len(m.boxes(i)) for i in range(len(m))) == 3
    for i in range(len(m)):
        for b, o in zip(m.boxes(i), orig.boxes(i)):
            assert (b.x0, b.y0, b.x1, b.y1) == _scaled(o, 384 / 512, 320 / 512) and b.label == o.label


def test_jsrt_resized_copy(real_pack, tmp_path):
    src = real_pack / "jsrt-hybridgnet"
    orig = read_jsrt(src)
    root = tmp_path / "jsrt"
    shutil.copytree(src / "Clinical_Information", root / "Clinical_Information")
    shutil.copytree(src / "landmarks", root / "landmarks")
    for p in sorted((src / "images").iterdir()):  # 1024 x 1024 (HybridGNet) -> 512 x 640
        _resize_to(p, root / "images" / p.name, (512, 640))
    m = read_jsrt(root)
    assert m.ids == orig.ids
    for i in range(len(m)):
        # nodule centres: 2048 frame; contours: 1024 frame; both follow the stored image per axis
        for b, o in zip(m.boxes(i), orig.boxes(i)):
            assert (b.x0, b.y0, b.x1, b.y1) == _scaled(o, 0.5, 0.625)
        np.testing.assert_allclose(m.landmarks(i), orig.landmarks(i) * [0.5, 0.625], rtol=1e-12)
    # JPCLN013 "l.upper": CLNDAT centre in the 2048 original -> stored 512 x 640
    i = m.index_of("jsrt/JPCLN013")
    cx, cy = m.boxes(i)[0].center
    k = orig.index_of("jsrt/JPCLN013")
    ox, oy = orig.boxes(k)[0].center
    assert (cx, cy) == pytest.approx((ox * 0.5, oy * 0.625))
    assert m.df["pixel_spacing"].iat[i] == pytest.approx(0.175 * 2048 / 512)


def _covid_subset(src: Path, root: Path, files: list[str], factor: tuple[float, float]) -> dict[str, tuple]:
    """A copy of the COVID-19 collection with the metadata rows of ``files`` and their images
    resized by ``factor``; returns the stored size ratios per file."""
    text = (src / "metadata.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(rows[0])
    fi = rows[0].index("filename")
    w.writerows([r for r in rows[1:] if r[fi] in files])
    root.mkdir(parents=True)
    (root / "metadata.csv").write_text(out.getvalue(), encoding="utf-8")
    shutil.copytree(src / "annotations", root / "annotations",
                    ignore=shutil.ignore_patterns("v7labs-lungs", "lungVAE-masks"))
    ratios = {}
    for f in files:
        with Image.open(src / "images" / f) as im:
            w0, h0 = im.size
        size = (round(w0 * factor[0]), round(h0 * factor[1]))
        _resize_to(src / "images" / f, root / "images" / f, size)
        ratios[f] = (size[0] / w0, size[1] / h0)
    return ratios


def test_covid_lung_boxes_resized_copy(real_pack_large, tmp_path):
    src = real_pack_large / "covid-chestxray-dataset"
    files = ["auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg", "nejmc2001573_f1a.jpeg",
             "ciaa199.pdf-001-a.png", "000001-24.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orig = read_covid_metadata(src)
    ratios = _covid_subset(src, tmp_path / "covid", files, (0.5, 0.75))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_covid_metadata(tmp_path / "covid")
    assert len(m) == 4 and m.df["boxes"].map(len).sum() == 0  # lungs are anatomy, never disease boxes
    for i, image_id in enumerate(m.ids):
        k = orig.index_of(image_id)
        f = Path(m.df["path"].iat[i]).name
        sx, sy = ratios[f]
        ob = orig.anatomy_boxes(k)
        if ob is None:
            assert m.anatomy_boxes(i) is None and f == "000001-24.jpg"
            continue
        assert [b.label for b in m.anatomy_boxes(i)] == ["right lung", "left lung"]
        for b, o in zip(m.anatomy_boxes(i), ob):
            assert (b.x0, b.y0, b.x1, b.y1) == _scaled(o, sx, sy)
    # the published frame (JSON width x height) of the first image: 882 x 888, right lung
    # bbox [42, 72, 245, 504]; stored here at 254 x 384
    i = m.index_of("covid-ieee8023/auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus")
    assert (m.df["width"].iat[i], m.df["height"].iat[i]) == (254, 384)
    b = m.anatomy_boxes(i)[0]
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((42 * 254 / 882, 72 * 384 / 888, 287 * 254 / 882,
                                                      576 * 384 / 888))


# ------------------------------------------------------------- painted, published frames


def test_rsna_resized_copy(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np1,,,,,0\np2,264,152,213,379,1\np2,562,152,256,453,1\n")
    boxes = [(264, 152, 477, 531), (562, 152, 818, 605)]
    for pid, bl in (("p1", []), ("p2", boxes)):
        _painted((1024, 1024), bl).resize((512, 700), Image.Resampling.BILINEAR).save(root / f"{pid}.png")
    m = read_rsna(root)
    i = m.index_of("rsna/p2")
    assert [(b.x0, b.y0, b.x1, b.y1) for b in m.boxes(i)] == [
        pytest.approx((x0 * 0.5, y0 * 700 / 1024, x1 * 0.5, y1 * 700 / 1024)) for x0, y0, x1, y1 in boxes]
    for b in m.boxes(i):
        _lands(m.df["path"].iat[i], b)
    assert m.boxes(m.index_of("rsna/p1")) == []


def test_chestx_det_resized_copy(tmp_path):
    root = tmp_path / "cx"
    root.mkdir()
    entry = {"file_name": "36199.png", "syms": ["Effusion"], "boxes": [[632, 721, 909, 969]],
             "polygons": [[[632, 721], [909, 721], [909, 969], [632, 969]]]}
    (root / "ChestX_Det_train.json").write_text(json.dumps([entry]))
    (root / "train").mkdir()
    _painted((1024, 1024), [(632, 721, 909, 969)]).resize((700, 600), Image.Resampling.BILINEAR).save(
        root / "train" / "36199.png")
    m = read_chestx_det(root)
    b = m.boxes(0)[0]
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((632 * 700 / 1024, 721 * 600 / 1024, 909 * 700 / 1024,
                                                      969 * 600 / 1024))
    assert m.df["polygons"].iat[0][0][:2] == pytest.approx([632 * 700 / 1024, 721 * 600 / 1024])
    _lands(m.df["path"].iat[0], b)


def test_node21_resized_copy(tmp_path):
    import SimpleITK as sitk

    root = tmp_path / "node21"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text(",img_name,x,y,width,height,label\n0,n1.mha,400,300,120,144,1\n"
                                       "1,n1.mha,600,560,100,80,1\n")
    boxes = [(400, 300, 520, 444), (600, 560, 700, 640)]
    a = np.asarray(_painted((1024, 1024), boxes).resize((600, 600), Image.Resampling.BILINEAR), np.uint16) * 16
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.269 * 1024 / 600, 0.269 * 1024 / 600))
    sitk.WriteImage(img, str(root / "images" / "n1.mha"), useCompression=True)
    m = read_node21(root)
    assert (m.df["width"].iat[0], m.df["height"].iat[0]) == (600, 600)
    assert m.df["pixel_spacing"].iat[0] == pytest.approx(0.269 * 1024 / 600)
    for b, (x0, y0, x1, y1) in zip(m.boxes(0), boxes):
        s = 600 / 1024
        assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((x0 * s, y0 * s, x1 * s, y1 * s))
        _lands(m.df["path"].iat[0], b)


def test_vindr_resized_copy(tmp_path):
    # BR-09a: a box on a 2000 x 2500 DICOM, the image stored downscaled (here 600 x 800)
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                    "a,Nodule/Mass,8,R1,1000,800,1400,1300\n")
    (root / "sizes.csv").write_text("image_id,width,height\na,2000,2500\n")
    _painted((2000, 2500), [(1000, 800, 1400, 1300)]).resize((600, 800), Image.Resampling.BILINEAR).save(
        root / "train" / "a.png")
    m = read_vindr(root, original_sizes=root / "sizes.csv")
    b = m.boxes(0)[0]
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((300, 256, 420, 416))  # x * 0.3, y * 0.32
    _lands(m.df["path"].iat[0], b)
