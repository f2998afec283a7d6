"""Device and precision helpers shared by training, embedding, teacher fitting and evaluation.

Kept in a module of their own (no project imports) so that every layer can use them without
importing the training loop.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["pick_device", "autocast_context"]


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; any other name is passed to :class:`torch.device`.

    Raises:
        RuntimeError: an unknown device string (from :class:`torch.device`).
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where requested and supported; a null context otherwise.

    Args:
        device: where the forward pass runs.
        precision: ``bf16`` (autocast to bfloat16; a no-op on CUDA cards without bf16) or
            ``fp32`` / ``32`` (no autocast).

    Raises:
        ValueError: any other precision.
    """
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision not in ("fp32", "32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    return nullcontext()
