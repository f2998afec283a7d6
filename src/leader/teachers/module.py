"""ModuleTeacher: a frozen ``torch.nn.Module`` expert (timm or any network), and its on-disk form.

A fitted or downloaded expert (paper §4: Adam as anatomy expert; any "suitable disease/anatomy
expert models can also be integrated") is wrapped as a :class:`ModuleTeacher`. Saved experts
live in a directory::

    expert/
      teacher.json        {"format": "leader-teacher", "version": 1, "name", "arch",
                           "timm_kwargs", "input_spec", "dim"}
      model.safetensors   the timm model's state_dict (num_classes=0)

written by :func:`save_teacher` and read by :meth:`ModuleTeacher.from_checkpoint_dir`.
Weights are only ever read from local files (timm ``pretrained=False``; never downloaded).
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..models.checkpoint import load_state_dict_checked
from ..utils import atomic_path, atomic_write_json, read_json
from .base import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Teacher
from .weights import read_state_dict

__all__ = ["ModuleTeacher", "save_teacher", "read_state_dict", "lock_frozen"]  # read_state_dict: re-exported from .weights

_TEACHER_FORMAT = "leader-teacher"


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for p in module.parameters():
        return p.device, p.dtype
    for b in module.buffers():
        return b.device, (b.dtype if b.is_floating_point() else None)
    return torch.device("cpu"), None


def _pool_output(out: Any, where: str) -> torch.Tensor:
    """Reduce a network output to ``[B, d]``: first element of tuples, GAP of NCHW maps."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{where}: network returned {type(out).__name__}; expected a tensor [B, d] or [B, C, H, W]")
    if out.dim() == 4:
        out = out.mean(dim=(2, 3))  # global average pool of an NCHW feature map
    if out.dim() != 2:
        raise ValueError(
            f"{where}: network output has shape {tuple(out.shape)}; expected [B, d] or an NCHW map "
            "[B, C, H, W] (wrap the module so that it returns pooled features)"
        )
    return out


def _infer_dim(module: nn.Module, spec: InputSpec, where: str) -> int:
    """Output width from one dummy forward, in eval mode, restoring every module's mode."""
    modes = [(m, m.training) for m in module.modules()]
    device, dtype = _module_device_dtype(module)
    try:
        module.eval()
        x = spec.convert(torch.full((1, 1, spec.size, spec.size), 0.5, device=device))
        if dtype is not None:
            x = x.to(dtype)
        with torch.no_grad():
            out = _pool_output(module(x), where)
    finally:
        for m, mode in modes:
            m.training = mode
    return int(out.shape[1])


def _default_timm_spec(model: nn.Module, timm_kwargs: Mapping[str, Any]) -> InputSpec:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = timm_kwargs.get("img_size")
    if size is None:
        size = (cfg.get("input_size") or (3, 224, 224))[-1]
    if isinstance(size, (tuple, list)):
        size = size[-1]
    channels = int(timm_kwargs.get("in_chans", 3))
    mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(cfg.get("std") or IMAGENET_STD)
    if len(mean) != channels:
        mean = (sum(mean) / len(mean),)
        std = (sum(std) / len(std),)
    return InputSpec(size=int(size), channels=channels, mean=mean, std=std)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a teacher network: whatever ``mode`` asks, eval mode and no gradients."""
    nn.Module.train(self, False)
    for p in self.parameters():
        p.requires_grad_(False)
    return self


def lock_frozen(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` and keep it so.

    Its ``train`` is replaced (on the instance) by one that always re-freezes, so a ``.train()``
    call on anything that holds it — a student, a trainer, the user's own wrapper module —
    leaves the teacher in eval mode with gradients off (BatchNorm statistics never move).
    TorchScript modules, whose attributes cannot be replaced, are re-frozen before every
    forward instead (:meth:`ModuleTeacher._forward`). Returns ``module``.
    """
    _frozen_train(module)
    try:
        module.train = types.MethodType(_frozen_train, module)
    except (AttributeError, RuntimeError, TypeError):  # torch.jit.ScriptModule
        pass
    return module


