"""Evaluation metrics and statistics against hand-computed values (no models, no data)."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from leader.eval.data import (csv_landmark_patches, eval_splits, label_fraction, lung_mask_from_landmarks,
                              organ_patches)
from leader.eval.ensembles import average_scores, concat_embeddings
from leader.eval.linear_probe import group_folds, probe_multiclass, probe_multilabel
from leader.eval.metrics import (UndefinedMetricWarning, binary_auc, dice, iou, kmeans_nmi, multiclass_auc,
                                 per_class_auc)
from leader.eval.retrieval import disease_retrieval, precision_at_k
from leader.eval.stats import bootstrap_ci, mean_std, results_table, ttest_ind, ttest_rel, wide_table, wilcoxon


# ------------------------------------------------------------------ AUC
def test_binary_auc_hand_computed():
    # positives 0.9, 0.7, 0.6; negatives 0.8, 0.2: 4 of 6 pairs ordered correctly
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.2, 0.6]
    assert binary_auc(y, s) == pytest.approx(4 / 6)
    # a tie between a positive and a negative counts one half: pairs (0.5,0.5)=.5, (0.5,0.1)=1
    assert binary_auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    # unknown labels (NaN) are ignored
    assert binary_auc([1, np.nan, 0], [0.9, 0.0, 0.1]) == pytest.approx(1.0)
    # a value that is neither 1 nor 0 (e.g. -1 "uncertain") is neither positive nor negative
    assert binary_auc([1, -1, 0], [0.9, 0.0, 0.1]) == pytest.approx(1.0)
    assert math.isnan(binary_auc([1, 1, np.nan], [0.2, 0.3, 0.1]))


def test_binary_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
    assert binary_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_class_with_one_label_value_is_undefined_and_left_out_with_warning():
    y = np.array([[1, 0, np.nan], [0, 0, 1], [1, 0, 1], [0, np.nan, 1]], dtype=float)
    s = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.7, 0.5, 0.9], [0.4, 0.2, 0.1]])
    with pytest.warns(UndefinedMetricWarning, match=r"B \(only one label value \(0 positive, 3 negative\)\)"):
        r = per_class_auc(y, s, ["A", "B", "C"], context="test")
    assert r.per_class["A"] == pytest.approx(1.0)      # 0.9, 0.7 vs 0.2, 0.4
    assert math.isnan(r.per_class["B"]) and "B" in r.undefined
    assert math.isnan(r.per_class["C"]) and "C" in r.undefined   # only positives known
    assert r.macro == pytest.approx(1.0)               # mean over defined classes only
    assert r.n_pos["C"] == 3 and r.n_neg["C"] == 0


def test_all_classes_undefined_gives_nan_macro():
    with pytest.warns(UndefinedMetricWarning):
        r = per_class_auc(np.ones((3, 1)), np.zeros((3, 1)), ["A"])
    assert math.isnan(r.macro)


def test_multiclass_auc_one_vs_rest():
    labels = ["a", "a", "b", "c"]
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    r = multiclass_auc(labels, p, ["a", "b", "c"])
    # a: pos .8 .6 vs neg .7 .1 -> 3/4; b: pos .2 vs .1 .3 .1 -> 2/3; c: pos .8 vs .1 .1 .1 -> 1
    assert r.per_class == pytest.approx({"a": 0.75, "b": 2 / 3, "c": 1.0})
    assert r.macro == pytest.approx((0.75 + 2 / 3 + 1) / 3)


# ------------------------------------------------------------------ Dice / IoU
def test_dice_and_iou_hand_computed():
    p = np.array([[1, 1], [0, 0]])
    t = np.array([[1, 0], [1, 0]])
    assert dice(p, t) == pytest.approx(0.5)            # 2*1 / (2 + 2)
    assert iou(p, t) == pytest.approx(1 / 3)           # 1 / 3
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0   # both empty: agreement
    assert dice(np.zeros((2, 2)), t) == 0.0
    per = dice(np.stack([p, t]), np.stack([t, t]), reduce=False)
    assert per.tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="shape"):
        dice(p, np.zeros((3, 3)))


def test_dice_and_iou_equal_sklearn_per_image():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(0)
    p = rng.random((5, 16, 16)) > 0.5
    t = rng.random((5, 16, 16)) > 0.7
    p[3] = t[3] = False                                     # both empty: 1 by convention
    P, T = p.reshape(5, -1).T, t.reshape(5, -1).T         # pixels as samples, images as labels
    np.testing.assert_allclose(dice(p, t, reduce=False), f1_score(T, P, average=None, zero_division=1.0))
    np.testing.assert_allclose(iou(p, t, reduce=False), jaccard_score(T, P, average=None, zero_division=1.0))


def test_accuracy_hand_computed():
    from leader.eval.metrics import accuracy

    assert accuracy(["a", "b", "b", "c"], ["a", "b", "c", "c"]) == 0.75
    assert accuracy([[1, 2], [3, 4]], [[1, 0], [3, 4]]) == 0.75   # element-wise, not per row
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError, match="shapes differ"):
        accuracy([1, 2], [1])


# ------------------------------------------------------------------ kNN, NMI, precision@K
def test_knn_accuracy_majority_vote_k3():
    from leader.eval.anatomy import knn_accuracy

    emb = np.array([[1, 0], [0.95, 0.05], [0.9, 0.1], [0, 1], [0.05, 0.95], [0.7, 0.3]], np.float32)
    lab = ["a", "a", "a", "b", "b", "b"]
    # 3-NN: items 0,1,2 -> a (their neighbours are a,a,b(5)); 3,4 -> b,b,+a -> b; 5 -> a,a,a -> wrong
    assert knn_accuracy(emb, lab, k=3) == pytest.approx(5 / 6)


def test_kmeans_nmi_perfect_and_undefined():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert kmeans_nmi(x, ["a", "a", "b", "b"], seed=0) == pytest.approx(1.0)
    assert math.isnan(kmeans_nmi(x, ["a"] * 4))


def test_retrieval_mean_std_over_queries_hand_computed():
    gallery = np.array([[1, 0], [0.9, 0.1], [0.1, 0.9], [0, 1]], np.float32)
    ids = ["i0", "i1", "i2", "i3"]
    labels = {"X": np.array([1, 1, 0, 0], np.float32)}
    q = np.array([[1, 0], [0, 1]], np.float32)
    # q0 from i0: ranking without i0 -> i1 (X), i2 -> P@2 = .5; q1 from i3: i2, i1 -> .5 ... and P@1 = 0
    r = disease_retrieval(q, ["X", "X"], ["i0", "i3"], gallery, ids, labels, k=1)
    assert [p["precision"] for p in r.per_query] == [1.0, 0.0]
    assert r.mean == pytest.approx(0.5) and r.std == pytest.approx(0.5)
    assert precision_at_k(q[1], gallery, labels["X"] == 1, 2, exclude=3) == pytest.approx(0.5)


# ------------------------------------------------------------------ statistics
def test_ttest_hand_computed_and_matches_scipy():
    from scipy import stats

    a, b = [1, 2, 3, 4], [2, 4, 6, 8]
    r = ttest_ind(a, b)
    # means 2.5 / 5, variances 5/3 and 20/3, pooled 25/6, se = sqrt(25/12): t = -sqrt(3), df = 6
    assert r.t == pytest.approx(-math.sqrt(3)) and r.df == 6
    ref = stats.ttest_ind(a, b)
    assert r.p == pytest.approx(ref.pvalue)
    w = ttest_ind(a, b, equal_var=False)
    refw = stats.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(refw.statistic) and w.p == pytest.approx(refw.pvalue)
    assert math.isnan(ttest_ind([1], [2, 3]).p)
    z = ttest_ind([1, 1], [2, 2])
    assert z.p == 0.0 and z.t == -math.inf


def test_ttest_welch_df_and_zero_variance_edge_cases():
    a, b = [1, 2, 3, 4], [2, 4, 6, 8]
    # Welch-Satterthwaite: (5/12 + 20/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 75/17
    w = ttest_ind(a, b, equal_var=False)
    assert w.df == pytest.approx(75 / 17) and w.t == pytest.approx(-math.sqrt(3))
    # zero variance in both samples: t = ±inf, p = 0 (means differ) / nan (equal); Welch df nan
    z = ttest_ind([3, 3, 3], [1, 1], equal_var=False)
    assert (z.t, z.p) == (math.inf, 0.0) and math.isnan(z.df)
    assert ttest_ind([3, 3, 3], [1, 1]).df == 3
    e = ttest_ind([2, 2], [2, 2])
    assert math.isnan(e.t) and math.isnan(e.p)
    # fewer than two values: nan although SciPy would still return a number
    assert math.isnan(ttest_ind([1, 2], [3]).t)


def test_paired_ttest_hand_computed():
    # d = a - b = -1, -2, -4: mean -7/3, var 7/3, se = sqrt(7/3 / 3) = sqrt(7)/3 -> t = -sqrt(7)
    # df = 2: the t(2) tail is 1/2 - t / (2 sqrt(t^2 + 2)) -> two-sided p = 1 - sqrt(7)/3
    r = ttest_rel([1, 2, 3], [2, 4, 7])
    assert r.t == pytest.approx(-math.sqrt(7)) and r.df == 2
    assert r.p == pytest.approx(1 - math.sqrt(7) / 3)
    # a pair with a NaN is dropped; constant differences: ±inf / p = 0; all equal: nan
    c = ttest_rel([1, 2, 3, float("nan")], [2, 3, 4, 5])
    assert (c.t, c.p, c.df) == (-math.inf, 0.0, 2)
    assert math.isnan(ttest_rel([1, 2], [1, 2]).p)
    assert math.isnan(ttest_rel([1], [2]).p)
    with pytest.raises(ValueError, match="length"):
        ttest_rel([1, 2, 3], [1, 2])


def test_wilcoxon_signed_rank_exact_hand_computed():
    # d = -1, -2, -3, -4, -5: rank sums W+ = 0, W- = 15; exact two-sided p = 2 * P(W+ <= 0) = 2/32
    r = wilcoxon([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert (r.statistic, r.n) == (0.0, 5) and r.p == pytest.approx(2 / 32)
    # d = +1, -2, -3, -4, -5: W+ = 1; P(W+ <= 1) = 2/32 (the empty set and {1}) -> p = 4/32
    r = wilcoxon([2, 2, 3, 4, 5], [1, 4, 6, 8, 10])
    assert r.statistic == 1.0 and r.p == pytest.approx(4 / 32)
    assert math.isnan(wilcoxon([1, 2, 3], [1, 2, 3]).p)
    assert math.isnan(wilcoxon([1], [2]).p)


def test_bootstrap_ci_hand_computed():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and
    # 97.5 % quantiles of 2000 resamples are 0 and 1
    assert bootstrap_ci([0.0, 1.0], n_resamples=2000) == (0.0, 1.0)
    # [0, 0, 0, 1]: mean of a resample = Binomial(4, 1/4) / 4; P(<= 0.5) = 0.949, P(<= 0.75) = 0.996
    # -> 95 % interval (0, 0.75); 80 %: P(0) = 0.316 > 0.1 and P(<= 0.25) = 0.738 < 0.9 -> (0, 0.5)
    assert bootstrap_ci([0, 0, 0, 1], n_resamples=4000, seed=1) == (0.0, 0.75)
    assert bootstrap_ci([0, 0, 0, 1], confidence=0.8, n_resamples=4000, seed=1) == (0.0, 0.5)
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.05, 20)
    lo, hi = bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi and bootstrap_ci(x, seed=3) == (lo, hi)  # same seed, same interval
    assert bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))  # no spread: the statistic twice
    assert bootstrap_ci([0.5, 0.5, 0.5], statistic=np.std) == (0.0, 0.0)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5, float("nan")]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(x, confidence=95)


def test_mean_std_sample_std():
    mu, sd, n = mean_std([1.0, 2.0, 3.0, float("nan")])
    assert (mu, n) == (2.0, 3) and sd == pytest.approx(1.0)
    assert math.isnan(mean_std([0.5])[1])


def test_results_table_best_and_p_values():
    from scipy import stats

    rec = []
    vals = {"ours": [0.9, 0.92, 0.91], "teacher": [0.8, 0.82, 0.79], "tie": [0.9, 0.91, 0.92]}
    for m, vs in vals.items():
        rec += [{"method": m, "task": "auc", "seed": s, "value": v} for s, v in enumerate(vs)]
    rec += [{"method": "ours", "task": "loss", "seed": 0, "value": 1.0},
            {"method": "teacher", "task": "loss", "seed": 0, "value": 0.5}]
    t = results_table(pd.DataFrame(rec), higher_is_better={"auc": True, "loss": False})
    auc = t[t.task == "auc"].set_index("method")
    assert auc.loc["ours", "best"] and not auc.loc["teacher", "best"]
    assert auc.loc["teacher", "p_vs_best"] == pytest.approx(stats.ttest_ind(vals["ours"], vals["teacher"]).pvalue)
    assert auc.loc["teacher", "significant"] and not auc.loc["tie", "significant"]
    assert auc.loc["ours", "std"] == pytest.approx(np.std(vals["ours"], ddof=1))
    loss = t[t.task == "loss"].set_index("method")
    assert loss.loc["teacher", "best"]          # lower is better there
    assert math.isnan(loss.loc["ours", "p_vs_best"])   # one seed: no test
    w = wide_table(t)
    assert w.loc[w.method == "ours", "auc"].item().startswith("**0.910 ± 0.010**")
    assert "*)" in w.loc[w.method == "teacher", "auc"].item()


# ------------------------------------------------------------------ probes, ensembles
def test_linear_probe_separable_and_untrainable_class():
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n).astype(float)
    X = np.c_[y * 3 + rng.normal(0, 0.3, n), rng.normal(size=(n, 3))]
    Y = np.c_[y, np.zeros(n)]                       # second label: one value everywhere
    split = np.array(["train"] * 36 + ["val"] * 12 + ["test"] * 12)
    with pytest.warns(UndefinedMetricWarning, match="flat"):
        r = probe_multilabel(X, Y, ["sep", "flat"], split, context="unit")
    assert r.auc.per_class["sep"] > 0.95 and r.macro_auc == r.auc.per_class["sep"]
    assert r.untrainable == ["flat"] and r.C_choice == "validation"
    assert r.n_train == 36 and r.n_test == 12
    lab = np.where(y == 1, "p", "q")
    m = probe_multiclass(X, lab, split)
    assert m.accuracy > 0.9 and m.macro_auc > 0.95


def test_group_folds_keep_groups_together():
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    f = group_folds(groups, n_splits=3, seed=0)
    for g in set(groups):
        assert len({f[i] for i, x in enumerate(groups) if x == g}) == 1
    assert len(set(f)) == 3


def test_concat_and_average_ensembles():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [0.0, 5.0]])
    c = concat_embeddings([a, b])
    np.testing.assert_allclose(c, [[0.6, 0.8, 0, 1], [1, 0, 0, 1]], atol=1e-6)
    assert average_scores([np.array([[0.2]]), np.array([[0.6]])]).item() == pytest.approx(0.4)
    assert average_scores([np.array([[0.0]]), np.array([[1.0]])], weights=[3, 1]).item() == pytest.approx(0.25)


# ------------------------------------------------------------------ splits, landmarks, masks
def _toy_manifest(n=20):
    from leader.manifest import make_manifest

    return make_manifest([{"id": f"d/{i}", "path": f"/x/{i}.png", "dataset": "d", "split": "train",
                           "patient_id": f"p{i // 2}", "width": 100, "height": 100, "labels": {"A": float(i % 2)}}
                          for i in range(n)])


def test_eval_splits_by_patient_and_label_fraction():
    m = _toy_manifest()
    s = eval_splits(m, (0.6, 0.2, 0.2), seed=0)
    pid = m.df["patient_id"].to_numpy()
    for p in set(pid):
        assert len(set(s[pid == p])) == 1               # no patient in two splits
    assert set(s) == {"train", "val", "test"}
    assert (eval_splits(m, seed=0) == s).all() and not (eval_splits(m, seed=1) == s).all()
    tr = np.flatnonzero(s == "train")
    sub = label_fraction(tr, 0.25, m, seed=0)
    assert set(sub) <= set(tr) and len(sub) >= round(0.25 * len(tr))
    assert (label_fraction(tr, 1.0, m) == tr).all()
    assert (label_fraction(tr, 0.25, m, seed=0) == sub).all()


def test_official_test_split_is_kept():
    m = _toy_manifest()
    df = m.df.copy()
    df.loc[df.index[:4], "split"] = "test"
    s = eval_splits(df, seed=0)
    assert (s[:4] == "test").all() and "val" in set(s)


def test_csv_landmark_source(tmp_path):
    m = _toy_manifest(2)
    f = tmp_path / "lm.csv"
    pd.DataFrame({"image": ["d/0", "1.png", "0"], "landmark": ["apex", "apex", "carina"],
                  "x": [10, 20, 30], "y": [40, 50, 60]}).to_csv(f, index=False)
    t = csv_landmark_patches(m, f, size=224, reference_width=1024)
    assert list(t["image_id"]) == ["d/0", "d/1", "d/0"] and list(t["label"]) == ["apex", "apex", "carina"]
    side = 224 * 100 / 1024
    assert t["x1"].iloc[0] - t["x0"].iloc[0] == pytest.approx(side)
    assert (t["x0"].iloc[1] + side / 2, t["y0"].iloc[1] + side / 2) == pytest.approx((20, 50))
    pd.DataFrame({"image": ["nope"], "landmark": ["a"], "x": [1], "y": [1]}).to_csv(f, index=False)
    with pytest.raises(ValueError, match="nope"):
        csv_landmark_patches(m, f)


def test_lung_mask_and_organ_groups_from_jsrt166_contours():
    from leader.phantoms import make_phantom

    pixels, pts, _ = make_phantom(np.random.default_rng(0), size=128)
    mask = lung_mask_from_landmarks(pts, 128, 128)
    assert mask.shape == (128, 128) and 0.15 < mask.mean() < 0.6
    # the lungs are dark in a phantom: mean inside the mask lower than in the mediastinum
    assert pixels[mask == 1].mean() < pixels[:, 60:68].mean()
    from leader.manifest import make_manifest

    m = make_manifest([{"id": "p/0", "path": "/x.png", "dataset": "p", "width": 128, "height": 128,
                        "landmarks": pts.reshape(-1).tolist(), "landmark_scheme": "jsrt166"}])
    t = organ_patches(m, points_per_organ=3)
    assert len(t) == 15 and set(t["label"]) == {"right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle"}
    assert t["patch_id"].is_unique


def test_undefined_warning_category_is_a_userwarning():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        per_class_auc(np.array([[1.0], [1.0]]), np.array([[0.1], [0.2]]), ["only-pos"])
    assert issubclass(w[0].category, UserWarning) and "only-pos" in str(w[0].message)


def _per_query_retrieval(q, ql, qids, g, ids, labels, k, n_queries=None, seed=0):
    """Reference: disease retrieval one query at a time through precision_at_k (one FAISS index
    per query over the query's restricted gallery), as the per-query implementation did."""
    from leader.eval.retrieval import RetrievalResult

    order = np.arange(len(ql))
    if n_queries is not None and n_queries < len(ql):
        order = np.sort(np.random.default_rng(seed).choice(len(ql), size=n_queries, replace=False))
    pos = {gid: i for i, gid in enumerate(ids)}
    precs, chances, rows = [], [], []
    for qi in order:
        lab = ql[qi]
        if lab not in labels:
            rows.append({"query": int(qi), "label": lab, "skipped": "label unknown in gallery"})
            continue
        col = labels[lab]
        known = np.flatnonzero(~np.isnan(col))
        own = pos.get(qids[qi])
        ex = int(np.searchsorted(known, own)) if own is not None and not np.isnan(col[own]) else None
        usable = len(known) - (ex is not None)
        if usable < k:
            rows.append({"query": int(qi), "label": lab, "skipped": f"gallery {usable} < K {k}"})
            continue
        rel = col[known] == 1
        p = precision_at_k(q[qi], g[known], rel, k, exclude=ex)
        keep = np.ones(len(known), bool)
        if ex is not None:
            keep[ex] = False
        chances.append(float(rel[keep].mean()))
        precs.append(p)
        rows.append({"query": int(qi), "label": lab, "precision": p})
    return RetrievalResult(k=k, mean=float(np.mean(precs)), std=float(np.std(precs)), n_queries=len(precs),
                           chance=float(np.mean(chances)), per_query=rows)


def test_batched_retrieval_equals_per_query_retrieval(monkeypatch):
    from leader.eval import retrieval
    from leader.eval.retrieval import disease_retrieval_batched

    rng = np.random.default_rng(0)
    n = 60
    g = np.round(rng.normal(size=(n, 4)), 1).astype(np.float32)       # rounded: ties
    g[5] = g[6]
    ids = [f"i{i}" for i in range(n)]
    labels = {"A": rng.integers(0, 2, n).astype(np.float32), "B": rng.integers(0, 2, n).astype(np.float32)}
    labels["A"][::7] = np.nan
    labels["C"] = np.full(n, np.nan, np.float32)
    labels["C"][:5] = 1                                                 # gallery too small for K
    qi = rng.integers(0, n, 30)
    q = g[qi] + rng.normal(0, 0.05, (30, 4)).astype(np.float32)
    ql = list(rng.choice(["A", "B", "C", "Z"], 30))                     # Z: no such label column
    qids = [ids[i] for i in qi]
    for kw in ({"k": 5}, {"k": 10, "n_queries": 12, "seed": 3}):
        a = _per_query_retrieval(q, ql, qids, g, ids, labels, **kw)
        b = disease_retrieval(q, ql, qids, g, ids, labels, **kw)
        assert a.per_query == b.per_query
        assert (a.mean, a.std, a.n_queries) == pytest.approx((b.mean, b.std, b.n_queries))
        assert a.chance == pytest.approx(b.chance)
        monkeypatch.setattr(retrieval, "QUERY_BATCH", 2)                # several searches per disease
        c = disease_retrieval(q, ql, qids, g, ids, labels, **kw)
        monkeypatch.undo()
        assert c.per_query == b.per_query
        with pytest.warns(DeprecationWarning, match="disease_retrieval"):  # the old name still works
            assert disease_retrieval_batched(q, ql, qids, g, ids, labels, **kw).per_query == b.per_query
