"""Two-stage LeADER distillation (paper Algorithm 1, Eq. 1-3).

Stage 1 (Algorithm 1 lines 8-14) trains the student ``S_θ`` and the disease head ``h_θD`` on
whole images against the disease teacher:  ``L = ℓ(E_D, E'_D)``.

Stage 2 (lines 15-27) trains the student and *all* heads jointly on image/patch pairs::

    L = Σ_teachers ℓ(E_t(I), h_t(S(I))) + ℓ(E_t(P), h_t(S(P)))      (Eq. 3, L = L_D + L_A)

The same augmented view of each sample goes to the student and to every teacher. Teachers are
frozen; only the student and the heads are optimised (AdamW, paper §4).

Resuming: a checkpoint (``checkpoints/last``) holds the model (safetensors + JSON config) and
the training state (optimizer, position) loaded with ``torch.load(weights_only=True)``.
Samplers are seeded per (stage, epoch) and the RNG of every step is seeded by its position,
so a resumed run continues with exactly the batches and random draws that were left (exact
with ``num_workers=0``; with worker processes the augmentation draws after a resume differ).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from leader.losses import make_loss
from leader.models.checkpoint import load_model, save_model
from leader.models.student import LeaderModel
from leader.teachers.base import Teacher

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


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where requested and supported; a null context otherwise."""
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision not in ("fp32", "32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    return nullcontext()


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

    def __init__(self, path: Path, head_names: Sequence[str]):
        self.path = Path(path)
        self.fields = ["stage", "epoch", "step", "loss"]
        for h in head_names:
            self.fields += [f"loss_{h}_image", f"loss_{h}_patch"]
        self.fields += ["lr", "samples_per_s", "time"]
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


class Trainer:
    """Runs Algorithm 1 for one student and a dict of frozen teachers.

    Args:
        model: the student with one head per teacher (keys of ``teachers``).
        teachers: ``{head_name: Teacher}``; ``teachers[stage1_head]`` is the disease expert.
        cfg: merged config (see ``configs/paper.yaml``): ``optim``, ``stage1``, ``stage2``,
            ``loss``, ``precision``, ``seed``, ``num_workers``, ``checkpoint_every``.
        out_dir: run folder; gets ``losses.csv``, ``checkpoints/last``, ``stage1/``, ``final/``.
        device: torch device.
        stage1_head: name of the disease head/teacher used in stage 1 (default ``disease``).

    Raises:
        ValueError: a teacher without a matching head or with a different width (BR-24).
    """

    def __init__(
        self,
        model: LeaderModel,
        teachers: Mapping[str, Teacher],
        cfg: Mapping,
        out_dir: str | Path,
        device: torch.device | None = None,
        stage1_head: str = "disease",
    ):
        self.model, self.teachers, self.cfg = model, dict(teachers), cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device or pick_device(cfg.get("device", "auto"))
        self.stage1_head = stage1_head
        if stage1_head not in self.teachers:
            raise ValueError(f"stage 1 needs a teacher named {stage1_head!r}; have {sorted(self.teachers)}")
        model.check_teacher_dims(self.teachers)
        self.loss_fn = make_loss(cfg.get("loss", "mse"))
        self.model.to(self.device)
        for t in self.teachers.values():
            if hasattr(t, "to"):
                t.to(self.device)
        o = cfg["optim"]
        self.optimizer = torch.optim.AdamW(
            _param_groups(model, float(o.get("weight_decay", 0.05))),
            lr=float(o["lr"]), betas=tuple(o.get("betas", (0.9, 0.999))),
        )
        self.position = {"stage": STAGE1, "epoch": 0, "sample": 0, "step": 0}
        self.ckpt_dir = self.out / "checkpoints"

    # ------------------------------------------------------------------ schedule
    def _lr_at(self, step_in_stage: int, total_in_stage: int) -> float:
        o = self.cfg["optim"]
        lr, warm = float(o["lr"]), int(o.get("warmup_steps", 0))
        if warm and step_in_stage < warm:
            return lr * (step_in_stage + 1) / warm
        span = max(1, total_in_stage - warm)
        prog = min(1.0, (step_in_stage - warm) / span)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))  # cosine to 10 %

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/last`` atomically (tmp folder + rename)."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_dir / "last.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(self.model, tmp, extra={"position": self.position})
        state = {
            "optimizer": self.optimizer.state_dict(),
            "position": dict(self.position),
        }
        torch.save(state, tmp / "training_state.pt")
        last, old = self.ckpt_dir / "last", self.ckpt_dir / "last.old"
        if old.exists():
            shutil.rmtree(old)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        if old.exists():
            shutil.rmtree(old)
        return last

    def latest_checkpoint(self) -> Path | None:
        for name in ("last", "last.old"):
            p = self.ckpt_dir / name
            if (p / "training_state.pt").is_file() and (p / "model.safetensors").is_file():
                return p
        return None

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one. Returns True when resumed."""
        path = self.latest_checkpoint()
        if path is None:
            return False
        loaded = load_model(path)
        self.model.load_state_dict(loaded.state_dict(), strict=True)
        self.model.to(self.device)
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.position = {k: int(v) for k, v in state["position"].items()}
        log.info("resumed from %s at %s", path, self.position)
        return True

    # ------------------------------------------------------------------ steps
    def _targets(self, x: torch.Tensor, ids: Sequence[str], names: Sequence[str]) -> dict:
        return {n: self.teachers[n].embed(x, ids=list(ids)).float() for n in names}

    def _step(self, stage: int, batch: dict) -> tuple[torch.Tensor, dict, int]:
        dev = self.device
        if stage == STAGE1:
            x = batch["image"].to(dev, non_blocking=True)
            ids = list(batch["id"])
            n_img = x.shape[0]
            heads = [self.stage1_head]
        else:
            xi = batch["image"].to(dev, non_blocking=True)
            xp = batch["patch"].to(dev, non_blocking=True)
            x = torch.cat([xi, xp])
            ids = list(batch["image_id"]) + list(batch["patch_id"])
            n_img = xi.shape[0]
            heads = list(self.teachers)
        with autocast_context(dev, self.cfg.get("precision", "bf16")):
            targets = self._targets(x, ids, heads)
            out = self.model(x, heads=heads)
        parts = {}
        total = None
        for h in heads:
            pred = out[h].float()
            li = self.loss_fn(pred[:n_img], targets[h][:n_img])
            parts[f"loss_{h}_image"] = li
            term = li
            if stage == STAGE2:
                lp = self.loss_fn(pred[n_img:], targets[h][n_img:])
                parts[f"loss_{h}_patch"] = lp
                term = li + lp
            total = term if total is None else total + term
        return total, parts, x.shape[0]

    def _loader(self, dataset: Dataset, stage: int, epoch: int, start: int, batch_size: int) -> DataLoader:
        seed = int(self.cfg.get("seed", 0))
        sampler = ResumableRandomSampler(len(dataset), seed, stage, epoch, start)
        nw = int(self.cfg.get("num_workers", 0))
        # worker seeds come from this generator, not from the global RNG
        gen = torch.Generator().manual_seed(_step_seed(seed, stage, epoch * 1_000_003 + start))
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=nw, generator=gen,
            drop_last=False, persistent_workers=False, pin_memory=self.device.type == "cuda",
        )

    def run_stage(self, stage: int, dataset: Dataset, log_file: LossLog) -> None:
        """Train one stage from the current position to its last epoch."""
        scfg = self.cfg[f"stage{stage}"]
        epochs, bs = int(scfg["epochs"]), int(scfg["batch_size"])
        if len(dataset) == 0:
            raise ValueError(f"stage {stage}: the dataset is empty (no images / no image-patch pairs)")
        steps_per_epoch = math.ceil(len(dataset) / bs)
        total = epochs * steps_per_epoch
        pos = self.position
        start_epoch = pos["epoch"] if pos["stage"] == stage else 0
        start_sample = pos["sample"] if pos["stage"] == stage else 0
        self.model.train()
        step_in_stage = start_epoch * steps_per_epoch + math.ceil(start_sample / bs)
        ckpt_every = int(self.cfg.get("checkpoint_every", 500))
        bar = tqdm(total=total, initial=step_in_stage, desc=f"stage {stage}", unit="step",
                   dynamic_ncols=True, disable=None)
        for epoch in range(start_epoch, epochs):
            seen = start_sample if epoch == start_epoch else 0
            batches = iter(self._loader(dataset, stage, epoch, seen, bs))
            while True:
                # the RNG of each step (augmentation in the main process, drop-path) is a
                # function of the position, so a resumed run draws exactly what it would have
                torch.manual_seed(_step_seed(int(self.cfg.get("seed", 0)), stage, pos["step"]))
                batch = next(batches, None)
                if batch is None:
                    break
                t0 = time.perf_counter()
                lr = self._lr_at(step_in_stage, total)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                loss, parts, n = self._step(stage, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"stage {stage} epoch {epoch} step {pos['step']}: loss is {loss.item()} "
                        f"(parts {{{', '.join(f'{k}: {v.item():.4g}' for k, v in parts.items())}}})"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip = self.cfg["optim"].get("grad_clip")
                if clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
                self.optimizer.step()
                seen += n if stage == STAGE1 else n // 2
                step_in_stage += 1
                pos.update(stage=stage, epoch=epoch, sample=seen, step=pos["step"] + 1)
                dt = time.perf_counter() - t0
                row = {"stage": stage, "epoch": epoch, "step": pos["step"], "loss": loss.item(),
                       "lr": lr, "samples_per_s": n / max(dt, 1e-9), "time": time.time()}
                row.update({k: v.item() for k, v in parts.items()})
                log_file.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
                if ckpt_every and pos["step"] % ckpt_every == 0:
                    self.save_checkpoint()
            pos.update(epoch=epoch + 1, sample=0)
            self.save_checkpoint()
        bar.close()

    def fit(self, stage1_data: Dataset | None, stage2_data: Dataset | None, resume: bool = False) -> Path:
        """Run stage 1 then stage 2 (either may be ``None`` to skip it).

        Returns:
            The folder of the final model (``out_dir/final``: safetensors + config.json).
        """
        if resume:
            self.resume()
        log_file = LossLog(self.out / "losses.csv", list(self.teachers))
        try:
            if stage1_data is not None and self.position["stage"] <= STAGE1:
                self.run_stage(STAGE1, stage1_data, log_file)
                save_model(self.model, self.out / "stage1")
                self.position.update(stage=STAGE2, epoch=0, sample=0)
                self.save_checkpoint()
            elif self.position["stage"] < STAGE2:
                self.position.update(stage=STAGE2, epoch=0, sample=0)
            if stage2_data is not None:
                self.run_stage(STAGE2, stage2_data, log_file)
        finally:
            log_file.close()
        final = self.out / "final"
        save_model(self.model, final, extra={"config": _jsonable(self.cfg)})
        return final


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
