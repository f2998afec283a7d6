"""Train / val / test splits by patient, and nested limited-label fractions.

Splits
------
* Official splits are kept where a dataset has them (the reader already wrote them into
  ``split``): NIH (``train_val_list.txt`` / ``test_list.txt``), CheXpert (``train.csv`` /
  ``valid.csv``), MIMIC-CXR (``mimic-cxr-2.0.0-split.csv``), VinDr-CXR (train / test files),
  ChestX-Det (train / test JSON), TBX11K (train / val JSON, test list), COVIDx (split
  ``.txt`` files). A dataset counts as officially split when its rows hold two or more split
  values.
* Other datasets (PadChest, RSNA, SIIM, Shenzhen, Montgomery, JSRT, NODE21, folders) get a
  **group-level** split: every group (by default ``dataset/patient_id``) is on exactly one
  side. Groups are ordered by a keyed hash of ``(seed, group)`` (BLAKE2b, independent of
  row order and platform), the first ``round(test * n_groups)`` go to ``test``, the next
  ``round(val * n_groups)`` to ``val``, the rest to ``train``.
* An official split without ``val`` gets a group-level ``val`` carved out of its ``train``
  groups (fraction ``val`` of those groups) when ``carve_val=True`` (default).
* A group that spans datasets (e.g. a duplicate pair from :func:`duplicate_groups`) is put
  on one side everywhere: official splits decide first, then the datasets in order; a
  group already decided keeps its side and counts against the other dataset's quotas.
* :func:`duplicate_groups` hashes file contents so that byte-identical images (TBX11K
  contains the Shenzhen and Montgomery sets, BR-17; COVIDx re-uses RSNA) can be forced into
  one group with :func:`group_ids`.

Limited-label fractions (1 %, 5 %, 10 %, ...)
---------------------------------------------
:func:`fraction_keys` gives every ``train`` row a key in ``[0, 1)``: per dataset, groups are
ordered by a keyed hash of ``(seed, "fraction", group)`` and a group's key is the share of
that dataset's train images that come before it. The subset for fraction ``f`` is
``key < f`` (:func:`label_fraction`), so subsets are

* **nested**: ``f1 < f2`` implies subset(f1) ⊆ subset(f2);
* **deterministic** for a seed (and independent of row order);
* **group-disjoint**: a patient is entirely in or entirely out;
* about ``f`` of each dataset's train images (at least one group for ``f > 0``; exactly
  all train rows for ``f >= 1``).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from leader.errors import ManifestError
from leader.manifest import Manifest
from leader.utils import file_sha256

__all__ = [
    "OFFICIAL_SPLIT_DATASETS", "group_ids", "duplicate_groups", "assign_splits", "fraction_keys",
    "label_fraction", "nested_fractions", "split_leaks", "DEFAULT_FRACTIONS",
]

#: Datasets whose readers write the official split (documentation; detection is by data).
OFFICIAL_SPLIT_DATASETS = ("nih", "chexpert", "mimic", "vindr", "chestx-det", "tbx11k", "covidx")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def _hash_u64(keys: Sequence[str], salt: str) -> np.ndarray:
    out = np.empty(len(keys), dtype=np.uint64)
    pre = salt.encode() + b"\x00"
    for i, k in enumerate(keys):
        out[i] = int.from_bytes(hashlib.blake2b(pre + str(k).encode(), digest_size=8).digest(), "little")
    return out


def _ordered(groups: Sequence[str], salt: str) -> list[str]:
    """Distinct groups in keyed-hash order (ties by name)."""
    u = sorted(set(groups))
    h = _hash_u64(u, salt)
    idx = np.lexsort((np.arange(len(u)), h))
    return [u[i] for i in idx]


class _UF:
    def __init__(self):
        self.p: dict = {}

    def find(self, x):
        p = self.p.setdefault(x, x)
        if p != x:
            r = self.find(p)
            self.p[x] = r
            return r
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def group_ids(m: Manifest, duplicates: Sequence[str] | np.ndarray | None = None,
              cross_dataset_patients: bool = False) -> np.ndarray:
    """Group label per row: ``"<dataset>/<patient_id>"`` (or ``patient_id`` alone with
    ``cross_dataset_patients=True``), merged (union-find) with rows sharing a
    ``duplicates`` key (e.g. from :func:`duplicate_groups`; None / "" = no key). Every row of
    a merged group gets the smallest member label."""
    pid = m.df["patient_id"].to_numpy(dtype=object)
    if cross_dataset_patients:
        g = np.array([str(p) for p in pid], dtype=object)
    else:
        g = np.array([f"{d}/{p}" for d, p in zip(m.df["dataset"].to_numpy(dtype=object), pid)], dtype=object)
    if duplicates is None:
        return g
    dup = np.asarray(duplicates, dtype=object)
    if len(dup) != len(g):
        raise ValueError(f"duplicates has {len(dup)} entries for {len(g)} rows")
    uf = _UF()
    first: dict = {}
    for gi, d in zip(g, dup):
        uf.find(gi)
        if d is None or d == "" or (isinstance(d, float) and np.isnan(d)):
            continue
        if d in first:
            uf.union(first[d], gi)
        else:
            first[d] = gi
    return np.array([uf.find(x) for x in g], dtype=object)


def duplicate_groups(m: Manifest, *, on_missing: str = "skip") -> np.ndarray:
    """SHA-256 of each row's file bytes (hex), for :func:`group_ids`. Byte-identical copies
    (e.g. a Shenzhen PNG inside TBX11K) get the same key. This reads every file (not
    pixels decoded); missing files give ``""`` (``on_missing="skip"``) or raise
    :class:`ManifestError` (``"raise"``)."""
    out = []
    for i, p in zip(m.df["id"], m.df["path"]):
        try:
            out.append(file_sha256(p))
        except OSError as e:
            if on_missing == "raise":
                raise ManifestError(f"{i}: cannot read {p} for the duplicate check: {e}") from None
            out.append("")
    return np.array(out, dtype=object)


def split_leaks(m: Manifest, groups: Sequence[str] | np.ndarray | None = None) -> dict[str, list[str]]:
    """Groups (default ``dataset/patient_id``) found in more than one split:
    ``{group: sorted splits}`` (empty dict = group-disjoint)."""
    g = group_ids(m) if groups is None else np.asarray(groups, dtype=object)
    s = pd.Series(m.df["split"].to_numpy(dtype=object))
    n = s.groupby(g).nunique()
    bad = n[n > 1].index.tolist()
    if not bad:
        return {}
    sel = pd.Series(g).isin(bad).to_numpy()
    sub = pd.DataFrame({"g": g[sel], "s": s[sel].to_numpy()})
    return {k: sorted(v) for k, v in sub.groupby("g")["s"].unique().items()}


def _check_frac(name: str, v: float) -> None:
    if not (0.0 <= float(v) < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")


def assign_splits(
    m: Manifest,
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    respect_official: bool = True,
    carve_val: bool = True,
    groups: Sequence[str] | np.ndarray | None = None,
) -> Manifest:
    """A copy of ``m`` with ``split`` assigned as described in the module docstring.

    Args:
        val, test: fractions of **groups** (each in [0, 1), ``val + test < 1``).
        seed: any int; the same seed and groups give the same split.
        respect_official: keep the splits of datasets that already have two or more split
            values; False re-splits everything by group.
        carve_val: give officially split datasets without ``val`` a group-level ``val``
            taken from their ``train`` groups.
        groups: group label per row (default :func:`group_ids`).

    Raises:
        ValueError: fractions out of range.
    """
    _check_frac("val", val)
    _check_frac("test", test)
    if val + test >= 1.0:
        raise ValueError(f"val + test must be < 1, got {val} + {test}")
    g = group_ids(m) if groups is None else np.asarray(groups, dtype=object)
    split = m.df["split"].to_numpy(dtype=object).copy()
    ds = m.df["dataset"].to_numpy(dtype=object)
    datasets = list(pd.unique(ds))
    official = {d: respect_official and len(set(split[ds == d])) > 1 for d in datasets}
    decided: dict = {}  # group -> split, shared across datasets (duplicate groups may span them)
    # 1. official splits are facts; their groups are decided first
    for d in datasets:
        if official[d]:
            rows = ds == d
            for x, sp in zip(g[rows], split[rows]):
                decided.setdefault(x, sp)
    # 2. officially split datasets without val: carve val from whole-train groups
    for d in datasets:
        if not official[d] or not carve_val or val <= 0:
            continue
        rows = ds == d
        if "val" in set(split[rows]):
            continue
        tr = rows & (split == "train")
        not_train = set(g[rows & (split != "train")])
        cand = [x for x in _ordered(g[tr].tolist(), f"{seed}/val/{d}") if x not in not_train]
        chosen = set(cand[:int(round(val * len(cand)))])
        for x in chosen:
            decided[x] = "val"
        split[tr & np.isin(g, list(chosen))] = "val"
    # 3. the others: group-level split; groups already decided elsewhere keep their side
    for d in datasets:
        if official[d]:
            continue
        rows = ds == d
        order = _ordered(g[rows].tolist(), f"{seed}/split/{d}")
        quota = {"test": int(round(test * len(order))), "val": int(round(val * len(order)))}
        for x in order:
            if x in decided and decided[x] in quota:
                quota[decided[x]] -= 1
        side = {}
        for x in order:
            if x in decided:
                side[x] = decided[x]
            elif quota["test"] > 0:
                side[x] = "test"
                quota["test"] -= 1
            elif quota["val"] > 0:
                side[x] = "val"
                quota["val"] -= 1
            else:
                side[x] = "train"
            decided.setdefault(x, side[x])
        split[rows] = [side[x] for x in g[rows]]
    df = m.df.copy()
    df["split"] = split
    return Manifest(df, validate=False)


def fraction_keys(
    m: Manifest,
    *,
    seed: int = 0,
    split: str = "train",
    groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """float64 key in ``[0, 1)`` for rows of ``split`` (NaN elsewhere); see module doc."""
    g = group_ids(m) if groups is None else np.asarray(groups, dtype=object)
    keys = np.full(len(m), np.nan)
    sp = m.df["split"].to_numpy(dtype=object)
    ds = m.df["dataset"].to_numpy(dtype=object)
    for d in pd.unique(ds):
        rows = (ds == d) & (sp == split)
        if not rows.any():
            continue
        gr = g[rows]
        order = _ordered(gr.tolist(), f"{seed}/fraction/{d}")
        counts = pd.Series(gr).value_counts().to_dict()
        sizes = np.array([counts[x] for x in order], dtype=np.float64)
        start = np.concatenate([[0.0], np.cumsum(sizes)[:-1]]) / sizes.sum()
        pos = dict(zip(order, start))
        keys[rows] = [pos[x] for x in gr]
    return keys


def label_fraction(m: Manifest, fraction: float, *, seed: int = 0, split: str = "train",
                   groups: Sequence[str] | np.ndarray | None = None, keys: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the nested ``fraction`` subset of ``split`` (see module doc).

    Raises:
        ValueError: ``fraction`` not in (0, 1].
    """
    if not (0.0 < float(fraction) <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = fraction_keys(m, seed=seed, split=split, groups=groups) if keys is None else np.asarray(keys)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(k) & (k < float(fraction))


def nested_fractions(m: Manifest, fractions: Iterable[float] = DEFAULT_FRACTIONS, *, seed: int = 0,
                     split: str = "train", groups=None) -> dict[float, Manifest]:
    """``{fraction: Manifest}`` of the nested subsets (keys computed once)."""
    k = fraction_keys(m, seed=seed, split=split, groups=groups)
    return {float(f): m.subset(label_fraction(m, f, keys=k)) for f in fractions}
