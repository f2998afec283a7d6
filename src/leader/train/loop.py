"""Two-stage LeADER distillation (paper Algorithm 1, Eq. 1-3), on one process or many.

Stage 1 (Algorithm 1 lines 8-14) trains the student ``S_θ`` and the disease head ``h_θD`` on
whole images against the disease teacher:  ``L = ℓ(E_D, E'_D)``.

Stage 2 (lines 15-27) trains the student and *all* heads jointly on image/patch pairs::

    L = Σ_teachers ℓ(E_t(I), h_t(S(I))) + ℓ(E_t(P), h_t(S(P)))      (Eq. 3, L = L_D + L_A)

The same augmented view of each sample goes to the student and to every teacher. Teachers are
frozen; only the student and the heads are optimised (AdamW, paper §4).

Scale (``docs/distributed.md``): the same loop runs as one process or as ``torchrun``
processes (PyTorch DDP; NCCL on GPUs, gloo on CPUs). ``stageN.batch_size`` is the *global*
batch; it is split over ranks and ``grad_accum`` micro-steps (:mod:`leader.train.distributed`),
so a run with ``W`` processes computes the same steps as one process. Heads that a stage does
not train are frozen for that stage before the DDP wrapper is built (field report BR-26: no
"unused parameter" error or hang in stage 1); any other trainable parameter that gets no
gradient is an error that names it. bf16 autocast, ``channels_last`` and ``torch.compile``
are options of the config. Data comes from a map-style dataset (raw files:
:class:`leader.patches.ImageDataset` / ``PairDataset``, or random-access shards) read through a
per-rank sampler, or from a streaming shard dataset (:class:`leader.shards.ShardStream`).

Resuming: a checkpoint (``checkpoints/ckpt-NNNNNN``, written crash-safely by rank 0 only,
:mod:`leader.train.checkpoints`) holds the model
(safetensors + JSON config) and the training state (optimizer, position) loaded with
``torch.load(weights_only=True)``. The position counts *global* samples, epochs are seeded
per (stage, epoch) and each sample's augmentation is seeded by (seed, stage, epoch, index),
so a resumed run continues with exactly the batches and views that were left, with any
number of DataLoader workers and at any world size (streaming shards: exact at the same world
size and worker count, approximate otherwise). ``distributed.strategy: fsdp`` shards the
student with FSDP2 instead of DDP; its checkpoints are gathered to the same full layout.

Faults (``docs/RELIABILITY.md``): an unreadable sample is skipped at weight 0 and listed in
``RUN/skipped.json`` (``data.on_error``, ``data.max_skip_fraction``); a NaN/Inf loss or
gradient norm stops the run before the optimizer step, naming stage, step and loss term.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from leader import faults
from leader.config import Config, as_config
from leader.device import autocast_context
from leader.errors import ImageReadError, WriteError
from leader.eval.metrics import r2_cos
from leader.utils import atomic_dir, atomic_write_json, atomic_write_text, read_json
from leader.train import distributed as D
from leader.train.checkpoints import CheckpointDir
from leader.errors import skip_report
from leader.progress import Progress
from leader.views import ViewDataset, ViewPolicy, check_unaugmented

from leader.losses import make_loss
from leader.models.checkpoint import save_model
from leader.models.student import LeaderModel, load_model
from leader.teachers.base import Teacher
from leader.teachers.cache import teacher_view_info
from leader.transforms import PairedAugment, build_augment

log = logging.getLogger(__name__)

STAGE1, STAGE2 = 1, 2


class ResumableRandomSampler(Sampler[int]):
    """A random permutation of ``range(n)`` seeded by ``(seed, stage, epoch)``, from ``start``.

    Args:
        n: dataset length.
        seed: run seed.
        stage: 1 or 2 (so both stages see different orders).
        epoch: epoch index (0-based).
        start: number of *samples* of this epoch already consumed (resume position).
    """

    def __init__(self, n: int, seed: int, stage: int, epoch: int, start: int = 0):
        self.n, self.start = int(n), int(start)
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + stage * 10_007 + epoch)
        self.order = torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[self.start:])

    def __len__(self) -> int:
        return self.n - self.start


def _step_seed(seed: int, stage: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(stage) * 7_919 + int(step)) % (2**63 - 1)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class LossLog:
    """Per-step losses appended to ``losses.csv`` (flushed every row, survives crashes/resume),
    mirrored to TensorBoard when the ``tensorboard`` package is installed."""

    def __init__(self, path: Path, head_names: Sequence[str], keep_until_step: int | None = None):
        self.path = Path(path)
        self.fields = ["stage", "epoch", "step", "loss"]
        for h in head_names:
            self.fields += [f"loss_{h}_image", f"loss_{h}_patch"]
        self.fields += ["lr", "samples_per_s", "time"]
        if keep_until_step is not None and self.path.exists():
            self._truncate(int(keep_until_step))
        new = not self.path.exists()
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()
        self._tb = None
        try:  # optional
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except Exception:  # tensorboard not installed
            self._tb = None

    def _truncate(self, step: int) -> None:
        """Keep the rows up to ``step`` (a resumed run redoes the later ones); a line cut by a
        kill is dropped. Rewritten atomically."""
        with open(self.path, newline="") as fh:
            text = fh.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # partial last line
        if not lines:
            self.path.unlink()
            return
        header, keep = lines[0], [lines[0]]
        names = next(csv.reader([header]))
        for line in lines[1:]:
            vals = next(csv.reader([line]), [])
            row = dict(zip(names, vals))
            try:
                if len(vals) == len(names) and int(float(row["step"])) <= step:
                    keep.append(line)
            except (KeyError, ValueError):
                continue
        atomic_write_text(self.path, "".join(keep))

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k.startswith("loss") and v not in ("", None):
                    self._tb.add_scalar(f"stage{row['stage']}/{k}", float(v), int(row["step"]))

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _first_items(data, idx: list[int] | None, n: int, seed: int) -> list[dict]:
    """``n`` un-augmented items of a map-style dataset (indices ``idx``) or of a stream's first epoch."""
    if idx is not None:
        return [dict(data[i]) for i in idx]
    items: list[dict] = []
    stream = data.rank_stream(stage=STAGE2 if getattr(data, "kind", "image") == "pair" else STAGE1, epoch=0,
                              seed=seed, rank=0, world_size=1, micro_batch=64, num_workers=0, skip_micro=0,
                              views=ViewPolicy("plain"))
    for batch in stream:
        keys = [k for k in batch if not k.startswith("_")]
        for j in range(len(batch[keys[0]])):
            items.append({k: batch[k][j] for k in keys})
        if len(items) >= n:
            break
    return items[:n]


