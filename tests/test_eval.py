"""Metric functions against hand-computed values (field reports BR-22, BR-23)."""

import json

import numpy as np
import pytest

from leader.eval.anatomy import knn_accuracy, plot_tsne, silhouette, tsne
from leader.eval.retrieval import cosine_search, disease_retrieval, disease_retrieval_batched, precision_at_k

# BR-23: q0 [1,0] A; e1 [0.9,0.1] A; e2 [0.8,0.2] B; e3 [0,1] B; e4 [0.1,0.9] A
EMB = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], dtype=np.float32)
LAB = np.array(["A", "A", "B", "B", "A"])


def test_br23_ranking_excludes_query():
    _, idx = cosine_search(EMB[:1], EMB, 5)
    assert idx[0].tolist() == [0, 1, 2, 4, 3]  # with itself first
    rel = LAB == "A"
    expected = {1: 1.0, 2: 0.5, 3: 2 / 3, 4: 0.5}
    for k, p in expected.items():
        assert precision_at_k(EMB[0], EMB, rel, k, exclude=0) == pytest.approx(p)
    # with the query left in, P@2 would wrongly be 1.0
    assert precision_at_k(EMB[0], EMB, rel, 2, exclude=None) == pytest.approx(1.0)


def test_br23_ranking_without_query_is_e1_e2_e4_e3():
    """BR-23: the ranking precision_at_k uses for q0 (itself excluded) is e1, e2, e4, e3.

    Read back through the public function: with only gallery item j relevant, the first K at
    which P@K > 0 is j's rank; the query itself (index 0) never appears at any K.
    """
    rank = {}
    for j in range(5):
        only_j = np.arange(5) == j
        hits = [k for k in range(1, 5) if precision_at_k(EMB[0], EMB, only_j, k, exclude=0) > 0]
        rank[j] = hits[0] if hits else None
    assert rank == {0: None, 1: 1, 2: 2, 4: 3, 3: 4}
    assert [j for j, _ in sorted(((j, r) for j, r in rank.items() if r), key=lambda t: t[1])] == [1, 2, 4, 3]


@pytest.mark.parametrize("fn", [disease_retrieval, disease_retrieval_batched])
def test_br23_leave_one_out_retrieval_over_all_five(fn):
    """BR-23: gallery = query set = the five items; each query's own item is left out."""
    ids = ["q0", "e1", "e2", "e3", "e4"]
    labels = {"A": (LAB == "A").astype(np.float32), "B": (LAB == "B").astype(np.float32)}
    for k, p in {1: 1.0, 2: 0.5, 3: 2 / 3, 4: 0.5}.items():
        r = fn(EMB, list(LAB), ids, EMB, ids, labels, k=k)
        assert r.n_queries == 5
        assert r.per_query[0] == {"query": 0, "label": "A", "precision": pytest.approx(p)}
    # K=5 > gallery size - 1: ValueError naming K and the gallery size
    with pytest.raises(ValueError, match=r"K=5.*5 items.*4 after"):
        fn(EMB, list(LAB), ids, EMB, ids, labels, k=5)


def test_br23_k_too_large_names_k_and_gallery():
    with pytest.raises(ValueError, match=r"K=5.*5 items.*4 after"):
        precision_at_k(EMB[0], EMB, LAB == "A", 5, exclude=0)
    assert precision_at_k(EMB[0], EMB, LAB == "A", 4, exclude=0) == pytest.approx(0.5)  # K = N - 1 is allowed


def test_br23_ties_broken_by_index():
    """BR-23: equal scores are ordered by gallery index (FAISS alone returns them reversed)."""
    g = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    _, idx = cosine_search(np.array([[1, 0]], np.float32), g, 3)
    assert idx[0].tolist() == [0, 1, 2]
    # the same through precision@K with the query excluded: items 1, 2, 3 tie, 1 is relevant
    tied = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    rel = np.array([False, True, False, False])
    assert precision_at_k(tied[0], tied, rel, 1, exclude=0) == 1.0  # index 1 ranks first
    assert precision_at_k(tied[0], tied, ~rel, 1, exclude=0) == 0.0
    # and identical on every call
    assert all(cosine_search(tied[:1], tied, 4)[1][0].tolist() == [0, 1, 2, 3] for _ in range(3))


