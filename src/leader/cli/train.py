"""``leader train``: two-stage distillation (paper Algorithm 1), one process or ``torchrun``.

A thin layer over :func:`leader.recipe.distil`: the teachers come from ``--teacher NAME=PATH``
(or ``teachers.NAME.source`` in the config) and take their roles (stages, weight) from the
config's ``teachers:``; what will run is printed before training starts.

Library imports happen inside the handler (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from leader.cli._common import add_config


def _cmd_train(a) -> int:
    from leader.manifest import Manifest
    from leader.recipe import distil, resolve_teachers

    if not a.manifest and not a.shards:
        raise ValueError("give --manifest (raw files) or --shards (leader data shard)")
    teachers = resolve_teachers(a.cfg, a.teacher, a.teacher_cache)
    manifest = Manifest.load(a.manifest) if not a.shards else None
    logging.getLogger("leader.train").setLevel(logging.INFO)  # epoch summaries and resume position
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks

    def say(msg: str) -> None:
        if main:
            print(f"leader train: {msg}", file=sys.stderr, flush=True)

    final = distil(a.cfg, teachers, a.out, manifest=manifest, shards=a.shards, stream=a.stream,
                   stage1_only=a.stage1_only, resume=a.resume, say=say)
    if main:
        print(f"final model -> {final}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader train``."""
    tr = sub.add_parser("train", help="two-stage distillation (Algorithm 1); one process or torchrun")
    tr.add_argument("--manifest", default=None, metavar="M.parquet",
                    help="manifest of raw image files (its train split is used)")
    tr.add_argument("--shards", default=None, metavar="DIR", help="shard folder from `leader data shard` "
                                                                  "(instead of --manifest)")
    tr.add_argument("--stream", action="store_true",
                    help="stream the shards sequentially (network filesystems) instead of random access")
    tr.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                    help="a frozen expert: teacher folder, embedding store, timm:ARCH[:WEIGHTS], adam:FILE, xrv:FILE, "
                         "hf:DIR, torchscript:FILE, onnx:FILE (repeatable; NAME needs a role in the config's "
                         "teachers: — the paper preset has disease and anatomy)")
    tr.add_argument("--teacher-cache", action="append", default=[], metavar="NAME=DIR",
                    help="read this teacher's embeddings from its cache (leader teachers cache); repeatable")
    tr.add_argument("--out", required=True, metavar="DIR",
                    help="run folder: losses.csv, checkpoints/, stage1/, final/, skipped.json")
    tr.add_argument("--resume", action="store_true",
                    help="continue from the newest complete checkpoint in OUT/checkpoints")
    tr.add_argument("--stage1-only", action="store_true",
                    help="train stage 1 (disease branch on whole images) only, skip stage 2")
    add_config(tr)
    tr.set_defaults(func=_cmd_train)
