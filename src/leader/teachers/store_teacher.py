"""EmbeddingStoreTeacher: a teacher whose embeddings were computed elsewhere (e.g. by an API).

The paper's disease expert, Google CXR Foundation (paper §4, [65]), is only available as a
service: its embeddings (1376-d) are requested once per image / patch, saved in an
:class:`~leader.store.EmbeddingStore` (see :func:`leader.store.import_npz`), and looked up here
by sample / patch id during distillation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..store import EmbeddingStore
from .base import InputSpec, Teacher

__all__ = ["EmbeddingStoreTeacher"]


class EmbeddingStoreTeacher(Teacher):
    """A teacher backed by precomputed embeddings, looked up by id.

    Args:
        name: teacher name (matches the student head it supervises).
        store_path: an :class:`~leader.store.EmbeddingStore` directory.
        key: the store key holding this teacher's embeddings (``dim = store.dims[key]``).
        input_spec: the contract the images passed to :meth:`embed` must meet (only the
            ``[0, 1]`` / ``[B, 1, H, W]`` check is applied; nothing is computed from pixels).

    **Augmentation.** A precomputed embedding describes the *un-augmented* image (the view the
    API saw), while LeADER feeds the *same augmented view* to the student and to every teacher
    (paper §4: random affine, flip, colour jitter). With a store teacher the student's input
    and the target therefore disagree slightly (a flipped/shifted image is asked to match the
    embedding of the unflipped one). Two remedies:

    * turn augmentation off for the samples distilled from a store teacher (exact pairs); or
    * precompute ``N`` fixed augmented views per sample, store them under ids such as
      ``"<id>#aug0"`` … ``"<id>#aug{N-1}"``, and have the data pipeline pick one of those
      exact views and pass its id, so that view and target match again.

    Raises:
        FileNotFoundError: no store at ``store_path``.
        KeyError: ``key`` is not in the store (lists the keys).
    """

    def __init__(self, name: str, store_path: str | os.PathLike, key: str = "embedding", input_spec: InputSpec | None = None):
        self.name = str(name)
        self.store_path = Path(store_path)
        self.key = key
        self.store = EmbeddingStore.open(self.store_path)
        if key not in self.store.dims:
            raise KeyError(f"teacher {self.name!r}: store {self.store_path} has no key {key!r}; keys: {sorted(self.store.dims)}")
        self.dim = int(self.store.dims[key])
        self.input_spec = input_spec if input_spec is not None else InputSpec()

    def embed(self, images: torch.Tensor | None, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Look up the stored embeddings of ``ids``.

        Args:
            images: float32 ``[B, 1, H, W]`` in ``[0, 1]`` (checked for the contract and for
                ``B == len(ids)``; used for the output device), or ``None``.
            ids: the ``B`` sample / patch ids; required.

        Returns:
            float32 ``[B, dim]`` on ``images``' device (CPU when ``images`` is ``None``).

        Raises:
            ValueError: ``ids`` is ``None`` or its length differs from the batch size.
            KeyError: ids not in the store (names up to 5 and the count).
            TeacherInputError: ``images`` violates the input contract.
        """
        if ids is None:
            raise ValueError(
                f"teacher {self.name!r} reads precomputed embeddings from {self.store_path} and needs "
                "the sample/patch ids: call embed(images, ids)"
            )
        if isinstance(ids, str):
            raise TypeError(f"teacher {self.name!r}: ids must be a sequence of strings, not one string {ids!r}")
        ids = list(ids)
        device = torch.device("cpu")
        if images is not None:
            self.input_spec.check(images, self.name)
            if images.shape[0] != len(ids):
                raise ValueError(f"teacher {self.name!r}: {len(ids)} ids for a batch of {images.shape[0]} images")
            device = images.device
        try:
            values = self.store.get(ids, self.key)
        except KeyError as exc:
            raise KeyError(f"teacher {self.name!r}: {exc.args[0]}") from None
        return torch.from_numpy(values).to(device)

    def _forward(self, x: torch.Tensor, ids: Sequence[str] | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError("EmbeddingStoreTeacher overrides embed()")

    def refresh(self) -> "EmbeddingStoreTeacher":
        """Re-open the store (after another process appended to it)."""
        self.store = EmbeddingStore.open(self.store_path)
        return self

