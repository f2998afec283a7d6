"""``leader patches``: the diseased / healthy / landmark patch tables of a manifest (Algorithm 1 lines 1-7).

Library imports happen inside the handler (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse
import sys

from leader.cli._common import add_config


def _cmd_patches(a) -> int:
    from leader.manifest import Manifest
    from leader.recipe import patch_tables

    tables = patch_tables(a.cfg, Manifest.load(a.manifest))
    for name, path in tables.save(a.out).items():
        print(f"{name}: {len(getattr(tables, name))} patches -> {path}")
    for s in tables.skipped:
        print(f"skipped box on {s[0]}: {s[1]} ({s[2]})", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader patches``."""
    pt = sub.add_parser("patches", help="diseased / healthy / landmark patch tables (Algorithm 1 lines 1-7)")
    pt.add_argument("--manifest", required=True, metavar="M.parquet", help="manifest (boxes, normal flags, landmarks)")
    pt.add_argument("--out", required=True, metavar="DIR", help="folder for patches-{disease,healthy,landmark}.parquet")
    add_config(pt)
    pt.set_defaults(func=_cmd_patches)