def test_disease_retrieval_restricts_gallery_and_excludes_own_image():
    gallery = np.array([[1, 0], [0.9, 0.1], [0.2, 0.8], [0, 1], [0.95, 0.05]], np.float32)
    ids = ["i0", "i1", "i2", "i3", "i4"]
    labels = {"Nodule": np.array([1, 1, 0, 0, np.nan], np.float32)}  # i4 unknown: never ranked
    q = np.array([[1, 0]], np.float32)
    r = disease_retrieval(q, ["Nodule"], ["i0"], gallery, ids, labels, k=2)
    # own image i0 excluded, i4 unknown: ranking over i1, i2, i3 -> i1 (A), i2 -> P@2 = 0.5
    assert r.mean == pytest.approx(0.5)
    assert r.chance == pytest.approx(1 / 3)
    assert r.n_queries == 1
    with pytest.raises(ValueError, match="no query"):
        disease_retrieval(q, ["Nodule"], ["i0"], gallery, ids, labels, k=4)


def test_knn_accuracy_hand_computed():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.6, 0.4]], np.float32)
    lab = ["a", "a", "b", "b", "b"]
    # 1-NN: 0->1 a ok, 1->0 a ok, 2->3 b ok, 3->2 b ok, 4->1 (cos .92 vs .72 for 3) a wrong
    assert knn_accuracy(emb, lab, k=1) == pytest.approx(4 / 5)
    with pytest.raises(ValueError):
        knn_accuracy(emb, lab, k=5)


def test_silhouette_separated_clusters_high():
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0], 0.1, (20, 2))
    b = rng.normal([0, 5], 0.1, (20, 2))
    s = silhouette(np.vstack([a, b]), ["a"] * 20 + ["b"] * 20)
    assert 0.9 < s <= 1.0


def _br22_blobs():
    """BR-22 input: 300 embeddings of dimension 64 from 3 Gaussian blobs (numpy seed 0)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 64))
    return np.vstack([rng.normal(c, 1.0, (100, 64)) for c in centres])


def test_br22_tsne_reproducible_and_documented(tmp_path):
    x = _br22_blobs()
    c0, s0 = tsne(x, seed=0)
    c0b, s0b = tsne(x, seed=0)
    c1, s1 = tsne(x, seed=1)
    assert c0.shape == (300, 2)
    assert np.max(np.abs(c0 - c0b)) <= 1e-6  # two seed-0 runs: identical
    assert c1.shape == (300, 2) and not np.allclose(c0, c1)
    # seed, perplexity, init and backend are in the metadata, with their actual values
    assert s0["seed"] == 0 and s1["seed"] == 1 and s0 == s0b
    assert s0["perplexity"] == 30.0 and s0["init"] == "pca"
    assert s0["backend"].startswith("openTSNE") and s0["backend_option"] == "openTSNE-bh"
    assert s0["deterministic"] is True and "note" not in s0
    # ... and written next to the figure
    fig = plot_tsne(c0, ["a"] * 100 + ["b"] * 100 + ["c"] * 100, tmp_path / "tsne.png", "BR-22", s0)
    written = json.loads(fig.with_suffix(".json").read_text())
    assert {k: written[k] for k in ("seed", "perplexity", "init", "backend", "deterministic")} == {
        "seed": 0, "perplexity": 30.0, "init": "pca", "backend": s0["backend"], "deterministic": True}


def test_br22_nondeterministic_backend_is_stated(tmp_path):
    """BR-22: choosing a backend that is not bit-reproducible says so in the output."""
    x = _br22_blobs()
    with pytest.warns(RuntimeWarning, match="not deterministic"):
        coords, s = tsne(x, seed=0, backend="openTSNE-fft")
    assert coords.shape == (300, 2)
    assert s["deterministic"] is False and s["backend_option"] == "openTSNE-fft" and s["gradient"] == "fft"
    assert "not deterministic" in s["note"]
    fig = plot_tsne(coords, ["a"] * 300, tmp_path / "fft.png", "BR-22", s)
    written = json.loads(fig.with_suffix(".json").read_text())
    assert written["deterministic"] is False and "not deterministic" in written["note"]
    with pytest.raises(ValueError, match="unknown t-SNE backend"):
        tsne(x, seed=0, backend="cuml")
