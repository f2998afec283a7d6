"""Full fine-tuning of a pretrained backbone (paper §6, Table 2 "fine-tune" rows).

* **Classification** (:func:`finetune_classification`): a new linear head on the pooled
  features of the backbone; multi-label BCE (unknown labels masked out) or multi-class
  cross-entropy; every weight is trained.
* **Segmentation** (:func:`finetune_segmentation`): UperNet on the backbone's multi-scale
  stage outputs. The decoder and segmentation head are those of segmentation-models-pytorch
  (``smp.decoders.upernet.UPerNetDecoder``, ``smp.base.SegmentationHead``); the encoder is the
  pretrained backbone itself, read through :func:`stage_features`, which returns NCHW maps
  for every stage: Swin (and other timm models whose ``output_fmt`` is ``NHWC``) emit
  channels-last ``[B, H, W, C]`` stage outputs, which are permuted (``permute(0, 3, 1, 2)``,
  never reshaped) and checked against ``feature_info`` channels and reductions. Dice and IoU
  on the test split.

Backbones (:func:`load_backbone`): a LeADER student checkpoint (its timm trunk, ``S_θ``), a
teacher folder, ``timm:ARCH[:WEIGHTS]``, or a :class:`~leader.eval.features.ModelSource`.
Every run starts from a fresh copy of the pretrained weights. Label fractions subsample the
training patients (:func:`leader.eval.data.label_fraction`); several seeds give mean ± std
(:mod:`leader.eval.stats`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from leader.eval.metrics import dice, iou, multiclass_auc, per_class_auc
from leader.patches import crop
from leader.teachers.base import InputSpec
from leader.device import pick_device
from leader.eval.data import load_mask
from leader.eval.features import FeatureSource, _shared_dataset
from leader.manifest import Manifest
from leader.models.student import LeaderModel, load_model
from leader.teachers.module import ModuleTeacher, _default_timm_spec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """A timm network plus the conversion of ``[B, 1, S, S]`` images in ``[0, 1]`` to its input.

    Attributes:
        net: the timm model (``num_classes=0``: ``net(x)`` gives pooled ``[B, num_features]``).
        spec: :class:`~leader.teachers.base.InputSpec` (size, channels, mean/std).
        name: display name.
    """

    def __init__(self, net: nn.Module, spec: InputSpec, name: str):
        super().__init__()
        self.net = net
        self.spec = spec
        self.name = name
        for p in self.net.parameters():
            p.requires_grad_(True)

    @property
    def img_size(self) -> int:
        return int(self.spec.size)

    @property
    def num_features(self) -> int:
        return int(self.net.num_features)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.convert(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.prepare(x))
        if out.dim() == 4:  # an unpooled map: average
            out = out.mean((2, 3))
        return out

    def features(self, x: torch.Tensor, force_hooks: bool = False) -> list[torch.Tensor]:
        """NCHW stage outputs with reduction >= 4 (see :func:`stage_features`)."""
        return stage_features(self.net, self.prepare(x), force_hooks=force_hooks)


def load_backbone(spec, name: str | None = None) -> Backbone:
    """A fresh :class:`Backbone` from a student checkpoint folder, a teacher folder,
    ``timm:ARCH[:WEIGHTS]``, a :class:`~leader.models.LeaderModel`, a timm module, or a
    :class:`~leader.eval.features.ModelSource` (its network is deep-copied).

    Raises:
        ValueError: an embedding store (no network to fine-tune) or an unknown folder.
    """
    if isinstance(spec, FeatureSource):
        return source_backbone(spec)
    if isinstance(spec, LeaderModel):
        m = copy.deepcopy(spec)
        isp = InputSpec(size=m.img_size, channels=m.in_chans, mean=tuple(m.pixel_mean.flatten().tolist()),
                        std=tuple(m.pixel_std.flatten().tolist()))
        return Backbone(m.backbone, isp, name or "student")
    if isinstance(spec, nn.Module):
        return Backbone(copy.deepcopy(spec), _default_timm_spec(spec, {}), name or type(spec).__name__)
    s = str(spec)
    if s.startswith("timm:"):
        parts = s.split(":", 2)
        t = ModuleTeacher.from_timm(name or parts[1], parts[1], weights=parts[2] if len(parts) > 2 and parts[2] else None)
        return Backbone(t.module, t.input_spec, name or f"timm {parts[1]}")
    p = Path(s)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return load_backbone(load_model(p), name or "student")
    if (p / "teacher.json").is_file():
        t = ModuleTeacher.from_checkpoint_dir(p)
        return Backbone(t.module, t.input_spec, name or f"{t.name} teacher")
    if (p / "meta.json").is_file():
        raise ValueError(f"{s} is an embedding store: there is no network to fine-tune")
    raise ValueError(f"{s}: not a student checkpoint, a teacher folder or timm:ARCH[:WEIGHTS]")


def source_backbone(source) -> Backbone:
    """:func:`load_backbone` for a :class:`~leader.eval.features.ModelSource` (keeps the teacher's
    input spec)."""
    mod = getattr(source, "module", None)
    if mod is None:
        raise ValueError(f"{source.name}: an embedding store has no network to fine-tune; give a checkpoint")
    if isinstance(mod, LeaderModel):
        return load_backbone(mod, source.name)
    spec = getattr(source, "input_spec", None) or InputSpec(size=source.img_size)
    return Backbone(copy.deepcopy(mod), spec, source.name)


# ---------------------------------------------------------------------------------------------
# multi-scale features
# ---------------------------------------------------------------------------------------------
def to_nchw(feature: torch.Tensor, fmt: str, channels: int | None = None) -> torch.Tensor:
    """One stage output in NCHW.

    ``fmt='NHWC'`` (Swin stage outputs are ``[B, H, W, C]``) is permuted with
    ``permute(0, 3, 1, 2)`` — a ``reshape``/``view`` to ``[B, C, H, W]`` would scramble the
    pixels. ``channels`` (from ``feature_info``) is checked afterwards.

    Raises:
        ValueError: not 4-D, unknown format, or the channel count does not match.
    """
    if feature.dim() != 4:
        raise ValueError(f"stage output must be 4-D, got {tuple(feature.shape)}")
    if fmt == "NHWC":
        feature = feature.permute(0, 3, 1, 2).contiguous()
    elif fmt != "NCHW":
        raise ValueError(f"unknown feature format {fmt!r}")
    if channels is not None and feature.shape[1] != channels:
        raise ValueError(f"stage output {tuple(feature.shape)} does not have {channels} channels in dim 1 "
                         f"(declared format {fmt})")
    return feature


def stage_info(net: nn.Module) -> list[dict]:
    """``feature_info`` entries with reduction >= 4 (what UperNet uses), at most the last four."""
    fi = getattr(net, "feature_info", None)
    if not fi:
        raise ValueError(f"{type(net).__name__} has no timm feature_info: cannot build UperNet on it")
    info = [dict(d, index=i) for i, d in enumerate(fi) if int(d["reduction"]) >= 4]
    return info[-4:]


def stage_features(net: nn.Module, x: torch.Tensor, force_hooks: bool = False) -> list[torch.Tensor]:
    """Multi-scale NCHW features of a timm model for already-prepared input ``x``.

    Uses timm's ``forward_intermediates`` (which returns NCHW) when the model has it;
    otherwise (or with ``force_hooks``) forward hooks on the ``feature_info`` modules, whose
    raw outputs are in the model's ``output_fmt`` (``NHWC`` for Swin) and converted by
    :func:`to_nchw`. Every map is checked: ``[B, num_chs, H/reduction, W/reduction]``.
    """
    info = stage_info(net)
    if hasattr(net, "forward_intermediates") and not force_hooks:
        feats = net.forward_intermediates(x, indices=[d["index"] for d in info], intermediates_only=True)
        fmt = "NCHW"  # timm's forward_intermediates contract
    else:
        grabbed: dict[str, torch.Tensor] = {}
        mods = dict(net.named_modules())
        handles = [mods[d["module"]].register_forward_hook(
            lambda _m, _i, out, key=d["module"]: grabbed.__setitem__(key, out)) for d in info]
        try:
            net.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        feats = [grabbed[d["module"]] for d in info]
        fmt = getattr(net, "output_fmt", "NCHW")
        fmt = fmt.value if hasattr(fmt, "value") else str(fmt)
    out = []
    for f, d in zip(feats, info):
        f = to_nchw(f, fmt, int(d["num_chs"]))
        r = int(d["reduction"])
        exp = (math.ceil(x.shape[-2] / r), math.ceil(x.shape[-1] / r))
        if tuple(f.shape[-2:]) != exp and tuple(f.shape[-2:]) != (x.shape[-2] // r, x.shape[-1] // r):
            raise ValueError(f"stage {d['module']}: spatial size {tuple(f.shape[-2:])}, expected {exp} "
                             f"for input {tuple(x.shape[-2:])} at reduction {r}")
        out.append(f)
    return out


class UperNetSegmenter(nn.Module):
    """UperNet (smp decoder + head) on a :class:`Backbone`'s stage outputs.

    ``forward(x [B,1,S,S] in [0,1]) -> logits [B, classes, S, S]``.
    """

    def __init__(self, backbone: Backbone, classes: int = 1, decoder_channels: int = 64):
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead  # noqa: PLC0415
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder  # noqa: PLC0415

        self.backbone = backbone
        info = stage_info(backbone.net)
        if len(info) < 3:
            raise ValueError(f"{backbone.name}: UperNet needs at least 3 stages with reduction >= 4, got {len(info)}")
        chans = [int(d["num_chs"]) for d in info]
        self.first_reduction = int(info[0]["reduction"])
        # smp's layout: [input, 1/2, 1/4, 1/8, ...]; the decoder skips the first two entries
        self.decoder = UPerNetDecoder(encoder_channels=[backbone.spec.channels, 0, *chans],
                                      encoder_depth=len(chans) + 1, decoder_channels=decoder_channels)
        self.head = SegmentationHead(in_channels=decoder_channels, out_channels=classes, kernel_size=1,
                                     upsampling=self.first_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.features(x)
        prepared_hw = feats[0].shape[-2] * self.first_reduction, feats[0].shape[-1] * self.first_reduction
        dummy = x.new_zeros((x.shape[0], 0, prepared_hw[0] // 2, prepared_hw[1] // 2))
        out = self.head(self.decoder([x, dummy, *feats]))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


class Classifier(nn.Module):
    """A new linear head on a :class:`Backbone`'s pooled features."""

    def __init__(self, backbone: Backbone, n_out: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
class _Labelled(Dataset):
    def __init__(self, base: Dataset, index: np.ndarray, targets: np.ndarray):
        self.base, self.index, self.targets = base, np.asarray(index), targets

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        item = self.base[int(self.index[i])]
        return {"image": item["image"], "target": torch.as_tensor(self.targets[i])}


class MaskDataset(Dataset):
    """Whole images and their masks at ``S x S``: ``{"image": [1,S,S], "mask": [S,S] float}``."""

    def __init__(self, manifest, masks: pd.DataFrame, image_size: int):
        self.df = getattr(manifest, "df", manifest)
        self.masks = masks.reset_index(drop=True)
        pos = {str(v): i for i, v in enumerate(self.df["id"])}
        self.rows = np.array([pos[str(v)] for v in self.masks["image_id"]], dtype=np.int64)

        self.images = _shared_dataset(self.df, None, int(image_size))
        self.S = int(image_size)
        self._load_mask = load_mask
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.masks)

    def mask(self, i: int) -> np.ndarray:
        if i not in self._cache:
            m = self._load_mask(self.df, self.masks.iloc[i]).astype(np.float32)
            self._cache[i] = (crop(m, (0, 0, m.shape[1], m.shape[0]), self.S) > 0.5).astype(np.float32)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return {"image": self.images[int(self.rows[i])]["image"], "mask": torch.from_numpy(self.mask(i))}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    task: str
    metrics: dict
    n_train: int
    n_test: int
    steps: int
    seconds: float
    losses: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    test_scores: np.ndarray | None = None   # classification: [n_test, C] (for prediction averaging)
    classes: list | None = None

    def as_dict(self) -> dict:
        return {"task": self.task, **self.metrics, "n_train": self.n_train, "n_test": self.n_test,
                "steps": self.steps, "seconds": self.seconds, "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, **self.extra}


@torch.no_grad()
def _predict(model: nn.Module, ds: Dataset, batch_size: int, device: torch.device, key: str = "image") -> np.ndarray:
    model.eval()
    outs = []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        outs.append(model(batch[key].to(device)).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,))


