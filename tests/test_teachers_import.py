"""Real-world teachers built from checkpoints made here in their published layouts (issue 6).

No weights can be downloaded: every test writes random weights in exactly the layout the
loader expects to meet (same keys and shapes) and checks that loading gives the same outputs
as the source module, and that each teacher type converts the project's ``[0, 1]`` images to
its own input contract.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from leader.errors import TeacherInputError  # noqa: E402
from leader.store import EmbeddingStore  # noqa: E402
from leader.teachers import EmbeddingStoreTeacher, InputSpec  # noqa: E402
from leader.teachers.adam import build_timm_with_weights, load_adam, read_adam_state_dict  # noqa: E402
from leader.teachers.base import IMAGENET_MEAN, IMAGENET_SPEC, IMAGENET_STD, XRV_SPEC  # noqa: E402
from leader.teachers.cxr_foundation import (  # noqa: E402
    TFRecordError,
    crc32c,
    file_stem_for,
    import_cxr_foundation,
    iter_tfrecord,
    parse_example,
    read_cxr_foundation,
)
from leader.teachers.exported import (  # noqa: E402
    load_torchscript_teacher,
    save_torchscript,
)
from leader.teachers.spec import load_teacher  # noqa: E402
from leader.teachers.xrv import load_xrv  # noqa: E402

SMALL = 32  # input side used for the big CNNs in tests (any size works for ResNet / ConvNeXt)


# ============================================================================ helpers
def images(n=2, size=SMALL, seed=0):
    """A batch spanning exactly [0, 1]: a bright disc on dark, and a left-right gradient."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.4).float()
    grad = (xx + 1) / 2
    out = [disc, grad] + [torch.rand(size, size, generator=g) for _ in range(max(0, n - 2))]
    return torch.stack(out[:n])[:, None]


