"""``leader eval ...``: the paper's evaluation protocols from the command line.

::

    leader eval anatomy      --rep SPEC ... (--manifest M | --data-root DIR | --phantoms N | --demo DIR) --out DIR
    leader eval retrieval    --rep SPEC ... DATA --out DIR [--k 100] [--queries 200]
    leader eval probe        --rep SPEC ... DATA --out DIR [--level image|lesion] [--fractions 0.1 1] [--seeds 0 1 2]
    leader eval finetune     --backbone SPEC ... DATA --out DIR [--task classification|segmentation]
    leader eval entanglement --rep SPEC ... DATA --out DIR
    leader eval ablation NAME --teacher disease=DIR --teacher anatomy=DIR DATA --out DIR [--config demo-quick]

``SPEC`` (see :mod:`leader.eval.features`): ``[NAME=]PATH_OR_timm:ARCH[#key,key]`` — a student
checkpoint folder (E_DA, E'_D, E'_A), a teacher folder, an embedding store (or folder of
stores), or ``timm:ARCH[:WEIGHTS]``. ``--demo DIR`` (the output of ``leader demo``) supplies
the manifest, the student and both teachers when they are not given. Every command writes
``<protocol>.md``, CSV tables, ``<protocol>.json`` and PNG figures to ``--out``.
"""

from __future__ import annotations

import json

import argparse
import shlex
import sys
from pathlib import Path


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "leader":
        return shlex.join(["leader", *argv[1:]])
    return ""


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of)")
    g.add_argument("--manifest", default=None, help="manifest Parquet")
    g.add_argument("--data-root", default=None, help="folder of datasets, indexed on the fly (e.g. ../shared/data/real-cxr)")
    g.add_argument("--phantoms", type=int, default=None, metavar="N", help="generate N chest phantoms under --out")
    g.add_argument("--demo", default=None, metavar="DIR",
                   help="output of `leader demo`: its manifest, student and teachers are the defaults")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="embedding precision")
    p.add_argument("--cache-dir", default=None, help="also write computed embeddings to stores here (resumable)")


def _rep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rep", action="append", default=[], metavar="SPEC",
                   help="representation: [NAME=]PATH|timm:ARCH[:WEIGHTS][#keys] (repeatable)")


def _landmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--landmarks", default="jsrt166",
                   help="jsrt166 (ten named landmarks from JSRT/SCR contours; phantoms too), organs, or a CSV "
                        "with columns image,landmark,x,y")
    p.add_argument("--patch-size", type=float, default=224, help="landmark patch side at a 1024-px-wide image")


def _load(a):
    from leader.eval.data import load_eval_manifest  # noqa: PLC0415

    manifest = a.manifest
    if a.demo and not (a.manifest or a.data_root or a.phantoms):
        manifest = str(Path(a.demo) / "manifest.parquet")
    return load_eval_manifest(manifest=manifest, data_root=a.data_root, phantoms=a.phantoms, out=a.out, seed=a.seed)


def _reps(a, required: bool = True):
    from leader.eval.features import demo_representations, load_representations  # noqa: PLC0415

    kw = {"precision": a.precision}
    if a.cache_dir:
        kw["cache_dir"] = a.cache_dir
    reps = []
    if a.rep:
        if a.cache_dir:
            # one store per source
            reps = []
            for i, s in enumerate(a.rep):
                reps += load_representations([s], precision=a.precision, cache_dir=str(Path(a.cache_dir) / f"rep-{i}"))
        else:
            reps = load_representations(a.rep, precision=a.precision)
    elif a.demo:
        reps = demo_representations(a.demo, precision=a.precision)
    if required and not reps:
        raise ValueError("give at least one --rep (or --demo DIR)")
    return reps


def _disease_patches(m):
    from leader.patches import disease_patches  # noqa: PLC0415

    t, _ = disease_patches(m, on_bad_box="skip")
    return t


def _print(df, out: Path, name: str) -> None:
    from leader.eval.report import markdown_table  # noqa: PLC0415

    print(markdown_table(df))
    print(f"-> {out / (name + '.md')}")


