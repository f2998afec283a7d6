"""Turn a command-line teacher spec into a :class:`~leader.teachers.base.Teacher`.

Accepted forms of ``PATH`` in ``--teacher NAME=PATH``:

* a folder with ``teacher.json`` + ``model.safetensors`` (what ``leader teachers fit`` writes,
  or any timm model saved with :func:`leader.teachers.module.save_teacher`);
* an embedding-store folder (``meta.json`` + ``index.parquet``): precomputed embeddings looked
  up by sample / patch id — how API-only experts such as CXR Foundation are used;
* ``timm:ARCH[:WEIGHTS_FILE]``: any timm architecture, optionally with a local weights file
  (``.safetensors``, or ``.pt``/``.pth`` loaded with ``weights_only=True``);
* ``adam:PATH`` / ``adam-v1:PATH`` / ``adam-v2:PATH``: a published Adam checkpoint (teacher
  weights; version detected from the keys for ``adam:``), see :mod:`leader.teachers.adam`;
* ``xrv:PATH`` / ``xrv-resnet50:PATH``: a torchxrayvision DenseNet-121 (ResNet-50) state dict
  (``.safetensors`` / tensor-only ``.pt``), see :mod:`leader.teachers.xrv`;
* ``hf:DIR``: a Hugging Face vision encoder folder such as RAD-DINO (needs ``transformers``);
* ``torchscript:PATH`` / ``onnx:PATH`` (``.onnx`` files are also recognised by suffix):
  exported networks, see :mod:`leader.teachers.exported`.
"""

from __future__ import annotations

from pathlib import Path

from leader.teachers.adam import load_adam
from leader.teachers.base import Teacher
from leader.teachers.exported import OnnxTeacher, load_torchscript_teacher
from leader.teachers.hf import load_hf
from leader.teachers.module import ModuleTeacher
from leader.teachers.store_teacher import EmbeddingStoreTeacher
from leader.teachers.xrv import load_xrv
from leader.utils import name_value_pairs


def load_teacher(name: str, spec: str) -> Teacher:
    """Build the teacher ``name`` from ``spec`` (see module docstring).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the folder is neither a teacher folder nor an embedding store.
    """
    if spec.startswith("timm:"):
        parts = spec.split(":", 2)
        arch = parts[1]
        weights = parts[2] if len(parts) > 2 and parts[2] else None
        return ModuleTeacher.from_timm(name, arch, weights=weights)
    kind, sep, rest = spec.partition(":")
    if sep and kind in _PREFIXED:
        if not rest:
            raise ValueError(f"teacher {name!r}: {spec!r} needs a path after {kind}:")
        if not Path(rest).exists():
            raise FileNotFoundError(f"teacher {name!r}: {rest} does not exist")
        return _PREFIXED[kind](name, rest)
    path = Path(spec)
    if path.is_file() and path.suffix == ".onnx":
        return _PREFIXED["onnx"](name, spec)
    if not path.exists():
        raise FileNotFoundError(f"teacher {name!r}: {spec} does not exist")
    if (path / "teacher.json").is_file():
        return ModuleTeacher.from_checkpoint_dir(path)
    if (path / "meta.json").is_file() and (path / "index.parquet").is_file():
        return EmbeddingStoreTeacher(name, path)
    raise ValueError(
        f"teacher {name!r}: {spec} is neither a teacher folder (teacher.json + model.safetensors) "
        "nor an embedding store (meta.json + index.parquet); for a timm model use timm:ARCH[:WEIGHTS], "
        f"for other formats one of {', '.join(p + ':PATH' for p in _PREFIXED)}"
    )


def _adam(version: str):
    def make(name: str, path: str) -> Teacher:
        return load_adam(path, name=name, version=version)

    return make


def _xrv(arch: str):
    def make(name: str, path: str) -> Teacher:
        return load_xrv(name, path, arch=arch)

    return make


def _hf(name: str, path: str) -> Teacher:
    return load_hf(name, path)


def _torchscript(name: str, path: str) -> Teacher:
    return load_torchscript_teacher(name, path)


def _onnx(name: str, path: str) -> Teacher:
    return OnnxTeacher(name, path)


#: ``PREFIX:PATH`` teacher forms (besides ``timm:``).
_PREFIXED = {
    "adam": _adam("auto"),
    "adam-v1": _adam("v1"),
    "adam-v2": _adam("v2"),
    "xrv": _xrv("densenet121"),
    "xrv-resnet50": _xrv("resnet50"),
    "hf": _hf,
    "torchscript": _torchscript,
    "onnx": _onnx,
}


def parse_teacher_args(items: list[str]) -> dict[str, Teacher]:
    """``["disease=PATH", "anatomy=PATH"]`` → ``{"disease": Teacher, "anatomy": Teacher}``."""
    return {name: load_teacher(name, spec) for name, spec in name_value_pairs(items, "--teacher", "NAME=PATH").items()}