def random_state_dict(arch: str, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    """Random weights for a timm arch with the real keys and shapes, without initialising the network."""
    import timm

    with torch.device("meta"):
        meta = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in meta.state_dict().items():
        if not v.is_floating_point():
            out[k] = torch.zeros(v.shape, dtype=v.dtype)
            continue
        w = torch.empty(v.shape).normal_(generator=g)
        if k.endswith("running_var"):
            w.abs_().mul_(0.25).add_(0.75)
        elif k.endswith("running_mean"):
            w.mul_(0.05)
        elif v.dim() == 1:
            w.mul_(0.05).add_(1.0 if k.endswith(".weight") else 0.0)
        else:
            w.mul_(1 / math.sqrt(math.prod(v.shape[1:])))
        out[k] = w
    return out


def reference_module(arch: str, sd: dict[str, torch.Tensor]) -> nn.Module:
    """The source network: timm model holding exactly ``sd`` (assigned with torch's own loader)."""
    import timm

    with torch.device("meta"):
        m = timm.create_model(arch, pretrained=False, num_classes=0)
    m.load_state_dict(sd, strict=True, assign=True)
    return m.eval()


def imagenet(x: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.expand(-1, 3, -1, -1)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


class Capture:
    """Forward pre-hook recording what a network received."""

    def __init__(self, module: nn.Module):
        self.x = None
        module.register_forward_pre_hook(self)

    def __call__(self, _m, args):
        self.x = args[0].detach().clone()


# ============================================================================ Adam
def _adam_key_layout(sd, scheme):
    if scheme == "teacher/module.backbone.":
        return {"module.backbone." + k: v for k, v in sd.items()}
    if scheme == "state_dict/module.":
        return {"module." + k: v for k, v in sd.items()}
    if scheme == "model/backbone.":
        return {"backbone." + k: v for k, v in sd.items()}
    raise AssertionError(scheme)


@pytest.fixture(scope="module")
def adam_v1(tmp_path_factory):
    """Adam v1 (ResNet-50, 2048-d) checkpoint: {teacher, student, epoch}, DDP + SSL prefixes, heads."""
    sd = random_state_dict("resnet50", seed=1)
    teacher = _adam_key_layout(sd, "teacher/module.backbone.")
    teacher["module.backbone.fc.weight"] = torch.randn(10, 2048)  # classifier inside the backbone scope
    teacher["module.backbone.fc.bias"] = torch.zeros(10)
    teacher["module.head.mlp.0.weight"] = torch.randn(16, 2048)  # SSL projection head
    teacher["module.head.last_layer.weight"] = torch.randn(8, 16)
    student = dict(teacher)  # shares storage: small file
    student["module.backbone.conv1.weight"] = torch.randn_like(sd["conv1.weight"]) * 0.1
    path = tmp_path_factory.mktemp("adam") / "adam_v1.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 42, "optimizer": {"lr": 0.1}}, path)
    return path, sd


@pytest.fixture(scope="module")
def adam_v2(tmp_path_factory):
    """Adam v2 (ConvNeXt-B, 1024-d) checkpoint: {state_dict: module.*} with a classifier head."""
    sd = random_state_dict("convnext_base", seed=2)
    wrapped = _adam_key_layout(sd, "state_dict/module.")
    wrapped["module.head.fc.weight"] = torch.randn(14, 1024)
    wrapped["module.head.fc.bias"] = torch.zeros(14)
    path = tmp_path_factory.mktemp("adam") / "adam_v2.pth"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    return path, sd


def test_adam_v1_roundtrip_teacher_weights_and_imagenet_input(adam_v1):
    path, sd = adam_v1
    spec = InputSpec(size=SMALL)  # ImageNet contract at a small size (speed)
    t = load_adam(path, name="anatomy", input_spec=spec)
    assert (t.dim, t.arch, t.adam["version"], t.adam["entry"]) == (2048, "resnet50", "v1", "teacher")
    assert "module.head.mlp.0.weight" in t.adam["dropped"] and "fc.weight" in t.adam["dropped"]
    assert not any(p.requires_grad for p in t.parameters())
    cap = Capture(t.module)
    x = images()
    out = t.embed(x)
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    # the network received ImageNet-normalised RGB
    assert cap.x.shape == (2, 3, SMALL, SMALL)
    for c in range(3):
        lo, hi = (0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], (1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert cap.x[:, c].min().item() == pytest.approx(lo, abs=1e-4)
        assert cap.x[:, c].max().item() == pytest.approx(hi, abs=1e-4)
    with torch.no_grad():
        ref = reference_module("resnet50", sd)(imagenet(x, SMALL))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert (out[0] - out[1]).abs().max() > 1e-4  # different images -> different targets (BR-05)
    # the student entry is a different network
    s = load_adam(path, which="student", input_spec=spec)
    assert s.adam["entry"] == "student"
    assert (s.embed(x) - out).abs().max() > 1e-4


def test_adam_v1_default_spec_is_imagenet_224(adam_v1):
    t = load_teacher("anatomy", f"adam:{adam_v1[0]}")
    assert t.input_spec == IMAGENET_SPEC and t.dim == 2048


def test_adam_v2_roundtrip_and_original_convnext_layout(adam_v2, tmp_path):
    path, sd = adam_v2
    spec = InputSpec(size=SMALL)
    t = load_adam(path, input_spec=spec)
    assert (t.dim, t.arch, t.adam["version"], t.adam["entry"]) == (1024, "convnext_base", "v2", "state_dict")
    assert "head.fc.weight" in t.adam["dropped"]
    x = images()
    out = t.embed(x)
    ref_net = reference_module("convnext_base", sd)
    with torch.no_grad():
        ref = ref_net(imagenet(x, SMALL))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)

    # the same weights saved by the original ConvNeXt code (facebookresearch names), under "model"
    def fb_name(k):
        k = k.replace("stem.", "downsample_layers.0.")
        for i in range(1, 4):
            k = k.replace(f"stages.{i}.downsample.", f"downsample_layers.{i}.")
        k = k.replace(".blocks.", ".").replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        return k.replace("head.norm.", "norm.")

    fb = {fb_name(k): v for k, v in sd.items()}
    fb["head.weight"] = torch.randn(1000, 1024)
    fb["head.bias"] = torch.zeros(1000)
    assert "downsample_layers.0.0.weight" in fb and "stages.0.0.dwconv.weight" in fb
    fb_path = tmp_path / "adam_v2_fb.pth"
    torch.save({"model": fb}, fb_path)
    w = read_adam_state_dict(fb_path)
    assert w.version == "v2" and set(w.state_dict) == set(sd)
    for k in sd:  # identical weights under timm's names -> identical network
        assert torch.equal(w.state_dict[k], sd[k]), k


@pytest.mark.parametrize(
    "layout, entry",
    [
        ("teacher", "teacher"),
        ("state_dict", "state_dict"),
        ("model_backbone_heads", "model"),
        ("plain", "(top level)"),
        ("nested", "state_dict.teacher"),
        ("student_only", "student"),
        ("safetensors", "(top level)"),
    ],
)
def test_adam_checkpoint_layouts(tmp_path, layout, entry, caplog):
    """Key handling on tiny stand-in tensors: wrappers, prefixes, heads, entry choice."""
    keys = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.2.bn3.running_var"]
    sd = {k: torch.full((2,), float(i)) for i, k in enumerate(keys)}
    other = {k: v + 100 for k, v in sd.items()}
    mb = {"module.backbone." + k: v for k, v in sd.items()}
    head = {"module.head.mlp.0.weight": torch.zeros(3)}
    if layout == "teacher":
        obj = {"student": {"module.backbone." + k: v for k, v in other.items()}, "teacher": {**mb, **head}}
    elif layout == "state_dict":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1}
    elif layout == "model_backbone_heads":
        obj = {"model": {**{"backbone." + k: v for k, v in sd.items()}, "head.weight": torch.zeros(3),
                         "projector.0.weight": torch.zeros(3)}}
    elif layout == "plain":
        obj = dict(sd)
    elif layout == "nested":
        obj = {"state_dict": {"teacher": mb, "student": {"module.backbone." + k: v for k, v in other.items()}}}
    elif layout == "student_only":
        obj = {"student": {"module.backbone." + k: v for k, v in sd.items()}}
    else:
        obj = mb
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "adam.safetensors"
        save_file(obj, str(path))
    else:
        path = tmp_path / "adam.pth"
        torch.save(obj, path)
    with caplog.at_level("WARNING"):
        w = read_adam_state_dict(path)
    assert w.entry == entry
    assert w.version == "v1" and w.arch == "resnet50" and w.dim == 2048
    assert set(w.state_dict) == set(keys)
    for k in keys:
        assert torch.equal(w.state_dict[k], sd[k])
    if layout == "student_only":
        assert "student" in caplog.text
    if layout == "model_backbone_heads":
        assert "head.weight" in w.dropped and "projector.0.weight" in w.dropped


def test_adam_errors(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"teacher": {"foo.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="cannot tell Adam v1"):
        read_adam_state_dict(path)
    torch.save({"teacher": {"conv1.weight": torch.zeros(1), "layer4.0.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="look like v1"):
        read_adam_state_dict(path, version="v2")
    with pytest.raises(ValueError, match="no 'student'"):
        read_adam_state_dict(path, which="student")
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="no state dict found"):
        read_adam_state_dict(path)


def test_timm_builder_with_local_checkpoint_drops_heads_only():
    sd = random_state_dict("resnet18", seed=3)
    sd["fc.weight"] = torch.zeros(5, 512)
    m, dropped, missing = build_timm_with_weights("resnet18", sd)
    assert dropped == ["fc.weight"] and missing == []
    assert torch.equal(m.state_dict()["conv1.weight"], sd["conv1.weight"])


# ============================================================================ torchxrayvision
@pytest.fixture(scope="module")
def xrv_weights(tmp_path_factory):
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    net = xrv.models.DenseNet(weights=None).eval()  # random weights, the published architecture
    d = tmp_path_factory.mktemp("xrv")
    pt = d / "densenet121-res224-all.pt"
    torch.save(net.state_dict(), pt)  # the "local weights file" (tensor-only)
    return net, pt


def test_xrv_densenet_local_weights_features_and_input_range(xrv_weights, tmp_path):
    net, pt = xrv_weights
    t = load_xrv("disease", pt)
    assert t.dim == 1024 and t.input_spec == XRV_SPEC
    # the real contract: any size is resized to 224², one channel, values spread over [-1024, 1024]
    cap = Capture(t.module)
    x1 = images(n=1, size=256)  # a bright disc on black: exactly 0 and 1 survive the resize
    assert t.embed(x1).shape == (1, 1024)
    assert cap.x.shape == (1, 1, 224, 224)
    assert cap.x.min().item() == pytest.approx(-1024, abs=1e-2)
    assert cap.x.max().item() == pytest.approx(1024, abs=1e-2)
    # identical to torchxrayvision's own feature function (checked at a small size: cheaper, same maths)
    small = load_xrv("disease", pt, input_spec=InputSpec(size=64, channels=1, value_range=(-1024.0, 1024.0),
                                                         mean=None, std=None))
    x = images(size=64)
    out = small.embed(x)
    with torch.no_grad():
        ref = net.features2(x * 2048 - 1024)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    assert (out[0] - out[1]).abs().max() > 1e-4
    # BR-05: an image already in xrv's range is refused before the forward pass
    with pytest.raises(TeacherInputError, match="1024"):
        t.embed(x * 2048 - 1024)
    # same weights as safetensors, and through the --teacher spec form
    from safetensors.torch import save_file

    st = tmp_path / "xrv.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    t2 = load_teacher("disease", f"xrv:{st}")
    assert t2.input_spec == XRV_SPEC and t2.dim == 1024
    sd2 = t2.module.state_dict()
    assert all(torch.equal(v, sd2[k]) for k, v in t.module.state_dict().items())


# ============================================================================ Hugging Face
def test_hf_without_transformers_raises_clear_importerror(monkeypatch, tmp_path):
    from leader.teachers.hf import load_hf

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        load_hf("anatomy", tmp_path)


def test_hf_vision_encoder_from_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    import json

    from leader.teachers.hf import load_hf

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14, num_channels=3)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval()
    d = tmp_path / "rad-dino-tiny"
    model.save_pretrained(d)
    mean, std = [0.5307] * 3, [0.2583] * 3  # RAD-DINO's values
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"do_center_crop": True, "crop_size": {"height": 28, "width": 28}, "size": {"shortest_edge": 28},
         "do_normalize": True, "image_mean": mean, "image_std": std, "do_rescale": True, "rescale_factor": 1 / 255}))
    t = load_teacher("anatomy", f"hf:{d}")
    assert t.input_spec.size == 28 and t.input_spec.channels == 3
    assert t.input_spec.mean == tuple(mean) and t.input_spec.std == tuple(std)
    assert t.dim == 32
    cap = Capture(t.module)
    x = images(size=40)
    out = t.embed(x)
    assert cap.x.shape == (2, 3, 28, 28)
    assert cap.x.min().item() == pytest.approx((0 - 0.5307) / 0.2583, abs=1e-3)
    with torch.no_grad():
        ref = model(pixel_values=t.input_spec.convert(x)).pooler_output
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # a ...ForImageClassification checkpoint: encoder prefix stripped, classifier dropped
    clf = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**{**cfg.to_dict(), "num_labels": 3}))
    clf.dinov2.load_state_dict(model.state_dict())
    d2 = tmp_path / "clf"
    clf.save_pretrained(d2)
    (d2 / "preprocessor_config.json").write_text((d / "preprocessor_config.json").read_text())
    with pytest.raises(ValueError, match="classifier"):
        load_hf("anatomy", d2)  # strict: the classifier keys are named
    t2 = load_hf("anatomy", d2, strict=False)
    torch.testing.assert_close(t2.embed(x), out, rtol=0, atol=1e-5)