def _cmd_anatomy(a) -> int:
    from leader.eval.data import landmark_table  # noqa: PLC0415
    from leader.eval.protocols import run_anatomy  # noqa: PLC0415

    m, desc = _load(a)
    lm = landmark_table(m, a.landmarks, size=a.patch_size)
    df = run_anatomy(_reps(a), m, lm, a.out, seed=a.seed, k=a.k, perplexity=a.perplexity, source=a.landmarks,
                     data=desc, command=_command_line())
    _print(df, Path(a.out), "anatomy")
    return 0


def _cmd_retrieval(a) -> int:
    from leader.eval.protocols import run_retrieval  # noqa: PLC0415

    m, desc = _load(a)
    q = _disease_patches(m)
    if not len(q):
        raise ValueError("no disease boxes in the data: retrieval needs diseased-patch queries")
    k = a.k
    if k is None:  # the paper's K=100, or the K the demo used when evaluating a demo folder
        k = 100
        demo_metrics = Path(a.demo) / "metrics.json" if getattr(a, "demo", None) else None
        if demo_metrics is not None and demo_metrics.is_file():
            k = int(json.loads(demo_metrics.read_text()).get("retrieval_k", 100))
    df = run_retrieval(_reps(a), m, q, a.out, k=k, n_queries=a.queries, seed=a.seed, data=desc,
                       command=_command_line())
    _print(df, Path(a.out), "retrieval")
    return 0


def _cmd_probe(a) -> int:
    from leader.eval.protocols import run_probe  # noqa: PLC0415
    from leader.eval.report import markdown_table  # noqa: PLC0415
    from leader.eval.stats import results_table, wide_table  # noqa: PLC0415

    m, desc = _load(a)
    rec = run_probe(_reps(a), m, a.out, level=a.level, fractions=a.fractions, seeds=a.seeds,
                    split_fractions=a.split, labels=a.labels, patches=_disease_patches(m) if a.level == "lesion" else None,
                    ensembles=not a.no_ensembles, min_known=a.min_known, data=desc, command=_command_line())
    print(markdown_table(wide_table(results_table(rec), markdown=False)))
    print(f"-> {Path(a.out) / 'probe.md'}")
    return 0


def _cmd_finetune(a) -> int:
    from leader.eval.features import parse_rep_spec  # noqa: PLC0415
    from leader.eval.protocols import run_finetune  # noqa: PLC0415
    from leader.eval.report import markdown_table  # noqa: PLC0415
    from leader.eval.stats import results_table, wide_table  # noqa: PLC0415

    m, desc = _load(a)
    backbones = []
    for s in a.backbone:
        name, spec, _ = parse_rep_spec(s)
        backbones.append((name or Path(spec).name, spec))
    if not backbones and a.demo:
        d = Path(a.demo)
        backbones = [("student", str(d / "student" / "final")), ("disease teacher", str(d / "teachers" / "disease")),
                     ("anatomy teacher", str(d / "teachers" / "anatomy"))]
    if not backbones:
        raise ValueError("give at least one --backbone (or --demo DIR)")
    rec = run_finetune(backbones, m, a.out, task=a.task, level=a.level, fractions=a.fractions, seeds=a.seeds,
                       epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, batch_size=a.batch_size,
                       split_fractions=a.split, labels=a.labels,
                       patches=_disease_patches(m) if a.level == "lesion" else None,
                       data_root=a.data_root or a.mask_root, min_known=a.min_known, data=desc,
                       command=_command_line())
    print(markdown_table(wide_table(results_table(rec), markdown=False)))
    print(f"-> {Path(a.out) / 'finetune.md'}")
    return 0


def _cmd_entanglement(a) -> int:
    from leader.eval.data import landmark_table  # noqa: PLC0415
    from leader.eval.entanglement import format_matrix, run_entanglement  # noqa: PLC0415

    m, desc = _load(a)
    lm = landmark_table(m, a.landmarks, size=a.patch_size)
    pm = run_entanglement(_reps(a), m, lm, a.out, disease_patches=_disease_patches(m), seed=a.seed,
                          n_splits=a.folds, k=a.k, retrieval_k=a.retrieval_k, min_known=a.min_known, data=desc,
                          command=_command_line())
    print(format_matrix(pm))
    print(f"-> {Path(a.out) / 'entanglement.md'}")
    return 0


