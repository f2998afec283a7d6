"""Checkpoint I/O for the student and the resumable training state.

:func:`load_model` (which rebuilds a :class:`~leader.models.student.LeaderModel`) lives beside
the model in :mod:`leader.models.student`; this module knows nothing about the model class.

Model checkpoint (a directory; what ``leader embed`` / the evaluations read)::

    ckpt/
      model.safetensors   LeaderModel.state_dict()  (backbone.* and heads.<name>.*)
      config.json         {"format": "leader-model", "version": 1,
                           "model": LeaderModel.config(), "extra": {...}}

Training state (one file, :func:`save_training_state`): optimizer and scheduler state dicts,
step, stage, RNG states and small ``extra`` values, written with ``torch.save`` and read with
``torch.load(weights_only=True)``, so a tampered file cannot run code when resuming. Only
tensors and primitives (``int``, ``float``, ``bool``, ``str``, ``None``, lists, tuples,
dicts) are allowed inside; this is checked when saving.

All writes are atomic (temporary file in the same directory + ``os.replace``).
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..utils import atomic_path, atomic_write_json, read_json

__all__ = [
    "save_model",
    "read_model_config",
    "save_training_state",
    "load_training_state",
    "load_state_dict_checked",
    "check_weight_keys",
]

_MODEL_FORMAT = "leader-model"
_STATE_FORMAT = "leader-training-state"


def _fmt_keys(keys: Sequence[object], limit: int = 10) -> str:
    """``"[a, b, ...] (n)"``: the first ``limit`` of the sorted names and the count."""
    keys = sorted(map(str, keys))
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"


def check_weight_keys(
    source: str,
    missing: Sequence[object],
    unexpected: Sequence[object],
    mismatched: Sequence[object] = (),
    *,
    strict: bool = True,
    unexpected_hint: str = "",
    stacklevel: int = 3,
) -> None:
    """Refuse or warn about weights that do not fit a model, naming every problem.

    One rule for every loader (:func:`load_state_dict_checked`, the Hugging Face teacher):
    shape mismatches always raise; missing / unexpected keys raise when ``strict`` and
    otherwise warn once (``RuntimeWarning``).

    Args:
        source: description for messages (e.g. the file path).
        missing: keys the model has and the weights lack.
        unexpected: keys the weights have and the model lacks.
        mismatched: one description per key whose shape differs.
        strict: missing / unexpected keys raise (default) instead of warning.
        unexpected_hint: text appended to the unexpected-keys part of the error.
        stacklevel: of the warning; the default 3 points at the caller of the loader that
            calls this function.

    Raises:
        ValueError: ``"<source>: weights do not match the model: ..."``; each kind of problem
            lists up to 10 sorted names and the count.
    """
    problems = []
    if mismatched:
        problems.append(f"shape mismatches {_fmt_keys(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys {_fmt_keys(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_fmt_keys(unexpected)}{unexpected_hint}")
    if problems:
        raise ValueError(f"{source}: weights do not match the model: " + "; ".join(problems))
    if missing or unexpected:
        warnings.warn(
            f"{source}: loading non-strictly; missing keys {_fmt_keys(missing)}, unexpected keys {_fmt_keys(unexpected)}",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def load_state_dict_checked(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "state dict"
) -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``module`` with an error that names every problem.

    Args:
        module: target module.
        state_dict: ``{name: tensor}``; dtypes are converted on copy.
        strict: missing or unexpected keys raise (default); otherwise they warn.
        source: description for messages (e.g. the file path).

    Returns:
        ``(missing, unexpected)`` key lists (empty when strict succeeded).

    Raises:
        ValueError: shape mismatches (always), or missing/unexpected keys when ``strict``;
            the message lists up to 10 names of each kind and the counts.
    """
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    check_weight_keys(source, missing, unexpected, mismatched, strict=strict)
    filtered = {k: v for k, v in state_dict.items() if k in own}
    module.load_state_dict(filtered, strict=False)
    return missing, unexpected


