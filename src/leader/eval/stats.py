"""Statistics over seeds: mean ± std, significance tests and bootstrap intervals (paper Table 2 style).

Results are collected as *long* records ``(method, task, seed, value)``. :func:`results_table`
turns them into one table: for every task, ``mean ± std`` over seeds per method, the best
method (by mean), and the p-value of a two-sample t-test between the best method and each
other one. Standard deviations are sample standard deviations (``ddof=1``), the same spread
the t-test uses; with a single seed the std and the test are undefined (``nan`` / "n/a").

The tests are SciPy's (``scipy.stats.ttest_ind``, ``ttest_rel``, ``wilcoxon``, ``bootstrap``);
this module only adds the project's handling of the cases SciPy answers differently or with
a warning, so that every caller gets the same documented values:

* fewer than two values in a sample (or pairs) -> every field ``nan`` (SciPy would still test
  ``[1]`` against ``[2, 3]`` with the pooled variance);
* zero variance (of each sample, or of the paired differences) -> ``t = ±inf, p = 0`` when the
  means differ and ``t = p = nan`` when they are equal, without SciPy's precision warning;
  Welch's ``df`` is then ``nan`` (the Welch-Satterthwaite formula is 0/0);
* Wilcoxon with every difference zero -> ``nan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float, int]:
    """``(mean, std, n)`` of the finite values; std is ``nan`` when ``n <= ddof``."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    sd = float(np.std(v, ddof=ddof)) if v.size > ddof else float("nan")
    return float(v.mean()), sd, int(v.size)


@dataclass
class TTestResult:
    """Outcome of a t-test: statistic ``t``, two-sided p-value ``p`` in ``[0, 1]``, degrees of
    freedom ``df``; ``equal_var`` says Student (True) or Welch (False) for :func:`ttest_ind`
    and is ``None`` for the paired :func:`ttest_rel`."""

    t: float
    p: float
    df: float
    equal_var: bool | None


_NAN = float("nan")


def _zero_variance(diff: float, df: float, equal_var: bool | None) -> TTestResult:
    if diff == 0:
        return TTestResult(_NAN, _NAN, df, equal_var)
    return TTestResult(math.copysign(math.inf, diff), 0.0, df, equal_var)


def ttest_ind(a: Sequence[float], b: Sequence[float], equal_var: bool = True) -> TTestResult:
    """Two-sample t-test of the means of ``a`` and ``b`` (two-sided), ``scipy.stats.ttest_ind``.

    ``equal_var=True``: Student's test with the pooled variance,
    ``t = (mean_a - mean_b) / sqrt(s_p^2 (1/n_a + 1/n_b))``, ``df = n_a + n_b - 2``.
    ``equal_var=False``: Welch's test with the Welch-Satterthwaite ``df``.

    Args:
        a, b: the two samples (e.g. one value per seed); all values are used as given.

    Returns:
        :class:`TTestResult`. Undefined (``nan``) when a sample has fewer than two values; two
        samples with zero variance give ``t = ±inf, p = 0`` when the means differ and ``nan``
        when they are equal (module docstring).
    """
    from scipy import stats  # noqa: PLC0415

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    nx, ny = x.size, y.size
    if nx < 2 or ny < 2:
        return TTestResult(_NAN, _NAN, _NAN, equal_var)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return _zero_variance(float(x[0] - y[0]), float(nx + ny - 2) if equal_var else _NAN, equal_var)
    r = stats.ttest_ind(x, y, equal_var=equal_var)
    return TTestResult(float(r.statistic), float(r.pvalue), float(r.df), equal_var)


