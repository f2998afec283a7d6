"""Teacher protocol and per-teacher input contracts.

A teacher ``T_ξ`` is a *frozen* expert (paper §3, Algorithm 1: "Frozen Parameters: Disease
expert T_ξD, Anatomy expert T_ξA") that maps an image or patch to an embedding
``E = T_ξ(I)``, the distillation target of one student head.

Every teacher receives the *same* tensor the student sees: float32 ``[B, 1, H, W]`` in
``[0, 1]`` (air dark), i.e. the project's image contract after the paired augmentation. Each
teacher declares its own :class:`InputSpec` (size, channels, value range, normalisation) and
converts internally. A batch that is not in ``[0, 1]`` raises :class:`TeacherInputError`
before the forward pass (field report BR-05: a torchxrayvision model fed the wrong range gives
the same output for every image, and nothing crashes).
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import TeacherInputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputSpec",
    "IMAGENET_SPEC",
    "XRV_SPEC",
    "Teacher",
    "TeacherInputError",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Tolerance on the ``[0, 1]`` input range check (interpolation / jitter round-off).
RANGE_TOLERANCE = 1e-3


def _tuple_or_none(value: Any, field: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value),)
    try:
        return tuple(float(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"InputSpec.{field} must be a sequence of floats or None, got {value!r}") from exc


@dataclass(frozen=True)
class InputSpec:
    """What a teacher network expects, and how to convert the project's images to it.

    Attributes:
        size: square input side in pixels (e.g. 224).
        channels: input channels (3 for ImageNet-style models, 1 for torchxrayvision).
        value_range: ``(lo, hi)``: ``[0, 1]`` is mapped linearly to ``[lo, hi]`` before
            normalisation (torchxrayvision: ``(-1024, 1024)``).
        mean: per-channel mean subtracted after the range mapping (length 1 or ``channels``),
            or ``None`` for none.
        std: per-channel std divided by after the mean, or ``None`` for none.

    The default is the ImageNet convention: 224², 3 channels, ``[0, 1]``, ImageNet mean/std.
    Lists are stored as tuples so that specs are hashable and compare by value.
    """

    size: int = 224
    channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"InputSpec.size must be a positive int, got {self.size!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"InputSpec.channels must be a positive int, got {self.channels!r}")
        vr = _tuple_or_none(self.value_range, "value_range")
        if vr is None or len(vr) != 2 or not vr[0] < vr[1]:
            raise ValueError(f"InputSpec.value_range must be (lo, hi) with lo < hi, got {self.value_range!r}")
        object.__setattr__(self, "value_range", vr)
        for name in ("mean", "std"):
            val = _tuple_or_none(getattr(self, name), name)
            if val is not None and len(val) not in (1, self.channels):
                allowed = "1 value" if self.channels == 1 else f"1 or {self.channels} values"
                raise ValueError(
                    f"InputSpec.{name} has {len(val)} values but channels={self.channels}; give {allowed} or None"
                )
            object.__setattr__(self, name, val)
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError(f"InputSpec.std must be non-zero, got {self.std!r}")

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists)."""
        return {
            "size": self.size,
            "channels": self.channels,
            "value_range": list(self.value_range),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"InputSpec: unknown keys {sorted(extra)}; expected {sorted(known)}")
        return cls(**dict(data))

    # -- contract ---------------------------------------------------------------------
    def check(self, x: Any, teacher: str = "teacher") -> None:
        """Validate the project's image contract *before* conversion.

        Args:
            x: the batch, expected float ``[B, 1, H, W]`` with values in ``[0, 1]`` (±1e-3).
            teacher: teacher name for the message.

        Raises:
            TeacherInputError: not a floating tensor, not 4-D, not 1 channel, empty, NaN, or
                values outside ``[0, 1]``; the message names the teacher and the observed
                min/max (field report BR-05).
        """
        if not isinstance(x, torch.Tensor):
            raise TeacherInputError(f"teacher {teacher!r}: expected a torch.Tensor batch, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 1:
            raise TeacherInputError(
                f"teacher {teacher!r}: expected images of shape [B, 1, H, W] (grayscale, before the "
                f"teacher's own conversion), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TeacherInputError(f"teacher {teacher!r}: expected a float tensor in [0, 1], got dtype {x.dtype}")
        if x.numel() == 0:
            raise TeacherInputError(f"teacher {teacher!r}: empty batch {tuple(x.shape)}")
        mn, mx = torch.aminmax(x.detach())
        mn, mx = float(mn), float(mx)
        if mn != mn or mx != mx:  # NaN
            raise TeacherInputError(f"teacher {teacher!r}: input contains NaN")
        if mn < -RANGE_TOLERANCE or mx > 1.0 + RANGE_TOLERANCE:
            raise TeacherInputError(
                f"teacher {teacher!r}: input must be in [0, 1] (the reader/transform contract); "
                f"observed min={mn:.6g}, max={mx:.6g}. Do not normalise for the teacher yourself: "
                f"it converts [0, 1] to its own range {self.value_range} and normalisation "
                f"(mean={self.mean}, std={self.std}) internally (field report BR-05)."
            )

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """Convert project images to this teacher's input.

        Steps: clamp to ``[0, 1]`` (removes the tolerated round-off) → resize to
        ``size × size`` (bilinear, antialiased, only if needed) → replicate the channel to
        ``channels`` → map ``[0, 1]`` linearly to ``value_range`` → ``(x - mean) / std``.

        Args:
            x: float ``[B, 1, H, W]`` in ``[0, 1]`` (not validated here; see :meth:`check`).

        Returns:
            float32 ``[B, channels, size, size]`` on ``x``'s device.
        """
        x = x.float().clamp(0.0, 1.0)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1)
        lo, hi = self.value_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.contiguous()


#: ImageNet-style input (timm defaults).
IMAGENET_SPEC = InputSpec()
#: torchxrayvision models: 224², 1 channel, values in [-1024, 1024], no mean/std.
XRV_SPEC = InputSpec(size=224, channels=1, value_range=(-1024.0, 1024.0), mean=None, std=None)


class Teacher(abc.ABC):
    """A frozen expert ``T_ξ`` producing distillation targets ``E = T_ξ(I)`` (paper §3.1–3.2).

    Attributes:
        name: teacher / head name (e.g. ``"disease"``, ``"anatomy"``).
        dim: embedding width ``d`` (the matching student head outputs ``[B, d]``).
        input_spec: the network's :class:`InputSpec`.

    Teachers are always frozen: :meth:`train` is a no-op that keeps the network in eval mode,
    parameters have ``requires_grad=False``, :meth:`embed` runs under ``torch.no_grad()``, so
    BatchNorm running statistics never change. A teacher is deliberately *not* an
    ``nn.Module``: it never ends up in the student's ``state_dict``, optimizer or DDP wrapper.

    Subclasses implement :meth:`_forward` (or override :meth:`embed`).
    """

    name: str
    dim: int
    input_spec: InputSpec = IMAGENET_SPEC

    _checked_constant = False

    # -- public API -------------------------------------------------------------------
    def embed(self, images: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Embed a batch: ``E = T_ξ(I)``.

        Args:
            images: float32 ``[B, 1, H, W]`` in ``[0, 1]``, the same (augmented) view the
                student sees; any ``H, W`` (resized to ``input_spec.size``).
            ids: optional sample / patch ids (``len == B``); required by store-backed teachers.

        Returns:
            float32 ``[B, dim]`` on ``images``' device, with no autograd history.

        Raises:
            TeacherInputError: the batch violates the ``[0, 1]`` / ``[B, 1, H, W]`` contract.
            ValueError: ``len(ids) != B``, or the network output is not ``[B, dim]``.
            RuntimeError: the network produced non-finite values.
        """
        self.input_spec.check(images, self.name)
        if ids is not None and len(ids) != images.shape[0]:
            raise ValueError(f"teacher {self.name!r}: {len(ids)} ids for a batch of {images.shape[0]} images")
        x = self.input_spec.convert(images)
        with torch.no_grad():
            out = self._forward(x, ids)
        out = self._check_output(out, images.shape[0])
        out = out.to(device=images.device, dtype=torch.float32)
        if not self._checked_constant:
            self._warn_if_constant(images, out)
        return out

    def __call__(self, images: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Alias of :meth:`embed`."""
        return self.embed(images, ids)

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor, ids: Sequence[str] | None) -> torch.Tensor:
        """Run the network on converted input ``x [B, C, size, size]``; return ``[B, dim]``."""

    @property
    def frozen(self) -> bool:
        """Always ``True``."""
        return True

    def train(self, mode: bool = True) -> "Teacher":
        """No-op kept for ``nn.Module``-like call sites: teachers stay in eval mode."""
        self._enforce_eval()
        return self

    def eval(self) -> "Teacher":
        """Keep the network in eval mode (idempotent)."""
        self._enforce_eval()
        return self

    def to(self, device: torch.device | str) -> "Teacher":
        """Move the network (if any) to ``device``; returns ``self``."""
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The frozen parameters (none for store-backed teachers)."""
        return iter(())

    def _enforce_eval(self) -> None:
        """Put any wrapped network back in eval mode."""

    # -- helpers --------------------------------------------------------------------------
    def _check_output(self, out: Any, batch: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"teacher {self.name!r}: network returned {type(out).__name__}, expected a tensor")
        if out.dim() != 2 or out.shape[0] != batch or out.shape[1] != self.dim:
            raise ValueError(
                f"teacher {self.name!r}: expected output [B, dim] = [{batch}, {self.dim}], got {tuple(out.shape)}"
            )
        if not torch.isfinite(out).all():
            raise RuntimeError(f"teacher {self.name!r}: non-finite values in the embedding")
        return out

    def _warn_if_constant(self, images: torch.Tensor, out: torch.Tensor) -> None:
        """On the first batch with >= 2 distinct images, warn if all embeddings are equal (BR-05)."""
        if images.shape[0] < 2:
            return
        self._checked_constant = True
        flat_in = images.detach().flatten(1)
        if torch.equal(flat_in.amax(0), flat_in.amin(0)):
            return  # identical images: identical outputs are expected
        spread = (out.amax(0) - out.amin(0)).abs().max().item()
        if spread <= 1e-6:
            warnings.warn(
                f"teacher {self.name!r}: identical embeddings for different images in the first batch; "
                f"check its input spec {self.input_spec} (field report BR-05)",
                RuntimeWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, input_spec={self.input_spec})"
