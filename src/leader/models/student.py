"""The LeADER student: a timm backbone ``S_θ`` plus one 2-layer MLP head per teacher.

Paper §3 / Fig. 2: the student maps an image or patch ``I`` to the entangled representation
``E_DA = S_θ(I)``; each head maps it to a distilled representation, ``E'_D = h_θD(E_DA)`` and
``E'_A = h_θA(E_DA)``, trained to match the frozen teachers' ``E_D`` and ``E_A``. §4: Swin-B
backbone, "two-layers MLP heads". More than two teachers work the same way: one head each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from .checkpoint import load_state_dict_checked, read_model_config, save_model

__all__ = ["MLPHead", "LeaderModel", "DEFAULT_HEAD_DIMS", "check_teacher_dims"]

#: Paper defaults: CXR Foundation v1 embeddings (1376-d, disease expert) and Adam v1
#: (ResNet-50, 2048-d, anatomy expert). Use :meth:`LeaderModel.for_teachers` for real teachers.
DEFAULT_HEAD_DIMS = {"disease": 1376, "anatomy": 2048}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_RESERVED = {"e_da"}


class MLPHead(nn.Module):
    """2-layer MLP head ``h_θ``: Linear → GELU → Linear (paper §4), in its teacher's space.

    The MLP predicts the teacher embedding *normalised* by fixed per-dimension statistics
    (buffers ``target_mean`` / ``target_scale``; identity by default) and the head returns it
    de-normalised, ``mlp(x) * target_scale + target_mean``, so ``E'`` is always in the
    teacher's space. The trainer sets the statistics from the training data when the
    teacher's ``target_norm`` asks for it (``center``, ``standardize``, ``global``) and computes the loss
    in the normalised space (:meth:`normalise`): every teacher dimension — and every teacher —
    then weighs the same in the loss, and a large mean vector no longer dominates it.

    Args:
        in_dim: input width (the backbone's ``E_DA`` width).
        out_dim: output width (the teacher's embedding width).
        hidden_dim: hidden width; ``None`` means ``in_dim``.

    Shapes: float ``[B, in_dim]`` → ``[B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        for label, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if value is not None and (isinstance(value, bool) or int(value) != value or int(value) <= 0):
                raise ValueError(f"MLPHead {label} must be a positive int, got {value!r}")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.hidden_dim = int(hidden_dim) if hidden_dim is not None else self.in_dim
        self.fc1 = nn.Linear(self.in_dim, self.hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.hidden_dim, self.out_dim)
        self.register_buffer("target_mean", torch.zeros(self.out_dim))
        self.register_buffer("target_scale", torch.ones(self.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) * self.target_scale + self.target_mean

    def normalise(self, e: torch.Tensor) -> torch.Tensor:
        """A teacher-space embedding ``[B, out_dim]`` in the head's normalised space."""
        return (e - self.target_mean) / self.target_scale

    def set_target_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Fix the normalisation: float ``[out_dim]`` mean and positive scale (teacher units).

        Raises:
            ValueError: wrong shapes, or a scale that is not finite and positive.
        """
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.float32).expand(self.out_dim).reshape(-1)
        if mean.numel() != self.out_dim or scale.numel() != self.out_dim:
            raise ValueError(f"target stats need {self.out_dim} values, got mean {mean.numel()}, scale {scale.numel()}")
        if not torch.isfinite(mean).all() or not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("target stats must be finite with a positive scale")
        self.target_mean.copy_(mean.to(self.target_mean.device))
        self.target_scale.copy_(scale.to(self.target_scale.device))

    @property
    def normalised(self) -> bool:
        """Whether target statistics other than the identity are set."""
        return bool((self.target_mean != 0).any() or (self.target_scale != 1).any())

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"


def _teacher_dim(teacher: Any) -> int:
    if isinstance(teacher, bool):
        raise TypeError(f"expected a Teacher or an int width, got {teacher!r}")
    if isinstance(teacher, int):
        return teacher
    dim = getattr(teacher, "dim", None)
    if dim is None:
        raise TypeError(f"expected a Teacher (with .dim) or an int width, got {type(teacher).__name__}")
    return int(dim)


def check_teacher_dims(head_dims: Mapping[str, int], teachers: Mapping[str, Any]) -> None:
    """Check that every teacher has a head of exactly its width (field report BR-24).

    Args:
        head_dims: ``{head: out_dim}`` of a student.
        teachers: ``{head: Teacher}`` (or ``{head: width}``).

    Raises:
        ValueError: a teacher has no head, or a head's width differs from its teacher's
            (the message names both widths).
    """
    for name, teacher in teachers.items():
        dim = _teacher_dim(teacher)
        if name not in head_dims:
            raise ValueError(f"teacher {name!r} ({dim}-d) has no student head; heads: {sorted(head_dims)}")
        if int(head_dims[name]) != dim:
            raise ValueError(
                f"head {name!r} outputs {head_dims[name]}-d embeddings but teacher {name!r} gives {dim}-d; "
                "each head must output its teacher's width (use LeaderModel.for_teachers)"
            )


def _create_backbone(
    name: str, img_size: int, in_chans: int, kwargs: Mapping[str, Any], pretrained_file: str | os.PathLike | None
) -> tuple[nn.Module, bool]:
    """Create the timm backbone; returns ``(model, img_size_was_passed)``."""
    import timm

    kw: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, **dict(kwargs)}
    if pretrained_file is not None:
        pretrained_file = Path(pretrained_file)
        if not pretrained_file.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {pretrained_file}")
        kw.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
    else:
        kw["pretrained"] = False
    if "img_size" in kw:
        return timm.create_model(name, **kw), True
    try:
        return timm.create_model(name, img_size=img_size, **kw), True
    except TypeError as exc:  # CNNs (ResNet, ConvNeXt) take any input size: no img_size argument
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **kw), False


class LeaderModel(nn.Module):
    """Student ``S_θ`` (timm backbone) with one :class:`MLPHead` per teacher (paper Fig. 2).

    Args:
        backbone: timm model name (paper: ``swin_base_patch4_window7_224``).
        head_dims: ``{head: teacher width}``, e.g. ``{"disease": 1376, "anatomy": 2048}``
            (default :data:`DEFAULT_HEAD_DIMS`; taken from ``teachers`` when given).
        img_size: the square input side the model is built for; passed to timm as
            ``img_size`` when the architecture takes it (Swin, ViT: fixed at creation, field
            report BR-19) and enforced for every architecture in :meth:`forward`, so that the
            transform and the model read the same config value.
        hidden_dim: hidden width of the heads (``None``: the backbone width).
        backbone_kwargs: extra ``timm.create_model`` kwargs (e.g. ``embed_dim``, ``depths``,
            ``num_heads`` for a tiny Swin; ``drop_path_rate``).
        pretrained_file: local backbone weights (timm ``pretrained_cfg_overlay=dict(file=...)``);
            never downloaded. Not part of :meth:`config` (checkpoints carry the weights).
        in_chans: backbone input channels; the grayscale input is replicated to them.
        teachers: optional ``{head: Teacher}``; widths are checked at construction
            (``ValueError`` naming both widths on mismatch, BR-24).

    Attributes:
        backbone: the timm model (``num_classes=0``: pooled features).
        heads: ``nn.ModuleDict`` of heads.
        e_da_dim: width ``D`` of ``E_DA`` (``backbone.num_features``; 1024 for Swin-B).

    Raises:
        ValueError: bad head names/widths, or head/teacher width mismatch.
        FileNotFoundError: ``pretrained_file`` does not exist.
    """

    def __init__(
        self,
        backbone: str = "swin_base_patch4_window7_224",
        head_dims: Mapping[str, int] | None = None,
        img_size: int = 224,
        hidden_dim: int | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_file: str | os.PathLike | None = None,
        in_chans: int = 3,
        teachers: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if head_dims is None:
            head_dims = {k: _teacher_dim(t) for k, t in teachers.items()} if teachers else dict(DEFAULT_HEAD_DIMS)
        head_dims = dict(head_dims)
        for name, dim in head_dims.items():
            if not isinstance(name, str) or not name or "." in name or name in _RESERVED:
                raise ValueError(f"invalid head name {name!r} (non-empty, no '.', not {sorted(_RESERVED)})")
            if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
                raise ValueError(f"head {name!r}: width must be a positive int, got {dim!r}")
        if teachers is not None:
            check_teacher_dims(head_dims, teachers)
        if isinstance(img_size, bool) or int(img_size) != img_size or int(img_size) <= 0:
            raise ValueError(f"img_size must be a positive int, got {img_size!r}")
        self.backbone_name = str(backbone)
        self.img_size = int(img_size)
        self.hidden_dim = None if hidden_dim is None else int(hidden_dim)
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.in_chans = int(in_chans)
        self.backbone, self._native_img_size = _create_backbone(
            self.backbone_name, self.img_size, self.in_chans, self.backbone_kwargs, pretrained_file
        )
        self.e_da_dim = int(self.backbone.num_features)
        self.heads = nn.ModuleDict(
            {name: MLPHead(self.e_da_dim, int(dim), self.hidden_dim) for name, dim in head_dims.items()}
        )
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean") or _IMAGENET_MEAN)
        std = tuple(cfg.get("std") or _IMAGENET_STD)
        if len(mean) != self.in_chans:
            mean = (sum(mean) / len(mean),) * self.in_chans
            std = (sum(std) / len(std),) * self.in_chans
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def for_teachers(cls, teachers: Mapping[str, Any], **kwargs: Any) -> "LeaderModel":
        """Build a student with one head per teacher, each of that teacher's width (BR-24).

        Args:
            teachers: ``{head name: Teacher}`` (the mapping key names the head).
            **kwargs: other :class:`LeaderModel` arguments (not ``head_dims``).
        """
        if "head_dims" in kwargs:
            raise TypeError("for_teachers derives head_dims from the teachers; do not pass head_dims")
        if not teachers:
            raise ValueError("for_teachers needs at least one teacher")
        return cls(head_dims={k: _teacher_dim(t) for k, t in teachers.items()}, teachers=teachers, **kwargs)

    def check_teacher_dims(self, teachers: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming both widths if a head does not match its teacher's ``dim``."""
        check_teacher_dims(self.head_dims, teachers)

    @property
    def head_dims(self) -> dict[str, int]:
        """``{head: out_dim}``."""
        return {name: head.out_dim for name, head in self.heads.items()}

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.keys())

    def config(self) -> dict:
        """JSON-ready dict that rebuilds this architecture via :meth:`from_config`."""
        return {
            "backbone": self.backbone_name,
            "head_dims": self.head_dims,
            "img_size": self.img_size,
            "hidden_dim": self.hidden_dim,
            "backbone_kwargs": dict(self.backbone_kwargs),
            "in_chans": self.in_chans,
            "e_da_dim": self.e_da_dim,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LeaderModel":
        """Rebuild an (untrained) model from :meth:`config` output.

        Raises:
            ValueError: unknown keys, or the rebuilt ``e_da_dim`` differs from the recorded one.
        """
        cfg = dict(config)
        e_da_dim = cfg.pop("e_da_dim", None)
        known = {"backbone", "head_dims", "img_size", "hidden_dim", "backbone_kwargs", "in_chans"}
        extra = set(cfg) - known
        if extra:
            raise ValueError(f"unknown LeaderModel config keys {sorted(extra)}")
        model = cls(**cfg)
        if e_da_dim is not None and int(e_da_dim) != model.e_da_dim:
            raise ValueError(f"config records e_da_dim={e_da_dim} but the rebuilt backbone gives {model.e_da_dim}")
        return model

    # ------------------------------------------------------------------ forward
    def check_input(self, x: Any) -> None:
        """Validate a batch against the configured size before it reaches the backbone.

        Raises:
            TypeError: not a tensor.
            ValueError: not ``[B, 1, S, S]`` with ``S == img_size``; a wrong size names the
                configured and the received size (field report BR-19).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"LeaderModel expects a tensor [B, 1, S, S], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"LeaderModel expects a 4-D batch [B, 1, S, S], got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(
                f"LeaderModel is configured for img_size={self.img_size} ({self.img_size}x{self.img_size} "
                f"inputs) but received {h}x{w} (batch shape {tuple(x.shape)}); resize in the transform to "
                f"the same config value, or build the model with img_size={h} (field report BR-19)"
            )
        if x.shape[1] != 1:
            raise ValueError(
                f"LeaderModel expects grayscale [B, 1, S, S] in [0, 1] (it replicates channels and "
                f"normalises itself), got {x.shape[1]} channels"
            )

    def _select(self, heads: str | Iterable[str] | None) -> list[str]:
        if heads is None:
            return list(self.heads.keys())
        if isinstance(heads, str):
            heads = [heads]
        heads = list(heads)
        unknown = [h for h in heads if h not in self.heads]
        if unknown:
            raise KeyError(f"unknown head(s) {unknown}; this model has {list(self.heads.keys())}")
        return heads

    def forward(self, x: torch.Tensor, heads: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Compute ``E_DA`` and the distilled embeddings.

        Args:
            x: float32 ``[B, 1, S, S]`` in ``[0, 1]`` with ``S == img_size``; replicated to
                ``in_chans`` channels and mean/std-normalised (the backbone's timm
                ``pretrained_cfg``, ImageNet by default) inside.
            heads: ``None`` for all heads; a name or list of names for only those (stage 1 of
                Algorithm 1 runs ``heads=["disease"]``); ``[]`` for ``E_DA`` only.

        Returns:
            ``{"e_da": [B, e_da_dim], <head>: [B, head_dims[head]], ...}`` (dtype follows
            autocast; float32 otherwise).

        Raises:
            ValueError: wrong shape/size (see :meth:`check_input`).
            KeyError: an unknown head name.
        """
        self.check_input(x)
        names = self._select(heads)
        x = x.to(self.pixel_mean.dtype)
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        x = (x - self.pixel_mean) / self.pixel_std
        e_da = self.backbone(x)
        if e_da.dim() != 2:
            raise ValueError(
                f"backbone {self.backbone_name!r} returned {tuple(e_da.shape)}; expected pooled [B, D] "
                "(do not pass global_pool='' in backbone_kwargs)"
            )
        out = {"e_da": e_da}
        for name in names:
            out[name] = self.heads[name](e_da)
        return out

    def parameters_for(self, heads: str | Sequence[str] | None = None) -> Iterator[nn.Parameter]:
        """Backbone parameters plus those of the selected heads (what one stage trains).

        Stage 1 of Algorithm 1 updates ``{S_θ, h_θD}`` only; building its optimizer (and DDP
        wrapper) from ``parameters_for(["disease"])`` leaves the anatomy head untouched.
        """
        yield from self.backbone.parameters()
        for name in self._select(heads):
            yield from self.heads[name].parameters()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Same as :func:`leader.models.checkpoint.save_model`."""
        return save_model(self, out_dir, extra=extra)

    @classmethod
    def load_checkpoint(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "LeaderModel":
        """Same as :func:`load_model`."""
        return load_model(directory, map_location=map_location)


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> LeaderModel:
    """Rebuild a :class:`~leader.models.LeaderModel` from ``config.json`` and load ``model.safetensors``.

    Loading is strict; only safetensors is read (no pickle). The returned model is in eval
    mode on ``map_location``.

    Raises:
        FileNotFoundError: missing ``config.json`` or ``model.safetensors``.
        ValueError: missing / unexpected / mis-shaped keys (all named).
    """
    directory = Path(directory)
    cfg = read_model_config(directory)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model checkpoint {directory}: missing model.safetensors")
    model = LeaderModel.from_config(cfg["model"])
    sd = load_file(str(weights), device="cpu")
    for name, head in model.heads.items():  # checkpoints written before heads kept target statistics
        for buf, fill in (("target_mean", 0.0), ("target_scale", 1.0)):
            sd.setdefault(f"heads.{name}.{buf}", torch.full((head.out_dim,), fill))
    load_state_dict_checked(model, sd, strict=True, source=str(weights))
    return model.to(map_location).eval()