# ============================================================================ TorchScript / ONNX
class TinyNet(nn.Module):
    def __init__(self, in_ch=1, dim=6):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(in_ch, dim, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class InputStats(nn.Module):
    """Returns what it received: per-sample min, max, mean of channel 0, mean of the last channel."""

    def forward(self, x):
        return torch.stack([x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)), x[:, 0].mean(dim=(1, 2)),
                            x[:, -1].mean(dim=(1, 2))], dim=1)


def test_torchscript_teacher_embedded_spec_and_conversion(tmp_path):
    spec = InputSpec(size=32, channels=1, value_range=(-1024.0, 1024.0), mean=None, std=None)
    net = TinyNet().eval()
    path = save_torchscript(net, tmp_path / "net.pt", spec, torch.rand(2, 1, 32, 32))
    t = load_teacher("disease", f"torchscript:{path}")
    assert t.input_spec == spec and t.dim == 6
    x = images(size=48)
    with torch.no_grad():
        ref = net(spec.convert(x))
    torch.testing.assert_close(t.embed(x), ref, rtol=1e-5, atol=1e-4)
    # what the network receives: [0, 1] mapped to [-1024, 1024]
    stats_path = save_torchscript(InputStats(), tmp_path / "stats.pt", spec, torch.rand(2, 1, 32, 32))
    s = load_torchscript_teacher("probe", stats_path).embed(images(size=32))
    assert s[:, 0].min().item() == pytest.approx(-1024, abs=1e-3) and s[:, 1].max().item() == pytest.approx(1024, abs=1e-3)