# ---------------------------------------------------------------------------------- model
def save_model(model: nn.Module, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None,
               state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Save a :class:`~leader.models.LeaderModel` as ``model.safetensors`` + ``config.json``.

    Args:
        model: the student (anything with ``.config()`` and a ``state_dict``; a DDP /
            ``torch.compile`` wrapper is unwrapped).
        out_dir: checkpoint directory (created).
        extra: JSON-serialisable extras (step, stage, teacher names, metrics...), stored under
            ``"extra"`` in ``config.json``.
        state_dict: the full (unsharded) weights to write instead of ``model.state_dict()``
            (an FSDP-sharded student gathers them collectively first).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        TypeError: ``extra`` is not JSON-serialisable (raised before anything is written).
    """
    import json

    from safetensors.torch import save_file

    model = _unwrap(model)
    out_dir = Path(out_dir)
    cfg = {"format": _MODEL_FORMAT, "version": 1, "model": model.config(), "extra": dict(extra or {})}
    try:
        json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_model: config/extra must be JSON-serialisable: {exc}") from exc
    sd = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": _MODEL_FORMAT})
    atomic_write_json(out_dir / "config.json", cfg)
    return out_dir


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "config"):
            model = model.module  # DDP / DataParallel
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        else:
            return model


def read_model_config(directory: str | os.PathLike) -> dict:
    """Return the parsed ``config.json`` of a model checkpoint (``{"model": ..., "extra": ...}``).

    Raises:
        FileNotFoundError: the folder or its ``config.json`` does not exist.
        ValueError: not a LeADER model config.
    """
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"model checkpoint {directory}: no such folder")
    cfg_file = Path(directory) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"model checkpoint {directory}: missing config.json")
    cfg = read_json(cfg_file)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{cfg_file}: not a LeADER model config (no 'model' entry)")
    return cfg


# ------------------------------------------------------------------------- training state
_SAFE_SCALARS = (int, float, bool, str, bytes, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def _check_safe(obj: Any, where: str) -> None:
    if isinstance(obj, _SAFE_SCALARS):
        return
    if isinstance(obj, (list, tuple)):
        if type(obj) not in (list, tuple, torch.Size):
            raise TypeError(f"training state {where}: {type(obj).__name__} is not allowed (use list/tuple)")
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"training state {where}: key {k!r} of type {type(k).__name__} is not allowed")
            _check_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (np.integer, np.floating, np.ndarray)):
        raise TypeError(
            f"training state {where}: numpy {type(obj).__name__} is not loadable with weights_only=True; "
            "convert to a Python number or a torch tensor"
        )
    raise TypeError(
        f"training state {where}: {type(obj).__name__} is not allowed (only tensors, numbers, "
        "strings, None, lists, tuples and dicts load with torch.load(weights_only=True))"
    )


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            (s["name"], s["keys"].numpy().astype(np.uint32), int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def save_training_state(
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    step: int = 0,
    stage: int = 1,
    rng: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save everything needed to resume training except the model weights (see :func:`save_model`).

    Args:
        path: output file (e.g. ``run/train_state.pt``); written atomically.
        optimizer: its ``state_dict()`` is saved (``None`` to skip).
        scheduler: an LR scheduler (or anything with ``state_dict()``), or ``None``.
        step: global optimisation step.
        stage: Algorithm 1 stage (1: disease branch on images; 2: both branches on pairs).
        rng: also save Python / numpy / torch (and CUDA) RNG states.
        extra: small values (epoch, best metric, data-loader position...): tensors and
            primitives only.

    Returns:
        ``path`` as a Path.

    Raises:
        TypeError: something that ``torch.load(weights_only=True)`` could not read back (the
            message names where it is), checked before writing.
    """
    state: dict[str, Any] = {
        "format": _STATE_FORMAT,
        "version": 1,
        "step": int(step),
        "stage": int(stage),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state() if rng else None,
        "extra": dict(extra or {}),
    }
    _check_safe(state, "state")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load a state saved by :func:`save_training_state` with ``torch.load(weights_only=True)``.

    Args:
        path: the state file.
        optimizer: if given, ``optimizer.load_state_dict`` is called (the optimizer must be
            built over the same parameters, in the same order; tensors move to the parameters'
            devices).
        scheduler: if given, ``scheduler.load_state_dict`` is called.
        restore_rng: restore the saved RNG states.
        map_location: where tensors are loaded.

    Returns:
        The raw state dict: ``{"step", "stage", "optimizer", "scheduler", "rng", "extra", ...}``.

    Raises:
        FileNotFoundError: no file.
        ValueError: the file contains anything but tensors and primitives (e.g. a pickled
            object with a ``__reduce__``): it is refused and nothing in it is executed; or it
            is not a LeADER training state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refused to load training state: it contains objects other than tensors and "
            f"primitives (torch.load(weights_only=True) rejected it): {exc}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"{path}: not a LeADER training state")
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path}: has no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state.get("scheduler") is None:
            raise ValueError(f"{path}: has no scheduler state")
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and state.get("rng"):
        _set_rng_state(state["rng"])
    return state

