"""Reading weights files safely: the one checkpoint reader every teacher loader uses.

Safety policy (issue 6)
-----------------------
No pickle from a file the user did not create is ever executed:

* ``.safetensors`` files are read with ``safetensors`` (no code at all);
* any other file is read with ``torch.load(weights_only=True)``, whose unpickler only
  rebuilds tensors and plain containers and rejects every other Python object *before*
  calling it;
* a file that needs full unpickling (a whole pickled ``nn.Module`` such as the published
  torchxrayvision ``.pt`` files, a checkpoint with an ``argparse.Namespace`` inside, ...) is
  refused with :class:`UnsafeCheckpointError`, whose message explains how to convert the file
  to safetensors once, in a separate session, if and only if its source is trusted.

:func:`load_checkpoint_object` implements this and is what every teacher loader in this
package uses (Adam, torchxrayvision, exported students).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import LeaderError

__all__ = ["UnsafeCheckpointError", "load_checkpoint_object", "find_tensor_dict", "read_state_dict", "is_tensor_dict"]

_UNWRAP_KEYS = ("state_dict", "model")


class UnsafeCheckpointError(LeaderError, ValueError):
    """A weights file needs full unpickling (arbitrary code) and was refused; nothing in it ran."""


def _torch_reason(exc: BaseException) -> str:
    """The informative part of torch's weights_only error (the rejected global), without ANSI codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1) if m else text.splitlines()[0] if text else type(exc).__name__
    return reason.strip()[:300]


def _convert_help(path: Path) -> str:
    out = path.with_suffix(".safetensors").name
    return (
        "To use it, convert it once to safetensors in a separate Python session, and only if you "
        "trust where the file came from (this step runs the pickle):\n"
        "    import torch, safetensors.torch\n"
        f"    obj = torch.load({str(path)!r}, map_location='cpu', weights_only=False)  # trusted files only\n"
        "    sd = obj.state_dict() if hasattr(obj, 'state_dict') else obj  # a module, or a dict of tensors\n"
        "    # for a training checkpoint pick the network first, e.g. sd = obj['teacher'] or obj['state_dict']\n"
        f"    safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items()}}, {out!r})\n"
        f"then pass {out!r} instead."
    )


def load_checkpoint_object(path: str | os.PathLike) -> Any:
    """Read a weights / checkpoint file without executing any pickled code.

    Args:
        path: ``.safetensors`` (read with ``safetensors.torch.load_file``) or anything
            ``torch.save`` wrote (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ...), read with
            ``torch.load(map_location="cpu", weights_only=True)``. A file with the
            safetensors header but another suffix is recognised too.

    Returns:
        A ``{name: tensor}`` dict (safetensors), or whatever tensors / dicts / lists /
        numbers the torch file holds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs full unpickling (a pickled module or any other
            Python object); the message names the rejected object and explains how to convert
            the file to safetensors. Nothing in the file was executed.
        ValueError: the file is neither a safetensors nor a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused: this file needs full unpickling (torch.load(weights_only=False)), which can "
            f"run arbitrary code; LeADER only reads safetensors and tensor-only torch files. Rejected: "
            f"{_torch_reason(exc)}.\n{_convert_help(path)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable torch or safetensors weights file: {exc}") from exc


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def find_tensor_dict(
    obj: Any, prefer: Sequence[str] = ("state_dict", "model"), where: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Descend into a checkpoint dict to the ``{name: tensor}`` state dict.

    At each level the first key of ``prefer`` holding a dict is taken. Non-tensor entries of
    a state dict (e.g. a ``None`` buffer) are an error.

    Returns:
        ``(state_dict, path)`` where ``path`` names the keys followed (``"teacher"``,
        ``"state_dict.model"``, or ``"(top level)"``).

    Raises:
        ValueError: no tensor dict was found (the message lists the keys at the level that failed).
    """
    trail: list[str] = []
    while isinstance(obj, Mapping) and not is_tensor_dict(obj):
        key = next((k for k in prefer if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = sorted(map(str, obj))[:20]
            raise ValueError(
                f"{where}: no state dict found at {'.'.join(trail) or 'the top level'}; keys there: {keys} "
                f"(looked for {list(prefer)})"
            )
        trail.append(key)
        obj = obj[key]
    if not is_tensor_dict(obj):
        raise ValueError(f"{where}: holds {type(obj).__name__}, not a {{name: tensor}} state dict")
    return dict(obj), ".".join(trail) or "(top level)"


def is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(
    path: str | os.PathLike,
    state_dict_key: str | None = None,
    strip_prefix: str | Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` or ``.pt``/``.pth``/``.bin``/``.ckpt`` file.

    ``.safetensors`` is read with ``safetensors.torch.load_file``; everything else with
    ``torch.load(weights_only=True)`` (no arbitrary code runs). A training checkpoint that
    wraps the weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped
    automatically; other wrappers (e.g. Adam's ``teacher`` / ``student``) need
    ``state_dict_key`` (dots descend: ``"model.teacher"``).

    Args:
        path: the weights file.
        state_dict_key: key of the tensor dict inside a checkpoint dict.
        strip_prefix: prefix(es) removed from keys that start with them (e.g.
            ``"module."``, ``"backbone."``). By default ``"module."`` is stripped when *every*
            key has it (DDP checkpoints).

    Returns:
        ``{name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: (a ``ValueError``) the file needs full unpickling; the message
            explains how to convert it. Nothing in it is executed.
        ValueError: the file holds no tensor dict (the message lists the top-level keys).
    """
    path = Path(path)
    obj: Any = load_checkpoint_object(path)
    if state_dict_key:
        for part in state_dict_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
                raise ValueError(f"{path}: no key {part!r} (from {state_dict_key!r}); available: {keys}")
            obj = obj[part]
    else:
        while isinstance(obj, Mapping) and not is_tensor_dict(obj):
            inner = next((obj[k] for k in _UNWRAP_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not is_tensor_dict(obj):
        keys = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path}: does not hold a {{name: tensor}} state dict (top-level keys: {keys}); "
            "pass state_dict_key to select one"
        )
    sd = dict(obj)
    if strip_prefix is None:
        if all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
    else:
        prefixes = (strip_prefix,) if isinstance(strip_prefix, str) else tuple(strip_prefix)
        out = {}
        for k, v in sd.items():
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    break
            out[k] = v
        sd = out
    return sd
