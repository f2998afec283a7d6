"""Batched, resumable embedding extraction (``leader embed``).

For a LeADER student each sample gets three vectors (paper Fig. 2): ``e_da`` (the trunk's
entangled embedding ``E_DA``, width of the backbone) and one per head (``disease`` = ``E'_D``,
``anatomy`` = ``E'_A``, widths of the teachers). For a teacher, one vector ``embedding``.

Vectors are appended to an :class:`~leader.store.EmbeddingStore` every ``flush_every``
samples; ids already in the store are skipped, so an interrupted run continues where it
stopped and never leaves a half-written shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from leader.store import EmbeddingStore
from leader.train.loop import autocast_context, pick_device

EmbedFn = Callable[[torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]


def student_embed_fn(model: torch.nn.Module) -> EmbedFn:
    """``images [B,1,S,S] in [0,1] -> {"e_da": [B,D], <head>: [B,d_head], ...}`` (float32)."""
    model.eval()

    def fn(x: torch.Tensor, ids: Sequence[str]) -> Mapping[str, torch.Tensor]:
        return model(x)

    return fn


def teacher_embed_fn(teacher) -> EmbedFn:
    """``images [B,1,H,W] in [0,1] -> {"embedding": [B, teacher.dim]}`` (float32)."""

    def fn(x: torch.Tensor, ids: Sequence[str]) -> Mapping[str, torch.Tensor]:
        return {"embedding": teacher.embed(x, ids=list(ids))}

    return fn


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
) -> EmbeddingStore:
    """Embed every item of ``dataset`` into the store at ``store_path``.

    Args:
        fn: maps a batch ``[B, 1, S, S]`` float32 in ``[0, 1]`` and its ids to ``{key: [B, dim]}``.
        dataset: yields ``{"image": Tensor[1,S,S], "id": str}`` (e.g.
            :class:`leader.patches.ImageDataset` / :class:`~leader.patches.PatchDataset`).
        dims: ``{key: dim}`` of the vectors ``fn`` returns (checked on every batch).
        flush_every: samples buffered before a shard is written.

    Returns:
        The opened store (all ids of ``dataset`` present).

    Raises:
        ValueError: ``fn`` returned a key or width different from ``dims``.
    """
    dev = pick_device(device) if isinstance(device, str) else device
    store = EmbeddingStore.create(store_path, dict(dims), meta=dict(meta or {}))
    ids_all = [_item_id(dataset, i) for i in range(len(dataset))]
    present = store.contains(ids_all) if len(store) else np.zeros(len(ids_all), bool)
    todo = [i for i, p in enumerate(present) if not p]
    if not todo:
        return store
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    buf_ids: list[str] = []
    buf: dict[str, list[np.ndarray]] = {k: [] for k in dims}
    bar = tqdm(total=len(todo), desc=desc, unit="img", dynamic_ncols=True, disable=None)
    for batch in loader:
        x = batch["image"].to(dev)
        ids = list(batch["id"])
        with autocast_context(dev, precision):
            out = fn(x, ids)
        for k, d in dims.items():
            if k not in out:
                raise ValueError(f"embedding function returned keys {sorted(out)}, expected {sorted(dims)}")
            v = out[k].float().cpu().numpy()
            if v.shape != (len(ids), d):
                raise ValueError(f"embedding {k!r} has shape {v.shape}, expected ({len(ids)}, {d})")
            buf[k].append(v)
        buf_ids += ids
        bar.update(len(ids))
        if len(buf_ids) >= flush_every:
            store.append(buf_ids, {k: np.concatenate(v) for k, v in buf.items()})
            buf_ids, buf = [], {k: [] for k in dims}
    if buf_ids:
        store.append(buf_ids, {k: np.concatenate(v) for k, v in buf.items()})
    bar.close()
    return store


def _item_id(dataset: Dataset, i: int) -> str:
    """The id of item ``i`` without decoding its pixels when the dataset can tell it."""
    if hasattr(dataset, "item_id"):
        return dataset.item_id(i)
    return dataset[i]["id"]
