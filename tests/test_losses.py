"""Tests for leader.losses (paper Eq. 1-3; field report BR-24)."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from leader.losses import LOSSES, distillation_loss, make_loss


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_mse_hand_computed():
    pred = t([[1.0, 2.0], [3.0, 4.0]])
    target = torch.zeros(2, 2)
    # per-sample mean squared error: (1+4)/2 = 2.5 and (9+16)/2 = 12.5 -> batch mean 7.5
    assert make_loss("mse")(pred, target).item() == pytest.approx(7.5)


def test_cosine_hand_computed():
    loss = make_loss("cosine")
    pred = t([[1.0, 0.0], [0.0, 1.0]])
    target = t([[2.0, 0.0], [1.0, 0.0]])
    # 1 - cos: 0 (parallel) and 1 (orthogonal) -> mean 0.5
    assert loss(pred, target).item() == pytest.approx(0.5)
    assert loss(t([[1.0, 0.0]]), t([[-3.0, 0.0]])).item() == pytest.approx(2.0)


def test_smooth_l1_hand_computed():
    pred = t([[0.5, 2.0]])
    # 0.5 * 0.5^2 = 0.125 ; |2| - 0.5 = 1.5 -> mean 0.8125
    assert make_loss("smooth_l1")(pred, torch.zeros(1, 2)).item() == pytest.approx(0.8125)


def test_soft_ce_hand_computed():
    ln3 = math.log(3.0)
    loss = make_loss("soft_ce")
    # teacher softmax([0, ln3]) = [1/4, 3/4]; student log_softmax([ln3, 0]) = [ln 3/4, ln 1/4]
    expected = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert loss(t([[ln3, 0.0]]), t([[0.0, ln3]])).item() == pytest.approx(expected, rel=1e-6)
    # uniform student: CE = ln 2 whatever the teacher
    assert loss(t([[0.0, 0.0]]), t([[0.0, ln3]])).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # temperature divides both logits: T=2 on doubled logits equals T=1 on the originals
    loss_t2 = make_loss("soft_ce", temperature=2.0)
    assert loss_t2(t([[2 * ln3, 0.0]]), t([[0.0, 2 * ln3]])).item() == pytest.approx(expected, rel=1e-6)


def test_soft_ce_minimum_at_target():
    torch.manual_seed(0)
    target = torch.randn(3, 5)
    pred = target.clone().requires_grad_(True)
    make_loss("soft_ce")(pred, target).backward()
    assert pred.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("name", LOSSES)
def test_shape_mismatch_never_broadcasts(name):
    # BR-24: MSE between (B, 1024) and (B, 1) must raise, not broadcast with a warning
    loss = make_loss(name)
    with pytest.raises(ValueError) as err:
        loss(torch.zeros(4, 1024), torch.zeros(4, 1))
    assert "(4, 1024)" in str(err.value) and "(4, 1)" in str(err.value)
    with pytest.raises(ValueError):
        loss(torch.zeros(4), torch.zeros(4))  # no batch axis


@pytest.mark.parametrize("name", LOSSES)
def test_losses_are_zero_or_minimal_and_float32(name):
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    loss = make_loss(name)
    value = loss(x.to(torch.bfloat16), x.to(torch.bfloat16))
    assert value.dtype == torch.float32 and value.dim() == 0
    if name != "soft_ce":
        assert value.item() == pytest.approx(0.0, abs=1e-5)


def test_target_is_detached():
    pred = torch.randn(2, 3, requires_grad=True)
    target = torch.randn(2, 3, requires_grad=True)
    make_loss("mse")(pred, target).backward()
    assert pred.grad is not None and target.grad is None


def test_make_loss_errors():
    with pytest.raises(ValueError, match="mse"):
        make_loss("kl")
    with pytest.raises(ValueError):
        make_loss("soft_ce", temperature=0.0)
    assert make_loss("smooth-l1") is make_loss("smooth_l1")


def test_distillation_loss_eq3_sum_and_subset():
    torch.manual_seed(0)
    outputs = {"e_da": torch.randn(4, 16), "disease": torch.randn(4, 6), "anatomy": torch.randn(4, 5)}
    targets = {"disease": torch.randn(4, 6), "anatomy": torch.randn(4, 5)}
    mse = make_loss("mse")
    total, parts = distillation_loss(outputs, targets, mse)
    assert set(parts) == {"disease", "anatomy"}
    expected = mse(outputs["disease"], targets["disease"]) + mse(outputs["anatomy"], targets["anatomy"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    # stage 1: only the disease teacher -> only L_D
    total1, parts1 = distillation_loss(outputs, {"disease": targets["disease"]}, "mse")
    assert set(parts1) == {"disease"} and total1.item() == pytest.approx(parts["disease"].item())
    # per-head loss functions
    total2, parts2 = distillation_loss(outputs, targets, {"disease": mse, "anatomy": make_loss("cosine")})
    assert parts2["anatomy"].item() == pytest.approx(make_loss("cosine")(outputs["anatomy"], targets["anatomy"]).item())


def test_distillation_loss_errors():
    outputs = {"disease": torch.zeros(2, 3)}
    with pytest.raises(ValueError):
        distillation_loss(outputs, {}, "mse")
    with pytest.raises(KeyError, match="anatomy"):
        distillation_loss(outputs, {"anatomy": torch.zeros(2, 3)}, "mse")
    with pytest.raises(ValueError, match="disease.*\\(2, 3\\).*\\(2, 1\\)"):
        distillation_loss(outputs, {"disease": torch.zeros(2, 1)}, "mse")


def test_br24_projection_heads_give_finite_loss():
    """BR-24: teachers of width 768 and 2048, student E_DA 1024: one head each, finite loss."""
    torch.manual_seed(0)
    e_da = torch.randn(4, 1024, requires_grad=True)
    heads = {"a": torch.nn.Linear(1024, 768), "b": torch.nn.Linear(1024, 2048)}
    outputs = {k: h(e_da) for k, h in heads.items()}
    targets = {"a": torch.randn(4, 768), "b": torch.randn(4, 2048)}
    total, _ = distillation_loss(outputs, targets, "mse")
    assert total.dim() == 0 and torch.isfinite(total)
    total.backward()
    assert all(h.weight.grad is not None for h in heads.values())


@pytest.mark.parametrize("name", LOSSES)
def test_br24_unprojected_student_width_is_refused_naming_both_widths(name):
    """BR-24: the 1024-d student output fed straight to 768-d / 2048-d teacher targets raises."""
    e_da = torch.randn(4, 1024)
    for width in (768, 2048):
        with pytest.raises(ValueError, match=rf"'a'.*\(4, 1024\).*\(4, {width}\)"):
            distillation_loss({"a": e_da}, {"a": torch.randn(4, width)}, name)
