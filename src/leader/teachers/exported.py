"""Networks made elsewhere: TorchScript and ONNX teachers.

The safe checkpoint reader lives in :mod:`leader.teachers.weights` (re-exported here).

TorchScript and ONNX teachers
-----------------------------
:func:`load_torchscript_teacher` wraps ``torch.jit.load`` (TorchScript code runs in the
TorchScript interpreter, not in Python) and :class:`OnnxTeacher` runs an ONNX file with
``onnxruntime`` (optional dependency: ``pip install onnxruntime`` or ``leader-cxr[export]``).
Their input contract comes, in this order, from the ``input_spec`` argument, from metadata
embedded in the file (``leader export`` writes it), from a sidecar file
``<file>.input_spec.json`` (an :meth:`InputSpec.to_dict` dict), or from the ImageNet
default (size and channels taken from a static input shape when the file declares one),
with a warning: a wrong range gives near-constant targets (field report BR-05).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .base import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Teacher
from .module import ModuleTeacher, _pool_output
from .weights import UnsafeCheckpointError, find_tensor_dict, load_checkpoint_object

__all__ = [
    "UnsafeCheckpointError",
    "load_checkpoint_object",
    "find_tensor_dict",
    "load_torchscript_teacher",
    "save_torchscript",
    "OnnxTeacher",
    "load_onnx_teacher",
    "INPUT_SPEC_METADATA_KEY",
    "read_sidecar_spec",
]

#: Key under which ``leader export`` stores the input contract (ONNX metadata_props,
#: TorchScript extra files, safetensors metadata).
INPUT_SPEC_METADATA_KEY = "leader_input_spec"
_TS_EXTRA_FILE = "leader_input_spec.json"


# ----------------------------------------------------------------------------- input specs
def read_sidecar_spec(path: str | os.PathLike) -> InputSpec | None:
    """``<path>.input_spec.json`` next to a model file, if present."""
    side = Path(str(path) + ".input_spec.json")
    if not side.is_file():
        return None
    try:
        return InputSpec.from_dict(json.loads(side.read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{side}: not a valid input spec: {exc}") from exc


def _default_spec(shape: Sequence[Any] | None, where: str) -> InputSpec:
    """ImageNet default, with channels / size from a static NCHW input shape when available."""
    channels, size = 3, 224
    if shape is not None and len(shape) == 4:
        c, h, w = shape[1], shape[2], shape[3]
        if isinstance(c, int) and c > 0:
            channels = c
        if isinstance(h, int) and isinstance(w, int) and h == w and h > 0:
            size = h
    if channels == 3:
        spec = InputSpec(size=size, channels=3)
    else:
        spec = InputSpec(size=size, channels=channels, mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,))
    warnings.warn(
        f"{where}: no input spec given, embedded or in a sidecar .input_spec.json; assuming {spec}. "
        "A wrong range or normalisation gives near-constant teacher targets (field report BR-05): pass "
        "input_spec=... or write the sidecar file.",
        RuntimeWarning,
        stacklevel=3,
    )
    return spec


# ----------------------------------------------------------------------------- TorchScript
def load_torchscript_teacher(
    name: str,
    path: str | os.PathLike,
    input_spec: InputSpec | None = None,
    dim: int | None = None,
) -> ModuleTeacher:
    """A frozen teacher from a TorchScript archive (``torch.jit.save`` output).

    Args:
        name: teacher name.
        path: the ``.pt`` / ``.ts`` archive; loaded on the CPU with ``torch.jit.load``.
        input_spec: the network's input contract; default: the spec embedded by
            ``leader export`` (extra file ``leader_input_spec.json``), then the sidecar
            ``<path>.input_spec.json``, then ImageNet (with a warning).
        dim: output width; inferred by one dummy forward when ``None``.

    Outputs ``[B, d]`` are used as is, ``[B, C, H, W]`` maps are average-pooled, tuples give
    their first element.

    Raises:
        FileNotFoundError: no file.
        ValueError: not a TorchScript archive (e.g. a plain ``torch.save`` file: use ``timm:``
            or a teacher folder for those).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher {name!r}: TorchScript file not found: {path}")
    extra = {_TS_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise ValueError(f"teacher {name!r}: {path} is not a TorchScript archive: {str(exc).splitlines()[0]}") from exc
    spec = input_spec
    if spec is None and extra.get(_TS_EXTRA_FILE):
        spec = InputSpec.from_dict(json.loads(extra[_TS_EXTRA_FILE]))
    if spec is None:
        spec = read_sidecar_spec(path)
    if spec is None:
        spec = _default_spec(None, f"teacher {name!r} ({path.name})")
    teacher = ModuleTeacher(name, module, spec, dim=dim)
    teacher.source = str(path)
    return teacher


def save_torchscript(module: torch.nn.Module, path: str | os.PathLike, input_spec: InputSpec, example: torch.Tensor) -> Path:
    """Trace ``module`` on ``example`` and save it with the input spec embedded (helper for users/tests)."""
    from ..utils import atomic_path

    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={_TS_EXTRA_FILE: json.dumps(input_spec.to_dict())})
    return path


