"""Zero-shot disease retrieval (paper §5, Fig. 4).

A query is the embedding of a *diseased patch* cut from a bounding box. All images of the
gallery are ranked by cosine similarity to it (FAISS inner product on L2-normalised vectors);
precision@K is the fraction of the top K images that carry the query's disease. The query's
own image is excluded from its ranking (field report BR-23), ties are broken by gallery index.
The experiment is repeated over random queries (seeded) and reported as mean ± std.

The ranking is FAISS's; precision@K is then a count over the top K. scikit-learn has no
retrieval precision@K (``top_k_accuracy_score`` asks whether the true *class* is among the K
best-scored classes, another quantity), so that count stays here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import faiss
import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32 ``[N, D]``); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def cosine_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` with FAISS ``IndexFlatIP``.

    Args:
        queries: float ``[Q, D]``; gallery: float ``[N, D]``; ``k <= N``.

    Returns:
        ``(scores [Q, k] float32, indices [Q, k] int64)`` best first; equal scores are ordered
        by gallery index.
    """
    q, g = l2_normalise(queries), l2_normalise(gallery)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query width {q.shape[1]} != gallery width {g.shape[1]}")
    k = int(k)
    if not 1 <= k <= g.shape[0]:
        raise ValueError(f"k={k} must be in [1, gallery size {g.shape[0]}]")
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    scores, idx = index.search(q, k)
    # deterministic tie order: by (-score, index) — FAISS' heap order is not specified for ties
    for r in range(idx.shape[0]):
        order = np.lexsort((idx[r], -scores[r]))
        scores[r], idx[r] = scores[r, order], idx[r, order]
    return scores, idx.astype(np.int64)


def precision_at_k(
    query: np.ndarray,
    gallery: np.ndarray,
    relevant: np.ndarray,
    k: int,
    exclude: int | None = None,
) -> float:
    """Precision@K of one query.

    Args:
        query: float ``[D]``.
        gallery: float ``[N, D]``.
        relevant: bool ``[N]``: gallery items that count as correct for this query.
        k: cut-off; must satisfy ``k <= N - (1 if exclude is not None else 0)``.
        exclude: gallery index to drop before ranking (the query's own image), or ``None``.

    Returns:
        Fraction in ``[0, 1]`` of the top ``k`` (after exclusion) that are relevant.

    Raises:
        ValueError: ``k`` larger than the usable gallery (message names K and the gallery size).
    """
    n = gallery.shape[0]
    usable = n - (1 if exclude is not None else 0)
    if not 1 <= k <= usable:
        raise ValueError(f"K={k} but the gallery has {n} items ({usable} after excluding the query's own)")
    kk = min(n, k + (1 if exclude is not None else 0))
    _, idx = cosine_search(query[None], gallery, kk)
    ranked = [i for i in idx[0] if i != exclude][:k]
    return float(np.mean(np.asarray(relevant, bool)[ranked]))


def _no_query_error(k: int, sizes: list[tuple[int, int]]) -> ValueError:
    """ValueError for "no query could be evaluated", naming K and the largest gallery (BR-23)."""
    if sizes:
        n, usable = max(sizes, key=lambda t: (t[1], t[0]))
        where = f"the largest gallery has {n} items ({usable} after excluding the query's own image)"
    else:
        where = "no query's label is known in the gallery"
    return ValueError(f"no query could be evaluated at K={k}: {where}; K must be at most that size")


@dataclass
class RetrievalResult:
    """Outcome of :func:`disease_retrieval`. ``per_query`` has one dict per query."""

    k: int
    mean: float
    std: float
    n_queries: int
    chance: float
    per_query: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"k": self.k, "mean": self.mean, "std": self.std, "n_queries": self.n_queries,
                "chance": self.chance}


#: queries searched together against one restricted gallery (bounds the ``[Q, k + 1]`` results
#: and FAISS' per-search scratch memory; the numbers do not depend on it)
QUERY_BATCH = 4096


