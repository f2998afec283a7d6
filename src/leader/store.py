"""EmbeddingStore: sharded safetensors arrays + a Parquet id index; resumable and atomic.

Layout of a store directory::

    store/
      meta.json                  {"format": "leader-embedding-store", "version": 1,
                                  "keys": {name: dim}, "dtype": "float32"|"float16",
                                  "meta": {...user metadata...}}
      index.parquet              columns id (str, unique), shard (int32), row (int64),
                                 in insertion order
      shards/shard-00000.safetensors   one tensor per key, [n_shard, dim]
      shards/shard-00001.safetensors
      ...

It holds (a) precomputed teacher embeddings used by
:class:`leader.teachers.EmbeddingStoreTeacher` (the only way to distil an API-only expert such
as CXR Foundation, paper §4), and (b) the student's ``E_DA`` / ``E'_D`` / ``E'_A`` written by
``leader.embed`` for the evaluations.

Crash safety: :meth:`EmbeddingStore.append` writes the new shard (tmp file + ``os.replace``)
*before* the new index (tmp file + ``os.replace``). The index is the single source of truth:
a crash between the two leaves an *orphan* shard that no index row references; it is ignored
by readers and overwritten by the next append (which reuses its number). Re-running a job
skips ids already present (``append(..., skip_existing=True)`` or :meth:`contains`).

Concurrency: one writer at a time (no file locking); any number of readers of a store that
is not being appended to. Readers memory-map shards, so lookups by id read only the rows
needed.

Each append rewrites ``index.parquet`` (O(N)); append in chunks of thousands of rows, not one
batch of 32 at a time.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .utils import atomic_path, atomic_write_json, read_json

__all__ = ["EmbeddingStore", "import_npz"]

_FORMAT = "leader-embedding-store"
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}
_ST_TO_NP = {"F32": np.float32, "F16": np.float16}
_MAX_OPEN_SHARDS = 64


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


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


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch tensor
        array = array.detach().cpu().float().numpy()
    return np.asarray(array)


def _fmt_ids(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    more = f", ... ({len(ids)} in total)" if len(ids) > limit else ""
    return f"[{shown}{more}]"


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
        self._ids: list[str] = []
        self._shard = np.zeros(0, dtype=np.int32)
        self._row = np.zeros(0, dtype=np.int64)
        self._pos: dict[str, int] = {}
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

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
        """Create a store at ``path`` (a directory), or reopen it when it already exists.

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
            if any(k not in store._meta for k in meta):
                store._meta.update(meta)
                store._write_meta()
            return store
        path.mkdir(parents=True, exist_ok=True)
        (path / "shards").mkdir(exist_ok=True)
        store = cls(path, dims, dtype, meta, _token=_PRIVATE)
        store._write_meta()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> "EmbeddingStore":
        """Open an existing store.

        Raises:
            FileNotFoundError: no ``meta.json`` in ``path``, or an indexed shard is missing.
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
            missing_cols = {"id", "shard", "row"} - set(df.columns)
            if missing_cols:
                raise ValueError(f"{index_file}: missing columns {sorted(missing_cols)}")
            store._ids = [str(i) for i in df["id"].tolist()]
            store._shard = df["shard"].to_numpy(dtype=np.int32)
            store._row = df["row"].to_numpy(dtype=np.int64)
            store._pos = {i: k for k, i in enumerate(store._ids)}
            if len(store._pos) != len(store._ids):
                raise ValueError(f"{index_file}: duplicate ids in the index")
            for number in np.unique(store._shard):
                shard_file = store._shard_path(int(number))
                if not shard_file.is_file():
                    raise FileNotFoundError(f"embedding store {path}: indexed shard {shard_file.name} is missing")
        return store

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

    def _write_meta(self) -> None:
        atomic_write_json(
            self.path / "meta.json",
            {"format": _FORMAT, "version": 1, "keys": self._dims, "dtype": self._dtype, "meta": self._meta},
        )

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
        """All ids, in insertion order (a copy)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, n={len(self)}, dims={self._dims}, dtype={self._dtype})"

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """Return ``np.bool_ [len(ids)]``: whether each id is stored."""
        return np.fromiter((i in self._pos for i in ids), dtype=np.bool_, count=len(ids))

    # ------------------------------------------------------------------ writing
    def _shard_path(self, number: int) -> Path:
        return self.path / "shards" / _shard_name(number)

    def append(
        self,
        ids: Sequence[str],
        arrays: Mapping[str, Any],
        skip_existing: bool = False,
    ) -> int:
        """Append rows for new ids as one new shard, then rewrite the index atomically.

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
        present = self.contains(ids)
        if present.any():
            if not skip_existing:
                dup = [i for i, p in zip(ids, present) if p]
                raise ValueError(
                    f"embedding store {self.path}: {len(dup)} ids already stored: {_fmt_ids(dup)} "
                    "(use skip_existing=True to skip them)"
                )
            keep = ~present
            ids = [i for i, k in zip(ids, keep) if k]
            data = {k: np.ascontiguousarray(v[keep]) for k, v in data.items()}
            n = len(ids)
        if n == 0:
            return 0

        number = int(self._shard.max()) + 1 if len(self._shard) else 0
        shard_file = self._shard_path(number)
        shard_file.parent.mkdir(parents=True, exist_ok=True)
        # an orphan shard with this number (crash after shard write, before index write) is
        # simply overwritten; drop any stale memory map of it.
        self._open.pop(number, None)
        from safetensors.numpy import save_file

        with atomic_path(shard_file) as tmp:
            save_file(data, str(tmp), metadata={"n": str(n), "format": _FORMAT})
        self._after_shard_written(shard_file)

        new_ids = self._ids + ids
        new_shard = np.concatenate([self._shard, np.full(n, number, dtype=np.int32)])
        new_row = np.concatenate([self._row, np.arange(n, dtype=np.int64)])
        self._write_index(new_ids, new_shard, new_row)
        base = len(self._ids)
        self._ids = new_ids
        self._shard, self._row = new_shard, new_row
        for k, i in enumerate(ids):
            self._pos[i] = base + k
        return n

    def _after_shard_written(self, shard_file: Path) -> None:
        """Hook between the shard write and the index write (tests simulate a crash here)."""

    def _write_index(self, ids: list[str], shard: np.ndarray, row: np.ndarray) -> None:
        df = pd.DataFrame(
            {
                "id": pd.array(ids, dtype="string"),
                "shard": shard.astype(np.int32),
                "row": row.astype(np.int64),
            }
        )
        with atomic_path(self.path / "index.parquet") as tmp:
            df.to_parquet(tmp, index=False)

    # ------------------------------------------------------------------ reading
    def _arrays(self, number: int) -> dict[str, np.ndarray]:
        """Memory-mapped ``{key: [n, dim]}`` arrays of one shard (LRU-cached)."""
        cached = self._open.get(number)
        if cached is not None:
            self._open.move_to_end(number)
            return cached
        path = self._shard_path(number)
        header, start = _read_safetensors_header(path)
        out = {}
        for key, dim in self._dims.items():
            if key not in header:
                raise ValueError(f"{path}: shard has no tensor {key!r} (has {sorted(k for k in header if k != '__metadata__')})")
            info = header[key]
            np_dtype = _ST_TO_NP.get(info["dtype"])
            if np_dtype is None:
                raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
            shape = tuple(info["shape"])
            if len(shape) != 2 or shape[1] != dim:
                raise ValueError(f"{path}: tensor {key!r} has shape {shape}, expected (n, {dim})")
            begin, _end = info["data_offsets"]
            if shape[0] == 0:
                out[key] = np.zeros((0, dim), dtype=np_dtype)
            else:
                out[key] = np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)
        self._open[number] = out
        while len(self._open) > _MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return out

    def _positions(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(ids)} ids not in embedding store {self.path}: {_fmt_ids(missing)}"
            )
        return np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))

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
        shards = self._shard[pos]
        rows = self._row[pos]
        for number in np.unique(shards):
            sel = shards == number
            src = self._arrays(int(number))[key]
            r = rows[sel]
            order = np.argsort(r, kind="stable")  # sorted reads are kinder to the page cache
            block = np.empty((len(r), src.shape[1]), dtype=np.float32)
            block[order] = src[r[order]]
            out[sel] = block
        return out

    def load(self, key: str) -> tuple[list[str], np.ndarray]:
        """Return ``(ids, values)`` for every stored id in insertion order.

        ``values`` is ``np.float32 [len(self), dims[key]]``.

        Raises:
            KeyError: unknown ``key``.
        """
        return self.ids, self.get(self._ids, key)


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
