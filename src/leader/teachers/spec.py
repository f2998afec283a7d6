"""Turn a command-line teacher spec into a :class:`~leader.teachers.base.Teacher`.

Accepted forms of ``PATH`` in ``--teacher NAME=PATH``:

* a folder with ``teacher.json`` + ``model.safetensors`` (what ``leader teachers fit`` writes,
  or any timm model saved with :func:`leader.teachers.module.save_teacher`);
* an embedding-store folder (``meta.json`` + ``index.parquet``): precomputed embeddings looked
  up by sample / patch id — how API-only experts such as CXR Foundation are used;
* ``timm:ARCH[:WEIGHTS_FILE]``: any timm architecture, optionally with a local weights file
  (``.safetensors``, or ``.pt``/``.pth`` loaded with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

from leader.teachers.base import Teacher
from leader.teachers.module import ModuleTeacher
from leader.teachers.store_teacher import EmbeddingStoreTeacher


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
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"teacher {name!r}: {spec} does not exist")
    if (path / "teacher.json").is_file():
        return ModuleTeacher.from_checkpoint_dir(path)
    if (path / "meta.json").is_file() and (path / "index.parquet").is_file():
        return EmbeddingStoreTeacher(name, path)
    raise ValueError(
        f"teacher {name!r}: {spec} is neither a teacher folder (teacher.json + model.safetensors) "
        "nor an embedding store (meta.json + index.parquet); for a timm model use timm:ARCH[:WEIGHTS]"
    )


def parse_teacher_args(items: list[str]) -> dict[str, Teacher]:
    """``["disease=PATH", "anatomy=PATH"]`` → ``{"disease": Teacher, "anatomy": Teacher}``."""
    out: dict[str, Teacher] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--teacher {item!r} must look like NAME=PATH")
        name, spec = item.split("=", 1)
        if name in out:
            raise ValueError(f"teacher {name!r} given twice")
        out[name] = load_teacher(name, spec)
    return out