class ModuleTeacher(Teacher):
    """A frozen ``nn.Module`` expert.

    Args:
        name: teacher name (matches the student head it supervises).
        module: network mapping ``[B, C, S, S]`` (after ``input_spec`` conversion) to
            ``[B, dim]``; an NCHW feature map ``[B, C, H, W]`` is global-average-pooled; for
            tuple outputs the first element is used. The module is put in eval mode and its
            parameters get ``requires_grad=False`` (in place).
        input_spec: how to convert ``[0, 1]`` grayscale images (default ImageNet, 224²).
        dim: embedding width; inferred by one dummy forward when ``None``.

    ``embed`` moves the converted batch to the module's device and dtype and returns float32
    on the images' device. The module is forced back to eval mode before every forward, even
    if someone called ``teacher.module.train()``, so BatchNorm statistics never change.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: the module output is not ``[B, d]`` / ``[B, C, H, W]``.
    """

    def __init__(self, name: str, module: nn.Module, input_spec: InputSpec | None = None, dim: int | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"teacher {name!r}: module must be a torch.nn.Module, got {type(module).__name__}")
        self.name = str(name)
        self.module = module
        self.input_spec = input_spec if input_spec is not None else InputSpec()
        self.arch: str | None = None
        self.timm_kwargs: dict[str, Any] = {}
        lock_frozen(module)
        self.dim = int(dim) if dim is not None else _infer_dim(module, self.input_spec, f"teacher {self.name!r}")

    # -- Teacher API ---------------------------------------------------------------------
    def _enforce_eval(self) -> None:
        if any(m.training for m in self.module.modules()) or any(p.requires_grad for p in self.module.parameters()):
            _frozen_train(self.module)

    def _forward(self, x: torch.Tensor, ids: Sequence[str] | None) -> torch.Tensor:
        self._enforce_eval()
        device, dtype = _module_device_dtype(self.module)
        x = x.to(device=device, dtype=dtype if dtype is not None else x.dtype)
        return _pool_output(self.module(x), f"teacher {self.name!r}")

    def to(self, device: torch.device | str) -> "ModuleTeacher":
        """Move the wrapped module to ``device``."""
        self.module.to(device)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        """The wrapped module's (frozen) parameters."""
        return self.module.parameters()

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_timm(
        cls,
        name: str,
        arch: str,
        weights: str | os.PathLike | None = None,
        input_spec: InputSpec | None = None,
        *,
        strict: bool = True,
        state_dict_key: str | None = None,
        strip_prefix: str | Sequence[str] | None = None,
        **timm_kwargs: Any,
    ) -> "ModuleTeacher":
        """Build ``timm.create_model(arch, pretrained=False, num_classes=0, **timm_kwargs)`` and load local weights.

        Args:
            name: teacher name.
            arch: timm architecture name, e.g. ``"resnet50"``, ``"convnext_base"``.
            weights: local ``.safetensors`` (``safetensors.torch.load_file``) or
                ``.pt``/``.pth`` (``torch.load(weights_only=True)``) file; ``None`` keeps the
                random initialisation (tests only).
            input_spec: input contract; default from the model's timm ``pretrained_cfg``
                (mean/std) and ``img_size`` / ``in_chans`` in ``timm_kwargs``.
            strict: missing or unexpected keys are an error (default). With ``strict=False``
                they are a warning; shape mismatches are always an error.
            state_dict_key, strip_prefix: see :func:`read_state_dict`.
            **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``in_chans``,
                ``depths``); ``num_classes`` defaults to 0 (pooled features).

        Raises:
            ValueError: weights do not match the architecture (names missing / unexpected /
                mis-shaped keys), or an unreadable weights file.
        """
        import timm

        kwargs = {"num_classes": 0, **timm_kwargs}
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if weights is not None:
            sd = read_state_dict(weights, state_dict_key=state_dict_key, strip_prefix=strip_prefix)
            load_state_dict_checked(model, sd, strict=strict, source=f"{weights} -> timm {arch!r}")
        spec = input_spec if input_spec is not None else _default_timm_spec(model, timm_kwargs)
        teacher = cls(name, model, spec)
        teacher.arch = arch
        teacher.timm_kwargs = dict(timm_kwargs)
        return teacher

    @classmethod
    def from_checkpoint_dir(cls, directory: str | os.PathLike, name: str | None = None) -> "ModuleTeacher":
        """Load an expert saved by :func:`save_teacher` (``teacher.json`` + ``model.safetensors``).

        Args:
            directory: the expert directory.
            name: override the stored teacher name.

        Raises:
            FileNotFoundError: ``teacher.json`` or ``model.safetensors`` is missing.
            ValueError: malformed ``teacher.json``, weights that do not match (strict), or an
                output width different from the stored ``dim``.
        """
        directory = Path(directory)
        cfg_file = directory / "teacher.json"
        weights = directory / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"teacher directory {directory}: missing {f.name}")
        cfg = read_json(cfg_file)
        missing = [k for k in ("name", "arch", "input_spec", "dim") if k not in cfg]
        if missing:
            raise ValueError(f"{cfg_file}: missing fields {missing}")
        teacher = cls.from_timm(
            name or cfg["name"],
            cfg["arch"],
            weights=weights,
            input_spec=InputSpec.from_dict(cfg["input_spec"]),
            **(cfg.get("timm_kwargs") or {}),
        )
        if teacher.dim != int(cfg["dim"]):
            raise ValueError(f"{cfg_file}: stored dim {cfg['dim']} but the rebuilt model outputs {teacher.dim}")
        return teacher

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Save with :func:`save_teacher` (needs a teacher built by :meth:`from_timm`)."""
        if self.arch is None:
            raise ValueError(f"teacher {self.name!r} was not built from a timm arch; use save_teacher(...) directly")
        return save_teacher(self.module, self.arch, self.timm_kwargs, self.input_spec, self.name, out_dir)


def save_teacher(
    module: nn.Module | ModuleTeacher,
    arch: str,
    timm_kwargs: Mapping[str, Any] | None,
    input_spec: InputSpec,
    name: str,
    out_dir: str | os.PathLike,
) -> Path:
    """Save a timm expert as ``out_dir/model.safetensors`` + ``out_dir/teacher.json`` (atomic writes).

    This is how fitted experts are stored; :meth:`ModuleTeacher.from_checkpoint_dir` reads it
    back. ``module`` must be ``timm.create_model(arch, num_classes=0, **timm_kwargs)`` (or
    a :class:`ModuleTeacher` wrapping one); the module's train/eval modes and
    ``requires_grad`` flags are left as they were.

    Args:
        module: the network (or a ModuleTeacher).
        arch: its timm architecture name.
        timm_kwargs: JSON-serialisable kwargs it was created with (tuples become lists).
        input_spec: its input contract.
        name: teacher name.
        out_dir: directory (created).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        TypeError: ``timm_kwargs`` is not JSON-serialisable.
    """
    from safetensors.torch import save_file

    if isinstance(module, ModuleTeacher):
        module = module.module
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dim = _infer_dim(module, input_spec, f"teacher {name!r}")
    cfg = {
        "format": _TEACHER_FORMAT,
        "version": 1,
        "name": str(name),
        "arch": str(arch),
        "timm_kwargs": dict(timm_kwargs or {}),
        "input_spec": input_spec.to_dict(),
        "dim": dim,
    }
    try:  # fail before writing anything
        json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"teacher {name!r}: timm_kwargs must be JSON-serialisable: {exc}") from exc
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": _TEACHER_FORMAT, "arch": str(arch)})
    atomic_write_json(out_dir / "teacher.json", cfg)
    return out_dir

