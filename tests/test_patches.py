"""leader.patches: BR-09 box geometry, patch tables, crop and datasets (Algorithm 1 lines 1-7)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from leader.errors import BoxError, ManifestError
from leader.landmarks import LANDMARK_NAMES, named_landmarks
from leader.manifest import Box, Manifest, make_manifest
from leader.patches import (
    PATCH_COLUMNS,
    ImageDataset,
    PairDataset,
    PatchDataset,
    collate,
    crop,
    disease_patch_region,
    disease_patches,
    healthy_patches,
    landmark_patches,
    patch_table,
    scale_box,
)
from leader.phantoms import make_phantom, make_phantom_pack


def coord_image(w=1024, h=1024):
    """Pixel value encodes its coordinates: v = y * W + x + 1 (0 is reserved for padding)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy * w + xx + 1).astype(np.float64)


def decode(v, w=1024):
    v = np.rint(v).astype(np.int64) - 1
    return v % w, v // w            # x, y


class DictLoader:
    """In-memory loader: path -> [H, W] float32; counts calls."""

    def __init__(self, images: dict):
        self.images = images
        self.calls: dict = {}

    def __call__(self, path):
        self.calls[path] = self.calls.get(path, 0) + 1
        return self.images[path]


# ------------------------------------------------------------------------------------------
# BR-09
# ------------------------------------------------------------------------------------------
def test_br09a_vindr_box_scaled_per_axis_from_true_original_size():
    box = Box(1000, 800, 1400, 1300, "Nodule")
    # DICOM Rows=2500, Columns=2000 -> from_size=(Columns, Rows); stored as 1024x1024 PNG
    out = scale_box(box, from_size=(2000, 2500), to_size=(1024, 1024))
    assert isinstance(out, Box) and out.label == "Nodule"
    assert (out.x0, out.y0, out.x1, out.y1) == pytest.approx((512.0, 327.68, 716.8, 532.48), rel=1e-12)
    assert scale_box((1000, 800, 1400, 1300), (2000, 2500), (1024, 1024)) == pytest.approx(
        (512.0, 327.68, 716.8, 532.48), rel=1e-12)
    d = scale_box({"x0": 1000, "y0": 800, "x1": 1400, "y1": 1300, "label": "X"}, (2000, 2500), (1024, 1024))
    assert d["label"] == "X" and d["y1"] == pytest.approx(532.48)
    with pytest.raises(ValueError):
        scale_box(box, (0, 2500), (1024, 1024))


def test_br09b_box_over_the_left_edge_gives_real_pixels_no_wrap():
    img = coord_image()
    box = Box.from_xywh(-12, 40, 60, 60, "Nodule")           # x in [-12, 48), y in [40, 100)
    region = disease_patch_region(box, 1024, 1024, margin=0.25, min_size=32, image_id="vindr/a")
    x0, y0, x1, y1 = region
    assert x1 - x0 == pytest.approx(90.0) and y1 - y0 == pytest.approx(90.0)   # 60 * 1.5, square
    assert x0 == 0.0 and (y0, y1) == pytest.approx((25.0, 115.0))           # shifted, not wrapped
    # at native size the crop is exactly the real pixels of the region
    native = crop(img, region, 90)
    xs, ys = decode(native)
    assert native.min() > 0                                                  # nothing padded
    np.testing.assert_array_equal(xs, np.tile(np.arange(0, 90), (90, 1)))
    np.testing.assert_array_equal(ys, np.tile(np.arange(25, 115)[:, None], (1, 90)))
    box_part = native[40 - 25:100 - 25, 0:48]                                # real pixels x<48, 40<=y<100
    bx, by = decode(box_part)
    assert bx.min() == 0 and bx.max() == 47 and by.min() == 40 and by.max() == 99
    # resized to the configured patch size: non-empty, right shape, still the same place
    out = crop(img, region, 224)
    assert out.shape == (224, 224) and out.dtype == np.float32
    xramp = np.tile(np.arange(1024, dtype=np.float64), (1024, 1))
    xo = crop(xramp, region, 224)
    yramp = xramp.T.copy()
    yo = crop(yramp, region, 224)
    assert xo.min() == pytest.approx(0.0, abs=0.01) and xo.max() == pytest.approx(89.0, abs=0.01)
    assert yo.min() == pytest.approx(25.0, abs=0.01) and yo.max() == pytest.approx(114.0, abs=0.01)
    assert np.all(np.diff(xo, axis=1) >= 0) and np.all(np.diff(yo, axis=0) >= 0)   # no wrap-around


