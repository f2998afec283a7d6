"""EmbeddingStore: sharded safetensors arrays with per-shard id tables; atomic, resumable, O(batch) appends.

Layout of a store directory (format version 2)::

    store/
      meta.json                  {"format": "leader-embedding-store", "version": 2,
                                  "keys": {name: dim}, "dtype": "float32"|"float16",
                                  "meta": {...user metadata...}}
      index.parquet              the commit list: one row per committed shard, in insertion
                                 order; columns shard (int64: file number), n (int64: rows)
      shards/shard-00000.safetensors       one tensor per key, [n, dim]
      shards/shard-00000.ids.safetensors   the shard's ids: hash U64 [n] (64-bit BLAKE2b of
                                           the UTF-8 id), offsets I64 [n + 1], utf8 U8 [bytes]
      ...

It holds (a) precomputed teacher embeddings used by
:class:`leader.teachers.EmbeddingStoreTeacher` (the only way to distil an API-only expert such
as CXR Foundation, paper §4), and (b) the student's ``E_DA`` / ``E'_D`` / ``E'_A`` written by
``leader.embed`` for the evaluations.

Crash safety: :meth:`EmbeddingStore.append` writes the vectors shard, then its id table (each
a temporary file + ``os.replace``), and only then the commit list (temporary file +
``os.replace``). The commit list is the single source of truth: files of a shard it does not
list (a crash or a full disk between the writes) are *orphans*, ignored by readers and deleted
by the next writer. A failed write raises :class:`leader.errors.WriteError` (the file, the
reason, what is intact) and leaves the committed store as it was. Re-running a job skips ids
already present (``append(..., skip_existing=True)`` or :meth:`contains`).

Cost: an append writes its own rows plus the commit list (16 bytes per shard), never the
existing ids, so it is O(batch). Memory: ids and vectors stay on disk (memory-mapped); the
id -> row lookup is built on first use and holds 16 bytes per id (hash + position, sorted runs
merged geometrically); a hash match is confirmed against the stored id, so lookups are exact.
:meth:`EmbeddingStore.merge_from` moves whole shards of another store by hard links (no vector
copy).

Format 1 (``index.parquet`` with columns id, shard, row; no id tables) still opens: readers
hold its ids in memory; the first writer (:meth:`EmbeddingStore.create` on an existing store,
or :meth:`EmbeddingStore.append`) migrates it in place by writing the id tables and then the
new commit list (vectors untouched; a crash in between leaves a valid format-1 store).

Concurrency: one writer at a time (no file locking); any number of readers. A reader sees the
commit list of when it opened the store (:meth:`EmbeddingStore.open` again to see later rows).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import faults
from .errors import write_error
from .utils import atomic_path, atomic_write, atomic_write_json, read_json

__all__ = ["EmbeddingStore", "import_npz"]

_FORMAT = "leader-embedding-store"
_VERSION = 2
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}
_ST_TO_NP = {"F32": np.float32, "F16": np.float16, "U64": np.uint64, "I64": np.int64, "U8": np.uint8}
_MAX_OPEN_SHARDS = 64
_SHARD_RE = re.compile(r"^shard-(\d+)(\.ids)?\.safetensors$")
_NO_LINK = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", -1)}  # errors a copy would hit too


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def _ids_name(number: int) -> str:
    return f"shard-{number:05d}.ids.safetensors"


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Return ``(header dict, data start offset)`` of a safetensors file."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(fh.read(n).decode("utf-8"))
    return header, 8 + n


def _tensor(path: Path, header: dict, start: int, name: str) -> np.ndarray:
    """Memory-map tensor ``name`` of a safetensors file (an empty tensor is an in-memory array)."""
    info = header.get(name)
    if info is None:
        raise ValueError(f"{path}: no tensor {name!r} (has {sorted(k for k in header if k != '__metadata__')})")
    np_dtype = _ST_TO_NP.get(info["dtype"])
    if np_dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    shape = tuple(int(s) for s in info["shape"])
    begin, end = info["data_offsets"]
    if end - begin != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
        raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch tensor
        array = array.detach().cpu().float().numpy()
    return np.asarray(array)


def _fmt_ids(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    more = f", ... ({len(ids)} in total)" if len(ids) > limit else ""
    return f"[{shown}{more}]"


def _hash(encoded: Sequence[bytes]) -> np.ndarray:
    """``np.uint64 [n]``: 64-bit BLAKE2b of each UTF-8 id (stable across processes and versions)."""
    b2 = hashlib.blake2b
    return np.fromiter((int.from_bytes(b2(e, digest_size=8).digest(), "little") for e in encoded),
                       dtype=np.uint64, count=len(encoded))


def _id_table(encoded: Sequence[bytes], hashes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hash U64 [n], offsets I64 [n + 1], utf8 U8 [bytes])`` of UTF-8 ids."""
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    utf8 = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return (_hash(encoded) if hashes is None else hashes), offsets, utf8


