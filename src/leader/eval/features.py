"""Frozen features for the evaluation protocols, from any source.

A *representation* is one embedding of images and patches that a protocol evaluates. It comes
from a :class:`FeatureSource`:

======================  ======================================================================
source                  spec (``leader eval ... --rep SPEC``)
======================  ======================================================================
LeADER student          checkpoint folder (``model.safetensors`` + ``config.json``, e.g.
                        ``OUT/student/final``): keys ``e_da`` (``E_DA``), one per head
                        (``disease`` = ``E'_D``, ``anatomy`` = ``E'_A``)
teacher                 teacher folder (``teacher.json`` + ``model.safetensors``): key
                        ``embedding``
any timm model          ``timm:ARCH[:WEIGHTS]`` (local weights file, never downloaded; without
                        weights the random initialisation, a useful floor)
embedding store         a store folder (``meta.json`` + ``index.parquet``) or a folder of
                        stores (the demo's ``embeddings/student``: ``images``,
                        ``patches-disease``, ``patches-landmark``); ids are looked up
======================  ======================================================================

A spec may be prefixed with a display name and suffixed with the keys to use:
``"student=/tmp/eval-demo/student/final#e_da,anatomy"``. Without keys a student gives all its
keys (E_DA, E'_D, E'_A), every other source its single key.

Model sources embed on the fly (batched, no augmentation, ``fp32`` by default) and keep the
vectors in memory by id, so one source embeds each image or patch once however many
protocols use it; with ``cache_dir`` they are also written to a resumable
:class:`~leader.store.EmbeddingStore` through :func:`leader.embed.embed_dataset`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from leader.embed import EmbedFn, embed_dataset, student_embed_fn, teacher_embed_fn
from leader.patches import ImageDataset, PatchDataset
from leader.store import EmbeddingStore
from leader.device import autocast_context, pick_device
from leader.models.student import load_model
from leader.teachers.module import ModuleTeacher

log = logging.getLogger(__name__)

#: How keys are shown in tables (paper notation).
KEY_LABELS = {"e_da": "E_DA", "disease": "E'_D", "anatomy": "E'_A", "embedding": ""}


def key_label(key: str) -> str:
    return KEY_LABELS.get(key, key)


def _manifest_df(manifest) -> pd.DataFrame:
    return getattr(manifest, "df", manifest)


_DATASETS: "OrderedDict[tuple, Dataset]" = OrderedDict()


def _shared_dataset(df: pd.DataFrame, patches: pd.DataFrame | None, size: int) -> Dataset:
    """One (pixel-caching) dataset per (images or patch table, size), shared by all sources, so that
    several representations at the same input size decode each image once. The last 4 are kept
    (each caches at most 256 MiB of resized pixels)."""
    ids = tuple(map(str, df["id"])) + tuple(map(str, df["path"]))
    key = (size, hash(ids), None if patches is None else
           hash(tuple(map(str, patches["patch_id"]))) ^ hash(patches[["x0", "y0", "x1", "y1"]].to_numpy().tobytes()))
    ds = _DATASETS.get(key)
    if ds is None:
        ds = (ImageDataset(df, size, transform=None, cache_bytes=256 << 20) if patches is None
              else PatchDataset(df, patches, size, transform=None, cache_bytes=256 << 20))
        _DATASETS[key] = ds
        while len(_DATASETS) > 4:
            _DATASETS.popitem(last=False)
    else:
        _DATASETS.move_to_end(key)
    return ds


class FeatureSource:
    """Base class: something that turns images / patches of a manifest into vectors.

    Attributes:
        name: display name (``"student"``, ``"disease teacher"``, ...).
        kind: ``student`` | ``teacher`` | ``timm`` | ``store`` | ``derived``.
        dims: ``{key: width}``.
        img_size: side the images are resized to (``None`` for stores).
    """

    name: str
    kind: str
    dims: dict[str, int]
    img_size: int | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.dims)

    def embed_dataset(self, dataset: Dataset, ids: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def embed_images(self, manifest) -> dict[str, np.ndarray]:
        """``{key: float32 [N, dim]}`` for the manifest rows, in order."""
        df = _manifest_df(manifest)
        ds = _shared_dataset(df, None, self.img_size) if self.img_size else None
        return self.embed_dataset(ds, [str(i) for i in df["id"]])

    def embed_patches(self, manifest, patches: pd.DataFrame) -> dict[str, np.ndarray]:
        """``{key: float32 [P, dim]}`` for the rows of a patch table, in order."""
        ds = _shared_dataset(_manifest_df(manifest), patches, self.img_size) if self.img_size else None
        return self.embed_dataset(ds, [str(i) for i in patches["patch_id"]])

    def representations(self, keys: Sequence[str] | None = None) -> list["Representation"]:
        keys = list(keys) if keys else self.default_keys()
        bad = [k for k in keys if k not in self.dims]
        if bad:
            raise KeyError(f"{self.name}: no key(s) {bad}; it has {self.keys}")
        return [Representation(self, k) for k in keys]

    def default_keys(self) -> list[str]:
        return self.keys


class ModelSource(FeatureSource):
    """A network embedded on the fly (student, teacher or timm model).

    Args:
        name: display name.
        kind: ``student`` | ``teacher`` | ``timm``.
        fn: :data:`leader.embed.EmbedFn` (images ``[B,1,S,S]`` in ``[0,1]`` -> ``{key: [B, d]}``).
        dims: ``{key: width}``.
        img_size: ``S``.
        precision: ``fp32`` (default) or ``bf16`` autocast.
        cache_dir: also write the vectors to a resumable embedding store there.
        module: the network (kept for fine-tuning and for moving to a device).
    """

    def __init__(self, name: str, kind: str, fn: EmbedFn, dims: Mapping[str, int], img_size: int, *,
                 precision: str = "fp32", batch_size: int = 32, cache_dir: str | Path | None = None,
                 device: str = "auto", module=None, spec: str | None = None):
        self.name, self.kind, self.fn = name, kind, fn
        self.dims = {k: int(v) for k, v in dims.items()}
        self.img_size = int(img_size)
        self.precision, self.batch_size = precision, int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device = pick_device(device)
        self.module = module
        self.spec = spec
        self.input_spec = None
        self._memo: dict[str, dict[str, np.ndarray]] = {}

    def default_keys(self) -> list[str]:
        return self.keys

    @torch.no_grad()
    def embed_dataset(self, dataset: Dataset, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if self.cache_dir is not None:
            # the store is the memory: embeds only ids it lacks, reads rows on demand (large data)
            store = embed_dataset(self.fn, dataset, self.cache_dir, self.dims, batch_size=self.batch_size,
                                  device=self.device, precision=self.precision,
                                  meta={"source": self.name, "spec": self.spec or "", "img_size": self.img_size},
                                  desc=f"embed {self.name}")
            return {k: store.get(list(ids), k) for k in self.dims}
        todo = [i for i, x in enumerate(ids) if x not in self._memo]
        if todo:
            got = self._run(Subset(dataset, todo))
            for r, i in enumerate(todo):
                self._memo[ids[i]] = {k: got[k][r] for k in self.dims}
        return {k: np.stack([self._memo[x][k] for x in ids]).astype(np.float32) if len(ids)
                else np.zeros((0, d), np.float32) for k, d in self.dims.items()}

    def _run(self, dataset: Dataset) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.dims}
        if self.module is not None and hasattr(self.module, "to"):
            self.module.to(self.device)
        for batch in DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=0):
            x = batch["image"].to(self.device)
            with autocast_context(self.device, self.precision):
                res = self.fn(x, list(batch["id"]))
            for k, d in self.dims.items():
                v = res[k].float().cpu().numpy()
                if v.shape != (x.shape[0], d):
                    raise ValueError(f"{self.name}: key {k!r} has shape {v.shape}, expected ({x.shape[0]}, {d})")
                out[k].append(v)
        return {k: np.concatenate(v) for k, v in out.items()}


class StoreSource(FeatureSource):
    """Precomputed vectors in one or more :class:`~leader.store.EmbeddingStore` folders.

    Ids are looked up in each store in turn (image ids and patch ids may live in different
    stores, as in the demo's ``embeddings/<model>/{images,patches-*}``). Keys are those every
    store has.

    Raises:
        KeyError (on lookup): ids missing from all stores; the message names some of them.
    """

    def __init__(self, name: str, paths: Sequence[str | Path]):
        if not paths:
            raise ValueError(f"{name}: no embedding store given")
        self.name, self.kind = name, "store"
        self.stores = [EmbeddingStore.open(p) for p in paths]
        keys = [set(s.dims) for s in self.stores]
        common = set.intersection(*keys)
        if not common:
            raise ValueError(f"{name}: the stores {list(map(str, paths))} have no key in common")
        first = self.stores[0].dims
        self.dims = {k: first[k] for k in first if k in common}
        for s in self.stores:
            for k in self.dims:
                if s.dims[k] != self.dims[k]:
                    raise ValueError(f"{name}: key {k!r} is {self.dims[k]} wide in one store and {s.dims[k]} in {s.path}")
        self.img_size = None
        self.paths = [Path(p) for p in paths]

    def default_keys(self) -> list[str]:
        return self.keys

    def embed_dataset(self, dataset, ids: Sequence[str]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in ids]
        where = np.full(len(ids), -1)
        for si, s in enumerate(self.stores):
            todo = np.flatnonzero(where < 0)
            if not len(todo):
                break
            have = s.contains([ids[i] for i in todo])
            where[todo[have]] = si
        missing = [ids[i] for i in np.flatnonzero(where < 0)]
        if missing:
            raise KeyError(f"{self.name}: {len(missing)} id(s) not in the embedding store(s) "
                           f"{[str(p) for p in self.paths]}, e.g. {missing[:3]}; embed them first "
                           "(leader embed) or evaluate the checkpoint instead")
        out = {}
        for k, d in self.dims.items():
            arr = np.zeros((len(ids), d), np.float32)
            for si, s in enumerate(self.stores):
                rows = np.flatnonzero(where == si)
                if len(rows):
                    arr[rows] = s.get([ids[i] for i in rows], k)
            out[k] = arr
        return out


class DerivedSource(FeatureSource):
    """Vectors computed from other representations (e.g. the concatenation ensemble)."""

    def __init__(self, name: str, parts: Sequence["Representation"], combine: Callable[[list[np.ndarray]], np.ndarray],
                 dim: int):
        self.name, self.kind = name, "derived"
        self.parts = list(parts)
        self.combine = combine
        self.dims = {"embedding": int(dim)}
        self.img_size = None

    def embed_images(self, manifest) -> dict[str, np.ndarray]:
        return {"embedding": self.combine([p.images(manifest) for p in self.parts])}

    def embed_patches(self, manifest, patches: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"embedding": self.combine([p.patches(manifest, patches) for p in self.parts])}


@dataclass
class Representation:
    """One key of one source, e.g. the student's ``E_DA``; what protocols evaluate."""

    source: FeatureSource
    key: str
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        kl = key_label(self.key)
        return f"{self.source.name} {kl}".strip() if kl else self.source.name

    @property
    def dim(self) -> int:
        return self.source.dims[self.key]

    def images(self, manifest) -> np.ndarray:
        return self.source.embed_images(manifest)[self.key]

    def patches(self, manifest, patches: pd.DataFrame) -> np.ndarray:
        return self.source.embed_patches(manifest, patches)[self.key]


# ---------------------------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------------------------
def student_source(path_or_model, name: str = "student", **kw) -> ModelSource:
    """A LeADER student (checkpoint folder or :class:`~leader.models.LeaderModel`)."""
    model = load_model(path_or_model) if isinstance(path_or_model, (str, Path)) else path_or_model
    model.eval()
    dims = {"e_da": model.e_da_dim, **model.head_dims}
    return ModelSource(name, "student", student_embed_fn(model), dims, model.img_size, module=model,
                       spec=str(path_or_model) if isinstance(path_or_model, (str, Path)) else None, **kw)


def teacher_source(teacher, name: str | None = None, kind: str = "teacher", **kw) -> ModelSource:
    """A :class:`~leader.teachers.Teacher` (embedded at its own input size)."""
    size = int(getattr(getattr(teacher, "input_spec", None), "size", 224))
    src = ModelSource(name or teacher.name, kind, teacher_embed_fn(teacher), {"embedding": teacher.dim}, size,
                      module=getattr(teacher, "module", None), **kw)
    src.input_spec = getattr(teacher, "input_spec", None)
    return src


def timm_source(arch: str, weights: str | Path | None = None, name: str | None = None, *,
                source_kw: Mapping | None = None, **timm_kwargs) -> ModelSource:
    """Any timm model as a frozen feature extractor (pooled features, ``num_classes=0``)."""
    t = ModuleTeacher.from_timm(name or arch, arch, weights=weights, **timm_kwargs)
    src = teacher_source(t, name or f"timm {arch}", kind="timm", **dict(source_kw or {}))
    src.spec = f"timm:{arch}" + (f":{weights}" if weights else "")
    return src


def _store_dirs(path: Path) -> list[Path]:
    if (path / "meta.json").is_file() and (path / "index.parquet").is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "meta.json").is_file()
                  and (p / "index.parquet").is_file()) if path.is_dir() else []