def test_torchscript_sidecar_spec_and_default_warning(tmp_path):
    net = TinyNet(in_ch=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.rand(1, 3, 32, 32))
    plain = tmp_path / "plain.pt"
    torch.jit.save(traced, str(plain))
    with pytest.warns(RuntimeWarning, match="no input spec"):
        t = load_torchscript_teacher("x", plain)
    assert t.input_spec == IMAGENET_SPEC
    spec = InputSpec(size=32, channels=3, mean=(0.5,), std=(0.25,))
    (tmp_path / "plain.pt.input_spec.json").write_text(__import__("json").dumps(spec.to_dict()))
    t = load_torchscript_teacher("x", plain)
    assert t.input_spec == spec
    stats = tmp_path / "stats.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(InputStats(), torch.rand(1, 3, 32, 32)), str(stats))
    (tmp_path / "stats.pt.input_spec.json").write_text(__import__("json").dumps(spec.to_dict()))
    s = load_torchscript_teacher("x", stats).embed(images(size=32))
    assert s[:, 0].min().item() == pytest.approx(-2.0, abs=1e-4)  # (0 - 0.5) / 0.25
    assert s[:, 1].max().item() == pytest.approx(2.0, abs=1e-4)  # (1 - 0.5) / 0.25
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "not_ts.pt")
        load_torchscript_teacher("x", tmp_path / "not_ts.pt")


