"""Algorithm 1 training loop: losses fall, stage 1 leaves the anatomy head alone, resume is exact."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from leader.config import load_config
from leader.models.student import LeaderModel
from leader.teachers.base import InputSpec
from leader.teachers.module import ModuleTeacher
from leader.train.loop import ResumableRandomSampler, Trainer, epoch_mean_losses, read_losses

TINY = {"embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8)}
S = 64  # tiny swin at 64 px: window 7 does not divide 2 -> use window_size 2


class _Images(Dataset):
    def __init__(self, n=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, S, S, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "id": f"img{i}", "index": i}


class _Pairs(_Images):
    def __getitem__(self, i):
        return {"image": self.x[i], "patch": self.x[i].flip(-1), "image_id": f"img{i}", "patch_id": f"img{i}::p",
                "index": i}


def _teacher(name, dim, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


def _setup(tmp_path, epochs=(3, 2)):
    cfg = load_config("demo-quick", [f"stage1.epochs={epochs[0]}", f"stage2.epochs={epochs[1]}",
                                     "stage1.batch_size=4", "stage2.batch_size=4", "optim.warmup_steps=0",
                                     "precision=fp32", "checkpoint_every=0", "device=cpu", "augment.enabled=false"])
    teachers = {"disease": _teacher("disease", 24, 1), "anatomy": _teacher("anatomy", 40, 2)}
    torch.manual_seed(0)
    model = LeaderModel.for_teachers(teachers, backbone="swin_tiny_patch4_window7_224", img_size=S,
                                     backbone_kwargs={**TINY, "window_size": 2})
    return cfg, teachers, model


def test_two_stages_losses_fall_and_stage1_skips_anatomy_head(tmp_path):
    cfg, teachers, model = _setup(tmp_path, epochs=(6, 6))
    trainer = Trainer(model, teachers, cfg, tmp_path / "run", device=torch.device("cpu"))
    anatomy_before = {k: v.clone() for k, v in model.heads["anatomy"].state_dict().items()}
    trainer.run_stage(1, _Images(), log := __import__("leader.train.loop", fromlist=["LossLog"]).LossLog(
        tmp_path / "run" / "losses.csv", list(teachers)))
    for k, v in model.heads["anatomy"].state_dict().items():
        assert torch.equal(v, anatomy_before[k]), f"anatomy head changed in stage 1: {k}"
    trainer.position.update(stage=2, epoch=0, sample=0)
    trainer.run_stage(2, _Pairs(), log)
    log.close()
    rows = read_losses(tmp_path / "run" / "losses.csv")
    s1, s2 = epoch_mean_losses(rows, 1), epoch_mean_losses(rows, 2)
    assert len(s1) == 6 and len(s2) == 6
    assert s1[-1] < s1[0] and s2[-1] < s2[0]
    # stage 2 logs all four terms of Algorithm 1 lines 23-24; stage 1 only the disease image term
    st2 = [r for r in rows if r["stage"] == 2][0]
    total = st2["loss_disease_image"] + st2["loss_disease_patch"] + st2["loss_anatomy_image"] + st2["loss_anatomy_patch"]
    assert total == pytest.approx(st2["loss"], rel=1e-5)
    st1 = [r for r in rows if r["stage"] == 1][0]
    assert math.isnan(st1["loss_anatomy_image"]) and st1["loss"] == pytest.approx(st1["loss_disease_image"], rel=1e-6)
    # teachers stayed frozen
    for t in teachers.values():
        assert all(not p.requires_grad for p in t.module.parameters())


def test_resume_continues_exactly(tmp_path):
    # uninterrupted reference run
    cfg, teachers, model = _setup(tmp_path)
    ref = Trainer(model, teachers, cfg, tmp_path / "ref", device=torch.device("cpu"))
    ref.fit(_Images(), _Pairs())
    ref_rows = read_losses(tmp_path / "ref" / "losses.csv")

    # interrupted after stage 1 epoch 2, batch 1 -> resume in a fresh Trainer
    cfg, teachers, model = _setup(tmp_path)
    t1 = Trainer(model, teachers, cfg, tmp_path / "cut", device=torch.device("cpu"))
    calls = {"n": 0}
    orig = t1._step

    def crash_after(stage, batch):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 2:  # 3 steps per epoch (12 images / 4): crash in epoch 2
            raise KeyboardInterrupt
        return orig(stage, batch)

    t1._step = crash_after
    t1.cfg = {**cfg, "checkpoint_every": 1}
    with pytest.raises(KeyboardInterrupt):
        t1.fit(_Images(), _Pairs())
    cfg2, teachers2, model2 = _setup(tmp_path)
    t2 = Trainer(model2, teachers2, {**cfg2, "checkpoint_every": 1}, tmp_path / "cut", device=torch.device("cpu"))
    t2.fit(_Images(), _Pairs(), resume=True)
    cut_rows = read_losses(tmp_path / "cut" / "losses.csv")
    assert [int(r["step"]) for r in cut_rows] == [int(r["step"]) for r in ref_rows]
    np.testing.assert_allclose([r["loss"] for r in cut_rows], [r["loss"] for r in ref_rows], rtol=1e-4)


def test_sampler_resume_position():
    full = list(ResumableRandomSampler(10, seed=3, stage=1, epoch=2))
    assert sorted(full) == list(range(10))
    assert list(ResumableRandomSampler(10, seed=3, stage=1, epoch=2, start=4)) == full[4:]
    assert full != list(ResumableRandomSampler(10, seed=3, stage=1, epoch=3))


def test_teacher_width_mismatch_is_an_error_at_construction(tmp_path):
    cfg, teachers, _ = _setup(tmp_path)
    wrong = LeaderModel(backbone="swin_tiny_patch4_window7_224", head_dims={"disease": 24, "anatomy": 41},
                        img_size=S, backbone_kwargs={**TINY, "window_size": 2})
    with pytest.raises(ValueError, match="41.*40|40.*41"):
        Trainer(wrong, teachers, cfg, tmp_path / "x", device=torch.device("cpu"))
