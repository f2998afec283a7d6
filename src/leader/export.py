"""Take a trained student elsewhere: timm safetensors, a Hugging Face-style folder, ONNX.

``leader export --checkpoint DIR --format timm|hf|onnx --out PATH`` (or the functions below)
reads a LeADER checkpoint (``model.safetensors`` + ``config.json``, strictly, no pickle) and
writes one of:

**timm** (:func:`export_timm`) -- the student *backbone* ``S_θ`` as a safetensors file that
timm loads directly::

    model = timm.create_model(name, pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file="student.safetensors"), **kwargs)

``name`` and ``kwargs`` (e.g. ``embed_dim``, ``depths``, ``img_size``, ``in_chans``) are written
next to it in ``student.json`` and in the file's safetensors metadata. The model gives
``E_DA`` for ``(x.expand(-1, in_chans, -1, -1) - mean) / std`` with ``x`` the ``[B, 1, S, S]``
image in ``[0, 1]`` and ``mean`` / ``std`` the timm ``pretrained_cfg`` values (recorded too).
The export is checked: features of the reloaded timm model equal the student's ``E_DA``.

**hf** (:func:`export_hf`) -- a folder ``config.json`` + ``model.safetensors`` (the whole
student, heads included) + ``README.md`` (a model card: outputs, teachers, training data,
configuration and metrics when they are known). ``leader.load(folder)`` reads it back.

**onnx** (:func:`export_onnx`) -- the whole embedder ``[B, 1, S, S]`` in ``[0, 1]`` ->
``e_da [B, D]`` and one output per head (``disease``, ``anatomy``; the paper's ``E_DA``,
``E'_D``, ``E'_A``), dynamic batch, input normalisation inside the graph, exported with
``torch.onnx.export(dynamo=False)``. Checked against PyTorch with onnxruntime when it is
installed (max abs difference reported, ``atol`` enforced), otherwise only with
``onnx.checker`` (the report says which).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .models.checkpoint import load_state_dict_checked, read_model_config
from .utils import atomic_path, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "load_student",
    "timm_create_kwargs",
    "export_timm",
    "export_hf",
    "export_onnx",
    "model_card",
    "find_metrics",
    "ExportReport",
]

EXPORT_FORMATS = ("timm", "hf", "onnx")


class ExportReport(dict):
    """``{"format", "out", "checked", "max_abs_diff", "note", ...}``; printed by the CLI."""

    def __str__(self) -> str:
        s = f"{self['format']} export -> {self['out']}"
        if self.get("max_abs_diff") is not None:
            s += f" (max |diff| vs PyTorch {self['max_abs_diff']:.2e})"
        if self.get("note"):
            s += f"; {self['note']}"
        return s


def load_student(checkpoint: str | os.PathLike, strict: bool = True, map_location: str | torch.device = "cpu"):
    """Rebuild a :class:`~leader.models.LeaderModel` from a checkpoint folder (eval mode).

    Only ``model.safetensors`` is read (no pickle). ``strict`` (default) refuses missing /
    unexpected keys, naming them; shape mismatches are always refused.

    Returns:
        ``(model, parsed config.json)``.
    """
    from safetensors.torch import load_file

    from .models.student import LeaderModel

    directory = Path(checkpoint)
    if directory.is_file():
        raise ValueError(
            f"{directory}: expected a checkpoint folder (model.safetensors + config.json), got a file"
        )
    cfg = read_model_config(directory)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model checkpoint {directory}: missing model.safetensors")
    model = LeaderModel.from_config(cfg["model"])
    load_state_dict_checked(model, load_file(str(weights), device="cpu"), strict=strict, source=str(weights))
    return model.to(map_location).eval(), cfg


def timm_create_kwargs(model) -> dict[str, Any]:
    """``timm.create_model`` kwargs (besides ``pretrained*``) that rebuild the student's backbone."""
    kw: dict[str, Any] = {"num_classes": 0, "in_chans": int(model.in_chans), **_jsonable(model.backbone_kwargs)}
    if getattr(model, "_native_img_size", True):
        kw["img_size"] = int(model.img_size)
    return kw


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _probe(model, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, model.img_size, model.img_size, generator=g)


def _student_input_spec(model) -> dict:
    return {"size": int(model.img_size), "channels": 1, "value_range": [0.0, 1.0], "mean": None, "std": None}


