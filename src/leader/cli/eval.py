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
the manifest, the student and its teachers when they are not given. Every command writes
``<protocol>.md``, CSV tables, ``<protocol>.json`` and PNG figures to ``--out``.

Library imports happen inside the handlers (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leader.cli._common import add_config, kv_pairs
from leader.cli._common import command_line as _command_line

#: the names of leader.eval.claims.LEVERS (kept here so that `leader --help` does not import torch;
#: tests/test_claims.py checks that they agree)
CLAIMS_LEVERS = ("target-norm", "context", "long-stage2", "smooth-l1")


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of)")
    g.add_argument("--manifest", default=None, help="manifest Parquet")
    g.add_argument("--data-root", default=None, help="folder of datasets, indexed on the fly (e.g. ../shared/data/real-cxr)")
    g.add_argument("--phantoms", type=int, default=None, metavar="N", help="generate N chest phantoms under --out")
    g.add_argument("--demo", default=None, metavar="DIR",
                   help="output of `leader demo`: its manifest, student and teachers are the defaults")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (Markdown, CSV, JSON, PNG)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, queries and t-SNE (default 0)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="embedding precision")
    p.add_argument("--cache-dir", default=None, help="also write computed embeddings to stores here (resumable)")


def _rep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rep", action="append", default=[], metavar="SPEC",
                   help="representation: [NAME=]PATH|timm:ARCH[:WEIGHTS][#keys] (repeatable)")


def _landmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--landmarks", default="jsrt166",
                   help="jsrt166 (ten named landmarks from JSRT/SCR contours; phantoms too), organs, zones "
                        "(lung zones from lung masks / boxes), anatomy (zones + landmarks), or a CSV with columns "
                        "image,landmark,x,y")
    p.add_argument("--patch-size", type=float, default=224, help="landmark patch side at a 1024-px-wide image")


def _anatomy_args(p: argparse.ArgumentParser) -> None:
    """Representations, data, anatomy patches and the kNN's k (anatomy and entanglement)."""
    _rep_args(p)
    _data_args(p)
    _landmark_args(p)
    p.add_argument("--k", type=int, default=5, help="neighbours of the kNN accuracy (default 5)")


def _load(a):
    from leader.eval.data import load_eval_manifest

    manifest = a.manifest
    if a.demo and not (a.manifest or a.data_root or a.phantoms):
        manifest = str(Path(a.demo) / "manifest.parquet")
    return load_eval_manifest(manifest=manifest, data_root=a.data_root, phantoms=a.phantoms, out=a.out, seed=a.seed)


def _reps(a, required: bool = True):
    from leader.eval.features import demo_representations, load_representations

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
    from leader.patches import disease_patches

    t, _ = disease_patches(m, on_bad_box="skip")
    return t


def _print(df, out: Path, name: str) -> None:
    from leader.eval.report import markdown_table

    print(markdown_table(df))
    print(f"-> {out / (name + '.md')}")


def _cmd_anatomy(a) -> int:
    from leader.eval.data import landmark_table
    from leader.eval.protocols import run_anatomy

    m, desc = _load(a)
    lm = landmark_table(m, a.landmarks, size=a.patch_size)
    df = run_anatomy(_reps(a), m, lm, a.out, seed=a.seed, k=a.k, perplexity=a.perplexity, source=a.landmarks,
                     data=desc, command=_command_line())
    _print(df, Path(a.out), "anatomy")
    return 0


def _cmd_retrieval(a) -> int:
    from leader.eval.protocols import run_retrieval

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
    from leader.eval.protocols import run_probe
    from leader.eval.report import markdown_table
    from leader.eval.stats import results_table, wide_table

    m, desc = _load(a)
    rec = run_probe(_reps(a), m, a.out, level=a.level, fractions=a.fractions, seeds=a.seeds,
                    split_fractions=a.split, labels=a.labels, patches=_disease_patches(m) if a.level == "lesion" else None,
                    ensembles=not a.no_ensembles, min_known=a.min_known, data=desc, command=_command_line())
    print(markdown_table(wide_table(results_table(rec), markdown=False)))
    print(f"-> {Path(a.out) / 'probe.md'}")
    return 0


