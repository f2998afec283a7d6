"""Recipes that make real expert teachers from data (``leader teachers fit``).

No pretrained CXR expert can be downloaded on an offline machine, so the demo trains its own:

* **Disease expert** — a timm CNN trained *supervised* on the manifest's disease labels
  (multi-label BCE, unknown labels masked) on whole images and on patches cut around the
  disease boxes (box label positive) and healthy patches (all labels negative). Its pooled
  features are ``E_D``. This stands in for Google CXR Foundation (paper §4).
* **Anatomy expert** — a timm CNN trained *without disease labels* to know where in the chest
  a view comes from: for a random square crop of a radiograph it regresses the crop's
  normalised centre ``(cx, cy)`` in ``[0, 1]`` (fractions of the stored image width/height)
  and its side as a fraction of the image width. Its pooled features are ``E_A``. This stands
  in for Adam (paper §4, refs [31, 71]), which learns anatomy from image structure alone.

Users with real experts skip this and plug those in (``--teacher NAME=PATH``).
Both recipes write the folder read by :meth:`ModuleTeacher.from_checkpoint_dir`
(``teacher.json`` + ``model.safetensors``), plus ``fit_log.csv`` and ``fit_report.json``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import timm
import torch
from safetensors.torch import save_file
from sklearn.metrics import r2_score, roc_auc_score
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from leader.eval.anatomy import knn_accuracy
from leader.manifest import Manifest
from leader.patches import ImageDataset, PatchDataset
from leader.progress import Progress
from leader.zones import ZONE_LABELS, zone_patches
from leader.teachers.base import InputSpec
from leader.teachers.module import save_teacher
from leader.device import autocast_context, pick_device
from leader.transforms import build_augment
from leader.utils import atomic_write_text


class _WithTargets(Dataset):
    """Wraps a dataset returning ``{"image", "index", ...}`` and adds a float32 target row."""

    def __init__(self, base: Dataset, targets: np.ndarray):
        self.base, self.targets = base, torch.as_tensor(targets, dtype=torch.float32)
        if len(base) != len(targets):
            raise ValueError(f"{len(base)} samples but {len(targets)} target rows")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        return {"image": item["image"], "target": self.targets[i]}


def _patch_targets(patches: pd.DataFrame, label_names: Sequence[str]) -> np.ndarray:
    """Disease patch: its box label is 1, other labels unknown (NaN). Healthy patch: all 0."""
    out = np.full((len(patches), len(label_names)), np.nan, dtype=np.float32)
    col = {n: j for j, n in enumerate(label_names)}
    for i, (kind, label) in enumerate(zip(patches["kind"], patches["label"])):
        if kind == "healthy":
            out[i] = 0.0
        elif label in col:
            out[i, col[label]] = 1.0
    return out


def trainable_labels(manifest: Manifest, min_pos: int = 1, min_neg: int = 1) -> list[str]:
    """Label names with at least ``min_pos`` positives and ``min_neg`` negatives in the manifest."""
    y = manifest.labels_array()
    keep = []
    for j, name in enumerate(manifest.label_names):
        col = y[:, j]
        if np.sum(col == 1) >= min_pos and np.sum(col == 0) >= min_neg:
            keep.append(name)
    return keep


def _run_epochs(model_fn, params, loader, loss_fn, epochs, lr, weight_decay, device, precision,
                log_path: Path, desc: str) -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
    epoch_losses = []
    with open(log_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "loss", "lr"])
        bar = Progress(total, desc, "step")
        step = 0
        for epoch in range(epochs):
            losses = []
            for batch in loader:
                x = batch["image"].to(device)
                y = batch["target"].to(device)
                with autocast_context(device, precision):
                    pred = model_fn(x)
                loss = loss_fn(pred.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 2.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                w.writerow([epoch, step, loss.item(), sched.get_last_lr()[0]])
                bar.update(1, epoch=f"{epoch + 1}/{epochs}", loss=loss.item())
            fh.flush()
            epoch_losses.append(float(np.mean(losses)))
        bar.close()
    return epoch_losses


def _masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = ~torch.isnan(target)
    if not mask.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], target[mask])


def fit_disease_expert(
    manifest: Manifest,
    out_dir: str | Path,
    *,
    arch: str = "resnet18",
    img_size: int = 224,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    labels: Sequence[str] | None = None,
    patches: pd.DataFrame | None = None,
    augment_cfg: Mapping | None = None,
    timm_kwargs: Mapping | None = None,
    seed: int = 0,
    precision: str = "bf16",
    device: str = "auto",
    num_workers: int = 0,
    name: str = "disease-expert",
) -> Path:
    """Train a supervised disease expert and save it as a frozen teacher folder.

    Args:
        manifest: rows of the ``train`` split are used; labels 1/0/NaN (NaN is masked).
        out_dir: output folder (created).
        arch: any timm architecture name (``pretrained=False``).
        img_size: the teacher's input size (its :class:`InputSpec` ``size``), pixels.
        labels: label names to learn; default: every label with a positive and a negative.
        patches: diseased + healthy patches of the training split (a patch table, e.g.
            :attr:`leader.recipe.PatchTables.pairs`); a disease patch's box label is positive,
            a healthy patch is negative for every label. ``None``: whole images only.

    Returns:
        ``out_dir`` containing ``teacher.json``, ``model.safetensors``, ``classifier.safetensors``,
        ``fit_log.csv`` and ``fit_report.json`` (labels, per-epoch loss, train AUC per label).

    Raises:
        ValueError: no label has both a positive and a negative example.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = pick_device(device)
    train = _split(manifest, "train")
    names = list(labels) if labels is not None else trainable_labels(train)
    if not names:
        raise ValueError("disease expert: no label has both a positive and a negative example in the train split")
    y_img = train.labels_array()[:, [train.label_names.index(n) for n in names]]
    aug = build_augment(augment_cfg)
    parts: list[Dataset] = [_WithTargets(ImageDataset(train, img_size, transform=aug), y_img)]
    patches = patches if patches is not None else pd.DataFrame(columns=["kind", "label"])
    if len(patches):
        parts.append(_WithTargets(PatchDataset(train, patches, img_size, transform=aug),
                                  _patch_targets(patches, names)))
    data = ConcatDataset(parts)
    spec = InputSpec(size=img_size, channels=3)
    tk = dict(timm_kwargs or {})
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **tk).to(dev)
    head = torch.nn.Linear(backbone.num_features, len(names)).to(dev)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers)
    backbone.train()
    t0 = time.time()
    losses = _run_epochs(lambda x: head(backbone(spec.convert(x))),
                         list(backbone.parameters()) + list(head.parameters()),
                         loader, _masked_bce, epochs, lr, weight_decay, dev, precision,
                         out / "fit_log.csv", "fit disease expert")
    seconds = time.time() - t0
    backbone.eval()
    auc = _auc_on(backbone, head, spec, data, dev, precision, names)
    val = _split(manifest, "val")
    validation: dict = {"split": "val", "n_images": len(val)}
    if len(val):
        y_val = val.labels_array(names)
        vauc = _auc_on(backbone, head, spec, _WithTargets(ImageDataset(val, img_size), y_val), dev, precision, names)
        macro = float(np.mean(list(vauc.values()))) if vauc else float("nan")
        validation.update(auc=vauc, macro_auc=macro, summary=f"val macro AUC {macro:.3f} over {len(vauc)} labels "
                          f"({len(val)} images)")

    save_teacher(backbone.cpu(), arch, tk, spec, name, out)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(out / "classifier.safetensors"))
    report = {"kind": "disease", "arch": arch, "img_size": img_size, "labels": names,
              "n_images": len(train), "n_disease_patches": int((patches["kind"] == "disease").sum()),
              "n_healthy_patches": int((patches["kind"] == "healthy").sum()),
              "epoch_loss": losses, "train_auc": auc, "validation": validation, "seconds": round(seconds, 1),
              "note": "train_auc: on the training samples (a fit check); validation: the manifest's val split "
                      "(images the expert never saw)"}
    atomic_write_text(out / "fit_report.json", json.dumps(report, indent=2))
    return out


