"""View (projection) filters: PA / AP / lateral, with unknown and unusual views counted.

Readers store the view in the manifest's ``view`` column through
:func:`leader.manifest.normalize_view`: ``PA``, ``AP`` (``AP ERECT``, ``AP SUPINE``, ...),
``LATERAL`` (``L``, ``LL``, ``RL``, ``LAT``), ``UNKNOWN`` (blank / NaN), and any other
non-blank value kept upper-cased (``SWIMMERS``, ``AP AXIAL``, ``PA LLD``, ``XTABLE
LATERAL``, PadChest ``COSTAL``, ...). Source of the rare values: MIT-LCP/mimic-cxr issue 15,
mimic-code issue 1284, RoentGen-v2 issue 3 (field report BR-12).

A filter keeps only the views it names. ``UNKNOWN`` is **never** treated as frontal or
lateral: it is excluded (unless named) and counted, and so are the unusual values.

========================  ======================================
group name                views kept
========================  ======================================
``"frontal"``             ``PA``, ``AP``
``"pa"`` / ``"ap"``       ``PA`` / ``AP``
``"lateral"``             ``LATERAL``
``"all"``                 every row (nothing excluded)
========================  ======================================

Unusual values can be added explicitly (``filter_views(m, "frontal", extra=["AP AXIAL"])``)
or any explicit set of view strings can be passed (``views=["PA", "AP", "AP AXIAL"]``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from leader.manifest import Manifest, normalize_view

__all__ = ["VIEW_GROUPS", "ViewReport", "filter_views", "view_counts", "resolve_views"]

log = logging.getLogger(__name__)

#: Named view groups (values are canonical ``view`` strings).
VIEW_GROUPS: dict[str, tuple[str, ...]] = {
    "frontal": ("PA", "AP"),
    "pa": ("PA",),
    "ap": ("AP",),
    "lateral": ("LATERAL",),
}


@dataclass
class ViewReport:
    """What a view filter did. ``counts``: images per view before filtering (all views,
    ``UNKNOWN`` included); ``kept`` / ``excluded``: totals; ``unknown``: rows with view
    ``UNKNOWN`` that were excluded; ``unusual``: excluded rows per view value outside
    ``PA/AP/LATERAL/UNKNOWN``."""

    views: tuple[str, ...]
    counts: dict[str, int]
    kept: int
    excluded: int
    unknown: int
    unusual: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        s = f"views {list(self.views)}: kept {self.kept}, excluded {self.excluded} ({parts})"
        if self.unknown:
            s += f"; {self.unknown} UNKNOWN excluded"
        if self.unusual:
            s += f"; unusual excluded {self.unusual}"
        return s


def resolve_views(views: str | Iterable[str] | None, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """Group name or explicit views -> tuple of canonical view strings (None = all).

    Raises:
        ValueError: an unknown group name (a string that is neither a group nor a view
            that :func:`normalize_view` maps onto ``PA``/``AP``/``LATERAL``).
    """
    if views is None:
        out: list[str] = []
        if not extra:
            return None
    elif isinstance(views, str):
        key = views.strip().lower()
        if key == "all":
            return None
        if key in VIEW_GROUPS:
            out = list(VIEW_GROUPS[key])
        else:
            v = normalize_view(views)
            if v not in ("PA", "AP", "LATERAL", "UNKNOWN"):
                raise ValueError(
                    f"unknown view group {views!r}; use one of {sorted(VIEW_GROUPS) + ['all']} "
                    f"or an explicit list of view strings")
            out = [v]
    else:
        out = []
        for v in views:  # group names may be mixed with view strings: ["frontal", "AP AXIAL"]
            key = str(v).strip().lower()
            out += list(VIEW_GROUPS[key]) if key in VIEW_GROUPS else [normalize_view(v)]
    out += [normalize_view(v) for v in extra]
    return tuple(dict.fromkeys(out))


def view_counts(m: Manifest) -> dict[str, int]:
    """Images per ``view`` value (all values, ``UNKNOWN`` included)."""
    return {str(k): int(v) for k, v in m.df["view"].value_counts(sort=False).items()}


def filter_views(
    m: Manifest,
    views: str | Iterable[str] | None = "frontal",
    *,
    extra: Iterable[str] = (),
) -> tuple[Manifest, ViewReport]:
    """Rows whose ``view`` is in ``views`` (a group name of :data:`VIEW_GROUPS`, ``"all"``,
    or explicit view strings, normalised with :func:`normalize_view`) plus ``extra``.

    Default ``"frontal"`` = ``{PA, AP}``. ``UNKNOWN`` and unusual views are excluded unless
    named, and counted in the returned :class:`ViewReport` (also logged at INFO).

    Raises:
        ValueError: unknown group name.
    """
    keep_views = resolve_views(views, extra)
    counts = view_counts(m)
    if keep_views is None:
        return m, ViewReport(("all",), counts, len(m), 0, 0, {})
    v = m.df["view"].to_numpy(dtype=object)
    mask = np.isin(v, np.asarray(keep_views, dtype=object))
    excl = v[~mask]
    unknown = int((excl == "UNKNOWN").sum())
    unusual: dict[str, int] = {}
    for val in excl:
        if val not in ("PA", "AP", "LATERAL", "UNKNOWN"):
            unusual[val] = unusual.get(val, 0) + 1
    rep = ViewReport(keep_views, counts, int(mask.sum()), int((~mask).sum()), unknown, unusual)
    log.info("filter_views: %s", rep)
    return m.subset(mask), rep