def _cmd_finetune(a) -> int:
    from leader.eval.features import parse_rep_spec
    from leader.eval.protocols import run_finetune
    from leader.eval.report import markdown_table
    from leader.eval.stats import results_table, wide_table

    m, desc = _load(a)
    backbones = []
    for s in a.backbone:
        name, spec, _ = parse_rep_spec(s)
        backbones.append((name or Path(spec).name, spec))
    if not backbones and a.demo:
        d = Path(a.demo)
        backbones = [("student", str(d / "student" / "final"))] + [
            (f"{p.name} teacher", str(p)) for p in sorted((d / "teachers").iterdir()) if (p / "teacher.json").is_file()]
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
    from leader.eval.data import landmark_table
    from leader.eval.entanglement import format_matrix, run_entanglement

    m, desc = _load(a)
    lm = landmark_table(m, a.landmarks, size=a.patch_size)
    pm = run_entanglement(_reps(a), m, lm, a.out, disease_patches=_disease_patches(m), seed=a.seed,
                          n_splits=a.folds, k=a.k, retrieval_k=a.retrieval_k, min_known=a.min_known, data=desc,
                          command=_command_line())
    print(format_matrix(pm))
    print(f"-> {Path(a.out) / 'entanglement.md'}")
    return 0


def _cmd_ablation(a) -> int:
    from leader.eval.ablation import run_ablation
    from leader.eval.data import landmark_table
    from leader.eval.report import markdown_table
    from leader.eval.stats import results_table, wide_table

    m, desc = _load(a)
    teachers = kv_pairs(a.teacher, "--teacher", "NAME=PATH")
    if not teachers and a.demo:
        teachers = {p.name: str(p) for p in sorted((Path(a.demo) / "teachers").iterdir())
                    if (p / "teacher.json").is_file()}
    if not teachers:
        raise ValueError("give --teacher NAME=PATH for each configured teacher (or --demo DIR)")
    rec = run_ablation(a.name, m, teachers, a.out, cfg=a.cfg, config=a.config, overrides=a.overrides, seeds=a.seeds,
                       landmarks=landmark_table(m, a.landmarks, size=a.patch_size), retrieval_k=a.retrieval_k,
                       n_splits=a.folds, sets_file=a.sets_file, data=desc, command=_command_line())
    print(markdown_table(wide_table(results_table(rec), markdown=False)))
    print(f"-> {Path(a.out) / 'ablation.md'}")
    return 0


def _cmd_claims(a) -> int:
    from leader.eval.claims import rebuild_report, run_claims
    from leader.eval.world import prepare_controlled

    say = _say_claims
    if a.report_only:
        result = rebuild_report(a.out)
        print(f"{len(result.rows)} rows -> {Path(a.out) / 'claims.md'}")
        return 0
    if a.setting == "controlled":
        world = prepare_controlled(a.out, a.cfg, n_images=a.n_images, size=128,
                                   seed=a.world_seed)
    else:
        from leader.eval.claims_real import prepare_real

        world = prepare_real(a.out, a.cfg, data_root=a.data_root, test_root=a.test_root, landmark_root=a.landmark_root,
                             say=say)
    say(f"data: {world.description}")
    result = run_claims(world, a.out, seeds=a.seeds, say=say, variants=not a.no_variants, levers=a.lever)
    targets = [r for r in result.rows if r["kind"] != "floor" and r["holds"] is not None]
    missed = [r for r in targets if r["holds"] is False]
    floors = [r for r in result.rows if r["kind"] == "floor"]
    print(f"{len(targets) - len(missed)} of {len(targets)} claims with a target hold; "
          f"{sum(1 for r in floors if r['holds'])} of {len(floors)} representations are above the random-init floor "
          f"({result.seconds['total'] / 60:.1f} min) -> {Path(a.out) / 'claims.md'}")
    for r in missed:
        print(f"  does not hold: {r['claim']} ({r['metric']}: {r['value']:.3f}; target {r['target']})")
    return 0


