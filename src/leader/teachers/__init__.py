"""Frozen expert teachers ``T_ξ`` (paper §3, Algorithm 1).

* :class:`Teacher` — the protocol: ``name``, ``dim``, ``input_spec``,
  ``embed(images [B,1,H,W] in [0,1], ids=None) -> float32 [B, dim]``; always frozen.
* :class:`InputSpec` — a teacher's input contract and the converter to it (BR-05).
* :class:`ModuleTeacher` — any ``nn.Module`` / timm model with local weights;
  :func:`save_teacher` / :meth:`ModuleTeacher.from_checkpoint_dir` for fitted experts.
* :class:`EmbeddingStoreTeacher` — precomputed (API-only) expert embeddings looked up by id.
* Real-world experts: :func:`load_adam` (Adam v1/v2 checkpoints), :func:`load_xrv`
  (torchxrayvision), :func:`load_hf` (RAD-DINO / any HF vision encoder),
  :func:`load_torchscript_teacher` / :class:`OnnxTeacher`, and
  :func:`import_cxr_foundation` (Google CXR Foundation / ELIXR outputs -> embedding store).
* :func:`load_checkpoint_object` — the safe weights reader (no pickled code ever runs).
"""

from ..errors import TeacherInputError
from .base import IMAGENET_MEAN, IMAGENET_SPEC, IMAGENET_STD, XRV_SPEC, InputSpec, Teacher
from .module import ModuleTeacher, save_teacher
from .store_teacher import EmbeddingStoreTeacher
from .adam import load_adam, read_adam_state_dict
from .cxr_foundation import import_cxr_foundation, read_cxr_foundation
from .exported import OnnxTeacher, load_torchscript_teacher
from .weights import UnsafeCheckpointError, load_checkpoint_object, read_state_dict
from .hf import load_hf
from .xrv import load_xrv

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
    "load_adam",
    "read_adam_state_dict",
    "load_xrv",
    "load_hf",
    "load_torchscript_teacher",
    "OnnxTeacher",
    "import_cxr_foundation",
    "read_cxr_foundation",
    "load_checkpoint_object",
    "UnsafeCheckpointError",
]
