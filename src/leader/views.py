"""Which augmented view of a sample the student and the teachers see.

LeADER feeds one view of each sample to the student *and* every teacher (paper §4). The view
of sample ``i`` in epoch ``e`` of stage ``s`` is a function of ``(seed, s, e, i)`` only: the
random generator is re-seeded for every sample, so the batches and views are the same for any
number of processes, any number of DataLoader workers, and after a resume.

Augmentation is applied here and only here: datasets given to the trainer return
un-augmented items, and :class:`ViewDataset` (map-style data) or the shard stream turns each
into its view.

With cached teachers (``leader teachers cache``) the view must be one whose teacher
embedding was stored. :class:`ViewPolicy` has three modes:

* ``random`` - a fresh random view per (epoch, sample) drawn from ``augment`` (the config's
  ``augment:`` section, :func:`leader.transforms.build_augment`; ``None`` = no augmentation);
  teachers run online on it (the paper's setting).
* ``plain`` - no augmentation: the un-augmented view, stored in every cache under the plain id.
* ``cached`` - one of ``n_views`` fixed augmented views per sample, picked at random per
  (epoch, sample); view ``k`` of id ``x`` is regenerated exactly from ``(view_seed, x, k)``
  and the teachers are asked for id ``"x#aug{k}"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset

from leader.errors import SKIPPABLE, BoxError, ImageReadError, ManifestError

__all__ = ["ViewPolicy", "ViewDataset", "check_unaugmented", "view_id", "make_view", "sample_seed", "fixed_view_seed", "KEYS"]

#: a stand-in for a skipped item is searched this far; beyond it the data is assumed broken.
MAX_CONSECUTIVE_UNREADABLE = 64

#: (tensor key, id key) pairs a dataset item may carry.
KEYS = (("image", "id"), ("image", "image_id"), ("patch", "patch_id"))


def _h(*parts: Any) -> int:
    d = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def sample_seed(seed: int, stage: int, epoch: int, index: Any, key: str = "") -> int:
    """RNG seed of one sample's view (independent of world size, workers and resume)."""
    return _h("sample", int(seed), int(stage), int(epoch), index, key)


def view_id(sample_id: str, k: int) -> str:
    """Id of fixed augmented view ``k`` of ``sample_id`` in a teacher cache."""
    return f"{sample_id}#aug{int(k)}"