def open_source(spec: str, name: str | None = None, **kw) -> FeatureSource:
    """Build a :class:`FeatureSource` from a spec (see the module docstring).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a folder that is none of the known kinds.
    """
    if spec.startswith("timm:"):
        parts = spec.split(":", 2)
        weights = parts[2] if len(parts) > 2 and parts[2] else None
        return timm_source(parts[1], weights, name=name, source_kw=kw)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"representation source {spec} does not exist")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return student_source(path, name=name or "student", **kw)
    if (path / "teacher.json").is_file():
        t = ModuleTeacher.from_checkpoint_dir(path)
        return teacher_source(t, name=name or f"{t.name} teacher", **kw)
    stores = _store_dirs(path)
    if stores:
        return StoreSource(name or path.name, stores)
    raise ValueError(
        f"{spec} is not a student checkpoint (config.json + model.safetensors), a teacher folder "
        "(teacher.json), an embedding store (meta.json + index.parquet) or a folder of stores; "
        "for a timm model use timm:ARCH[:WEIGHTS]")


def parse_rep_spec(text: str) -> tuple[str | None, str, list[str] | None]:
    """``"[NAME=]SPEC[#key,key]"`` -> ``(name, spec, keys)``."""
    name = None
    if "=" in text and not text.startswith("timm:") and not Path(text).exists():
        name, text = text.split("=", 1)
        name = name.strip() or None
    keys = None
    if "#" in text:
        text, k = text.rsplit("#", 1)
        keys = [x.strip() for x in k.split(",") if x.strip()]
    return name, text, keys


def load_representations(specs: Sequence[str], **kw) -> list[Representation]:
    """Representations for ``--rep`` specs, in order (one source per spec, shared by its keys)."""
    reps: list[Representation] = []
    for s in specs:
        name, spec, keys = parse_rep_spec(s)
        src = open_source(spec, name=name, **kw)
        reps += src.representations(keys)
    names = [r.name for r in reps]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"two representations are both called {sorted(dup)}; name them with NAME=SPEC")
    return reps


def demo_representations(demo_dir: str | Path, *, student_keys: Sequence[str] | None = None,
                         **kw) -> list[Representation]:
    """The demo's student (E_DA and one key per head) and every teacher it fitted, from ``leader demo --out DIR``."""
    d = Path(demo_dir)
    reps = open_source(str(d / "student" / "final"), name="student", **kw).representations(student_keys)
    tdir = d / "teachers"
    for t in sorted(p.name for p in tdir.iterdir() if (p / "teacher.json").is_file()) if tdir.is_dir() else []:
        reps += open_source(str(tdir / t), name=f"{t} teacher", **kw).representations()
    return reps
