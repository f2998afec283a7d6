"""The ``leader`` command.

::

    leader demo [--data-root DIR] --out DIR [--quick]          # everything, end to end
    leader data index [--dataset NAME] --root DIR --out manifest.parquet [--no-check-files]
    leader data split | phantoms | shard ...
    leader patches --manifest M --out DIR
    leader teachers fit --kind disease|anatomy --manifest M --out DIR [--config C] [--set k=v]
    leader teachers import ... | cache ...
    leader train --manifest M --teacher disease=PATH --teacher anatomy=PATH --out DIR [--resume]
    leader embed --checkpoint DIR --manifest M --out STORE [--patches P.parquet]
    leader eval anatomy|retrieval|probe|finetune|entanglement|ablation ...
    leader export --checkpoint DIR --format timm|hf|onnx --out PATH

``leader COMMAND --help`` lists every option. Configs: ``--config`` takes a preset
(``paper``, ``demo``, ``demo-quick``) or a YAML file; ``--set key.sub=value`` overrides any
value (repeatable). ``train`` and ``embed`` run under ``torchrun`` unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from leader.errors import ImageReadError, LeaderError

# Further command groups live in their own modules, each with ``register(subparsers, groups)``
# where ``groups`` maps "data" / "teachers" to those sub-command groups (to add e.g. ``teachers import``).
EXTENSIONS = ("leader.cli_data", "leader.cli_eval", "leader.cli_export", "leader.cli_scale")


def _add_config(p: argparse.ArgumentParser, default: str = "paper") -> None:
    p.add_argument("--config", default=default, help="preset (paper, demo, demo-quick) or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stage1.epochs=5 (repeatable)")


def _cmd_demo(a) -> int:
    from leader.demo import run_demo  # noqa: PLC0415

    metrics = run_demo(a.data_root, a.out, quick=a.quick, overrides=a.overrides, config=a.config)
    print(f"precision@{metrics['retrieval_k']}: {metrics['retrieval_precision_at_k']}, "
          f"landmark kNN accuracy: {metrics['anatomy_knn_accuracy']}")
    return 0


def _cmd_patches(a) -> int:
    from leader.config import load_config  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.patches import disease_patches, healthy_patches, landmark_patches  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    pc = cfg["patches"]
    m = Manifest.load(a.manifest)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dis, skipped = disease_patches(m, margin=pc["margin"], min_size=pc["min_size"], on_bad_box=pc["on_bad_box"])
    hea = healthy_patches(m, n_per_image=pc["healthy_per_image"], size_frac=tuple(pc["healthy_size_frac"]),
                          seed=int(cfg["seed"]))
    lm = landmark_patches(m)
    for name, t in (("disease", dis), ("healthy", hea), ("landmark", lm)):
        t.to_parquet(out / f"patches-{name}.parquet")
        print(f"{name}: {len(t)} patches -> {out / f'patches-{name}.parquet'}")
    for s in skipped:
        print(f"skipped box on {s[0]}: {s[1]} ({s[2]})", file=sys.stderr)
    return 0


def _cmd_fit(a) -> int:
    from leader.config import load_config  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.teachers.fit import fit_anatomy_expert, fit_disease_expert  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    m = Manifest.load(a.manifest)
    fit = dict((cfg.get("fit") or {}).get(a.kind) or {})
    common = dict(seed=int(cfg["seed"]), precision=cfg["precision"])
    if a.kind == "disease":
        out = fit_disease_expert(m, a.out, patches_cfg=cfg["patches"], augment_cfg=cfg["augment"], **common,
                                 **{k: v for k, v in fit.items() if k in ("arch", "img_size", "epochs", "batch_size", "lr")})
    else:
        out = fit_anatomy_expert(m, a.out, **common, **{k: v for k, v in fit.items()
                                                      if k in ("arch", "img_size", "epochs", "batch_size", "lr",
                                                               "crops_per_image")})
    print((Path(out) / "fit_report.json").read_text())
    return 0


def _cmd_train(a) -> int:
    import pandas as pd  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from leader.config import load_config  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.models.student import LeaderModel  # noqa: PLC0415
    from leader.patches import ImageDataset, PairDataset, disease_patches, healthy_patches  # noqa: PLC0415
    from leader.teachers.cache import apply_teacher_cache  # noqa: PLC0415
    from leader.teachers.spec import parse_teacher_args  # noqa: PLC0415
    from leader.train import distributed as D  # noqa: PLC0415
    from leader.train.loop import Trainer  # noqa: PLC0415
    from leader.transforms import build_augment  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    teachers = parse_teacher_args(a.teacher)
    caches = dict(cfg.get("teacher_cache") or {})
    caches.update(dict(item.split("=", 1) for item in a.teacher_cache if "=" in item))
    bad = [item for item in a.teacher_cache if "=" not in item]
    if bad:
        raise ValueError(f"--teacher-cache {bad[0]!r} must look like NAME=DIR")
    teachers = apply_teacher_cache(teachers, caches)
    sc = cfg["student"]
    S = int(sc["img_size"])
    torch.manual_seed(int(cfg.get("seed", 0)))  # the initial student (and heads) come from the run seed
    model = LeaderModel.for_teachers(teachers, backbone=sc["backbone"], img_size=S, hidden_dim=sc.get("hidden_dim"),
                                     backbone_kwargs=sc.get("backbone_kwargs") or {},
                                     pretrained_file=sc.get("pretrained_file"))
    aug = build_augment(cfg["augment"])
    if a.shards:
        from leader.shards import ShardImageDataset, ShardPairDataset, ShardStream  # noqa: PLC0415

        if a.stream:
            buf = int(cfg.get("shuffle_buffer", 2000))
            stage1 = ShardStream(a.shards, "image", transform=aug, shuffle_buffer=buf)
            stage2 = ShardStream(a.shards, "pair", transform=aug, shuffle_buffer=buf)
        else:
            stage1 = ShardImageDataset(a.shards, transform=aug)
            stage2 = ShardPairDataset(a.shards, transform=aug)
        if stage1.image_size != S:
            raise ValueError(f"shards are {stage1.image_size}x{stage1.image_size} but student.img_size is {S}")
        stage2 = stage2 if len(stage2) and not a.stage1_only else None
    else:
        if not a.manifest:
            raise ValueError("give --manifest (raw files) or --shards (leader data shard)")
        m = Manifest.load(a.manifest)
        train = m.subset((m.df["split"] == "train").to_numpy())
        pc = cfg["patches"]
        dis, _ = disease_patches(train, margin=pc["margin"], min_size=pc["min_size"], on_bad_box=pc["on_bad_box"])
        hea = healthy_patches(train, n_per_image=pc["healthy_per_image"], size_frac=tuple(pc["healthy_size_frac"]),
                              seed=int(cfg["seed"]))
        pairs = pd.concat([dis, hea], ignore_index=True)
        stage1 = ImageDataset(train, S, transform=aug)
        stage2 = PairDataset(train, pairs, S, transform=aug) if len(pairs) and not a.stage1_only else None
    trainer = Trainer(model, teachers, cfg, a.out)
    logging.getLogger("leader.train").setLevel(logging.INFO)  # epoch summaries and resume position
    if trainer.is_main and a.resume:
        last = trainer.latest_checkpoint(verify=False)
        print(f"resuming from {last}" if last is not None else
              f"--resume: no checkpoint in {Path(a.out) / 'checkpoints'}: starting from scratch", file=sys.stderr)
    try:
        final = trainer.fit(stage1, stage2, resume=a.resume)
        if trainer.is_main:
            print(f"final model -> {final}")
    finally:
        D.cleanup()
    return 0


def _cmd_embed(a) -> int:
    import pandas as pd  # noqa: PLC0415

    from leader.embed import EmbeddingIndex, embed_dataset, student_embed_fn  # noqa: PLC0415
    from leader.utils import file_sha256  # noqa: PLC0415
    from leader.models.checkpoint import load_model  # noqa: PLC0415
    from leader.train import distributed as D  # noqa: PLC0415

    info, dev = D.setup(a.device)
    model = load_model(a.checkpoint).to(dev)
    S = model.img_size
    dims = {"e_da": model.e_da_dim, **model.head_dims}
    if a.shards:
        from leader.shards import ShardImageDataset, ShardPatchDataset  # noqa: PLC0415

        ds = ShardPatchDataset(a.shards) if a.shard_patches else ShardImageDataset(a.shards)
        if ds.image_size != S:
            raise ValueError(f"shards are {ds.image_size}x{ds.image_size} but the model takes {S}x{S}")
        source = {"shards": str(Path(a.shards).resolve())}
    else:
        if not a.manifest:
            raise ValueError("give --manifest or --shards")
        from leader.manifest import Manifest  # noqa: PLC0415
        from leader.patches import ImageDataset, PatchDataset  # noqa: PLC0415

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
                              meta={"checkpoint_sha256": file_sha256(Path(a.checkpoint) / "model.safetensors"),
                                    **source}, on_error=a.on_error)
        if info.is_main:
            print(f"{len(store)} embeddings ({', '.join(f'{k}: {d}' for k, d in dims.items())}) -> {a.out}")
            if a.index:
                idx = EmbeddingIndex.from_store(store, a.index_key, kind=a.index)
                path = idx.save(Path(a.out) / f"index-{a.index_key}-{a.index}")
                print(f"{a.index} index of {len(idx)} {a.index_key} vectors -> {path}")
    finally:
        D.cleanup()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leader", description="LeADER: anatomy-disease entangled CXR representations")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="index, fit teachers, distil (stage 1+2), embed, zero-shot checks, report")
    d.add_argument("--data-root", default=None, help="folder of radiographs (e.g. ../shared/data/real-cxr); "
                                                     "omitted: generated chest phantoms")
    d.add_argument("--out", required=True)
    d.add_argument("--quick", action="store_true", help="small student and short schedules (minutes on a CPU)")
    _add_config(d, default=None)
    d.set_defaults(func=_cmd_demo)

    data = sub.add_parser("data", help="manifests and datasets").add_subparsers(dest="data_cmd", required=True)

    pt = sub.add_parser("patches", help="diseased / healthy / landmark patch tables (Algorithm 1 lines 1-7)")
    pt.add_argument("--manifest", required=True)
    pt.add_argument("--out", required=True)
    _add_config(pt)
    pt.set_defaults(func=_cmd_patches)

    te = sub.add_parser("teachers", help="expert teachers").add_subparsers(dest="teachers_cmd", required=True)
    f = te.add_parser("fit", help="train a disease expert (supervised) or an anatomy expert (label-free)")
    f.add_argument("--kind", choices=("disease", "anatomy"), required=True)
    f.add_argument("--manifest", required=True)
    f.add_argument("--out", required=True)
    _add_config(f, default="demo-quick")
    f.set_defaults(func=_cmd_fit)

    tr = sub.add_parser("train", help="two-stage distillation (Algorithm 1); one process or torchrun")
    tr.add_argument("--manifest", default=None, help="manifest (raw image files; train split)")
    tr.add_argument("--shards", default=None, help="shard folder from leader data shard (instead of --manifest)")
    tr.add_argument("--stream", action="store_true",
                    help="stream the shards sequentially (network filesystems) instead of random access")
    tr.add_argument("--teacher", action="append", required=True, metavar="NAME=PATH",
                    help="disease=DIR, anatomy=DIR (teacher folder, embedding store, or timm:ARCH[:WEIGHTS])")
    tr.add_argument("--teacher-cache", action="append", default=[], metavar="NAME=DIR",
                    help="read this teacher's embeddings from its cache (leader teachers cache); repeatable")
    tr.add_argument("--out", required=True)
    tr.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in OUT/checkpoints")
    tr.add_argument("--stage1-only", action="store_true")
    _add_config(tr)
    tr.set_defaults(func=_cmd_train)

    e = sub.add_parser("embed", help="write E_DA, E'_D, E'_A for every manifest row (or patch) to a store; "
                                     "one process or torchrun")
    e.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + config.json)")
    e.add_argument("--manifest", default=None)
    e.add_argument("--shards", default=None, help="read the images from a shard folder instead")
    e.add_argument("--shard-patches", action="store_true", help="with --shards: embed the stored patches")
    e.add_argument("--out", required=True)
    e.add_argument("--patches", default=None, help="patch table (Parquet) to embed instead of whole images")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--num-workers", type=int, default=0)
    e.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="unreadable image: stop (default; a rerun continues) or skip it and list it in OUT/skipped.json")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    e.add_argument("--flush-every", type=int, default=4096, help="vectors per store shard")
    e.add_argument("--store-dtype", default="float32", choices=("float32", "float16"))
    e.add_argument("--index", default=None, choices=("exact", "ivf", "ivf-sq8", "hnsw"),
                   help="also build a retrieval index (OUT/index-KEY-KIND)")
    e.add_argument("--index-key", default="e_da")
    e.set_defaults(func=_cmd_embed)
    groups = {"data": data, "teachers": te}
    for name in EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        mod.register(sub, groups)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (LeaderError, ValueError, OSError, KeyError, FloatingPointError) as e:
        # bad input, a full/read-only disk (WriteError), a NaN loss: one clean line naming the
        # file/row/step; --verbose shows the traceback
        if args.verbose:
            raise
        print(f"leader: error: {e}", file=sys.stderr)
        if isinstance(e, ImageReadError) and getattr(args, "on_error", None) == "raise":
            print("leader: hint: --on-error skip leaves unreadable files out and lists them with their reason",
                  file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
