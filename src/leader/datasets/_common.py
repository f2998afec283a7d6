"""Helpers shared by the dataset readers (file discovery, header reads, skip warnings,
the skip report)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from leader.errors import ImageReadError, ManifestError, skip_report  # noqa: F401 - re-exported (one implementation, in errors)

#: File suffixes treated as images by folder scans (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".mha", ".mhd", ".nii",
                            ".tif", ".tiff", ".bmp", ".img"})

_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}


class MissingFileWarning(UserWarning):
    """Rows were skipped because their image file does not exist."""


class UnreadableFileWarning(UserWarning):
    """Rows were skipped (``on_error="skip"``) because their image header could not be read."""


@dataclass(frozen=True)
class HeaderInfo:
    width: int
    height: int
    pixel_spacing: float | None  # mm per pixel, column direction


@dataclass(frozen=True)
class SkippedItem:
    """One image left out of an index: ``id``, ``path``, ``dataset``, a short ``reason``
    category (``"missing file"``, ``"truncated"``, ``"corrupt"``, ``"no pixel data"``, ...;
    see :func:`leader.io.reason_code`) and the full error ``message``."""

    id: str
    path: str
    dataset: str
    reason: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IndexNote:
    """One fact about an index that is not a skipped image but that the index report must
    state: ``kind`` (``"label gap"``, ``"duplicate row"``, ``"annotation ignored"``, ...),
    ``dataset``, a one-line ``message`` and a JSON-ready ``data`` dict (counts, lines, ids)."""

    kind: str
    dataset: str
    message: str
    data: dict

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dataset": self.dataset, "message": self.message, "data": dict(self.data)}


class SkipLog(list):
    """The list :func:`collect_skipped` yields: :class:`SkippedItem` s, plus ``notes``
    (:class:`IndexNote` s: label gaps, resolved duplicate rows, ignored annotations)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.notes: list[IndexNote] = []


_SKIPPED: contextvars.ContextVar[SkipLog | None] = contextvars.ContextVar("leader_skipped_items", default=None)


@contextlib.contextmanager
def collect_skipped() -> Iterator[SkipLog]:
    """Collect every image the readers leave out while the ``with`` block runs.

    ``with collect_skipped() as skipped: m = index_root(root, on_error="skip")`` fills
    ``skipped`` with one :class:`SkippedItem` per missing file and per unreadable file
    (``on_error="skip"``), in reader order, and ``skipped.notes`` with the
    :class:`IndexNote` s of the index (label gaps, duplicate-row resolutions, ...). Nested
    blocks each see their own items and pass them on to the enclosing block. Readers behave
    the same without a collector (the warnings are always emitted).
    """
    items = SkipLog()
    outer = _SKIPPED.get()
    token = _SKIPPED.set(items)
    try:
        yield items
    finally:
        _SKIPPED.reset(token)
        if outer is not None:
            outer.extend(items)
            outer.notes.extend(items.notes)


def record_skipped(dataset: str, image_id: str, path: str | os.PathLike, reason: str,
                   message: str = "") -> None:
    """Add one item to the active :func:`collect_skipped` list (no-op without one)."""
    items = _SKIPPED.get()
    if items is not None:
        items.append(SkippedItem(str(image_id), str(path), str(dataset), reason, message or reason))


def record_note(kind: str, dataset: str, message: str, **data) -> None:
    """Add one :class:`IndexNote` to the active :func:`collect_skipped` list (no-op without
    one); ``data`` must be JSON-ready."""
    items = _SKIPPED.get()
    if items is not None:
        items.notes.append(IndexNote(str(kind), str(dataset), str(message), data))


def read_size(path: str | os.PathLike) -> HeaderInfo:
    """Stored width/height (pixels) and column pixel spacing (mm, or None) of an image,
    from :func:`leader.io.verify_image`: the header plus a structural check of the file
    (PNG chunk CRCs and ``IEND``, JPEG end marker, DICOM pixel data / transfer syntax /
    decoder, MetaImage data, declared-size limit) without decoding pixels, so that a damaged
    file is found when the index is built.

    Raises:
        ImageReadError: the file is unreadable, truncated or corrupt (message starts with
            the path); DicomReadError for DICOM problems.
    """
    from leader.io import verify_image

    meta = verify_image(Path(path))
    ps = getattr(meta, "pixel_spacing", None)
    col_mm = None
    if ps is not None:
        try:
            col_mm = float(ps[1]) if isinstance(ps, (tuple, list)) else float(ps)
        except (TypeError, ValueError, IndexError):
            col_mm = None
    return HeaderInfo(int(meta.width), int(meta.height), col_mm)