def test_br09c_box_fully_outside_raises_or_is_skipped(caplog):
    with pytest.raises(BoxError) as e:
        disease_patch_region((1100, 50, 1140, 90, "Nodule"), 1024, 1024, image_id="vindr/xyz")
    msg = str(e.value)
    assert "vindr/xyz" in msg and "x0=1100" in msg and "outside" in msg
    df = pd.DataFrame({
        "id": ["vindr/xyz", "vindr/ok"], "path": ["a.png", "b.png"], "width": [1024, 1024],
        "height": [1024, 1024], "normal": [False, False],
        "boxes": [[{"x0": 1100.0, "y0": 50.0, "x1": 1140.0, "y1": 90.0, "label": "Nodule"}],
                  [{"x0": 10.0, "y0": 10.0, "x1": 50.0, "y1": 50.0, "label": "Mass"}]],
    })
    with pytest.raises(BoxError, match=r"vindr/xyz.*x0=1100"):
        disease_patches(df)
    with caplog.at_level(logging.WARNING, logger="leader.patches"):
        table, skipped = disease_patches(df, on_bad_box="skip")
    assert table["patch_id"].tolist() == ["vindr/ok::disease:0"]
    assert len(skipped) == 1
    image_id, box, reason = skipped[0]
    assert image_id == "vindr/xyz" and box["x0"] == 1100.0 and "outside" in reason
    assert "vindr/xyz" in caplog.text
    # also through an (unvalidated) Manifest
    table2, skipped2 = disease_patches(Manifest(df.assign(
        dataset="vindr", split="train", patient_id="p", pixel_spacing=np.nan, view="PA",
        landmarks=None, landmark_scheme=""), validate=False), on_bad_box="skip")
    assert len(table2) == 1 and skipped2[0][0] == "vindr/xyz"


@pytest.mark.parametrize("box,what", [
    ((10, 10, 10, 50, "A"), "zero or negative area"),
    ((10, 60, 50, 20, "A"), "zero or negative area"),
    ((np.nan, 10, 50, 50, "A"), "NaN"),
    ((10, 10, np.inf, 50, "A"), "NaN/infinite"),
])
def test_degenerate_boxes(box, what):
    with pytest.raises(BoxError, match=what) as e:
        disease_patch_region(box, 512, 512, image_id="ds/img7")
    assert "ds/img7" in str(e.value)
    df = pd.DataFrame({"id": ["ds/img7"], "path": ["p"], "width": [512], "height": [512], "normal": [False],
                       "boxes": [[dict(zip(("x0", "y0", "x1", "y1", "label"), box))]]})
    table, skipped = disease_patches(df, on_bad_box="skip")
    assert len(table) == 0 and list(table.columns) == list(PATCH_COLUMNS)
    assert skipped[0][0] == "ds/img7" and what.split()[0] in skipped[0][2]


# ------------------------------------------------------------------------------------------
# regions and tables
# ------------------------------------------------------------------------------------------
def test_disease_patch_region_geometry():
    # interior box: square, centred, margin on the larger side
    r = disease_patch_region((100, 200, 140, 220), 512, 512, margin=0.25, min_size=32)
    assert r == pytest.approx((90.0, 180.0, 150.0, 240.0))     # side max(40*1.5, 20*1.5, 32) = 60
    side = 60.0
    assert r[2] - r[0] == pytest.approx(side) and r[3] - r[1] == pytest.approx(side)
    assert ((r[0] + r[2]) / 2, (r[1] + r[3]) / 2) == pytest.approx((120.0, 210.0))
    # tiny box -> min_size
    r = disease_patch_region((300, 300, 302, 302), 512, 512, margin=0.25, min_size=32)
    assert r == pytest.approx((285.0, 285.0, 317.0, 317.0))
    # bottom-right corner: shifted inside
    r = disease_patch_region((500, 490, 520, 530), 512, 512, margin=0.5, min_size=8)
    assert r[2] == pytest.approx(512.0) and r[3] == pytest.approx(512.0) and r[2] - r[0] == pytest.approx(80.0)
    # larger than the image: centred on the image, to be zero padded
    r = disease_patch_region((0, 0, 100, 60), 100, 60, margin=0.25)
    assert r == pytest.approx((-25.0, -45.0, 125.0, 105.0))
    with pytest.raises(ValueError):
        disease_patch_region((0, 0, 10, 10), 100, 100, margin=-0.1)


