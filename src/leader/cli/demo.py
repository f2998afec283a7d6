"""``leader demo``: index, fit the experts, distil (stage 1 + 2), embed, zero-shot checks, report.

Library imports happen inside the handler (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse

from leader.cli._common import add_config


def _cmd_demo(a) -> int:
    from leader.demo import run_demo

    metrics = run_demo(a.data_root, a.out, quick=a.quick, cfg=a.cfg)
    print(f"precision@{metrics['retrieval_k']}: {metrics['retrieval_precision_at_k']}, "
          f"landmark kNN accuracy: {metrics['anatomy_knn_accuracy']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader demo``."""
    d = sub.add_parser("demo", help="index, fit teachers, distil (stage 1+2), embed, zero-shot checks, report")
    d.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder of radiographs (e.g. ../shared/data/real-cxr); omitted: generated chest phantoms")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (report.md, metrics.json, figures/); a rerun reuses finished steps")
    d.add_argument("--quick", action="store_true", help="small student and short schedules (minutes on a CPU): "
                                                        "the demo-quick preset instead of demo")
    add_config(d, default=None)
    d.set_defaults(func=_cmd_demo, preset_for=lambda a: "demo-quick" if a.quick else "demo")