def _say_claims(msg: str) -> None:
    from leader.cli._common import say

    say("claims", msg)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``leader eval ...`` to the ``leader`` command."""
    ev = subparsers.add_parser("eval", help="evaluation protocols (paper §5-6): anatomy, retrieval, probe, "
                                            "finetune, entanglement, ablation, claims")
    sub = ev.add_subparsers(dest="eval_cmd", required=True, metavar="PROTOCOL")

    p = sub.add_parser("anatomy", help="zero-shot anatomy: landmark kNN accuracy, silhouette, NMI, t-SNE")
    _anatomy_args(p)
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30)")
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
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (splits, probes; default 0 1 2)")
        p.add_argument("--split", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                       help="patient split when the data has no official test split")
        p.add_argument("--labels", nargs="+", default=None, help="disease labels (default: all with enough known values)")
        p.add_argument("--min-known", type=int, default=4, help="labels need this many known values")
        p.add_argument("--level", choices=("image", "lesion"), default="image",
                       help="image-level labels, or lesion level (patches cut from disease boxes)")

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
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                   help="classification head, or UperNet segmentation (Dice)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    p.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate; the head gets 10x (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--mask-root", default=None, help="where to look for semantic_masks*/ folders (default --data-root)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("entanglement", help="2 x N matrix: each embedding probed on anatomy and on disease")
    _anatomy_args(p)
    p.add_argument("--retrieval-k", type=int, default=10, help="K of precision@K (default 10)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--min-known", type=int, default=4, help="labels need this many known values")
    p.set_defaults(func=_cmd_entanglement)

    p = sub.add_parser("claims", help="measure every claim of the paper on a patient-level test split "
                                      "(controlled world or real radiographs), with floors and p-values")
    p.add_argument("--setting", choices=("controlled", "real"), required=True,
                   help="controlled: phantoms whose experts are known by construction; real: real radiographs")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="claims.json, claims.md, results.json, figures/, runs/ (finished students are reused)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--no-variants", action="store_true",
                   help="train only the joint student (no branch-only / cosine-loss students)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild claims.json / claims.md from OUT/results.json (no training, no evaluation)")
    p.add_argument("--lever", action="append", default=[], choices=CLAIMS_LEVERS,
                   help="also train the joint student with this lever switched off (target-norm, context: in the "
                        "presets) or on (long-stage2, smooth-l1: not in the presets) and report the difference "
                        "as a row (repeatable)")
    p.add_argument("--n-images", type=int, default=1000, help="controlled: phantoms to generate (default 1000)")
    p.add_argument("--world-seed", type=int, default=0, help="controlled: seed of the phantoms and the split")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="real: folder of radiographs (default ../shared/data/real-cxr-large)")
    p.add_argument("--landmark-root", default=None, metavar="DIR",
                   help="real: extra folder with JSRT/SCR landmarks for the anatomy task (default "
                        "../shared/data/real-cxr/jsrt-hybridgnet when present)")
    p.add_argument("--test-root", default=None, metavar="DIR",
                   help="real: an extra folder of data used for nothing but testing (its images all join the test "
                        "split)")
    add_config(p, default=None)
    p.set_defaults(func=_cmd_claims, preset_for=lambda a: f"claims-{a.setting}")

    p = sub.add_parser("ablation", help="train and compare the variants of a named ablation set")
    p.add_argument("name", help="set in configs/ablations.yaml (loss, backbone, backbone-quick, branches, all)")
    p.add_argument("--sets-file", default=None, help="YAML file with your own sets (same shape)")
    p.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                   help="a frozen expert with a role in the config's teachers: (repeatable)")
    _data_args(p)
    _landmark_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every variant (default 0)")
    p.add_argument("--retrieval-k", type=int, default=10, help="K of precision@K (default 10)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the probes (default 5)")
    add_config(p, default="demo-quick")
    p.set_defaults(func=_cmd_ablation)
