"""The controlled world of the claims: chest phantoms whose two experts are known by construction.

The paper's premise (§1, §5) is that a disease expert knows lesions but not anatomy and an
anatomy expert knows anatomy but not lesions, each strong at its own task. On real data that
premise has to be measured; here it holds **by construction**, so a distillation that does not
work shows at once:

* the data are :mod:`leader.phantoms` (lungs, heart, clavicles, ribs; nodules and
  consolidations with boxes; the ``jsrt166`` landmarks), split by phantom (= patient);
* the **disease expert** sees only lesions: the embedding of a region (a whole image or a
  patch) is a fixed random linear map of how much of each lesion kind lies inside it
  (``φ_D,L = max over boxes of label L of |box ∩ region| / |box|``), plus a fixed offset. It is
  blind to where the region is;
* the **anatomy expert** sees only position: the embedding of a region is a fixed random linear
  map of Fourier features of the region's centre (as fractions of the image width and height;
  frequencies 1, 2, 3), plus a fixed offset. It is blind to lesions, and constant on whole
  images (the whole image is always centred), like the real anatomy teacher whose signal is in
  patches (issue 15).

Both experts are embedding stores (:class:`~leader.teachers.store_teacher.EmbeddingStoreTeacher`)
looked up by image / patch id, so training runs without augmentation (the stored targets
describe the un-augmented regions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.datasets.splits import assign_splits
from leader.manifest import Manifest
from leader.phantoms import LESION_LABELS, make_phantom_pack
from leader.store import EmbeddingStore

__all__ = ["make_world", "disease_features", "anatomy_features", "oracle_stores", "prepare_controlled",
           "lesion_side_labels", "FREQUENCIES", "LESION_SCALE"]

#: lesion radii of the world relative to the phantoms' defaults: a nodule of 3.6-7.7 px and a
#: consolidation of 6-12 px radius at the students' 64 px (1.4-3 % and 5-9 % of the side by default)
LESION_SCALE = {"Nodule": 4.0, "Consolidation": 2.0}

#: Fourier frequencies of the anatomy expert's position features.
FREQUENCIES = (1, 2, 3)


def make_world(out: str | Path, n_images: int = 200, size: int = 128, seed: int = 0,
               val: float = 0.2, test: float = 0.2, lesion_scale=None) -> Manifest:
    """Generate (or reuse) the phantoms of the controlled world with a patient-level split.

    Args:
        out: folder; ``out/manifest.parquet`` is reused when it exists.
        n_images: phantoms (each its own patient).
        size: side of the stored images in pixels.
        lesion_scale: lesion radii relative to :func:`leader.phantoms.make_phantom`'s, one factor
            or per label (default :data:`LESION_SCALE`: lesions that stay visible at 64 px).
        seed: seed of the phantoms and of the split.
        val, test: fractions of phantoms in the validation and test splits.

    Returns:
        The manifest (``split`` in train / val / test; labels ``Nodule``, ``Consolidation``).
    """
    out = Path(out)
    path = out / "manifest.parquet"
    if path.is_file():
        return Manifest.load(path)
    scale = LESION_SCALE if lesion_scale is None else lesion_scale
    m = make_phantom_pack(out / "phantoms", n_images=n_images, size=size, seed=seed, lesion_scale=scale)
    m = assign_splits(m, val=val, test=test, seed=seed, respect_official=False)
    m.save(path)
    return m


def _regions(manifest: Manifest, patches: pd.DataFrame | None) -> tuple[list[str], np.ndarray, list[int]]:
    """Ids, regions ``[N, 4]`` (x0, y0, x1, y1; stored-image pixels) and manifest rows of every
    image (whole-image region) and every patch."""
    df = manifest.df
    ids = [str(i) for i in df["id"]]
    w = df["width"].to_numpy(dtype=np.float64)
    h = df["height"].to_numpy(dtype=np.float64)
    regions = [np.stack([np.zeros(len(df)), np.zeros(len(df)), w, h], axis=1)]
    rows = list(range(len(df)))
    if patches is not None and len(patches):
        row_of = {i: r for r, i in enumerate(ids)}
        prow = [row_of[str(i)] for i in patches["image_id"]]
        ids = ids + [str(p) for p in patches["patch_id"]]
        regions.append(patches[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64))
        rows += prow
    return ids, np.concatenate(regions), rows


def disease_features(manifest: Manifest, regions: np.ndarray, rows: Sequence[int],
                     labels: Sequence[str] = LESION_LABELS) -> np.ndarray:
    """``float32 [N, L]``: for each region and lesion label, the largest fraction of one box of
    that label lying inside the region (1 = a whole lesion inside; 0 = none).

    Args:
        regions: ``[N, 4]`` regions in stored-image pixels of the image of each row.
        rows: the manifest row of each region.
    """
    out = np.zeros((len(regions), len(labels)), dtype=np.float32)
    col = {lab: j for j, lab in enumerate(labels)}
    for n, (r, row) in enumerate(zip(regions, rows)):
        for b in manifest.boxes(int(row)):
            j = col.get(b.label)
            if j is None:
                continue
            area = max((b.x1 - b.x0) * (b.y1 - b.y0), 1e-9)
            iw = max(0.0, min(b.x1, r[2]) - max(b.x0, r[0]))
            ih = max(0.0, min(b.y1, r[3]) - max(b.y0, r[1]))
            out[n, j] = max(out[n, j], iw * ih / area)
    return out


def anatomy_features(manifest: Manifest, regions: np.ndarray, rows: Sequence[int],
                     frequencies: Sequence[int] = FREQUENCIES) -> np.ndarray:
    """``float32 [N, 4 F]``: ``sin``/``cos`` of ``π f c`` for the region centre ``c`` (x and y as
    fractions of the stored image's width and height) and each frequency ``f``."""
    df = manifest.df
    w = df["width"].to_numpy(dtype=np.float64)[list(rows)]
    h = df["height"].to_numpy(dtype=np.float64)[list(rows)]
    cx = (regions[:, 0] + regions[:, 2]) / 2 / w
    cy = (regions[:, 1] + regions[:, 3]) / 2 / h
    feats = []
    for f in frequencies:
        for c in (cx, cy):
            feats += [np.sin(np.pi * f * c), np.cos(np.pi * f * c)]
    return np.stack(feats, axis=1).astype(np.float32)


def _linear_map(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(0.0, 1.0, size=(features.shape[1], dim)) / np.sqrt(features.shape[1])
    b = rng.normal(0.0, 0.5, size=dim)
    return (features @ A + b).astype(np.float32)


def oracle_stores(manifest: Manifest, patches: pd.DataFrame | None, out: str | Path, dim_disease: int = 32,
                  dim_anatomy: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write the two experts' embeddings of every image and patch as embedding stores.

    Args:
        manifest: the world's manifest.
        patches: every patch table the run will use (training pairs and evaluation patches),
            concatenated; ``patch_id`` values must be unique.
        out: folder; gets ``disease/`` and ``anatomy/`` stores (key ``embedding``). Existing
            stores are extended with the ids they lack (a resumed run).
        dim_disease, dim_anatomy: embedding widths.
        seed: seed of the two random linear maps.

    Returns:
        ``{"disease": path, "anatomy": path}`` (teacher specs for ``--teacher NAME=PATH``).
    """
    out = Path(out)
    ids, regions, rows = _regions(manifest, patches)
    if len(set(ids)) != len(ids):
        raise ValueError("oracle_stores: image / patch ids are not unique")
    embs = {"disease": _linear_map(disease_features(manifest, regions, rows), dim_disease, seed * 7 + 1),
            "anatomy": _linear_map(anatomy_features(manifest, regions, rows), dim_anatomy, seed * 7 + 2)}
    paths = {}
    for name, e in embs.items():
        path = out / name
        store = EmbeddingStore.create(path, {"embedding": e.shape[1]},  # reopened for appends when it exists
                                      meta={"teacher": name, "kind": "oracle", "seed": int(seed),
                                            "doc": "leader.eval.world: known by construction"})
        have = store.contains(ids)
        todo = np.flatnonzero(~have)
        if len(todo):
            store.append([ids[i] for i in todo], {"embedding": e[todo]})
        paths[name] = path
    return paths


def prepare_controlled(out: str | Path, cfg, n_images: int = 1000, size: int = 128, seed: int = 0,
                       lesion_scale=None):
    """The controlled setting of the claims runner (:class:`leader.eval.claims.World`).

    Generates (or reuses) the phantoms under ``out/world``, cuts the training pairs (from
    ``cfg.patches``), the anatomy patches (the ten named ``jsrt166`` landmarks of every test
    image: the zero-shot kNN uses the test split only) and the lesion patches (diseased +
    healthy, every split: the lesion probe trains on them), and writes both experts' stores
    under ``out/world/teachers``. Training runs without augmentation (store experts).

    Args:
        out: the claims output folder.
        cfg: the students' config (``teachers`` must give one ``disease`` and one ``anatomy``
            kind; their names are used).
        n_images, size, seed, lesion_scale: the phantoms (see :func:`make_world`; ``size`` is the
            stored side, the students see ``student.img_size``).
    """
    from leader.config import ConfigError
    from leader.eval.claims import World
    from leader.eval.features import Representation, open_source
    from leader.recipe import patch_tables, train_split
    from leader.teachers.store_teacher import EmbeddingStoreTeacher

    root = Path(out) / "world"
    m = make_world(root, n_images=n_images, size=size, seed=seed, lesion_scale=lesion_scale)
    names = {cfg.teachers_of_kind(k)[0] if cfg.teachers_of_kind(k) else None: k for k in ("disease", "anatomy")}
    if None in names:
        raise ConfigError("the controlled world needs one teacher of kind disease and one of kind anatomy in "
                          "the config's teachers:")
    if cfg.augment.enabled:
        raise ConfigError("the controlled world's experts are embedding stores (un-augmented targets): "
                          "set augment.enabled=false")
    train_tables = patch_tables(cfg, train_split(m), landmarks=False)
    every = patch_tables(cfg, m)
    split_of = dict(zip(m.df["id"].astype(str), m.df["split"].astype(str)))
    anatomy = every.landmark[every.landmark["image_id"].map(split_of) == "test"].reset_index(drop=True)
    lesion = pd.concat([every.disease, every.healthy], ignore_index=True)
    for t in (anatomy, lesion):
        t["split"] = [split_of[str(i)] for i in t["image_id"]]
    # the training pairs and the evaluation patches may share ids (same seed): one store row each
    allp = pd.concat([train_tables.pairs, anatomy, lesion], ignore_index=True).drop_duplicates("patch_id")
    paths = oracle_stores(m, allp.drop(columns=["split"], errors="ignore"), root / "teachers", seed=seed)
    teachers, reps = {}, {}
    for name, kind in names.items():
        teachers[name] = EmbeddingStoreTeacher(name, paths[kind])
        reps[name] = Representation(open_source(str(paths[kind]), name=f"{name} expert"), "embedding",
                                    label=f"{name} expert")
    n = m.df["split"].value_counts().to_dict()
    desc = (f"{len(m)} chest phantoms stored at {size} px, seen at {cfg.student.img_size} px (leader.phantoms, "
            f"seed {seed}, lesion radii x{lesion_scale or LESION_SCALE}; train {n.get('train', 0)} / val "
            f"{n.get('val', 0)} / test {n.get('test', 0)} phantoms), lesions Nodule and Consolidation with boxes; "
            "experts by construction (leader.eval.world): the disease expert sees lesion content only, the anatomy "
            "expert region position only")
    return World("controlled", m, cfg, teachers, reps, train_tables, anatomy, lesion, list(LESION_LABELS), desc,
                 teacher_reports={"disease": "by construction: lesion content only",
                                  "anatomy": "by construction: region position only"},
                 anatomy_task="landmark identity", retrieval_k=int(cfg.eval.retrieval_k),
                 entangled_labels=lesion_side_labels(m), entangled_task="lesion kind x side")


def lesion_side_labels(manifest: Manifest) -> tuple[list[str], np.ndarray]:
    """Image labels that need anatomy and disease together: lesion kind × the side it lies on.

    ``(names, float32 [N, 2 L])`` with ``names`` like ``"Nodule, patient's right"`` (patient's
    right = image left, box centre left of the image's middle): 1 where the image has a lesion
    of that kind on that side, else 0. The disease expert knows the kind but not the side; the
    anatomy expert (constant on whole images) knows neither.
    """
    names = [f"{lab}, patient's {side}" for lab in LESION_LABELS for side in ("right", "left")]
    y = np.zeros((len(manifest), len(names)), dtype=np.float32)
    widths = manifest.df["width"].to_numpy(dtype=np.float64)
    for i in range(len(manifest)):
        for b in manifest.boxes(i):
            if b.label in LESION_LABELS:
                side = 0 if (b.x0 + b.x1) / 2 < widths[i] / 2 else 1
                y[i, 2 * LESION_LABELS.index(b.label) + side] = 1.0
    return names, y
