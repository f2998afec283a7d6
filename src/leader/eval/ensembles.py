"""Teacher ensembles, the baselines LeADER's single student is compared with (paper §6).

* **Concatenation** (:func:`concat_representation`): each teacher's embedding is
  L2-normalised (so that no teacher dominates by scale) and the vectors are concatenated; the
  result is probed like any other representation.
* **Prediction averaging** (:func:`average_scores`, :func:`average_probe`): a probe is fitted
  on each teacher separately and their test-set probabilities are averaged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from leader.eval.features import DerivedSource, Representation
from leader.eval.linear_probe import ProbeResult
from leader.eval.metrics import multiclass_auc, per_class_auc
from leader.eval.retrieval import l2_normalise


def concat_embeddings(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, sum(d_i)]``: the row-wise L2-normalised parts side by side."""
    if not parts:
        raise ValueError("nothing to concatenate")
    n = {p.shape[0] for p in parts}
    if len(n) != 1:
        raise ValueError(f"parts have different row counts {sorted(n)}")
    return np.concatenate([l2_normalise(p) for p in parts], axis=1)


def concat_representation(reps: Sequence[Representation], name: str | None = None) -> Representation:
    """A representation that concatenates ``reps`` (e.g. the two teachers)."""
    reps = list(reps)
    if len(reps) < 2:
        raise ValueError("a concatenation ensemble needs at least two representations")
    src = DerivedSource(name or " + ".join(r.name for r in reps) + " (concat)", reps, concat_embeddings,
                        sum(r.dim for r in reps))
    return Representation(src, "embedding")


def average_scores(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """(Weighted) mean of per-model score matrices of equal shape."""
    s = np.stack([np.asarray(x, np.float64) for x in scores])
    w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), s, axes=1)


def average_probe(results: Sequence[ProbeResult], y_test: np.ndarray | Sequence, *, multiclass: bool = False,
                  context: str = "") -> ProbeResult:
    """The prediction-averaging ensemble of probes fitted on the same split.

    Args:
        results: one :class:`ProbeResult` per member (same ``test_index`` and classes).
        y_test: multi-label ``[n_test, L]`` (1/0/NaN) or multi-class labels of the test rows.
    """
    results = list(results)
    if not results:
        raise ValueError("no probe results to average")
    ref = results[0]
    for r in results[1:]:
        if not np.array_equal(r.test_index, ref.test_index) or r.classes != ref.classes:
            raise ValueError("probes to average must share the test rows and classes")
    s = average_scores([r.test_scores for r in results])
    if multiclass:
        auc = multiclass_auc(y_test, s, ref.classes, warn=True, context=context or "average ensemble")
    else:
        auc = per_class_auc(np.asarray(y_test, np.float64), s, ref.classes, warn=True,
                            context=context or "average ensemble")
    return ProbeResult(auc, float("nan"), "per member", ref.n_train, ref.n_val, ref.n_test, ref.classes,
                       ref.test_index, s, sorted(set().union(*[r.untrainable for r in results])))