def _export_onnx(module, path, in_ch, size, spec=None, static_batch=False):
    pytest.importorskip("onnx")
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, in_ch, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["features"],
                          dynamic_axes=None if static_batch else {"pixels": {0: "b"}, "features": {0: "b"}})
    if spec is not None:
        import json

        import onnx

        proto = onnx.load(str(path))
        e = proto.metadata_props.add()
        e.key, e.value = "leader_input_spec", json.dumps(spec.to_dict())
        onnx.save(proto, str(path))
    return path


def test_onnx_teacher_outputs_and_conversion(tmp_path):
    pytest.importorskip("onnxruntime")
    from leader.teachers.exported import OnnxTeacher

    spec = InputSpec(size=32, channels=1, value_range=(-1024.0, 1024.0), mean=None, std=None)
    net = TinyNet()
    path = _export_onnx(net, tmp_path / "net.onnx", 1, 32, spec)
    t = load_teacher("disease", str(path))  # recognised by suffix
    assert isinstance(t, OnnxTeacher) and t.input_spec == spec and t.dim == 6
    x = images(n=3, size=40)
    with torch.no_grad():
        ref = net(spec.convert(x))
    torch.testing.assert_close(t.embed(x), ref, rtol=1e-5, atol=1e-4)
    # conversion: the graph receives [-1024, 1024]
    stats = _export_onnx(InputStats(), tmp_path / "stats.onnx", 1, 32, spec)
    s = OnnxTeacher("probe", stats).embed(images(size=32))
    assert s[:, 0].min().item() == pytest.approx(-1024, abs=1e-3) and s[:, 1].max().item() == pytest.approx(1024, abs=1e-3)
    # no spec anywhere: ImageNet default sized from the static input shape, with a warning; fixed batch 1 handled
    plain = _export_onnx(TinyNet(in_ch=3), tmp_path / "plain.onnx", 3, 48, static_batch=True)
    with pytest.warns(RuntimeWarning, match="no input spec"):
        t3 = load_teacher("x", f"onnx:{plain}")
    assert t3.input_spec == InputSpec(size=48, channels=3)
    assert t3.embed(images(n=3)).shape == (3, 6)
    with pytest.raises(ValueError, match="no output"):
        OnnxTeacher("x", path, output="nope")


# ============================================================================ CXR Foundation
def _crc32c_bitwise(data: bytes) -> int:
    """Independent reference CRC-32C (bit by bit)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: dict) -> bytes:
    """tf.train.Example wire format: Example{1: Features{1: map entry{1: key, 2: Feature}}}."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, (bytes, str)):
            value = value.encode() if isinstance(value, str) else value
            feature = _len_field(1, _len_field(1, value))  # bytes_list
        else:
            arr = np.asarray(value, dtype="<f4").reshape(-1)
            feature = _len_field(2, _len_field(1, arr.tobytes()))  # float_list, packed
        entries += _len_field(1, _len_field(1, key.encode()) + _len_field(2, feature))
    return _len_field(1, entries)


def write_tfrecord(path, records: list[bytes]) -> None:
    with open(path, "wb") as fh:
        for data in records:
            header = struct.pack("<Q", len(data))
            fh.write(header + struct.pack("<I", _masked(header)) + data + struct.pack("<I", _masked(data)))


