"""Image manifest: one row per stored radiograph, with labels, boxes and landmarks.

The schema is the contract in ``docs/ARCHITECTURE.md``:

=================  ==========================================  ==========================================
column             dtype in ``Manifest.df``                    meaning
=================  ==========================================  ==========================================
``id``             str, unique                                 ``"{dataset}/{stem}"``
``path``           str                                         absolute path of the stored image
``dataset``        str                                         reader name (``nih``, ``tbx11k``, ...)
``split``          str                                         ``train`` / ``val`` / ``test``
``patient_id``     str                                         patient identifier (image stem if unknown)
``width``          ``Int64`` (nullable)                        stored image width in pixels
``height``         ``Int64`` (nullable)                        stored image height in pixels
``pixel_spacing``  float64 (NaN = unknown)                     mm per stored pixel, column direction
``view``           str                                         ``PA``, ``AP``, ``LATERAL``, ``UNKNOWN``
``normal``         bool                                        dataset states "no finding" / healthy
``boxes``          object: ``list[dict]``                      ``{x0, y0, x1, y1: float, label: str}``
``landmarks``      object: ``np.ndarray[float64] | None``      flattened ``(x, y)`` points
``landmark_scheme``str                                         ``"jsrt166"`` or ``""``
``label:<Name>``   float32                                     1 / 0 / NaN (unknown)
=================  ==========================================  ==========================================

Optional columns with a fixed meaning (validated when present, see ``docs/ARCHITECTURE.md``):

===================  ========================================  ===========================================
``anatomy_boxes``    object: ``list[dict]`` or None             anatomy boxes (``right lung``, ``left
                                                                lung``), same dict form and frame as
                                                                ``boxes``; None = not annotated
``lung_mask``        str or None                                manual lung mask file (binary image)
``pneumothorax_rle`` object: ``list[str]`` or None              SIIM-ACR run-length encodings
===================  ========================================  ===========================================

``boxes`` holds **disease** boxes only: patches are cut around them. Anatomy boxes never go
there.

All coordinates (boxes, landmarks) are in pixels of the *stored* image (the file at
``path``), x = column, y = row, origin at the top-left corner of the top-left pixel.
Box coordinates are half-open in spirit: ``x1 - x0`` is the box width in pixels.

Any other column is allowed ("extra" metadata such as TBX11K's ``subset``) and is kept
by :meth:`Manifest.save` / :meth:`Manifest.load` when Parquet can represent it.

On Parquet, ``boxes`` is written as ``list<struct<x0,y0,x1,y1: double, label: string>>`` and
``landmarks`` as ``list<double>`` (null when absent), so the round trip is exact.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from leader.errors import BoxError, ManifestError

__all__ = [
    "Box",
    "LabelGapWarning",
    "Manifest",
    "make_manifest",
    "LABEL_PREFIX",
    "CORE_COLUMNS",
    "VIEWS",
    "normalize_view",
]

LABEL_PREFIX = "label:"

#: Required columns, in the order they are stored.
CORE_COLUMNS: tuple[str, ...] = (
    "id",
    "path",
    "dataset",
    "split",
    "patient_id",
    "width",
    "height",
    "pixel_spacing",
    "view",
    "normal",
    "boxes",
    "landmarks",
    "landmark_scheme",
)

#: Canonical view names. Readers map their vocabulary onto these with
#: :func:`normalize_view`; the manifest itself accepts any non-empty upper-case string.
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "UNKNOWN")

_STR_COLUMNS = ("id", "path", "dataset", "split", "patient_id", "view", "landmark_scheme")

#: Optional box columns (validated like ``boxes``; None = not annotated).
BOX_COLUMNS: tuple[str, ...] = ("boxes", "anatomy_boxes")


class LabelGapWarning(UserWarning):
    """A label column is unknown (NaN) for every row of a source dataset because that
    dataset does not annotate it (the result is correct, but silent NaN columns are easy
    to miss). The message names the labels and the datasets."""


_GAP_REGISTRY: dict = {}


def _warn_gaps(gaps: "pd.DataFrame", what: str) -> None:
    """One :class:`LabelGapWarning` line for the ``(dataset, label, rows)`` table ``gaps``
    (no source-code line: issued with :func:`warnings.warn_explicit`); identical messages
    are shown once per process under the default warning filter."""
    import warnings

    if not len(gaps):
        return
    parts = []
    for ds, g in gaps.groupby("dataset", sort=False):
        labels = g["label"].tolist()
        shown = ", ".join(repr(x) for x in labels[:8]) + (f", ... (+{len(labels) - 8} more)" if len(labels) > 8 else "")
        parts.append(f"{ds} ({int(g['rows'].iloc[0])} rows) lacks {shown}")
    msg = f"{what}: label(s) not annotated by a source are unknown (NaN) for its rows: " + "; ".join(parts)
    warnings.warn_explicit(msg, LabelGapWarning, "leader.manifest", 0, module="leader.manifest",
                           registry=_GAP_REGISTRY)


# --------------------------------------------------------------------------------------
# Box
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned disease box in pixels of one stored image.

    ``(x0, y0)`` is the top-left and ``(x1, y1)`` the bottom-right corner; x is the column
    and y the row, in pixels of the image the box belongs to (float, sub-pixel allowed).

    Raises:
        BoxError: if a coordinate is not a finite number, if ``x1 <= x0`` or ``y1 <= y0``
            (zero or negative area), or if ``label`` is not a non-empty string. The message
            contains the offending box.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    label: str

    def __post_init__(self) -> None:
        coords = []
        for name in ("x0", "y0", "x1", "y1"):
            v = getattr(self, name)
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise BoxError(f"box {self._describe()}: {name}={v!r} is not a number") from None
            if not math.isfinite(f):
                raise BoxError(f"box {self._describe()}: {name}={v!r} is not finite")
            object.__setattr__(self, name, f)
            coords.append(f)
        if not isinstance(self.label, str) or not self.label:
            raise BoxError(f"box {self._describe()}: label must be a non-empty string")
        x0, y0, x1, y1 = coords
        if not x1 > x0:
            raise BoxError(f"box {self._describe()}: x1 must be > x0 (width {x1 - x0:g} px)")
        if not y1 > y0:
            raise BoxError(f"box {self._describe()}: y1 must be > y0 (height {y1 - y0:g} px)")

    def _describe(self) -> str:
        return (
            f"(x0={self.x0!r}, y0={self.y0!r}, x1={self.x1!r}, y1={self.y1!r}, "
            f"label={self.label!r})"
        )

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, label: str) -> "Box":
        """Box from top-left corner ``(x, y)`` and size ``(w, h)`` in pixels."""
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h), label)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Box":
        return cls(d["x0"], d["y0"], d["x1"], d["y1"], d["label"])

    # -- geometry ---------------------------------------------------------------------
    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        """Area in square pixels."""
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def scaled(self, sx: float, sy: float) -> "Box":
        """The box in an image resized by ``sx`` horizontally and ``sy`` vertically.

        E.g. NIH boxes come in the 1024-px frame; for an image stored at 224x224 use
        ``box.scaled(224 / 1024, 224 / 1024)``.
        """
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.label)

    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0)

    def to_mm(self, spacing: float | tuple[float, float]) -> "Box":
        """The box in millimetres from the image's top-left corner.

        ``spacing``: mm per stored pixel, one number for square pixels or ``(row_mm,
        col_mm)`` (DICOM ``PixelSpacing`` order); x is scaled by the column spacing and y by
        the row spacing. The result is a :class:`Box` whose coordinates are mm.

        Raises:
            ValueError: a spacing that is not a positive finite number.
        """
        if isinstance(spacing, (tuple, list, np.ndarray)):
            row_mm, col_mm = (float(v) for v in spacing)
        else:
            row_mm = col_mm = float(spacing)
        if not all(math.isfinite(v) and v > 0 for v in (row_mm, col_mm)):
            raise ValueError(f"pixel spacing must be positive mm, got {spacing!r}")
        return Box(self.x0 * col_mm, self.y0 * row_mm, self.x1 * col_mm, self.y1 * row_mm, self.label)

    def to_dict(self) -> dict[str, Any]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "label": self.label}


def _validated_boxes(df: pd.DataFrame, column: str, allow_none: bool) -> pd.Series:
    """The ``column`` cells as lists of box dicts (None kept when ``allow_none``), each box
    checked to be finite, of positive area and not entirely outside an image of known size."""
    widths = df["width"].to_numpy(dtype=np.float64, na_value=np.nan)
    heights = df["height"].to_numpy(dtype=np.float64, na_value=np.nan)
    ids = df["id"].tolist()
    out: list = []
    what = "boxes" if column == "boxes" else column
    for i, bl in enumerate(df[column].tolist()):
        if bl is None or (isinstance(bl, float) and math.isnan(bl)):
            out.append(None if allow_none else [])
            continue
        if type(bl) is list and not bl:
            out.append([])
            continue
        if isinstance(bl, (str, bytes, Mapping, Box)):
            raise ManifestError(f"{what} of {ids[i]!r} must be a list of boxes, got {type(bl).__name__}")
        lst = []
        for b in bl:
            try:
                box = _as_box(b)
            except BoxError as e:
                raise BoxError(f"{ids[i]}: {e}") from None
            except (KeyError, TypeError) as e:
                raise BoxError(f"{ids[i]}: malformed box {b!r}: {e}") from None
            w, h = widths[i], heights[i]
            if (not math.isnan(w) and (box.x0 >= w or box.x1 <= 0)) or (
                not math.isnan(h) and (box.y0 >= h or box.y1 <= 0)
            ):
                raise BoxError(
                    f"{ids[i]}: {'box' if column == 'boxes' else column + ' box'} {box._describe()} lies entirely "
                    f"outside the {int(w) if not math.isnan(w) else '?'}x{int(h) if not math.isnan(h) else '?'} image"
                )
            lst.append(box.to_dict())
        out.append(lst)
    return pd.Series(out, index=df.index, dtype=object)


def _as_box(b: Any) -> Box:
    if isinstance(b, Box):
        return b
    if isinstance(b, Mapping):
        return Box.from_dict(b)
    if isinstance(b, (tuple, list)) and len(b) == 5:
        return Box(*b)
    raise BoxError(f"box {b!r}: expected Box, dict(x0,y0,x1,y1,label) or 5-tuple")


def normalize_view(value: Any) -> str:
    """Map a dataset's view string onto ``PA`` / ``AP`` / ``LATERAL`` / ``UNKNOWN``.

    ``"AP erect"``, ``"AP supine"``, ``"AP"`` -> ``AP``; ``"PA"`` -> ``PA``;
    ``"L"``, ``"LL"``, ``"RL"``, ``"LATERAL"`` -> ``LATERAL``; blank / NaN -> ``UNKNOWN``.
    Other non-blank values (e.g. ``"SWIMMERS"``, ``"AP AXIAL"``) are kept upper-cased so
    that callers can decide whether to include them; they are not frontal by default.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "UNKNOWN"
    s = str(value).strip().upper()
    if not s:
        return "UNKNOWN"
    if s in ("PA", "AP", "LATERAL", "UNKNOWN"):
        return s
    if s in ("L", "LL", "RL", "LAT", "LATERAL"):
        return "LATERAL"
    if s in ("AP ERECT", "AP SUPINE", "AP UPRIGHT", "AP SEMI-ERECT", "AP SEMI ERECT"):
        return "AP"
    if s in ("PA ERECT",):
        return "PA"
    return s


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return v is pd.NA


