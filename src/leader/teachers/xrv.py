"""torchxrayvision models as teachers, from a local weights file.

torchxrayvision's classifiers take **one channel with values in [-1024, 1024]** at a fixed
resolution; fed anything else they give near-identical outputs for every image without
failing (field report BR-05). The teachers built here therefore carry
:data:`~leader.teachers.base.XRV_SPEC` (224², 1 channel, ``[0, 1] -> [-1024, 1024]``, no
mean/std; 512² for the ResNet-50), and :meth:`Teacher.embed` converts the project's
``[0, 1]`` images automatically.

======================  ========================================  =====  ======
``arch``                torchxrayvision weights                    dim    input
======================  ========================================  =====  ======
``densenet121``         ``densenet121-res224-*`` (all, nih, ...)   1024   224²
``resnet50``            ``resnet50-res512-all``                    2048   512²
======================  ========================================  =====  ======

The embedding is torchxrayvision's ``features2`` (DenseNet: ReLU + global average pool of
the last feature map) / ``features`` (ResNet: global average pool): the classifier and the
``op_threshs`` calibration are not used and are dropped from the weights.

The network is built with torchvision's DenseNet-121 / ResNet-50 with a 1-channel stem,
which has exactly torchxrayvision's parameter names and computation (a test checks the
features against ``xrv.models.DenseNet.features2``), so torchxrayvision itself is not needed
at run time. Its published ``.pt`` files are whole pickled modules: they are refused (they
would need full unpickling) with instructions to convert them once to safetensors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import load_state_dict_checked
from .base import XRV_SPEC, InputSpec
from .weights import find_tensor_dict, load_checkpoint_object
from .module import ModuleTeacher

__all__ = ["XRV_ARCHS", "XrvDenseNetFeatures", "XrvResNetFeatures", "build_xrv_features", "load_xrv"]

#: arch -> (embedding width, input size)
XRV_ARCHS: dict[str, tuple[int, int]] = {"densenet121": (1024, 224), "resnet50": (2048, 512)}

_DROP = ("classifier.", "fc.", "op_threshs")
_OLD_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class XrvDenseNetFeatures(nn.Module):
    """torchxrayvision's DenseNet-121 trunk: ``[B, 1, 224, 224]`` in ``[-1024, 1024]`` -> ``[B, 1024]``."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.densenet121(weights=None)
        net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.features = net.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(out, (1, 1)).flatten(1)


class XrvResNetFeatures(nn.Module):
    """torchxrayvision's ResNet-50 trunk: ``[B, 1, 512, 512]`` in ``[-1024, 1024]`` -> ``[B, 2048]``."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_xrv_features(arch: str = "densenet121") -> nn.Module:
    """The feature network for ``arch`` (random weights)."""
    if arch == "densenet121":
        return XrvDenseNetFeatures()
    if arch == "resnet50":
        return XrvResNetFeatures()
    raise ValueError(f"unknown torchxrayvision arch {arch!r}; expected one of {sorted(XRV_ARCHS)}")


def _normalise_keys(sd: Mapping[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if arch == "resnet50" and k.startswith("model."):  # xrv.models.ResNet wraps torchvision as .model
            k = k[len("model."):]
        if k.startswith(_DROP):
            dropped.append(k)
            continue
        m = _OLD_DENSE.match(k)  # pre-0.4 torchvision names: denselayer1.norm.1.weight
        if m:
            k = m.group(1) + m.group(2)
        if arch == "resnet50":
            k = "net." + k
        out[k] = v
    return out, dropped


def load_xrv(
    name: str,
    path: str | os.PathLike,
    *,
    arch: str = "densenet121",
    strict: bool = True,
    input_spec: InputSpec | None = None,
) -> ModuleTeacher:
    """A torchxrayvision model as a frozen teacher, from a local weights file.

    Args:
        name: teacher / head name.
        path: ``.safetensors`` or a tensor-only torch file with the model's state dict
            (``torch.save(model.state_dict(), f)``; a ``{"state_dict": ...}`` /
            ``{"model": ...}`` wrapper and ``module.`` prefixes are accepted).
        arch: ``"densenet121"`` (default, 1024-d) or ``"resnet50"`` (2048-d, 512²).
        strict: refuse missing / unexpected keys (default).
        input_spec: override the contract (default :data:`XRV_SPEC`, 512² for ``resnet50``).

    Raises:
        UnsafeCheckpointError: a pickled module (torchxrayvision's own download format);
            the message explains the one-off conversion.
        ValueError: weights that do not fit (named), an unknown ``arch``.
    """
    if arch not in XRV_ARCHS:
        raise ValueError(f"unknown torchxrayvision arch {arch!r}; expected one of {sorted(XRV_ARCHS)}")
    path = Path(path)
    raw, entry = find_tensor_dict(load_checkpoint_object(path), ("state_dict", "model"), where=str(path))
    sd, dropped = _normalise_keys(raw, arch)
    dim, size = XRV_ARCHS[arch]
    module = build_xrv_features(arch)
    load_state_dict_checked(module, sd, strict=strict, source=f"{path} -> torchxrayvision {arch}")
    spec = input_spec if input_spec is not None else InputSpec(
        size=size, channels=1, value_range=XRV_SPEC.value_range, mean=None, std=None
    )
    teacher = ModuleTeacher(name, module.eval(), spec, dim=dim)
    teacher.source = str(path)
    teacher.xrv = {"arch": arch, "entry": entry, "dropped": dropped}
    return teacher
