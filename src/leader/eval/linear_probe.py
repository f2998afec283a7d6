"""Linear probing on frozen embeddings (paper §6, Table 2 "linear" rows).

* **Image level** (:func:`probe_multilabel`, :func:`image_probe`): one L2-regularised logistic
  regression per disease label on whole-image embeddings; rows whose label is unknown (NaN)
  are left out for that label. A label fraction (5 %, 10 %, ...) subsamples the training
  patients.
* **Lesion level** (:func:`probe_multiclass`, :func:`lesion_probe`): patches cut from disease
  boxes, one class per patch (the box label); multinomial logistic regression.

Features are standardised with the training rows' mean and std. The inverse regularisation
strength ``C`` is chosen from ``Cs`` by the macro AUC on the validation split; when no class
has a defined validation AUC the middle of ``Cs`` is used and the choice is recorded as
``"default"``. Per-class AUC and macro AUC are computed on the test split; a class with one
label value there is reported as undefined and left out of the macro mean with a warning
(:class:`leader.eval.metrics.UndefinedMetricWarning`). A class with one label value in the
*training* rows cannot be learnt: it gets the training prevalence as a constant score and is
listed in ``untrainable``.

:func:`cv_probe_multilabel` / :func:`cv_probe_multiclass` give out-of-fold predictions with
folds grouped by image (for small data such as the entanglement report).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from leader.eval.metrics import AUCResult, accuracy, multiclass_auc, per_class_auc

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class ProbeResult:
    """Outcome of one probe fit + test."""

    auc: AUCResult
    C: float
    C_choice: str                      # "validation" | "default" | "fixed"
    n_train: int
    n_val: int
    n_test: int
    classes: list[str]
    test_index: np.ndarray             # rows of the input the scores belong to
    test_scores: np.ndarray            # [n_test, C]
    untrainable: list[str] = field(default_factory=list)
    val_auc: dict = field(default_factory=dict)   # C -> validation macro AUC
    accuracy: float = float("nan")     # multi-class only

    @property
    def macro_auc(self) -> float:
        return self.auc.macro

    def as_dict(self) -> dict:
        return {"macro_auc": self.auc.macro, "per_class_auc": self.auc.per_class, "undefined": self.auc.undefined,
                "C": self.C, "C_choice": self.C_choice, "n_train": self.n_train, "n_val": self.n_val,
                "n_test": self.n_test, "untrainable": self.untrainable,
                "val_macro_auc": {str(k): v for k, v in self.val_auc.items()}, "accuracy": self.accuracy}


def _standardise(train: np.ndarray, *others: np.ndarray):
    mu = train.mean(0, keepdims=True)
    sd = train.std(0, keepdims=True)
    sd[sd < 1e-8] = 1.0
    return [(x - mu) / sd for x in (train, *others)]


def _logreg(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    return LogisticRegression(C=float(C), max_iter=2000, random_state=int(seed))


def _one_blas_thread():
    """Small problems: one BLAS thread is several times faster than many on shared cores."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    return threadpool_limits(limits=1, user_api="blas")


def _probe_rows(X: np.ndarray, split: Sequence[str], train_index: np.ndarray | None, context: str):
    """``(tr, va, te)`` row indices (``train_index`` or the ``train`` rows; ``val``; ``test``) and
    the matching float64 feature matrices standardised with the training rows' statistics.

    Raises:
        ValueError: no training or no test rows.
    """
    split = np.asarray(split)
    tr = np.asarray(train_index) if train_index is not None else np.flatnonzero(split == "train")
    va, te = np.flatnonzero(split == "val"), np.flatnonzero(split == "test")
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"{context or 'probe'}: needs training and test rows (train {len(tr)}, test {len(te)})")
    Xtr, Xva, Xte = _standardise(np.asarray(X[tr], np.float64), np.asarray(X[va], np.float64),
                                 np.asarray(X[te], np.float64))
    return (tr, va, te), (Xtr, Xva, Xte)