def finetune_classification(backbone: Backbone, manifest, split: Sequence[str], train_index: np.ndarray,
                            labels: Sequence[str] | None = None, task: str = "multilabel",
                            class_labels: Sequence | None = None, epochs: int = 3, max_steps: int | None = None,
                            lr: float = 1e-4, head_lr_mult: float = 10.0, weight_decay: float = 0.05,
                            batch_size: int = 16, seed: int = 0, device: str = "auto", dataset: Dataset | None = None,
                            context: str = "") -> FinetuneResult:
    """Fine-tune ``backbone`` (modified in place; pass a fresh copy) with a new head.

    Args:
        manifest: images (rows aligned with ``split``), or the manifest the patch ``dataset`` uses.
        split: ``train`` / ``val`` / ``test`` per row of ``dataset`` (default: manifest images).
        train_index: the training rows (a label-fraction subset).
        labels: multi-label: label names (default all of the manifest's).
        task: ``multilabel`` (masked BCE) or ``multiclass`` (cross-entropy over ``class_labels``).
        class_labels: multi-class: one label per row.
        dataset: rows to train/test on (e.g. a :class:`~leader.patches.PatchDataset` for
            lesion-level); default :class:`~leader.patches.ImageDataset` at the backbone's size.

    Returns:
        :class:`FinetuneResult` with ``macro_auc`` and ``per_class_auc`` on ``test``.
    """
    t0 = time.time()
    dev = pick_device(device)
    split = np.asarray(split)
    te = np.flatnonzero(split == "test")
    tr = np.asarray(train_index)
    if dataset is None:
        dataset = _shared_dataset(getattr(manifest, "df", manifest), None, backbone.img_size)
    ds = dataset
    if task == "multilabel":
        m = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
        names = list(labels) if labels is not None else m.label_names
        Y = m.labels_array(names)
        n_out = len(names)
        tgt_tr, tgt_te = Y[tr], Y[te]

        def loss_fn(model, b):
            logits = model(b["image"].to(dev))
            t = b["target"].to(dev)
            known = ~torch.isnan(t)
            if not known.any():
                return logits.sum() * 0.0
            return F.binary_cross_entropy_with_logits(logits[known], t[known])
    elif task == "multiclass":
        lab = np.asarray([str(v) for v in class_labels])
        names = sorted(set(lab.tolist()))
        idx = {c: j for j, c in enumerate(names)}
        codes = np.array([idx[c] for c in lab], dtype=np.int64)
        n_out = len(names)
        tgt_tr, tgt_te = codes[tr], codes[te]

        def loss_fn(model, b):
            return F.cross_entropy(model(b["image"].to(dev)), b["target"].to(dev))
    else:
        raise ValueError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
    model = Classifier(backbone, n_out)
    train_ds = _Labelled(ds, tr, tgt_tr)

    def loaders(g):
        return DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g)

    torch.manual_seed(seed)
    model.head.reset_parameters()
    # the new head learns faster than the pretrained trunk
    opt_groups = [{"params": model.backbone.parameters(), "lr": lr},
                  {"params": model.head.parameters(), "lr": lr * head_lr_mult}]
    losses, steps = _train_groups(model, opt_groups, loaders, loss_fn, epochs, max_steps, weight_decay, dev, seed)
    scores = _predict(model, _Labelled(ds, te, tgt_te), batch_size, dev)
    if task == "multilabel":
        auc = per_class_auc(tgt_te, scores, names, warn=True, context=context or "fine-tune (test)")
    else:
        auc = multiclass_auc(lab[te], scores, names, warn=True, context=context or "fine-tune (test)")
    return FinetuneResult("classification", {"macro_auc": auc.macro, "per_class_auc": auc.per_class,
                                             "undefined": auc.undefined},
                          len(tr), len(te), steps, time.time() - t0, losses,
                          test_scores=(1 / (1 + np.exp(-scores))) if task == "multilabel" else _softmax(scores),
                          classes=list(names))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _train_groups(model, groups, loader_fn, loss_fn, epochs, max_steps, weight_decay, device, seed):
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    losses, step = [], 0
    for epoch in range(max(1, int(epochs))):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        for batch in loader_fn(g):
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            step += 1
            if max_steps is not None and step >= max_steps:
                return losses, step
    return losses, step


