"""No pickled code from a foreign file ever runs; partial / mismatched loads are refused by name (issue 6)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from leader.teachers import ModuleTeacher, read_state_dict  # noqa: E402
from leader.teachers.adam import build_timm_with_weights, load_adam  # noqa: E402
from leader.teachers.exported import UnsafeCheckpointError, load_checkpoint_object  # noqa: E402
from leader.teachers.spec import load_teacher  # noqa: E402
from leader.teachers.xrv import load_xrv  # noqa: E402


class Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_files(tmp_path):
    marker = tmp_path / "PWNED"
    sd = {"conv1.weight": torch.zeros(1), "layer4.0.conv1.weight": torch.zeros(1)}
    files = {}
    files["torch_zip"] = tmp_path / "adam_evil.pth"
    torch.save({"teacher": sd, "args": Payload(marker)}, files["torch_zip"])
    files["raw_pickle"] = tmp_path / "evil.pt"
    with open(files["raw_pickle"], "wb") as fh:
        pickle.dump({"state_dict": sd, "x": Payload(marker)}, fh, protocol=2)
    files["fake_safetensors"] = tmp_path / "evil.safetensors"
    files["fake_safetensors"].write_bytes(files["raw_pickle"].read_bytes())
    assert not marker.exists()
    return marker, files


def test_malicious_pickle_never_runs(evil_files, tmp_path):
    marker, files = evil_files
    for name in ("torch_zip", "raw_pickle"):
        f = files[name]
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint_object(f)
        msg = str(err.value)
        assert "refused" in msg and "weights_only=False" in msg and "save_file" in msg and ".safetensors" in msg
        assert "Rejected: Unsupported global" in msg  # names what was rejected
        with pytest.raises(UnsafeCheckpointError):
            load_adam(f)
        with pytest.raises(UnsafeCheckpointError):
            load_xrv("disease", f)
        with pytest.raises(UnsafeCheckpointError):
            load_teacher("anatomy", f"adam:{f}")
        with pytest.raises(ValueError):  # the pre-existing timm path refuses too
            read_state_dict(f)
        with pytest.raises(ValueError):
            ModuleTeacher.from_timm("anatomy", "resnet18", weights=f)
        assert not marker.exists(), f"pickle payload ran while loading {name}"
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint_object(files["fake_safetensors"])
    # a student checkpoint folder whose weights file is a pickle
    import leader

    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "config.json").write_text('{"model": {"backbone": "resnet18", "head_dims": {"d": 2}, "img_size": 32}}')
    (ck / "model.safetensors").write_bytes(files["raw_pickle"].read_bytes())
    with pytest.raises(Exception):
        leader.load(ck)
    # npz imports never unpickle object arrays
    from leader.teachers.cxr_foundation import import_cxr_foundation

    np.save(tmp_path / "obj.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "x1.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "embedding.npy")
    with pytest.raises(ValueError):
        import_cxr_foundation(tmp_path / "store", tmp_path / "x1.npz")
    assert not marker.exists()


def test_pickled_module_is_refused_with_conversion_help(tmp_path):
    """torchxrayvision's own download format: a whole pickled nn.Module."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    f = tmp_path / "densenet121-res224-all.pt"
    torch.save(net, f)
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)only if you trust.*obj.state_dict\(\).*densenet121-res224-all.safetensors"):
        load_xrv("disease", f)


def _resnet18_sd():
    import timm

    with torch.device("meta"):
        m = timm.create_model("resnet18", num_classes=0)
    return {k: torch.zeros(v.shape, dtype=v.dtype) if not v.is_floating_point() else torch.rand(v.shape)
            for k, v in m.state_dict().items()}


def test_partial_and_mismatched_loads_are_named_and_refused():
    sd = _resnet18_sd()
    missing = dict(sd)
    del missing["layer3.0.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing keys \[layer3\.0\.conv2\.weight\]"):
        build_timm_with_weights("resnet18", missing)
    with pytest.warns(RuntimeWarning, match="layer3.0.conv2.weight"):
        m, _, miss = build_timm_with_weights("resnet18", missing, strict=False)  # asked for: loads the rest
    assert miss == ["layer3.0.conv2.weight"] and torch.equal(m.state_dict()["conv1.weight"], sd["conv1.weight"])
    extra = dict(sd, **{"layer9.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \[layer9\.weight\]"):
        build_timm_with_weights("resnet18", extra)
    bad = dict(sd, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: file \(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)"):
            build_timm_with_weights("resnet18", bad, strict=strict)


def test_xrv_partial_weights_refused(tmp_path):
    from leader.teachers.xrv import build_xrv_features

    sd = build_xrv_features("densenet121").state_dict()
    sd = {"module." + k: v for k, v in sd.items() if k != "features.norm5.weight"}
    sd["classifier.weight"] = torch.zeros(18, 1024)  # dropped: not part of the features
    sd["op_threshs"] = torch.zeros(18)
    f = tmp_path / "x.pt"
    torch.save({"state_dict": sd}, f)
    with pytest.raises(ValueError, match=r"missing keys \[features\.norm5\.weight\]"):
        load_xrv("disease", f)


def test_leader_load_strictness(tmp_path):
    from safetensors.torch import load_file, save_file

    import leader
    from leader.models import LeaderModel, save_model

    model = LeaderModel("resnet18", head_dims={"disease": 4}, img_size=32)
    save_model(model, tmp_path / "ck")
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    sd["heads.disease.fc9.weight"] = torch.zeros(2)
    del sd["heads.disease.fc2.bias"]
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \[heads\.disease\.fc2\.bias\].*unexpected keys \[heads\.disease\.fc9\.weight\]"):
        leader.load(tmp_path / "ck")
    with pytest.warns(RuntimeWarning, match="non-strictly"):
        m = leader.load(tmp_path / "ck", strict=False)
    assert m.embed(torch.rand(1, 1, 32, 32))["disease"].shape == (1, 4)
