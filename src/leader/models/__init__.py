"""The LeADER student (paper Fig. 2, §4) and checkpoint I/O.

* :class:`LeaderModel` — timm backbone ``S_θ`` producing ``E_DA`` + one :class:`MLPHead` per
  teacher producing ``E'_D``, ``E'_A``, ...
* :func:`save_model` / :func:`load_model` — ``model.safetensors`` + ``config.json``.
* :func:`save_training_state` / :func:`load_training_state` — resumable optimizer/scheduler/RNG
  state, loaded with ``torch.load(weights_only=True)``.
"""

from .checkpoint import (
    load_state_dict_checked,
    load_training_state,
    read_model_config,
    save_model,
    save_training_state,
)
from .student import DEFAULT_HEAD_DIMS, LeaderModel, MLPHead, check_teacher_dims, load_model

__all__ = [
    "DEFAULT_HEAD_DIMS",
    "LeaderModel",
    "MLPHead",
    "check_teacher_dims",
    "save_model",
    "load_model",
    "read_model_config",
    "save_training_state",
    "load_training_state",
    "load_state_dict_checked",
]
