"""``leader data shard`` and ``leader teachers cache``: the fast data path and teacher caching.

::

    leader data shard --manifest M --out SHARDS [--split train] [--image-size 224] [--bit-depth 8]
                      [--encoding png|npy] [--shard-size 1000] [--workers 4] [--part R --num-parts N]
    leader teachers cache --teacher disease=DIR [--teacher anatomy=DIR] (--manifest M | --shards SHARDS)
                          --out CACHE [--views N] [--view-seed S]
    torchrun --nproc_per_node 8 -m leader.cli teachers cache ...       # every rank takes a share

Both read ``--config`` (patch settings, ``student.img_size``, ``augment``) like ``leader train``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _add_config(p) -> None:
    p.add_argument("--config", default="paper", help="preset (paper, demo, demo-quick) or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")


def _patch_table(m, cfg, kinds):
    import pandas as pd  # noqa: PLC0415

    from leader.patches import disease_patches, healthy_patches, landmark_patches  # noqa: PLC0415

    pc = cfg["patches"]
    frames = []
    if "disease" in kinds:
        dis, skipped = disease_patches(m, margin=pc["margin"], min_size=pc["min_size"], on_bad_box=pc["on_bad_box"])
        for s in skipped:
            print(f"skipped box on {s[0]}: {s[1]} ({s[2]})", file=sys.stderr)
        frames.append(dis)
    if "healthy" in kinds:
        frames.append(healthy_patches(m, n_per_image=pc["healthy_per_image"],
                                      size_frac=tuple(pc["healthy_size_frac"]), seed=int(cfg["seed"])))
    if "landmark" in kinds:
        frames.append(landmark_patches(m))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def _cmd_shard(a) -> int:
    import pandas as pd  # noqa: PLC0415

    from leader.config import load_config  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.shards import write_shards  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    m = Manifest.load(a.manifest)
    if a.split != "all":
        m = m.subset((m.df["split"] == a.split).to_numpy())
    if a.patches:
        patches = pd.concat([pd.read_parquet(p) for p in a.patches], ignore_index=True)
        patches = patches[patches["image_id"].isin(set(m.df["id"].astype(str)))]
    elif a.patch_kinds:
        patches = _patch_table(m, cfg, a.patch_kinds.split(","))
    else:
        patches = None
    size = a.image_size or int(cfg["student"]["img_size"])
    idx = write_shards(m, a.out, image_size=size, bit_depth=a.bit_depth, encoding=a.encoding, patches=patches,
                       shard_size=a.shard_size, workers=a.workers, part=a.part, num_parts=a.num_parts)
    if idx is None:
        print(f"part {a.part}/{a.num_parts} done; the index is written when every part has finished")
    else:
        print(f"{idx['n_images']} images, {idx['n_patches']} patches in {len(idx['shards'])} shards "
              f"({size}x{size}, {a.bit_depth}-bit {a.encoding}) -> {a.out}")
    return 0


def _cmd_cache(a) -> int:
    from leader.config import load_config  # noqa: PLC0415
    from leader.teachers.cache import cache_teacher  # noqa: PLC0415
    from leader.teachers.spec import parse_teacher_args  # noqa: PLC0415
    from leader.train import distributed as D  # noqa: PLC0415
    from leader.transforms import PairedAugment  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    info, dev = D.setup(cfg.get("device", "auto"))
    teachers = parse_teacher_args(a.teacher)
    S = int(cfg["student"]["img_size"])
    kinds = a.patch_kinds.split(",") if a.patch_kinds else []
    if a.shards:
        from leader.shards import ShardImageDataset, ShardPatchDataset  # noqa: PLC0415

        images = ShardImageDataset(a.shards)
        if images.image_size != S:
            raise ValueError(f"shards are {images.image_size}x{images.image_size} but student.img_size is {S}")
        datasets = [images] + ([ShardPatchDataset(a.shards, kinds=kinds)] if kinds else [])
    else:
        if not a.manifest:
            raise ValueError("give --manifest or --shards")
        from leader.manifest import Manifest  # noqa: PLC0415
        from leader.patches import ImageDataset, PatchDataset  # noqa: PLC0415

        m = Manifest.load(a.manifest)
        if a.split != "all":
            m = m.subset((m.df["split"] == a.split).to_numpy())
        datasets = [ImageDataset(m, S, transform=None)]
        pt = _patch_table(m, cfg, kinds) if kinds else None
        if pt is not None and len(pt):
            datasets.append(PatchDataset(m, pt, S, transform=None))
    params = {k: v for k, v in (cfg.get("augment") or {}).items() if k != "enabled"}
    aug = PairedAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()}) if a.views else None
    out = Path(a.out)
    for name, t in teachers.items():
        store = cache_teacher(t, datasets, out / name, views=a.views, augment=aug,
                              augment_params=params if a.views else {}, view_seed=a.view_seed, image_size=S,
                              batch_size=a.batch_size, num_workers=a.num_workers, device=dev,
                              precision=cfg.get("precision", "bf16"), store_dtype=a.store_dtype)
        if info.is_main:
            print(f"teacher {name}: {len(store)} embeddings ({t.dim}-d, {a.views} augmented views) -> {out / name}")
    D.cleanup()
    return 0


def register(sub, groups) -> None:
    """Add ``data shard`` and ``teachers cache``."""
    s = groups["data"].add_parser("shard", help="write images and patches once into streamable tar shards")
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="train", help="manifest split to shard, or 'all' (default: train)")
    s.add_argument("--image-size", type=int, default=None, help="S (default: student.img_size of the config)")
    s.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    s.add_argument("--encoding", choices=("png", "npy"), default="png",
                   help="png: lossless and compact; npy: raw, fastest to decode")
    s.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    s.add_argument("--patches", action="append", default=[], metavar="TABLE.parquet",
                   help="patch table(s) to store with the images (default: computed from the config)")
    s.add_argument("--patch-kinds", default="disease,healthy,landmark",
                   help="patch kinds computed when --patches is not given ('' for images only)")
    s.add_argument("--workers", type=int, default=1, help="parallel writer processes")
    s.add_argument("--part", type=int, default=0, help="this job's part (split the shards over nodes)")
    s.add_argument("--num-parts", type=int, default=1)
    _add_config(s)
    s.set_defaults(func=_cmd_shard)

    c = groups["teachers"].add_parser("cache", help="precompute frozen teachers' embeddings (images, patches, "
                                                    "optional fixed augmented views)")
    c.add_argument("--teacher", action="append", required=True, metavar="NAME=PATH")
    c.add_argument("--manifest", default=None)
    c.add_argument("--shards", default=None, help="read images/patches from a shard folder instead")
    c.add_argument("--split", default="train", help="manifest split, or 'all'")
    c.add_argument("--out", required=True, help="folder; one embedding store per teacher (OUT/NAME)")
    c.add_argument("--views", type=int, default=0, help="fixed augmented views per image/patch (0: un-augmented only)")
    c.add_argument("--view-seed", type=int, default=0)
    c.add_argument("--patch-kinds", default="disease,healthy", help="patch kinds to cache ('' for images only)")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--num-workers", type=int, default=0)
    c.add_argument("--store-dtype", choices=("float32", "float16"), default="float32")
    _add_config(c)
    c.set_defaults(func=_cmd_cache)
