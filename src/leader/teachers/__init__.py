"""Frozen expert teachers ``T_ξ`` (paper §3, Algorithm 1).

* :class:`Teacher` — the protocol: ``name``, ``dim``, ``input_spec``,
  ``embed(images [B,1,H,W] in [0,1], ids=None) -> float32 [B, dim]``; always frozen.
* :class:`InputSpec` — a teacher's input contract and the converter to it (BR-05).
* :class:`ModuleTeacher` — any ``nn.Module`` / timm model with local weights;
  :func:`save_teacher` / :meth:`ModuleTeacher.from_checkpoint_dir` for fitted experts.
* :class:`EmbeddingStoreTeacher` — precomputed (API-only) expert embeddings looked up by id.
"""

from ..errors import TeacherInputError
from .base import IMAGENET_MEAN, IMAGENET_SPEC, IMAGENET_STD, XRV_SPEC, InputSpec, Teacher
from .module import ModuleTeacher, read_state_dict, save_teacher
from .store_teacher import EmbeddingStoreTeacher

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_SPEC",
    "XRV_SPEC",
    "InputSpec",
    "Teacher",
    "TeacherInputError",
    "ModuleTeacher",
    "EmbeddingStoreTeacher",
    "save_teacher",
    "read_state_dict",
]