class Manifest:
    """A validated table of images (see the module docstring for the schema).

    ``Manifest(df)`` copies ``df``, coerces lossless dtypes (``width``/``height`` to
    ``Int64``, ``pixel_spacing`` to float64, label columns to float32, boxes to lists of
    dicts, landmarks to float64 arrays) and validates. The index is reset to
    ``0..N-1``; integer arguments of :meth:`boxes`, :meth:`landmarks` and :meth:`subset`
    are positions.

    Raises:
        ManifestError: missing required column, duplicate or empty ids, a null in a
            string column, a label value outside {0, 1, NaN}, a non-numeric label column,
            negative/zero width or height, malformed landmarks. The message names the
            column and the first offending ids.
        BoxError: an invalid box (non-finite, zero area, or lying entirely outside an
            image of known size); the message names the image id and the box.
    """

    def __init__(self, df: pd.DataFrame, *, validate: bool = True) -> None:
        if not isinstance(df, pd.DataFrame):
            raise ManifestError(f"Manifest needs a pandas DataFrame, got {type(df).__name__}")
        df = df.reset_index(drop=True).copy()
        if validate:
            df = self._coerce_and_validate(df)
        self.df: pd.DataFrame = df

    # -- validation -------------------------------------------------------------------
    @staticmethod
    def _coerce_and_validate(df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in CORE_COLUMNS if c not in df.columns]
        if missing:
            raise ManifestError(f"manifest is missing required column(s) {missing}")
        n = len(df)

        for c in _STR_COLUMNS:
            col = df[c]
            bad = col.isna()
            if bad.any():
                ids = df.loc[bad, "id"].tolist()[:5] if c != "id" else list(np.flatnonzero(bad)[:5])
                raise ManifestError(f"manifest column {c!r} has null values (rows/ids {ids})")
            if n and not all(isinstance(v, str) for v in col.tolist()):
                bad_rows = [i for i, v in enumerate(col.tolist()) if not isinstance(v, str)][:5]
                raise ManifestError(f"manifest column {c!r} must hold strings (rows {bad_rows})")
            df[c] = col.astype(object)

        empty = df["id"] == ""
        if empty.any():
            raise ManifestError(f"manifest has empty ids at rows {list(np.flatnonzero(empty)[:5])}")
        dup = df["id"].duplicated(keep=False)
        if dup.any():
            first = sorted(set(df.loc[dup, "id"]))[0]
            rows = np.flatnonzero((df["id"] == first).to_numpy())
            raise ManifestError(
                f"manifest ids are not unique: {sorted(set(df.loc[dup, 'id']))[:5]} "
                f"({int(dup.sum())} rows involved); {first!r} is at rows {rows[:5].tolist()} "
                f"with paths {df['path'].iloc[rows[:5]].tolist()}"
            )

        for c in ("width", "height"):
            try:
                col = pd.to_numeric(df[c], errors="raise")
                if col.notna().any() and not np.all(np.mod(col.dropna().to_numpy(dtype=float), 1) == 0):
                    raise ValueError("non-integer")
                df[c] = col.astype("Int64")
            except (ValueError, TypeError) as e:
                raise ManifestError(f"manifest column {c!r} must be integer pixels or null: {e}") from None
            badsz = df[c].notna() & (df[c] <= 0)
            if badsz.any():
                raise ManifestError(f"manifest column {c!r} has non-positive sizes for ids {df.loc[badsz.fillna(False), 'id'].tolist()[:5]}")
        try:
            df["pixel_spacing"] = pd.to_numeric(df["pixel_spacing"], errors="raise").astype("float64")
        except (ValueError, TypeError) as e:
            raise ManifestError(f"manifest column 'pixel_spacing' must be float mm or NaN: {e}") from None
        ps = df["pixel_spacing"]
        bad = ps.notna() & ~(ps > 0)
        if bad.any():
            raise ManifestError(f"pixel_spacing must be > 0 for ids {df.loc[bad, 'id'].tolist()[:5]}")

        normal = df["normal"]
        if normal.isna().any():
            raise ManifestError(f"manifest column 'normal' has nulls for ids {df.loc[normal.isna(), 'id'].tolist()[:5]}")
        if normal.dtype != bool:
            vals = set(pd.unique(normal))
            if not vals <= {True, False, 0, 1}:
                raise ManifestError(f"manifest column 'normal' must be bool, found values {sorted(map(str, vals))[:5]}")
            df["normal"] = normal.astype(bool)

        # labels
        for c in [c for c in df.columns if isinstance(c, str) and c.startswith(LABEL_PREFIX)]:
            if c == LABEL_PREFIX:
                raise ManifestError("label column with empty name 'label:'")
            col = df[c]
            if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
                try:
                    col = pd.to_numeric(col, errors="raise")
                except (ValueError, TypeError):
                    raise ManifestError(f"label column {c!r} is not numeric") from None
            arr = col.to_numpy(dtype=np.float64, na_value=np.nan)
            ok = np.isnan(arr) | (arr == 0.0) | (arr == 1.0)
            if not ok.all():
                rows = np.flatnonzero(~ok)[:5]
                raise ManifestError(
                    f"label column {c!r} must be 1/0/NaN; ids {df['id'].iloc[rows].tolist()} "
                    f"have {arr[rows].tolist()}"
                )
            df[c] = arr.astype(np.float32)

        # boxes (disease) and the optional anatomy boxes
        for c in BOX_COLUMNS:
            if c in df.columns:
                df[c] = _validated_boxes(df, c, allow_none=(c != "boxes"))

        # landmarks
        ids = df["id"].tolist()
        out_lm: list[np.ndarray | None] = []
        for i, lm in enumerate(df["landmarks"].tolist()):
            if lm is None or (isinstance(lm, float) and math.isnan(lm)):
                out_lm.append(None)
                continue
            a = np.asarray(lm, dtype=np.float64).reshape(-1)
            if a.size % 2 or not np.all(np.isfinite(a)):
                raise ManifestError(
                    f"landmarks of {ids[i]!r} must be finite flattened (x, y) pairs, got {a.size} values"
                )
            out_lm.append(a)
        df["landmarks"] = pd.Series(out_lm, index=df.index, dtype=object)

        # column order: core, labels, extras
        labels = [c for c in df.columns if isinstance(c, str) and c.startswith(LABEL_PREFIX)]
        extras = [c for c in df.columns if c not in CORE_COLUMNS and c not in labels]
        return df[list(CORE_COLUMNS) + labels + extras]

    # -- accessors --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        ds = ", ".join(f"{k}={v}" for k, v in self.df["dataset"].value_counts(sort=False).items())
        return f"Manifest({len(self)} images; {ds}; labels={self.label_names})"

    @property
    def label_columns(self) -> list[str]:
        """The ``label:<Name>`` column names, in table order."""
        return [c for c in self.df.columns if isinstance(c, str) and c.startswith(LABEL_PREFIX)]

    @property
    def label_names(self) -> list[str]:
        """Label names without the ``label:`` prefix, in table order."""
        return [c[len(LABEL_PREFIX):] for c in self.label_columns]

    @property
    def ids(self) -> list[str]:
        return self.df["id"].tolist()

    def labels_array(self, names: Sequence[str] | None = None, *, warn_gaps: bool = True) -> np.ndarray:
        """``float32 [N, L]`` of 1 / 0 / NaN, columns in :attr:`label_names` order
        (or in ``names`` order; a name absent from the manifest gives a NaN column).

        With ``warn_gaps`` (default), one :class:`LabelGapWarning` line names the labels
        that are unknown for every row of some dataset (:meth:`label_gaps`), e.g. a
        ``COVID-19`` column requested from NIH rows."""
        names = self.label_names if names is None else list(names)
        if warn_gaps:
            _warn_gaps(self.label_gaps(names), "labels_array")
        out = np.full((len(self), len(names)), np.nan, dtype=np.float32)
        for j, n in enumerate(names):
            c = LABEL_PREFIX + n
            if c in self.df.columns:
                out[:, j] = self.df[c].to_numpy(dtype=np.float32, na_value=np.nan)
        return out

    def label_counts(self) -> pd.DataFrame:
        """Per label: number of positive, negative and unknown (NaN) images."""
        rows = []
        for n in self.label_names:
            v = self.df[LABEL_PREFIX + n].to_numpy(dtype=np.float32)
            rows.append(
                {"label": n, "positive": int((v == 1).sum()), "negative": int((v == 0).sum()),
                 "unknown": int(np.isnan(v).sum())}
            )
        return pd.DataFrame(rows, columns=["label", "positive", "negative", "unknown"])

    def labels_by_name(self) -> dict[str, np.ndarray]:
        """``{label name: float32 [N]}`` of 1 / 0 / NaN, one entry per :attr:`label_names` (in order)."""
        y = self.labels_array()
        return {n: y[:, j] for j, n in enumerate(self.label_names)}

    def _pos(self, i: int) -> int:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"row position must be an int, got {type(i).__name__}")
        if i < -n or i >= n:
            raise IndexError(f"row {i} out of range for a manifest of {n} images")
        return int(i) % n if n else int(i)

    def boxes(self, i: int) -> list[Box]:
        """Boxes of row ``i`` (position), in stored-image pixels."""
        return [Box.from_dict(d) for d in self.df["boxes"].iat[self._pos(i)]]

    def boxes_mm(self, i: int, column: str = "boxes") -> list[Box]:
        """Boxes of row ``i`` in millimetres (:meth:`Box.to_mm` with the row's
        ``pixel_spacing``, square pixels); ``column`` ``"boxes"`` or ``"anatomy_boxes"``.

        Raises:
            ManifestError: the row's pixel spacing is unknown (NaN), naming the image id.
        """
        k = self._pos(i)
        sp = float(self.df["pixel_spacing"].iat[k])
        if not math.isfinite(sp):
            raise ManifestError(f"{self.df['id'].iat[k]}: pixel spacing unknown, boxes cannot be given in mm")
        cell = self.df[column].iat[k] if column in self.df.columns else None
        return [Box.from_dict(d).to_mm(sp) for d in (cell or [])]

    def anatomy_boxes(self, i: int) -> list[Box] | None:
        """Anatomy boxes of row ``i`` (stored-image pixels), or None when the row has no
        anatomy annotation (no ``anatomy_boxes`` column or a null cell)."""
        if "anatomy_boxes" not in self.df.columns:
            return None
        cell = self.df["anatomy_boxes"].iat[self._pos(i)]
        return None if cell is None else [Box.from_dict(d) for d in cell]

    def label_gaps(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """``DataFrame(dataset, label, rows)``: each (dataset, label) pair where the label is
        unknown (NaN, or the column is absent) for **every** row of that dataset, i.e. the
        dataset does not annotate it; ``rows`` = the dataset's row count. ``names`` default
        to :attr:`label_names`. Datasets in order of first appearance, labels in ``names``
        order."""
        names = self.label_names if names is None else list(names)
        cols = ["dataset", "label", "rows"]
        if not len(self) or not names:
            return pd.DataFrame(columns=cols)
        codes, datasets = pd.factorize(self.df["dataset"], sort=False)
        n_ds = len(datasets)
        rows = np.bincount(codes, minlength=n_ds)
        out = []
        for name in names:
            c = LABEL_PREFIX + name
            if c in self.df.columns:
                known = ~np.isnan(self.df[c].to_numpy(dtype=np.float64, na_value=np.nan))
                n_known = np.bincount(codes, weights=known, minlength=n_ds)
            else:
                n_known = np.zeros(n_ds)
            for d in np.flatnonzero(n_known == 0):
                out.append((int(d), name))
        out.sort(key=lambda t: t[0])
        return pd.DataFrame([(str(datasets[d]), n, int(rows[d])) for d, n in out], columns=cols)

    def landmarks(self, i: int) -> np.ndarray | None:
        """Landmarks of row ``i`` as ``float64 [P, 2]`` (x, y) stored-image pixels, or None."""
        a = self.df["landmarks"].iat[self._pos(i)]
        if a is None:
            return None
        return np.asarray(a, dtype=np.float64).reshape(-1, 2).copy()

    def index_of(self, image_id: str) -> int:
        """Row position of ``image_id`` (KeyError if absent)."""
        hits = np.flatnonzero(self.df["id"].to_numpy() == image_id)
        if not len(hits):
            raise KeyError(image_id)
        return int(hits[0])

    # -- derivation -------------------------------------------------------------------
    def subset(self, mask_or_indices: Any) -> "Manifest":
        """Rows selected by a boolean mask of length N or by integer positions."""
        sel = mask_or_indices
        if isinstance(sel, pd.Series):
            sel = sel.to_numpy()
        arr = np.asarray(sel)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise ManifestError(f"boolean mask of shape {arr.shape} for a manifest of {len(self)} rows")
            sub = self.df.loc[arr]
        else:
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ManifestError(f"subset needs a boolean mask or integer positions, got {arr.dtype}")
            sub = self.df.iloc[arr.astype(np.int64).reshape(-1)]
        return Manifest(sub.reset_index(drop=True), validate=False)

    @classmethod
    def concat(cls, manifests: Iterable["Manifest"]) -> "Manifest":
        """Stack manifests. Label columns are the union (in order of first appearance);
        a label a manifest lacks is NaN (unknown) for its rows, and one
        :class:`LabelGapWarning` line names those labels and datasets. Ids must stay
        unique."""
        ms = list(manifests)
        if not ms:
            return make_manifest([])
        labels: list[str] = []
        extras: list[str] = []
        for m in ms:
            for c in m.label_columns:
                if c not in labels:
                    labels.append(c)
            for c in m.df.columns:
                if c not in CORE_COLUMNS and c not in m.label_columns and c not in extras:
                    extras.append(c)
        frames = []
        for m in ms:
            d = m.df.copy()
            for c in labels:
                if c not in d.columns:
                    d[c] = np.float32(np.nan)
            for c in extras:
                if c not in d.columns:
                    d[c] = None
            frames.append(d[list(CORE_COLUMNS) + labels + extras])
        frames = [f for f in frames if len(f)] or frames[:1]
        df = pd.concat(frames, ignore_index=True)
        for c in labels:
            df[c] = df[c].astype(np.float32)
        out = cls(df)
        gaps = []
        for m in ms:  # labels a part lacks entirely (column absent): unknown for all its rows
            have = set(m.label_columns)
            for ds, n in m.df["dataset"].value_counts(sort=False).items():
                gaps += [(ds, c[len(LABEL_PREFIX):], int(n)) for c in labels if c not in have]
        if gaps:
            g = pd.DataFrame(gaps, columns=["dataset", "label", "rows"])
            g = g.groupby(["dataset", "label"], sort=False, as_index=False)["rows"].sum()
            _warn_gaps(g, "Manifest.concat")
        return out

    # -- persistence ------------------------------------------------------------------
    def _arrow_table(self):
        import pyarrow as pa

        df = self.df
        box_type = pa.list_(
            pa.struct(
                [("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()),
                 ("y1", pa.float64()), ("label", pa.string())]
            )
        )
        arrays, fields = [], []

        def add(name, arr):
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))

        for c in ("id", "path", "dataset", "split", "patient_id"):
            add(c, pa.array(df[c].tolist(), type=pa.string()))
        for c in ("width", "height"):
            add(c, pa.array(df[c].to_numpy(dtype="float64", na_value=np.nan), type=pa.float64(),
                            from_pandas=True).cast(pa.int64()))
        add("pixel_spacing", pa.array(df["pixel_spacing"].to_numpy(dtype=np.float64), type=pa.float64()))
        add("view", pa.array(df["view"].tolist(), type=pa.string()))
        add("normal", pa.array(df["normal"].to_numpy(dtype=bool), type=pa.bool_()))
        add("boxes", pa.array(df["boxes"].tolist(), type=box_type))
        add("landmarks", pa.array([None if a is None else np.asarray(a, np.float64) for a in df["landmarks"].tolist()],
                                  type=pa.list_(pa.float64())))
        add("landmark_scheme", pa.array(df["landmark_scheme"].tolist(), type=pa.string()))
        for c in self.label_columns:
            add(c, pa.array(df[c].to_numpy(dtype=np.float32), type=pa.float32()))
        for c in df.columns:
            if c in CORE_COLUMNS or c in self.label_columns:
                continue
            if c in BOX_COLUMNS:  # anatomy boxes: the same struct type, null = not annotated
                add(c, pa.array(df[c].tolist(), type=box_type))
                continue
            try:
                arr = pa.array(df[c], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise ManifestError(f"extra column {c!r} cannot be written to Parquet: {e}") from None
            add(str(c), arr)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def save(self, path: str | os.PathLike) -> Path:
        """Write Parquet atomically (:func:`leader.utils.atomic_path`: a temporary file in the
        same folder, fsynced, then ``os.replace``; the usual ``0o666 & ~umask`` permissions).

        A crash mid-write never leaves a truncated file at ``path``.
        """
        import pyarrow.parquet as pq

        from leader.utils import atomic_path

        path = Path(path)
        table = self._arrow_table()
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        """Read a manifest written by :meth:`save` (validated on load).

        Raises:
            ManifestError: the file is missing, not Parquet, damaged (pyarrow cannot decode
                it), its ``boxes`` / ``landmarks`` columns have the wrong structure, or the
                table fails validation; the message starts with the path.
            BoxError: an invalid box (message starts with the path and names the image id).
        """
        import pyarrow.parquet as pq

        path = Path(path)
        try:
            table = pq.read_table(path)
            table.validate(full=True)  # e.g. invalid UTF-8 in a string column, found only on access
            df = table.to_pandas()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types on damaged files
            raise ManifestError(f"{path}: cannot read manifest Parquet: {type(e).__name__}: {e}") from None
        try:
            if "boxes" in df.columns:
                df["boxes"] = pd.Series(
                    [[] if b is None else [dict(d) for d in b] for b in df["boxes"].tolist()],
                    index=df.index, dtype=object,
                )
            for c in BOX_COLUMNS[1:]:
                if c in df.columns:
                    df[c] = pd.Series([None if b is None else [dict(d) for d in b] for b in df[c].tolist()],
                                      index=df.index, dtype=object)
            if "pneumothorax_rle" in df.columns:
                df["pneumothorax_rle"] = pd.Series(
                    [None if v is None else [str(x) for x in v] for v in df["pneumothorax_rle"].tolist()],
                    index=df.index, dtype=object)
            if "landmarks" in df.columns:
                df["landmarks"] = pd.Series(
                    [None if a is None else np.asarray(a, dtype=np.float64) for a in df["landmarks"].tolist()],
                    index=df.index, dtype=object,
                )
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{path}: column 'boxes' or 'landmarks' has the wrong structure: {e}") from None
        try:
            return cls(df)
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
        except BoxError as e:
            raise BoxError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------
# construction from records
# --------------------------------------------------------------------------------------

_RECORD_KEYS = (
    "id", "path", "dataset", "split", "patient_id", "width", "height", "pixel_spacing",
    "view", "normal", "boxes", "landmarks", "landmark_scheme", "labels",
)


def make_manifest(records: Sequence[Mapping[str, Any]]) -> Manifest:
    """Build a :class:`Manifest` from one dict per image.

    Keys (see the module docstring for units): ``id``, ``path``, ``dataset``, ``split``,
    ``patient_id``, ``width``, ``height``, ``pixel_spacing``, ``view``, ``normal``,
    ``boxes`` (list of :class:`Box` or dicts), ``landmarks`` (array-like of (x, y) pairs,
    any shape that flattens to 2P values, or None), ``landmark_scheme``, ``labels``
    (``{name: 1 | 0 | NaN}``; names without the ``label:`` prefix). Any other key becomes
    an extra column.

    Defaults: ``dataset`` ``"unknown"``; ``id`` ``"{dataset}/{stem of path}"``; ``split``
    ``"train"``; ``patient_id`` the stem of ``path`` (or the part of ``id`` after the
    first ``/``); ``width``/``height``/``pixel_spacing`` unknown; ``view`` ``"UNKNOWN"``;
    ``normal`` False; no boxes; no landmarks; ``landmark_scheme`` ``""``; no labels.
    A label a record does not mention is NaN (unknown) for that record.

    Raises:
        ManifestError: a record lacks both ``id`` and ``path``, or the result fails
            :class:`Manifest` validation.
        BoxError: an invalid box (message names the record id).
    """
    label_names: list[str] = []
    extras: list[str] = []
    rows = []
    for k, r in enumerate(records):
        if "path" not in r and "id" not in r:
            raise ManifestError(f"record {k} has neither 'id' nor 'path'")
        path = str(r.get("path", "") or "")
        dataset = str(r.get("dataset") or "unknown")
        stem = Path(path).stem if path else str(r["id"]).split("/", 1)[-1]
        rid = str(r["id"]) if r.get("id") is not None else f"{dataset}/{stem}"
        boxes = []
        for b in r.get("boxes") or []:
            try:
                boxes.append(_as_box(b).to_dict())
            except BoxError as e:
                raise BoxError(f"{rid}: {e}") from None
        lm = r.get("landmarks")
        row = {
            "id": rid,
            "path": path,
            "dataset": dataset,
            "split": str(r.get("split") or "train"),
            "patient_id": str(r["patient_id"]) if not _is_missing(r.get("patient_id")) and r.get("patient_id") != "" else stem,
            "width": None if _is_missing(r.get("width")) else int(r["width"]),
            "height": None if _is_missing(r.get("height")) else int(r["height"]),
            "pixel_spacing": np.nan if _is_missing(r.get("pixel_spacing")) else float(r["pixel_spacing"]),
            "view": normalize_view(r.get("view")),
            "normal": bool(r.get("normal", False)),
            "boxes": boxes,
            "landmarks": None if lm is None else np.asarray(lm, dtype=np.float64).reshape(-1),
            "landmark_scheme": str(r.get("landmark_scheme") or ""),
        }
        for name, v in (r.get("labels") or {}).items():
            if name not in label_names:
                label_names.append(name)
            row[LABEL_PREFIX + name] = np.nan if _is_missing(v) else float(v)
        for key, v in r.items():
            if key in _RECORD_KEYS:
                continue
            if key not in extras:
                extras.append(key)
            row[key] = v
        rows.append(row)

    cols = list(CORE_COLUMNS) + [LABEL_PREFIX + n for n in label_names] + extras
    df = pd.DataFrame(rows, columns=cols)
    if not rows:
        df = df.astype({"width": "Int64", "height": "Int64", "pixel_spacing": "float64", "normal": bool})
    for n in label_names:
        df[LABEL_PREFIX + n] = df[LABEL_PREFIX + n].astype(np.float64).astype(np.float32)
    # keep list/array cells as Python objects even when pandas would try to expand them, and
    # None (unknown) in extra string columns as None
    for c in extras:
        vals = [row.get(c) for row in rows]
        if any(v is None for v in vals) or any(isinstance(v, (list, tuple, dict)) for v in vals):
            df[c] = pd.Series(vals, index=df.index, dtype=object)
    df["boxes"] = pd.Series([row["boxes"] for row in rows], index=df.index, dtype=object)
    df["landmarks"] = pd.Series([row["landmarks"] for row in rows], index=df.index, dtype=object)
    return Manifest(df)