def _manifest_with_images(n_normal=2, n_dis=2, size=256):
    """Phantom-based manifest + in-memory loader."""
    recs, images = [], {}
    for i in range(n_normal + n_dis):
        lesions = [] if i < n_normal else (["Nodule"] if i % 2 else ["Consolidation", "Nodule"])
        px, pts, boxes = make_phantom(np.random.default_rng(i), size=size, lesions=lesions)
        path = f"/mem/img{i}.png"
        images[path] = px
        recs.append(dict(id=f"ph/img{i}", path=path, dataset="ph", width=size, height=size, normal=not boxes,
                         boxes=boxes, landmarks=pts, landmark_scheme="jsrt166", view="PA",
                         labels={"Nodule": float(any(b.label == "Nodule" for b in boxes))}))
    return make_manifest(recs), DictLoader(images)


def test_disease_patches_table():
    m, _ = _manifest_with_images()
    table, skipped = disease_patches(m, margin=0.25, min_size=32)
    assert skipped == []
    assert list(table.columns) == list(PATCH_COLUMNS)
    assert table["patch_id"].tolist() == ["ph/img2::disease:0", "ph/img2::disease:1", "ph/img3::disease:0"]
    assert (table["kind"] == "disease").all()
    assert table["label"].tolist() == [b.label for i in (2, 3) for b in m.boxes(i)]
    for (_, row), box in zip(table.iterrows(), [b for i in (2, 3) for b in m.boxes(i)]):
        assert row.x1 - row.x0 == pytest.approx(row.y1 - row.y0)
        assert row.x0 <= box.x0 and row.y0 <= box.y0 and row.x1 >= box.x1 and row.y1 >= box.y1
        assert row.x0 >= 0 and row.y0 >= 0 and row.x1 <= 256 and row.y1 <= 256
    assert table["x0"].dtype == np.float64


def test_missing_size_names_the_row():
    df = pd.DataFrame({"id": ["a/1", "a/2"], "path": ["p1", "p2"], "width": pd.array([10, None], dtype="Int64"),
                       "height": pd.array([10, None], dtype="Int64"), "normal": [True, True],
                       "boxes": [[], [{"x0": 1.0, "y0": 1.0, "x1": 5.0, "y1": 5.0, "label": "A"}]]})
    with pytest.raises(ManifestError, match=r"a/2 \(row 1\).*width/height missing"):
        disease_patches(df)
    with pytest.raises(ManifestError, match=r"a/2 \(row 1\)"):
        healthy_patches(df)