def make_view(augment: Callable, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``augment(x)`` with the CPU generator seeded by ``seed``; other RNG state is restored."""
    gen = torch.random.default_generator
    state = gen.get_state()
    try:
        gen.manual_seed(int(seed))
        out = augment(x)
    finally:
        gen.set_state(state)
    return out.to(torch.float32).clamp_(0.0, 1.0)


def fixed_view_seed(view_seed: int, sample_id: str, k: int) -> int:
    return _h("view", int(view_seed), str(sample_id), int(k))


@dataclass
class ViewPolicy:
    """How a sample becomes the view shared by student and teachers (module docstring).

    Attributes:
        mode: ``random`` | ``plain`` | ``cached``.
        augment: the augmentation: in ``random`` mode the run's (``None`` = none), in
            ``cached`` mode the one the cache was built with.
        n_views: fixed views per sample in ``cached`` mode.
        view_seed: the cache's view seed.
    """

    mode: str = "random"
    augment: Callable | None = None
    n_views: int = 0
    view_seed: int = 0
    info: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in ("random", "plain", "cached"):
            raise ValueError(f"view mode must be random, plain or cached, got {self.mode!r}")
        if self.mode == "cached" and (self.augment is None or self.n_views < 1):
            raise ValueError("cached views need the cache's augmentation and n_views >= 1")

    def pick(self, seed: int, stage: int, epoch: int, index: Any, key: str) -> int:
        return sample_seed(seed, stage, epoch, index, key + "#k") % self.n_views

    def apply(self, item: dict, seed: int, stage: int, epoch: int, index: Any) -> dict:
        """Turn an **un-augmented** item into the training view (in place; returns it)."""
        done = set()
        for tkey, ikey in KEYS:
            if tkey not in item or ikey not in item or tkey in done:
                continue
            done.add(tkey)
            if self.mode == "random":
                if self.augment is not None:
                    item[tkey] = make_view(self.augment, item[tkey], sample_seed(seed, stage, epoch, index, tkey))
            elif self.mode == "cached":
                k = self.pick(seed, stage, epoch, index, tkey)
                sid = str(item[ikey])
                item[tkey] = make_view(self.augment, item[tkey], fixed_view_seed(self.view_seed, sid, k))
                item[ikey] = view_id(sid, k)
        return item


def check_unaugmented(dataset) -> None:
    """Refuse a training dataset that augments by itself (the view policy does it, once).

    Raises:
        ValueError: ``dataset.transform`` is set.
    """
    if getattr(dataset, "transform", None) is not None:
        raise ValueError(
            f"{type(dataset).__name__} was built with transform={dataset.transform!r}: training datasets must "
            "return un-augmented items, the trainer applies the configured augmentation (config 'augment:') "
            "to the student and the teachers alike; build the dataset with transform=None")


class ViewDataset(Dataset):
    """Wraps a map-style dataset for one (stage, epoch): seeded views, padding flags.

    ``ds[j]`` for ``j >= 0`` is item ``j`` of the base dataset in its training view with
    ``"_valid": True``; ``j = -(i + 1)`` is item ``i`` again with ``"_valid": False`` (padding
    of the last global batch, weight 0).

    ``on_error="skip"``: an item that raises one of :data:`SKIPPABLE` is replaced by the next
    readable item with ``"_valid": False`` (weight 0, so the loss is the mean over the real
    samples) and ``"_skip": "<id>\\t<reason>"``; the trainer records these in ``skipped.json``.
    Every item carries ``"_skip"`` (``""`` when read normally). ``on_error="raise"`` re-raises.

    The base dataset returns **un-augmented** items (``transform=None``): the view comes from
    :class:`ViewPolicy` alone, so augmentation is applied exactly once. Datasets without a
    ``transform`` attribute (a user's own) are also called with the CPU generator seeded per
    sample, so any randomness of their own is reproducible too.

    Raises:
        ValueError: ``on_error`` is not ``raise``/``skip``, or the base dataset carries its own
            augmentation (a ``transform`` that is not ``None``).
    """

    def __init__(self, base: Dataset, policy: ViewPolicy, seed: int, stage: int, epoch: int,
                 on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        check_unaugmented(base)
        self.on_error = on_error
        self.policy, self.seed, self.stage, self.epoch = policy, int(seed), int(stage), int(epoch)
        self.base = base
        self._seed_calls = not hasattr(base, "transform")

    def __len__(self) -> int:
        return len(self.base)

    def _item(self, i: int) -> dict:
        if self._seed_calls:
            torch.random.default_generator.manual_seed(sample_seed(self.seed, self.stage, self.epoch, i))
        item = dict(self.base[i])
        return self.policy.apply(item, self.seed, self.stage, self.epoch, i)

    def _item_id(self, i: int) -> str:
        get = getattr(self.base, "item_id", None)
        return str(get(i)) if get is not None else f"index {i}"

    def __getitem__(self, j: int) -> dict:
        j = int(j)
        valid = j >= 0
        i = j if valid else -j - 1
        skip = ""
        try:
            item = self._item(i)
        except SKIPPABLE as exc:
            if self.on_error != "skip":
                if isinstance(exc, (ImageReadError, ManifestError, BoxError)):  # add where training was
                    raise type(exc)(f"{exc} (stage {self.stage}, epoch {self.epoch}, sample {self._item_id(i)}; "
                                    "data.on_error: skip would skip it at weight 0)") from exc
                raise
            skip = f"{self._item_id(i)}\t{type(exc).__name__}: {exc}"
            item = self._stand_in(i)
            valid = False
        item["_valid"] = valid
        item["_skip"] = skip
        return item

    def _stand_in(self, i: int) -> dict:
        """The next readable item after ``i`` (weight 0): keeps the batch shape when ``i`` is skipped."""
        n = len(self.base)
        for k in range(1, min(n, MAX_CONSECUTIVE_UNREADABLE) + 1):
            try:
                return self._item((i + k) % n)
            except SKIPPABLE:
                continue
        raise ImageReadError(
            f"{MAX_CONSECUTIVE_UNREADABLE} consecutive items after index {i} ({self._item_id(i)}) are unreadable; "
            "is the data folder mounted / are the manifest paths right?")
