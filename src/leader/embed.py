"""Batched, resumable, distributed embedding extraction (``leader embed``) and scalable retrieval.

For a LeADER student each sample gets three vectors (paper Fig. 2): ``e_da`` (the trunk's
entangled embedding ``E_DA``, width of the backbone) and one per head (``disease`` = ``E'_D``,
``anatomy`` = ``E'_A``, widths of the teachers). For a teacher, one vector ``embedding``.

Vectors are appended to an :class:`~leader.store.EmbeddingStore` every ``flush_every``
samples; ids already in the store are skipped, so an interrupted run (killed at any point, or
stopped by a full disk) continues where it stopped and never leaves a half-written shard. The
missing items are found chunk by chunk while embedding (never a list of all ids), so memory
does not grow with the dataset beyond the store's 16-byte-per-id lookup.

Across processes (``torchrun ... leader embed``): each rank embeds every ``W``-th missing
item into its own part store (``<store>.parts/rank-NNNNN``: one writer per store), and rank 0
merges the parts into the store at the end by hard-linking their shards
(:meth:`~leader.store.EmbeddingStore.merge_from`: no vector is copied). A run that died leaves
parts behind; the next run (at any world size) merges them first, so nothing is computed twice.

Fault points (:mod:`leader.faults`): ``embed.after_batch`` (a batch computed, not yet
flushed), ``embed.after_flush`` (a flush committed), ``embed.after_merge`` (a part merged, not
yet removed), plus the store's ``store.after_shard`` / ``store.after_ids`` /
``store.after_index``.

Retrieval (:class:`EmbeddingIndex`): exact inner-product search (FAISS ``IndexFlatIP``) or an
approximate index - IVF (``IndexIVFFlat`` / ``IndexIVFScalarQuantizer``) or HNSW - for
collections of a million vectors and more (``benchmarks/bench_retrieval.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from leader import faults
from leader.errors import SKIPPABLE, skip_report
from leader.store import EmbeddingStore
from leader.train import distributed as D
from leader.device import autocast_context, pick_device
from leader.utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

EmbedFn = Callable[[torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]

__all__ = ["student_embed_fn", "teacher_embed_fn", "embed_dataset", "merge_stores", "EmbeddingIndex"]


def student_embed_fn(model: torch.nn.Module, channels_last: bool = False) -> EmbedFn:
    """``images [B,1,S,S] in [0,1] -> {"e_da": [B,D], <head>: [B,d_head], ...}`` (float32)."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def fn(x: torch.Tensor, ids: Sequence[str]) -> Mapping[str, torch.Tensor]:
        return model(x)

    return fn


def teacher_embed_fn(teacher) -> EmbedFn:
    """``images [B,1,H,W] in [0,1] -> {"embedding": [B, teacher.dim]}`` (float32)."""

    def fn(x: torch.Tensor, ids: Sequence[str]) -> Mapping[str, torch.Tensor]:
        return {"embedding": teacher.embed(x, ids=list(ids))}

    return fn


def _parts_dir(store_path: Path) -> Path:
    return store_path.parent / f"{store_path.name}.parts"


def merge_stores(target: EmbeddingStore, parts: Sequence[str | Path], chunk: int = 16384,
                 remove: bool = True) -> int:
    """Add the rows of part stores to ``target`` (ids already there are skipped).

    Whole shards move by hard link (:meth:`EmbeddingStore.merge_from`), so merging costs
    O(shards), not O(vectors). Folders without ``meta.json`` are skipped.

    Args:
        target: the store to add to (opened for writing).
        parts: part store folders, merged in this order.
        chunk: unused (kept for compatibility; merging no longer copies rows in chunks).
        remove: delete each part after it is merged. A crash in between only repeats the
            merge, which finds every id present and adds nothing.

    Returns:
        The number of rows added.

    Raises:
        ValueError: a part has other dims than ``target``.
        leader.errors.WriteError: a file of ``target`` could not be written (``target`` and
            the parts are left as they were).
    """
    added = 0
    for p in parts:
        p = Path(p)
        if not (p / "meta.json").is_file():
            continue
        part = EmbeddingStore.open(p)
        if part.dims != target.dims:
            raise ValueError(f"part store {p} has dims {part.dims}, target {target.path} has {target.dims}")
        added += target.merge_from(part)
        faults.point("embed.after_merge")
        if remove:
            (p / "meta.json").unlink()  # first: a half-deleted part is no longer a store
            shutil.rmtree(p)
    return added


