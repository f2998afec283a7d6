"""Hugging Face vision encoders (RAD-DINO, DINOv2, ViT, ConvNeXt, ...) from a local folder.

Optional: needs ``transformers`` (``pip install transformers``); without it :func:`load_hf`
raises an ``ImportError`` saying so. Nothing is downloaded (the folder is read as is) and no
remote code runs (``trust_remote_code`` is never set).

A folder saved with ``save_pretrained`` holds ``config.json``, the weights
(``model.safetensors``, or shards listed in ``model.safetensors.index.json``; a
``pytorch_model.bin`` is first checked with ``torch.load(weights_only=True)`` and refused if
it needs full unpickling) and usually ``preprocessor_config.json``. The encoder is loaded
with ``AutoModel.from_pretrained(local_files_only=True, trust_remote_code=False)`` (which
knows each architecture's checkpoint key conventions), and the load is strict: missing,
unexpected (e.g. the ``classifier.*`` of a ``...ForImageClassification`` checkpoint) or
mis-shaped keys are named and refused unless ``strict=False``.

Input contract: from ``preprocessor_config.json`` -- ``crop_size`` (when ``do_center_crop``)
or ``size``, ``image_mean``, ``image_std`` (e.g. RAD-DINO: 518², mean 0.5307, std 0.2583),
channels from ``config.num_channels``; the ``1/255`` rescale is implied, since LeADER images
are already in ``[0, 1]``. Without a preprocessor config: ``config.image_size`` (224 when
absent) and ImageNet mean/std.

Embedding (``pooling``): ``"auto"`` uses ``pooler_output`` when the model has one (DINOv2 /
RAD-DINO: the layer-normed CLS token, 768-d for RAD-DINO), else the CLS token of a token
sequence or the global average of a feature map; ``"cls"``, ``"mean"`` (mean of the patch
tokens) and ``"pooler"`` force one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.checkpoint import check_weight_keys
from .base import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from .weights import load_checkpoint_object
from .module import ModuleTeacher

__all__ = ["HFEncoder", "hf_input_spec", "load_hf"]

_POOLINGS = ("auto", "cls", "mean", "pooler")


def _import_transformers():
    try:
        import transformers  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "Hugging Face teachers (hf:DIR, e.g. RAD-DINO) need the optional package 'transformers', "
            "which is not installed: pip install transformers"
        ) from exc
    return transformers


class HFEncoder(nn.Module):
    """Wrap a ``transformers`` vision model so that ``forward(pixel_values) -> [B, d]``."""

    def __init__(self, model: nn.Module, pooling: str = "auto"):
        super().__init__()
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling == "pooler" or (self.pooling == "auto" and pooled is not None):
            if pooled is None:
                raise ValueError("pooling='pooler' but the model returns no pooler_output")
            return pooled.flatten(1) if pooled.dim() == 4 else pooled
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        if self.pooling == "mean":
            return hidden[:, 1:].mean(dim=1) if hidden.shape[1] > 1 else hidden[:, 0]
        return hidden[:, 0]  # "cls" / "auto" without a pooler


def hf_input_spec(directory: str | os.PathLike, config: Any = None) -> InputSpec:
    """Input contract of a Hugging Face folder (see module docstring)."""
    directory = Path(directory)
    channels = int(getattr(config, "num_channels", 3) or 3)
    pre_file = directory / "preprocessor_config.json"
    size = None
    mean: Any = None
    std: Any = None
    if pre_file.is_file():
        pre = json.loads(pre_file.read_text())
        if pre.get("do_center_crop", False) and pre.get("crop_size"):
            size = _side(pre["crop_size"])
        if size is None and pre.get("size") is not None:
            size = _side(pre["size"])
        if pre.get("do_normalize", True):
            mean, std = pre.get("image_mean"), pre.get("image_std")
        else:
            mean = std = None
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if size is None:
        img = getattr(config, "image_size", None) if config is not None else None
        size = _side(img) if img is not None else 224
    if mean is not None and len(mean) not in (1, channels):
        mean = (sum(mean) / len(mean),)
    if std is not None and len(std) not in (1, channels):
        std = (sum(std) / len(std),)
    return InputSpec(size=int(size), channels=channels, mean=mean, std=std)


def _side(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[-1])
    if isinstance(value, dict):
        for k in ("height", "shortest_edge", "width"):
            if k in value and value[k]:
                return int(value[k])
    return None


def _weights_kind(directory: Path) -> bool:
    """``True`` for safetensors weights, ``False`` for a (checked) ``pytorch_model.bin``."""
    if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
        return True
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        load_checkpoint_object(legacy)  # refuses (UnsafeCheckpointError) anything needing full unpickling
        return False
    raise FileNotFoundError(
        f"{directory}: no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def load_hf(
    name: str,
    directory: str | os.PathLike,
    *,
    pooling: str = "auto",
    strict: bool = True,
    input_spec: InputSpec | None = None,
    dim: int | None = None,
) -> ModuleTeacher:
    """A Hugging Face vision encoder saved in ``directory`` as a frozen teacher.

    Args:
        name: teacher / head name.
        directory: a ``save_pretrained`` folder (``config.json`` + weights).
        pooling: ``"auto"`` / ``"cls"`` / ``"mean"`` / ``"pooler"`` (module docstring).
        strict: refuse missing / unexpected weights (default).
        input_spec: override the contract read from ``preprocessor_config.json``.
        dim: embedding width (inferred by one dummy forward when ``None``).

    Raises:
        ImportError: ``transformers`` is not installed.
        FileNotFoundError: no ``config.json`` or no weights.
        UnsafeCheckpointError: a ``pytorch_model.bin`` that needs full unpickling.
        ValueError: weights that do not fit the config (named).
    """
    transformers = _import_transformers()
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"teacher {name!r}: {directory} has no config.json (not a Hugging Face model folder)")
    use_safetensors = _weights_kind(directory)
    source = f"{directory} -> transformers AutoModel"
    try:
        model, info = transformers.AutoModel.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False, use_safetensors=use_safetensors,
            output_loading_info=True,
        )
    except (RuntimeError, OSError) as exc:  # e.g. size mismatches
        raise ValueError(f"{source}: weights do not match the model: {exc}") from exc
    check_weight_keys(source, list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or []),
                      [str(m) for m in (info.get("mismatched_keys") or [])], strict=strict,
                      unexpected_hint=" (e.g. a task head: pass strict=False to drop it)")
    model = model.float()
    config = model.config
    encoder = HFEncoder(model.eval(), pooling=pooling)
    spec = input_spec if input_spec is not None else hf_input_spec(directory, config)
    teacher = ModuleTeacher(name, encoder, spec, dim=dim)
    teacher.source = str(directory)
    return teacher
