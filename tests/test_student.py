"""Tests for leader.models (student, heads, checkpoints; field reports BR-19, BR-24)."""

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from leader.config import load_config
from leader.losses import distillation_loss, make_loss
from leader.models import (
    LeaderModel,
    MLPHead,
    load_model,
    load_training_state,
    read_model_config,
    save_model,
    save_training_state,
)
from leader.patches import ImageDataset
from leader.teachers import InputSpec, ModuleTeacher
from leader.transforms import build_augment

SWIN = "swin_tiny_patch4_window7_224"
TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LeaderModel(SWIN, {"disease": 12, "anatomy": 6}, img_size=224, backbone_kwargs=TINY_SWIN)


def test_mlp_head_is_two_layer_mlp():
    head = MLPHead(16, 5)
    layers = list(head.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert head.fc1.out_features == 16 and MLPHead(16, 5, hidden_dim=8).fc1.out_features == 8
    assert head(torch.randn(3, 16)).shape == (3, 5)
    with pytest.raises(ValueError):
        MLPHead(16, 0)


def test_forward_shapes_and_head_selection(tiny):
    assert tiny.e_da_dim == 256 and tiny.head_dims == {"disease": 12, "anatomy": 6}
    x = torch.rand(2, 1, 224, 224)
    out = tiny(x)
    assert set(out) == {"e_da", "disease", "anatomy"}
    assert out["e_da"].shape == (2, 256) and out["disease"].shape == (2, 12) and out["anatomy"].shape == (2, 6)
    assert set(tiny(x, heads=["disease"])) == {"e_da", "disease"}
    assert set(tiny(x, heads="anatomy")) == {"e_da", "anatomy"}
    assert set(tiny(x, heads=[])) == {"e_da"}
    with pytest.raises(KeyError, match="nodule"):
        tiny(x, heads=["nodule"])
    params = list(tiny.parameters_for(["disease"]))
    assert not any(p is q for p in params for q in tiny.heads["anatomy"].parameters())
    with pytest.raises(ValueError, match="channels"):
        tiny(torch.rand(2, 3, 224, 224))
    # the normalisation lives outside the state dict
    assert not any("pixel_" in k for k in tiny.state_dict())


def test_br19_swin_base_default_rejects_512_before_backbone():
    model = LeaderModel()  # swin_base_patch4_window7_224, default config
    assert model.img_size == 224 and model.e_da_dim == 1024
    paper = load_config()["student"]  # the default config names the same model and size
    assert (paper["backbone"], paper["img_size"]) == (model.backbone_name, model.img_size) == (
        "swin_base_patch4_window7_224", 224)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the backbone was called")

    model.backbone.forward = must_not_run
    with pytest.raises(ValueError) as err:
        model(torch.rand(2, 3, 512, 512))
    msg = str(err.value)
    assert "224" in msg and "512" in msg


def test_br19_img_size_512_is_built_for_512():
    model = LeaderModel(SWIN, {"disease": 4}, img_size=512, backbone_kwargs=TINY_SWIN)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 512, 512))
    assert out["disease"].shape == (1, 4)
    with pytest.raises(ValueError, match="img_size=512.*224x224"):
        model(torch.rand(1, 1, 224, 224))


TINY_SWIN_SET = "student.backbone_kwargs={embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8]}"


