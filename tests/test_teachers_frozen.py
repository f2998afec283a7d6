"""Teachers stay frozen whatever the caller does (issue 13 item 5): eval mode and no gradients after
any ``.train()`` call on the student, on a trainer run, or on a wrapper module that holds them."""

from __future__ import annotations

import torch
from torch import nn

from leader.config import load_config
from leader.teachers.base import InputSpec
from leader.teachers.module import ModuleTeacher, lock_frozen


def _teacher(name: str, dim: int = 6, seed: int = 0) -> ModuleTeacher:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


def _frozen(t: ModuleTeacher) -> bool:
    return not any(m.training for m in t.module.modules()) and not any(p.requires_grad for p in t.module.parameters())


def test_a_wrapper_train_call_leaves_the_teacher_frozen():
    t = _teacher("disease")

    class Wrapper(nn.Module):  # a user's own module holding a teacher network and a trainable part
        def __init__(self):
            super().__init__()
            self.inner = nn.ModuleDict({"expert": t.module})
            self.head = nn.Linear(6, 2)

    w = Wrapper()
    w.train()
    assert _frozen(t) and w.head.training and w.head.weight.requires_grad
    w.requires_grad_(True)  # even after gradients were switched on through the wrapper ...
    w.train(True)           # ... the next train() call freezes the teacher again
    assert _frozen(t)
    bn = t.module[1]
    before = bn.running_mean.clone()
    w.train()
    t.embed(torch.rand(4, 1, 32, 32))
    assert torch.equal(bn.running_mean, before)  # BatchNorm statistics never move


def test_calling_train_on_the_teacher_object_or_its_module():
    t = _teacher("anatomy")
    t.train()
    assert _frozen(t)
    t.module.train(True)
    assert _frozen(t)
    m = lock_frozen(nn.Sequential(nn.Linear(2, 2), nn.Dropout()))
    m.train()
    assert not m.training and not m[1].training and not m[0].weight.requires_grad


def test_student_train_and_a_whole_trainer_run_keep_every_teacher_frozen(tmp_path):
    """Stage 1 does not use the anatomy teacher: it stays frozen too, before, during and after."""
    from leader.models.student import LeaderModel
    from leader.train.loop import Trainer

    teachers = {"disease": _teacher("disease", 6, 1), "anatomy": _teacher("anatomy", 5, 2)}
    torch.manual_seed(0)
    student = LeaderModel.for_teachers(teachers, backbone="test_vit", img_size=32)
    student.train()
    assert all(_frozen(t) for t in teachers.values())
    seen = []

    class Images(torch.utils.data.Dataset):
        transform = None

        def __init__(self, pairs: bool):
            self.pairs = pairs

        def __len__(self):
            return 8

        def __getitem__(self, i):
            seen.append(all(_frozen(t) for t in teachers.values()))
            x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(i))
            if self.pairs:
                return {"image": x, "patch": x.flip(-1), "image_id": f"i{i}", "patch_id": f"i{i}::p"}
            return {"image": x, "id": f"i{i}"}

    cfg = load_config("demo-quick", ["stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=4",
                                     "stage2.batch_size=4", "precision=fp32", "device=cpu", "checkpoint_every=0"])
    Trainer(student, teachers, cfg, tmp_path / "run", device=torch.device("cpu")).fit(Images(False), Images(True))
    assert seen and all(seen)
    assert all(_frozen(t) for t in teachers.values())
