"""leader.transforms: one random view per sample (paper §4 augmentation)."""

from __future__ import annotations

import pytest
import torch

from leader.transforms import Identity, PairedAugment, from_config


def _image(S=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, S, S, generator=g) * 0.5 + 0.25
    x[:, :, : S // 4] = 0.9          # bright band on the image left: makes flips detectable
    return x


def test_output_shape_dtype_range_and_changes_the_image():
    x = _image()
    aug = PairedAugment()
    torch.manual_seed(1)
    for _ in range(5):
        y = aug(x)
        assert y.shape == (1, 64, 64) and y.dtype == torch.float32
        assert y.min() >= 0.0 and y.max() <= 1.0
        assert (y - x).abs().mean() > 1e-3
    # strong jitter is clamped into [0, 1]
    y = PairedAugment(degrees=0, translate=0, scale=(1, 1), hflip_p=0, brightness=0.9, contrast=0.9, p_jitter=1)(
        torch.ones(1, 16, 16))
    assert y.min() >= 0 and y.max() <= 1
    # input is not modified in place
    x0 = x.clone()
    aug(x)
    assert torch.equal(x, x0)


def test_deterministic_under_manual_seed_and_fresh_view_per_call():
    x = _image()
    aug = PairedAugment()
    torch.manual_seed(123)
    a1, a2 = aug(x), aug(x)
    torch.manual_seed(123)
    b1, b2 = aug(x), aug(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)          # each call draws a new view


def test_flip_with_p1_flips_exactly():
    x = _image()
    flip = PairedAugment(degrees=0, translate=0, scale=(1, 1), hflip_p=1.0, brightness=0, contrast=0, p_jitter=0)
    torch.manual_seed(0)
    torch.testing.assert_close(flip(x), torch.flip(x, dims=[-1]))
    keep = PairedAugment(degrees=0, translate=0, scale=(1, 1), hflip_p=0.0, brightness=0, contrast=0, p_jitter=0)
    torch.testing.assert_close(keep(x), x)


def test_from_config_and_identity():
    assert isinstance(from_config(None), Identity)
    assert isinstance(from_config({"enabled": False, "degrees": 5}), Identity)
    aug = from_config({"enabled": True, "degrees": 5.0, "scale": [0.95, 1.05], "hflip_p": 0.25})
    assert isinstance(aug, PairedAugment)
    assert aug.params["degrees"] == 5.0 and aug.params["scale"] == (0.95, 1.05) and aug.params["hflip_p"] == 0.25
    assert aug.params["brightness"] == 0.2                       # paper default kept
    with pytest.raises(ValueError, match="degres"):
        from_config({"degres": 5})
    x = _image()
    y = Identity()(x)
    assert torch.equal(y, x) and y is not x


def test_invalid_parameters_and_inputs():
    with pytest.raises(ValueError):
        PairedAugment(hflip_p=1.5)
    with pytest.raises(ValueError):
        PairedAugment(scale=(1.2, 0.8))
    with pytest.raises(ValueError):
        PairedAugment(degrees=-1)
    aug = PairedAugment()
    with pytest.raises(ValueError, match="per sample"):
        aug(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="float"):
        aug(torch.zeros(1, 8, 8, dtype=torch.uint8))


def test_build_augment_none_when_disabled():
    from leader.transforms import PairedAugment, build_augment

    assert build_augment(None) is None
    assert build_augment({"enabled": False, "degrees": 5.0}) is None
    aug = build_augment({"enabled": True, "degrees": 5.0, "scale": [0.9, 1.1]})
    assert isinstance(aug, PairedAugment)
    assert aug.params["scale"] == (0.9, 1.1)
