"""leader.landmarks: jsrt166 organ layout and the ten named landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leader.landmarks import (
    JSRT166_ORGANS,
    LANDMARK_NAMES,
    as_points,
    lung_bbox,
    named_landmarks,
    organ_points,
)

JSRT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-cxr" / "jsrt-hybridgnet" / "landmarks"
JSRT_FILES = sorted(JSRT.glob("*.npy")) if JSRT.is_dir() else []


def test_organ_layout_matches_jsrt166():
    sizes = {k: s.stop - s.start for k, s in JSRT166_ORGANS.items()}
    assert sizes == {"right_lung": 44, "left_lung": 50, "heart": 26, "right_clavicle": 23, "left_clavicle": 23}
    covered = np.concatenate([np.arange(166)[s] for s in JSRT166_ORGANS.values()])
    assert covered.tolist() == list(range(166))
    assert len(LANDMARK_NAMES) == 10 and len(set(LANDMARK_NAMES)) == 10


def _synthetic() -> np.ndarray:
    """Hand-made contours with known extremes (1024-px frame, patient's right = image left)."""
    p = np.zeros((166, 2))
    t = np.linspace(0, 2 * np.pi, 44, endpoint=False)
    p[0:44] = np.c_[300 + 100 * np.cos(t), 500 + 300 * np.sin(t)]        # right lung ellipse
    t = 1.5 * np.pi + np.linspace(0, 2 * np.pi, 50, endpoint=False)   # point 44 is the apex
    p[44:94] = np.c_[720 + 100 * np.cos(t), 500 + 300 * np.sin(t)]       # left lung ellipse
    t = np.linspace(0, 2 * np.pi, 26, endpoint=False)
    p[94:120] = np.c_[560 + 150 * np.cos(t), 650 + 80 * np.sin(t)]       # heart ellipse
    s = np.linspace(0, 1, 23)
    p[120:143] = np.c_[200 + 250 * s, 150 + 60 * s + 5 * np.sin(9 * s)]  # right clavicle: lateral (200,150) -> medial (450,210)
    p[143:166] = np.c_[824 - 250 * s, 150 + 60 * s + 5 * np.sin(9 * s)]  # left clavicle: lateral (824,150) -> medial (574,210)
    return p


def test_named_landmarks_on_known_shapes():
    p = _synthetic()
    lm = named_landmarks(p)
    assert list(lm) == list(LANDMARK_NAMES)
    assert lm["right_lung_apex"] == pytest.approx((300.0, 200.0), abs=1e-9)
    assert lm["left_lung_apex"] == pytest.approx((720.0, 200.0), abs=1e-9)
    # heart: min-x point is the left vertex of the ellipse; apex = argmax(x + y)
    assert lm["right_heart_border"] == pytest.approx((410.0, 650.0), abs=1e-9)
    hx, hy = lm["heart_apex"]
    assert hx > 660 and hy > 680
    # costophrenic angles: lowest-lateral points (image-left for the right lung)
    rx, ry = lm["right_costophrenic_angle"]
    lx, ly = lm["left_costophrenic_angle"]
    assert rx < 300 and ry > 700 and lx > 720 and ly > 700
    assert lm["right_clavicle_lateral"] == pytest.approx((200.0, 150.0), abs=1e-9)
    assert lm["right_clavicle_medial"][0] == pytest.approx(450.0)
    assert lm["left_clavicle_lateral"] == pytest.approx((824.0, 150.0), abs=1e-9)
    assert lm["left_clavicle_medial"][0] == pytest.approx(574.0)
    # every landmark is a contour point
    for x, y in lm.values():
        assert np.min(np.hypot(p[:, 0] - x, p[:, 1] - y)) == 0.0


def test_flattened_input_and_validation():
    p = _synthetic()
    assert named_landmarks(p.reshape(-1)) == named_landmarks(p)
    assert as_points(p.reshape(-1)).shape == (166, 2)
    with pytest.raises(ValueError, match="166"):
        named_landmarks(p[:100])
    bad = p.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        named_landmarks(bad)
    with pytest.raises(KeyError, match="spleen"):
        organ_points(p, "spleen")
    assert organ_points(p, "heart").shape == (26, 2)
    x0, y0, x1, y1 = lung_bbox(p)
    assert (x0, y0, x1, y1) == pytest.approx((200.0, 200.0, 820.0, 800.0), abs=0.5)


@pytest.mark.realdata
@pytest.mark.skipif(not JSRT_FILES, reason="real JSRT landmark files not available")
@pytest.mark.parametrize("path", JSRT_FILES, ids=[p.stem for p in JSRT_FILES])
def test_named_landmarks_on_real_jsrt(path):
    p = np.load(path).reshape(-1, 2)
    lm = named_landmarks(p)
    g = {k: np.array(v) for k, v in lm.items()}
    # apices at the top, costophrenic angles at the bottom of the 1024-px image
    assert g["right_lung_apex"][1] < 200 and g["left_lung_apex"][1] < 200
    assert g["right_costophrenic_angle"][1] > 650 and g["left_costophrenic_angle"][1] > 650
    # patient's right = image left
    for a, b in (("right_lung_apex", "left_lung_apex"), ("right_costophrenic_angle", "left_costophrenic_angle"),
                 ("right_clavicle_medial", "left_clavicle_medial"), ("right_clavicle_lateral", "left_clavicle_lateral")):
        assert g[a][0] < 512 < g[b][0], (a, b)
    # costophrenic angles are lateral to the apices
    assert g["right_costophrenic_angle"][0] < g["right_lung_apex"][0]
    assert g["left_costophrenic_angle"][0] > g["left_lung_apex"][0]
    # heart: right border on the image left of the apex; apex on the patient's left, low
    assert g["right_heart_border"][0] < 460 and g["heart_apex"][0] > 650
    assert g["heart_apex"][1] > 500
    # clavicles: medial end nearer the midline and lower than the lateral end
    assert g["right_clavicle_medial"][0] > g["right_clavicle_lateral"][0] + 150
    assert g["left_clavicle_medial"][0] < g["left_clavicle_lateral"][0] - 150
    assert g["right_clavicle_medial"][1] > g["right_clavicle_lateral"][1]
    assert g["left_clavicle_medial"][1] > g["left_clavicle_lateral"][1]
    # clavicle ends above the heart, apices above the costophrenic angles
    assert g["right_clavicle_medial"][1] < g["right_heart_border"][1]


@pytest.mark.realdata
@pytest.mark.skipif(not (JSRT / "JPCLN004.npy").is_file(), reason="real JSRT landmark files not available")
def test_named_landmarks_regression_jpcln004():
    lm = named_landmarks(np.load(JSRT / "JPCLN004.npy"))
    rounded = {k: (round(x), round(y)) for k, (x, y) in lm.items()}
    assert rounded == {
        "right_lung_apex": (383, 120), "left_lung_apex": (663, 114),
        "right_costophrenic_angle": (144, 942), "left_costophrenic_angle": (876, 928),
        "right_heart_border": (413, 624), "heart_apex": (741, 806),
        "right_clavicle_medial": (462, 247), "left_clavicle_medial": (587, 242),
        "right_clavicle_lateral": (249, 176), "left_clavicle_lateral": (790, 166),
    }