def read_losses(path: str | Path) -> list[dict]:
    """Read ``losses.csv`` back as a list of dicts with float values (empty cells → NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()})
    return rows


def epoch_mean_losses(rows: list[dict], stage: int) -> list[float]:
    """Mean total loss per epoch of one stage (ordered by epoch)."""
    by_epoch: dict[int, list[float]] = {}
    for r in rows:
        if int(r["stage"]) == stage:
            by_epoch.setdefault(int(r["epoch"]), []).append(r["loss"])
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


class _NullLog:
    """The loss log of ranks other than 0 (they compute the same global numbers)."""

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _Stopped(Exception):
    """``max_steps`` reached: a checkpoint was written and training stops early."""


class Trainer:
    """Runs Algorithm 1 for one student and a dict of frozen teachers, on one process or many.

    Build it through :func:`leader.recipe.distil` (the one place a run is assembled); the class
    is public for tests and for users who assemble their own data.

    Args:
        model: the student with one head per teacher (keys of ``teachers``).
        teachers: ``{head_name: Teacher}``; each name must have a role in ``cfg.teachers``
            (its ``stages``: which of stage 1 / stage 2 distil it, and its loss ``weight``).
        cfg: a :class:`leader.config.Config` (or a mapping validated into one): ``optim``,
            ``stage1``, ``stage2``, ``loss``, ``augment`` (the training views: applied here, once,
            to what student and teachers see), ``teachers``, ``precision``, ``seed``,
            ``num_workers``, ``checkpoint_every``, and the scale settings of
            ``docs/distributed.md`` (``grad_accum``, ``channels_last``, ``compile``,
            ``distributed``, ``teacher_views``, ``max_steps``, ``prefetch_factor``).
        out_dir: run folder; gets ``losses.csv``, ``checkpoints/ckpt-NNNNNN`` (+ ``last`` link),
            ``skipped.json``, ``stage1/``, ``final/``
            (written by rank 0).
        device: torch device; default from ``cfg.device`` (``cuda:LOCAL_RANK`` under torchrun).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised here.

    Raises:
        ValueError: a teacher without a matching head or with a different width (BR-24).
        ConfigError: a teacher without a role in ``cfg.teachers``, or an invalid config.
    """

    def __init__(
        self,
        model: LeaderModel,
        teachers: Mapping[str, Teacher],
        cfg: Mapping,
        out_dir: str | Path,
        device: torch.device | None = None,
    ):
        cfg = as_config(cfg)
        self.model, self.teachers, self.cfg = model, dict(teachers), cfg
        self.out = Path(out_dir)
        # which teachers each stage distils, and their loss weights (cfg.teachers)
        self.stage_heads = {STAGE1: cfg.stage_teachers(STAGE1, self.teachers),
                            STAGE2: cfg.stage_teachers(STAGE2, self.teachers)}
        self.weights = {n: float(cfg.teacher(n).weight) for n in self.teachers}
        self.target_norm = {n: cfg.teacher(n).target_norm for n in self.teachers}
        dcfg = cfg.distributed
        self.dist, dev = D.setup(device if device is not None else cfg.device,
                                 backend=dcfg.backend, timeout_s=float(dcfg.timeout_s))
        self.device = dev
        self.is_main = self.dist.is_main
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        model.check_teacher_dims(self.teachers)
        self.loss_fn = make_loss(cfg.loss)
        self.model.to(self.device)
        cl = cfg.channels_last
        self.channels_last = (self.device.type == "cuda") if cl == "auto" else bool(cl)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        for t in self.teachers.values():
            if hasattr(t, "to"):
                t.to(self.device)
            mod = getattr(t, "module", None)
            if self.channels_last and isinstance(mod, torch.nn.Module):
                mod.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.strategy = dcfg.strategy
        self.fsdp = self.strategy == "fsdp" and self.dist.distributed
        if self.fsdp:  # shard before the optimizer is built: it must hold the sharded parameters
            units = D.shard_fsdp(self.model, self.device, reshard_after_forward=dcfg.reshard)
            log.info("FSDP: student sharded over %d ranks in %d units", self.dist.world_size, units)
        o = cfg.optim
        extra = {"fused": True} if self.device.type == "cuda" and o.fused else {}
        self.optimizer = torch.optim.AdamW(
            _param_groups(model, float(o.weight_decay)), lr=float(o.lr), betas=tuple(o.betas), **extra,
        )
        self.position = {"stage": STAGE1, "epoch": 0, "sample": 0, "step": 0, "epoch_step": 0}
        self.layout: dict = {}
        self.ckpt_dir = self.out / "checkpoints"
        self._ckpts = CheckpointDir(self.ckpt_dir, keep=int(cfg.keep_checkpoints))
        self.on_error = cfg.data.on_error
        self.max_skip_fraction = float(cfg.data.max_skip_fraction)
        self._skipped: dict[tuple, dict] = {}
        self._n_data = 1
        self.views = self._view_policy()
        self._net = self._ddp = None

    @property
    def cfg(self) -> Config:
        """The run's validated :class:`~leader.config.Config` (assigning a mapping validates it)."""
        return self._cfg

    @cfg.setter
    def cfg(self, value: Config | Mapping) -> None:
        self._cfg = as_config(value)

    # ------------------------------------------------------------------ views
    def _view_policy(self) -> ViewPolicy:
        """Random views of ``cfg.augment`` with online teachers; fixed/plain views when cached
        teachers need them."""
        random_views = ViewPolicy("random", augment=build_augment(self.cfg.augment))
        if self.cfg.teacher_views == "online":
            return random_views
        infos = {n: teacher_view_info(t) for n, t in self.teachers.items()}
        infos = {n: i for n, i in infos.items() if i is not None}
        if not infos:
            return random_views
        views = {n: int(i["views"]) for n, i in infos.items()}
        n_views = min(views.values())
        if n_views == 0:
            log.warning("cached teacher(s) %s hold un-augmented views only: training without augmentation "
                        "(set teacher_views: online to augment anyway, or cache --views N)", sorted(infos))
            return ViewPolicy("plain", info=infos)
        seeds = {int(i["view_seed"]) for i in infos.values()}
        augs = {json.dumps(i["augment"], sort_keys=True) for i in infos.values()}
        if len(seeds) > 1 or len(augs) > 1:
            raise ValueError(f"cached teachers {sorted(infos)} were built with different view seeds or "
                             "augmentations; rebuild them with the same --views/--view-seed/config")
        info = next(iter(infos.values()))
        aug = PairedAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in info["augment"].items()})
        size = info.get("image_size")
        if size is not None and int(size) != int(getattr(self.model, "img_size", size)):
            raise ValueError(f"teacher cache was built at {size}x{size} but the student takes "
                             f"{self.model.img_size}x{self.model.img_size}")
        if len(set(views.values())) > 1:
            log.warning("cached teachers hold %s augmented views; using the first %d", views, n_views)
        return ViewPolicy("cached", augment=aug, n_views=n_views, view_seed=seeds.pop(), info=infos)

    # ------------------------------------------------------------------ schedule
    def _lr_at(self, step_in_stage: int, total_in_stage: int) -> float:
        o = self.cfg.optim
        lr, warm, floor = float(o.lr), int(o.warmup_steps), float(o.min_lr_fraction)
        if warm and step_in_stage < warm:
            return lr * (step_in_stage + 1) / warm
        span = max(1, total_in_stage - warm)
        prog = min(1.0, (step_in_stage - warm) / span)
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))  # cosine to min_lr_fraction

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a new ``checkpoints/ckpt-NNNNNN`` on rank 0 (crash-safe, see
        :mod:`leader.train.checkpoints`) together with the skipped-items report; all ranks wait.

        Raises (on every rank):
            WriteError: rank 0 could not write it (disk full, read-only...); the previous
                checkpoint is intact and named.
        """
        skipped = self._gather_skipped()
        err, path = None, None
        if self.dist.distributed and skipped:
            self._check_skip_limit(self._n_data)
        msd, osd = self._model_state(), self._optimizer_state()  # collective under FSDP
        if self.is_main:
            def write(tmp: Path) -> None:
                save_model(self.model, tmp, extra={"position": self.position}, state_dict=msd)
                faults.point("ckpt.after_model")
                state = {
                    "optimizer": osd,
                    "optimizer_format": "fqn" if self.fsdp else "index",
                    "position": dict(self.position),
                    "layout": dict(self.layout),
                    "strategy": self.strategy,
                }
                torch.save(state, tmp / "training_state.pt")

            try:
                path = self._ckpts.save(write, self.position)
                self._write_skip_report(skipped)
            except OSError as exc:
                err = exc
        msg = None if err is None else str(err)
        if self.dist.distributed:  # every rank raises, none waits forever
            msg = D.broadcast_object(msg)
        if err is not None:
            raise err
        if msg is not None:
            raise WriteError(0, f"rank 0 could not write a checkpoint: {msg}")
        D.barrier()
        return path if path is not None else self.ckpt_dir / "last"

    # ------------------------------------------------------------------ faults
    def _nonfinite(self, stage: int, epoch: int, step: int, what: str) -> None:
        """Stop on a NaN/Inf loss or gradient before the optimizer step (nothing is saved)."""
        last = self.latest_checkpoint(verify=False)
        keep = (f"the last good checkpoint {last} is kept; lower optim.lr, set optim.grad_clip or precision: fp32, "
                "then rerun with --resume") if last else "no checkpoint had been written yet"
        raise FloatingPointError(f"stage {stage} epoch {epoch} step {step}: {what}. Training stopped before "
                                 f"the optimizer step; {keep}.")

    def _record_skips(self, batch: Mapping, stage: int, epoch: int, n: int) -> None:
        """Remember the items a batch replaced under the ``skip`` policy (see ViewDataset)."""
        marks = batch.get("_skip")
        if not marks:
            return
        for m in marks:
            if not m:
                continue
            sid, _, reason = str(m).partition("\t")
            key = (stage, epoch, sid)
            if key not in self._skipped:
                self._skipped[key] = {"stage": stage, "epoch": epoch, "id": sid, "reason": reason}
                log.warning("skipped unreadable sample %s (stage %d epoch %d): %s", sid, stage, epoch, reason)
        if not self.dist.distributed:
            self._check_skip_limit(n)

    def _check_skip_limit(self, n: int) -> None:
        ids = {k[2] for k in self._skipped}
        limit = max(1, int(self.max_skip_fraction * n))
        if len(ids) > limit:
            if self.is_main:
                self._write_skip_report(list(self._skipped.values()))
            first = "; ".join(f"{v['id']}: {v['reason']}" for v in list(self._skipped.values())[:3])
            raise ImageReadError(
                f"{len(ids)} distinct samples are unreadable, more than data.max_skip_fraction="
                f"{self.max_skip_fraction} of {n}: the data looks broken rather than a few bad files "
                f"(first: {first}). All are listed in {self.out / 'skipped.json'}.")

    def _gather_skipped(self) -> list[dict]:
        """Skipped items of all ranks (every rank calls this; checks the skip limit)."""
        items = list(self._skipped.values())
        if self.dist.distributed:
            merged = {}
            for part in D.all_gather_object(items):
                for it in part:
                    merged.setdefault((it["stage"], it["epoch"], it["id"]), it)
            self._skipped = merged
            items = list(merged.values())
        return items

    def _write_skip_report(self, items: list[dict]) -> None:
        """``skipped.json`` next to the run: policy, counts and every skipped item with its reason."""
        if not self.is_main:
            return
        atomic_write_json(self.out / "skipped.json", skip_report(items, self.on_error))

    def _load_skip_report(self) -> None:
        p = self.out / "skipped.json"
        if p.is_file():
            for it in read_json(p).get("items", []):
                self._skipped.setdefault((int(it["stage"]), int(it["epoch"]), str(it["id"])), it)

    def latest_checkpoint(self, verify: bool = True) -> Path | None:
        """The newest complete checkpoint of this run, or ``None``; ``verify`` also checks the
        SHA-256 of its files against ``COMMIT.json`` (sizes are always checked)."""
        return self._ckpts.latest(hashes=verify)

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one (every rank). Returns True when resumed.

        A checkpoint written at any world size resumes at any other: the model and the full
        (unsharded) optimizer state are loaded everywhere and the position counts global samples.
        Only checkpoints whose files match their ``COMMIT.json`` are considered.
        """
        path = self.latest_checkpoint() if self.is_main else None
        found = D.broadcast_object(str(path) if path is not None else None)
        if found is None:
            return False
        path = Path(found)
        if not (path / "training_state.pt").is_file():
            raise FileNotFoundError(f"rank {self.dist.rank}: checkpoint {path} written by rank 0 is not visible "
                                    "here; the run folder must be on a filesystem shared by all nodes")
        loaded = load_model(path)
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
        osd = state["optimizer"]
        fmt = state.get("optimizer_format", "index")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
                StateDictOptions, set_model_state_dict, set_optimizer_state_dict)

            set_model_state_dict(self.model, loaded.state_dict(), options=StateDictOptions(full_state_dict=True))
            # strict=False: parameters never stepped yet (the anatomy head in stage 1) have no state
            fqn = osd if fmt == "fqn" else self._optim_index_to_fqn(osd)
            set_optimizer_state_dict(self.model, self.optimizer, fqn,
                                     options=StateDictOptions(full_state_dict=True, strict=False))
            # the loader initialises missing states with a zero step of its own (step=1), which
            # would change Adam's bias correction of those parameters' first real update
            for name, p in self.model.named_parameters():
                if name not in fqn["state"]:
                    self.optimizer.state.pop(p, None)
        else:
            self.model.load_state_dict(loaded.state_dict(), strict=True)
            self.model.to(self.device)
            if self.channels_last:
                self.model.to(memory_format=torch.channels_last)
            self.optimizer.load_state_dict(osd if fmt == "index" else self._optim_fqn_to_index(osd))
        self.position = {k: int(v) for k, v in state["position"].items()}
        self.position.setdefault("epoch_step", 0)
        self.layout = dict(state.get("layout") or {})
        log.info("resumed from %s at %s", path, self.position)
        return True

    # ------------------------------------------------------------------ fidelity monitor
    @torch.no_grad()
    def _monitor_fidelity(self, stage: int, epoch: int) -> None:
        """R² (variance-weighted) and mean cosine of each head of ``stage`` against its teacher on
        the monitor samples, per sample kind, appended to ``OUT/fidelity.csv``."""
        data = getattr(self, "_monitor", None)
        if data is None or not self.is_main or self.fsdp or not len(data):
            return
        heads = self._heads(stage)
        was_training = self.model.training
        self.model.eval()
        preds: dict = {h: [] for h in heads}
        targets: dict = {h: [] for h in heads}
        kinds: list[str] = []
        try:
            for i in range(0, len(data), 64):
                items = [data[j] for j in range(i, min(i + 64, len(data)))]
                x = torch.stack([it["image"] for it in items]).to(self.device)
                ids = [str(it["id"]) for it in items]
                kinds += [str(it.get("kind", "image")) for it in items]
                with autocast_context(self.device, self.cfg.precision):
                    out = self.model(x, heads=heads)
                    for h in heads:
                        targets[h].append(self.teachers[h].embed(x, ids=ids).float().cpu())
                        preds[h].append(out[h].float().cpu())
        finally:
            self.model.train(was_training)
        kinds_a = np.asarray(kinds)
        rows = []
        for h in heads:
            P, T = torch.cat(preds[h]).numpy(), torch.cat(targets[h]).numpy()
            for kind in sorted(set(kinds)):
                sel = kinds_a == kind
                if sel.sum() < 2:
                    continue
                r2, cos = r2_cos(P[sel], T[sel])
                rows.append({"stage": stage, "epoch": epoch + 1, "head": h, "kind": kind, "n": int(sel.sum()),
                             "r2": r2, "cos": cos})
                log.info("stage %d epoch %d: head %s on held-out %s (%d): R2 %.3f, cosine %.3f", stage, epoch + 1, h,
                         kind, int(sel.sum()), r2, cos)
        path = self.out / "fidelity.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["stage", "epoch", "head", "kind", "n", "r2", "cos"])
            if new:
                w.writeheader()
            w.writerows(rows)

    # ------------------------------------------------------------------ target statistics
    @torch.no_grad()
    def _set_target_stats(self, stage1_data, stage2_data) -> None:
        """Fix the normalisation of every head whose teacher has ``target_norm`` (not ``none``)
        from the teachers' embeddings of up to ``target_stats.samples`` un-augmented training
        samples of the stages the teacher is distilled in (images, and patches in stage 2).

        Every rank computes the same statistics (same samples, same frozen teachers); they are
        saved in the heads' buffers, so a resumed run reuses them.
        """
        todo = [n for n, v in self.target_norm.items() if v != "none"]
        if not todo:
            return
        tcfg = self.cfg.target_stats
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 31 + 7)
        for name in todo:
            sets = [(d, k) for st, d in ((STAGE1, stage1_data), (STAGE2, stage2_data))
                    if d is not None and name in self.stage_heads[st] for k in (("image",) if st == STAGE1
                                                                                 else ("image", "patch"))]
            embs = []
            for data, key in sets:
                n = min(len(data), max(1, tcfg.samples // max(len(sets), 1)))
                idx = torch.randperm(len(data), generator=gen)[:n].tolist() if hasattr(data, "__getitem__") else None
                items = _first_items(data, idx, n, int(self.cfg.seed))
                for i in range(0, len(items), tcfg.batch_size):
                    chunk = items[i:i + tcfg.batch_size]
                    x = torch.stack([it[key] for it in chunk]).to(self.device)
                    ids = [str(it["id" if key == "image" and "id" in it else ("image_id" if key == "image" else
                                                                               "patch_id")]) for it in chunk]
                    with autocast_context(self.device, self.cfg.precision):
                        embs.append(self.teachers[name].embed(x, ids=ids).float().cpu())
            if not embs:
                continue
            e = torch.cat(embs)
            mean, std = e.mean(0), e.std(0)
            if self.target_norm[name] == "center":
                scale = torch.ones_like(std)
            elif self.target_norm[name] == "global":
                scale = std.pow(2).mean().sqrt().expand_as(std)
            else:
                scale = std.clamp_min(float(std.mean()) * 1e-3 + 1e-8)
            self.model.heads[name].set_target_stats(mean, scale)
            log.info("teacher %s: target statistics (%s) from %d samples; |mean| %.3g, mean std %.3g",
                     name, self.target_norm[name], e.shape[0], float(mean.norm()), float(std.mean()))

    # ------------------------------------------------------------------ full states (FSDP)
    def _model_state(self):
        """Full weights for saving: ``None`` (use ``model.state_dict()``) unless FSDP-sharded,
        where every rank takes part in gathering them to rank 0 (CPU)."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: PLC0415

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _optimizer_state(self) -> dict:
        """The optimizer state to save: index-keyed as ``Optimizer.state_dict()``, or under FSDP
        the full, name-keyed state gathered to rank 0."""
        if not self.fsdp:
            return self.optimizer.state_dict() if self.is_main else {}
        from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
            StateDictOptions, get_optimizer_state_dict)

        return get_optimizer_state_dict(self.model, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _param_names(self) -> list[str]:
        """Parameter names in the optimizer's index order (the same with or without FSDP)."""
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        return [name_of[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    def _optim_index_to_fqn(self, osd: dict) -> dict:
        names = self._param_names()
        return {"state": {names[int(i)]: v for i, v in osd["state"].items()},
                "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]}

    def _optim_fqn_to_index(self, osd: dict) -> dict:
        index = {n: i for i, n in enumerate(self._param_names())}
        return {"state": {index[n]: v for n, v in osd["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}

    # ------------------------------------------------------------------ steps
    def _targets(self, x: torch.Tensor, ids: Sequence[str], names: Sequence[str]) -> dict:
        return {n: self.teachers[n].embed(x, ids=list(ids)).float() for n in names}

    def _heads(self, stage: int) -> list[str]:
        """The teachers (= heads) stage ``stage`` distils (their ``stages`` in ``cfg.teachers``)."""
        return self.stage_heads[stage]

    def _step(self, stage: int, batch: dict) -> tuple[torch.Tensor, dict, int]:
        """Forward one (micro-)batch: ``(mean loss over its real samples, parts, n real samples)``.

        Padding samples (``batch["_valid"]`` false, only at the end of an epoch under
        several processes) run through the networks (so every rank takes part in the
        gradient all-reduce) but carry no loss.
        """
        dev = self.device
        net = self._net if self._net is not None else self.model
        if stage == STAGE1:
            x = batch["image"].to(dev, non_blocking=True)
            ids = list(batch["id"])
            n_img = x.shape[0]
        else:
            xi = batch["image"].to(dev, non_blocking=True)
            xp = batch["patch"].to(dev, non_blocking=True)
            x = torch.cat([xi, xp])
            ids = list(batch["image_id"]) + list(batch["patch_id"])
            n_img = xi.shape[0]
        valid = batch.get("_valid")
        vmask = None if valid is None else torch.as_tensor(valid, dtype=torch.bool)
        nv = n_img if vmask is None else int(vmask.sum())
        if vmask is not None and nv == n_img:
            vmask = None
        elif vmask is not None:
            vmask = vmask.to(dev, non_blocking=True)
        heads = self._heads(stage)
        with autocast_context(dev, self.cfg.precision):
            targets = self._targets(x, ids, heads)
            out = net(x, heads=heads)
        parts = {}
        total = None
        for h in heads:
            pred = out[h].float()
            if self.target_norm[h] != "none":  # the loss lives in the head's normalised teacher space
                head = self.model.heads[h]
                pred, targets[h] = head.normalise(pred), head.normalise(targets[h])
            if nv == 0:  # all padding: zero loss that still reaches every parameter in use
                li = pred.sum() * 0.0
                parts[f"loss_{h}_image"] = li
                if stage == STAGE2:
                    parts[f"loss_{h}_patch"] = li
                term = li
            else:
                pi, ti = pred[:n_img], targets[h][:n_img]
                if vmask is not None:  # padding / skipped samples carry no loss
                    pi, ti = pi[vmask], ti[vmask]
                li = self.loss_fn(pi, ti)
                parts[f"loss_{h}_image"] = li
                term = li
                if stage == STAGE2:
                    pp, tp = pred[n_img:], targets[h][n_img:]
                    if vmask is not None:
                        pp, tp = pp[vmask], tp[vmask]
                    lp = self.loss_fn(pp, tp)
                    parts[f"loss_{h}_patch"] = lp
                    term = li + lp
            w = self.weights[h]
            term = term if w == 1.0 else term * w
            total = term if total is None else total + term
        return total, parts, nv

    @contextmanager
    def _stage_net(self, stage: int):
        """The network one stage trains: heads of other stages frozen, then DDP, then compile."""
        heads = self._heads(stage)
        # FSDP2 fixes which parameters reduce gradients when it first runs, so under FSDP the
        # unused heads stay trainable: they get no gradient, and AdamW skips parameters without one
        frozen = [] if self.fsdp else [p for name, h in self.model.heads.items() if name not in heads
                                       for p in h.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        net = self.model
        try:
            if self.dist.distributed and not self.fsdp:
                from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

                dcfg = self.cfg.distributed
                net = self._ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      find_unused_parameters=dcfg.find_unused_parameters,
                                      static_graph=dcfg.static_graph, broadcast_buffers=dcfg.broadcast_buffers)
            if self.cfg.compile:
                net = torch.compile(net)
            self._net = net
            yield net
        finally:
            self._net = self._ddp = None
            del net
            for p in frozen:
                p.requires_grad_(True)

    def _check_grads(self, stage: int) -> None:
        if self.cfg.distributed.find_unused_parameters:
            return
        idle = tuple(f"heads.{n}." for n in self.model.heads if n not in self._heads(stage))
        unused = [n for n in D.unused_parameters(self.model) if not n.startswith(idle)]
        if unused:
            shown = ", ".join(unused[:20]) + (f", ... ({len(unused)} in total)" if len(unused) > 20 else "")
            raise RuntimeError(
                f"stage {stage}: trainable parameter(s) received no gradient: {shown}. Freeze them "
                "(requires_grad=False), make the forward use them, or set distributed.find_unused_parameters: "
                "true (slower). Heads that a stage does not train are frozen automatically (BR-26).")

    # ------------------------------------------------------------------ data
    def _split(self, stage: int) -> tuple[int, int, int]:
        scfg = self._stage_cfg(stage)
        G = int(scfg.batch_size)
        A, mb = D.split_batch(G, self.dist.world_size, scfg.grad_accum or self.cfg.grad_accum, scfg.micro_batch_size)
        return G, A, mb

    def _loader(self, dataset, stage: int, epoch: int, start: int, epoch_step: int) -> tuple[DataLoader, int]:
        """This rank's micro-batches of one epoch from a position, and their number."""
        seed = int(self.cfg.seed)
        G, A, mb = self._split(stage)
        nw = int(self.cfg.num_workers)
        extra = {}
        if nw:
            extra = dict(prefetch_factor=int(self.cfg.prefetch_factor), persistent_workers=False)
        pin = self.device.type == "cuda"
        if hasattr(dataset, "rank_stream"):
            skip = epoch_step * A
            same = {"world": self.dist.world_size, "micro": mb, "workers": nw}
            if epoch_step and self.layout and any(self.layout.get(k) != v for k, v in same.items()):
                # another world size / micro-batch / worker count: continue at the same fraction
                frac = start / max(1, len(dataset))
                skip = int(frac * dataset.micro_batches_per_rank(self.dist.world_size, mb, nw))
                log.warning("streaming data resumed with a different layout (%s -> %s): approximate position",
                            self.layout, same)
            ds = dataset.rank_stream(stage=stage, epoch=epoch, seed=seed, rank=self.dist.rank,
                                     world_size=self.dist.world_size, micro_batch=mb, num_workers=nw,
                                     skip_micro=skip, views=self.views)
            n_micro = dataset.micro_batches_per_rank(self.dist.world_size, mb, nw) - skip
            return DataLoader(ds, batch_size=None, num_workers=nw, pin_memory=pin, **extra), n_micro
        sampler = D.RankBatchSampler(len(dataset), seed, stage, epoch, start, G,
                                         self.dist.rank, self.dist.world_size, A)
        ds = ViewDataset(dataset, self.views, seed, stage, epoch, on_error=self.on_error)
        gen = torch.Generator().manual_seed(_step_seed(seed, stage, epoch * 1_000_003 + start))
        return DataLoader(ds, batch_sampler=sampler, num_workers=nw, generator=gen, pin_memory=pin,
                          **extra), len(sampler)

    def _steps_per_epoch(self, dataset, stage: int) -> int:
        G, A, mb = self._split(stage)
        if hasattr(dataset, "rank_stream"):
            nw = int(self.cfg.num_workers)
            return math.ceil(dataset.micro_batches_per_rank(self.dist.world_size, mb, nw) / A)
        return math.ceil(len(dataset) / G)

    # ------------------------------------------------------------------ loop
    def run_stage(self, stage: int, dataset: Dataset, log_file: LossLog) -> None:
        """Train one stage from the current position to its last epoch."""
        epochs = int(self._stage_cfg(stage).epochs)
        if len(dataset) == 0:
            raise ValueError(f"stage {stage}: the dataset is empty (no images / no image-patch pairs)")
        G, A, mb = self._split(stage)
        W = self.dist.world_size
        self._n_data = len(dataset)
        steps_per_epoch = self._steps_per_epoch(dataset, stage)
        total = epochs * steps_per_epoch
        pos = self.position
        here = pos["stage"] == stage
        start_epoch = pos["epoch"] if here else 0
        start_sample = pos["sample"] if here else 0
        start_estep = pos.get("epoch_step", 0) if here else 0
        if here and start_sample and not start_estep:  # checkpoint from before epoch_step existed
            start_estep = math.ceil(start_sample / G)
        self.model.train()
        step_in_stage = start_epoch * steps_per_epoch + start_estep
        ckpt_every = int(self.cfg.checkpoint_every)
        max_steps = int(self.cfg.max_steps or 0)
        seed = int(self.cfg.seed)
        clip = self.cfg.optim.grad_clip
        bar = Progress(total, f"stage {stage}", "step", initial=step_in_stage, disable=not self.is_main)
        checked = False
        with self._stage_net(stage):
            ddp = self._ddp  # no_sync lives on the DDP wrapper (also when it is compiled)
            for epoch in range(start_epoch, epochs):
                first = epoch == start_epoch
                seen = start_sample if first else 0
                estep = start_estep if first else 0
                loader, _ = self._loader(dataset, stage, epoch, seen, estep)
                ep_sum, ep_n, ep_t0 = 0.0, 0, time.perf_counter()
                self.layout = {"world": W, "micro": mb, "accum": A, "workers": int(self.cfg.num_workers)}
                batches = iter(loader)
                while True:
                    micro = list(islice(batches, A))
                    if not micro:
                        break
                    t0 = time.perf_counter()
                    lr = self._lr_at(step_in_stage, total)
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                    # the RNG of each step (drop-path, ...) is a function of the position (and rank)
                    torch.manual_seed((_step_seed(seed, stage, pos["step"]) + self.dist.rank * 1_000_000_007)
                                      % (2**63 - 1))
                    counts = [int(torch.as_tensor(b["_valid"]).sum()) if "_valid" in b else len(b["image"])
                              for b in micro]
                    # real samples of this step over all ranks: each rank's loss is weighted by its
                    # share, so the averaged gradient is the gradient of the global-batch mean
                    n_glob = sum(counts)
                    if W > 1:  # a device tensor: no host sync before the backward passes
                        n_glob = D.all_reduce_sum(torch.tensor(float(n_glob), device=self._comm_device()))
                        n_glob = n_glob.to(self.device).clamp_(min=1)
                    self.optimizer.zero_grad(set_to_none=True)
                    sums = None
                    for m, b in enumerate(micro):
                        sync = m == len(micro) - 1
                        ctx = ddp.no_sync() if (ddp is not None and not sync) else nullcontext()
                        if self.fsdp and len(micro) > 1:  # reduce-scatter on the last micro-batch only
                            self.model.set_requires_gradient_sync(sync)
                        with ctx:
                            loss, parts, n = self._step(stage, b)
                            (loss * (n * W / (n_glob if W > 1 else max(n_glob, 1)))).backward()
                        vec = torch.stack([loss.detach().double()] + [v.detach().double() for v in parts.values()]) * n
                        sums = vec if sums is None else sums + vec
                    names = list(parts)
                    for b in micro:
                        self._record_skips(b, stage, epoch, len(dataset))
                    if W > 1:
                        sums = D.all_reduce_sum(sums.to(self._comm_device()))
                        n_glob = int(round(float(n_glob.item())))
                    means = (sums / max(n_glob, 1)).tolist()
                    loss_v = means[0]
                    if not math.isfinite(loss_v):
                        bad = [k for k, v in zip(names, means[1:]) if not math.isfinite(v)]
                        self._nonfinite(stage, epoch, pos["step"] + 1,
                                        f"the loss is {loss_v} (non-finite: {', '.join(bad) or 'total'}; parts "
                                        f"{{{', '.join(f'{k}: {v:.4g}' for k, v in zip(names, means[1:]))}}})")
                    if not checked:
                        self._check_grads(stage)
                        checked = True
                    if clip:
                        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
                        gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
                        if not math.isfinite(gnorm):
                            self._nonfinite(stage, epoch, pos["step"] + 1,
                                            f"the gradient norm is {gnorm} (loss {loss_v:.4g} is finite)")
                    faults.point("train.before_update")
                    self.optimizer.step()
                    seen += n_glob
                    estep += 1
                    step_in_stage += 1
                    pos.update(stage=stage, epoch=epoch, sample=seen, step=pos["step"] + 1, epoch_step=estep)
                    dt = time.perf_counter() - t0
                    row = {"stage": stage, "epoch": epoch, "step": pos["step"], "loss": loss_v,
                           "lr": lr, "samples_per_s": n_glob / max(dt, 1e-9), "time": time.time()}
                    row.update(dict(zip(names, means[1:])))
                    log_file.write(row)
                    ep_sum, ep_n = ep_sum + loss_v, ep_n + 1
                    bar.update(1, epoch=f"{epoch + 1}/{epochs}", loss=loss_v)
                    faults.point("train.after_step")
                    if ckpt_every and pos["step"] % ckpt_every == 0:
                        self.save_checkpoint()
                    if max_steps and pos["step"] >= max_steps:
                        self.save_checkpoint()
                        bar.close()
                        raise _Stopped
                pos.update(epoch=epoch + 1, sample=0, epoch_step=0)
                if self.is_main:
                    log.info("stage %d epoch %d/%d: mean loss %.4g over %d steps (%.1f s)%s", stage, epoch + 1,
                             epochs, ep_sum / max(ep_n, 1), ep_n, time.perf_counter() - ep_t0,
                             " (resumed mid-epoch)" if first and start_estep else "")
                self._monitor_fidelity(stage, epoch)
                n_skip = sum(1 for k in self._skipped if k[0] == stage and k[1] == epoch)
                if n_skip:
                    log.warning("stage %d epoch %d: %d unreadable sample(s) skipped (weight 0); see %s",
                                stage, epoch, n_skip, self.out / "skipped.json")
                self.save_checkpoint()
        bar.close()

    def _stage_cfg(self, stage: int):
        return self.cfg.stage1 if stage == STAGE1 else self.cfg.stage2

    def _comm_device(self) -> torch.device:
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    def fit(self, stage1_data: Dataset | None, stage2_data: Dataset | None, resume: bool = False,
            monitor: Dataset | None = None) -> Path:
        """Run stage 1 then stage 2 (either may be ``None`` to skip it).

        ``monitor``: held-out samples (``{"image": [1, S, S], "id", "kind"}``, un-augmented; e.g.
        validation images and patches, :func:`leader.recipe.monitor_dataset`): after every epoch
        the R² and cosine of each trained head against its teacher on them are appended to
        ``OUT/fidelity.csv`` and logged (rank 0; not under FSDP).

        Returns:
            The folder of the final model (``out_dir/final``: safetensors + config.json); when
            ``max_steps`` stopped the run early, the newest checkpoint folder (resume with
            ``resume=True``).

        Raises:
            FileExistsError: ``resume=False`` but the run folder already holds checkpoints.
            FloatingPointError: a NaN/Inf loss or gradient norm (nothing is saved for that step).
            WriteError: a checkpoint could not be written (the previous one is intact).
            ImageReadError: more than ``data.max_skip_fraction`` of the samples are unreadable.
        """
        for stage, data in ((STAGE1, stage1_data), (STAGE2, stage2_data)):
            if data is not None:
                check_unaugmented(data)  # the view policy augments, once
                if not self.stage_heads[stage]:
                    raise ValueError(f"stage {stage} was given data but no teacher is distilled in it "
                                     f"(cfg.teachers[*].stages); pass None to skip the stage")
        self._monitor = monitor
        existing = self.latest_checkpoint(verify=False) if not resume and self.is_main else None
        if self.dist.distributed:  # every rank refuses (rank 0 alone would leave the others waiting)
            existing = D.broadcast_object(None if existing is None else str(existing))
        if existing is not None:
            raise FileExistsError(
                f"{self.out} already holds checkpoints of a run ({existing}): "
                "continue it with --resume (Python: fit(..., resume=True)) or choose a new output folder")
        resumed = self.resume() if resume else False
        if resumed:
            self._load_skip_report()
        else:
            self._set_target_stats(stage1_data, stage2_data)
        # the log keeps the steps of the checkpoint resumed from (none when starting over,
        # e.g. after a kill before the first checkpoint); later rows are recomputed
        log_file = (LossLog(self.out / "losses.csv", list(self.teachers), keep_until_step=self.position["step"])
                    if self.is_main else _NullLog())
        try:
            if stage1_data is not None and self.position["stage"] <= STAGE1:
                self.run_stage(STAGE1, stage1_data, log_file)
                msd = self._model_state()
                if self.is_main:
                    with atomic_dir(self.out / "stage1") as tmp:
                        save_model(self.model, tmp, state_dict=msd)
                self.position.update(stage=STAGE2, epoch=0, sample=0, epoch_step=0)
                self.save_checkpoint()
            elif self.position["stage"] < STAGE2:
                self.position.update(stage=STAGE2, epoch=0, sample=0, epoch_step=0)
            if stage2_data is not None:
                self.run_stage(STAGE2, stage2_data, log_file)
        except _Stopped:
            log.info("max_steps=%s reached; stopped at %s", self.cfg.max_steps, self.position)
            return self.latest_checkpoint(verify=False) or self.ckpt_dir / "last"
        finally:
            log_file.close()
        final = self.out / "final"
        items = self._gather_skipped()
        msd = self._model_state()
        if self.is_main:
            with atomic_dir(final) as tmp:
                save_model(self.model, tmp, extra={"config": self.cfg.to_dict()}, state_dict=msd)
            self._write_skip_report(items)
            if items:
                log.warning("%d unreadable sample(s) were skipped in total; listed in %s",
                            len({it["id"] for it in items}), self.out / "skipped.json")
        D.barrier()
        return final
