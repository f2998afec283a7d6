import pytest

from leader.config import apply_overrides, load_config


def test_paper_defaults():
    cfg = load_config()
    assert cfg["optim"]["lr"] == pytest.approx(2e-4)  # paper §4
    assert cfg["loss"] == "mse"
    assert cfg["student"]["backbone"] == "swin_base_patch4_window7_224"


def test_preset_merges_and_overrides():
    cfg = load_config("demo-quick", ["stage1.epochs=3", "student.backbone_kwargs.depths=[1,1,1,1]", "loss=cosine"])
    assert cfg["stage1"]["epochs"] == 3
    assert cfg["stage1"]["batch_size"] == 32  # from the preset
    assert cfg["optim"]["betas"] == [0.9, 0.999]  # from paper defaults
    assert cfg["student"]["backbone_kwargs"]["depths"] == [1, 1, 1, 1]
    assert cfg["loss"] == "cosine"


def test_bad_override():
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ValueError, match="not a mapping"):
        apply_overrides({"a": 1}, ["a.b=2"])
    with pytest.raises(FileNotFoundError):
        load_config("no-such-preset.yaml")