def test_crc32c_and_tfrecord_framing(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 4, 100, 5000, 16383, 16384, 20001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n
    ex = encode_example({"embedding": [1.5, -2.0, 3.25], "image/id": b"gs://bucket/00000001_000.dcm"})
    path = tmp_path / "a.tfrecord"
    write_tfrecord(path, [ex, ex])
    recs = list(iter_tfrecord(path))
    assert recs == [ex, ex]
    feats = parse_example(recs[0])
    np.testing.assert_array_equal(feats["embedding"], np.array([1.5, -2.0, 3.25], np.float32))
    assert feats["image/id"] == [b"gs://bucket/00000001_000.dcm"]
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0x01  # corrupt a data byte of record 0
    (tmp_path / "bad.tfrecord").write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="record 0.*CRC"):
        list(iter_tfrecord(tmp_path / "bad.tfrecord"))
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01  # corrupt the length field
    (tmp_path / "badlen.tfrecord").write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="length"):
        list(iter_tfrecord(tmp_path / "badlen.tfrecord"))
    (tmp_path / "trunc.tfrecord").write_bytes(path.read_bytes()[:-7])
    with pytest.raises(TFRecordError, match="truncated"):
        list(iter_tfrecord(tmp_path / "trunc.tfrecord"))
    import gzip

    (tmp_path / "gz.tfrecord").write_bytes(gzip.compress(path.read_bytes()))  # compression_type="GZIP"
    assert list(iter_tfrecord(tmp_path / "gz.tfrecord")) == [ex, ex]


def test_parse_example_kinds_and_malformed(tmp_path):
    # Feature 3 = Int64List (packed varints: 5, then -1 as a ten-byte two's complement), an empty Feature
    ints = _varint(5) + bytes([0xFF] * 9 + [0x01])
    entry_int = _len_field(1, b"n") + _len_field(2, _len_field(3, _len_field(1, ints)))
    entry_empty = _len_field(1, b"none") + _len_field(2, b"")
    ex = _len_field(1, _len_field(1, entry_int) + _len_field(1, entry_empty))
    feats = parse_example(ex)
    assert feats["n"].dtype == np.int64 and feats["n"].tolist() == [5, -1]
    assert feats["none"] is None
    assert parse_example(encode_example({"e": []}))["e"].shape == (0,)
    with pytest.raises(ValueError, match="malformed"):
        parse_example(b"\x0a\x05\x01")                       # a length beyond the end
    # inside an import the error names the file and the record
    good = encode_example({"image/id": b"a.png", "embedding": np.zeros(1376, np.float32)})
    write_tfrecord(tmp_path / "m.tfrecord", [good, b"\x0a\x05\x01"])
    with pytest.raises(ValueError, match=r"m.tfrecord: record 1: malformed"):
        import_cxr_foundation(tmp_path / "s", tmp_path / "m.tfrecord")


