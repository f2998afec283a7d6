"""Teacher caching: frozen teachers' embeddings computed once, read back during training.

Teachers are frozen, so ``E = T_ξ(view)`` depends only on the view. ``leader teachers cache``
runs a teacher once over every image and patch - the un-augmented view (id ``x``) and
optionally ``N`` fixed augmented views (ids ``x#aug0`` ... ``x#aug{N-1}``) - and writes the
vectors to an :class:`~leader.store.EmbeddingStore` (the same format as the stores of API-only
teachers, key ``embedding``). Training then reads the store instead of running the teacher:
a stage costs the student's forward/backward only.

**The trade-off: augmentation consistency.** LeADER asks the student to match the teacher on
the *same* view. An online teacher sees a fresh random view every epoch; a cache only knows the
views it stored. The trainer (:class:`leader.views.ViewPolicy`) therefore restricts the
student's views to the cached ones - with ``N = 0`` training runs without augmentation; with
``N > 0`` each epoch picks one of the ``N`` fixed views per sample and regenerates exactly that
view (same seed, same transform) for the student. More views = more augmentation diversity and
a larger cache (``N + 1`` vectors per sample). A teacher can also stay online: the choice is per
teacher (``--teacher-cache NAME=DIR`` or ``teacher_cache: {NAME: DIR}`` in the config).

The store's ``meta.json`` records the teacher's fingerprint, the input size, the number of
views, the view seed and the augmentation, so that a cache built for another teacher, size or
augmentation is refused rather than silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..embed import embed_dataset, teacher_embed_fn
from ..store import EmbeddingStore
from ..views import fixed_view_seed, make_view, view_id
from .base import Teacher
from .store_teacher import EmbeddingStoreTeacher

log = logging.getLogger(__name__)

__all__ = ["CachedTeacher", "cache_teacher", "teacher_fingerprint", "teacher_view_info", "apply_teacher_cache"]

KEY = "embedding"


def teacher_fingerprint(teacher: Teacher) -> str:
    """A short hash of a teacher's name, width, input spec and weights (which change = new cache)."""
    h = hashlib.sha1()
    h.update(f"{teacher.dim}|{teacher.input_spec}".encode())
    mod = getattr(teacher, "module", None)
    if isinstance(mod, torch.nn.Module):
        for name, t in sorted(mod.state_dict().items()):
            t = t.detach()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            if t.numel():
                flat = t.flatten()
                sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
                h.update(sample.tobytes())
    elif isinstance(teacher, EmbeddingStoreTeacher):
        h.update(str(teacher.store_path.resolve()).encode())
    return h.hexdigest()[:16]


def teacher_view_info(teacher) -> dict | None:
    """How a teacher constrains the training views: ``None`` for an online teacher, else
    ``{"views", "view_seed", "augment", "image_size"}`` (a cache written by
    :func:`cache_teacher`). Plain embedding stores without this metadata (API imports) are
    treated as online-like: the student gets random views while the targets describe the
    un-augmented image (see :class:`EmbeddingStoreTeacher`)."""
    store = getattr(teacher, "store", None)
    if not isinstance(store, EmbeddingStore):
        return None
    meta = store.meta or {}
    if meta.get("kind") != "teacher-cache":
        return None
    return {"views": int(meta.get("views", 0)), "view_seed": int(meta.get("view_seed", 0)),
            "augment": dict(meta.get("augment") or {}), "image_size": meta.get("image_size")}