def _decode_ids(offsets: np.ndarray, utf8: np.ndarray) -> list[str]:
    raw = utf8.tobytes()
    o = np.asarray(offsets).tolist()
    return [raw[a:b].decode("utf-8") for a, b in zip(o[:-1], o[1:])]


def _merge_runs(big: tuple[np.ndarray, np.ndarray], small: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted ``(hash, position)`` runs in O(n) with ~2x their size of peak memory."""
    (h1, p1), (h2, p2) = big, small
    at = np.searchsorted(h1, h2, "right") + np.arange(len(h2))  # final slots of the small run
    rest = np.ones(len(h1) + len(h2), dtype=bool)
    rest[at] = False
    h = np.empty(len(rest), dtype=np.uint64)
    p = np.empty(len(rest), dtype=np.int64)
    h[rest], h[at] = h1, h2
    p[rest], p[at] = p1, p2
    return h, p


class _HashIndex:
    """id hash -> global row, as sorted runs of ``(hash U64, position I64)`` (16 bytes per id).

    :meth:`add` appends a sorted run and merges it into the previous one while that one is at
    most twice as long (binary-counter merging: O(log N) runs, amortised O(log N) work per id,
    no O(N) work per append).
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, positions: np.ndarray) -> None:
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], positions[order].astype(np.int64, copy=False)))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            small = self.runs.pop()
            big = self.runs.pop()
            self.runs.append(_merge_runs(big, small))

    def candidates(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(query index, position)`` of every stored row whose hash equals a query's."""
        qis, poss = [], []
        for h, p in self.runs:
            lo = np.searchsorted(h, q, "left")
            cnt = np.searchsorted(h, q, "right") - lo
            total = int(cnt.sum())
            if not total:
                continue
            qi = np.repeat(np.arange(len(q)), cnt)
            first = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
            qis.append(qi)
            poss.append(p[first + np.arange(total)])
        if not qis:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(qis), np.concatenate(poss)

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes + p.nbytes for h, p in self.runs)