def test_parse_example_beside_tensorflows_own_example_proto(tmp_path):
    """With TensorFlow loaded, protobuf's default pool already holds ``tensorflow.Example`` and
    refuses tfrecord's copy of the schema: parsing then uses the class already in the pool."""
    import subprocess

    from tfrecord import example_pb2

    import leader.teachers.cxr_foundation as cxr

    script = (
        "import importlib.util, sys\n"
        "from google.protobuf import descriptor_pb2, descriptor_pool\n"
        f"fd = descriptor_pb2.FileDescriptorProto.FromString(bytes.fromhex({example_pb2.DESCRIPTOR.serialized_pb.hex()!r}))\n"
        "fd.name = 'tensorflow/core/example/example.proto'\n"  # registered as TensorFlow does
        "descriptor_pool.Default().Add(fd)\n"
        f"spec = importlib.util.spec_from_file_location('cxr', {cxr.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['cxr'] = m; spec.loader.exec_module(m)\n"
        f"f = m.parse_example(bytes.fromhex({encode_example({'embedding': [1.5, -2.0]}).hex()!r}))\n"
        "print(f['embedding'].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.5, -2.0]"


def _google_outputs(folder, stems, fmt, suffix, seed=0):
    """Write Google-tooling-style output: one file per image, embedding flattened."""
    shape = {"v1": (1, 1376), "elixr-c": (1, 8, 8, 1376), "elixr-b": (1, 32, 768)}[fmt]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    values = {}
    for stem in stems:
        v = rng.standard_normal(shape).astype(np.float32)
        values[stem] = v
        if suffix == ".npz":
            np.savez(folder / f"{stem}.npz", embedding=v.flatten())
        else:
            write_tfrecord(folder / f"{stem}.tfrecord", [encode_example({"embedding": v.flatten()})])
    return values


@pytest.mark.parametrize("suffix", [".tfrecord", ".npz"])
def test_cxr_foundation_v1_import_whole_images(tmp_path, suffix):
    stems = ["00000001_000", "00000002_000", "00000003_001"]
    vals = _google_outputs(tmp_path / "out", stems, "v1", suffix)
    ids = [f"nih/{s}" for s in stems]
    store = tmp_path / "store"
    rep = import_cxr_foundation(store, tmp_path / "out", ids=ids)
    assert (rep.format, rep.dim, rep.written, rep.skipped_existing) == ("v1", 1376, 3, 0)
    s = EmbeddingStore.open(store)
    assert s.dims == {"embedding": 1376} and s.meta["cxr_format"] == "v1"
    np.testing.assert_array_equal(s.get(["nih/00000002_000"], "embedding")[0], vals["00000002_000"][0])
    # re-running is a no-op (resumable)
    rep2 = import_cxr_foundation(store, tmp_path / "out", ids=ids)
    assert (rep2.written, rep2.skipped_existing) == (0, 3)
    # the store is a teacher: looked up by id
    t = EmbeddingStoreTeacher("disease", store)
    got = t.embed(images(n=2, size=16), ids=["nih/00000003_001", "nih/00000001_000"])
    np.testing.assert_array_equal(got.numpy(), np.stack([vals["00000003_001"][0], vals["00000001_000"][0]]))


@pytest.mark.parametrize("fmt, dim, axes", [("elixr-c", 1376, (1, 2)), ("elixr-b", 768, (1,))])
def test_cxr_foundation_elixr_v2_pooled(tmp_path, fmt, dim, axes):
    stems = ["a1", "b2"]
    vals = _google_outputs(tmp_path / "out", stems, fmt, ".tfrecord")
    rep = import_cxr_foundation(tmp_path / "store", tmp_path / "out", id_prefix="jsrt/")
    assert (rep.format, rep.dim, rep.written) == (fmt, dim, 2)
    got = EmbeddingStore.open(tmp_path / "store").get(["jsrt/a1", "jsrt/b2"], "embedding")
    want = np.stack([vals[s][0].mean(axis=tuple(a - 1 for a in axes)) for s in stems])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # the flattened order is channels last: pooling a constant-per-channel map returns the channels
    const = np.tile(np.arange(dim, dtype=np.float32), {"elixr-c": 64, "elixr-b": 32}[fmt])
    np.savez(tmp_path / "const.npz", embedding=const)
    (key, vec, name), = read_cxr_foundation(tmp_path / "const.npz")
    assert key == "const" and name == fmt
    np.testing.assert_array_equal(vec, np.arange(dim, dtype=np.float32))


def test_cxr_foundation_patches_multi_record_and_id_map(tmp_path):
    patch_ids = ["nih/00000001_000::disease:0", "nih/00000001_000::healthy:1"]
    image_ids = ["nih/00000001_000"]
    rng = np.random.default_rng(1)
    out = tmp_path / "out"
    out.mkdir()
    vecs = {}
    for pid in patch_ids:  # patch crops named with file_stem_for(patch_id)
        v = rng.standard_normal(1376).astype(np.float32)
        vecs[pid] = v
        write_tfrecord(out / f"{file_stem_for(pid)}.tfrecord", [encode_example({"embedding": v})])
    # whole image in a Beam-style multi-record file carrying image/id
    v_img = rng.standard_normal(1376).astype(np.float32)
    other = rng.standard_normal(1376).astype(np.float32)
    write_tfrecord(tmp_path / "beam.tfrecord", [
        encode_example({"image/id": b"gs://b/00000001_000.png", "embedding": v_img}),
        encode_example({"image/id": b"gs://b/unrelated.png", "embedding": other}),
    ])
    with pytest.raises(ValueError, match="match no known id.*unrelated"):
        import_cxr_foundation(tmp_path / "s", [out, tmp_path / "beam.tfrecord"], ids=patch_ids + image_ids)
    assert not (tmp_path / "s").exists()  # checked before anything is written
    import csv

    with open(tmp_path / "map.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "id"])
        w.writerow(["unrelated.png", "nih/00000001_000"])
        w.writerow(["00000001_000", "nih/elsewhere"])
    rep = import_cxr_foundation(tmp_path / "s", [out, tmp_path / "beam.tfrecord"], ids=patch_ids + image_ids + ["nih/elsewhere"],
                                id_map=tmp_path / "map.csv")
    assert rep.written == 4
    s = EmbeddingStore.open(tmp_path / "s")
    np.testing.assert_array_equal(s.get([patch_ids[0]], "embedding")[0], vecs[patch_ids[0]])
    np.testing.assert_array_equal(s.get(["nih/00000001_000"], "embedding")[0], other)  # remapped by the CSV
    np.testing.assert_array_equal(s.get(["nih/elsewhere"], "embedding")[0], v_img)


def test_cxr_foundation_clear_errors(tmp_path):
    good = tmp_path / "good"
    _google_outputs(good, ["x1", "x2"], "v1", ".npz")
    # missing ids
    with pytest.raises(ValueError, match=r"1 of 3 ids have no embedding.*'d/x3'"):
        import_cxr_foundation(tmp_path / "s", good, ids=["d/x1", "d/x2", "d/x3"])
    rep = import_cxr_foundation(tmp_path / "s", good, ids=["d/x1", "d/x2", "d/x3"], allow_missing=True)
    assert rep.missing == ["d/x3"] and rep.written == 2
    # wrong shape: a length of no known model
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "y1.npz", embedding=np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match=r"y1.npz.*1000 values.*1376"):
        import_cxr_foundation(tmp_path / "s2", bad)
    # a v1 file among ELIXR-C files
    mixed = tmp_path / "mixed"
    _google_outputs(mixed, ["m1"], "elixr-c", ".tfrecord")
    np.savez(mixed / "m2.npz", embedding=np.zeros(1376, np.float32))
    with pytest.raises(ValueError, match=r"m2.npz.*does not match format 'elixr-c'.*v1 layout"):
        import_cxr_foundation(tmp_path / "s3", mixed)
    # a requested format that does not fit
    with pytest.raises(ValueError, match="does not match format 'elixr-b'"):
        import_cxr_foundation(tmp_path / "s4", good, fmt="elixr-b", id_prefix="d/")
    # into a store of another width, or of another model with the same width
    _google_outputs(tmp_path / "eb", ["e1"], "elixr-b", ".npz")
    with pytest.raises(ValueError, match="width 1376"):
        import_cxr_foundation(tmp_path / "s", tmp_path / "eb", id_prefix="d/")
    with pytest.raises(ValueError, match="holds v1 embeddings.*elixr-c"):
        import_cxr_foundation(tmp_path / "s", mixed / "m1.tfrecord", id_prefix="d/")
    # a record without an embedding, two files for one id, no files
    nof = tmp_path / "nof"
    nof.mkdir()
    write_tfrecord(nof / "z.tfrecord", [encode_example({"image/format": b"png"})])
    with pytest.raises(ValueError, match="no float feature 'embedding'"):
        import_cxr_foundation(tmp_path / "s5", nof)
    with pytest.raises(ValueError, match="several embeddings for one id"):
        import_cxr_foundation(tmp_path / "s6", [good, good / "x1.npz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz or .tfrecord"):
        import_cxr_foundation(tmp_path / "s7", tmp_path / "empty")


def test_cli_teachers_import(tmp_path, capsys):
    import pandas as pd

    from leader.cli import main

    pids = ["jsrt/JPCLN001::landmark:apex", "jsrt/JPCLN001::landmark:hilum"]
    out = tmp_path / "out"
    out.mkdir()
    for i, pid in enumerate(pids):
        np.savez(out / f"{file_stem_for(pid)}.npz", embedding=np.full(1376, i, np.float32))
    pd.DataFrame({"patch_id": pids, "image_id": ["jsrt/JPCLN001"] * 2}).to_parquet(tmp_path / "p.parquet")
    rc = main(["teachers", "import", str(out), "--store", str(tmp_path / "store"), "--patches", str(tmp_path / "p.parquet")])
    assert rc == 0
    assert "2 new embeddings (v1, 1376-d)" in capsys.readouterr().out
    rc = main(["teachers", "import", str(out), "--store", str(tmp_path / "store2"), "--patches", str(tmp_path / "p.parquet"),
               "--format", "elixr-b"])
    assert rc == 2 and "does not match format" in capsys.readouterr().err