class CachedTeacher(Teacher):
    """A teacher whose embeddings are read from its cache (and computed online when missing).

    Args:
        teacher: the online teacher (its ``name``, ``dim``, ``input_spec`` are kept).
        store_path: the cache written by :func:`cache_teacher` for this teacher.
        on_miss: ``"error"`` (default: every id must be cached) or ``"online"`` (run the
            teacher for ids that are not; slower, and only correct for views the student
            sees un-augmented or in their cached form).

    Raises:
        ValueError: the cache was built for another teacher (fingerprint) or width.
    """

    def __init__(self, teacher: Teacher, store_path: str | Path, on_miss: str = "error"):
        if on_miss not in ("error", "online"):
            raise ValueError(f"on_miss must be 'error' or 'online', got {on_miss!r}")
        self.teacher = teacher
        self.name, self.dim, self.input_spec = teacher.name, teacher.dim, teacher.input_spec
        self.store_path = Path(store_path)
        self.store = EmbeddingStore.open(self.store_path)
        self.on_miss = on_miss
        if self.store.dims.get(KEY) != self.dim:
            raise ValueError(f"teacher {self.name!r} ({self.dim}-d): cache {self.store_path} holds "
                             f"{self.store.dims} (expected {{'{KEY}': {self.dim}}})")
        fp = self.store.meta.get("fingerprint")
        mine = teacher_fingerprint(teacher)
        if fp is not None and fp != mine and not isinstance(teacher, EmbeddingStoreTeacher):
            raise ValueError(f"teacher {self.name!r}: cache {self.store_path} was built for another teacher "
                             f"(fingerprint {fp}, this teacher {mine}); rebuild it with leader teachers cache")

    def embed(self, images: torch.Tensor | None, ids: Sequence[str] | None = None) -> torch.Tensor:
        if ids is None:
            raise ValueError(f"cached teacher {self.name!r} needs the sample/patch ids")
        ids = list(ids)
        device = images.device if images is not None else torch.device("cpu")
        if images is not None:
            self.input_spec.check(images, self.name)
        have = self.store.contains(ids)
        if have.all():
            return torch.from_numpy(self.store.get(ids, KEY)).to(device)
        if self.on_miss == "error" or images is None:
            missing = [i for i, h in zip(ids, have) if not h]
            raise KeyError(f"teacher {self.name!r}: {len(missing)} ids not in cache {self.store_path}: "
                           f"{missing[:5]} (build it with leader teachers cache, or on_miss='online')")
        out = torch.empty(len(ids), self.dim, dtype=torch.float32, device=device)
        idx = torch.from_numpy(np.flatnonzero(have))
        if len(idx):
            out[idx.to(device)] = torch.from_numpy(self.store.get([ids[i] for i in idx.tolist()], KEY)).to(device)
        miss = torch.from_numpy(np.flatnonzero(~have))
        out[miss.to(device)] = self.teacher.embed(images[miss.to(images.device)],
                                                  ids=[ids[i] for i in miss.tolist()])
        return out

    def _forward(self, x, ids):  # pragma: no cover - embed is overridden
        raise NotImplementedError

    def to(self, device) -> "CachedTeacher":
        if self.on_miss == "online":
            self.teacher.to(device)
        return self

    def __repr__(self) -> str:
        return f"CachedTeacher(name={self.name!r}, dim={self.dim}, store={str(self.store_path)!r})"


def apply_teacher_cache(teachers: Mapping[str, Teacher], caches: Mapping[str, str | Path] | Iterable[str] | None,
                        on_miss: str = "error") -> dict[str, Teacher]:
    """Replace the teachers named in ``caches`` by :class:`CachedTeacher` (the per-teacher choice).

    ``caches`` is ``{name: store dir}`` or a list of ``"name=DIR"`` strings (CLI)."""
    out = dict(teachers)
    if not caches:
        return out
    if not isinstance(caches, Mapping):
        pairs = {}
        for item in caches:
            if "=" not in item:
                raise ValueError(f"teacher cache {item!r} must look like NAME=DIR")
            k, v = item.split("=", 1)
            pairs[k] = v
        caches = pairs
    for name, path in caches.items():
        if name not in out:
            raise ValueError(f"teacher cache for {name!r}, but the teachers are {sorted(out)}")
        if path:
            out[name] = CachedTeacher(out[name], path, on_miss=on_miss)
    return out


