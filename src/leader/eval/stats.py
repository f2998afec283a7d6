"""Statistics over seeds: mean ± std and a two-sample t-test (paper Table 2 style).

Results are collected as *long* records ``(method, task, seed, value)``. :func:`results_table`
turns them into one table: for every task, ``mean ± std`` over seeds per method, the best
method (by mean), and the p-value of a two-sample t-test between the best method and each
other one. Standard deviations are sample standard deviations (``ddof=1``), the same spread
the t-test uses; with a single seed the std and the test are undefined (``nan`` / "n/a").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

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
    t: float
    p: float
    df: float
    equal_var: bool


def ttest_ind(a: Sequence[float], b: Sequence[float], equal_var: bool = True) -> TTestResult:
    """Two-sample t-test of the means of ``a`` and ``b`` (two-sided).

    ``equal_var=True``: Student's test with the pooled variance,
    ``t = (mean_a - mean_b) / sqrt(s_p^2 (1/n_a + 1/n_b))``, ``df = n_a + n_b - 2``.
    ``equal_var=False``: Welch's test with the Welch-Satterthwaite ``df``. Same numbers as
    ``scipy.stats.ttest_ind``. Undefined (``nan``) when a sample has fewer than two values;
    two samples with zero variance give ``t = ±inf, p = 0`` when the means differ and
    ``nan`` when they are equal.
    """
    from scipy.stats import t as t_dist  # noqa: PLC0415

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    nx, ny = x.size, y.size
    if nx < 2 or ny < 2:
        return TTestResult(float("nan"), float("nan"), float("nan"), equal_var)
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    diff = x.mean() - y.mean()
    if equal_var:
        df = nx + ny - 2
        sp2 = ((nx - 1) * vx + (ny - 1) * vy) / df
        se = math.sqrt(sp2 * (1 / nx + 1 / ny))
    else:
        se2 = vx / nx + vy / ny
        se = math.sqrt(se2)
        df = se2 ** 2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1)) if se2 > 0 else float("nan")
    if se == 0:
        if diff == 0:
            return TTestResult(float("nan"), float("nan"), float(df), equal_var)
        return TTestResult(math.copysign(math.inf, diff), 0.0, float(df), equal_var)
    t = diff / se
    p = float(2 * t_dist.sf(abs(t), df))
    return TTestResult(float(t), p, float(df), equal_var)


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