def test_healthy_patches():
    m, _ = _manifest_with_images(n_normal=3, n_dis=2, size=256)
    t = healthy_patches(m, n_per_image=4, size_frac=(0.15, 0.35), seed=5)
    assert len(t) == 12 and set(t["image_id"]) == {"ph/img0", "ph/img1", "ph/img2"}
    assert (t["kind"] == "healthy").all() and (t["label"] == "healthy").all()
    side = t["x1"] - t["x0"]
    np.testing.assert_allclose(side, t["y1"] - t["y0"])
    assert side.min() >= 0.15 * 256 - 1e-9 and side.max() <= 0.35 * 256 + 1e-9
    assert (t["x0"] >= 0).all() and (t["y0"] >= 0).all() and (t["x1"] <= 256).all() and (t["y1"] <= 256).all()
    for i in range(3):
        lm = m.landmarks(i)[:94]
        rows = t[t["image_id"] == f"ph/img{i}"]
        cx, cy = (rows.x0 + rows.x1) / 2, (rows.y0 + rows.y1) / 2
        assert (cx >= lm[:, 0].min()).all() and (cx <= lm[:, 0].max()).all()
        assert (cy >= lm[:, 1].min()).all() and (cy <= lm[:, 1].max()).all()
    # deterministic, independent of row order, seed-dependent
    pd.testing.assert_frame_equal(t, healthy_patches(m, n_per_image=4, seed=5))
    rev = healthy_patches(m.subset(np.arange(len(m))[::-1]), n_per_image=4, seed=5)
    pd.testing.assert_frame_equal(rev.sort_values("patch_id").reset_index(drop=True),
                                  t.sort_values("patch_id").reset_index(drop=True))
    assert not np.allclose(healthy_patches(m, n_per_image=4, seed=6)["x0"], t["x0"])
    # without landmarks: the central part of the image; 'image' allows anywhere
    df = m.df.copy()
    df["landmarks"] = None
    t2 = healthy_patches(df, n_per_image=50, seed=0)
    c = (t2.x0 + t2.x1) / 2
    assert c.min() >= 0.2 * 256 - 1e-9 and c.max() <= 0.8 * 256 + 1e-9
    t3 = healthy_patches(df, n_per_image=50, seed=0, within="image")
    assert (t3.x0 >= 0).all() and (t3.x1 <= 256).all()
    with pytest.raises(ValueError):
        healthy_patches(m, size_frac=(0.5, 0.2))
    with pytest.raises(ValueError):
        healthy_patches(m, within="lungs")


def test_landmark_patches():
    m, _ = _manifest_with_images(n_normal=1, n_dis=1, size=256)
    df = m.df.copy()
    df.loc[1, "landmarks"] = None
    df.loc[1, "landmark_scheme"] = ""
    t = landmark_patches(Manifest(df), size=224, reference_width=1024)
    assert len(t) == 10 and (t["image_id"] == "ph/img0").all()
    assert t["label"].tolist() == list(LANDMARK_NAMES) and (t["kind"] == "landmark").all()
    assert t["patch_id"].iloc[0] == "ph/img0::landmark:right_lung_apex"
    np.testing.assert_allclose(t["x1"] - t["x0"], 224 * 256 / 1024)
    lm = named_landmarks(m.landmarks(0))
    np.testing.assert_allclose((t["x0"] + t["x1"]) / 2, [lm[n][0] for n in LANDMARK_NAMES])
    np.testing.assert_allclose((t["y0"] + t["y1"]) / 2, [lm[n][1] for n in LANDMARK_NAMES])
    both = patch_table([t, healthy_patches(m)])
    assert len(both) == 12 and both["patch_id"].is_unique
    with pytest.raises(ManifestError, match="duplicate patch_id"):
        patch_table([t, t])


# ------------------------------------------------------------------------------------------
# crop
# ------------------------------------------------------------------------------------------
def test_crop_zero_pads_and_never_wraps():
    img = coord_image(64, 48)
    out = crop(img, (-10, -5, 20, 25), 30)          # native size: no resize
    assert out.shape == (30, 30)
    assert (out[:5, :] == 0).all() and (out[:, :10] == 0).all()   # padding, not the bottom/right of the image
    xs, ys = decode(out[5:, 10:], 64)
    np.testing.assert_array_equal(xs, np.tile(np.arange(0, 20), (25, 1)))
    np.testing.assert_array_equal(ys, np.tile(np.arange(0, 25)[:, None], (1, 20)))
    # past the right/bottom edges
    out = crop(img, (54, 40, 74, 60), 20)
    assert (out[:, 10:] == 0).all() and (out[8:, :] == 0).all() and (out[:8, :10] > 0).all()
    # fully outside -> zeros, right shape, never empty
    out = crop(img, (100, 100, 140, 140), 16)
    assert out.shape == (16, 16) and (out == 0).all()
    # sub-pixel region smaller than a pixel still gives one real pixel
    out = crop(img, (3.2, 4.2, 3.7, 4.9), 4)
    assert out.shape == (4, 4) and np.allclose(out, img[4, 3])
    # torch input
    assert np.array_equal(crop(torch.from_numpy(img), (0, 0, 8, 8), 8), img[:8, :8].astype(np.float32))