def _ids_of(dataset: Dataset) -> list[str]:
    if hasattr(dataset, "item_id"):
        return [dataset.item_id(i) for i in range(len(dataset))]
    return [dataset[i]["id"] for i in range(len(dataset))]


class _Views(Dataset):
    """Items ``(i, k)`` of a dataset: ``k = -1`` the un-augmented view, else fixed view ``k``."""

    def __init__(self, base: Dataset, todo: list[tuple[int, int]], augment: Callable | None, view_seed: int):
        import copy  # noqa: PLC0415

        if hasattr(base, "transform"):
            base = copy.copy(base)
            base.transform = None
        self.base, self.todo, self.augment, self.view_seed = base, todo, augment, int(view_seed)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> dict:

        i, k = self.todo[j]
        item = self.base[i]
        x, sid = item["image"], str(item["id"])
        if k < 0:
            return {"image": x, "id": sid}
        return {"image": make_view(self.augment, x, fixed_view_seed(self.view_seed, sid, k)), "id": view_id(sid, k)}


def cache_teacher(
    teacher: Teacher,
    datasets: Sequence[Dataset],
    out: str | Path,
    *,
    views: int = 0,
    augment: Callable | None = None,
    augment_params: Mapping | None = None,
    view_seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "bf16",
    flush_every: int = 4096,
    store_dtype: str = "float32",
) -> EmbeddingStore:
    """Compute ``teacher``'s embeddings of every item of ``datasets`` into a cache store.

    Args:
        teacher: the frozen teacher.
        datasets: map-style datasets of ``{"image": [1,S,S], "id"}`` items - e.g.
            :class:`leader.patches.ImageDataset` and ``PatchDataset`` (or the shard datasets),
            at the **student's** input size ``S``; their ``transform`` is ignored.
        out: the store directory (resumable: ids already present are skipped).
        views: fixed augmented views per item in addition to the un-augmented one.
        augment: the augmentation (``PairedAugment``) for ``views > 0``; ``augment_params``
            its keyword arguments (recorded in the store so training rebuilds it exactly).
        view_seed: seed of the fixed views.
        image_size: ``S`` (recorded; training refuses a cache of another size).

    Under ``torchrun`` every rank embeds its share (see :func:`leader.embed.embed_dataset`).

    Returns:
        The store (all ids present).
    """

    if views and augment is None:
        raise ValueError("views > 0 needs the augmentation (augment=PairedAugment(...))")
    meta = {"kind": "teacher-cache", "teacher": teacher.name, "fingerprint": teacher_fingerprint(teacher),
            "views": int(views), "view_seed": int(view_seed), "augment": dict(augment_params or {}),
            "image_size": image_size, "torch": torch.__version__.split("+")[0]}
    meta = json.loads(json.dumps(meta))  # tuples -> lists: equal to what a reopened store reads back
    store = None
    for ds in datasets:
        n = len(ds)
        todo = [(i, -1) for i in range(n)] + [(i, k) for i in range(n) for k in range(int(views))]
        ids = _ids_of(ds)

        item_ids = [ids[i] if k < 0 else view_id(ids[i], k) for i, k in todo]
        store = embed_dataset(teacher_embed_fn(teacher), _Indexed(_Views(ds, todo, augment, view_seed), item_ids),
                              out, {KEY: teacher.dim}, batch_size=batch_size, num_workers=num_workers,
                              device=device, precision=precision, flush_every=flush_every, meta=meta,
                              desc=f"cache {teacher.name}", store_dtype=store_dtype)
    if store is None:
        store = EmbeddingStore.create(out, {KEY: teacher.dim}, meta=meta, dtype=store_dtype)
    return store


class _Indexed(Dataset):
    """A dataset with ``item_id`` known up front (so resumed caching skips without decoding)."""

    def __init__(self, base: Dataset, ids: list[str]):
        self.base, self.ids = base, ids

    def __len__(self) -> int:
        return len(self.ids)

    def item_id(self, i: int) -> str:
        return self.ids[i]

    def __getitem__(self, i: int) -> dict:
        return self.base[i]