def disease_retrieval(
    query_emb: np.ndarray,
    query_labels: Sequence[str],
    query_image_ids: Sequence[str],
    gallery_emb: np.ndarray,
    gallery_ids: Sequence[str],
    gallery_labels: dict[str, np.ndarray],
    k: int = 100,
    n_queries: int | None = None,
    seed: int = 0,
) -> RetrievalResult:
    """Zero-shot disease retrieval with diseased-patch queries over whole images (paper §5).

    For a query of disease L the gallery is restricted to the images whose L label is known, the
    query's own image is left out of its ranking, and precision@K is the fraction of the top K
    that carry L (ties ordered by gallery index, :func:`cosine_search`). The queries are grouped
    by disease: each disease's restricted gallery goes into one FAISS index, searched for its
    queries ``QUERY_BATCH`` at a time (top ``k + 1``, then the own image is dropped), so the
    cost is one index per disease rather than one per query; the numbers are those of
    :func:`precision_at_k` query by query.

    Args:
        query_emb: float ``[Q, D]`` patch embeddings.
        query_labels: disease name of each query patch (its box label).
        query_image_ids: id of the image each patch was cut from (excluded from its ranking).
        gallery_emb: float ``[N, D]`` image embeddings.
        gallery_ids: ids of the gallery images.
        gallery_labels: ``{disease: float [N]}`` with 1 / 0 / NaN. For a query of disease L the
            gallery is restricted to images whose L label is known (not NaN); relevant = 1.
        k: precision cut-off; queries whose restricted gallery (without the own image) is
            smaller than ``k`` are skipped (counted in ``per_query`` with ``skipped``).
        n_queries: sample this many queries without replacement (``None`` or more than
            available = all), seeded by ``seed``.

    Returns:
        :class:`RetrievalResult` with mean ± std (population std) over the evaluated queries,
        the chance level (mean fraction of relevant images in the queries' galleries) and one
        ``per_query`` dict per sampled query, in query order.

    Raises:
        ValueError: no query could be evaluated (names K and the largest gallery, BR-23).
    """
    q_n = len(query_labels)
    order = np.arange(q_n)
    if n_queries is not None and n_queries < q_n:
        order = np.sort(np.random.default_rng(seed).choice(q_n, size=n_queries, replace=False))
    pos = {gid: i for i, gid in enumerate(gallery_ids)}
    rows: dict[int, dict] = {}
    precs: dict[int, float] = {}
    chances: dict[int, float] = {}
    by_label: dict[str, list[int]] = {}
    sizes: list[tuple[int, int]] = []
    for qi in order:
        by_label.setdefault(query_labels[qi], []).append(int(qi))
    for lab, qs in by_label.items():
        if lab not in gallery_labels:
            for qi in qs:
                rows[qi] = {"query": qi, "label": lab, "skipped": "label unknown in gallery"}
            continue
        col = np.asarray(gallery_labels[lab], dtype=np.float32)
        known = np.flatnonzero(~np.isnan(col))
        rel = col[known] == 1
        sub_pos = {int(g): j for j, g in enumerate(known)}
        todo, excl = [], []
        for qi in qs:
            own = pos.get(query_image_ids[qi])
            ex = sub_pos.get(own) if own is not None else None
            usable = len(known) - (1 if ex is not None else 0)
            sizes.append((len(known), usable))
            if usable < k:
                rows[qi] = {"query": qi, "label": lab, "skipped": f"gallery {usable} < K {k}"}
                continue
            todo.append(qi)
            excl.append(ex)
        if not todo:
            continue
        kk = min(len(known), k + 1)
        gal = np.asarray(gallery_emb)[known]
        n_rel = int(rel.sum())
        for lo in range(0, len(todo), QUERY_BATCH):
            batch = todo[lo:lo + QUERY_BATCH]
            _, idx = cosine_search(np.asarray(query_emb)[batch], gal, kk)
            for r, (qi, ex) in enumerate(zip(batch, excl[lo:lo + QUERY_BATCH])):
                ranked = [i for i in idx[r] if i != ex][:k]
                p = float(np.mean(rel[ranked]))
                precs[qi] = p
                chances[qi] = ((n_rel - (1 if ex is not None and rel[ex] else 0))
                               / (len(known) - (1 if ex is not None else 0)))
                rows[qi] = {"query": qi, "label": lab, "precision": p}
    if not precs:
        raise _no_query_error(k, sizes)
    per_query = [rows[int(qi)] for qi in order]
    vals = [precs[int(qi)] for qi in order if int(qi) in precs]
    ch = [chances[int(qi)] for qi in order if int(qi) in chances]
    return RetrievalResult(k=k, mean=float(np.mean(vals)), std=float(np.std(vals)), n_queries=len(vals),
                           chance=float(np.mean(ch)), per_query=per_query)


def disease_retrieval_batched(*args, **kwargs) -> RetrievalResult:
    """Deprecated alias of :func:`disease_retrieval` (which now batches the search itself).

    Kept for callers not yet moved (``leader.eval.protocols``, ``leader.eval.entanglement``);
    same arguments, results and errors.
    """
    warnings.warn("disease_retrieval_batched is deprecated: call disease_retrieval (same arguments and results)",
                  DeprecationWarning, stacklevel=2)
    return disease_retrieval(*args, **kwargs)
