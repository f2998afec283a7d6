"""Readers on the full-size real metadata shipped in the torchxrayvision wheel (read in place).

Every number asserted here was computed from the files themselves (independently of the
readers, with pandas / the csv module) — see the comments. Parsed manifests are cached in
module-scoped fixtures so that each big CSV is read once.
"""

from __future__ import annotations

import collections
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leader.datasets import (HARMONISED_LABELS, UnreadableRowWarning, filter_views, harmonise, read_chexpert,
                             read_dataset, read_padchest, read_rsna, read_siim, read_vindr)
from leader.datasets.splits import assign_splits, fraction_keys, group_ids, label_fraction, split_leaks


def _txv() -> Path:
    """torchxrayvision's data folder, located without importing the package (and torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _need(name: str) -> Path:
    p = _txv() / name
    if not p.is_file():
        pytest.skip(f"{name} not in the torchxrayvision wheel")
    return p


@pytest.fixture(scope="module")
def nih_timed():
    d = _txv()
    _need("Data_Entry_2017_v2020.csv.gz")
    _need("BBox_List_2017.csv.gz")
    t0 = time.process_time()
    m = read_dataset("nih", d, check_files=False)
    return m, time.process_time() - t0


@pytest.fixture(scope="module")
def nih(nih_timed):
    return nih_timed[0]


@pytest.fixture(scope="module")
def chexpert():
    p = _need("chexpert_train.csv.gz")
    return read_chexpert(p.parent, metadata=p, check_files=False)


@pytest.fixture(scope="module")
def padchest():
    p = _need("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = read_padchest(p.parent, metadata=p, check_files=False)
    return m, w


@pytest.fixture(scope="module")
def vindr():
    p = _need("vinbigdata-train.csv.gz")
    return {pol: read_vindr(p.parent, metadata=p, radiologists=pol, check_files=False)
            for pol in ("all", "union", "consensus")}


# ----------------------------------------------------------------------------- NIH


def test_nih_full(nih):
    m = nih
    # Data_Entry_2017_v2020.csv.gz: 112,120 rows, 30,805 distinct Patient ID
    assert len(m) == 112_120 and m.df["patient_id"].nunique() == 30_805
    # BBox_List_2017.csv.gz: 984 boxes on 880 images
    nb = m.df["boxes"].map(len)
    assert int(nb.sum()) == 984 and int((nb > 0).sum()) == 880
    assert set(m.df["view"]) == {"PA", "AP"}
    # the box frame is 1024 px and every box lies in the image
    for bl in m.df["boxes"][nb > 0]:
        for b in bl:
            assert 0 <= b["x0"] < b["x1"] <= 1024.5 and 0 <= b["y0"] < b["y1"] <= 1024.5


def test_nih_harmonised_and_patient_split(nih):
    h = harmonise(nih)
    assert h.label_names[:14] == list(HARMONISED_LABELS[:14])
    assert "Nodule/Mass" in h.label_names
    nm = h.df["label:Nodule/Mass"].to_numpy()
    either = (nih.df["label:Nodule"].to_numpy() == 1) | (nih.df["label:Mass"].to_numpy() == 1)
    assert np.array_equal(nm == 1, either) and not np.isnan(nm).any()
    # labels NIH does not annotate are unknown, not negative
    assert h.df["label:Effusion"].notna().all()
    s = assign_splits(nih, val=0.1, test=0.2, seed=3)
    assert split_leaks(s) == {}
    n_pat = s.df.groupby("split")["patient_id"].nunique().to_dict()
    assert n_pat == {"test": 6161, "val": 3080, "train": 21564}  # round(0.2*30805), round(0.1*30805)
    assert sum(n_pat.values()) == 30_805


def test_nih_indexes_in_seconds(nih_timed):
    # CPU time of read_nih on the 112,120-row CSV (~2 s); benchmarks/bench_index.py has the
    # wall-clock figures and the 1x/4x/16x scaling
    assert nih_timed[1] < 10


def test_nih_labels_full(nih):
    m = nih
    by_label = collections.Counter(b["label"] for bl in m.df["boxes"] for b in bl)
    # BBox_List_2017: 123 'Infiltrate' rows, renamed to the Data_Entry spelling; 8 labels
    assert by_label["Infiltration"] == 123 and "Infiltrate" not in by_label and len(by_label) == 8
    assert int(m.df["normal"].sum()) == 60_361  # "No Finding"
    counts = m.label_counts().set_index("label")["positive"]
    assert counts["Hernia"] == 227 and counts["Infiltration"] == 19_894
    assert m.df["pixel_spacing"].notna().all()
    assert set(m.df["split"]) == {"train"}  # the wheel has no test_list.txt


# ------------------------------------------------------------------------ CheXpert


def test_chexpert_train_counts(chexpert):
    m = chexpert
    # chexpert_train.csv.gz: 223,414 rows; Frontal/Lateral: Frontal 191,027 / Lateral 32,387;
    # AP/PA: AP 161,590, PA 29,420, LL 16, RL 1 (all on 'Frontal' rows), blank 32,387 (laterals)
    assert len(m) == 223_414
    assert (m.df["frontal_lateral"] == "Frontal").sum() == 191_027
    assert m.df["view"].value_counts().to_dict() == {"AP": 161_590, "LATERAL": 32_387, "PA": 29_420, "UNKNOWN": 17}
    assert m.df["patient_id"].nunique() == 64_540 and m.df["study_id"].nunique() == 187_641
    assert set(m.df["split"]) == {"train"}
    # the 17 contradictory 'Frontal' + LL/RL rows are never counted as frontal
    f, rep = filter_views(m, "frontal")
    assert len(f) == 191_010 and rep.unknown == 17 and rep.excluded == 32_404
    lat, _ = filter_views(m, "lateral")
    assert len(lat) == 32_387


def test_chexpert_label_policies_on_real_counts(chexpert):
    c = chexpert.label_counts().set_index("label")
    # Edema in train.csv: 1.0 x 52,246, 0.0 x 20,726, -1.0 x 12,984, blank x 137,458
    assert (c.loc["Edema", "positive"], c.loc["Edema", "negative"], c.loc["Edema", "unknown"]) == (
        52_246, 20_726 + 137_458, 12_984)
    # No Finding is never uncertain: 22,381 ones, the rest blank
    assert (c.loc["No Finding", "positive"], c.loc["No Finding", "unknown"]) == (22_381, 0)
    assert int(chexpert.df["normal"].sum()) == 22_381
    assert len(chexpert.label_names) == 14
    h = harmonise(chexpert)
    assert "Effusion" in h.label_names and "Pleural Effusion" not in h.label_names
    # Pleural Effusion: 86,187 ones, 11,628 uncertain -> Effusion 86,187 positive, 11,628 unknown
    hc = h.label_counts().set_index("label")
    assert (hc.loc["Effusion", "positive"], hc.loc["Effusion", "unknown"]) == (86_187, 11_628)
    # labels CheXpert does not have are unknown after harmonisation
    assert "Infiltration" not in h.label_names


# ------------------------------------------------------------------------ PadChest


def test_padchest_counts(padchest):
    m, w = padchest
    # 160,861 rows = images, 67,625 PatientID, 109,931 StudyID
    assert len(m) == 160_861 and m.df["id"].is_unique
    assert m.df["patient_id"].nunique() == 67_625 and m.df["study_id"].nunique() == 109_931
    # Projection: PA 91,728; L 49,579; AP_horizontal 14,346 + AP 4,559; COSTAL 630; EXCLUDE 11; UNK 8
    assert m.df["view"].value_counts().to_dict() == {
        "PA": 91_728, "LATERAL": 49_579, "AP": 18_905, "COSTAL": 630, "EXCLUDE": 11, "UNKNOWN": 8}
    # 103 rows have the literal 'nan' as Labels: all labels unknown, one counted warning
    msgs = [str(x.message) for x in w if issubclass(x.category, UnreadableRowWarning)]
    assert len(msgs) == 1 and "103 row(s)" in msgs[0] and "216840111366964013829543166512013354131013504_02-094-008.png" in msgs[0]
    L = m.labels_array()
    assert int(np.isnan(L).all(axis=1).sum()) == 103
    # 193 distinct terms after stripping (' pneumonia' == 'pneumonia'); 'normal' in 50,616 lists
    assert len(m.label_names) == 193 and int(m.df["normal"].sum()) == 50_616
    c = m.label_counts().set_index("label")
    assert c.loc["normal", "positive"] == 50_616 and c.loc["pneumonia", "unknown"] == 103
    assert set(m.df["width"].dropna()) and m.df["width"].notna().all()  # Columns_DICOM


def test_padchest_harmonised(padchest):
    m, _ = padchest
    h = harmonise(m)
    assert "Pneumonia" in h.label_names and "Effusion" in h.label_names
    raw = m.df
    pn = ((raw["label:pneumonia"] == 1) | (raw["label:atypical pneumonia"] == 1)).to_numpy()
    assert np.array_equal(h.df["label:Pneumonia"].to_numpy() == 1, pn)
    assert int(h.df["label:Pneumonia"].isna().sum()) == 103


# --------------------------------------------------------------------------- RSNA


def test_rsna_rows_and_patients():
    p = _need("kaggle_stage_2_train_labels.csv.zip")
    raw = pd.read_csv(p)
    assert len(raw) == 30_227  # one row per box (BR-07)
    m = read_rsna(p.parent, labels_csv=p, check_files=False)
    assert len(m) == 26_684 and m.df["patient_id"].nunique() == 26_684
    nb = m.df["boxes"].map(len)
    # 3,266 ids with 2 rows, 119 with 3, 13 with 4 (all Target=1) -> 9,555 boxes on 6,012 images
    assert nb.value_counts().to_dict() == {0: 20_672, 1: 2_614, 2: 3_266, 3: 119, 4: 13}
    assert int(nb.sum()) == 9_555 and int(m.df["label:Pneumonia"].sum()) == 6_012


# --------------------------------------------------------------------------- SIIM


def test_siim_rows_and_images():
    p = _need("siim-pneumothorax-train-rle.csv.gz")
    m = read_siim(p.parent, rle_csv=p, check_files=False)
    # 12,954 rows for 12,047 ImageIds; 2,669 images with a mask (3,576 mask rows), 9,378 '-1'
    assert len(pd.read_csv(p)) == 12_954
    assert len(m) == 12_047
    assert int(m.df["label:Pneumothorax"].sum()) == 2_669
    assert int((m.df["label:Pneumothorax"] == 0).sum()) == 9_378


# -------------------------------------------------------------------------- VinDr


def test_vindr_rows_images_radiologists(vindr):
    m = vindr["all"]
    p = _need("vinbigdata-train.csv.gz")
    raw = pd.read_csv(p)
    assert len(raw) == 67_914  # rows
    assert len(m) == 15_000  # images
    rads = {r for s in m.df["rad_ids"] for r in s.split(",")}
    assert len(rads) == 17 and rads == {f"R{i}" for i in range(1, 18)}
    assert set(m.df["rad_ids"].str.count(",")) == {2}  # 3 readers per image
    # 36,096 finding rows (boxes) on 4,394 images; 31,818 'No finding' rows; 10,606 images
    # where all three readers said 'No finding'
    nb = m.df["boxes"].map(len)
    assert int(nb.sum()) == 36_096 and int((nb > 0).sum()) == 4_394
    assert int(m.df["normal"].sum()) == 10_606
    assert len(m.label_names) == 14 and "No finding" not in m.label_names
    assert set(m.df["split"]) == {"train"}
    # box labels use the canonical names; every box has its reader
    assert all(len(b) == len(r) for b, r in zip(m.df["boxes"], m.df["box_rads"]))


def test_vindr_policies_real(vindr):
    a, u, c = vindr["all"], vindr["union"], vindr["consensus"]
    nb = {k: int(v.df["boxes"].map(len).sum()) for k, v in vindr.items()}
    assert nb["consensus"] <= nb["union"] <= nb["all"]
    assert (nb["union"], nb["consensus"]) == (22_511, 8_821)  # regression values of the grouping
    # consensus boxes are marked by >= 2 of 3 readers
    assert all(len(r.split(",")) >= 2 for rl in c.df["box_rads"] for r in rl)
    ca = a.label_counts().set_index("label")
    cc = c.label_counts().set_index("label")
    # any-reader positives = consensus positives + disagreements; negatives agree
    assert (ca["positive"] == cc["positive"] + cc["unknown"]).all()
    assert (ca["negative"] == cc["negative"]).all()
    assert ca.loc["Aortic enlargement", "positive"] == 3_067 and cc.loc["Aortic enlargement", "positive"] == 2_346
    assert u.label_counts().equals(a.label_counts())


def test_vindr_harmonised(vindr):
    h = harmonise(vindr["all"])
    assert {"Effusion", "Fibrosis", "Nodule/Mass", "Aortic Enlargement", "Pleural_Thickening"} <= set(h.label_names)
    assert int(h.df["label:Effusion"].sum()) == int(vindr["all"].df["label:Pleural effusion"].sum())


# ---------------------------------------------------------- fractions on real sizes


def test_fractions_real_chexpert(chexpert):
    keys = fraction_keys(chexpert, seed=0)
    prev = None
    for f in (0.01, 0.05, 0.1, 0.5, 1.0):
        mask = label_fraction(chexpert, f, keys=keys)
        n = int(mask.sum())
        assert abs(n - f * len(chexpert)) <= 200  # patients have few images each
        if prev is not None:
            assert not (prev & ~mask).any()  # nested
        prev = mask
    g = group_ids(chexpert)
    inside = set(g[label_fraction(chexpert, 0.05, keys=keys)])
    outside = set(g[~label_fraction(chexpert, 0.05, keys=keys)])
    assert not inside & outside  # patient-disjoint
    assert int(label_fraction(chexpert, 1.0, keys=keys).sum()) == 223_414
    assert collections.Counter(np.isnan(keys)) == {False: 223_414}