def test_br19_transform_and_model_size_come_from_one_config_value():
    """BR-19: config img_size=512 -> the model is built for 512 and the dataset resizes to 512.

    Mirrors ``leader train``: ``S = cfg["student"]["img_size"]`` feeds both ``LeaderModel`` and
    ``ImageDataset`` (the resize + augmentation).
    """
    cfg = load_config(None, ["student.img_size=512", f"student.backbone={SWIN}", TINY_SWIN_SET])
    sc = cfg["student"]
    S = int(sc["img_size"])
    model = LeaderModel(sc["backbone"], {"disease": 4}, img_size=S, backbone_kwargs=sc["backbone_kwargs"])
    assert model.img_size == 512 and model.config()["img_size"] == 512
    assert tuple(model.backbone.patch_embed.img_size) == (512, 512)  # timm Swin built for 512
    rng = np.random.default_rng(0)
    pixels = {f"/mem/{i}.png": rng.random((300, 280)).astype(np.float32) for i in range(2)}
    df = pd.DataFrame({"id": ["a", "b"], "path": list(pixels)})
    ds = ImageDataset(df, S, transform=build_augment(cfg["augment"]), loader=pixels.__getitem__)
    x = torch.stack([ds[i]["image"] for i in range(2)])
    assert x.shape == (2, 1, 512, 512)
    with torch.no_grad():
        out = model(x)
    assert out["disease"].shape == (2, 4) and torch.isfinite(out["e_da"]).all()
    # a transform sized from another value is refused before the backbone, naming both sizes
    other = ImageDataset(df, 224, loader=pixels.__getitem__)
    with pytest.raises(ValueError, match="img_size=512.*224x224"):
        model(torch.stack([other[i]["image"] for i in range(2)]))


def test_cnn_backbone_size_from_config():
    model = LeaderModel("resnet18", {"disease": 3}, img_size=64)
    assert model.e_da_dim == 512 and model(torch.rand(2, 1, 64, 64))["disease"].shape == (2, 3)
    with pytest.raises(ValueError, match="64"):
        model(torch.rand(2, 1, 96, 96))


class _Proj(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(3 * 16, dim)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def fixed_teacher(name, dim):
    return ModuleTeacher(name, _Proj(dim), InputSpec(size=224))


def test_br24_heads_per_teacher_width():
    """BR-24: teacher A 768-d, teacher B 2048-d, student E_DA 1024-d."""
    torch.manual_seed(0)
    teachers = {"a": fixed_teacher("a", 768), "b": fixed_teacher("b", 2048)}
    student_kwargs = dict(embed_dim=128, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))  # 128 * 8 = 1024
    model = LeaderModel.for_teachers(teachers, backbone=SWIN, backbone_kwargs=student_kwargs)
    assert model.e_da_dim == 1024 and model.head_dims == {"a": 768, "b": 2048}
    assert set(model.heads) == {"a", "b"}  # one projection head per teacher
    x = torch.rand(4, 1, 224, 224)
    out = model(x)
    assert out["e_da"].shape == (4, 1024)
    targets = {name: t.embed(x) for name, t in teachers.items()}
    assert {k: tuple(v.shape) for k, v in targets.items()} == {"a": (4, 768), "b": (4, 2048)}
    seen = {}

    def recording(name):
        mse = make_loss("mse")

        def fn(pred, target):
            seen[name] = (tuple(pred.shape), tuple(target.shape))
            return mse(pred, target)
        return fn

    total, parts = distillation_loss(out, targets, {"a": recording("a"), "b": recording("b")})
    # each loss received exactly matching shapes (no broadcasting)
    assert seen == {"a": ((4, 768), (4, 768)), "b": ((4, 2048), (4, 2048))}
    assert total.dim() == 0 and torch.isfinite(total)
    teacher_params = [p for t in teachers.values() for p in t.parameters()]
    teacher_before = [p.detach().clone() for p in teacher_params]
    assert teacher_params and all(not p.requires_grad for p in teacher_params)  # teachers frozen
    assert all(p.requires_grad for p in model.heads.parameters())  # heads trainable
    assert not any(p is q for p in model.parameters() for q in teacher_params)  # teachers not in the student
    heads_before = [p.detach().clone() for p in model.heads.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total.backward()
    assert all(p.grad is not None for p in model.heads.parameters())
    assert all(p.grad is None for p in teacher_params)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, model.heads.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher_params))

    with pytest.raises(ValueError) as err:  # mismatch configured -> error at construction
        LeaderModel(SWIN, {"a": 1024, "b": 2048}, backbone_kwargs=TINY_SWIN, teachers=teachers)
    assert "1024" in str(err.value) and "768" in str(err.value)
    with pytest.raises(ValueError, match=r"'b'.*1024.*2048"):  # no projection for B: E_DA width 1024 vs 2048
        LeaderModel(SWIN, {"a": 768, "b": 1024}, backbone_kwargs=TINY_SWIN, teachers=teachers)
    small = LeaderModel(SWIN, {"a": 768}, backbone_kwargs=TINY_SWIN)
    with pytest.raises(ValueError, match="'b'"):
        small.check_teacher_dims(teachers)
    with pytest.raises(ValueError, match="512.*768"):
        LeaderModel(SWIN, {"a": 512}, backbone_kwargs=TINY_SWIN).check_teacher_dims({"a": 768})