def _choose_C(Cs: Sequence[float], C: float | None, has_val: bool,
              val_macro: Callable[[float], float]) -> tuple[float, str, dict]:
    """``(C, how, {C: validation macro AUC})``: ``C`` itself (``"fixed"``) when given, else the
    ``Cs`` value with the best finite ``val_macro(c)`` (ties to the one nearest 1,
    ``"validation"``), else the middle of ``Cs`` (``"default"``; also without validation rows)."""
    if C is not None:
        return float(C), "fixed", {}
    val_auc: dict = {}
    for c in Cs:
        if not has_val:
            break
        val_auc[float(c)] = val_macro(c)
    finite = {c: v for c, v in val_auc.items() if np.isfinite(v)}
    if finite:
        return max(finite, key=lambda c: (finite[c], -abs(np.log10(c)))), "validation", val_auc
    return float(sorted(Cs)[len(Cs) // 2]), "default", val_auc


def fit_predict_multilabel(Xtr: np.ndarray, Ytr: np.ndarray, Xte: Sequence[np.ndarray], C: float,
                           seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """One logistic regression per column of ``Ytr`` (NaN rows skipped).

    Returns ``(scores per test matrix [n, L], indices of untrainable columns)``; an untrainable
    column (one label value among its known training rows) scores the training prevalence.
    """
    outs = [np.zeros((x.shape[0], Ytr.shape[1]), np.float64) for x in Xte]
    bad = []
    for j in range(Ytr.shape[1]):
        known = ~np.isnan(Ytr[:, j])
        y = Ytr[known, j]
        if len(np.unique(y)) < 2:
            bad.append(j)
            prev = float(y.mean()) if len(y) else 0.5
            for o in outs:
                o[:, j] = prev
            continue
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore")
            clf = _logreg(C, seed).fit(Xtr[known], y.astype(int))
            for o, x in zip(outs, Xte):
                o[:, j] = clf.predict_proba(x)[:, 1]
    return outs, bad


def probe_multilabel(X: np.ndarray, Y: np.ndarray, names: Sequence[str], split: Sequence[str],
                     train_index: np.ndarray | None = None, Cs: Sequence[float] = DEFAULT_CS,
                     C: float | None = None, seed: int = 0, context: str = "") -> ProbeResult:
    """Multi-label linear probe: fit on ``train`` (or ``train_index``), choose ``C`` on ``val``,
    report per-class and macro AUC on ``test``.

    Args:
        X: float ``[N, D]``; Y: float ``[N, L]`` 1/0/NaN; names: ``L`` label names.
        split: ``N`` values in ``train`` / ``val`` / ``test``.
        train_index: rows to train on (a label-fraction subset of the ``train`` rows).
        C: fix the regularisation instead of choosing it.
    """
    (tr, va, te), (Xtr, Xva, Xte) = _probe_rows(X, split, train_index, context)
    Ytr = np.asarray(Y[tr], np.float64)

    def val_macro(c: float) -> float:
        (sv,), _ = fit_predict_multilabel(Xtr, Ytr, [Xva], c, seed)
        return per_class_auc(Y[va], sv, list(names), warn=False).macro

    chosen, how, val_auc = _choose_C(Cs, C, len(va) > 0, val_macro)
    (ste,), bad = fit_predict_multilabel(Xtr, Ytr, [Xte], chosen, seed)
    auc = per_class_auc(Y[te], ste, list(names), warn=True, context=context or "linear probe (test)")
    return ProbeResult(auc, chosen, how, len(tr), len(va), len(te), list(names), te, ste,
                       [names[j] for j in bad], val_auc)


def fit_predict_multiclass(Xtr: np.ndarray, ytr: np.ndarray, Xte: Sequence[np.ndarray], classes: Sequence,
                           C: float, seed: int = 0) -> list[np.ndarray]:
    """Multinomial logistic regression; scores ``[n, len(classes)]`` (0 for classes unseen in
    training; a single training class scores 1 for it)."""
    present = np.unique(ytr)
    outs = [np.zeros((x.shape[0], len(classes)), np.float64) for x in Xte]
    col = {c: j for j, c in enumerate(classes)}
    if len(present) < 2:
        for o in outs:
            if len(present):
                o[:, col[present[0]]] = 1.0
        return outs
    with warnings.catch_warnings(), _one_blas_thread():
        warnings.simplefilter("ignore")
        clf = _logreg(C, seed).fit(Xtr, ytr)
        for o, x in zip(outs, Xte):
            p = clf.predict_proba(x)
            for k, c in enumerate(clf.classes_):
                o[:, col[c]] = p[:, k]
    return outs


def probe_multiclass(X: np.ndarray, labels: Sequence, split: Sequence[str], train_index: np.ndarray | None = None,
                     Cs: Sequence[float] = DEFAULT_CS, C: float | None = None, seed: int = 0,
                     context: str = "") -> ProbeResult:
    """Single-label (multi-class) linear probe with one-vs-rest AUC per class on ``test``."""
    lab = np.asarray([str(v) for v in labels])
    classes = sorted(set(lab.tolist()))
    (tr, va, te), (Xtr, Xva, Xte) = _probe_rows(X, split, train_index, context)

    def val_macro(c: float) -> float:
        (sv,) = fit_predict_multiclass(Xtr, lab[tr], [Xva], classes, c, seed)
        return multiclass_auc(lab[va], sv, classes, warn=False).macro

    chosen, how, val_auc = _choose_C(Cs, C, len(va) > 0, val_macro)
    (ste,) = fit_predict_multiclass(Xtr, lab[tr], [Xte], classes, chosen, seed)
    auc = multiclass_auc(lab[te], ste, classes, warn=True, context=context or "lesion probe (test)")
    untrainable = [c for c in classes if c not in set(lab[tr].tolist())]
    acc = accuracy(lab[te], np.asarray(classes)[ste.argmax(1)]) if len(te) else float("nan")
    return ProbeResult(auc, chosen, how, len(tr), len(va), len(te), classes, te, ste, untrainable, val_auc, acc)


# ---------------------------------------------------------------------------------------------
# grouped cross-validation (small data)
# ---------------------------------------------------------------------------------------------
def group_folds(groups: Sequence, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number per row; all rows of a group share a fold (groups shuffled with ``seed``)."""
    g = np.asarray([str(x) for x in groups])
    uniq = np.random.default_rng(seed).permutation(np.unique(g))
    k = max(2, min(int(n_splits), len(uniq)))
    fold_of = {u: i % k for i, u in enumerate(uniq)}
    return np.array([fold_of[x] for x in g])


def cv_probe_multilabel(X: np.ndarray, Y: np.ndarray, groups: Sequence, n_splits: int = 5, C: float = 1.0,
                        seed: int = 0) -> np.ndarray:
    """Out-of-fold scores ``[N, L]`` of the multi-label probe (folds grouped by ``groups``)."""
    folds = group_folds(groups, n_splits, seed)
    out = np.zeros(Y.shape, np.float64)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        Xtr, Xte = _standardise(np.asarray(X[tr], np.float64), np.asarray(X[te], np.float64))
        (s,), _ = fit_predict_multilabel(Xtr, np.asarray(Y[tr], np.float64), [Xte], C, seed)
        out[te] = s
    return out


def cv_probe_multiclass(X: np.ndarray, labels: Sequence, groups: Sequence, n_splits: int = 5, C: float = 1.0,
                        seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold class scores ``[N, C]`` and the class list (folds grouped by ``groups``)."""
    lab = np.asarray([str(v) for v in labels])
    classes = sorted(set(lab.tolist()))
    folds = group_folds(groups, n_splits, seed)
    out = np.zeros((len(lab), len(classes)), np.float64)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        Xtr, Xte = _standardise(np.asarray(X[tr], np.float64), np.asarray(X[te], np.float64))
        (s,) = fit_predict_multiclass(Xtr, lab[tr], [Xte], classes, C, seed)
        out[te] = s
    return out, classes
