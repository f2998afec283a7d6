"""``leader data ...``: dataset indexing, splits, phantom generation and shards.

``leader data index [--dataset NAME] --root DIR [--metadata FILE ...] [--no-check-files]
[--views GROUP] [--harmonise] [--uncertain P] [--blank P] [--radiologists P]
[--option KEY=VALUE ...] --out manifest.parquet``

    Without ``--dataset`` every dataset under ``--root`` is detected by content
    (:func:`leader.datasets.index_root`); with it, one reader is used
    (:func:`leader.datasets.read_dataset`; names: ``nih chexpert mimic padchest vindr rsna
    siim tbx11k covidx covid (the COVID-19 image data collection, ieee8023, and its derivatives) chestx-det
    node21 jsrt shenzhen folder``). ``--no-check-files``
    reads metadata only and never opens or stats an image.

    ``--on-error raise`` (default, fail fast) stops at the first unreadable, truncated or
    corrupt image; ``--on-error skip`` leaves such images out. Either way the images left
    out (also missing files, which are always skipped) are listed with their reason in
    ``<out stem>.skipped.json`` next to the manifest (``{"policy", "count",
    "counts_by_reason", "items": [{"id", "path", "dataset", "reason", "message"}]}``, written
    atomically, also when nothing was skipped) and counted in the log line ``indexed X
    images, skipped N (reason: count, ...)`` printed once.

``leader data split --manifest IN --out OUT [--val 0.1] [--test 0.1] [--seed 0]
[--fractions 0.01,0.05,0.1] [--no-official] [--dedup]``

    Keeps official splits, splits the rest by patient, writes the nested label-fraction key
    (extra column ``fraction_key``: the train rows of fraction ``f`` are ``fraction_key <
    f``), and reports leaks (a patient on two sides).

``leader data shard --manifest M --out SHARDS [--split train] [--image-size 224] [--bit-depth 8]
[--encoding png|npy] [--shard-size 1000] [--workers 4] [--part R --num-parts N]``

    Writes images and patches once into streamable tar shards (``--config`` gives the patch
    settings and ``student.img_size``).

Library imports happen inside the handlers (start-up time of ``leader --help``: see
:mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from leader.cli._common import add_config

log = logging.getLogger(__name__)


def skipped_report_path(out: str | Path) -> Path:
    """``M.parquet`` -> ``M.skipped.json`` (same folder)."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.skipped.json")


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _cmd_index(a) -> int:
    from leader import faults
    from leader.datasets import harmonise as _harmonise
    from leader.datasets._common import collect_skipped, skip_report
    from leader.datasets.pack import index_root, read_dataset
    from leader.datasets.views import filter_views
    from leader.errors import write_error
    from leader.utils import atomic_write_json

    root = Path(a.root)
    if not root.exists():
        raise FileNotFoundError(f"--root {a.root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"--root {a.root} is a file, not a folder: give the folder that holds the dataset "
                                 "(its metadata files and images)")
    check = not a.no_check_files
    opts = {}
    for kv in a.option or []:
        if "=" not in kv:
            raise SystemExit(f"--option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip().replace("-", "_")] = _parse_value(v)
    for name in ("uncertain", "blank", "policy", "radiologists"):
        if getattr(a, name, None) is not None:
            opts[name] = getattr(a, name)
    if not a.dataset and (a.metadata or opts):
        raise SystemExit("--metadata and reader options need --dataset")
    with collect_skipped() as skipped:
        if a.dataset:
            m = read_dataset(a.dataset, a.root, a.metadata, check_files=check, on_error=a.on_error, **opts)
        else:
            m = index_root(a.root, check_files=check, on_error=a.on_error)
    if a.views and a.views != "all":
        groups = [v.strip() for v in a.views.split(",") if v.strip()]
        m, rep = filter_views(m, groups[0] if len(groups) == 1 else groups)
        print(rep)
    if a.harmonise:
        m = _harmonise(m, keep_native=a.keep_native)
    had = Path(a.out).is_file()
    report_path = skipped_report_path(a.out)
    try:  # atomic (temporary file + os.replace): a kill or a full disk leaves the old manifest
        faults.point("index.before_write")
        # the old report goes first: a kill after the new manifest never leaves a report that
        # describes another manifest beside it (no report = the indexing did not finish)
        report_path.unlink(missing_ok=True)
        m.save(a.out)
    except OSError as exc:
        raise write_error(exc, a.out, intact=f"the previous manifest {a.out}" if had else None) from exc
    faults.point("index.after_write")
    report = skip_report(skipped, a.on_error)
    atomic_write_json(report_path, report)
    reasons = ", ".join(f"{k}: {v}" for k, v in report["counts_by_reason"].items())
    line = f"indexed {len(m)} images, skipped {report['count']}" + (f" ({reasons})" if reasons else "")
    notes = ", ".join(f"{k}: {v}" for k, v in report.get("counts_by_note", {}).items())
    if notes:
        line += f"; notes ({notes})"
    # a log record for log files / library users; the console shows the printed line only (once)
    (log.warning if report["count"] else log.info)("%s; report %s", line, report_path, extra={"printed": True})
    print(f"{line}; report {report_path}")
    print(f"{len(m)} images -> {a.out}")
    print(m.df["dataset"].value_counts().to_string())
    print("splits:", m.df["split"].value_counts().to_dict())
    print("views:", m.df["view"].value_counts().to_dict())
    patients = int(m.df.groupby("dataset")["patient_id"].nunique().sum())  # ids of two datasets may collide
    extra = ""
    if "anatomy_boxes" in m.df.columns:
        extra += f", {int(m.df['anatomy_boxes'].map(lambda v: 0 if v is None else len(v)).sum())} anatomy boxes"
    if "lung_mask" in m.df.columns:
        extra += f", {int(m.df['lung_mask'].notna().sum())} lung masks"
    print(f"{patients} patients, {int(m.df['boxes'].map(len).sum())} disease boxes{extra}, "
          f"{len(m.label_names)} label columns")
    return 0


def _cmd_split(a) -> int:
    from leader.datasets.splits import (assign_splits, duplicate_groups, fraction_keys, group_ids, label_fraction,
                                        split_leaks)
    from leader.manifest import Manifest

    m = Manifest.load(a.manifest)
    groups = group_ids(m, duplicates=duplicate_groups(m) if a.dedup else None)
    m = assign_splits(m, val=a.val, test=a.test, seed=a.seed, respect_official=not a.no_official, groups=groups)
    keys = fraction_keys(m, seed=a.seed, groups=groups)
    df = m.df.copy()
    df["fraction_key"] = keys
    out = Manifest(df, validate=False)
    out.save(a.out)
    print(f"{len(out)} images -> {a.out}")
    print("splits:", out.df["split"].value_counts().to_dict())
    for f in [float(x) for x in a.fractions.split(",") if x.strip()]:
        mask = label_fraction(out, f, keys=keys)
        print(f"fraction {f:g}: {int(mask.sum())} train images, "
              f"{out.df.loc[mask, 'patient_id'].nunique()} patients")
    leaks = split_leaks(out, groups)
    if leaks:
        print(f"WARNING: {len(leaks)} group(s) on more than one side (official splits): "
              f"{list(leaks.items())[:5]}")
    return 0


def _cmd_phantoms(a) -> int:
    from leader.phantoms import make_phantom_pack

    m = make_phantom_pack(a.out, n_images=a.n, size=a.size, seed=a.seed)
    print(f"{len(m)} phantoms -> {Path(a.out) / 'manifest.parquet'}")
    return 0


def _cmd_shard(a) -> int:
    import pandas as pd

    from leader.manifest import Manifest
    from leader.recipe import patch_tables
    from leader.shards import write_shards

    cfg = a.cfg
    m = Manifest.load(a.manifest)
    if a.split != "all":
        m = m.subset((m.df["split"] == a.split).to_numpy())
    if a.patches:
        patches = pd.concat([pd.read_parquet(p) for p in a.patches], ignore_index=True)
        patches = patches[patches["image_id"].isin(set(m.df["id"].astype(str)))]
    elif a.patch_kinds:
        patches = patch_tables(cfg, m).select(a.patch_kinds.split(","))
    else:
        patches = None
    size = a.image_size or int(cfg.student.img_size)
    idx = write_shards(m, a.out, image_size=size, bit_depth=a.bit_depth, encoding=a.encoding, patches=patches,
                       shard_size=a.shard_size, workers=a.workers, part=a.part, num_parts=a.num_parts)
    if idx is None:
        print(f"part {a.part}/{a.num_parts} done; the index is written when every part has finished")
    else:
        print(f"{idx['n_images']} images, {idx['n_patches']} patches in {len(idx['shards'])} shards "
              f"({size}x{size}, {a.bit_depth}-bit {a.encoding}) -> {a.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` group: ``index``, ``split``, ``phantoms``, ``shard``."""
    data = sub.add_parser("data", help="manifests and datasets: index, split, phantoms, shard")
    ds = data.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")
    i = ds.add_parser("index", help="index a dataset folder into a Parquet manifest")
    i.add_argument("--root", required=True, metavar="DIR", help="folder holding one or several datasets "
                                                                "in their published layouts")
    i.add_argument("--out", required=True, metavar="MANIFEST.parquet", help="manifest to write (atomically)")
    i.add_argument("--dataset", default=None,
                   help="reader name (nih, chexpert, mimic, padchest, vindr, rsna, siim, tbx11k, covidx, covid, "
                        "chestx-det, node21, jsrt, shenzhen, folder); default: detect every dataset under --root")
    i.add_argument("--metadata", nargs="+", default=None, help="explicit metadata file(s) for --dataset")
    i.add_argument("--no-check-files", action="store_true", help="metadata only; never touch image files")
    i.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="unreadable, truncated or corrupt images: raise (default, fail fast) or skip them; "
                        "skipped images are listed with their reason in OUT_STEM.skipped.json")
    i.add_argument("--views", default=None,
                   help="keep only these views: frontal, pa, ap, lateral, all, or a comma list (PA,AP,AP AXIAL)")
    i.add_argument("--harmonise", action="store_true", help="map labels onto the harmonised vocabulary")
    i.add_argument("--keep-native", action="store_true", help="with --harmonise: keep native labels as native:<name>")
    i.add_argument("--uncertain", default=None, help="CheXpert/MIMIC -1 policy: ignore (default), ones, zeros")
    i.add_argument("--blank", default=None, help="CheXpert/MIMIC blank policy: zeros (default), ignore")
    i.add_argument("--policy", default=None, help="CheXpert/MIMIC both policies as text: 'uncertain=ignore,blank=0'")
    i.add_argument("--radiologists", default=None, help="VinDr-CXR policy: all (default), union, consensus")
    i.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="extra reader keyword (JSON value), e.g. stored_size=1024 or original_sizes=meta.csv")
    i.set_defaults(func=_cmd_index)

    s = ds.add_parser("split", help="patient-level train/val/test split and nested label fractions")
    s.add_argument("--manifest", required=True, metavar="IN.parquet", help="manifest to split")
    s.add_argument("--out", required=True, metavar="OUT.parquet", help="manifest with split and fraction_key columns")
    s.add_argument("--val", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of patients in the validation split (default 0.1)")
    s.add_argument("--test", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of patients in the test split (default 0.1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the patient assignment (default 0)")
    s.add_argument("--fractions", default="0.01,0.05,0.1,0.25,0.5,1",
                   help="label fractions to report (nested: the 5%% patients are inside the 10%%)")
    s.add_argument("--no-official", action="store_true", help="ignore official splits; re-split everything")
    s.add_argument("--dedup", action="store_true",
                   help="also group byte-identical files (reads every file) so copies stay on one side")
    s.set_defaults(func=_cmd_split)

    ph = ds.add_parser("phantoms", help="generate chest phantoms with known landmarks and lesion boxes")
    ph.add_argument("--out", required=True, metavar="DIR", help="folder for the images and manifest.parquet")
    ph.add_argument("--n", type=int, default=60, help="number of phantoms (default 60)")
    ph.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    ph.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ph.set_defaults(func=_cmd_phantoms)

    sh = ds.add_parser("shard", help="write images and patches once into streamable tar shards")
    sh.add_argument("--manifest", required=True, metavar="M.parquet", help="manifest of the images to shard")
    sh.add_argument("--out", required=True, metavar="DIR", help="shard folder")
    sh.add_argument("--split", default="train", help="manifest split to shard, or 'all' (default: train)")
    sh.add_argument("--image-size", type=int, default=None, help="S (default: student.img_size of the config)")
    sh.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="stored bit depth (default 8)")
    sh.add_argument("--encoding", choices=("png", "npy"), default="png",
                    help="png: lossless and compact; npy: raw, fastest to decode")
    sh.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    sh.add_argument("--patches", action="append", default=[], metavar="TABLE.parquet",
                    help="patch table(s) to store with the images (default: computed from the config)")
    sh.add_argument("--patch-kinds", default="disease,healthy,landmark",
                    help="patch kinds computed when --patches is not given ('' for images only)")
    sh.add_argument("--workers", type=int, default=1, help="parallel writer processes")
    sh.add_argument("--part", type=int, default=0, help="this job's part (split the shards over nodes)")
    sh.add_argument("--num-parts", type=int, default=1, help="number of parts the shards are split into")
    add_config(sh)
    sh.set_defaults(func=_cmd_shard)