def test_config_rebuilds_and_pretrained_file(tiny, tmp_path):
    cfg = tiny.config()
    assert json.loads(json.dumps(cfg))["backbone_kwargs"]["depths"] == [1, 1, 1, 1]
    rebuilt = LeaderModel.from_config(json.loads(json.dumps(cfg)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in tiny.state_dict().items()}

    from safetensors.torch import save_file

    weights = {k: v.clone() for k, v in tiny.backbone.state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    pre = LeaderModel(SWIN, {"disease": 2}, backbone_kwargs=TINY_SWIN, pretrained_file=tmp_path / "backbone.safetensors")
    for k, v in pre.backbone.state_dict().items():
        torch.testing.assert_close(v, weights[k], msg=k)
    with pytest.raises(FileNotFoundError):
        LeaderModel(SWIN, {"disease": 2}, backbone_kwargs=TINY_SWIN, pretrained_file=tmp_path / "nope.safetensors")


def test_save_load_model_roundtrip_and_strict(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    out = save_model(tiny, tmp_path / "ckpt", extra={"step": 7, "teachers": ["disease", "anatomy"]})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert read_model_config(out)["extra"]["step"] == 7
    loaded = load_model(out)
    assert not loaded.training
    x = torch.rand(2, 1, 224, 224)
    tiny.eval()
    with torch.no_grad():
        a, b = tiny(x), loaded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    loaded2 = LeaderModel.load_checkpoint(tiny.save_checkpoint(tmp_path / "ckpt2"))
    assert loaded2.head_dims == tiny.head_dims

    sd = load_file(str(out / "model.safetensors"))
    sd.pop("heads.disease.fc2.bias")
    sd["heads.extra.fc1.weight"] = torch.zeros(1)
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_model(out)
    assert "heads.disease.fc2.bias" in str(err.value) and "heads.extra.fc1.weight" in str(err.value)
    with pytest.raises(TypeError):
        save_model(tiny, tmp_path / "bad", extra={"x": object()})
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_training_state_roundtrip_weights_only(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    path = save_training_state(tmp_path / "state.pt", opt, sched, step=3, stage=2, extra={"epoch": 1, "best": 0.5})
    raw = torch.load(path, weights_only=True)  # loads without allowlisting anything
    assert raw["step"] == 3 and raw["stage"] == 2

    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    model2 = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 10))
    state = load_training_state(path, opt2, sched2)
    assert state["step"] == 3 and state["stage"] == 2 and state["extra"] == {"epoch": 1, "best": 0.5}
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    # RNG streams continue exactly where they were when the state was saved
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]

    with pytest.raises(TypeError, match="numpy"):
        save_training_state(tmp_path / "np.pt", opt, extra={"x": np.float32(1.0)})
    assert not (tmp_path / "np.pt").exists()


def test_load_training_state_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "leader-training-state", "step": 1, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused"):
        load_training_state(tmp_path / "evil.pt")
    assert not marker.exists()


def test_load_model_names_a_missing_folder(tmp_path):
    import pytest as _pytest

    from leader.models.student import load_model

    with _pytest.raises(FileNotFoundError, match="no such folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with _pytest.raises(FileNotFoundError, match="missing config.json"):
        load_model(tmp_path / "empty")