# ----------------------------------------------------------------------------- timm
def export_timm(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, verify: bool = True, atol: float = 1e-5
) -> ExportReport:
    """Write the student backbone as timm-loadable safetensors (see module docstring).

    Args:
        checkpoint: LeADER checkpoint folder.
        out: output ``.safetensors`` file, or a folder (``<folder>/student.safetensors``).
        verify: rebuild with ``timm.create_model(..., pretrained_cfg_overlay=dict(file=out))``
            and compare its features with the student's ``E_DA`` (raise if they differ).
        atol: tolerance of that check.

    Returns:
        :class:`ExportReport` with ``model_name``, ``kwargs``, ``json`` (the sidecar path).
    """
    from safetensors.torch import save_file

    model, _cfg = load_student(checkpoint)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / "student.safetensors"
    sd = {k[len("backbone."):]: v.detach().cpu().contiguous().clone()
          for k, v in model.state_dict().items() if k.startswith("backbone.")}
    kwargs = timm_create_kwargs(model)
    pcfg = getattr(model.backbone, "pretrained_cfg", None) or {}
    info = {
        "format": "leader-timm-backbone",
        "model_name": model.backbone_name,
        "kwargs": kwargs,
        "mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "std": [float(v) for v in model.pixel_std.flatten().tolist()],
        "input": f"[B, {model.in_chans}, {model.img_size}, {model.img_size}] = (gray [0,1] replicated - mean) / std",
        "e_da_dim": int(model.e_da_dim),
        "source_checkpoint": str(checkpoint),
        "usage": (
            f"timm.create_model({model.backbone_name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={out.name!r}), "
            + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        ),
        "timm_pretrained_cfg_input_size": list(pcfg.get("input_size") or []),
    }
    with atomic_path(out) as tmp:
        save_file(sd, str(tmp), metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in info.items()})
    side = out.with_suffix(".json")
    atomic_write_json(side, info)
    report = ExportReport(format="timm", out=str(out), json=str(side), model_name=model.backbone_name, kwargs=kwargs,
                          usage=info["usage"], checked=False, max_abs_diff=None)
    if verify:
        diff = _verify_timm(model, out, kwargs)
        if diff > atol:
            raise RuntimeError(f"timm export {out}: reloaded features differ from the student's E_DA by {diff:.3g} > {atol}")
        report.update(checked=True, max_abs_diff=diff, note="reloaded with timm.create_model; E_DA identical")
    return report


def _verify_timm(model, file: Path, kwargs: Mapping[str, Any]) -> float:
    import timm

    with _hub_offline():
        net = timm.create_model(model.backbone_name, pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(file)), **kwargs).eval()
    x = _probe(model)
    with torch.no_grad():
        ref = model(x, heads=[])["e_da"]
        xin = x.expand(-1, model.in_chans, -1, -1)
        got = net((xin - model.pixel_mean) / model.pixel_std)
    return float((ref - got).abs().max())


class _hub_offline:
    """Set ``HF_HUB_OFFLINE=1`` while timm resolves a *local* pretrained file (never downloads)."""

    def __enter__(self):
        self._old = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"

    def __exit__(self, *exc):
        if self._old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = self._old


# ----------------------------------------------------------------------------- HF folder
def find_metrics(checkpoint: str | os.PathLike, levels: int = 3) -> tuple[dict | None, Path | None]:
    """``metrics.json`` in the checkpoint folder or up to ``levels`` parents (``leader demo`` writes one)."""
    d = Path(checkpoint).resolve()
    for _ in range(levels + 1):
        f = d / "metrics.json"
        if f.is_file():
            try:
                data = read_json(f)
            except ValueError:
                return None, None
            return (data if isinstance(data, dict) else None), f
        if d.parent == d:
            break
        d = d.parent
    return None, None


