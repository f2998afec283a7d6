"""The ``leader`` command.

::

    leader demo [--data-root DIR] --out DIR [--quick]          # everything, end to end
    leader data index --root DIR --out manifest.parquet [--no-check-files]
    leader data phantoms --out DIR [--n 60]
    leader patches --manifest M --out DIR
    leader teachers fit --kind disease|anatomy --manifest M --out DIR [--config C] [--set k=v]
    leader train --manifest M --teacher disease=PATH --teacher anatomy=PATH --out DIR [--resume]
    leader embed --checkpoint DIR --manifest M --out STORE [--patches P.parquet]

Configs: ``--config`` takes a preset (``paper``, ``demo``, ``demo-quick``) or a YAML file;
``--set key.sub=value`` overrides any value (repeatable).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path


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

    from leader.config import load_config  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.models.student import LeaderModel  # noqa: PLC0415
    from leader.patches import ImageDataset, PairDataset, disease_patches, healthy_patches  # noqa: PLC0415
    from leader.teachers.spec import parse_teacher_args  # noqa: PLC0415
    from leader.train.loop import Trainer  # noqa: PLC0415
    from leader.transforms import PairedAugment  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    teachers = parse_teacher_args(a.teacher)
    m = Manifest.load(a.manifest)
    train = m.subset((m.df["split"] == "train").to_numpy())
    sc = cfg["student"]
    S = int(sc["img_size"])
    model = LeaderModel.for_teachers(teachers, backbone=sc["backbone"], img_size=S, hidden_dim=sc.get("hidden_dim"),
                                     backbone_kwargs=sc.get("backbone_kwargs") or {},
                                     pretrained_file=sc.get("pretrained_file"))
    aug = None
    if cfg["augment"].get("enabled", True):
        aug = PairedAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["augment"].items()
                               if k != "enabled"})
    pc = cfg["patches"]
    dis, _ = disease_patches(train, margin=pc["margin"], min_size=pc["min_size"], on_bad_box=pc["on_bad_box"])
    hea = healthy_patches(train, n_per_image=pc["healthy_per_image"], size_frac=tuple(pc["healthy_size_frac"]),
                          seed=int(cfg["seed"]))
    pairs = pd.concat([dis, hea], ignore_index=True)
    stage2 = PairDataset(train, pairs, S, transform=aug) if len(pairs) and not a.stage1_only else None
    trainer = Trainer(model, teachers, cfg, a.out)
    final = trainer.fit(ImageDataset(train, S, transform=aug), stage2, resume=a.resume)
    print(f"final model -> {final}")
    return 0


def _cmd_embed(a) -> int:
    import pandas as pd  # noqa: PLC0415

    from leader.embed import embed_dataset, student_embed_fn  # noqa: PLC0415
    from leader.manifest import Manifest  # noqa: PLC0415
    from leader.models.checkpoint import load_model  # noqa: PLC0415
    from leader.patches import ImageDataset, PatchDataset  # noqa: PLC0415

    model = load_model(a.checkpoint)
    m = Manifest.load(a.manifest)
    S = model.img_size
    dims = {"e_da": model.e_da_dim, **model.head_dims}
    if a.patches:
        ds = PatchDataset(m, pd.read_parquet(a.patches), S, transform=None)
    else:
        ds = ImageDataset(m, S, transform=None)
    store = embed_dataset(student_embed_fn(model), ds, a.out, dims, batch_size=a.batch_size,
                          meta={"checkpoint": str(a.checkpoint), "manifest": str(a.manifest)})
    print(f"{len(store)} embeddings ({', '.join(f'{k}: {d}' for k, d in dims.items())}) -> {a.out}")
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

    tr = sub.add_parser("train", help="two-stage distillation (Algorithm 1)")
    tr.add_argument("--manifest", required=True)
    tr.add_argument("--teacher", action="append", required=True, metavar="NAME=PATH",
                    help="disease=DIR, anatomy=DIR (teacher folder, embedding store, or timm:ARCH[:WEIGHTS])")
    tr.add_argument("--out", required=True)
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    tr.add_argument("--stage1-only", action="store_true")
    _add_config(tr)
    tr.set_defaults(func=_cmd_train)

    e = sub.add_parser("embed", help="write E_DA, E'_D, E'_A for every manifest row (or patch) to a store")
    e.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + config.json)")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--patches", default=None, help="patch table (Parquet) to embed instead of whole images")
    e.add_argument("--batch-size", type=int, default=64)
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
    except (ValueError, FileNotFoundError, KeyError) as e:
        if args.verbose:
            raise
        print(f"leader: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
