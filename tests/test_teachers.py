"""Tests for leader.teachers (frozen experts, input contracts; field report BR-05)."""

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

from leader.errors import TeacherInputError
from leader.store import EmbeddingStore
from leader.teachers import (
    XRV_SPEC,
    EmbeddingStoreTeacher,
    InputSpec,
    ModuleTeacher,
    Teacher,
    read_state_dict,
    save_teacher,
)

TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


def stub_net(in_ch=1, out_dim=32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, out_dim),
    )


def disc_and_gradient(size=224):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2).float() * 0.9 + 0.05
    gradient = (xx.float() / (size - 1)).clone()
    return torch.stack([disc, gradient])[:, None]  # [2, 1, S, S] in [0, 1]


# ------------------------------------------------------------------------------- InputSpec
def test_input_spec_defaults_frozen_and_roundtrip():
    spec = InputSpec()
    assert spec.size == 224 and spec.channels == 3 and spec.value_range == (0.0, 1.0)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.size = 512
    listy = InputSpec(size=64, channels=1, value_range=[-1024, 1024], mean=None, std=None)
    assert listy.value_range == (-1024.0, 1024.0) and hash(listy) == hash(InputSpec.from_dict(listy.to_dict()))
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="channels=3"):
        InputSpec(channels=3, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="1 value"):
        InputSpec(channels=1)  # ImageNet mean has 3 values
    with pytest.raises(ValueError):
        InputSpec(value_range=(1.0, 0.0))
    with pytest.raises(ValueError):
        InputSpec.from_dict({"size": 10, "bogus": 1})


def test_convert_ranges_channels_and_resize():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous()
    xrv = InputSpec(size=3, channels=1, value_range=(-1024, 1024), mean=None, std=None).convert(x)
    assert xrv.shape == (1, 1, 3, 3)
    assert xrv[0, 0, 0].tolist() == [-1024.0, 0.0, 1024.0]
    imnet = InputSpec(size=3).convert(torch.full((2, 1, 3, 3), 0.5))
    assert imnet.shape == (2, 3, 3, 3) and imnet.dtype == torch.float32
    expected = (0.5 - torch.tensor(InputSpec().mean)) / torch.tensor(InputSpec().std)
    torch.testing.assert_close(imnet[0, :, 1, 1], expected)
    # antialiased bilinear downsampling of a fine checkerboard keeps the mean, not aliases
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float()[None, None]
    small = InputSpec(size=16, channels=1, mean=None, std=None).convert(board)
    assert small.shape == (1, 1, 16, 16) and (small - 0.5).abs().max() < 0.05
    # values within the tolerance are clamped before conversion
    assert InputSpec(size=2, channels=1, mean=None, std=None).convert(torch.full((1, 1, 2, 2), 1.0005)).max() == 1.0


def test_check_contract():
    spec = InputSpec()
    spec.check(torch.rand(2, 1, 8, 8), "t")
    spec.check(torch.full((1, 1, 4, 4), 1.0005), "t")  # within tolerance
    with pytest.raises(TeacherInputError, match="'t'.*\\[B, 1, H, W\\]"):
        spec.check(torch.rand(2, 3, 8, 8), "t")
    with pytest.raises(TeacherInputError):
        spec.check(torch.rand(1, 8, 8), "t")
    with pytest.raises(TeacherInputError, match="dtype"):
        spec.check(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "t")
    with pytest.raises(TeacherInputError, match="min=-0.5.*max=1"):
        spec.check(torch.tensor([-0.5, 1.0]).view(1, 1, 1, 2), "t")
    with pytest.raises(TeacherInputError, match="NaN"):
        spec.check(torch.full((1, 1, 2, 2), float("nan")), "t")


# ------------------------------------------------------------------------------ BR-05
def test_br05_declared_range_is_converted_and_violations_raise():
    teacher = ModuleTeacher("xrv-stub", stub_net(in_ch=1), XRV_SPEC)
    images = disc_and_gradient()
    emb = teacher.embed(images)
    assert emb.shape == (2, teacher.dim) and emb.dtype == torch.float32
    assert (emb[0] - emb[1]).abs().max().item() > 1e-4  # BR-05: different images -> different targets
    assert torch.equal(teacher.embed(images), emb)  # BR-05: same batch twice -> identical embeddings
    converted = XRV_SPEC.convert(images)  # already in [-1024, 1024]
    with pytest.raises(TeacherInputError) as err:
        teacher.embed(converted)
    msg = str(err.value)
    assert "xrv-stub" in msg and "min=-1024" in msg and "max=1024" in msg


