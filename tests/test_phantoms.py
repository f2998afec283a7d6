"""leader.phantoms: chest phantoms with known anatomy and lesion boxes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from leader.landmarks import JSRT166_ORGANS, named_landmarks
from leader.manifest import Box, Manifest
from leader.phantoms import LESION_LABELS, make_phantom, make_phantom_pack

SIZE = 256


def _region_mean(px, poly):
    yy, xx = np.mgrid[0:px.shape[0], 0:px.shape[1]]
    inside = MplPath(poly).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(px.shape)
    return float(px[inside].mean()), inside


def test_phantom_shapes_ranges_and_anatomy():
    px, pts, boxes = make_phantom(np.random.default_rng(3), size=SIZE, lesions=[])
    assert px.shape == (SIZE, SIZE) and px.dtype == np.float32
    assert 0.0 <= px.min() and px.max() <= 1.0
    assert pts.shape == (166, 2) and pts.dtype == np.float64
    assert np.all((pts >= 0) & (pts < SIZE))
    assert boxes == []
    # air is dark, lungs darker than heart and body, clavicles bright
    assert px[:8, :8].mean() < 0.1
    lung_r, _ = _region_mean(px, pts[JSRT166_ORGANS["right_lung"]])
    lung_l, _ = _region_mean(px, pts[JSRT166_ORGANS["left_lung"]])
    heart, _ = _region_mean(px, pts[JSRT166_ORGANS["heart"]])
    clav, _ = _region_mean(px, pts[JSRT166_ORGANS["right_clavicle"]])
    assert lung_r < heart - 0.15 and lung_l < heart - 0.15
    assert clav > lung_r + 0.2
    # jsrt166 semantics: patient's right lung on the image left, heart apex on the image right
    lm = named_landmarks(pts)
    assert lm["right_lung_apex"][0] < SIZE / 2 < lm["left_lung_apex"][0]
    assert lm["heart_apex"][0] > SIZE / 2 and lm["right_heart_border"][0] < SIZE / 2
    assert lm["right_costophrenic_angle"][1] > 0.7 * SIZE and lm["left_lung_apex"][1] < 0.2 * SIZE
    assert lm["right_clavicle_medial"][0] > lm["right_clavicle_lateral"][0]
    assert lm["left_clavicle_medial"][0] < lm["left_clavicle_lateral"][0]


@pytest.mark.parametrize("label", LESION_LABELS)
def test_lesion_inside_a_lung_with_a_tight_box(label):
    for seed in range(4):
        px, pts, boxes = make_phantom(np.random.default_rng(seed), size=SIZE, lesions=[label])
        ref, _, _ = make_phantom(np.random.default_rng(seed), size=SIZE, lesions=[])
        assert len(boxes) == 1 and isinstance(boxes[0], Box) and boxes[0].label == label
        b = boxes[0]
        assert 0 <= b.x0 < b.x1 <= SIZE and 0 <= b.y0 < b.y1 <= SIZE
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        in_lung = [MplPath(pts[JSRT166_ORGANS[o]]).contains_point((cx, cy)) for o in ("right_lung", "left_lung")]
        assert any(in_lung), (seed, b)
        side = max(b.x1 - b.x0, b.y1 - b.y0)
        if label == "Nodule":
            assert 0.02 * SIZE <= side <= 0.07 * SIZE
        else:
            assert side >= 0.06 * SIZE
        # same anatomy and noise with and without the lesion: it brightens its box and nothing far away
        sl = np.s_[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))]
        assert (px[sl] - ref[sl]).mean() > 0.05
        outside = np.ones_like(px, bool)
        outside[max(0, int(b.y0) - 4):int(b.y1) + 5, max(0, int(b.x0) - 4):int(b.x1) + 5] = False
        assert np.abs(px - ref)[outside].mean() < 0.02


def test_deterministic_and_varied():
    a = make_phantom(np.random.default_rng(7), size=SIZE)
    b = make_phantom(7, size=SIZE)
    c = make_phantom(np.random.default_rng(8), size=SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert np.abs(a[0] - c[0]).mean() > 0.01
    assert np.abs(a[1] - c[1]).max() > 1.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="64"):
        make_phantom(0, size=32)
    with pytest.raises(ValueError, match="Effusion"):
        make_phantom(0, size=SIZE, lesions=["Effusion"])
    with pytest.raises(ValueError):
        make_phantom_pack("/nonexistent-never-written", n_images=0)


def test_phantom_pack(tmp_path):
    m = make_phantom_pack(tmp_path / "p", n_images=12, size=SIZE, seed=1)
    assert isinstance(m, Manifest) and len(m) == 12
    df = m.df
    assert (df["dataset"] == "phantom").all() and (df["split"] == "train").all()
    assert (df["width"] == SIZE).all() and (df["height"] == SIZE).all()
    assert (df["landmark_scheme"] == "jsrt166").all()
    assert sorted(m.label_names) == sorted(LESION_LABELS)
    assert df["id"].iloc[0] == "phantom/phantom_0000"
    n_normal = int(df["normal"].sum())
    assert 0 < n_normal < 12
    for i in range(len(m)):
        labels = {b.label for b in m.boxes(i)}
        assert bool(df["normal"].iloc[i]) == (not labels)
        for lab in LESION_LABELS:
            assert df[f"label:{lab}"].iloc[i] == (1.0 if lab in labels else 0.0)
        assert m.landmarks(i).shape == (166, 2)
        png = Image.open(df["path"].iloc[i])
        assert png.mode == "L" and png.size == (SIZE, SIZE)
    # the PNG is the 8-bit rendering of make_phantom([seed, i]) and the manifest round-trips
    px, pts, boxes = make_phantom(np.random.default_rng([1, 3]), size=SIZE)
    stored = np.asarray(Image.open(df["path"].iloc[3]), dtype=np.float32) / 255.0
    assert np.abs(stored - px).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_allclose(m.landmarks(3), pts)
    assert m.boxes(3) == boxes
    loaded = Manifest.load(tmp_path / "p" / "manifest.parquet")
    assert loaded.ids == m.ids and loaded.boxes(3) == m.boxes(3)
    # deterministic per seed
    m2 = make_phantom_pack(tmp_path / "q", n_images=3, size=SIZE, seed=1)
    for i in range(3):
        assert (tmp_path / "p" / "images" / f"phantom_{i:04d}.png").read_bytes() == \
            (tmp_path / "q" / "images" / f"phantom_{i:04d}.png").read_bytes()
    assert m2.boxes(1) == m.boxes(1)
