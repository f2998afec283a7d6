"""``leader export``: a trained student as a timm backbone, a Hugging Face-style folder or an ONNX embedder.

::

    leader export --checkpoint DIR --format timm|hf|onnx --out PATH [--no-verify]
                  [--teacher-info NAME=TEXT ...] [--data TEXT] [--metrics metrics.json] [--opset 17]

Library imports happen inside the handler (start-up time: see :mod:`leader.cli`).
"""

from __future__ import annotations

import argparse

from leader.cli._common import kv_pairs


def _cmd_export(a) -> int:
    from leader import export as ex

    if a.format == "timm":
        report = ex.export_timm(a.checkpoint, a.out, verify=not a.no_verify)
        print(report)
        print(f"load with: {report['usage']}")
    elif a.format == "hf":
        report = ex.export_hf(a.checkpoint, a.out, teachers=kv_pairs(a.teacher_info, "--teacher-info", "NAME=TEXT"),
                              data=a.data, metrics=a.metrics)
        print(report)
    else:
        report = ex.export_onnx(a.checkpoint, a.out, opset=a.opset, verify=not a.no_verify)
        print(report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leader export``."""
    e = sub.add_parser(
        "export",
        help="export a student: timm backbone safetensors, Hugging Face-style folder, or ONNX embedder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + config.json)")
    e.add_argument("--format", required=True, choices=("timm", "hf", "onnx"),
                   help="timm: the backbone S_θ as timm safetensors; hf: a folder with every head and a model card; "
                        "onnx: an embedder returning E_DA and every head")
    e.add_argument("--out", required=True, help="file (.safetensors / .onnx) or folder")
    e.add_argument("--no-verify", action="store_true", help="skip reloading / comparing the export")
    e.add_argument("--teacher-info", action="append", default=[], metavar="NAME=TEXT",
                   help="hf: describe a teacher in the model card (repeatable)")
    e.add_argument("--data", default=None, help="hf: training-data description for the model card")
    e.add_argument("--metrics", default=None, help="hf: metrics.json for the model card (default: found next to the checkpoint)")
    e.add_argument("--opset", type=int, default=17, help="onnx: opset version")
    e.set_defaults(func=_cmd_export)