def _split(manifest: Manifest, name: str) -> Manifest:
    return manifest.subset((manifest.df["split"] == name).to_numpy())


@torch.no_grad()
def _auc_on(backbone, head, spec, data, dev, precision, names) -> dict:
    """AUC per label of the expert's own classifier on ``data`` (labels with both values)."""
    preds, ys = [], []
    for batch in DataLoader(data, batch_size=64):
        with autocast_context(dev, precision):
            p = head(backbone(spec.convert(batch["image"].to(dev))))
        preds.append(p.float().cpu().numpy())
        ys.append(batch["target"].numpy())
    p, y = np.concatenate(preds), np.concatenate(ys)
    out = {}
    for j, n in enumerate(names):
        m = ~np.isnan(y[:, j])
        if m.sum() and len(np.unique(y[m, j])) == 2:
            out[n] = round(float(roc_auc_score(y[m, j], p[m, j])), 4)
    return out


class PositionCropDataset(Dataset):
    """Random square crops of radiographs with their position in the image as target.

    Each item is ``{"image": float32 [1, S, S] in [0, 1], "target": float32 [3]}`` where the
    target is ``(cx, cy, side)``: crop centre as fractions of the stored image width and height
    and the crop side as a fraction of the width. One crop in ``crops_per_image`` is the whole
    image (target ``(0.5, 0.5, 1.0)``). Crops are drawn from the image resized to
    ``base_size`` (kept in memory), fully inside the image, side in ``side_frac`` of the width.
    Item ``i`` is crop ``i % crops_per_image`` of image ``i // crops_per_image``; its RNG is
    seeded by ``(seed, epoch, i)`` so an epoch is reproducible (call :meth:`set_epoch`).
    """

    def __init__(self, manifest: Manifest, out_size: int, crops_per_image: int = 6,
                 base_size: int = 384, side_frac=(0.2, 0.7), seed: int = 0, jitter: bool = True):
        self.images = ImageDataset(manifest, base_size, transform=None)
        self.out_size, self.k, self.side_frac = out_size, int(crops_per_image), side_frac
        self.seed, self.epoch, self.jitter = seed, 0, jitter

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images) * self.k

    def __getitem__(self, i: int) -> dict:
        img = self.images[i // self.k]["image"]  # [1, B, B]
        base = img.shape[-1]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if i % self.k == 0:
            side, x0, y0 = base, 0, 0
        else:
            side = int(round(rng.uniform(*self.side_frac) * base))
            x0 = int(rng.integers(0, base - side + 1))
            y0 = int(rng.integers(0, base - side + 1))
        crop = img[:, y0:y0 + side, x0:x0 + side]
        crop = F.interpolate(crop[None], size=(self.out_size, self.out_size), mode="bilinear",
                             antialias=True, align_corners=False)[0]
        if self.jitter:
            gain = float(rng.uniform(0.8, 1.2))
            bias = float(rng.uniform(-0.1, 0.1))
            crop = ((crop - 0.5) * gain + 0.5 + bias).clamp(0, 1)
        target = torch.tensor([(x0 + side / 2) / base, (y0 + side / 2) / base, side / base],
                              dtype=torch.float32)
        return {"image": crop, "target": target}


class _ZoneTargets(Dataset):
    """Zone patches as ``{"image", "target"}`` with ``target = (nan, nan, nan, class index)``."""

    def __init__(self, manifest: Manifest, zones: pd.DataFrame, size: int):
        self.base = PatchDataset(manifest, zones, size)
        self.cls = torch.as_tensor([ZONE_LABELS.index(z) for z in zones["label"]], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        t = torch.full((4,), float("nan"))
        t[3] = self.cls[i]
        return {"image": self.base[i]["image"], "target": t}


class _PositionTargets(Dataset):
    """:class:`PositionCropDataset` items with a 4th target entry ``nan`` (no zone class)."""

    def __init__(self, base: "PositionCropDataset"):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        return {"image": item["image"], "target": torch.cat([item["target"], torch.tensor([float("nan")])])}


def _position_zone_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of ``(cx, cy, side)`` where known + cross-entropy of the zone class where known.

    ``pred``: ``[B, 3 + Z]`` (position, then zone logits); ``target``: ``[B, 4]`` (position or
    NaN, zone index or NaN).
    """
    pos, cls = target[:, :3], target[:, 3]
    loss = pred.sum() * 0.0
    has_pos = ~torch.isnan(pos[:, 0])
    if has_pos.any():
        loss = loss + F.mse_loss(pred[has_pos, :3], pos[has_pos])
    has_cls = ~torch.isnan(cls)
    if has_cls.any():
        loss = loss + F.cross_entropy(pred[has_cls, 3:], cls[has_cls].long())
    return loss


def fit_anatomy_expert(
    manifest: Manifest,
    out_dir: str | Path,
    *,
    arch: str = "convnext_atto",
    img_size: int = 224,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    crops_per_image: int = 6,
    zones: bool = True,
    timm_kwargs: Mapping | None = None,
    seed: int = 0,
    precision: str = "bf16",
    device: str = "auto",
    num_workers: int = 0,
    name: str = "anatomy-expert",
) -> Path:
    """Train an anatomy expert without disease labels: where in the chest is this view?

    Targets (disease labels are never read), on the manifest's ``train`` split:

    * every image: the position of random square crops, ``(cx, cy, side)`` as fractions of the
      image (MSE; :class:`PositionCropDataset`) — self-supervised;
    * with ``zones`` and rows with lung annotations (manual masks, lung boxes, JSRT/SCR
      contours): the lung zone of zone patches (right/left × upper/middle/lower, mediastinum,
      outside; :func:`leader.zones.zone_patches`, coarse box-derived zones excluded), by
      cross-entropy — anatomy supervision from real annotations (issue 15).

    Validation (``fit_report.json`` → ``validation``), on the ``val`` split: the position R²
    of the expert's own regressor on fresh crops and, where val rows have lung annotations,
    its zone accuracy and the zero-shot 5-NN zone accuracy of its embedding.

    Returns:
        ``out_dir`` with ``teacher.json``, ``model.safetensors``, ``regressor.safetensors``,
        ``fit_log.csv`` and ``fit_report.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = pick_device(device)
    train = _split(manifest, "train")
    crops = PositionCropDataset(train, img_size, crops_per_image=crops_per_image, seed=seed)
    zt = _zone_table(train) if zones else None
    parts: list[Dataset] = [_PositionTargets(crops)]
    if zt is not None and len(zt):
        parts.append(_ZoneTargets(train, zt, img_size))
    data = ConcatDataset(parts)
    spec = InputSpec(size=img_size, channels=3)
    tk = dict(timm_kwargs or {})
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **tk).to(dev)
    head = torch.nn.Linear(backbone.num_features, 3 + len(ZONE_LABELS)).to(dev)

    class _EpochLoader:
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return math.ceil(len(data) / batch_size)

        def __iter__(self):
            crops.set_epoch(self.epoch)
            gen = torch.Generator().manual_seed(seed * 7919 + self.epoch)
            self.epoch += 1
            return iter(DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen,
                                   num_workers=num_workers))

    backbone.train()
    t0 = time.time()
    losses = _run_epochs(lambda x: head(backbone(spec.convert(x))),
                         list(backbone.parameters()) + list(head.parameters()),
                         _EpochLoader(), _position_zone_loss, epochs, lr, weight_decay, dev, precision,
                         out / "fit_log.csv", "fit anatomy expert")
    seconds = time.time() - t0
    backbone.eval()
    validation = _anatomy_validation(backbone, head, spec, _split(manifest, "val"), img_size, crops_per_image,
                                     seed, dev, precision, zones)
    save_teacher(backbone.cpu(), arch, tk, spec, name, out)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(out / "regressor.safetensors"))
    report = {"kind": "anatomy", "arch": arch, "img_size": img_size, "n_images": len(train),
              "crops_per_image": crops_per_image, "zone_patches": 0 if zt is None else int(len(zt)),
              "epoch_loss": losses, "seconds": round(seconds, 1), "validation": validation,
              "note": "validation: the manifest's val split (images the expert never saw); position R2 of its own "
                      "regressor on fresh crops; zone accuracy of its own classifier and zero-shot 5-NN zone accuracy "
                      "of its embedding on the val zone patches"}
    atomic_write_text(out / "fit_report.json", json.dumps(report, indent=2))
    return out


