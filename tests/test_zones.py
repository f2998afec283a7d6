"""Lung-zone anatomy targets (leader.zones) from hand-made masks with known zones, and counts on
the real packs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import index_root, read_jsrt
from leader.errors import ManifestError
from leader.manifest import Box, make_manifest
from leader.zones import PATCH_COLUMNS, ZONE_LABELS, anatomy_patches, lung_sides, zone_masks, zone_patches

W, H = 100, 80


def _lungs():
    """Patient's right lung = image left (x 10-39, y 10-69); left lung = image right
    (x 60-89, y 20-69)."""
    right = np.zeros((H, W), bool)
    right[10:70, 10:40] = True
    left = np.zeros((H, W), bool)
    left[20:70, 60:90] = True
    return right, left


def test_zone_masks_hand_made():
    right, left = _lungs()
    z = zone_masks(right, left)
    assert list(z) == list(ZONE_LABELS)
    stack = np.stack(list(z.values()))
    assert (stack.sum(axis=0) == 1).all()  # disjoint and covering the image

    def zone_at(x, y):
        return [k for k, v in z.items() if v[y, x]][0]

    # right lung rows 10-69: thirds 10-29 / 30-49 / 50-69
    assert [zone_at(25, y) for y in (10, 29, 30, 49, 50, 69)] == [
        "right_upper", "right_upper", "right_middle", "right_middle", "right_lower", "right_lower"]
    # left lung rows 20-69 (its own extent): cuts at 36.67 and 53.33
    assert [zone_at(75, y) for y in (20, 36, 37, 53, 54, 69)] == [
        "left_upper", "left_upper", "left_middle", "left_middle", "left_lower", "left_lower"]
    # between the lungs where both are present; above the left lung it is outside
    assert zone_at(50, 40) == "mediastinum" and zone_at(40, 20) == "mediastinum" and zone_at(59, 69) == "mediastinum"
    assert zone_at(50, 15) == "outside" and zone_at(50, 75) == "outside" and zone_at(5, 40) == "outside"
    assert int(z["mediastinum"].sum()) == 50 * 20  # rows 20-69, columns 40-59
    with pytest.raises(ValueError, match="empty"):
        zone_masks(right, np.zeros_like(left))


def _mask_file(path: Path, a: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8) * 255).save(path)
    return str(path)


def test_one_mask_of_both_lungs_is_split(tmp_path):
    right, left = _lungs()
    both = right | left
    touching = both.copy()
    touching[40:44, 40:60] = True  # a bridge: one connected component
    recs = [{"id": f"x/{k}", "path": f"{k}.png", "width": W, "height": H, "view": "PA",
             "lung_mask": _mask_file(tmp_path / f"{k}.png", a)} for k, a in (("two", both), ("one", touching))]
    m = make_manifest(recs)
    r, lft, src = lung_sides(m, 0)
    assert src == "mask"
    np.testing.assert_array_equal(r, right)
    np.testing.assert_array_equal(lft, left)  # the component on the image left is the patient's right
    r, lft, _ = lung_sides(m, 1)  # split at the narrowest column of the middle third
    assert r[:, :40].sum() == right.sum() and lft[:, 60:].sum() == left.sum()
    assert not (r & lft).any() and (r | lft).sum() == touching.sum()


def test_zone_patches_labels_follow_the_zones(tmp_path):
    right, left = _lungs()
    f = _mask_file(tmp_path / "m.png", right | left)
    big = np.kron(right | left, np.ones((4, 4), bool))  # 400 x 320 image, same geometry
    fb = _mask_file(tmp_path / "big.png", big)
    m = make_manifest([{"id": "x/a", "path": "a.png", "width": W, "height": H, "view": "PA", "lung_mask": f},
                       {"id": "x/b", "path": "b.png", "width": 4 * W, "height": 4 * H, "view": "AP", "lung_mask": fb},
                       {"id": "x/lat", "path": "c.png", "width": W, "height": H, "view": "LATERAL", "lung_mask": f},
                       {"id": "x/unk", "path": "d.png", "width": W, "height": H, "lung_mask": f}])
    z = zone_patches(m, n_per_zone=3, size=160, reference_width=1024)
    assert list(z.columns[:8]) == list(PATCH_COLUMNS) and set(z["kind"]) == {"zone"}
    assert set(z["image_id"]) == {"x/a", "x/b"}  # frontal views only
    assert not z["coarse"].any() and set(z["source"]) == {"mask"}
    zones = {"x/a": zone_masks(right, left), "x/b": zone_masks(*lung_sides(m, 1)[:2])}
    for r in z.itertuples():
        side = r.x1 - r.x0
        assert side == (16 if r.image_id == "x/a" else 62) and r.y1 - r.y0 == side  # 160 px at 1024 wide
        assert 0 <= r.x0 and r.x1 <= m.df.set_index("id").loc[r.image_id, "width"]
        cx, cy = int(r.x0 + side // 2), int(r.y0 + side // 2)
        assert zones[r.image_id][r.label][cy, cx], (r.patch_id, cx, cy)
        assert r.cover >= 0.5 or r.label == "mediastinum"
    counts = z.groupby("image_id")["label"].value_counts()
    assert (counts.loc["x/b"] == 3).all() and len(counts.loc["x/b"]) == 8
    # deterministic, independent of row order; another seed moves the patches
    z2 = zone_patches(m.subset([1, 0, 2, 3]), n_per_zone=3, size=160, reference_width=1024)
    assert z.set_index("patch_id").sort_index().equals(z2.set_index("patch_id").sort_index())
    z3 = zone_patches(m, n_per_zone=3, size=160, reference_width=1024, seed=1)
    assert not np.array_equal(z[["x0", "y0"]].to_numpy(), z3[["x0", "y0"]].to_numpy())


def test_coarse_boxes_and_errors(tmp_path):
    recs = [{"id": "x/box", "path": "a.png", "width": W, "height": H, "view": "PA",
             "anatomy_boxes": [Box(10, 10, 40, 70, "right lung"), Box(60, 20, 90, 70, "left lung")]},
            {"id": "x/none", "path": "b.png", "width": W, "height": H, "view": "PA"}]
    m = make_manifest(recs)
    z = zone_patches(m, n_per_zone=1, size=160, reference_width=1024)
    assert set(z["image_id"]) == {"x/box"} and z["coarse"].all() and set(z["source"]) == {"boxes"}
    r, lft, src = lung_sides(m, 0)
    np.testing.assert_array_equal(r, _lungs()[0])
    assert zone_patches(m, use_boxes=False).empty
    with pytest.raises(ManifestError, match="x/none: no lung mask"):
        lung_sides(m, 1)
    bad = make_manifest([{"id": "x/empty", "path": "e.png", "width": W, "height": H, "view": "PA",
                          "lung_mask": _mask_file(tmp_path / "e.png", np.zeros((H, W), bool))}])
    with pytest.raises(ManifestError, match="x/empty: the lung mask is empty"):
        zone_patches(bad)
    skipped = zone_patches(bad, on_error="skip")
    assert skipped.empty and list(skipped.attrs["skipped"]) == ["x/empty"]
    with pytest.raises(ValueError, match="min_cover"):
        zone_patches(m, min_cover=0)


def test_patch_columns_match_leader_patches():
    from leader.patches import PATCH_COLUMNS as P

    assert PATCH_COLUMNS == P


def test_jsrt_zones_and_landmarks(real_pack):
    m = read_jsrt(real_pack / "jsrt-hybridgnet")
    a = anatomy_patches(m, n_per_zone=2)
    # 8 PA images with jsrt166 contours: 8 zones x 2 patches + 10 named landmarks each
    assert a["kind"].value_counts().to_dict() == {"zone": 128, "landmark": 80}
    assert set(a.loc[a["kind"] == "zone", "source"]) == {"contours"}
    ru = a[a["label"] == "right_upper"]
    assert ((ru["x0"] + ru["x1"]) / 2 < 512).all()  # patient's right = image left
    lu = a[a["label"] == "left_lower"]
    assert ((lu["x0"] + lu["x1"]) / 2 > 512).all()


def test_real_large_pack_zone_count(real_pack_large):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = index_root(real_pack_large)
    z = zone_patches(m, n_per_zone=2)
    fine = z[~z["coarse"]]
    # 339 manual lung masks, 319 of them on PA / AP images (20 on laterals are not used): every
    # zone of every one of them gets its 2 patches -> 319 x 8 x 2 = 5,104 patches
    assert fine["image_id"].nunique() == 319 and len(fine) == 5_104
    assert fine["label"].value_counts().to_dict() == {k: 638 for k in ZONE_LABELS}
    # frontal images with coarse lung boxes but no mask: 30 more images (coarse)
    coarse = z[z["coarse"]]
    assert coarse["image_id"].nunique() == 30 and set(coarse["source"]) == {"boxes"}
    assert set(z["image_id"]) <= set(m.df.loc[m.df["dataset"] == "covid-ieee8023", "id"])
