"""Segmentation masks from published encodings (leader.datasets.masks): the SIIM-ACR run-length
decoder against hand-computed masks and the real SIIM rows of the torchxrayvision wheel, and
the one mask function of a manifest row (mask files, SCR organ masks, JSRT contours)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import read_jsrt, read_siim
from leader.datasets.masks import decode_siim_rle, has_mask, mask_source, read_mask_file, resize_mask, row_mask
from leader.errors import ManifestError
from leader.manifest import make_manifest

# ------------------------------------------------------------------ RLE, hand-computed
# Frame 4 wide x 3 high. Pixels are numbered column-major: k -> x = k // 3, y = k % 3.


def test_rle_column_major_relative_offsets():
    # "1 2 3 1": run at k=1..2 -> (x0, y1), (x0, y2); the next starts 3 after the end of the
    # first (k=3+3=6) -> (x2, y0)
    m = decode_siim_rle("1 2 3 1", width=4, height=3)
    assert m.dtype == bool and m.shape == (3, 4)
    np.testing.assert_array_equal(m.astype(int), [[0, 0, 1, 0],
                                                  [1, 0, 0, 0],
                                                  [1, 0, 0, 0]])
    # one run of 3 from pixel 0 fills the first *column*, not the first row
    np.testing.assert_array_equal(decode_siim_rle("0 3", 4, 3).astype(int), [[1, 0, 0, 0]] * 3)


def test_rle_rows_united_and_minus_one():
    rows = ["1 2 3 1", " -1", "0 1 10 1"]  # "0 1 10 1": k=0 -> (x0, y0); k=1+10=11 -> (x3, y2)
    np.testing.assert_array_equal(decode_siim_rle(rows, 4, 3).astype(int), [[1, 0, 1, 0],
                                                                              [1, 0, 0, 0],
                                                                              [1, 0, 0, 1]])
    assert not decode_siim_rle(["-1"], 4, 3).any() and not decode_siim_rle([], 4, 3).any()
    # overlapping rows are united, not added
    np.testing.assert_array_equal(decode_siim_rle(["0 2", "1 2"], 4, 3)[:, 0], [True, True, True])


@pytest.mark.parametrize("bad, match", [("1 2 3", "odd number"), ("10 5", "past the 4x3 frame"),
                                         ("1 x", "non-negative integers"), ("1 0", "zero-length"),
                                         ("-2 3", "non-negative integers")])
def test_rle_malformed(bad, match):
    with pytest.raises(ValueError, match=match):
        decode_siim_rle(bad, 4, 3)


def test_siim_rle_csv_errors_name_line(tmp_path):
    root = tmp_path / "siim"
    root.mkdir()
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\na, -1\nb, 5 3 10\n")
    with pytest.raises(ManifestError, match=r"train-rle.csv: line 3: ImageId 'b': EncodedPixels has an odd"):
        read_siim(root, check_files=False)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\na, 1048570 10\n")
    with pytest.raises(ManifestError, match=r"line 2: ImageId 'a': .*past the 1024x1024 frame"):
        read_siim(root, check_files=False)


def test_siim_masks_through_the_manifest(tmp_path):
    root = tmp_path / "siim"
    root.mkdir()
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\na, -1\nb, 1024 3\nb, 3072 2\n")
    m = read_siim(root, check_files=False)
    assert m.df["pneumothorax_rle"].tolist() == [[], ["1024 3", "3072 2"]]
    assert mask_source(m, 0, "pneumothorax") == "rle" and not row_mask(m, 0, "pneumothorax").any()
    mk = row_mask(m, 1, "pneumothorax")
    assert mk.shape == (1024, 1024)
    # row 1: k=1024..1026 = column 1, rows 0-2; row 2 (counted from pixel 0 again): k=3072..3073 =
    # column 3, rows 0-1
    assert set(zip(*np.nonzero(mk))) == {(0, 1), (1, 1), (2, 1), (0, 3), (1, 3)}
    # a stored image at 512 px: nearest-neighbour resize of the 1024 mask (output pixel (y, x)
    # samples input (2y + 1, 2x + 1))
    df = m.df.copy()
    df.loc[1, ["width", "height"]] = 512
    from leader.manifest import Manifest

    small = row_mask(Manifest(df), 1, "pneumothorax")
    assert small.shape == (512, 512) and small[0, 0] and small[0, 1] and small.sum() == 2


def _txv_siim() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision not installed")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "siim-pneumothorax-train-rle.csv.gz"
    if not p.is_file():
        pytest.skip("SIIM RLE file not in the torchxrayvision wheel")
    return p


def test_siim_real_rows_decode():
    p = _txv_siim()
    m = read_siim(p.parent, rle_csv=p, check_files=False)
    rle = m.df["pneumothorax_rle"]
    # 12,047 images; 2,669 with a mask over 3,576 mask rows; 9,378 with '-1' only
    assert int(rle.map(bool).sum()) == 2_669 and int(rle.map(len).sum()) == 3_576
    assert int((rle.map(len) == 0).sum()) == 9_378
    # first row of ...13666: "557374 2 1015 8 ...": pixel 557374 = column 544, row 318 (557374 -
    # 544*1024); 2 pixels down; the next run starts 1015 after pixel 557376: 558391 = column
    # 545, row 311, 8 pixels down
    i = m.index_of("siim/1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800")
    mk = row_mask(m, i, "pneumothorax")
    np.testing.assert_array_equal(mk[317:321, 544], [False, True, True, False])
    np.testing.assert_array_equal(mk[310:320, 545], [False] + [True] * 8 + [False])
    lengths = np.array(rle.iat[i][0].split(), dtype=np.int64)[1::2]
    assert int(mk.sum()) == int(lengths.sum()) == 30_859
    # ...3514 has three rows (regions overlap): the mask is their union
    j = m.index_of("siim/1.2.276.0.7230010.3.1.4.8323329.3514.1517875178.176496")
    parts = [decode_siim_rle(e) for e in rle.iat[j]]
    assert [int(x.sum()) for x in parts] == [int(np.array(e.split(), int)[1::2].sum()) for e in rle.iat[j]]
    u = row_mask(m, j, "pneumothorax")
    np.testing.assert_array_equal(u, parts[0] | parts[1] | parts[2])
    assert int(u.sum()) == 33_057 < sum(int(x.sum()) for x in parts)


def test_siim_real_pack_negative(real_pack):
    m = read_siim(real_pack / "siim-acr-pneumothorax")
    assert m.df["pneumothorax_rle"].tolist() == [[]]  # '-1': known empty
    mk = row_mask(m, 0, "pneumothorax")
    assert mk.shape == (1024, 1024) and not mk.any()


# ------------------------------------------------------------------ mask files / SCR / contours


def _mask_png(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)
    return path


def test_mask_file_resized_nearest_and_values(tmp_path):
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 255
    f255 = _mask_png(tmp_path / "m255.png", a)
    f1 = _mask_png(tmp_path / "m1.png", a // 255)  # a 0/1 mask
    for f in (f255, f1):
        m = make_manifest([{"id": "x/a", "path": str(tmp_path / "a.png"), "width": 16, "height": 12,
                            "lung_mask": str(f)}])
        assert mask_source(m, 0) == "file"
        mk = row_mask(m, 0)
        assert mk.shape == (12, 16)
        expect = np.zeros((12, 16), bool)
        expect[2:6, 4:10] = True  # every source pixel doubled
        np.testing.assert_array_equal(mk, expect)
    np.testing.assert_array_equal(resize_mask(a, 8, 6), a > 0)


def test_png_mask_named_jpg_is_sniffed(real_pack):
    f = real_pack / "covid-chestxray-dataset" / "semantic_masks_v7labs_lungs" / "16747_3_1.jpg"
    mk = read_mask_file(f)
    assert mk.shape == (885, 1036) and 0.1 < mk.mean() < 0.6


def test_jsrt_contours_give_the_lung_mask(real_pack):
    m = read_jsrt(real_pack / "jsrt-hybridgnet")
    assert has_mask(m).all()  # every JSRT image of the pack has jsrt166 contours
    i = m.index_of("jsrt/JPCLN013")
    assert mask_source(m, i) == "contours"
    mk = row_mask(m, i)
    assert mk.shape == (1024, 1024) and 0.15 < mk.mean() < 0.45
    # the nodule of JPCLN013 ("l.upper") lies in the lungs; the image corner does not
    cx, cy = m.boxes(i)[0].center
    assert mk[int(cy), int(cx)] and not mk[5, 5]
    # the centre of each lung contour is inside the mask; the patient's right lung (points 0-43)
    # is on the image left
    for sl in (slice(0, 44), slice(44, 94)):
        cx, cy = m.landmarks(i)[sl].mean(axis=0)
        assert mk[int(cy), int(cx)]
    assert m.landmarks(i)[0:44, 0].mean() < 512 < m.landmarks(i)[44:94, 0].mean()


def test_scr_masks_win_over_contours_and_file_over_scr(tmp_path):
    root = tmp_path / "jsrt"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(root / "images" / "JPCNN001.png")
    r = np.zeros((32, 32), np.uint8)
    r[8:24, 4:12] = 255
    left = np.zeros((32, 32), np.uint8)
    left[8:24, 20:28] = 255
    _mask_png(root / "scratch" / "masks" / "right lung" / "JPCNN001.png", r)
    _mask_png(root / "scratch" / "masks" / "left lung" / "JPCNN001.png", left)
    _mask_png(root / "scratch" / "masks" / "heart" / "JPCNN001.png", np.full((32, 32), 255))
    m = read_jsrt(root)
    assert json.loads(m.df["masks"].iat[0]).keys() == {"right lung", "left lung", "heart"}
    assert mask_source(m, 0) == "scr"
    mk = row_mask(m, 0)
    assert mk.shape == (64, 64) and mk.sum() == 2 * 32 * 16  # the heart is not a lung
    assert mk[20, 10] and mk[20, 45] and not mk[20, 30]
    df = m.df.copy()
    df["lung_mask"] = str(_mask_png(tmp_path / "file.png", np.full((4, 4), 255)))
    from leader.manifest import Manifest

    assert mask_source(Manifest(df), 0) == "file" and row_mask(Manifest(df), 0).all()


def test_no_mask_and_generated_only_on_request(tmp_path):
    g = _mask_png(tmp_path / "g_mask.png", np.full((4, 4), 255))
    m = make_manifest([{"id": "x/a", "path": "a.png", "width": 4, "height": 4},
                       {"id": "x/b", "path": "b.png", "width": 4, "height": 4, "lung_mask_generated": str(g)}])
    with pytest.raises(ManifestError, match=r"x/a: no lungs mask"):
        row_mask(m, 0)
    np.testing.assert_array_equal(has_mask(m), [False, False])
    np.testing.assert_array_equal(has_mask(m, allow_generated=True), [False, True])
    assert row_mask(m, 1, allow_generated=True).all()
    with pytest.raises(ManifestError, match="x/a: no pneumothorax mask"):
        row_mask(m, 0, "pneumothorax")
    with pytest.raises(ValueError, match="unknown mask kind"):
        row_mask(m, 0, "heart")
    bad = make_manifest([{"id": "x/c", "path": "c.png", "width": 4, "height": 4,
                          "lung_mask": str(tmp_path / "nope.png")}])
    with pytest.raises(ManifestError, match=r"x/c: .*nope.png: cannot read mask image"):
        row_mask(bad, 0)