def warn_skipped(dataset: str, ids: Sequence[str], reason: str, root: Path | str,
                 category: type[Warning] = MissingFileWarning) -> None:
    """One warning naming the count and the first few ids of skipped rows."""
    if not ids:
        return
    head = ", ".join(map(str, list(ids)[:5]))
    more = "" if len(ids) <= 5 else f", ... (+{len(ids) - 5} more)"
    warnings.warn(
        f"{dataset}: skipped {len(ids)} row(s) under {root}: {reason}: {head}{more}",
        category,
        stacklevel=3,
    )


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def read_sizes(
    dataset: str,
    root: Path,
    ids: Sequence[str],
    paths: Sequence[Path | str],
    on_error: str = "raise",
    where: Sequence[str] | None = None,
) -> tuple[list[HeaderInfo | None], list[str], list[str]]:
    """Header sizes for existing files.

    ``where`` (optional, one per row) says where the metadata names the image (e.g.
    ``"train.txt: line 5"``); it is added to the missing-file warning and skip record.

    Returns ``(infos, missing_ids, unreadable_ids)``; ``infos[i]`` is None for a missing or
    (with ``on_error="skip"``) unreadable file. Emits one :class:`MissingFileWarning`
    and one :class:`UnreadableFileWarning` (with the reasons) when rows are skipped, and
    records every skipped file in the active :func:`collect_skipped` list.

    Raises:
        ImageReadError: (``on_error="raise"``) the first unreadable, truncated or corrupt
            file; the message starts with its path.
    """
    from leader.io import reason_code

    check_on_error(on_error)
    infos: list[HeaderInfo | None] = []
    missing: list[str] = []
    shown: list[str] = []
    unreadable: list[str] = []
    reasons: list[str] = []
    locs = list(where) if where is not None else [None] * len(ids)
    for i, p, loc in zip(ids, paths, locs):
        p = Path(p)
        if not p.is_file():
            missing.append(i)
            shown.append(f"{i} ({loc})" if loc else i)
            infos.append(None)
            record_skipped(dataset, i, p, "missing file",
                           f"{p}: image file not found" + (f" (listed at {loc})" if loc else ""))
            continue
        try:
            infos.append(read_size(p))
        except ImageReadError as e:
            if on_error == "raise":
                raise
            unreadable.append(i)
            reasons.append(f"{i} ({e})")
            infos.append(None)
            record_skipped(dataset, i, p, reason_code(e), str(e))
    warn_skipped(dataset, shown, "image file missing", root)
    if unreadable:
        warn_skipped(dataset, reasons, "image unreadable, truncated or corrupt", root, UnreadableFileWarning)
    return infos, missing, unreadable


def unique_ids(dataset: str, root: Path, paths: Sequence[Path]) -> list[str]:
    """``"{dataset}/{stem}"`` per file; stems that collide use the relative path
    (without suffix, ``/``-separated) instead so that ids stay unique."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out = []
    for p, s in zip(paths, stems):
        if counts[s] == 1:
            out.append(f"{dataset}/{s}")
        else:
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = Path(p.name)
            out.append(f"{dataset}/{rel.with_suffix('').as_posix()}")
    return out


def split_from_path(path: Path, root: Path) -> str | None:
    """``train``/``val``/``test`` when a folder between ``root`` and the file is so named."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in parts:
        s = _SPLIT_WORDS.get(part.lower())
        if s:
            return s
    return None


def as_root(root: str | os.PathLike) -> Path:
    r = Path(root).expanduser()
    if not r.exists():
        raise ManifestError(f"{r}: dataset root does not exist")
    return r.resolve()


