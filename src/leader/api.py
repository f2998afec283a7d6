"""A small Python API: ``leader.load(path)`` -> a model with ``.embed(images)``.

Example::

    import leader
    model = leader.load("runs/demo/student/final")       # a checkpoint or an `export --format hf` folder
    out = model.embed(images)                             # images: [B, 1, H, W] in [0, 1]
    out["e_da"].shape, out["disease"].shape, out["anatomy"].shape
    # (B, D) (B, d_D) (B, d_A), e.g. D = 1024 (Swin-B), d_D = 1376 (CXR Foundation), d_A = 2048 (Adam v1)

``path`` may also be an ``.onnx`` file from ``leader export --format onnx`` (needs
onnxruntime). Weights are read from safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load", "Embedder", "OnnxEmbedder"]

_TOL = 1e-3


def _as_batch(images: Any, size: int) -> torch.Tensor:
    """Images in any accepted form -> float32 ``[B, 1, size, size]`` in ``[0, 1]`` (CPU)."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("embed: no images given")
        tensors = [_as_batch(_read_one(im), size) for im in images]
        return torch.cat(tensors, dim=0)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"embed: expected a tensor / array [B, 1, H, W], a path or a list of them, got {type(images).__name__}")
    x = images
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(
            f"embed: expected grayscale images [B, 1, H, W] (or [B, H, W] / [H, W]) in [0, 1], got shape {tuple(images.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"embed: expected float images in [0, 1], got dtype {x.dtype} (divide integer pixels by their maximum)")
    x = x.detach().float()
    if x.numel():
        mn, mx = float(x.min()), float(x.max())
        if not (mn >= -_TOL and mx <= 1 + _TOL):
            raise ValueError(
                f"embed: images must have values in [0, 1] (air dark), got min={mn:.4g}, max={mx:.4g}; "
                "the model normalises internally"
            )
    x = x.clamp(0, 1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _read_one(item: Any) -> Any:
    if isinstance(item, (str, os.PathLike)):
        from .io import read_image

        return read_image(item).pixels
    return item


class Embedder:
    """A LeADER student ready to embed images.

    Attributes:
        model: the :class:`~leader.models.LeaderModel` (eval mode).
        img_size: input side ``S`` the model was trained at.
        dims: ``{"e_da": D, <head>: d_head, ...}``.
        config: the parsed ``config.json``.
    """

    def __init__(self, model, config: dict | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.config = dict(config or {})
        self.device = torch.device(device)
        self.model.to(self.device)

    @property
    def img_size(self) -> int:
        return int(self.model.img_size)

    @property
    def dims(self) -> dict[str, int]:
        return {"e_da": int(self.model.e_da_dim), **{k: int(v) for k, v in self.model.head_dims.items()}}

    def to(self, device: str | torch.device) -> "Embedder":
        """Move the model to ``device``; returns ``self``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def embed(self, images: Any, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Embed images into ``E_DA`` and the distilled teacher embeddings.

        Args:
            images: float ``[B, 1, H, W]`` (or ``[B, H, W]``, ``[H, W]``) tensor / numpy array
                with values in ``[0, 1]`` (air dark, the reader contract), resized to
                ``img_size`` if ``H, W`` differ; or an image path / a list of paths and arrays
                (read with :func:`leader.io.read_image`).
            batch_size: images per forward pass.

        Returns:
            ``{"e_da": float32 [B, D], "disease": float32 [B, d_D], "anatomy": float32 [B, d_A]}``
            (one entry per head of the model) on the CPU, without autograd history. For the
            paper's configuration ``D = 1024`` (Swin-B), ``d_D = 1376`` (CXR Foundation),
            ``d_A = 2048`` (Adam v1 ResNet-50).

        Raises:
            ValueError: wrong shape, non-float input, or values outside ``[0, 1]``.
            TypeError: an unsupported input type.
        """
        x = _as_batch(images, self.img_size)
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in self.dims}
        with torch.inference_mode():
            for i in range(0, x.shape[0], max(1, int(batch_size))):
                res = self.model(x[i:i + batch_size].to(self.device))
                for k in outs:
                    outs[k].append(res[k].float().cpu())
        return {k: torch.cat(v, dim=0).clone() for k, v in outs.items()}

    __call__ = embed

    def __repr__(self) -> str:
        return f"Embedder({self.model.backbone_name}, img_size={self.img_size}, dims={self.dims})"


class OnnxEmbedder:
    """Same interface as :class:`Embedder` for an ONNX file from ``leader export --format onnx``."""

    def __init__(self, path: str | os.PathLike):
        from .teachers.exported import _import_onnxruntime

        ort = _import_onnxruntime()
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        if "leader_input_spec" not in meta or "leader_outputs" not in meta:
            raise ValueError(f"{self.path}: not an ONNX export of a LeADER student (no leader_* metadata)")
        self._size = int(json.loads(meta["leader_input_spec"])["size"])
        self._dims = {k: int(v) for k, v in json.loads(meta["leader_outputs"]).items()}
        self._input = self.session.get_inputs()[0].name

    @property
    def img_size(self) -> int:
        return self._size

    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def embed(self, images: Any, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """See :meth:`Embedder.embed`."""
        x = _as_batch(images, self._size).numpy()
        names = list(self._dims)
        outs: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for i in range(0, x.shape[0], max(1, int(batch_size))):
            for k, v in zip(names, self.session.run(names, {self._input: x[i:i + batch_size]})):
                outs[k].append(v)
        return {k: torch.from_numpy(np.concatenate(v, axis=0).astype(np.float32)) for k, v in outs.items()}

    __call__ = embed


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, strict: bool = True) -> Embedder | OnnxEmbedder:
    """Load a trained LeADER student for embedding.

    Args:
        path: a checkpoint folder (``model.safetensors`` + ``config.json``: what training
            writes, or ``leader export --format hf``), or an ``.onnx`` export.
        device: where to run (PyTorch models).
        strict: refuse weights with missing / unexpected keys (default; they are named).
            ``strict=False`` loads what fits and warns. Shape mismatches are always refused.

    Returns:
        An object with ``.embed(images) -> {"e_da": [B, D], "disease": [B, d_D],
        "anatomy": [B, d_A]}`` (see :meth:`Embedder.embed`), ``.dims`` and ``.img_size``.

    Raises:
        FileNotFoundError: nothing at ``path`` / missing files.
        ValueError: a file that is not a LeADER checkpoint (e.g. the backbone-only timm
            export, which has no heads: load it with timm), or weights that do not match.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        return OnnxEmbedder(p)
    if p.is_file():
        raise ValueError(
            f"{p}: leader.load expects a checkpoint folder (model.safetensors + config.json) or an .onnx export; "
            "a backbone-only timm export has no heads (load it with timm.create_model(..., "
            "pretrained_cfg_overlay=dict(file=...)))"
        )
    if not p.exists():
        raise FileNotFoundError(f"leader.load: {p} does not exist")
    from .export import load_student

    model, cfg = load_student(p, strict=strict)
    return Embedder(model, cfg, device=device)