def finetune_segmentation(backbone: Backbone, manifest, masks: pd.DataFrame, split: Sequence[str],
                          train_index: np.ndarray, epochs: int = 5, max_steps: int | None = None, lr: float = 1e-4,
                          head_lr_mult: float = 10.0, weight_decay: float = 0.05, batch_size: int = 4,
                          decoder_channels: int = 64, seed: int = 0, device: str = "auto") -> FinetuneResult:
    """Fine-tune UperNet on ``backbone`` for binary (lung) segmentation.

    Args:
        masks: :func:`leader.eval.data.find_masks` rows; ``split`` and ``train_index`` refer to
            its rows.

    Returns:
        :class:`FinetuneResult` with ``dice`` and ``iou`` (mean over test images, threshold 0.5
        on the sigmoid) and ``dice_per_image``.
    """
    from segmentation_models_pytorch.losses import DiceLoss  # noqa: PLC0415

    t0 = time.time()
    dev = pick_device(device)
    split = np.asarray(split)
    te = np.flatnonzero(split == "test")
    tr = np.asarray(train_index)
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"segmentation needs training and test masks (train {len(tr)}, test {len(te)})")
    ds = MaskDataset(manifest, masks, backbone.img_size)
    model = UperNetSegmenter(backbone, classes=1, decoder_channels=decoder_channels)
    dice_loss = DiceLoss(mode="binary", from_logits=True)

    class _Sub(Dataset):
        def __init__(self, idx):
            self.idx = idx

        def __len__(self):
            return len(self.idx)

        def __getitem__(self, i):
            return ds[int(self.idx[i])]

    def loss_fn(model, b):
        logits = model(b["image"].to(dev))
        m = b["mask"].to(dev)[:, None]
        return F.binary_cross_entropy_with_logits(logits, m) + dice_loss(logits, m)

    def loaders(g):
        return DataLoader(_Sub(tr), batch_size=batch_size, shuffle=True, generator=g)

    groups = [{"params": model.backbone.parameters(), "lr": lr},
              {"params": list(model.decoder.parameters()) + list(model.head.parameters()), "lr": lr * head_lr_mult}]
    losses, steps = _train_groups(model, groups, loaders, loss_fn, epochs, max_steps, weight_decay, dev, seed)
    logits = _predict(model, _Sub(te), batch_size, dev)
    pred = (1 / (1 + np.exp(-logits[:, 0]))) > 0.5
    target = np.stack([ds.mask(int(i)) for i in te])
    d = dice(pred, target, reduce=False)
    j = iou(pred, target, reduce=False)
    return FinetuneResult("segmentation", {"dice": float(d.mean()), "iou": float(j.mean()),
                                           "dice_per_image": dict(zip(masks["image_id"].iloc[te], d.tolist()))},
                          len(tr), len(te), steps, time.time() - t0, losses)