def find_first(root: Path, patterns: Sequence[str], max_depth: int = 3) -> list[Path]:
    """Files matching any glob pattern (case-insensitive on the file name) within
    ``max_depth`` folder levels below ``root``, shallowest first, then sorted."""
    regs = [re.compile(_glob_to_re(p), re.IGNORECASE) for p in patterns]
    hits: list[tuple[int, str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames[:] = []
        dirnames.sort()
        for f in filenames:
            if any(r.fullmatch(f) for r in regs):
                hits.append((depth, f, Path(dirpath) / f))
    hits.sort(key=lambda t: (t[0], str(t[2])))
    return [h[2] for h in hits]


def find_required(root: Path, patterns: Sequence[str], what: str, max_depth: int = 3) -> list[Path]:
    """:func:`find_first`, or :class:`~leader.errors.ManifestError`
    ``"<root>: no <what> found"`` when nothing matches."""
    hits = find_first(root, patterns, max_depth=max_depth)
    if not hits:
        raise ManifestError(f"{root}: no {what} found")
    return hits


def as_paths(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One path (``str`` / ``PathLike``) or a sequence of them as a list of :class:`Path`
    (nothing is checked on disk)."""
    return [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]


def split_files(root: Path, metadata, patterns: Sequence[str], what: str,
                split_of: Callable[[Path], str], max_depth: int) -> list[Path]:
    """Per-split metadata files: explicit ``metadata`` (:func:`as_paths`, in the given order),
    else those matching ``patterns`` under ``root`` (:func:`find_required`) sorted train, val,
    test by ``split_of(path)`` and then by path.

    Raises:
        ManifestError: nothing found (``"<root>: no <what> found"``), or whatever ``split_of``
            raises for a found file it cannot place.
    """
    if metadata is not None:
        return as_paths(metadata)
    files = find_required(root, patterns, what, max_depth=max_depth)
    return sorted(files, key=lambda f: (["train", "val", "test"].index(split_of(f)), str(f)))


def _glob_to_re(pat: str) -> str:
    import fnmatch

    return fnmatch.translate(pat)


# --------------------------------------------------------------------------------------
# helpers for the metadata-table readers (CheXpert, MIMIC, PadChest, VinDr, ...)
# --------------------------------------------------------------------------------------


class UnknownLabelWarning(UserWarning):
    """Label values or class names outside a dataset's documented vocabulary were met
    (the message gives the count, the file and the first rows)."""


class UnreadableRowWarning(UserWarning):
    """Metadata rows could not be parsed; they were kept with unknown (NaN) labels or
    skipped, as the reader documents (the message gives the count, file and rows)."""


def warn_rows(dataset: str, path: Path | str, rows: Sequence, reason: str,
              category: type[Warning] = UnreadableRowWarning) -> None:
    """One warning ``"<dataset>: <path>: <n> row(s) <reason>: <first rows>"``."""
    if not len(rows):
        return
    head = ", ".join(map(str, list(rows)[:5]))
    more = "" if len(rows) <= 5 else f", ... (+{len(rows) - 5} more)"
    warnings.warn(f"{dataset}: {path}: {len(rows)} row(s) {reason}: {head}{more}", category, stacklevel=3)


def _read_bytes(path: Path, what: str) -> bytes:
    """The (decompressed) bytes of a ``.csv``, ``.csv.gz`` or single-file ``.zip``."""
    import gzip
    import zipfile
    import zlib

    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise ManifestError(f"{path}: cannot read {what}: the zip holds {len(names)} files, "
                                        "expected exactly one")
                return z.read(names[0])
        return path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: {what} not found") from None
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError) as e:
        raise ManifestError(f"{path}: cannot read {what}: {type(e).__name__}: {e}") from None


def _decode_utf8(path: Path, data: bytes, what: str) -> str:
    """Decode as UTF-8 (a BOM is dropped); invalid bytes raise naming line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        col = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ManifestError(f"{path}: line {line}: cannot read {what}: byte 0x{data[start]:02x} at column "
                            f"{col} is not valid UTF-8 (re-save the file as UTF-8)") from None


def read_utf8_or_latin1(path: str | os.PathLike, what: str = "metadata CSV") -> str:
    """The text of ``path``: UTF-8 (a BOM is dropped), or Latin-1 when it is not valid UTF-8
    (some public metadata files, e.g. the COVID-19 image collection's, are Latin-1).

    Raises:
        ManifestError: ``"<path>: cannot read <what>: ..."`` when the file cannot be read.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read {what}: {e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def check_csv_rows(path: Path | str, data: bytes, what: str = "metadata CSV") -> list[str]:
    """Check that every non-blank record of comma-separated ``data`` has as many fields as
    the header (trailing empty header fields may be omitted) and that header names are
    unique; returns the header fields. Quoted fields (with commas or newlines inside) are
    honoured; vectorised, so it costs little next to the parse itself.

    Raises:
        ManifestError: naming the file, the line and the field counts, or the duplicate name.
    """
    import csv as _csv

    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size:
        return []
    quotes = np.flatnonzero(buf == 34)
    nl = np.flatnonzero(buf == 10)
    commas = np.flatnonzero(buf == 44)
    if quotes.size:
        nl = nl[np.searchsorted(quotes, nl) % 2 == 0]
        commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [buf.size]])
    fields = np.bincount(np.searchsorted(nl, commas), minlength=starts.size)[:starts.size] + 1
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (buf[np.minimum(starts, buf.size - 1)] == 13))
    head_text = data[:int(ends[0])].decode("utf-8-sig", errors="replace").rstrip("\r")
    try:
        header = next(_csv.reader([head_text]))
    except (StopIteration, _csv.Error):
        header = []
    names = [h.strip() for h in header]
    seen: set[str] = set()
    for nm in names:
        if nm and nm in seen:
            raise ManifestError(f"{path}: line 1: duplicate column name {nm!r} in the header of the {what}")
        seen.add(nm)
    n_max = int(fields[0])
    n_min = n_max
    while n_min > 1 and n_min - 1 < len(names) and not names[n_min - 1]:
        n_min -= 1
    bad = ~blank & ((fields < n_min) | (fields > n_max))
    bad[0] = False
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        text = data[int(starts[r]):int(ends[r])][:120].decode("utf-8", errors="replace").rstrip("\r")
        more = "more" if fields[r] > n_max else "fewer"
        raise ManifestError(f"{path}: line {r + 1}: {int(fields[r])} fields, {more} fields than the "
                            f"header ({n_max}): wrong column count in {text!r}")
    return header


def read_table(path: str | os.PathLike, *, what: str = "metadata CSV", **kw):
    """``pandas.read_csv`` of a ``.csv``, ``.csv.gz`` or single-file ``.zip`` with errors
    turned into :class:`~leader.errors.ManifestError` naming the file (and line).

    Defaults: every column as Python ``str`` (object), blanks as NaN
    (``keep_default_na=False``, ``na_values=[""]``) so that values such as ``"None"`` or
    ``"NA"`` stay literal; ``index_col=False``. The file must be UTF-8 (a BOM is allowed);
    every row must have the header's number of fields (:func:`check_csv_rows`: pandas would
    otherwise shift a long row's columns or fill a short row with blanks silently); header
    names must be unique after stripping spaces.

    Raises:
        ManifestError: file missing or unreadable (bad gzip/zip), invalid UTF-8 (names line
            and column), a row with the wrong number of fields (names the line), duplicate
            column names, any pandas parse error.
    """
    import io

    import pandas as pd

    path = Path(path)
    data = _read_bytes(path, what)
    _decode_utf8(path, data, what)
    if kw.get("sep", kw.get("delimiter", ",")) == ",":
        check_csv_rows(path, data, what)
    kw.setdefault("dtype", object)
    kw.setdefault("keep_default_na", False)
    kw.setdefault("na_values", [""])
    kw.setdefault("index_col", False)  # never silently shift columns when rows are too long
    kw.setdefault("encoding", "utf-8-sig")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(io.BytesIO(data), **kw)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read {what}: {type(e).__name__}: {e}") from None
    for w in caught:
        if issubclass(w.category, pd.errors.ParserWarning):
            raise ManifestError(f"{path}: cannot read {what}: data rows have more fields than the header "
                                f"({w.message})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    cols = [str(c).strip() for c in df.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise ManifestError(f"{path}: line 1: duplicate column name(s) {dup} in the header of the {what}")
    df.columns = cols
    return df


def require_columns(df, path: Path | str, columns: Sequence[str]) -> None:
    miss = [c for c in columns if c not in df.columns]
    if miss:
        raise ManifestError(f"{path}: missing column(s) {miss}; have {list(df.columns)}")


def csv_header(path: Path) -> list[str]:
    """Column names of the first line of a CSV (``.csv``, ``.csv.gz``, ``.zip``), stripped;
    ``[]`` when unreadable. Reads at most 64 KiB."""
    import gzip
    import zipfile
    import zlib

    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as fh:
                line = fh.readline(65536)
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    return []
                with z.open(names[0]) as fh:
                    line = fh.readline(65536)
        else:
            with open(path, "rb") as fh:
                line = fh.readline(65536)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError):
        return []
    text = line.decode("latin-1").strip().lstrip("\ufeff").lstrip("ï»¿")
    import csv as _csv

    try:
        row = next(_csv.reader([text]))
    except (StopIteration, _csv.Error):  # e.g. a stray carriage return inside the line
        return []
    return [c.strip() for c in row]


def stored_sizes(
    dataset: str,
    root: Path,
    ids: Sequence[str],
    paths: Sequence[str],
    check_files: bool,
    on_error: str,
    default_w=None,
    default_h=None,
    where: Sequence[str] | None = None,
):
    """Vectorised stored sizes for table readers (``where``: see :func:`read_sizes`).

    Returns ``(width, height, spacing, keep)``: float64 arrays (NaN = unknown) and a
    bool mask of rows to keep. With ``check_files=True`` sizes and column spacing (mm)
    come from the image headers and rows whose file is missing / unreadable (``on_error
    ="skip"``) get ``keep=False`` (one warning each, see :func:`read_sizes`). With
    ``check_files=False`` nothing is opened: sizes are ``default_w`` / ``default_h``
    (scalars or arrays; None = unknown) and spacing is NaN.
    """
    import numpy as np

    n = len(ids)
    if check_files:
        infos, _, _ = read_sizes(dataset, root, ids, paths, on_error, where)
        w = np.array([i.width if i else np.nan for i in infos], dtype=np.float64)
        h = np.array([i.height if i else np.nan for i in infos], dtype=np.float64)
        sp = np.array([(i.pixel_spacing if (i and i.pixel_spacing) else np.nan) for i in infos],
                      dtype=np.float64)
        keep = np.array([i is not None for i in infos], dtype=bool)
        return w, h, sp, keep

    def arr(v):
        if v is None:
            return np.full(n, np.nan)
        a = np.asarray(v, dtype=np.float64)
        return np.full(n, float(a)) if a.ndim == 0 else a.astype(np.float64)

    return arr(default_w), arr(default_h), np.full(n, np.nan), np.ones(n, dtype=bool)


def table_manifest(
    *,
    ids,
    paths,
    dataset: str,
    split,
    patient_id,
    width=None,
    height=None,
    pixel_spacing=None,
    view="UNKNOWN",
    normal=False,
    boxes=None,
    labels: dict | None = None,
    extras: dict | None = None,
    keep=None,
):
    """Build a :class:`~leader.manifest.Manifest` column-wise (fast path for big tables).

    Scalars broadcast; ``width``/``height`` float arrays with NaN = unknown; ``labels``
    maps native label names to float arrays of 1 / 0 / NaN; ``extras`` become extra
    columns; ``keep`` (bool mask) drops rows last.
    """
    import numpy as np
    import pandas as pd

    from leader.manifest import LABEL_PREFIX, Manifest

    n = len(ids)

    def col(v, dtype=object):
        if isinstance(v, (str, bool, int, float)) or v is None:
            return np.full(n, v, dtype=dtype if dtype is not object else object)
        return np.asarray(v, dtype=dtype) if dtype is not object else np.asarray(v, dtype=object)

    def size(v):
        if v is None:
            return pd.array([pd.NA] * n, dtype="Int64")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim == 0:
            a = np.full(n, float(a))
        return pd.array(np.where(np.isnan(a), np.nan, a), dtype="Float64").astype("Int64")

    ps = np.full(n, np.nan) if pixel_spacing is None else np.asarray(pixel_spacing, dtype=np.float64)
    if ps.ndim == 0:
        ps = np.full(n, float(ps))
    data = {
        "id": np.asarray(ids, dtype=object),
        "path": np.asarray(paths, dtype=object),
        "dataset": dataset,
        "split": col(split),
        "patient_id": np.asarray(patient_id, dtype=object).astype(str).astype(object),
        "width": size(width),
        "height": size(height),
        "pixel_spacing": ps,
        "view": col(view),
        "normal": col(normal, bool),
        "boxes": pd.Series(boxes if boxes is not None else [[] for _ in range(n)], dtype=object),
        "landmarks": pd.Series([None] * n, dtype=object),
        "landmark_scheme": "",
    }
    df = pd.DataFrame(data)
    if n == 0:
        df = df.astype({"normal": bool})
    add = {}
    blocks = []
    if isinstance(labels, tuple):  # (names, float32 [N, L]) -> one block
        names, mat = labels
        blocks.append(pd.DataFrame(np.asarray(mat, dtype=np.float32), index=df.index,
                                   columns=[LABEL_PREFIX + str(c) for c in names]))
        labels = None
    for name, v in (labels or {}).items():
        add[LABEL_PREFIX + name] = np.asarray(v, dtype=np.float32)
    for name, v in (extras or {}).items():
        if isinstance(v, (list, tuple)):
            add[name] = pd.Series(v, dtype=object)
        elif np.ndim(v) == 0:
            add[name] = np.full(n, v, dtype=object if isinstance(v, str) else None)
        elif isinstance(v, np.ndarray) and v.dtype == object and any(x is None for x in v.tolist()):
            add[name] = pd.Series(v, index=df.index, dtype=object)  # keep None (unknown), not NaN
        else:
            add[name] = v
    if add:
        blocks.append(pd.DataFrame(add, index=df.index))
    if blocks:
        df = pd.concat([df] + blocks, axis=1)
    if keep is not None and not np.all(keep):
        df = df.loc[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    return Manifest(df)


def resolve_metadata(root: Path, metadata, patterns: Sequence[str], what: str, max_depth: int = 2) -> list[Path]:
    """Explicit ``metadata`` files (str / path / list) or those matching ``patterns`` under
    ``root``; raises :class:`~leader.errors.ManifestError` when none is found."""
    if metadata is not None:
        out = as_paths(metadata)
        for p in out:
            if not p.is_file():
                raise ManifestError(f"{p}: {what} not found")
        return out
    hits = find_first(root, patterns, max_depth=max_depth)
    if not hits:
        raise ManifestError(f"{root}: no {what} found (looked for {', '.join(patterns)})")
    return hits


# --------------------------------------------------------------------------------------
# COCO JSON (TBX11K boxes, the COVID-19 collection's lung boxes)
# --------------------------------------------------------------------------------------


def load_coco(jp: Path) -> dict:
    """The COCO document of ``jp``, with ``images`` / ``annotations`` / ``categories`` lists.

    Raises:
        ManifestError: file missing or unreadable, not UTF-8, not JSON (names the line), not
            an object, or one of the three keys is not a list.
    """
    data = _read_bytes(jp, "COCO JSON")
    text = _decode_utf8(jp, data, "COCO JSON")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{jp}: line {e.lineno}: cannot read COCO JSON: {e.msg}") from None
    except RecursionError:
        raise ManifestError(f"{jp}: cannot read COCO JSON: nested too deeply") from None
    if not isinstance(coco, dict):
        raise ManifestError(f"{jp}: COCO JSON must be an object with images / annotations / categories, "
                            f"got {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        v = coco.get(key, [])
        if v is None:
            v = []
        if not isinstance(v, list):
            raise ManifestError(f"{jp}: '{key}' must be a list, got {type(v).__name__}")
        coco[key] = v
    return coco


def coco_objects(jp: Path, coco: dict, key: str) -> Iterator[tuple[int, dict]]:
    """``(index, entry)`` of each entry of ``coco[key]`` (``"images"``, ``"annotations"``,
    ``"categories"``), checked one at a time as the caller reaches it.

    Raises:
        ManifestError: ``"<jp>: <key>[<index>] must be an object, got ..."`` for an entry that
            is not a JSON object.
    """
    for k, entry in enumerate(coco[key]):
        if not isinstance(entry, dict):
            raise ManifestError(f"{jp}: {key}[{k}] must be an object, got {entry!r}")
        yield k, entry


def coco_image(jp: Path, k: int, im: dict) -> tuple[int | str, str]:
    """``(id, file_name)`` of the COCO ``images[k]`` object ``im``; the file name is returned as
    written (not stripped).

    Raises:
        ManifestError: an id that is not an integer or string, or a missing / blank
            ``file_name`` (names the image id).
    """
    iid = json_id(jp, f"images[{k}].id", im.get("id"))
    fn = im.get("file_name")
    if not isinstance(fn, str) or not fn.strip():
        raise ManifestError(f"{jp}: image id {iid!r} has no file_name")
    return iid, fn


def is_json_id(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str)


def json_id(jp: Path, where: str, v):
    if not is_json_id(v):
        raise ManifestError(f"{jp}: {where} must be an integer or string id, got {v!r}")
    return v


def json_size(jp: Path, iid, name: str, v) -> int | None:
    """A COCO image width/height: absent/null -> None, else a positive integer."""
    if v is None:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok:
        f = float(v)
        ok = math.isfinite(f) and f >= 1 and f == int(f) and f <= 2**31
    if not ok:
        raise ManifestError(f"{jp}: image id {iid!r}: {name} must be a positive integer, got {v!r}")
    return int(v)
