"""``leader export ...`` and ``leader teachers import ...``.

::

    leader export --checkpoint DIR --format timm|hf|onnx --out PATH [--no-verify]
                  [--teacher-info NAME=TEXT ...] [--data TEXT] [--metrics metrics.json] [--opset 17]
    leader teachers import SOURCE [SOURCE ...] --store OUT [--format auto|v1|elixr-c|elixr-b]
                  [--manifest M] [--patches P.parquet ...] [--id-prefix nih/] [--id-map map.csv]
                  [--allow-missing] [--key embedding]

``teachers import`` reads Google CXR Foundation / ELIXR outputs (``.npz`` / ``.tfrecord``
files or folders of them) into an embedding store used with ``--teacher disease=OUT``.
"""

from __future__ import annotations

import argparse


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r} must look like NAME=TEXT")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _cmd_export(a) -> int:
    try:
        return _export(a)
    except ImportError as e:  # optional dependency (onnx / onnxruntime) missing
        import sys  # noqa: PLC0415

        print(f"leader: error: {e}", file=sys.stderr)
        return 2


def _export(a) -> int:
    from leader import export as ex  # noqa: PLC0415

    if a.format == "timm":
        report = ex.export_timm(a.checkpoint, a.out, verify=not a.no_verify)
        print(report)
        print(f"load with: {report['usage']}")
    elif a.format == "hf":
        report = ex.export_hf(a.checkpoint, a.out, teachers=_kv(a.teacher_info, "--teacher-info"), data=a.data,
                              metrics=a.metrics)
        print(report)
    else:
        report = ex.export_onnx(a.checkpoint, a.out, opset=a.opset, verify=not a.no_verify)
        print(report)
    return 0


def _cmd_import(a) -> int:
    import pandas as pd  # noqa: PLC0415

    from leader.teachers.cxr_foundation import import_cxr_foundation  # noqa: PLC0415

    ids: list[str] | None = None
    if a.manifest or a.patches:
        ids = []
        if a.manifest:
            from leader.manifest import Manifest  # noqa: PLC0415

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


def register(sub, groups) -> None:
    """Add ``export`` and ``teachers import``."""
    e = sub.add_parser(
        "export",
        help="export a student: timm backbone safetensors, Hugging Face-style folder, or ONNX embedder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + config.json)")
    e.add_argument("--format", required=True, choices=("timm", "hf", "onnx"))
    e.add_argument("--out", required=True, help="file (.safetensors / .onnx) or folder")
    e.add_argument("--no-verify", action="store_true", help="skip reloading / comparing the export")
    e.add_argument("--teacher-info", action="append", default=[], metavar="NAME=TEXT",
                   help="hf: describe a teacher in the model card (repeatable)")
    e.add_argument("--data", default=None, help="hf: training-data description for the model card")
    e.add_argument("--metrics", default=None, help="hf: metrics.json for the model card (default: found next to the checkpoint)")
    e.add_argument("--opset", type=int, default=17, help="onnx: opset version")
    e.set_defaults(func=_cmd_export)

    te = groups["teachers"]
    i = te.add_parser("import", help="import Google CXR Foundation / ELIXR embeddings (.npz / .tfrecord) into a store")
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
    i.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    i.set_defaults(func=_cmd_import)