class _Recording(nn.Module):
    """Wraps a network; records every batch it receives (what the teacher's adapter produced)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize(
    "spec",
    [XRV_SPEC, InputSpec(size=224), InputSpec(size=224, channels=1, mean=None, std=None)],
    ids=["xrv[-1024,1024]", "imagenet", "unit[0,1]"],
)
def test_br05_each_teacher_gets_its_declared_contract(spec):
    """BR-05: each teacher declares range, channels and size; the adapter converts to exactly that."""
    rec = _Recording(stub_net(in_ch=spec.channels))
    teacher = ModuleTeacher("stub", rec, spec)
    rec.seen.clear()  # drop the dim-inference forward
    images = disc_and_gradient()  # dark field + bright disc, left-to-right gradient, in [0, 1]
    teacher.embed(images)
    (seen,) = rec.seen
    assert seen.shape == (2, spec.channels, spec.size, spec.size)
    lo, hi = spec.value_range
    mean = torch.tensor(spec.mean or (0.0,)).view(1, -1, 1, 1)
    std = torch.tensor(spec.std or (1.0,)).view(1, -1, 1, 1)
    # the gradient image spans exactly [0, 1]: its converted extremes are the declared range, normalised
    torch.testing.assert_close(seen[1].amin(dim=(1, 2)), ((lo - mean) / std).view(-1).expand(spec.channels))
    torch.testing.assert_close(seen[1].amax(dim=(1, 2)), ((hi - mean) / std).view(-1).expand(spec.channels))
    if spec.value_range == (-1024.0, 1024.0):
        assert seen.max().item() > 1.0  # never the student's [0, 1] for a [-1024, 1024] network


def test_br05_violating_batch_is_refused_before_the_forward_pass():
    """BR-05: a batch outside the [0, 1] contract raises before the network runs."""
    rec = _Recording(stub_net(in_ch=1))
    teacher = ModuleTeacher("xrv-stub", rec, XRV_SPEC)
    rec.seen.clear()
    images = disc_and_gradient()
    student_normalised = (images - 0.485) / 0.229  # the student's ImageNet normalisation, fed to the teacher
    already_xrv = images * 2048 - 1024  # already in the teacher's own range
    for bad in (student_normalised, already_xrv):
        with pytest.raises(TeacherInputError, match="xrv-stub.*must be in \\[0, 1\\]"):
            teacher.embed(bad)
    assert rec.seen == []  # the network never ran
    teacher.embed(images)
    assert len(rec.seen) == 1


def test_constant_output_warns_once():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1)

    teacher = ModuleTeacher("const", Constant(), InputSpec(size=16))
    with pytest.warns(RuntimeWarning, match="identical embeddings"):
        teacher.embed(disc_and_gradient(32))


# ------------------------------------------------------------------------------ frozen
def test_module_teacher_is_frozen_and_bn_stats_never_change():
    net = stub_net(in_ch=3, out_dim=12)
    teacher = ModuleTeacher("frozen", net, InputSpec(size=32))
    assert teacher.dim == 12 and teacher.frozen
    assert all(not p.requires_grad for p in teacher.parameters())
    bn = net[1]
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    teacher.train()
    assert not net.training
    net.train()  # even if someone flips the wrapped module into train mode
    torch.manual_seed(1)
    for _ in range(5):
        x = torch.rand(4, 1, 40, 40, requires_grad=True)
        out = teacher.embed(x)
        assert not out.requires_grad
    assert not any(m.training for m in net.modules())
    assert torch.equal(bn.running_mean, before_mean) and torch.equal(bn.running_var, before_var)
    assert bn.num_batches_tracked.item() == 0


def test_module_teacher_dims_and_outputs():
    conv = nn.Conv2d(1, 7, 3)
    teacher = ModuleTeacher("map", conv, InputSpec(size=16, channels=1, mean=None, std=None))
    assert teacher.dim == 7  # NCHW map -> global average pool
    assert teacher.embed(torch.rand(3, 1, 20, 20), ids=["a", "b", "c"]).shape == (3, 7)
    with pytest.raises(ValueError, match="ids"):
        teacher.embed(torch.rand(3, 1, 20, 20), ids=["a"])

    class Tokens(nn.Module):
        def forward(self, x):
            return x.flatten(2)

    with pytest.raises(ValueError, match="shape"):
        ModuleTeacher("tokens", Tokens(), InputSpec(size=8, channels=1, mean=None, std=None))
    wrong = ModuleTeacher("wrong-dim", nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), InputSpec(size=8, channels=1, mean=(0.5,), std=(0.25,)), dim=6)
    with pytest.raises(ValueError, match=r"\[2, 6\].*\(2, 5\)"):
        wrong.embed(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError):
        Teacher()  # abstract


# --------------------------------------------------------------------------- timm + files
def test_from_timm_weights_safetensors_pth_and_strictness(tmp_path):
    from safetensors.torch import save_file

    spec = InputSpec(size=64)
    src = ModuleTeacher.from_timm("r18", "resnet18", input_spec=spec)
    assert src.dim == 512
    x = torch.rand(2, 1, 64, 64)
    ref = src.embed(x)
    sd = {k: v.clone() for k, v in src.module.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        loaded = ModuleTeacher.from_timm("r18", "resnet18", weights=tmp_path / f, input_spec=spec)
        torch.testing.assert_close(loaded.embed(x), ref)

    broken = dict(sd)
    broken.pop("conv1.weight")
    broken["fc.weight"] = torch.zeros(10, 512)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError) as err:
        ModuleTeacher.from_timm("r18", "resnet18", weights=tmp_path / "broken.safetensors", input_spec=spec)
    assert "conv1.weight" in str(err.value) and "fc.weight" in str(err.value)
    with pytest.warns(RuntimeWarning, match="conv1.weight"):
        ModuleTeacher.from_timm("r18", "resnet18", weights=tmp_path / "broken.safetensors", input_spec=spec, strict=False)
    bad_shape = dict(sd)
    bad_shape["bn1.weight"] = torch.ones(3)
    save_file(bad_shape, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="bn1.weight"):
        ModuleTeacher.from_timm("r18", "resnet18", weights=tmp_path / "shape.safetensors", input_spec=spec, strict=False)


def test_read_state_dict_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": torch.zeros(1), "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"teacher": {"backbone.w": torch.ones(2)}, "student": {}}, tmp_path / "adam.pth")
    with pytest.raises(ValueError, match="state_dict_key"):
        read_state_dict(tmp_path / "adam.pth")
    assert list(read_state_dict(tmp_path / "adam.pth", "teacher", strip_prefix="backbone.")) == ["w"]


def test_save_teacher_and_from_checkpoint_dir_roundtrip(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **TINY_SWIN)
    net.train()
    spec = InputSpec(size=224)
    out = save_teacher(net, "swin_tiny_patch4_window7_224", TINY_SWIN, spec, "anatomy", tmp_path / "expert")
    assert net.training and all(p.requires_grad for p in net.parameters())  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "teacher.json"]
    cfg = json.loads((out / "teacher.json").read_text())
    assert {"name", "arch", "timm_kwargs", "input_spec", "dim"} <= set(cfg)
    assert cfg["dim"] == 256 and cfg["timm_kwargs"]["depths"] == [1, 1, 1, 1]

    teacher = ModuleTeacher.from_checkpoint_dir(out)
    assert teacher.name == "anatomy" and teacher.dim == 256 and teacher.input_spec == spec
    x = torch.rand(2, 1, 100, 100)
    torch.testing.assert_close(teacher.embed(x), ModuleTeacher("ref", net, spec).embed(x))
    # save via the teacher itself, then reload
    again = ModuleTeacher.from_checkpoint_dir(teacher.save(tmp_path / "again"))
    torch.testing.assert_close(again.embed(x), teacher.embed(x))
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ModuleTeacher.from_checkpoint_dir(out)


# --------------------------------------------------------------------------- store teacher
def test_embedding_store_teacher(tmp_path):
    vecs = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "cxrfm", {"embedding": 10})
    store.append(["a", "b", "a#aug0"], {"embedding": vecs})
    teacher = EmbeddingStoreTeacher("disease", tmp_path / "cxrfm")
    assert teacher.dim == 10 and teacher.frozen
    images = torch.rand(2, 1, 32, 32)
    out = teacher.embed(images, ["b", "a#aug0"])
    assert out.dtype == torch.float32 and out.shape == (2, 10)
    np.testing.assert_array_equal(out.numpy(), vecs[[1, 2]])
    assert teacher(None, ("a",)).shape == (1, 10)
    with pytest.raises(ValueError, match="ids"):
        teacher.embed(images)
    with pytest.raises(KeyError) as err:
        teacher.embed(images, ["a", "zzz"])
    assert "zzz" in str(err.value) and "disease" in str(err.value)
    with pytest.raises(ValueError):
        teacher.embed(images, ["a"])
    with pytest.raises(TeacherInputError):
        teacher.embed(images * 255, ["a", "b"])
    with pytest.raises(KeyError, match="embedding"):
        EmbeddingStoreTeacher("disease", tmp_path / "cxrfm", key="other")
    doc = EmbeddingStoreTeacher.__doc__
    assert "augment" in doc and "#aug" in doc
