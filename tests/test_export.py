"""Student export (timm / HF folder / ONNX) and the ``leader.load(path).embed(images)`` API (issue 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import leader  # noqa: E402
from leader.export import export_hf, export_onnx, export_timm  # noqa: E402
from leader.models import LeaderModel, save_model  # noqa: E402

SWIN = "swin_tiny_patch4_window7_224"
TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
HEADS = {"disease": 24, "anatomy": 16}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A trained-looking checkpoint: run/student/final + run/metrics.json (as leader demo lays it out)."""
    torch.manual_seed(0)
    model = LeaderModel(SWIN, head_dims=HEADS, img_size=224, backbone_kwargs=TINY_SWIN).eval()
    run = tmp_path_factory.mktemp("run")
    ckpt = run / "student" / "final"
    save_model(model, ckpt, extra={"config": {"loss": "mse", "optim": {"lr": 2e-4}, "seed": 0}})
    (run / "metrics.json").write_text(json.dumps({
        "data": "60 chest phantoms (3 splits)", "retrieval_k": 5, "retrieval_precision_at_k": 0.61,
        "anatomy_knn_accuracy": 0.83, "teachers": {"teacher_disease": {"retrieval_precision_at_k": 0.55}},
        "config": {"ignored": True},
    }))
    x = torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    return model, ckpt, x, ref


def test_leader_load_embed_shapes_and_inputs(student, tmp_path):
    model, ckpt, x, ref = student
    m = leader.load(ckpt)
    assert m.dims == {"e_da": 256, "disease": 24, "anatomy": 16} and m.img_size == 224
    out = m.embed(x)
    assert set(out) == {"e_da", "disease", "anatomy"}
    assert out["e_da"].shape == (3, 256) and out["disease"].shape == (3, 24) and out["anatomy"].shape == (3, 16)
    for k in out:
        assert out[k].dtype == torch.float32 and not out[k].requires_grad
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-6)
    # [B, H, W] numpy, batching, and resizing from another size
    np_out = m.embed(x[:, 0].numpy(), batch_size=2)
    torch.testing.assert_close(np_out["disease"], ref["disease"], rtol=0, atol=1e-6)
    assert m.embed(torch.rand(2, 1, 300, 260))["e_da"].shape == (2, 256)
    # image files (read with leader.io.read_image)
    from PIL import Image

    arr = (np.linspace(0, 255, 128 * 128).reshape(128, 128)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert m.embed([tmp_path / "a.png", str(tmp_path / "a.png")])["anatomy"].shape == (2, 16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.embed(x * 255)
    with pytest.raises(ValueError, match="grayscale"):
        m.embed(torch.rand(2, 3, 224, 224))
    assert "[B, D]" in type(m).embed.__doc__ and "anatomy" in leader.load.__doc__


def test_import_leader_stays_light():
    code = "import sys, leader; assert 'torch' not in sys.modules, 'torch imported'; assert callable(leader.load)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_timm_reloads_in_timm_with_identical_features(student, tmp_path):
    import timm

    model, ckpt, x, ref = student
    rep = export_timm(ckpt, tmp_path / "student.safetensors")
    assert rep["checked"] and rep["max_abs_diff"] <= 1e-5
    info = json.loads((tmp_path / "student.json").read_text())
    assert info["model_name"] == SWIN and info["kwargs"]["embed_dim"] == 32
    # what a user of timm does, independently of LeADER
    net = timm.create_model(SWIN, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "student.safetensors")),
                            **info["kwargs"]).eval()
    mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(info["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        feats = net((x.expand(-1, 3, -1, -1) - mean) / std)
    torch.testing.assert_close(feats, ref["e_da"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no heads"):
        leader.load(tmp_path / "student.safetensors")


def test_export_hf_folder_model_card_and_reload(student, tmp_path):
    model, ckpt, x, ref = student
    out = tmp_path / "hf"
    rep = export_hf(ckpt, out, teachers={"disease": "CXR Foundation v1 (1376-d embeddings, imported)",
                                         "anatomy": "Adam v1 ResNet-50 (teacher weights)"})
    assert "metrics.json" in rep["note"]
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "leader" and cfg["outputs"] == {"e_da": 256, "disease": 24, "anatomy": 16}
    assert cfg["model"]["backbone"] == SWIN and cfg["input_spec"]["channels"] == 1
    card = (out / "README.md").read_text()
    for needle in ("CXR Foundation v1", "Adam v1 ResNet-50", "60 chest phantoms", "retrieval_precision_at_k | 0.61",
                   "anatomy_knn_accuracy | 0.83", "teachers.teacher_disease.retrieval_precision_at_k | 0.55",
                   '"lr": 0.0002', '"embed_dim": 32', "| `e_da` | 256 |", "| `disease` | 24 |", "leader.load"):
        assert needle in card, needle
    assert "ignored" not in card
    out2 = leader.load(out).embed(x)
    for k in ref:
        torch.testing.assert_close(out2[k], ref[k], rtol=0, atol=1e-6)


def test_export_onnx_matches_pytorch(student, tmp_path):
    pytest.importorskip("onnx")
    model, ckpt, x, ref = student
    rep = export_onnx(ckpt, tmp_path / "student.onnx")
    assert rep["outputs"] == ["e_da", "disease", "anatomy"]
    try:
        import onnxruntime as ort
    except ImportError:
        assert rep["checked"] == "onnx.checker"
        pytest.skip("onnxruntime not installed: graph checked with onnx.checker only")
    assert rep["checked"] == "onnxruntime" and rep["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["e_da", "disease", "anatomy"]
    got = sess.run(None, {"image": x.numpy()})  # batch 3; exported with batch 2
    for name, arr in zip(["e_da", "disease", "anatomy"], got):
        np.testing.assert_allclose(arr, ref[name].numpy(), rtol=0, atol=1e-4)
    # leader.load on the .onnx file, and the export used as an ONNX teacher
    onnx_out = leader.load(tmp_path / "student.onnx").embed(x)
    torch.testing.assert_close(onnx_out["anatomy"], ref["anatomy"], rtol=0, atol=1e-4)
    from leader.teachers.spec import load_teacher

    t = load_teacher("student", str(tmp_path / "student.onnx"))
    assert t.dim == 256 and t.input_spec.channels == 1 and t.input_spec.mean is None
    torch.testing.assert_close(t.embed(x), ref["e_da"], rtol=0, atol=1e-4)


def test_cli_export(student, tmp_path, capsys):
    from leader.cli import main

    _model, ckpt, _x, _ref = student
    assert main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "timm.create_model('swin_tiny_patch4_window7_224', pretrained=True" in out
    assert (tmp_path / "t" / "student.safetensors").is_file()
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hf", "--out", str(tmp_path / "h"),
                 "--teacher-info", "disease=my disease expert", "--data", "NIH ChestX-ray14 train split"]) == 0
    card = (tmp_path / "h" / "README.md").read_text()
    assert "my disease expert" in card and "NIH ChestX-ray14 train split" in card
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