# ----------------------------------------------------------------------------- ONNX
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _import_onnxruntime():
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "ONNX teachers and ONNX checks need onnxruntime, which is not installed: "
            "pip install onnxruntime (or pip install 'leader-cxr[export]')"
        ) from exc
    return onnxruntime


class OnnxTeacher(Teacher):
    """A frozen teacher running an ONNX file with onnxruntime (CPU).

    Args:
        name: teacher name.
        path: the ``.onnx`` file.
        input_spec: input contract (default: embedded ``leader_input_spec`` metadata, then the
            sidecar ``<path>.input_spec.json``, then ImageNet sized from the graph's static
            input shape, with a warning).
        output: which graph output is the embedding: a name or an index (default 0).
        dim: output width; inferred by one dummy run when ``None``.
        providers: onnxruntime execution providers (default CPU).

    Raises:
        ImportError: onnxruntime is not installed.
        FileNotFoundError: no file.
        ValueError: the graph does not take one image tensor, or ``output`` does not exist.
    """

    def __init__(
        self,
        name: str,
        path: str | os.PathLike,
        input_spec: InputSpec | None = None,
        output: str | int = 0,
        dim: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        ort = _import_onnxruntime()
        self.name = str(name)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher {self.name!r}: ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"teacher {self.name!r}: {self.path} takes {len(inputs)} inputs "
                f"({[i.name for i in inputs]}); an image teacher takes exactly one"
            )
        self._input = inputs[0]
        self._in_dtype = _ORT_TYPES.get(self._input.type)
        if self._in_dtype is None:
            raise ValueError(f"teacher {self.name!r}: input {self._input.name!r} has type {self._input.type}; expected a float tensor")
        names = [o.name for o in self.session.get_outputs()]
        if isinstance(output, int):
            if not -len(names) <= output < len(names):
                raise ValueError(f"teacher {self.name!r}: output index {output} out of range; outputs: {names}")
            self.output = names[output]
        else:
            if output not in names:
                raise ValueError(f"teacher {self.name!r}: no output {output!r}; outputs: {names}")
            self.output = output
        spec = input_spec
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        if spec is None and INPUT_SPEC_METADATA_KEY in meta:
            spec = InputSpec.from_dict(json.loads(meta[INPUT_SPEC_METADATA_KEY]))
        if spec is None:
            spec = read_sidecar_spec(self.path)
        if spec is None:
            spec = _default_spec(self._input.shape, f"teacher {self.name!r} ({self.path.name})")
        self.input_spec = spec
        shape = self._input.shape
        if len(shape) != 4:
            raise ValueError(f"teacher {self.name!r}: input {self._input.name!r} has shape {shape}; expected [B, C, H, W]")
        if isinstance(shape[1], int) and shape[1] != spec.channels:
            raise ValueError(
                f"teacher {self.name!r}: the graph takes {shape[1]} channels but the input spec gives {spec.channels}"
            )
        self._static_batch = shape[0] if isinstance(shape[0], int) else None
        if dim is None:
            probe = torch.full((1, 1, spec.size, spec.size), 0.5)
            dim = int(self._run(spec.convert(probe)).shape[1])
        self.dim = int(dim)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(self._in_dtype, copy=False)
        if self._static_batch is not None and arr.shape[0] != self._static_batch:
            if self._static_batch != 1:
                raise ValueError(f"teacher {self.name!r}: the graph has a fixed batch size {self._static_batch}")
            outs = [self.session.run([self.output], {self._input.name: arr[i : i + 1]})[0] for i in range(arr.shape[0])]
            out = np.concatenate(outs, axis=0)
        else:
            out = self.session.run([self.output], {self._input.name: arr})[0]
        return _pool_output(torch.from_numpy(np.asarray(out, dtype=np.float32)), f"teacher {self.name!r}")

    def _forward(self, x: torch.Tensor, ids: Sequence[str] | None) -> torch.Tensor:
        return self._run(x)


def load_onnx_teacher(name: str, path: str | os.PathLike, input_spec: InputSpec | None = None, **kwargs: Any) -> OnnxTeacher:
    """Same as :class:`OnnxTeacher` (kept as a function for symmetry with the other loaders)."""
    return OnnxTeacher(name, path, input_spec=input_spec, **kwargs)