def _zone_table(manifest: Manifest) -> pd.DataFrame | None:
    """Zone patches of the rows with lung annotations (coarse box zones left out), or ``None``."""
    if not len(manifest):
        return None
    z = zone_patches(manifest, on_error="skip")
    return z[~z["coarse"].to_numpy(bool)].reset_index(drop=True) if len(z) else None


@torch.no_grad()
def _anatomy_validation(backbone, head, spec, val: Manifest, img_size: int, crops_per_image: int, seed: int,
                        dev, precision: str, zones: bool) -> dict:
    out: dict = {"split": "val", "n_images": len(val)}
    if not len(val):
        return out

    def run(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feats, preds, targets = [], [], []
        for batch in DataLoader(ds, batch_size=64):
            with autocast_context(dev, precision):
                f = backbone(spec.convert(batch["image"].to(dev)))
                p = head(f)
            feats.append(f.float().cpu().numpy())
            preds.append(p.float().cpu().numpy())
            targets.append(batch["target"].numpy())
        return np.concatenate(feats), np.concatenate(preds), np.concatenate(targets)

    crops = PositionCropDataset(val, img_size, crops_per_image=crops_per_image, seed=seed + 10_000)
    _, p, t = run(crops)
    out["position_r2"] = float(r2_score(t, p[:, :3]))
    bits = [f"val position R2 {out['position_r2']:.3f}"]
    zt = _zone_table(val) if zones else None
    if zt is not None and len(zt) > 5:
        f, p, t = run(_ZoneTargets(val, zt, img_size))
        y = t[:, 3].astype(int)
        out["zone_accuracy"] = float(np.mean(p[:, 3:].argmax(1) == y))
        out["zone_knn_accuracy"] = float(knn_accuracy(f, y, k=5))
        out["zone_patches"] = int(len(zt))
        bits.append(f"zone accuracy {out['zone_accuracy']:.3f}, zone 5-NN {out['zone_knn_accuracy']:.3f} "
                    f"({len(zt)} patches)")
    out["summary"] = ", ".join(bits) + f" ({len(val)} images)"
    return out
