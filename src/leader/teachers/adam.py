"""Adam anatomy experts (JLiangLab) from their published checkpoint files.

The paper uses Adam as the anatomy expert ``T_ξA`` (§4). Two generations exist:

==========  ======================  =====  ==========================
version     network (timm name)     dim    input
==========  ======================  =====  ==========================
``v1``      ResNet-50 (resnet50)    2048   ImageNet RGB, 224²
``v2``      ConvNeXt-B (convnext_base) 1024   ImageNet RGB, 224²
==========  ======================  =====  ==========================

Published checkpoints are self-supervised training checkpoints: a dict holding one or more of
``teacher`` / ``student`` / ``model`` / ``state_dict`` (possibly nested), whose keys carry
``module.`` (DDP) and/or ``backbone.`` prefixes, next to projection / prediction heads and
classifiers that the expert does not use. :func:`load_adam` picks the **teacher** network by
default (the EMA network these methods release), strips the prefixes, drops the heads,
detects the version from the key names, and loads the backbone strictly: anything else that
does not fit is reported by name (:func:`leader.models.load_state_dict_checked`). ConvNeXt
weights saved with the original (facebookresearch) ConvNeXt code are renamed to timm's
layout. The file is read without running any pickle (:func:`load_checkpoint_object`).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..models.checkpoint import load_state_dict_checked
from .base import IMAGENET_SPEC, InputSpec
from .weights import find_tensor_dict, load_checkpoint_object
from .module import ModuleTeacher

__all__ = ["ADAM_VERSIONS", "AdamWeights", "read_adam_state_dict", "load_adam", "build_timm_with_weights"]

log = logging.getLogger(__name__)

#: version -> (timm architecture, embedding width)
ADAM_VERSIONS: dict[str, tuple[str, int]] = {"v1": ("resnet50", 2048), "v2": ("convnext_base", 1024)}

#: Wrapper prefixes stripped from every key (DDP, SSL frameworks).
WRAPPER_PREFIXES = ("module.", "backbone.")
#: Prefixes of heads (classifiers, SSL projectors / predictors) dropped when the backbone has no such key.
HEAD_PREFIXES = (
    "fc.", "head.", "heads.", "classifier.", "projector.", "predictor.", "prototypes.", "last_layer.",
    "proj_head.", "projection_head.", "prediction_head.", "mlp_head.", "pred_head.", "decoder.",
)
#: Which checkpoint entry holds the wanted network, in order of preference.
_PREFER = {
    "teacher": ("teacher", "state_dict", "model", "teacher_model", "model_ema", "student"),
    "student": ("student", "state_dict", "model"),
}


@dataclass
class AdamWeights:
    """A backbone state dict extracted from an Adam checkpoint, and how it was found."""

    state_dict: dict[str, torch.Tensor]
    version: str
    arch: str
    dim: int
    entry: str  # which checkpoint entry was used, e.g. "teacher"
    dropped: list[str] = field(default_factory=list)  # head keys that were dropped


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def _detect_version(keys: list[str]) -> str | None:
    ks = set(keys)
    if any(k.startswith("layer4.") for k in ks) and "conv1.weight" in ks:
        return "v1"
    if any(k.startswith(("stages.", "downsample_layers.", "stem.")) for k in ks):
        return "v2"
    return None


def _is_fb_convnext(sd: Mapping[str, torch.Tensor]) -> bool:
    return "downsample_layers.0.0.weight" in sd and "stem.0.weight" not in sd


def read_adam_state_dict(
    path: str | os.PathLike,
    which: str = "teacher",
    version: str = "auto",
) -> AdamWeights:
    """Extract the backbone weights of an Adam checkpoint (no network is built).

    Args:
        path: the checkpoint (``.pth`` / ``.pt`` / ``.tar`` read with
            ``torch.load(weights_only=True)``, or ``.safetensors``).
        which: ``"teacher"`` (default; falls back to ``state_dict`` / ``model`` and, with a
            warning, ``student`` when the file holds no teacher) or ``"student"``.
        version: ``"v1"`` (ResNet-50), ``"v2"`` (ConvNeXt-B) or ``"auto"`` (from the key names).

    Returns:
        :class:`AdamWeights` with timm-named keys (``module.`` / ``backbone.`` stripped; when
        ``backbone.``-prefixed keys exist only those are kept; heads dropped later against
        the network, see :func:`load_adam`).

    Raises:
        UnsafeCheckpointError: the file needs full unpickling (see :mod:`.exported`).
        ValueError: unknown ``which`` / ``version``, no state dict found, an undetectable
            version, or a version that contradicts the key names.
    """
    if which not in _PREFER:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    if version not in ("auto", *ADAM_VERSIONS):
        raise ValueError(f"version must be 'auto', 'v1' or 'v2', got {version!r}")
    path = Path(path)
    obj = load_checkpoint_object(path)
    if isinstance(obj, Mapping) and which == "student" and "student" not in obj and "teacher" in obj:
        raise ValueError(f"{path}: has a 'teacher' but no 'student' entry; top-level keys: {sorted(map(str, obj))}")
    raw, entry = find_tensor_dict(obj, _PREFER[which], where=str(path))
    if which == "teacher" and entry.split(".")[-1] == "student":
        log.warning("%s: no teacher network in the checkpoint; using its student weights", path)

    # DDP 'module.' first; if an SSL 'backbone.' scope exists, everything outside it is heads
    sd: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    scoped = [k for k in raw if _strip_module(k).startswith("backbone.")]
    for k, v in raw.items():
        if scoped and not _strip_module(k).startswith("backbone."):
            dropped.append(k)
            continue
        sd[_strip_wrappers(k)] = v
    detected = _detect_version(list(sd))
    if version == "auto":
        if detected is None:
            raise ValueError(
                f"{path}: cannot tell Adam v1 (ResNet-50) from v2 (ConvNeXt-B) from the keys "
                f"(entry {entry!r}, first keys {list(sd)[:8]}); pass version='v1' or 'v2'"
            )
        version = detected
    elif detected is not None and detected != version:
        raise ValueError(
            f"{path}: version={version!r} ({ADAM_VERSIONS[version][0]}) was requested but the keys look like "
            f"{detected} ({ADAM_VERSIONS[detected][0]})"
        )
    arch, dim = ADAM_VERSIONS[version]
    if arch.startswith("convnext") and _is_fb_convnext(sd):
        sd = _fb_convnext_to_timm(sd, dropped, arch)
    return AdamWeights(sd, version, arch, dim, entry, dropped)


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _fb_convnext_to_timm(sd: dict[str, torch.Tensor], dropped: list[str], arch: str) -> dict[str, torch.Tensor]:
    """Rename original ConvNeXt keys to timm's (classifier ``head.*`` dropped, final ``norm`` -> ``head.norm``)."""
    import timm
    from timm.models.convnext import checkpoint_filter_fn

    keep = {}
    for k, v in sd.items():
        if k.startswith("head."):
            dropped.append(k)
        else:
            keep[k] = v
    with torch.device("meta"):  # the filter reads target shapes from the model; no weights needed
        target = timm.create_model(arch, pretrained=False, num_classes=0)
    return checkpoint_filter_fn(keep, target)


