"""``leader embed``: E_DA, E'_D, E'_A (one key per head) of every image or patch, into an embedding store.

Resumable (a rerun continues where a kill left it) and ``torchrun``-ready. Library imports
happen inside the handler (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_embed(a) -> int:
    import pandas as pd

    from leader.embed import EmbeddingIndex, embed_dataset, student_embed_fn
    from leader.manifest import Manifest
    from leader.models.student import load_model
    from leader.patches import ImageDataset, PatchDataset
    from leader.shards import ShardImageDataset, ShardPatchDataset
    from leader.train import distributed as D
    from leader.utils import file_sha256

    ckpt = Path(a.checkpoint)
    if not (ckpt / "model.safetensors").is_file():
        raise FileNotFoundError(f"--checkpoint {a.checkpoint}: no model.safetensors there (give a model folder "
                                "such as RUN/final)")
    info, dev = D.setup(a.device)
    model = load_model(ckpt).to(dev)
    S = model.img_size
    dims = {"e_da": model.e_da_dim, **model.head_dims}
    if a.shards:
        ds = ShardPatchDataset(a.shards) if a.shard_patches else ShardImageDataset(a.shards)
        if ds.image_size != S:
            raise ValueError(f"shards are {ds.image_size}x{ds.image_size} but the model takes {S}x{S}")
        source = {"shards": str(Path(a.shards).resolve())}
    else:
        if not a.manifest:
            raise ValueError("give --manifest or --shards")
        m = Manifest.load(a.manifest)
        if a.patches:
            ds = PatchDataset(m, pd.read_parquet(a.patches), S, transform=None)
        else:
            ds = ImageDataset(m, S, transform=None)
        source = {"manifest": str(Path(a.manifest).resolve())}
        if a.patches:
            source["patches"] = str(Path(a.patches).resolve())
    try:
        store = embed_dataset(student_embed_fn(model), ds, a.out, dims, batch_size=a.batch_size,
                              num_workers=a.num_workers, device=dev, precision=a.precision,
                              flush_every=a.flush_every, store_dtype=a.store_dtype,
                              channels_last=dev.type == "cuda",
                              meta={"checkpoint_sha256": file_sha256(ckpt / "model.safetensors"), **source},
                              on_error=a.on_error)
        if info.is_main:
            print(f"{len(store)} embeddings ({', '.join(f'{k}: {d}' for k, d in dims.items())}) -> {a.out}")
            if a.index:
                idx = EmbeddingIndex.from_store(store, a.index_key, kind=a.index)
                path = idx.save(Path(a.out) / f"index-{a.index_key}-{a.index}")
                print(f"{a.index} index of {len(idx)} {a.index_key} vectors -> {path}")
    finally:
        D.cleanup()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader embed``."""
    e = sub.add_parser("embed", help="write E_DA and every head's embedding for each manifest row (or patch) to a "
                                     "store; one process or torchrun")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="model folder (model.safetensors + config.json), "
                                                                     "e.g. RUN/final")
    e.add_argument("--manifest", default=None, metavar="M.parquet", help="images to embed (every row)")
    e.add_argument("--shards", default=None, metavar="DIR", help="read the images from a shard folder instead")
    e.add_argument("--shard-patches", action="store_true", help="with --shards: embed the stored patches")
    e.add_argument("--out", required=True, metavar="STORE", help="embedding store folder (created or continued)")
    e.add_argument("--patches", default=None, metavar="TABLE.parquet",
                   help="patch table to embed instead of whole images")
    e.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    e.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    e.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="unreadable image: stop (default; a rerun continues) or skip it and list it in OUT/skipped.json")
    e.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    e.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="autocast precision (default bf16)")
    e.add_argument("--flush-every", type=int, default=4096, help="vectors per store shard")
    e.add_argument("--store-dtype", default="float32", choices=("float32", "float16"), help="stored dtype")
    e.add_argument("--index", default=None, choices=("exact", "ivf", "ivf-sq8", "hnsw"),
                   help="also build a retrieval index (OUT/index-KEY-KIND)")
    e.add_argument("--index-key", default="e_da", help="which key the index is built on (default e_da)")
    e.set_defaults(func=_cmd_embed)
