"""Data augmentation: one random view per sample, fed identically to the student and teachers.

Paper §4 ("Pretraining settings"): random affine transformation, horizontal flip and colour
jitter. In LeADER the student ``S_theta`` and the frozen teachers ``T_xi_D`` / ``T_xi_A`` all
embed *the same input* ``I`` (Algorithm 1, lines 11 and 18-22): the loss compares the teacher's
embedding of ``I`` with the student's embedding of ``I``. So augmentation draws **one random view
per sample** (per image, and separately per patch of a pair) inside the dataset, and the trainer
feeds that one view to the student and to every teacher. Augmenting twice (one view for the
student, another for a teacher) would ask the student to match embeddings of a different image.

Tensors are float32 ``[C, S, S]`` (``C = 1`` for radiographs) with values in ``[0, 1]``, air dark;
outputs are clamped to ``[0, 1]``. Randomness comes from torch's global RNG
(``torch.manual_seed`` makes a sequence of views reproducible; DataLoader workers get distinct
seeds from torch).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torchvision.transforms import v2

__all__ = ["PairedAugment", "Identity", "from_config"]


def _check(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"augmentation expects a torch.Tensor [C, H, W], got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(f"augmentation expects one image [C, H, W], got shape {tuple(x.shape)}; "
                         "apply it per sample (in the dataset), not per batch")
    if not torch.is_floating_point(x):
        raise ValueError(f"augmentation expects float values in [0, 1], got dtype {x.dtype}")
    return x


class Identity:
    """No augmentation (``augment.enabled: false``): returns a float32 ``[C, H, W]`` copy."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _check(x).to(torch.float32).clone()

    def __repr__(self) -> str:
        return "Identity()"


class PairedAugment:
    """Random horizontal flip, random affine and colour jitter (paper §4), one view per call.

    Each call draws fresh parameters and returns one augmented view of one image; in a
    :class:`leader.patches.PairDataset` the image and the patch are augmented independently.
    That single view is what the student *and every teacher* see (module docstring).

    Order: ``RandomHorizontalFlip(hflip_p)`` -> ``RandomAffine(degrees, translate, scale,
    bilinear, fill=0)`` (air-dark zero fill at the borders) -> ``ColorJitter(brightness,
    contrast)`` applied with probability ``p_jitter`` -> clamp to ``[0, 1]``.

    Args:
        degrees: maximum rotation in degrees (uniform in ``[-degrees, degrees]``).
        translate: maximum shift as a fraction of the image side, per axis.
        scale: ``(lo, hi)`` isotropic zoom range.
        hflip_p: probability of a horizontal flip (note: a flip swaps the patient's sides).
        brightness, contrast: ColorJitter factors (multiplier in ``[1 - b, 1 + b]``).
        p_jitter: probability of applying the colour jitter.

    Call: ``x`` float Tensor ``[C, S, S]`` in ``[0, 1]`` -> float32 ``[C, S, S]`` in ``[0, 1]``.

    Raises:
        ValueError: invalid parameters (negative degrees, probabilities outside [0, 1], ...),
            or an input that is not a floating ``[C, H, W]`` tensor.
    """

    def __init__(self, degrees: float = 10.0, translate: float = 0.06,
                 scale: tuple[float, float] = (0.9, 1.1), hflip_p: float = 0.5,
                 brightness: float = 0.2, contrast: float = 0.2, p_jitter: float = 0.8):
        scale = tuple(float(s) for s in scale)
        if degrees < 0:
            raise ValueError(f"degrees must be >= 0, got {degrees}")
        if not 0 <= translate <= 1:
            raise ValueError(f"translate must be in [0, 1], got {translate}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        for name, p in (("hflip_p", hflip_p), ("p_jitter", p_jitter)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if brightness < 0 or contrast < 0:
            raise ValueError(f"brightness/contrast must be >= 0, got {brightness}, {contrast}")
        self.params = dict(degrees=float(degrees), translate=float(translate), scale=scale,
                           hflip_p=float(hflip_p), brightness=float(brightness),
                           contrast=float(contrast), p_jitter=float(p_jitter))
        self._t = v2.Compose([
            v2.RandomHorizontalFlip(p=float(hflip_p)),
            v2.RandomAffine(degrees=float(degrees), translate=(float(translate), float(translate)),
                            scale=scale, interpolation=v2.InterpolationMode.BILINEAR, fill=0.0),
            v2.RandomApply([v2.ColorJitter(brightness=float(brightness), contrast=float(contrast))],
                           p=float(p_jitter)),
        ])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _check(x).to(torch.float32)
        return self._t(x).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return "PairedAugment(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


def from_config(cfg: Mapping[str, Any] | None):
    """Build the augmentation from the ``augment:`` section of a config.

    ``None`` or ``enabled: false`` -> :class:`Identity`; otherwise :class:`PairedAugment` with
    the remaining keys (lists are turned into tuples; missing keys take the paper defaults).

    Raises:
        ValueError: an unknown key (typo guard) or an invalid value.
    """
    if cfg is None:
        return Identity()
    cfg = dict(cfg)
    if not cfg.pop("enabled", True):
        return Identity()
    known = {"degrees", "translate", "scale", "hflip_p", "brightness", "contrast", "p_jitter"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown augment option(s) {unknown}; known: {sorted(known)} and 'enabled'")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    return PairedAugment(**kwargs)


def build_augment(cfg: Mapping[str, Any] | None) -> "PairedAugment | None":
    """:func:`from_config`, but ``None`` (no transform at all) when augmentation is disabled.

    This is what the trainer, the demo and the teacher-fit recipes pass as ``transform=``.
    """
    aug = from_config(cfg)
    return None if isinstance(aug, Identity) else aug