def test_crop_resize_antialias():
    const = np.full((100, 100), 0.7, np.float32)
    np.testing.assert_allclose(crop(const, (10, 10, 90, 90), 13), 0.7, atol=1e-6)
    # a 1-px checkerboard shrunk 8x averages to ~0.5 with antialiasing (aliasing would give 0 or 1)
    cb = (np.indices((256, 256)).sum(0) % 2).astype(np.float32)
    small = crop(cb, (0, 0, 256, 256), 32)
    assert np.abs(small - 0.5).max() < 0.05
    # values stay within the input range
    rnd = np.random.default_rng(0).random((77, 91)).astype(np.float32)
    up = crop(rnd, (0, 0, 91, 77), 200)
    assert up.min() >= rnd.min() - 1e-6 and up.max() <= rnd.max() + 1e-6


def test_crop_errors():
    img = np.zeros((10, 10), np.float32)
    with pytest.raises(BoxError):
        crop(img, (np.nan, 0, 5, 5), 4)
    with pytest.raises(BoxError):
        crop(img, (5, 0, 5, 5), 4)
    with pytest.raises(ValueError):
        crop(img, (0, 0, 5, 5), 0)
    with pytest.raises(ValueError):
        crop(np.zeros((2, 10, 10)), (0, 0, 5, 5), 4)


# ------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------
def test_image_dataset_and_cache():
    m, loader = _manifest_with_images(n_normal=1, n_dis=1, size=256)
    ds = ImageDataset(m, 64, loader=loader)
    assert len(ds) == 2
    item = ds[1]
    assert set(item) == {"image", "id", "index"} and item["id"] == "ph/img1" and item["index"] == 1
    x = item["image"]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[0].numpy(), crop(loader.images["/mem/img1.png"], (0, 0, 256, 256), 64), atol=1e-6)
    ds[1]
    ds[1]["image"].mul_(0)          # mutating an item must not corrupt the cache
    assert loader.calls["/mem/img1.png"] == 1
    assert torch.equal(ds[1]["image"], x)
    nc = ImageDataset(m, 64, loader=loader, cache=False)
    nc[0]
    nc[0]
    assert loader.calls["/mem/img0.png"] == 2
    # bounded cache: room for one 64x64 float32 image only
    small = ImageDataset(m, 64, loader=DictLoader(loader.images), cache_bytes=64 * 64 * 4)
    small[0], small[1], small[1]
    assert len(small._cache) == 1 and small._src.loader.calls["/mem/img1.png"] == 2
    with pytest.raises(IndexError):
        ds[2]


def test_image_dataset_size_mismatch_is_an_error():
    m, loader = _manifest_with_images(n_normal=1, n_dis=0, size=256)
    loader.images["/mem/img0.png"] = np.zeros((128, 256), np.float32)
    with pytest.raises(ManifestError, match=r"ph/img0.*256x256.*256x128"):
        ImageDataset(m, 32, loader=loader)[0]