def _pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def ttest_rel(a: Sequence[float], b: Sequence[float]) -> TTestResult:
    """Paired t-test (two-sided), ``scipy.stats.ttest_rel``: e.g. two methods run with the same seeds.

    ``t = mean(d) / (sd(d) / sqrt(n))`` over the differences ``d = a - b``, ``df = n - 1``.

    Args:
        a, b: equal-length samples, ``a[i]`` paired with ``b[i]``; a pair with a non-finite
            value is dropped.

    Returns:
        :class:`TTestResult` (``equal_var=None``); ``nan`` with fewer than two pairs; zero
        variance of the differences gives ``t = ±inf, p = 0`` (non-zero mean difference) or
        ``nan`` (all differences zero).

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    from scipy import stats  # noqa: PLC0415

    x, y = _pairs(a, b)
    if x.size < 2:
        return TTestResult(_NAN, _NAN, _NAN, None)
    d = x - y
    if np.ptp(d) == 0:
        return _zero_variance(float(d[0]), float(d.size - 1), None)
    r = stats.ttest_rel(x, y)
    return TTestResult(float(r.statistic), float(r.pvalue), float(r.df), None)


@dataclass
class WilcoxonResult:
    """Wilcoxon signed-rank test: ``statistic`` (the smaller of the two rank sums, two-sided),
    p-value ``p`` in ``[0, 1]``, ``n`` the number of pairs used."""

    statistic: float
    p: float
    n: int


def wilcoxon(a: Sequence[float], b: Sequence[float], method: str = "auto") -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired samples (two-sided), ``scipy.stats.wilcoxon``.

    The non-parametric alternative to :func:`ttest_rel`: ranks ``|a - b|`` and compares the
    rank sums of positive and negative differences; zero differences are dropped (Wilcoxon's
    convention). With few seeds the p-value cannot be small: with 5 pairs all of one sign it is
    ``2 / 2^5 = 0.0625``.

    Args:
        a, b: equal-length samples; a pair with a non-finite value is dropped.
        method: SciPy's ``"auto"`` (exact distribution for small samples without ties),
            ``"exact"`` or ``"asymptotic"``.

    Returns:
        :class:`WilcoxonResult`; ``nan`` statistic and p with fewer than two pairs or when every
        difference is zero.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    from scipy import stats  # noqa: PLC0415

    x, y = _pairs(a, b)
    if x.size < 2 or np.all(x == y):
        return WilcoxonResult(_NAN, _NAN, int(x.size))
    r = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided", method=method)
    return WilcoxonResult(float(r.statistic), float(r.pvalue), int(x.size))


def bootstrap_ci(values: Sequence[float], statistic: Callable[..., float] = np.mean, confidence: float = 0.95,
                 n_resamples: int = 9999, method: str = "percentile", seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of a statistic of one sample, ``scipy.stats.bootstrap``.

    For a paired comparison pass the differences (``a - b``). Non-finite values are dropped.

    Args:
        values: the sample (e.g. one metric value per seed or per query).
        statistic: ``f(sample, axis=...) -> value`` vectorised over ``axis`` (``np.mean``,
            ``np.median``, ...).
        confidence: two-sided level in ``(0, 1)``.
        n_resamples: bootstrap resamples.
        method: ``"percentile"`` (quantiles of the resampled statistic), ``"basic"`` or
            ``"BCa"`` (bias-corrected and accelerated).
        seed: seed of the resampling: the same seed gives the same interval.

    Returns:
        ``(low, high)`` in the units of the statistic; ``(nan, nan)`` with fewer than two
        values; ``(s, s)`` with ``s`` the statistic of the sample when all values are equal
        (SciPy would warn of degenerate data and give ``nan`` for BCa).

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)``.
    """
    from scipy import stats  # noqa: PLC0415

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return _NAN, _NAN
    if np.ptp(v) == 0:
        s = float(statistic(v, axis=-1))
        return s, s
    r = stats.bootstrap((v,), statistic, confidence_level=confidence, n_resamples=int(n_resamples),
                        method=method, rng=np.random.default_rng(seed))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def results_table(records: pd.DataFrame | Iterable[Mapping], higher_is_better: Mapping[str, bool] | bool = True,
                  equal_var: bool = True, alpha: float = 0.05) -> pd.DataFrame:
    """One Table-2-style table from long records.

    Args:
        records: rows with ``method``, ``task``, ``seed``, ``value`` (one per run).
        higher_is_better: per task (mapping) or for all tasks.
        equal_var: Student (True) or Welch (False) t-test.
        alpha: significance level for the ``significant`` flag.

    Returns:
        Long DataFrame: ``task, method, mean, std, n, best (bool), p_vs_best, significant``
        (``p_vs_best`` is ``nan`` for the best method itself), ordered by task then the
        order methods first appear.
    """
    df = pd.DataFrame(list(records) if not isinstance(records, pd.DataFrame) else records)
    need = {"method", "task", "value"}
    if not need <= set(df.columns):
        raise ValueError(f"records need columns {sorted(need)}, got {sorted(df.columns)}")
    out = []
    methods_order = list(dict.fromkeys(df["method"]))
    for task in dict.fromkeys(df["task"]):
        sub = df[df["task"] == task]
        hib = higher_is_better.get(task, True) if isinstance(higher_is_better, Mapping) else bool(higher_is_better)
        stats = {}
        for m in methods_order:
            vals = sub.loc[sub["method"] == m, "value"].astype(float).to_numpy()
            if len(vals) == 0:
                continue
            stats[m] = (vals, *mean_std(vals))
        finite = {m: s for m, s in stats.items() if np.isfinite(s[1])}
        best = (max if hib else min)(finite, key=lambda m: finite[m][1]) if finite else None
        for m, (vals, mu, sd, n) in stats.items():
            if m == best or best is None:
                p = float("nan")
            else:
                fv = [v for v in vals if np.isfinite(v)]
                bv = [v for v in stats[best][0] if np.isfinite(v)]
                p = ttest_ind(bv, fv, equal_var=equal_var).p
            out.append({"task": task, "method": m, "mean": mu, "std": sd, "n": n, "best": m == best,
                        "p_vs_best": p, "significant": bool(np.isfinite(p) and p < alpha)})
    return pd.DataFrame(out, columns=["task", "method", "mean", "std", "n", "best", "p_vs_best", "significant"])


def _fmt(v: float, digits: int) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def format_cell(mean: float, std: float, digits: int = 3) -> str:
    """``"0.812 ± 0.010"`` (``"0.812"`` when the std is undefined)."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def wide_table(table: pd.DataFrame, digits: int = 3, markdown: bool = True) -> pd.DataFrame:
    """Methods as rows and tasks as columns, cells ``mean ± std``; the best per task in bold
    (Markdown) and ``*`` after a method significantly worse than the best (``p < alpha``),
    with the p-value in parentheses."""
    rows: dict[str, dict[str, str]] = {}
    for r in table.itertuples(index=False):
        cell = format_cell(r.mean, r.std, digits)
        if r.best and markdown:
            cell = f"**{cell}**"
        elif np.isfinite(r.p_vs_best):
            pv = "p<0.001" if r.p_vs_best < 0.001 else f"p={r.p_vs_best:.3g}"
            cell += f" ({pv}{'*' if r.significant else ''})"
        rows.setdefault(r.method, {})[r.task] = cell
    tasks = list(dict.fromkeys(table["task"]))
    wide = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=tasks).fillna("")
    wide.index.name = "method"
    return wide.reset_index()