class _MissingSampler(Sampler):
    """Indices of the items of ``dataset`` whose ids are not in ``store``, found chunk by chunk.

    The ``k``-th missing item goes to rank ``k % world``. Ids are computed ``chunk`` at a time
    (``dataset.item_id(i)`` when available), so no list of all ids is ever held. ``on_skip``
    is called with the number of present items of each chunk.
    """

    def __init__(self, dataset: Dataset, store: EmbeddingStore, rank: int = 0, world: int = 1,
                 chunk: int = 16384, on_skip: Callable[[int], None] | None = None):
        self.dataset, self.store, self.rank, self.world = dataset, store, int(rank), int(world)
        self.chunk, self.on_skip = int(chunk), on_skip

    def __iter__(self):
        n = len(self.dataset)
        k = 0  # missing items seen so far (all ranks)
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            ids = [_item_id(self.dataset, i) for i in range(lo, hi)]
            missing = np.flatnonzero(~self.store.contains(ids)) if len(self.store) else np.arange(hi - lo)
            if self.on_skip is not None and len(missing) < hi - lo:
                self.on_skip(hi - lo - len(missing))
            mine = missing[(k + np.arange(len(missing))) % self.world == self.rank] + lo
            k += len(missing)
            yield from mine.tolist()


@torch.no_grad()
def embed_dataset(
    fn: EmbedFn,
    dataset: Dataset,
    store_path: str | Path,
    dims: Mapping[str, int],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "bf16",
    flush_every: int = 1024,
    meta: Mapping | None = None,
    desc: str = "embed",
    store_dtype: str = "float32",
    channels_last: bool = False,
    on_error: str = "raise",
) -> EmbeddingStore:
    """Embed every item of ``dataset`` into the store at ``store_path``.

    Args:
        fn: maps a batch ``[B, 1, S, S]`` float32 in ``[0, 1]`` and its ids to ``{key: [B, dim]}``.
        dataset: yields ``{"image": Tensor[1,S,S], "id": str}`` (e.g.
            :class:`leader.patches.ImageDataset` / :class:`~leader.patches.PatchDataset`, or the
            shard datasets of :mod:`leader.shards`). An ``item_id(i)`` method lets a resumed run
            skip finished items without decoding them.
        dims: ``{key: dim}`` of the vectors ``fn`` returns (checked on every batch).
        flush_every: samples buffered before a shard is written (memory stays bounded by it).
        store_dtype: ``float32`` or ``float16`` on disk.
        channels_last: feed the batch in ``channels_last`` memory format.
        on_error: ``"raise"`` (default: the first unreadable item stops the run; a rerun
            continues after the committed rows) or ``"skip"``: items whose loading raises
            :data:`leader.errors.SKIPPABLE` errors are left out of the store and listed
            with their reason in ``STORE/skipped.json`` (rewritten by every completed run, under
            either policy, which retries them).

    Under ``torchrun`` (process group initialised, see :mod:`leader.train.distributed`) every
    rank embeds its share; all ranks return the merged store.

    A rerun after a crash (or a :class:`~leader.errors.WriteError`) embeds only the missing
    items; with the same ``batch_size`` the batches are the same as in an uninterrupted run
    (flushes happen at batch boundaries), so fp32 vectors come out bit for bit identical.

    Returns:
        The opened store (all ids of ``dataset`` present).

    Raises:
        ValueError: ``fn`` returned a key or width different from ``dims``.
        leader.errors.WriteError: the store could not be written (disk full, read-only); what
            was committed before is intact and a rerun continues from there.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    dev = pick_device(device) if isinstance(device, str) else device
    store_path = Path(store_path)
    if on_error == "skip":
        dataset = _Skipping(dataset)
    info = D.info()
    W, r = info.world_size, info.rank
    parts_root = _parts_dir(store_path)
    if W > 1:
        if r == 0:
            main = EmbeddingStore.create(store_path, dict(dims), meta=dict(meta or {}), dtype=store_dtype)
            if parts_root.is_dir():  # leftovers of an interrupted run (any world size)
                merge_stores(main, sorted(parts_root.iterdir()))
                shutil.rmtree(parts_root, ignore_errors=True)
        D.barrier()
        main = EmbeddingStore.open(store_path)
        target_path = parts_root / f"rank-{r:05d}"
    else:
        main = EmbeddingStore.create(store_path, dict(dims), meta=dict(meta or {}), dtype=store_dtype)
        if parts_root.is_dir():
            merge_stores(main, sorted(parts_root.iterdir()))
            shutil.rmtree(parts_root, ignore_errors=True)
        target_path = store_path
    store = main if W == 1 else EmbeddingStore.create(target_path, dict(dims), meta=dict(meta or {}),
                                                      dtype=store_dtype)
    skipped = _embed_into(fn, dataset, main, W, r, store, dims, dev, batch_size, num_workers, precision,
                          flush_every, desc, channels_last, show=info.is_main)
    # rewritten by every completed run (count 0 under "raise"), so an old report never goes stale
    items = [it for part in D.all_gather_object(skipped) for it in part]
    if info.is_main:
        _write_skipped(store_path, items, on_error)
    if W > 1:
        D.barrier()
        if r == 0:
            merge_stores(main, sorted(parts_root.iterdir()))
            shutil.rmtree(parts_root, ignore_errors=True)
        D.barrier()
        main = EmbeddingStore.open(store_path)
    return main


def _embed_into(fn, dataset, main, W, r, store, dims, dev, batch_size, num_workers, precision, flush_every,
                desc, channels_last, show=True) -> None:
    """Embed the items missing from ``main`` (rank ``r``'s share) into ``store``."""
    extra = dict(prefetch_factor=4, persistent_workers=False) if num_workers else {}
    bar = tqdm(total=len(dataset) if W == 1 else None, desc=desc, unit="img", dynamic_ncols=True,
               disable=None if show else True)
    sampler = _MissingSampler(dataset, main, r, W, on_skip=bar.update if W == 1 else None)
    if isinstance(dataset, _Skipping):
        extra["collate_fn"] = _collate_skipping
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", **extra)
    skipped: list[dict] = []
    buf_ids: list[str] = []
    buf: dict[str, list] = {k: [] for k in dims}

    def flush():
        nonlocal buf_ids, buf
        arrays = {k: torch.cat(v).float().cpu().numpy() for k, v in buf.items()}
        store.append(buf_ids, arrays)
        buf_ids, buf = [], {k: [] for k in dims}
        faults.point("embed.after_flush")

    for batch in loader:
        for mark in batch.pop("_skipped", []):
            sid, _, reason = mark.partition("\t")
            skipped.append({"id": sid, "reason": reason})
            log.warning("skipped unreadable item %s: %s", sid, reason)
            bar.update(1)
        if "image" not in batch:  # every item of this batch was unreadable
            continue
        x = batch["image"].to(dev, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ids = list(batch["id"])
        with autocast_context(dev, precision):
            out = fn(x, ids)
        for k, d in dims.items():
            if k not in out:
                raise ValueError(f"embedding function returned keys {sorted(out)}, expected {sorted(dims)}")
            v = out[k]
            if tuple(v.shape) != (len(ids), d):
                raise ValueError(f"embedding {k!r} has shape {tuple(v.shape)}, expected ({len(ids)}, {d})")
            buf[k].append(v.detach())  # stays on the device until the flush: no per-batch sync
        buf_ids += ids
        bar.update(len(ids))
        faults.point("embed.after_batch")
        if len(buf_ids) >= flush_every:
            flush()
    if buf_ids:
        flush()
    bar.close()
    return skipped


class _Skipping(Dataset):
    """``dataset`` whose unreadable items become ``{"_skip": "<id>\\t<reason>"}`` markers."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def item_id(self, i: int) -> str:
        return _item_id(self.base, i)

    def __getitem__(self, i: int) -> dict:

        try:
            return self.base[i]
        except SKIPPABLE as exc:
            return {"_skip": f"{self.item_id(i)}\t{type(exc).__name__}: {exc}"}


def _collate_skipping(items: list[dict]) -> dict:
    from torch.utils.data import default_collate  # noqa: PLC0415

    good = [it for it in items if "_skip" not in it]
    out = default_collate(good) if good else {}
    out["_skipped"] = [it["_skip"] for it in items if "_skip" in it]
    return out


def _write_skipped(store_path: Path, items: list[dict], policy: str) -> None:
    atomic_write_json(store_path / "skipped.json", skip_report(items, policy))
    if items:
        log.warning("%d unreadable item(s) skipped, not embedded; listed in %s", len(items),
                    store_path / "skipped.json")


def _item_id(dataset: Dataset, i: int) -> str:
    """The id of item ``i`` without decoding its pixels when the dataset can tell it."""
    if hasattr(dataset, "item_id"):
        return dataset.item_id(i)
    return dataset[i]["id"]


# ------------------------------------------------------------------------------------ retrieval
class EmbeddingIndex:
    """Cosine / inner-product nearest-neighbour search over many embeddings (FAISS, CPU).

    Args:
        dim: vector width.
        kind: ``"exact"`` (``IndexFlatIP``: exact, linear in the collection), ``"ivf"``
            (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` visited per query),
            ``"ivf-sq8"`` (IVF with 8-bit scalar-quantised vectors: 4x less memory), or
            ``"hnsw"`` (``IndexHNSWFlat``, graph with ``m`` links, ``ef_search``).
        normalise: L2-normalise vectors and queries (inner product = cosine).
        nlist: IVF cells (default ``4 * sqrt(n)`` at :meth:`add` time, clipped to [16, 65536]).
        nprobe: IVF cells visited per query (recall/speed knob).
        m, ef_search, ef_construction: HNSW parameters.

    ``recall@100 >= 0.95`` at >= 10x the exact speed on 1M x 1024 clustered vectors needs
    ``kind="ivf"`` with ``nprobe`` around 1-3 % of ``nlist`` (``benchmarks/bench_retrieval.py``).
    """

    def __init__(self, dim: int, kind: str = "exact", normalise: bool = True, nlist: int | None = None,
                 nprobe: int = 16, m: int = 32, ef_search: int = 128, ef_construction: int = 80,
                 train_size: int = 131072, seed: int = 0):
        if kind not in ("exact", "ivf", "ivf-sq8", "hnsw"):
            raise ValueError(f"kind must be exact, ivf, ivf-sq8 or hnsw, got {kind!r}")
        self.dim, self.kind, self.normalise = int(dim), kind, bool(normalise)
        self.nlist, self.nprobe, self.m = nlist, int(nprobe), int(m)
        self.ef_search, self.ef_construction = int(ef_search), int(ef_construction)
        self.train_size, self.seed = int(train_size), int(seed)
        self.index = None
        self.ids: list[str] = []

    def _prep(self, x) -> np.ndarray:
        import faiss  # noqa: PLC0415

        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors [n, {self.dim}], got {x.shape}")
        x = np.array(x, dtype=np.float32, order="C", copy=True)  # normalised in place below
        if self.normalise:
            faiss.normalize_L2(x)
        return x

    def _build(self, n: int, sample: np.ndarray):
        import faiss  # noqa: PLC0415

        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = self.ef_construction
            return idx
        nlist = self.nlist or int(np.clip(4 * np.sqrt(max(n, 1)), 16, 65536))
        nlist = min(nlist, max(1, len(sample) // 8))
        quant = faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            idx = faiss.IndexIVFFlat(quant, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexIVFScalarQuantizer(quant, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = self.seed
        idx.train(sample)
        return idx

    def add(self, vectors, ids: Sequence[str] | None = None, chunk: int = 65536) -> "EmbeddingIndex":
        """Add vectors (trains the IVF on the first call, on up to ``train_size`` of them)."""
        x = np.asarray(vectors, dtype=np.float32)
        n = len(x)
        if self.index is None:
            rng = np.random.default_rng(self.seed)
            take = np.sort(rng.choice(n, size=min(n, self.train_size), replace=False))
            self.index = self._build(n, self._prep(x[take]))
        for s in range(0, n, chunk):
            self.index.add(self._prep(x[s:s + chunk]))
        self.ids += [str(i) for i in ids] if ids is not None else [str(len(self.ids) + i) for i in range(n)]
        return self

    @classmethod
    def from_store(cls, store: EmbeddingStore | str | Path, key: str, kind: str = "exact", **kwargs) -> "EmbeddingIndex":
        """Index the ``key`` vectors of an embedding store."""
        if not isinstance(store, EmbeddingStore):
            store = EmbeddingStore.open(store)
        ids, x = store.load(key)
        return cls(x.shape[1], kind=kind, **kwargs).add(x, ids)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], positions [q, k])`` of the ``k`` nearest vectors (``-1`` = none)."""
        if self.index is None:
            raise ValueError("the index is empty; add vectors first")
        q = self._prep(queries)
        if self.kind in ("ivf", "ivf-sq8"):
            self.index.nprobe = self.nprobe
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        return self.index.search(q, int(k))

    def search_ids(self, queries, k: int) -> list[list[str]]:
        _, pos = self.search(queries, k)
        return [[self.ids[j] for j in row if j >= 0] for row in pos]

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def save(self, path: str | Path) -> Path:
        """Write ``index.faiss`` + ``ids.json`` + ``params.json`` into the folder ``path``."""
        import faiss  # noqa: PLC0415


        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "index.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        atomic_write_json(path / "ids.json", self.ids)
        atomic_write_json(path / "params.json", {"dim": self.dim, "kind": self.kind, "normalise": self.normalise,
                                                 "nprobe": self.nprobe, "ef_search": self.ef_search})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingIndex":
        import faiss  # noqa: PLC0415

        path = Path(path)
        p = json.loads((path / "params.json").read_text())
        obj = cls(p["dim"], kind=p["kind"], normalise=p["normalise"], nprobe=p["nprobe"], ef_search=p["ef_search"])
        obj.index = faiss.read_index(str(path / "index.faiss"))
        obj.ids = json.loads((path / "ids.json").read_text())
        return obj