class EmbeddingStore:
    """An append-only, id-indexed collection of fixed-width embedding matrices.

    Every id has one row for every key in :attr:`dims` (e.g. ``{"embedding": 1376}`` for a
    teacher store, or ``{"e_da": 1024, "disease": 1376, "anatomy": 2048}`` for the student's
    outputs). Values are stored as ``float32`` or ``float16`` and always returned as
    ``np.float32``.

    Create with :meth:`create`, open with :meth:`open`; do not call the constructor.

    Example::

        store = EmbeddingStore.create("out/cxrfm", {"embedding": 1376}, meta={"model": "cxr-fm v1"})
        todo = [i for i, have in zip(ids, store.contains(ids)) if not have]
        store.append(todo, {"embedding": vectors})          # float [n, 1376]
        x = store.get(["nih/00000001_000"], "embedding")      # np.float32 [1, 1376]
    """

    def __init__(self, path: Path, dims: dict[str, int], dtype: str, meta: dict, *, _token: object = None):
        if _token is not _PRIVATE:
            raise TypeError("use EmbeddingStore.create(path, dims) or EmbeddingStore.open(path)")
        self.path = Path(path)
        self._dims = dict(dims)
        self._dtype = dtype
        self._meta = dict(meta)
        self._numbers = np.zeros(0, dtype=np.int64)  # file number of each committed shard, in order
        self._starts = np.zeros(1, dtype=np.int64)  # [S + 1]: global row of each shard's first row
        self._legacy: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None  # format 1 id tables
        self._tables: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._lookup: _HashIndex | None = None
        self._writer = False

    def __getstate__(self) -> dict:
        # caches (memory maps, id tables, lookup) are rebuilt lazily in the receiving process
        state = dict(self.__dict__)
        state.update(_tables=OrderedDict(), _open=OrderedDict(), _lookup=None)
        return state

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        dims: Mapping[str, int],
        meta: Mapping[str, Any] | None = None,
        exist_ok: bool = True,
        dtype: str = "float32",
    ) -> "EmbeddingStore":
        """Create a store at ``path`` (a directory), or reopen it for writing when it exists.

        Reopening prepares the store for appends: a format-1 store is migrated to format 2
        and the files of uncommitted shards (a crashed append) are deleted.

        Args:
            path: store directory (created with parents).
            dims: ``{key: width}``; keys are non-empty strings, widths positive ints.
            meta: JSON-serialisable user metadata (e.g. model name, checkpoint, input size),
                stored under ``"meta"`` in ``meta.json``. When reopening, new keys are added;
                a key whose stored value differs raises ``ValueError`` (so that a resumed
                extraction cannot silently mix two models).
            exist_ok: reopen an existing store (default). ``False`` raises
                ``FileExistsError`` if ``meta.json`` exists.
            dtype: on-disk dtype, ``"float32"`` or ``"float16"``.

        Returns:
            The open store.

        Raises:
            ValueError: invalid dims/dtype, or reopening with different dims, dtype or
                conflicting meta (names both values).
            FileExistsError: the store exists and ``exist_ok`` is false.
            leader.errors.WriteError: ``meta.json`` / the commit list / a migration could not
                be written (disk full, read-only); an existing store is left as it was.
        """
        path = Path(path)
        dims = cls._check_dims(dims)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        meta = dict(meta or {})
        meta_file = path / "meta.json"
        if meta_file.exists():
            if not exist_ok:
                raise FileExistsError(f"embedding store already exists at {path}")
            store = cls.open(path)
            if store.dims != dims:
                raise ValueError(
                    f"embedding store {path} has dims {store.dims}, but {dims} were requested"
                )
            if store.dtype != dtype:
                raise ValueError(f"embedding store {path} has dtype {store.dtype}, but {dtype} was requested")
            conflicts = {k: (store._meta[k], v) for k, v in meta.items() if k in store._meta and store._meta[k] != v}
            if conflicts:
                desc = "; ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in conflicts.items())
                raise ValueError(f"embedding store {path}: metadata differs ({desc})")
            store._begin_write()
            if any(k not in store._meta for k in meta):
                store._meta.update(meta)
                store._write_meta()
            return store
        store = cls(path, dims, dtype, meta, _token=_PRIVATE)
        try:
            (path / "shards").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, path / "shards") from exc
        try:
            store._write_commits(store._numbers, np.zeros(0, np.int64))
        except OSError as exc:
            raise write_error(exc, path / "index.parquet") from exc
        store._write_meta()  # last: a store exists once meta.json does
        store._writer = True
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> "EmbeddingStore":
        """Open an existing store for reading (format 2, or format 1 read in memory).

        Raises:
            FileNotFoundError: no ``meta.json`` in ``path``, or a committed shard file is missing.
            ValueError: malformed ``meta.json`` or index.
        """
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no embedding store at {path} (missing meta.json)")
        info = read_json(meta_file)
        if not isinstance(info, dict) or "keys" not in info:
            raise ValueError(f"{meta_file}: not an embedding store meta file (no 'keys')")
        dims = cls._check_dims(info["keys"])
        dtype = info.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"{meta_file}: unsupported dtype {dtype!r}")
        store = cls(path, dims, dtype, info.get("meta") or {}, _token=_PRIVATE)
        index_file = path / "index.parquet"
        if index_file.exists():
            df = pd.read_parquet(index_file)
            if "id" in df.columns:
                store._load_format1(df, index_file)
            elif {"shard", "n"} <= set(df.columns):
                numbers = df["shard"].to_numpy(dtype=np.int64)
                counts = df["n"].to_numpy(dtype=np.int64)
                if len(np.unique(numbers)) != len(numbers) or (counts < 0).any():
                    raise ValueError(f"{index_file}: repeated shard numbers or negative row counts")
                store._set_commits(numbers, counts)
            else:
                raise ValueError(f"{index_file}: not an embedding store index (columns {list(df.columns)})")
            for number in store._numbers.tolist():
                names = [_shard_name(number)] + ([] if store._legacy is not None else [_ids_name(number)])
                for name in names:
                    if not (path / "shards" / name).is_file():
                        raise FileNotFoundError(f"embedding store {path}: committed shard file {name} is missing")
        return store

    def _load_format1(self, df: pd.DataFrame, index_file: Path) -> None:
        """Read a format-1 index (one row per id) into in-memory id tables."""
        missing_cols = {"id", "shard", "row"} - set(df.columns)
        if missing_cols:
            raise ValueError(f"{index_file}: missing columns {sorted(missing_cols)}")
        ids = [str(i) for i in df["id"].tolist()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{index_file}: duplicate ids in the index")
        shard = df["shard"].to_numpy(dtype=np.int64)
        row = df["row"].to_numpy(dtype=np.int64)
        uniq, first = np.unique(shard, return_index=True)
        numbers = uniq[np.argsort(first, kind="stable")]
        tables, counts = [], []
        for number in numbers.tolist():
            sel = np.flatnonzero(shard == number)
            order = np.argsort(row[sel], kind="stable")
            if not np.array_equal(row[sel][order], np.arange(len(sel))):
                raise ValueError(f"{index_file}: rows of shard {number} are not 0..{len(sel) - 1}")
            tables.append(_id_table([ids[i].encode("utf-8") for i in sel[order]]))
            counts.append(len(sel))
        self._legacy = tables
        self._set_commits(numbers, np.asarray(counts, dtype=np.int64))

    def _set_commits(self, numbers: np.ndarray, counts: np.ndarray) -> None:
        self._numbers = np.asarray(numbers, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._lookup = None
        self._tables.clear()
        self._open.clear()

    @staticmethod
    def _check_dims(dims: Mapping[str, int]) -> dict[str, int]:
        if not isinstance(dims, Mapping) or not dims:
            raise ValueError(f"dims must be a non-empty mapping {{key: width}}, got {dims!r}")
        out = {}
        for key, dim in dims.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"dims keys must be non-empty strings, got {key!r}")
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) <= 0:
                raise ValueError(f"dims[{key!r}] must be a positive int, got {dim!r}")
            out[key] = int(dim)
        return out

    def _intact(self) -> str:
        return f"the embedding store {self.path} ({len(self)} committed rows)"

    def _write_meta(self) -> None:
        target = self.path / "meta.json"
        try:
            atomic_write_json(target, {"format": _FORMAT, "version": _VERSION, "keys": self._dims,
                                       "dtype": self._dtype, "meta": self._meta})
        except OSError as exc:
            raise write_error(exc, target, intact=f"the previous {target.name}") from exc

    def _write_commits(self, numbers: np.ndarray, counts: np.ndarray) -> None:
        """Atomically replace the commit list (raises ``OSError``; callers wrap it)."""
        df = pd.DataFrame({"shard": np.asarray(numbers, np.int64), "n": np.asarray(counts, np.int64)})
        with atomic_path(self.path / "index.parquet") as tmp:
            df.to_parquet(tmp, index=False)

    def _begin_write(self) -> None:
        """Before the first write of this handle: migrate format 1, delete orphaned shard files."""
        if self._writer:
            return
        if self._legacy is not None:
            self._migrate()
        self._remove_orphans()
        self._writer = True

    def _migrate(self) -> None:
        """Format 1 -> 2: write the id tables, then the commit list (vectors are not touched)."""
        counts = np.diff(self._starts)
        target = self.path
        try:
            for k, number in enumerate(self._numbers.tolist()):
                target = self.path / "shards" / _ids_name(number)
                _write_id_file(target, *self._legacy[k])
            faults.point("store.migrate_before_commit")
            target = self.path / "index.parquet"
            self._write_commits(self._numbers, counts)
        except OSError as exc:
            raise write_error(exc, target, intact=f"the format-1 embedding store {self.path} (unchanged)") from exc
        self._legacy = None
        self._tables.clear()
        self._write_meta()

    def _remove_orphans(self) -> None:
        committed = set(self._numbers.tolist())
        shards = self.path / "shards"
        for p in list(shards.iterdir()) if shards.is_dir() else []:
            m = _SHARD_RE.match(p.name)
            stale_tmp = p.name.startswith(".shard-") and p.name.endswith(".tmp")
            if stale_tmp or (m and int(m.group(1)) not in committed):
                with contextlib.suppress(OSError):
                    p.unlink()
        for p in self.path.iterdir():
            if p.name.startswith((".index.parquet.", ".meta.json.")) and p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()

    # ------------------------------------------------------------------ properties
    @property
    def dims(self) -> dict[str, int]:
        """``{key: width}`` (a copy)."""
        return dict(self._dims)

    @property
    def dtype(self) -> str:
        """On-disk dtype name, ``"float32"`` or ``"float16"``."""
        return self._dtype

    @property
    def meta(self) -> dict:
        """User metadata given to :meth:`create` (a copy)."""
        return dict(self._meta)

    @property
    def ids(self) -> list[str]:
        """All ids, in insertion order (a new list, decoded from the shards' id tables)."""
        out: list[str] = []
        for k in range(len(self._numbers)):
            _h, offsets, utf8 = self._table(k, cache=False)
            out += _decode_ids(offsets, utf8)
        return out

    @property
    def n_shards(self) -> int:
        """Number of committed shards."""
        return len(self._numbers)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and bool(self.contains([item])[0])

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, n={len(self)}, dims={self._dims}, dtype={self._dtype})"

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """Return ``np.bool_ [len(ids)]``: whether each id is stored (exact, not probabilistic)."""
        return self._find(list(ids)) >= 0

    # ------------------------------------------------------------------ id tables and lookup
    def _shard_path(self, number: int) -> Path:
        return self.path / "shards" / _shard_name(number)

    def _table(self, k: int, cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hash U64 [n], offsets I64 [n + 1], utf8 U8 [bytes])`` of committed shard ``k``."""
        if self._legacy is not None:
            return self._legacy[k]
        got = self._tables.get(k)
        if got is not None:
            self._tables.move_to_end(k)
            return got
        path = self.path / "shards" / _ids_name(int(self._numbers[k]))
        header, start = _read_safetensors_header(path)
        h, offsets, utf8 = (_tensor(path, header, start, name) for name in ("hash", "offsets", "utf8"))
        n = int(self._starts[k + 1] - self._starts[k])
        if h.shape != (n,) or offsets.shape != (n + 1,) or utf8.ndim != 1 or (n and int(offsets[-1]) != len(utf8)):
            raise ValueError(f"{path}: id table does not match the {n} committed rows of this shard")
        table = (h, offsets, utf8)
        if cache:
            self._tables[k] = table
            while len(self._tables) > _MAX_OPEN_SHARDS:
                self._tables.popitem(last=False)
        return table

    def _index(self) -> _HashIndex:
        if self._lookup is None:
            idx = _HashIndex()
            if len(self):
                h = np.concatenate([np.asarray(self._table(k, cache=False)[0]) for k in range(len(self._numbers))])
                idx.add(h, np.arange(len(h), dtype=np.int64))
            self._lookup = idx
        return self._lookup

    def _locate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global rows -> ``(shard position, row in shard)``."""
        k = np.searchsorted(self._starts, pos, "right") - 1
        return k, pos - self._starts[k]

    def _match(self, hashes: np.ndarray, encoded_of: Callable[[int], bytes]) -> np.ndarray:
        """Global row of each query (``-1``: absent); a hash match is confirmed on the stored id."""
        out = np.full(len(hashes), -1, dtype=np.int64)
        if not len(self) or not len(hashes):
            return out
        qi, cand = self._index().candidates(hashes)
        if not len(qi):
            return out
        k, rows = self._locate(cand)
        order = np.argsort(k, kind="stable")
        bounds = np.flatnonzero(np.diff(k[order])) + 1
        for grp in np.split(order, bounds):
            shard = int(k[grp[0]])
            _h, offsets, utf8 = self._table(shard)
            r = rows[grp]
            a, b = offsets[r].tolist(), offsets[r + 1].tolist()
            whole = utf8.tobytes() if 16 * len(grp) >= len(offsets) else None
            for j, lo, hi in zip(grp.tolist(), a, b):
                stored = whole[lo:hi] if whole is not None else utf8[lo:hi].tobytes()
                if stored == encoded_of(int(qi[j])):
                    out[qi[j]] = cand[j]
        return out

    def _find(self, ids: list) -> np.ndarray:
        """Global row of each id (``-1``: absent; a non-string is never present)."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if not len(self) or not ids:
            return out
        sel = [j for j, i in enumerate(ids) if isinstance(i, str)]
        encoded = [ids[j].encode("utf-8") for j in sel]
        out[sel] = self._match(_hash(encoded), encoded.__getitem__)
        return out

    # ------------------------------------------------------------------ writing
    def append(
        self,
        ids: Sequence[str],
        arrays: Mapping[str, Any],
        skip_existing: bool = False,
    ) -> int:
        """Append rows for new ids as one new shard (vectors + id table), then commit it.

        Cost O(n): the existing ids are never rewritten.

        Args:
            ids: new, unique string ids, ``n`` of them.
            arrays: ``{key: array [n, dims[key]]}`` for exactly the store's keys; numpy arrays
                or torch tensors of any real dtype; values must be finite.
            skip_existing: drop ids already in the store (and their rows) instead of raising;
                makes re-running an extraction idempotent.

        Returns:
            The number of rows written (0 when nothing was new).

        Raises:
            ValueError: duplicate ids within ``ids`` or already stored (names up to 5 and the
                count), missing/extra keys, wrong shapes (names the key, expected and received
                shape), non-finite values (names the key and the first bad id) or values that
                overflow float16.
            TypeError: an id that is not a string.
            leader.errors.WriteError: a file could not be written (disk full, read-only,
                file-size limit); the committed store is unchanged and the partial shard removed.
        """
        ids = list(ids)
        for i in ids:
            if not isinstance(i, str):
                raise TypeError(f"ids must be strings, got {type(i).__name__} {i!r}")
        n = len(ids)
        if set(arrays) != set(self._dims):
            missing = sorted(set(self._dims) - set(arrays))
            extra = sorted(set(arrays) - set(self._dims))
            raise ValueError(
                f"embedding store {self.path}: arrays must have exactly keys {sorted(self._dims)}; "
                f"missing {missing}, unexpected {extra}"
            )
        np_dtype = _DTYPES[self._dtype][1]
        data: dict[str, np.ndarray] = {}
        for key, dim in self._dims.items():
            arr = _to_numpy(arrays[key])
            if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != dim:
                raise ValueError(
                    f"embedding store {self.path}: key {key!r} expects shape ({n}, {dim}) "
                    f"for {n} ids, got {tuple(arr.shape)}"
                )
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise ValueError(f"key {key!r}: expected a real numeric array, got dtype {arr.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):  # reported just below
                arr = np.ascontiguousarray(arr.astype(np_dtype, copy=False))
            finite = np.isfinite(arr).all(axis=1)
            if not finite.all():
                bad = ids[int(np.argmin(finite))]
                why = " (float16 overflow?)" if self._dtype == "float16" else ""
                raise ValueError(
                    f"embedding store {self.path}: key {key!r} has non-finite values{why}, "
                    f"first at id {bad!r} ({int((~finite).sum())} rows)"
                )
            data[key] = arr
        seen: set[str] = set()
        dup_batch = [i for i in ids if i in seen or seen.add(i)]
        if dup_batch:
            raise ValueError(f"duplicate ids within the batch: {_fmt_ids(dup_batch)}")
        encoded = [i.encode("utf-8") for i in ids]
        hashes = _hash(encoded)
        present = self._match(hashes, encoded.__getitem__) >= 0
        if present.any():
            if not skip_existing:
                dup = [i for i, p in zip(ids, present) if p]
                raise ValueError(
                    f"embedding store {self.path}: {len(dup)} ids already stored: {_fmt_ids(dup)} "
                    "(use skip_existing=True to skip them)"
                )
            keep = ~present
            ids = [i for i, k in zip(ids, keep) if k]
            encoded = [e for e, k in zip(encoded, keep) if k]
            hashes = hashes[keep]
            data = {k: np.ascontiguousarray(v[keep]) for k, v in data.items()}
            n = len(ids)
        if n == 0:
            return 0
        self._begin_write()
        number = int(self._numbers.max()) + 1 if len(self._numbers) else 0
        from safetensors.numpy import save  # noqa: PLC0415

        vec_file = self._shard_path(number)
        id_file = self.path / "shards" / _ids_name(number)
        target = vec_file
        try:
            with atomic_write(vec_file, "wb") as fh:
                fh.write(save(data, metadata={"n": str(n), "format": _FORMAT}))
            faults.point("store.after_shard")
            target = id_file
            _write_id_file(id_file, *_id_table(encoded, hashes))
            faults.point("store.after_ids")
            target = self.path / "index.parquet"
            self._write_commits(np.append(self._numbers, number), np.append(np.diff(self._starts), n))
        except OSError as exc:
            for f in (vec_file, id_file):
                with contextlib.suppress(OSError):
                    f.unlink()
            raise write_error(exc, target, intact=self._intact()) from exc
        base = len(self)
        self._commit_in_memory([number], [n])
        if self._lookup is not None:
            self._lookup.add(hashes, base + np.arange(n, dtype=np.int64))
        faults.point("store.after_index")
        return n

    def _commit_in_memory(self, numbers: Sequence[int], counts: Sequence[int]) -> None:
        self._numbers = np.append(self._numbers, np.asarray(numbers, np.int64))
        self._starts = np.append(self._starts, self._starts[-1] + np.cumsum(np.asarray(counts, np.int64)))

    def merge_from(self, other: "EmbeddingStore") -> int:
        """Add the rows of ``other`` whose ids are not in this store; ``other`` is not changed.

        Shards of ``other`` with no id here move by hard link (no vector is read or copied;
        a plain file copy where links are not supported) and are committed together; a shard
        with some ids here, another dtype or format 1 is copied row by row through
        :meth:`append`.

        Returns:
            The number of rows added.

        Raises:
            ValueError: ``other`` has other dims.
            leader.errors.WriteError: a file could not be written; this store's committed
                rows are unchanged.
        """
        if other.dims != self.dims:
            raise ValueError(f"embedding store {other.path} has dims {other.dims}, {self.path} has {self.dims}")
        self._begin_write()
        numbers, counts, hashes, copies = [], [], [], []
        nxt = int(self._numbers.max()) + 1 if len(self._numbers) else 0
        made: list[Path] = []
        target = self.path
        try:
            for k in range(other.n_shards):
                h, offsets, utf8 = other._table(k, cache=False)
                if not len(h):
                    continue
                o = np.asarray(offsets)
                present = self._match(np.asarray(h), lambda i: utf8[o[i]:o[i + 1]].tobytes()) >= 0
                if present.all():
                    continue
                if present.any() or other.dtype != self.dtype or other._legacy is not None:
                    copies.append((k, ~present))
                    continue
                src_no = int(other._numbers[k])
                for src, dst in ((other._shard_path(src_no), self._shard_path(nxt)),
                                 (other.path / "shards" / _ids_name(src_no), self.path / "shards" / _ids_name(nxt))):
                    target = dst
                    _link_or_copy(src, dst)
                    made.append(dst)
                numbers.append(nxt)
                counts.append(len(h))
                hashes.append(np.asarray(h))
                nxt += 1
            if numbers:
                faults.point("store.merge_before_commit")
                target = self.path / "index.parquet"
                self._write_commits(np.append(self._numbers, numbers), np.append(np.diff(self._starts), counts))
        except OSError as exc:
            for f in made:
                with contextlib.suppress(OSError):
                    f.unlink()
            raise write_error(exc, target, intact=self._intact()) from exc
        added = int(sum(counts))
        if numbers:
            base = len(self)
            self._commit_in_memory(numbers, counts)
            if self._lookup is not None:
                self._lookup.add(np.concatenate(hashes), base + np.arange(added, dtype=np.int64))
        for k, keep in copies:
            _h, offsets, utf8 = other._table(k, cache=False)
            ids = [i for i, m in zip(_decode_ids(offsets, utf8), keep) if m]
            arrays = other._arrays(k)
            added += self.append(ids, {key: np.asarray(arrays[key])[keep] for key in self._dims}, skip_existing=True)
        return added

    # ------------------------------------------------------------------ reading
    def _arrays(self, k: int) -> dict[str, np.ndarray]:
        """Memory-mapped ``{key: [n, dim]}`` arrays of committed shard ``k`` (LRU-cached)."""
        cached = self._open.get(k)
        if cached is not None:
            self._open.move_to_end(k)
            return cached
        path = self._shard_path(int(self._numbers[k]))
        n = int(self._starts[k + 1] - self._starts[k])
        header, start = _read_safetensors_header(path)
        out = {}
        for key, dim in self._dims.items():
            arr = _tensor(path, header, start, key)
            if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] < n or arr.dtype not in (np.float32, np.float16):
                raise ValueError(f"{path}: tensor {key!r} has shape {arr.shape} ({arr.dtype}), expected ({n}, {dim})")
            out[key] = arr
        self._open[k] = out
        while len(self._open) > _MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return out

    def _positions(self, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        pos = self._find(ids)
        if (pos < 0).any():
            missing = [i for i, p in zip(ids, pos) if p < 0]
            raise KeyError(
                f"{len(missing)} of {len(ids)} ids not in embedding store {self.path}: {_fmt_ids(missing)}"
            )
        return pos

    def get(self, ids: Sequence[str], key: str) -> np.ndarray:
        """Return the rows of ``key`` for ``ids`` as ``np.float32 [len(ids), dims[key]]``.

        Ids may repeat; rows come back in the order of ``ids``.

        Raises:
            KeyError: unknown ``key`` (lists the keys), or ids not in the store (the message
                lists up to 5 of them and the number missing).
        """
        if key not in self._dims:
            raise KeyError(f"embedding store {self.path} has no key {key!r}; keys: {sorted(self._dims)}")
        ids = list(ids)
        pos = self._positions(ids)
        out = np.empty((len(ids), self._dims[key]), dtype=np.float32)
        if len(ids) == 0:
            return out
        shards, rows = self._locate(pos)
        for k in np.unique(shards):
            sel = shards == k
            src = self._arrays(int(k))[key]
            r = rows[sel]
            order = np.argsort(r, kind="stable")  # sorted reads are kinder to the page cache
            block = np.empty((len(r), src.shape[1]), dtype=np.float32)
            block[order] = src[r[order]]
            out[sel] = block
        return out

    def load(self, key: str) -> tuple[list[str], np.ndarray]:
        """Return ``(ids, values)`` for every stored id in insertion order.

        ``values`` is ``np.float32 [len(self), dims[key]]`` (read shard by shard, no lookup).

        Raises:
            KeyError: unknown ``key``.
        """
        if key not in self._dims:
            raise KeyError(f"embedding store {self.path} has no key {key!r}; keys: {sorted(self._dims)}")
        out = np.empty((len(self), self._dims[key]), dtype=np.float32)
        for k in range(len(self._numbers)):
            a, b = int(self._starts[k]), int(self._starts[k + 1])
            out[a:b] = self._arrays(k)[key][: b - a]
        return self.ids, out


def _write_id_file(path: Path, hashes: np.ndarray, offsets: np.ndarray, utf8: np.ndarray) -> None:
    """Write an id table atomically (raises ``OSError``)."""
    from safetensors.numpy import save  # noqa: PLC0415

    blob = save({"hash": np.ascontiguousarray(hashes, np.uint64), "offsets": np.ascontiguousarray(offsets, np.int64),
                 "utf8": np.ascontiguousarray(utf8, np.uint8)}, metadata={"format": _FORMAT})
    with atomic_write(path, "wb") as fh:
        fh.write(blob)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (replacing ``dst``); copy atomically where links fail."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            raise
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


_PRIVATE = object()


def import_npz(
    store_path: str | os.PathLike,
    npz_path: str | os.PathLike,
    key: str = "embedding",
    *,
    dtype: str = "float32",
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Import precomputed embeddings (e.g. from an expert's web API) from an ``.npz`` file.

    Two layouts are accepted:

    * arrays ``ids`` (strings, ``[N]``) and ``embedding`` (or ``key``), float ``[N, d]``;
    * one array per id: ``np.savez(path, **{id: vector [d]})`` (``[1, d]`` is squeezed).

    The store is created with ``dims={key: d}`` if needed (``meta`` records the source);
    ids already present are skipped, so an import can be re-run.

    Args:
        store_path: store directory.
        npz_path: the ``.npz`` file (loaded with ``allow_pickle=False``).
        key: store key to write.
        dtype: store dtype when creating it.
        meta: user metadata for :meth:`EmbeddingStore.create` (e.g. the source model).

    Returns:
        The number of new rows written.

    Raises:
        ValueError: unreadable layout (object arrays, ragged or non-1-D vectors, ids/rows
            count mismatch), an existing store with other dims.
    """
    npz_path = Path(npz_path)
    try:
        npz = np.load(npz_path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{npz_path}: cannot read npz without pickle ({exc}); store ids as a unicode array") from exc
    with npz:
        files = list(npz.files)
        if "ids" in files:
            ids = [str(i) for i in np.asarray(npz["ids"]).reshape(-1).tolist()]
            vec_name = key if key in files else "embedding" if "embedding" in files else None
            if vec_name is None:
                raise ValueError(f"{npz_path}: has 'ids' but no {key!r} or 'embedding' array; arrays: {files}")
            vectors = np.asarray(npz[vec_name])
            if vectors.ndim != 2 or vectors.shape[0] != len(ids):
                raise ValueError(
                    f"{npz_path}: {vec_name!r} has shape {vectors.shape}, expected ({len(ids)}, d) for {len(ids)} ids"
                )
        else:
            if not files:
                raise ValueError(f"{npz_path}: empty npz")
            rows = []
            for name in files:
                v = np.asarray(npz[name])
                if v.ndim == 2 and v.shape[0] == 1:
                    v = v[0]
                if v.ndim != 1:
                    raise ValueError(f"{npz_path}: array {name!r} has shape {v.shape}; expected a vector [d]")
                if rows and v.shape != rows[0].shape:
                    raise ValueError(
                        f"{npz_path}: array {name!r} has width {v.shape[0]}, but {files[0]!r} has {rows[0].shape[0]}"
                    )
                rows.append(v)
            ids = files
            vectors = np.stack(rows)
    store = EmbeddingStore.create(store_path, {key: int(vectors.shape[1])}, meta=meta, dtype=dtype)
    return store.append(ids, {key: vectors}, skip_existing=True)