def build_timm_with_weights(
    arch: str, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "weights", **timm_kwargs: Any
) -> tuple[nn.Module, list[str], list[str]]:
    """``timm.create_model(arch, pretrained=False, num_classes=0, **kw)`` loaded with ``state_dict``.

    Head keys (:data:`HEAD_PREFIXES`) the network does not have are dropped first; everything
    else goes through :func:`~leader.models.load_state_dict_checked` (missing / unexpected /
    mis-shaped keys named; partial loads refused unless ``strict=False``).

    For speed the network is created on the ``meta`` device (no random initialisation of
    e.g. ConvNeXt-B's 89 M parameters) and the checked tensors are assigned, when the network
    has no non-persistent buffers and nothing is missing; otherwise it is created normally.

    Returns:
        ``(module in eval mode, dropped head keys, missing keys)``.
    """
    import timm

    kwargs = {"num_classes": 0, **timm_kwargs}
    with torch.device("meta"):
        meta = timm.create_model(arch, pretrained=False, **kwargs)
    own = meta.state_dict()
    dropped = [k for k in state_dict if k not in own and k.startswith(HEAD_PREFIXES)]
    sd = {k: v for k, v in state_dict.items() if k not in dropped}
    with warnings.catch_warnings():  # the check copies into meta tensors: a no-op torch warns about
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        missing, _unexpected = load_state_dict_checked(meta, sd, strict=strict, source=source)
    n_buffers = sum(1 for _ in meta.buffers())
    persistent = sum(1 for k in own if k in dict(meta.named_buffers()))
    if not missing and n_buffers == persistent:
        cast = {k: (v.to(own[k].dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items() if k in own}
        meta.load_state_dict(cast, strict=True, assign=True)
        model = meta
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        load_state_dict_checked(model, sd, strict=strict, source=source)
    return model.eval(), dropped, missing


def load_adam(
    path: str | os.PathLike,
    name: str = "anatomy",
    *,
    version: str = "auto",
    which: str = "teacher",
    strict: bool = True,
    input_spec: InputSpec | None = None,
) -> ModuleTeacher:
    """An Adam expert as a frozen :class:`ModuleTeacher` (``dim`` 2048 for v1, 1024 for v2).

    Args:
        path: the published checkpoint file.
        name: teacher / head name.
        version: ``"auto"``, ``"v1"`` or ``"v2"``.
        which: ``"teacher"`` (default) or ``"student"`` network of the checkpoint.
        strict: refuse missing / unexpected keys (default); ``False`` loads what fits with a
            warning naming the rest. Shape mismatches are always refused.
        input_spec: override the input contract (default :data:`IMAGENET_SPEC`: 224², RGB
            replicated from the grayscale image, ImageNet mean/std).

    Returns:
        The teacher; ``teacher.arch`` is the timm name, so ``teacher.save(dir)`` writes a
        LeADER teacher folder (``teacher.json`` + ``model.safetensors``).

    Raises:
        UnsafeCheckpointError, ValueError: see :func:`read_adam_state_dict` and
            :func:`build_timm_with_weights`.
    """
    w = read_adam_state_dict(path, which=which, version=version)
    module, dropped, _ = build_timm_with_weights(
        w.arch, w.state_dict, strict=strict, source=f"{path} [{w.entry}] -> Adam {w.version} ({w.arch})"
    )
    w.dropped.extend(dropped)
    if w.dropped:
        log.info("%s: dropped %d head keys (e.g. %s)", path, len(w.dropped), w.dropped[:3])
    teacher = ModuleTeacher(name, module, input_spec if input_spec is not None else IMAGENET_SPEC, dim=w.dim)
    teacher.arch = w.arch
    teacher.timm_kwargs = {}
    teacher.source = str(path)
    teacher.adam = {"version": w.version, "entry": w.entry, "dropped": list(w.dropped)}
    return teacher
