"""Patient-level splits, nested label fractions, duplicate groups (BR-17), views and harmonisation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import (HARMONISED_LABELS, HARMONISED_MAP, filter_views, harmonise, read_tbx11k,
                             view_counts)
from leader.datasets.harmonise import mapping_table
from leader.datasets.splits import (assign_splits, duplicate_groups, fraction_keys, group_ids, label_fraction,
                                    nested_fractions, split_leaks)
from leader.datasets.views import resolve_views
from leader.manifest import make_manifest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def _toy(n_patients: int = 200, seed: int = 0, dataset: str = "toy", official: bool = False):
    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 6))):
            recs.append({"id": f"{dataset}/p{p}_{k}", "dataset": dataset, "patient_id": f"p{p}",
                         "split": ("test" if p % 5 == 0 else "train") if official else "train",
                         "labels": {"Nodule": float(rng.integers(0, 2))}})
    return make_manifest(recs)


def test_patient_split_disjoint_deterministic_and_sized():
    m = _toy()
    a = assign_splits(m, val=0.1, test=0.2, seed=7)
    b = assign_splits(m.subset(np.arange(len(m))[::-1]), val=0.1, test=0.2, seed=7)  # row order irrelevant
    assert split_leaks(a) == {}
    pa = a.df.groupby("patient_id")["split"].first().to_dict()
    pb = b.df.groupby("patient_id")["split"].first().to_dict()
    assert pa == pb
    counts = a.df.groupby("split")["patient_id"].nunique().to_dict()
    assert counts == {"test": 40, "val": 20, "train": 140}
    c = assign_splits(m, val=0.1, test=0.2, seed=8)
    assert c.df["split"].tolist() != a.df["split"].tolist()  # another seed, another split
    with pytest.raises(ValueError, match="val \\+ test"):
        assign_splits(m, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="test must be in"):
        assign_splits(m, test=1.2)


def test_official_split_kept_and_val_carved_by_patient():
    m = _toy(official=True)
    s = assign_splits(m, val=0.1, test=0.3, seed=1)
    assert (s.df.loc[m.df["split"] == "test", "split"] == "test").all()  # official test untouched
    assert set(s.df["split"]) == {"train", "val", "test"}
    assert split_leaks(s) == {}
    n_train_patients = m.df.loc[m.df["split"] == "train", "patient_id"].nunique()
    assert s.df.loc[s.df["split"] == "val", "patient_id"].nunique() == round(0.1 * n_train_patients)
    kept = assign_splits(m, val=0.1, carve_val=False)
    assert kept.df["split"].tolist() == m.df["split"].tolist()
    resplit = assign_splits(m, respect_official=False, seed=1)
    assert split_leaks(resplit) == {}
    # a patient on both sides of an official split is reported
    bad = m.df.copy()
    bad.loc[bad.index[0], "split"] = "test" if bad["split"].iloc[0] == "train" else "train"
    from leader.manifest import Manifest

    leaks = split_leaks(Manifest(bad))
    if m.df["patient_id"].iloc[0] == m.df["patient_id"].iloc[1]:
        assert list(leaks) == [f"toy/{m.df['patient_id'].iloc[0]}"]


def test_nested_fractions_deterministic_patient_disjoint():
    m = assign_splits(_toy(400), val=0.1, test=0.1, seed=0)
    keys = fraction_keys(m, seed=3)
    assert np.isnan(keys[m.df["split"].to_numpy() != "train"]).all()
    masks = {f: label_fraction(m, f, seed=3) for f in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)}
    fs = sorted(masks)
    for lo, hi in zip(fs, fs[1:]):
        assert not (masks[lo] & ~masks[hi]).any()  # nested
    n_train = int((m.df["split"] == "train").sum())
    assert int(masks[1.0].sum()) == n_train
    assert 0 < int(masks[0.01].sum()) <= 0.01 * n_train + 5
    g = group_ids(m)
    for f, mk in masks.items():
        assert not set(g[mk]) & set(g[~mk]), f  # a patient is all in or all out
        assert abs(int(mk.sum()) - f * n_train) <= 5  # at most one patient (<= 5 images) off
    # deterministic, and independent of row order
    again = label_fraction(m.subset(np.arange(len(m))[::-1]), 0.1, seed=3)[::-1]
    assert np.array_equal(again, masks[0.1])
    other = label_fraction(m, 0.1, seed=4)
    assert not np.array_equal(other, masks[0.1])
    subsets = nested_fractions(m, (0.05, 0.1), seed=3)
    assert set(subsets[0.05].ids) <= set(subsets[0.1].ids)
    with pytest.raises(ValueError, match="fraction must be in"):
        label_fraction(m, 0.0)


def test_fractions_per_dataset():
    m = make_manifest([])
    from leader.manifest import Manifest

    m = Manifest.concat([_toy(100, dataset="a"), _toy(300, seed=1, dataset="b")])
    mk = label_fraction(m, 0.1)
    for d in ("a", "b"):
        rows = m.df["dataset"].to_numpy() == d
        assert abs(mk[rows].sum() - 0.1 * rows.sum()) <= 5  # each dataset gets ~10 %


def test_br17_duplicate_check_keeps_copies_on_one_side(tmp_path, real_pack):
    # TBX11K contains Shenzhen images: a "Shenzhen" PNG byte-identical to tb/tb0005.png
    tbx = read_tbx11k(real_pack / "tbx11k")
    sz = tmp_path / "shenzhen"
    sz.mkdir()
    shutil.copyfile(real_pack / "tbx11k" / "imgs" / "tb" / "tb0005.png", sz / "CHNCXR_0327_1.png")
    Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(sz / "CHNCXR_0001_0.png")
    from leader.datasets import read_shenzhen
    from leader.manifest import Manifest

    with pytest.warns(UserWarning):
        nlm = read_shenzhen(sz)
    m = Manifest.concat([tbx, nlm])
    dup = duplicate_groups(m)
    i, j = m.index_of("tbx11k/tb0005"), m.index_of("shenzhen/CHNCXR_0327_1")
    assert dup[i] == dup[j] and len(set(dup)) == len(m) - 1  # exactly one pair found
    g = group_ids(m, duplicates=dup)
    assert g[i] == g[j]
    for seed in range(5):
        s = assign_splits(m, val=0.2, test=0.4, seed=seed, groups=g)
        assert s.df["split"].iloc[i] == s.df["split"].iloc[j]
        assert split_leaks(s, g) == {}


def test_views_resolution():
    assert resolve_views("frontal") == ("PA", "AP")
    assert resolve_views(["pa", "ll"]) == ("PA", "LATERAL")
    assert resolve_views("all") is None
    assert resolve_views(["frontal", "ap axial"]) == ("PA", "AP", "AP AXIAL")
    with pytest.raises(ValueError, match="unknown view group"):
        resolve_views("oblique")
    m = make_manifest([{"id": f"x/{i}", "view": v} for i, v in enumerate(["PA", "AP erect", None, "SWIMMERS"])])
    assert view_counts(m) == {"PA": 1, "AP": 1, "UNKNOWN": 1, "SWIMMERS": 1}
    kept, rep = filter_views(m, "all")
    assert len(kept) == 4 and rep.excluded == 0
    kept, rep = filter_views(m, "frontal")
    assert kept.ids == ["x/0", "x/1"] and rep.unknown == 1 and rep.unusual == {"SWIMMERS": 1}


def test_harmonise_three_valued_or_and_unknown_for_unmapped():
    m = make_manifest([
        {"id": "padchest/a", "dataset": "padchest", "labels": {"atelectasis": 0, "laminar atelectasis": 1, "normal": 0}},
        {"id": "padchest/b", "dataset": "padchest", "labels": {"atelectasis": 0, "laminar atelectasis": 0, "normal": 1}},
        {"id": "padchest/c", "dataset": "padchest",
         "labels": {"atelectasis": np.nan, "laminar atelectasis": 0, "normal": np.nan}},
        {"id": "nih/d", "dataset": "nih", "labels": {"Atelectasis": 1, "Mass": 0, "Nodule": 0}},
        {"id": "folder/e", "dataset": "folder", "labels": {"Atelectasis": 0, "weird": 1}},
    ])
    h = harmonise(m)
    assert h.label_names == ["Atelectasis", "Mass", "Nodule", "Nodule/Mass"]
    at = h.df["label:Atelectasis"].to_numpy()
    assert at[0] == 1 and at[1] == 0 and np.isnan(at[2]) and at[3] == 1 and at[4] == 0
    assert np.isnan(h.df["label:Mass"].iloc[0])  # PadChest rows: no 'mass' column -> unknown
    assert h.df["label:Nodule/Mass"].iloc[3] == 0
    k = harmonise(m, keep_native=True)
    assert "native:laminar atelectasis" in k.df.columns and "native:weird" in k.df.columns
    assert k.label_names == h.label_names


def test_harmonised_vocabulary_and_docs_table():
    assert HARMONISED_LABELS[:19] == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
        "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "Tuberculosis",
        "ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis", "COVID-19")
    for d, t in HARMONISED_MAP.items():
        assert set(t) <= set(HARMONISED_LABELS), d
    # docs/datasets.md carries the same table as the code
    text = DOCS.read_text()
    for line in mapping_table().splitlines()[2:]:
        assert line in text, line


def test_cli_index_and_split(tmp_path, real_pack, capsys):
    from leader.cli import main
    from leader.manifest import Manifest

    out = tmp_path / "nih.parquet"
    rc = main(["data", "index", "--dataset", "nih", "--root", str(real_pack / "nih-chestxray14"), "--no-check-files",
               "--views", "frontal", "--harmonise", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "39 images" in text and "kept 39" in text
    m = Manifest.load(out)
    assert len(m) == 39 and "Nodule/Mass" in m.label_names and set(m.df["width"]) == {1024}
    out2 = tmp_path / "split.parquet"
    rc = main(["data", "split", "--manifest", str(out), "--out", str(out2), "--val", "0.2", "--test", "0.2",
               "--fractions", "0.1,0.5"])
    text = capsys.readouterr().out
    assert rc == 0 and "fraction 0.1:" in text
    s = Manifest.load(out2)
    assert split_leaks(s) == {} and "fraction_key" in s.df.columns
    assert set(s.df["split"]) == {"train", "val", "test"}
    # auto-detection when --dataset is omitted
    out3 = tmp_path / "auto.parquet"
    assert main(["data", "index", "--root", str(real_pack / "tbx11k"), "--out", str(out3)]) == 0
    assert len(Manifest.load(out3)) == 3