def test_patch_and_pair_datasets():
    m, loader = _manifest_with_images(n_normal=2, n_dis=2, size=256)
    dis, _ = disease_patches(m)
    hea = healthy_patches(m, n_per_image=2)
    pairs = pd.concat([dis, hea], ignore_index=True)
    pds = PatchDataset(m, pairs, 48, loader=loader)
    assert len(pds) == len(pairs) == 7
    it = pds[0]
    assert it["id"] == "ph/img2::disease:0" and it["image"].shape == (1, 48, 48)
    region = tuple(pairs.loc[0, ["x0", "y0", "x1", "y1"]])
    np.testing.assert_allclose(it["image"][0].numpy(), crop(loader.images["/mem/img2.png"], region, 48), atol=1e-6)

    calls = []

    def tf(x):
        calls.append(x.shape)
        return torch.flip(x, dims=[-1])

    ds = PairDataset(m, pairs, 48, transform=tf, loader=loader)
    it = ds[3]
    assert set(it) == {"image", "patch", "image_id", "patch_id", "index"}
    assert it["patch_id"] == pairs.loc[3, "patch_id"] and it["image_id"] == pairs.loc[3, "image_id"]
    assert len(calls) == 2                                   # image and patch augmented separately
    row = int(np.flatnonzero(m.df["id"] == it["image_id"])[0])
    full = crop(loader.images[m.df["path"].iloc[row]], (0, 0, 256, 256), 48)
    np.testing.assert_allclose(it["image"][0].numpy(), full[:, ::-1], atol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate)))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["patch"].shape == (4, 1, 48, 48)
    assert batch["patch_id"] == pairs["patch_id"].tolist()[:4] and batch["index"].tolist() == [0, 1, 2, 3]
    batch = next(iter(DataLoader(ImageDataset(m, 32, loader=loader), batch_size=3)))
    assert batch["image"].shape == (3, 1, 32, 32) and batch["id"] == ["ph/img0", "ph/img1", "ph/img2"]
    # a patch whose image is not in the manifest
    bad = pairs.copy()
    bad.loc[0, "image_id"] = "ph/missing"
    with pytest.raises(ManifestError, match="ph/missing"):
        PairDataset(m, bad, 48, loader=loader)


def test_br09b_through_the_patch_dataset():
    img = coord_image().astype(np.float32) / (1024 * 1024 + 1)        # in [0, 1]
    m = make_manifest([dict(id="v/1", path="/mem/v1", width=1024, height=1024,
                            boxes=[Box.from_xywh(-12, 40, 60, 60, "Nodule")])])
    table, skipped = disease_patches(m)
    assert skipped == [] and len(table) == 1
    it = PatchDataset(m, table, 90, loader=lambda p: img)[0]["image"][0].numpy().astype(np.float64)
    xs, ys = decode(it * (1024 * 1024 + 1))
    assert it.min() > 0 and xs.min() == 0 and xs.max() == 89 and ys.min() == 25 and ys.max() == 114


def test_pair_dataset_on_a_phantom_pack_with_the_default_loader(tmp_path):
    m = make_phantom_pack(tmp_path, n_images=6, size=128, seed=3)
    dis, skipped = disease_patches(m)
    hea = healthy_patches(m, n_per_image=1)
    assert skipped == [] and len(dis) >= 1 and len(hea) == int(m.df["normal"].sum())
    pairs = patch_table([dis, hea])
    ds = PairDataset(m, pairs, 32)                        # loader=None -> leader.io.read_image
    it = ds[0]
    row = m.index_of(it["image_id"])
    stored = np.asarray(Image.open(m.df["path"].iloc[row]), dtype=np.float32) / 255.0
    np.testing.assert_allclose(it["image"][0].numpy(), crop(stored, (0, 0, 128, 128), 32), atol=1e-5)
    region = tuple(pairs.loc[0, ["x0", "y0", "x1", "y1"]])
    np.testing.assert_allclose(it["patch"][0].numpy(), crop(stored, region, 32), atol=1e-5)
    with pytest.raises(ValueError):
        ImageDataset(m, 0)


JSRT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-cxr" / "jsrt-hybridgnet"


@pytest.mark.realdata
@pytest.mark.skipif(not (JSRT_ROOT / "landmarks").is_dir(), reason="real JSRT files not available")
def test_landmark_patches_on_real_jsrt():
    recs = []
    for f in sorted((JSRT_ROOT / "landmarks").glob("*.npy"))[:3]:
        recs.append(dict(id=f"jsrt/{f.stem}", path=str(JSRT_ROOT / "images" / f"{f.stem}-checkpoint.png"),
                         dataset="jsrt", width=1024, height=1024, landmarks=np.load(f),
                         landmark_scheme="jsrt166", normal=f.stem.startswith("JPCNN")))
    m = make_manifest(recs)
    t = landmark_patches(m)
    assert len(t) == 30
    np.testing.assert_allclose(t["x1"] - t["x0"], 224.0)
    ds = PatchDataset(m, t, 224, loader=lambda p: np.asarray(Image.open(p), np.float32) / 255)
    x = ds[0]["image"]
    assert x.shape == (1, 224, 224) and float(x.std()) > 0.01
