"""The one composition layer: a LeADER distillation run assembled in one place.

Every caller that trains a student — ``leader train``, ``leader demo``, the ablation runner and
the claims runner — goes through :func:`distil`; nothing else constructs a
:class:`~leader.train.loop.Trainer`. The pieces are public so that a caller can stop halfway
(e.g. ``leader patches`` writes the patch tables, ``leader teachers fit`` fits an expert):

* :func:`patch_tables` — Algorithm 1 lines 1-7: diseased patches from boxes, healthy patches
  from normal images (and landmark patches for the zero-shot anatomy check), from
  ``cfg.patches`` and ``cfg.seed``;
* :func:`resolve_teachers` — the frozen experts of ``cfg.teachers`` (sources from the config
  or the command line), with their caches;
* :func:`build_student` — ``S_θ`` + one 2-layer MLP head per teacher (paper Fig. 2), seeded;
* :func:`stage_datasets` — the un-augmented stage-1 images and stage-2 image/patch pairs
  (the trainer's view policy applies ``cfg.augment`` to what student and teachers see);
* :func:`plan` — what a run will do, in words (printed before it starts);
* :func:`distil` — all of the above, then Algorithm 1 lines 8-27.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from leader.config import Config, ConfigError, as_config
from leader.manifest import Manifest
from leader.models.student import LeaderModel
from leader.patches import ImageDataset, PairDataset, PatchDataset, disease_patches, healthy_patches, landmark_patches
from leader.shards import ShardImageDataset, ShardPairDataset, ShardStream
from leader.teachers.base import Teacher
from leader.teachers.cache import apply_teacher_cache
from leader.teachers.fit import fit_anatomy_expert, fit_disease_expert
from leader.teachers.spec import load_teacher
from leader.train import distributed as D
from leader.train.loop import STAGE1, STAGE2, Trainer
from leader.utils import atomic_write_text, name_value_pairs

log = logging.getLogger(__name__)

__all__ = ["PatchTables", "patch_tables", "train_split", "resolve_teachers", "build_student", "stage_datasets",
           "plan", "distil", "fit_teacher", "MonitorDataset", "monitor_dataset"]


@dataclass
class PatchTables:
    """The patch tables of one manifest (Algorithm 1 lines 1-7; columns of :mod:`leader.patches`).

    Attributes:
        disease: one row per valid disease box (``kind='disease'``), regions in stored-image pixels.
        healthy: random squares of normal images (``kind='healthy'``).
        landmark: squares around named anatomical landmarks (``kind='landmark'``; evaluation).
        skipped: ``(image_id, box, reason)`` of boxes left out under ``patches.on_bad_box: skip``.
        context: random squares of every image (``kind='context'``; ``patches.context_per_image``,
            empty by default).
    """

    disease: pd.DataFrame
    healthy: pd.DataFrame
    landmark: pd.DataFrame
    skipped: list = field(default_factory=list)
    context: pd.DataFrame | None = None

    @property
    def pairs(self) -> pd.DataFrame:
        """Stage-2 patches: diseased + healthy (+ context), in that order."""
        parts = [self.disease, self.healthy] + ([self.context] if self.context is not None and len(self.context) else [])
        return pd.concat(parts, ignore_index=True)

    def select(self, kinds: Sequence[str]) -> pd.DataFrame | None:
        """The tables of ``kinds`` (``disease``, ``healthy``, ``landmark``, ``context``) in one table;
        ``None`` if empty.

        Raises:
            ValueError: an unknown kind.
        """
        bad = [k for k in kinds if k not in ("disease", "healthy", "landmark", "context")]
        if bad:
            raise ValueError(f"unknown patch kind(s) {bad}; known: disease, healthy, landmark, context")
        frames = [getattr(self, k) for k in kinds if getattr(self, k) is not None and len(getattr(self, k))]
        return pd.concat(frames, ignore_index=True) if frames else None

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``patches-{disease,healthy,landmark}.parquet`` (and ``patches-skipped.json``)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("disease", "healthy", "landmark"):
            paths[name] = out / f"patches-{name}.parquet"
            getattr(self, name).to_parquet(paths[name])
        if self.skipped:
            atomic_write_text(out / "patches-skipped.json", json.dumps(
                [{"image_id": s[0], "box": str(s[1]), "reason": s[2]} for s in self.skipped], indent=2))
        return paths


def patch_tables(cfg: Config | Mapping, manifest: Manifest, landmarks: bool = True) -> PatchTables:
    """Cut the patch tables of ``manifest`` with ``cfg.patches`` and ``cfg.seed``.

    Args:
        cfg: the run's config.
        manifest: any manifest (callers pass the training split for training).
        landmarks: also cut landmark patches (rows with ``jsrt166`` landmarks).

    Raises:
        BoxError: an invalid box under ``patches.on_bad_box: error``.
        ManifestError: a row with boxes but no stored size.
    """
    cfg = as_config(cfg)
    pc = cfg.patches
    dis, skipped = disease_patches(manifest, margin=pc.margin, min_size=pc.min_size, on_bad_box=pc.on_bad_box)
    hea = healthy_patches(manifest, n_per_image=pc.healthy_per_image, size_frac=tuple(pc.healthy_size_frac),
                          seed=int(cfg.seed))
    lm = landmark_patches(manifest) if landmarks else dis.iloc[0:0].copy()
    ctx = (healthy_patches(manifest, n_per_image=pc.context_per_image, size_frac=tuple(pc.healthy_size_frac),
                           seed=int(cfg.seed), kind="context") if pc.context_per_image else None)
    return PatchTables(dis, hea, lm, list(skipped), ctx)


def train_split(manifest: Manifest) -> Manifest:
    """The rows of ``manifest`` whose ``split`` is ``train`` (what teachers and students learn from)."""
    return manifest.subset((manifest.df["split"] == "train").to_numpy())


def resolve_teachers(cfg: Config | Mapping, specs: Mapping[str, str | Teacher] | Sequence[str] | None = None,
                     caches: Mapping[str, str] | Sequence[str] | None = None) -> dict[str, Teacher]:
    """The frozen experts of a run, by name.

    Sources come from ``specs`` (the command line's ``--teacher NAME=PATH``, or ready
    :class:`~leader.teachers.base.Teacher` objects) and otherwise from ``cfg.teachers[NAME].source``.
    A configured teacher without any source is not used (:func:`plan` says so). Teacher caches
    (``cfg.teacher_cache`` updated by ``caches``) replace the online teachers they name.

    Raises:
        ConfigError: a teacher given in ``specs`` that has no role in ``cfg.teachers``; or no
            teacher at all.
        ValueError: a malformed ``NAME=PATH`` item or a teacher given twice.
        FileNotFoundError: a source path that does not exist.
    """
    cfg = as_config(cfg)
    given = dict(specs) if isinstance(specs, Mapping) else name_value_pairs(specs or (), "--teacher", "NAME=PATH")
    for name in given:
        cfg.teacher(name)  # a role is required (ConfigError names how to add one)
    out: dict[str, Teacher] = {}
    for name, tc in cfg.teachers.items():
        src = given.get(name, tc.source)
        if src is None:
            continue
        out[name] = src if isinstance(src, Teacher) else load_teacher(name, str(src))
    if not out:
        raise ConfigError("no teacher to distil: give --teacher NAME=PATH (or teachers.NAME.source in the config) "
                          f"for at least one of {sorted(cfg.teachers)}")
    cache_map = dict(cfg.teacher_cache)
    cache_map.update(dict(caches) if isinstance(caches, Mapping) else
                     name_value_pairs(caches or (), "--teacher-cache", "NAME=DIR"))
    return apply_teacher_cache(out, cache_map)


def build_student(cfg: Config | Mapping, teachers: Mapping[str, Teacher]) -> LeaderModel:
    """The student ``S_θ`` (``cfg.student``) with one 2-layer MLP head per teacher, initialised
    from ``cfg.seed`` (two runs with one seed start from the same weights).

    Raises:
        ValueError: unknown backbone or invalid backbone arguments (from timm).
    """
    cfg = as_config(cfg)
    sc = cfg.student
    torch.manual_seed(int(cfg.seed))
    return LeaderModel.for_teachers(dict(teachers), backbone=sc.backbone, img_size=int(sc.img_size),
                                    hidden_dim=sc.hidden_dim, backbone_kwargs=dict(sc.backbone_kwargs),
                                    pretrained_file=sc.pretrained_file)


def stage_datasets(cfg: Config | Mapping, teachers: Mapping[str, Teacher], manifest: Manifest | None = None,
                   tables: PatchTables | None = None, *, shards: str | Path | None = None, stream: bool = False,
                   stage1_only: bool = False) -> tuple[object | None, object | None]:
    """Un-augmented stage-1 (images) and stage-2 (image/patch pairs) datasets of a run.

    A stage is ``None`` when no teacher of ``teachers`` is distilled in it (``cfg.teachers``),
    when it has no samples (no boxes and no normal images: no pairs), or with ``stage1_only``.

    Args:
        manifest: raw files (its ``train`` split is used); or
        shards: a shard folder from ``leader data shard`` (``stream``: read it sequentially).
        tables: patch tables of the training split (cut from ``cfg`` when omitted).

    Raises:
        ValueError: neither ``manifest`` nor ``shards``; shards written at another size than
            ``student.img_size``.
    """
    cfg = as_config(cfg)
    S = int(cfg.student.img_size)
    want1 = bool(cfg.stage_teachers(STAGE1, teachers))
    want2 = bool(cfg.stage_teachers(STAGE2, teachers)) and not stage1_only
    if shards is not None:
        if stream:
            s1 = ShardStream(shards, "image", shuffle_buffer=int(cfg.shuffle_buffer))
            s2 = ShardStream(shards, "pair", shuffle_buffer=int(cfg.shuffle_buffer))
        else:
            s1, s2 = ShardImageDataset(shards), ShardPairDataset(shards)
        if s1.image_size != S:
            raise ValueError(f"shards are {s1.image_size}x{s1.image_size} but student.img_size is {S}")
        return (s1 if want1 else None), (s2 if want2 and len(s2) else None)
    if manifest is None:
        raise ValueError("give a manifest (raw files) or shards (leader data shard)")
    train = train_split(manifest)
    if tables is None:
        tables = patch_tables(cfg, train, landmarks=False)
    pairs = tables.pairs
    s1 = ImageDataset(train, S) if want1 else None
    s2 = PairDataset(train, pairs, S) if want2 and len(pairs) else None
    return s1, s2


class MonitorDataset(torch.utils.data.Dataset):
    """Held-out samples for the trainer's fidelity monitor: ``{"image", "id", "kind"}``, un-augmented.

    Args:
        images: an :class:`ImageDataset` of validation images (kind ``image``), or ``None``.
        patches: a :class:`PatchDataset` of validation patches (kind ``patch``), or ``None``.
    """

    def __init__(self, images=None, patches=None):
        self.parts = [(d, k) for d, k in ((images, "image"), (patches, "patch")) if d is not None and len(d)]
        self.index = [(p, i) for p, (d, _) in enumerate(self.parts) for i in range(len(d))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict:
        p, i = self.index[j]
        data, kind = self.parts[p]
        item = data[i]
        return {"image": item["image"], "id": item["id"], "kind": kind}


def monitor_dataset(cfg: Config | Mapping, manifest: Manifest, n: int = 128) -> MonitorDataset | None:
    """Up to ``n`` validation images and ``n`` of their diseased / healthy patches (seeded), or
    ``None`` when the manifest has no ``val`` split."""
    cfg = as_config(cfg)
    val = manifest.subset((manifest.df["split"] == "val").to_numpy())
    if not len(val):
        return None
    rng = np.random.default_rng(int(cfg.seed))
    keep = np.sort(rng.permutation(len(val))[:n])
    val = val.subset(keep)
    pairs = patch_tables(cfg, val, landmarks=False).pairs
    if len(pairs) > n:
        pairs = pairs.iloc[np.sort(rng.permutation(len(pairs))[:n])].reset_index(drop=True)
    S = int(cfg.student.img_size)
    return MonitorDataset(ImageDataset(val, S), PatchDataset(val, pairs, S) if len(pairs) else None)


def plan(cfg: Config | Mapping, teachers: Mapping[str, Teacher], stage1=None, stage2=None) -> list[str]:
    """What :func:`distil` will do, one line per stage and per configured teacher left out."""
    cfg = as_config(cfg)
    lines = []
    for stage, data, what in ((STAGE1, stage1, "whole images"), (STAGE2, stage2, "image/patch pairs")):
        names = cfg.stage_teachers(stage, teachers)
        scfg = cfg.stage1 if stage == STAGE1 else cfg.stage2
        if data is None or not names or scfg.epochs == 0:
            why = ("no teacher is distilled in it" if not names else "0 epochs" if scfg.epochs == 0
                   else "no samples (no boxes and no normal images)" if stage == STAGE2 else "not requested")
            lines.append(f"stage {stage} ({what}): skipped: {why}")
        else:
            lines.append(f"stage {stage} ({what}): {len(data)} samples x {scfg.epochs} epochs, distilling "
                         + ", ".join(f"{n} ({cfg.teacher(n).kind}, weight {cfg.teacher(n).weight:g})" for n in names))
    for name, tc in cfg.teachers.items():
        if name not in teachers:
            lines.append(f"teacher {name!r} ({tc.kind}) is configured but has no source: not used, no head")
    return lines


def distil(cfg: Config | Mapping, teachers: Mapping[str, Teacher], out: str | Path, *,
           manifest: Manifest | None = None, tables: PatchTables | None = None, shards: str | Path | None = None,
           stream: bool = False, stage1_only: bool = False, resume: bool = False, reuse: bool = False,
           device: torch.device | str | None = None, say=None) -> Path:
    """Distil ``teachers`` into a new student (paper Algorithm 1) and return its final folder.

    Args:
        cfg: the run's config (``teachers`` gives each teacher's stages and weight).
        teachers: frozen experts by name (e.g. from :func:`resolve_teachers`).
        out: run folder (``losses.csv``, ``checkpoints/``, ``stage1/``, ``final/``).
        manifest / tables / shards / stream / stage1_only: the data, see :func:`stage_datasets`.
        resume: continue from the newest complete checkpoint in ``out/checkpoints``.
        reuse: return ``out/final`` untouched when it already holds a model (demo, ablations,
            claims: finished students are not trained again); otherwise resume.
        device: torch device (default ``cfg.device``; ``cuda:LOCAL_RANK`` under torchrun).
        say: callable printing progress lines (default: the module logger).

    Returns:
        ``out/final`` (``model.safetensors`` + ``config.json``); the newest checkpoint when
        ``max_steps`` stopped the run.

    Raises:
        ConfigError: a teacher without a role in ``cfg.teachers``.
        FileExistsError: ``out`` holds checkpoints of a run and neither ``resume`` nor ``reuse``.
        FloatingPointError, WriteError, ImageReadError: see :meth:`Trainer.fit`.
    """
    cfg = as_config(cfg)
    out = Path(out)
    final = out / "final"
    if reuse and (final / "model.safetensors").is_file():
        return final
    say = say or log.info
    s1, s2 = stage_datasets(cfg, teachers, manifest, tables, shards=shards, stream=stream, stage1_only=stage1_only)
    for line in plan(cfg, teachers, s1, s2):
        say(line)
    if s1 is None and s2 is None:
        raise ValueError("nothing to train: " + "; ".join(plan(cfg, teachers, s1, s2)))
    model = build_student(cfg, teachers)
    dev = torch.device(device) if isinstance(device, str) else device
    trainer = Trainer(model, teachers, cfg, out, device=dev)
    try:
        if trainer.is_main and resume:
            last = trainer.latest_checkpoint(verify=False)
            say(f"resuming from {last}" if last is not None else
                f"resume: no checkpoint in {out / 'checkpoints'}: starting from scratch")
        monitor = monitor_dataset(cfg, manifest) if manifest is not None else None
        return trainer.fit(s1, s2, resume=resume or reuse, monitor=monitor)
    finally:
        if trainer.dist.distributed:
            D.cleanup()


def fit_teacher(cfg: Config | Mapping, kind: str, manifest: Manifest, out: str | Path,
                device: str | None = None) -> Path:
    """Fit one of the demo's own experts (``leader teachers fit``) with the recipe ``cfg.fit.<kind>``.

    ``kind='disease'``: supervised on the training split's labels, on whole images and on the
    patches of :func:`patch_tables`; ``kind='anatomy'``: label-free crop-position regression,
    plus lung zones where lung annotations exist (``fit.anatomy.zones``). Each reports its
    own numbers on the validation split in ``fit_report.json``.

    Raises:
        ValueError: unknown ``kind``; no trainable label (disease).
    """
    cfg = as_config(cfg)
    common = dict(seed=int(cfg.seed), precision=cfg.precision, device=device or cfg.device)
    if kind == "disease":
        f = cfg.fit.disease
        tables = patch_tables(cfg, train_split(manifest), landmarks=False)
        # diseased and healthy patches carry labels (box label / all negative); context patches do not
        return fit_disease_expert(manifest, out, arch=f.arch, img_size=f.img_size, epochs=f.epochs,
                                  batch_size=f.batch_size, lr=f.lr, patches=tables.select(["disease", "healthy"]),
                                  augment_cfg=cfg.augment.to_dict(), **common)
    if kind == "anatomy":
        f = cfg.fit.anatomy
        return fit_anatomy_expert(manifest, out, arch=f.arch, img_size=f.img_size, epochs=f.epochs,
                                  batch_size=f.batch_size, lr=f.lr, crops_per_image=f.crops_per_image, zones=f.zones,
                                  **common)
    raise ValueError(f"kind must be 'disease' or 'anatomy', got {kind!r}")