def _fmt_value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        if k in ("config", "stage1_epoch_losses", "stage2_epoch_losses", "timings_s", "machine"):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows.extend(_flat_metrics(v, name + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            rows.append((name, v))
    return rows


def model_card(
    model,
    cfg: Mapping[str, Any],
    *,
    teachers: Mapping[str, str] | None = None,
    data: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    metrics_source: str | None = None,
) -> str:
    """The README.md model card of an HF-style export (Markdown with YAML front matter)."""
    extra = dict(cfg.get("extra") or {})
    train_cfg = extra.get("config") if isinstance(extra.get("config"), Mapping) else {}
    teacher_info: dict[str, str] = {}
    recorded = extra.get("teachers")
    if isinstance(recorded, Mapping):
        teacher_info.update({str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in recorded.items()})
    teacher_info.update(dict(teachers or {}))
    if data is None:
        data = extra.get("data") if isinstance(extra.get("data"), str) else None
        if data is None and isinstance(metrics, Mapping) and isinstance(metrics.get("data"), str):
            data = metrics["data"]
    S = model.img_size
    lines = [
        "---",
        "library_name: leader-cxr",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        "  - chest-x-ray",
        "  - radiology",
        "  - representation-learning",
        "  - knowledge-distillation",
        "  - leader",
        "---",
        "",
        f"# LeADER student ({model.backbone_name})",
        "",
        "Anatomy-disease entangled chest-radiograph representations, distilled from frozen expert "
        "teachers into one student (LeADER, two-stage distillation: disease branch on whole images, "
        "then disease and anatomy branches on image-patch pairs).",
        "",
        "## Outputs",
        "",
        f"Input: grayscale radiographs, float `[B, 1, {S}, {S}]` with values in `[0, 1]` (air dark); "
        "channel replication and normalisation happen inside the model.",
        "",
        "| output | width | meaning |",
        "|---|---|---|",
        f"| `e_da` | {model.e_da_dim} | E_DA: the entangled anatomy-disease embedding (backbone features) |",
    ]
    roles = train_cfg.get("teachers") if isinstance(train_cfg.get("teachers"), Mapping) else {}
    for head, dim in model.head_dims.items():
        kind = (roles.get(head) or {}).get("kind") if isinstance(roles.get(head), Mapping) else None
        kind = kind or {"disease": "disease", "anatomy": "anatomy"}.get(head, "other")  # checkpoints before roles
        meaning = {"disease": f"E'_D: distilled disease embedding ({head}-teacher space)",
                   "anatomy": f"E'_A: distilled anatomy embedding ({head}-teacher space)"}.get(
            kind, f"distilled embedding of teacher {head!r} ({kind}; its teacher's space)")
        lines.append(f"| `{head}` | {dim} | {meaning} |")
    lines += ["", "## Teachers", ""]
    for head, dim in model.head_dims.items():
        desc = teacher_info.get(head, "not recorded in the checkpoint")
        lines.append(f"- **{head}** ({dim}-d): {desc}")
    lines += ["", "## Training data", "", data or "Not recorded in the checkpoint.", ""]
    lines += ["## Configuration", "", "Student:", "", "```json", json.dumps(cfg.get("model"), indent=2), "```", ""]
    if train_cfg:
        keep = {k: train_cfg[k] for k in ("loss", "optim", "stage1", "stage2", "augment", "patches", "student",
                                          "teachers", "precision", "seed") if k in train_cfg}
        lines += ["Training (from the checkpoint):", "", "```json", json.dumps(keep or train_cfg, indent=2, default=str),
                  "```", ""]
    lines += ["## Metrics", ""]
    rows = _flat_metrics(metrics) if metrics else []
    if rows:
        if metrics_source:
            lines += [f"From `{metrics_source}`.", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt_value(v)} |" for k, v in rows]
    else:
        lines.append("No evaluation metrics were recorded with this checkpoint.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import leader",
        "model = leader.load('PATH/TO/THIS/FOLDER')",
        f"out = model.embed(images)  # images: [B, 1, H, W] in [0, 1] (resized to {S})",
        "out['e_da'], " + ", ".join(f"out[{h!r}]" for h in model.head_dims),
        "```",
        "",
        "## Limitations",
        "",
        "Research model. Not a medical device; not validated for clinical use. Embeddings inherit the "
        "biases of the teachers and of the training data.",
        "",
    ]
    return "\n".join(lines)


def export_hf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    teachers: Mapping[str, str] | None = None,
    data: str | None = None,
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
) -> ExportReport:
    """Write a Hugging Face-style folder: ``config.json``, ``model.safetensors``, ``README.md``.

    Args:
        checkpoint: LeADER checkpoint folder.
        out: output folder (created).
        teachers: ``{head: description}`` for the model card (e.g. ``{"disease": "CXR
            Foundation v1 (1376-d)"}``), added to what the checkpoint records.
        data: training-data description for the card.
        metrics: a metrics dict or a ``metrics.json`` path; default: found next to the
            checkpoint (:func:`find_metrics`).

    ``config.json`` keeps LeADER's checkpoint layout (``"model"`` / ``"extra"``) plus
    HF-style fields (``model_type``, ``architectures``, widths, ``input_spec``), so both
    ``leader.load`` and ``load_model`` read the folder.
    """
    from safetensors.torch import save_file

    model, cfg = load_student(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = None
    if metrics is None:
        metrics, found = find_metrics(checkpoint)
        source = str(found) if found else None
    elif not isinstance(metrics, Mapping):
        source = str(metrics)
        metrics = read_json(metrics)
    config = {
        "model_type": "leader",
        "architectures": ["LeaderModel"],
        "library_name": "leader-cxr",
        "format": cfg.get("format", "leader-model"),
        "version": cfg.get("version", 1),
        "model": cfg["model"],
        "extra": cfg.get("extra") or {},
        "backbone": model.backbone_name,
        "image_size": int(model.img_size),
        "hidden_size": int(model.e_da_dim),
        "outputs": {"e_da": int(model.e_da_dim), **{k: int(v) for k, v in model.head_dims.items()}},
        "input_spec": _student_input_spec(model),
        "teachers": dict(teachers or {}),
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "leader-model"})
    atomic_write_json(out / "config.json", config)
    card = model_card(model, cfg, teachers=teachers, data=data, metrics=metrics, metrics_source=source)
    atomic_write_text(out / "README.md", card)
    return ExportReport(format="hf", out=str(out), checked=False, max_abs_diff=None,
                        note=f"metrics from {source}" if source else "no metrics found")


# ----------------------------------------------------------------------------- ONNX
class _OnnxEmbedder(nn.Module):
    def __init__(self, model, heads: Sequence[str]):
        super().__init__()
        self.model = model
        self.heads = list(heads)

    def forward(self, image: torch.Tensor):
        out = self.model(image, heads=self.heads)
        return (out["e_da"], *[out[h] for h in self.heads])


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
) -> ExportReport:
    """Export the embedder to ONNX (outputs ``e_da`` + one per head) and check it.

    Args:
        checkpoint: LeADER checkpoint folder.
        out: ``.onnx`` file, or a folder (``<folder>/student.onnx``).
        opset: ONNX opset.
        verify: compare with PyTorch on a batch of a different size than the export example
            (onnxruntime), or run ``onnx.checker`` when onnxruntime is missing.
        atol: maximum allowed absolute difference.

    Raises:
        ImportError: the ``onnx`` package is missing (``pip install onnx``).
        RuntimeError: outputs differ by more than ``atol``.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime "
                          "(or pip install 'leader-cxr[export]')") from exc
    model, _cfg = load_student(checkpoint)
    heads = list(model.head_dims)
    wrapper = _OnnxEmbedder(model, heads).eval()
    out = Path(out)
    if out.suffix != ".onnx":
        out = out / "student.onnx"
    names = ["e_da", *heads]
    example = _probe(model, 2)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=names,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
        proto = onnx.load(str(tmp))
        for k, v in {
            "leader_input_spec": json.dumps(_student_input_spec(model)),
            "leader_outputs": json.dumps({"e_da": model.e_da_dim, **model.head_dims}),
            "leader_backbone": model.backbone_name,
        }.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
    wrapper.eval()
    report = ExportReport(format="onnx", out=str(out), outputs=names, checked=False, max_abs_diff=None)
    if not verify:
        return report
    onnx.checker.check_model(str(out))
    try:
        import onnxruntime as ort
    except ImportError:
        report.update(checked="onnx.checker", note="onnxruntime not installed: graph checked with onnx.checker only, "
                      "outputs not compared with PyTorch")
        return report
    x = _probe(model, 3, seed=1)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"image": x.numpy()})
    with torch.no_grad():
        ref = wrapper(x)
    diff = max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref))
    if diff > atol:
        raise RuntimeError(f"ONNX export {out}: outputs differ from PyTorch by {diff:.3g} > {atol}")
    report.update(checked="onnxruntime", max_abs_diff=diff, note="outputs match PyTorch (batch 3, dynamic batch)")
    return report