def _cmd_ablation(a) -> int:
    from leader.eval.ablation import run_ablation  # noqa: PLC0415
    from leader.eval.data import landmark_table  # noqa: PLC0415
    from leader.eval.report import markdown_table  # noqa: PLC0415
    from leader.eval.stats import results_table, wide_table  # noqa: PLC0415

    m, desc = _load(a)
    teachers = {}
    for item in a.teacher:
        if "=" not in item:
            raise ValueError(f"--teacher {item!r} must look like NAME=PATH")
        n, p = item.split("=", 1)
        teachers[n] = p
    if not teachers and a.demo:
        teachers = {t: str(Path(a.demo) / "teachers" / t) for t in ("disease", "anatomy")}
    if not teachers:
        raise ValueError("give --teacher disease=DIR --teacher anatomy=DIR (or --demo DIR)")
    rec = run_ablation(a.name, m, teachers, a.out, config=a.config, overrides=a.overrides, seeds=a.seeds,
                       landmarks=landmark_table(m, a.landmarks, size=a.patch_size), retrieval_k=a.retrieval_k,
                       n_splits=a.folds, sets_file=a.sets_file, data=desc, command=_command_line())
    print(markdown_table(wide_table(results_table(rec), markdown=False)))
    print(f"-> {Path(a.out) / 'ablation.md'}")
    return 0


def register(subparsers, groups) -> None:
    """Add ``leader eval ...`` to the ``leader`` command."""
    ev = subparsers.add_parser("eval", help="evaluation protocols (paper §5-6): anatomy, retrieval, probe, "
                                            "finetune, entanglement, ablation")
    sub = ev.add_subparsers(dest="eval_cmd", required=True)

    p = sub.add_parser("anatomy", help="zero-shot anatomy: landmark kNN accuracy, silhouette, NMI, t-SNE")
    _rep_args(p)
    _data_args(p)
    _landmark_args(p)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.set_defaults(func=_cmd_anatomy)

    p = sub.add_parser("retrieval", help="zero-shot disease retrieval: precision@K, query's own image excluded")
    _rep_args(p)
    _data_args(p)
    p.add_argument("--k", type=int, default=None,
                   help="precision@K cut-off (default: 100 as in the paper; with --demo, the demo's K)")
    p.add_argument("--queries", type=int, default=None, help="random queries (seeded); default all")
    p.set_defaults(func=_cmd_retrieval)

    def fractions_seeds(p, fr):
        p.add_argument("--fractions", type=float, nargs="+", default=fr, help="label fractions of the training patients")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--split", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                       help="patient split when the data has no official test split")
        p.add_argument("--labels", nargs="+", default=None, help="disease labels (default: all with enough known values)")
        p.add_argument("--min-known", type=int, default=4, help="labels need this many known values")
        p.add_argument("--level", choices=("image", "lesion"), default="image")

    p = sub.add_parser("probe", help="linear probing on frozen embeddings (image or lesion level)")
    _rep_args(p)
    _data_args(p)
    fractions_seeds(p, [1.0])
    p.add_argument("--no-ensembles", action="store_true", help="skip the teacher concat / average ensembles")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("finetune", help="full fine-tuning: classification or UperNet segmentation")
    p.add_argument("--backbone", action="append", default=[], metavar="SPEC",
                   help="[NAME=]student checkpoint | teacher folder | timm:ARCH[:WEIGHTS] (repeatable)")
    _data_args(p)
    fractions_seeds(p, [0.05, 0.1, 1.0])
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mask-root", default=None, help="where to look for semantic_masks*/ folders (default --data-root)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("entanglement", help="2 x N matrix: each embedding probed on anatomy and on disease")
    _rep_args(p)
    _data_args(p)
    _landmark_args(p)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--retrieval-k", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--min-known", type=int, default=4)
    p.set_defaults(func=_cmd_entanglement)

    p = sub.add_parser("ablation", help="train and compare the variants of a named ablation set")
    p.add_argument("name", help="set in configs/ablations.yaml (loss, backbone, backbone-quick, branches, all)")
    p.add_argument("--sets-file", default=None, help="YAML file with your own sets (same shape)")
    p.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH")
    _data_args(p)
    _landmark_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--retrieval-k", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--config", default="demo-quick", help="base training config: preset or YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config value for every variant (repeatable)")
    p.set_defaults(func=_cmd_ablation)
