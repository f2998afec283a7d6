"""Writing evaluation results: Markdown + CSV + PNG (+ JSON) in one output folder.

Every protocol writes ``OUT/<name>.csv`` (machine-readable, one row per number),
``OUT/<name>.md`` (the same as a Markdown table with a short description and the settings),
``OUT/<name>.json`` (settings and raw results) and figures under ``OUT/figures/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from leader.utils import atomic_write_text


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{float(v):.3f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``df`` (floats with 3 decimals, NaN as ``n/a``)."""
    cols = list(columns) if columns is not None else list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df[cols].iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def jsonable(obj):
    """Replace non-finite floats by ``None`` and numpy scalars by Python ones (recursive)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Report:
    """Collects sections of one protocol run and writes them to ``out_dir``.

    Example::

        rep = Report(out, "anatomy", "Zero-shot anatomy understanding")
        rep.text("Patches around named landmarks ...")
        rep.table(df, "anatomy")            # anatomy.csv + table in anatomy.md
        rep.figure("figures/tsne-x.png", "t-SNE of x")
        rep.write(settings={...}, raw={...})
    """

    def __init__(self, out_dir: str | Path, name: str, title: str):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "figures").mkdir(exist_ok=True)
        self.name, self.title = name, title
        self.parts: list[str] = [f"# {title}", ""]
        self.files: list[Path] = []

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def text(self, *lines: str) -> None:
        self.parts += list(lines) + [""]

    def table(self, df: pd.DataFrame, stem: str | None = None, columns: Sequence[str] | None = None,
              caption: str | None = None) -> Path | None:
        """Add a Markdown table and write it as ``stem.csv`` (when ``stem`` is given)."""
        if caption:
            self.parts += [caption, ""]
        self.parts += [markdown_table(df, columns), ""]
        if stem:
            path = self.out / f"{stem}.csv"
            atomic_write_text(path, df.to_csv(index=False))
            self.files.append(path)
            return path
        return None

    def figure(self, path: str | Path, caption: str) -> None:
        p = Path(path)
        rel = p.relative_to(self.out) if p.is_absolute() and self.out in p.parents else p
        self.parts += [f"![{caption}]({rel.as_posix()})", ""]

    def write(self, settings: Mapping | None = None, raw: Mapping | None = None) -> Path:
        """Write ``name.md`` (+ ``name.json`` with settings and raw results); returns the .md."""
        if settings:
            self.parts += ["## Settings", "", "```json", json.dumps(jsonable(dict(settings)), indent=2), "```", ""]
        md = self.out / f"{self.name}.md"
        atomic_write_text(md, "\n".join(self.parts))
        atomic_write_text(self.out / f"{self.name}.json",
                          json.dumps(jsonable({"settings": dict(settings or {}), "results": dict(raw or {})}),
                                     indent=2))
        return md


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def bar_chart(table: pd.DataFrame, path: str | Path, title: str, value: str = "mean", err: str | None = "std",
              group: str = "task", series: str = "method", ylabel: str = "") -> Path:
    """Grouped bar chart (one group per ``group`` value, one bar per ``series`` value)."""
    plt = _plt()
    groups = list(dict.fromkeys(table[group]))
    names = list(dict.fromkeys(table[series]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * len(groups) * len(names)), 3.8), dpi=110)
    w = 0.8 / max(1, len(names))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        sub = table[table[series] == name].set_index(group)
        vals = [float(sub.loc[g, value]) if g in sub.index else np.nan for g in groups]
        errs = ([float(sub.loc[g, err]) if g in sub.index else 0.0 for g in groups] if err and err in table
                else None)
        if errs is not None:
            errs = [0.0 if not np.isfinite(e) else e for e in errs]
        ax.bar(np.arange(len(groups)) + (i - (len(names) - 1) / 2) * w, vals, w, yerr=errs, capsize=2,
               label=str(name), color=cmap(i % 10))
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([str(g) for g in groups], fontsize=8, rotation=15 if len(groups) > 3 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def heatmap(matrix: pd.DataFrame, path: str | Path, title: str, fmt: str = "{:.3f}") -> Path:
    """Annotated heat map of a small matrix (rows × columns, float cells)."""
    plt = _plt()
    vals = matrix.to_numpy(dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.6 + 1.35 * vals.shape[1], 1.2 + 0.7 * vals.shape[0]), dpi=110)
    ax.imshow(np.nan_to_num(vals, nan=0.0), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(vals.shape[1]))
    ax.set_xticklabels([str(c) for c in matrix.columns], fontsize=7, rotation=20, ha="right")
    ax.set_yticks(range(vals.shape[0]))
    ax.set_yticklabels([str(r) for r in matrix.index], fontsize=8)
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            v = vals[i, j]
            ax.text(j, i, "n/a" if not np.isfinite(v) else fmt.format(v), ha="center", va="center",
                    color="white" if np.isfinite(v) and v < 0.6 else "black", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def image_grid(rows: Iterable[tuple[np.ndarray, str, str | None]], path: str | Path, title: str,
               ncols: int | None = None) -> Path:
    """A row of grayscale panels ``(image [H,W], caption, frame colour or None)``."""
    plt = _plt()
    rows = list(rows)
    n = len(rows)
    ncols = ncols or n
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.3 * nrows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, (img, cap, colour) in zip(axes.ravel(), rows):
        ax.axis("on")
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(cap, fontsize=7)
        if colour:
            for s in ax.spines.values():
                s.set_edgecolor(colour)
                s.set_linewidth(4)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
