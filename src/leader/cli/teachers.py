"""``leader teachers fit|import|cache``: make, import and cache the frozen experts.

::

    leader teachers fit --kind disease|anatomy --manifest M --out DIR [--config C] [--set k=v]
    leader teachers import SOURCE [SOURCE ...] --store OUT [--format auto|v1|elixr-c|elixr-b] ...
    leader teachers cache --teacher disease=DIR [--teacher anatomy=DIR] (--manifest M | --shards SHARDS)
                          --out CACHE [--views N] [--view-seed S]
    torchrun --nproc_per_node 8 -m leader.cli teachers cache ...       # every rank takes a share

``teachers import`` reads Google CXR Foundation / ELIXR outputs (``.npz`` / ``.tfrecord``
files or folders of them) into an embedding store used with ``--teacher disease=OUT``.

Library imports happen inside the handlers (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leader.cli._common import add_config


def _cmd_fit(a) -> int:
    from leader.manifest import Manifest
    from leader.recipe import fit_teacher

    out = fit_teacher(a.cfg, a.kind, Manifest.load(a.manifest), a.out, device=a.device)
    report = json.loads((Path(out) / "fit_report.json").read_text())
    bits = [f"{report['kind']} expert {report['arch']} ({report['img_size']} px)",
            f"{report['n_images']} training images", f"{report['seconds']:.0f} s"]
    val = report.get("validation") or {}
    if val.get("summary"):
        bits.append(val["summary"])
    print(f"{', '.join(bits)} -> {out} (details: {Path(out) / 'fit_report.json'})")
    return 0


def _cmd_import(a) -> int:
    import pandas as pd

    from leader.manifest import Manifest
    from leader.teachers.cxr_foundation import import_cxr_foundation

    ids: list[str] | None = None
    if a.manifest or a.patches:
        ids = []
        if a.manifest:
            ids.extend(str(i) for i in Manifest.load(a.manifest).df["id"])
        for p in a.patches or []:
            table = pd.read_parquet(p)
            if "patch_id" not in table.columns:
                raise ValueError(f"{p}: not a patch table (no patch_id column)")
            ids.extend(str(i) for i in table["patch_id"])
    report = import_cxr_foundation(
        a.store, a.sources, fmt=a.format, ids=ids, id_prefix=a.id_prefix, id_map=a.id_map,
        allow_missing=a.allow_missing, key=a.key, dtype=a.dtype,
    )
    print(report)
    if report.missing:
        shown = ", ".join(report.missing[:10])
        print(f"ids without an embedding ({len(report.missing)}): {shown}{', ...' if len(report.missing) > 10 else ''}")
    return 0


def _cmd_cache(a) -> int:
    from leader.manifest import Manifest
    from leader.patches import ImageDataset, PatchDataset
    from leader.recipe import patch_tables
    from leader.shards import ShardImageDataset, ShardPatchDataset
    from leader.teachers.cache import cache_teacher
    from leader.teachers.spec import parse_teacher_args
    from leader.train import distributed as D
    from leader.transforms import PairedAugment

    cfg = a.cfg
    info, dev = D.setup(cfg.device)
    teachers = parse_teacher_args(a.teacher)
    S = int(cfg.student.img_size)
    kinds = [k for k in a.patch_kinds.split(",") if k] if a.patch_kinds else []
    if a.shards:
        images = ShardImageDataset(a.shards)
        if images.image_size != S:
            raise ValueError(f"shards are {images.image_size}x{images.image_size} but student.img_size is {S}")
        datasets = [images] + ([ShardPatchDataset(a.shards, kinds=kinds)] if kinds else [])
    else:
        if not a.manifest:
            raise ValueError("give --manifest or --shards")
        m = Manifest.load(a.manifest)
        if a.split != "all":
            m = m.subset((m.df["split"] == a.split).to_numpy())
        datasets = [ImageDataset(m, S, transform=None)]
        pt = patch_tables(cfg, m).select(kinds) if kinds else None
        if pt is not None and len(pt):
            datasets.append(PatchDataset(m, pt, S, transform=None))
    params = {k: v for k, v in cfg.augment.to_dict().items() if k != "enabled"}
    aug = PairedAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()}) if a.views else None
    out = Path(a.out)
    for name, t in teachers.items():
        store = cache_teacher(t, datasets, out / name, views=a.views, augment=aug,
                              augment_params=params if a.views else {}, view_seed=a.view_seed, image_size=S,
                              batch_size=a.batch_size, num_workers=a.num_workers, device=dev,
                              precision=cfg.precision, store_dtype=a.store_dtype)
        if info.is_main:
            print(f"teacher {name}: {len(store)} embeddings ({t.dim}-d, {a.views} augmented views) -> {out / name}")
    D.cleanup()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``teachers`` group: ``fit``, ``import``, ``cache``."""
    te = sub.add_parser("teachers", help="expert teachers: fit your own, import API embeddings, cache embeddings")
    ts = te.add_subparsers(dest="teachers_cmd", required=True, metavar="SUBCOMMAND")

    f = ts.add_parser("fit", help="train a disease expert (supervised) or an anatomy expert (label-free) "
                                  "on the manifest's train split; held-out numbers on its val split")
    f.add_argument("--kind", choices=("disease", "anatomy"), required=True, help="which expert to fit")
    f.add_argument("--manifest", required=True, metavar="M.parquet",
                   help="manifest with splits (`leader data split`): fitted on train, validated on val")
    f.add_argument("--out", required=True, metavar="DIR", help="teacher folder (teacher.json, model.safetensors, "
                                                               "fit_report.json)")
    f.add_argument("--device", default=None, help="auto, cpu, cuda (default: the config's device)")
    add_config(f, default="demo-quick")
    f.set_defaults(func=_cmd_fit)

    i = ts.add_parser("import", help="import Google CXR Foundation / ELIXR embeddings (.npz / .tfrecord) into a store")
    i.add_argument("sources", nargs="+", help="files or folders of Google's output")
    i.add_argument("--store", required=True, help="embedding store folder (created or extended)")
    i.add_argument("--format", default="auto", choices=("auto", "v1", "elixr-c", "elixr-b", "elixr-b-contrastive"),
                   help="v1: 1376; elixr-c: 8x8x1376 pooled to 1376; elixr-b: 32x768 pooled to 768; "
                        "elixr-b-contrastive: 32x128 pooled to 128 (default: from the length)")
    i.add_argument("--manifest", default=None, help="manifest whose image ids should all get an embedding")
    i.add_argument("--patches", action="append", default=[], help="patch table(s) whose patch ids should get one")
    i.add_argument("--id-prefix", default="", help="prefix added to file stems, e.g. nih/")
    i.add_argument("--id-map", default=None, help="CSV with columns file,id")
    i.add_argument("--allow-missing", action="store_true", help="import even if some known ids have no embedding")
    i.add_argument("--key", default="embedding", help="store key")
    i.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored dtype")
    i.set_defaults(func=_cmd_import)

    c = ts.add_parser("cache", help="precompute frozen teachers' embeddings (images, patches, optional fixed "
                                    "augmented views)")
    c.add_argument("--teacher", action="append", required=True, metavar="NAME=PATH",
                   help="teacher to cache (repeatable; same forms as `leader train --teacher`)")
    c.add_argument("--manifest", default=None, metavar="M.parquet", help="images to embed")
    c.add_argument("--shards", default=None, help="read images/patches from a shard folder instead")
    c.add_argument("--split", default="train", help="manifest split, or 'all'")
    c.add_argument("--out", required=True, help="folder; one embedding store per teacher (OUT/NAME)")
    c.add_argument("--views", type=int, default=0, help="fixed augmented views per image/patch (0: un-augmented only)")
    c.add_argument("--view-seed", type=int, default=0, help="seed of the fixed views")
    c.add_argument("--patch-kinds", default="disease,healthy", help="patch kinds to cache ('' for images only)")
    c.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    c.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    c.add_argument("--store-dtype", choices=("float32", "float16"), default="float32", help="stored dtype")
    add_config(c)
    c.set_defaults(func=_cmd_cache)
