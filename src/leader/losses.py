"""Distillation losses ``ℓ_s`` (paper Eq. 1–3).

The paper defines one loss per branch,

* Eq. 1: ``L_A = ℓ_s(E_A, E'_A)`` (anatomy teacher vs anatomy head),
* Eq. 2: ``L_D = ℓ_s(E_D, E'_D)`` (disease teacher vs disease head),
* Eq. 3: ``L = L_D + L_A``,

with MSE as the default ``ℓ_s`` (§4) and cross-entropy as the ablation of Fig. 10.
:func:`make_loss` returns one of these as a callable ``loss(pred, target) -> scalar``;
:func:`distillation_loss` sums it over the heads present in the targets (Eq. 3, and any
number of teachers).

All losses take ``pred`` (the student head output ``E'``, float ``[B, d]``) and ``target``
(the frozen teacher embedding ``E``, float ``[B, d]``) of *exactly* the same shape: a shape
mismatch raises ``ValueError`` instead of broadcasting (field report BR-24: MSE between
``(B, 1024)`` and ``(B, 1)`` silently broadcasts in PyTorch). Computation is in float32
(inputs from bf16 autocast are upcast) and the target is detached: teachers are frozen.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "make_loss", "distillation_loss", "check_shapes"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Names accepted by :func:`make_loss`.
LOSSES = ("mse", "cosine", "smooth_l1", "soft_ce")


def check_shapes(pred: torch.Tensor, target: torch.Tensor, name: str = "loss") -> None:
    """Raise ``ValueError`` naming both shapes unless ``pred.shape == target.shape``.

    Also requires at least 2 dimensions (``[B, d]``): a per-sample embedding is never a
    scalar or a bare vector, and accepting ``[d]`` would hide a missing batch axis.
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"{name}: pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}"
        )
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"{name}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}; "
            "shapes must match exactly (no broadcasting). Build one head per teacher with the "
            "teacher's width (LeaderModel.for_teachers)."
        )
    if pred.dim() < 2:
        raise ValueError(f"{name}: expected [B, d] embeddings, got shape {tuple(pred.shape)}")


def _prep(pred: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_shapes(pred, target, name)
    return pred.float(), target.detach().float()


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = _prep(pred, target, "mse")
    # mean over the batch of the per-sample mean squared error == mean over all elements
    return ((p - t) ** 2).flatten(1).mean(dim=1).mean()


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = _prep(pred, target, "smooth_l1")
    return F.smooth_l1_loss(p, t, reduction="none", beta=1.0).flatten(1).mean(dim=1).mean()


def _cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = _prep(pred, target, "cosine")
    return (1.0 - F.cosine_similarity(p.flatten(1), t.flatten(1), dim=1, eps=1e-8)).mean()


def _make_soft_ce(temperature: float) -> LossFn:
    def _soft_ce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = _prep(pred, target, "soft_ce")
        p, t = p.flatten(1), t.flatten(1)
        q = F.softmax(t / temperature, dim=1)
        log_p = F.log_softmax(p / temperature, dim=1)
        return -(q * log_p).sum(dim=1).mean()

    return _soft_ce


def make_loss(name: str = "mse", temperature: float = 1.0) -> LossFn:
    """Return the distillation loss ``ℓ_s(pred, target) -> scalar`` called ``name``.

    Args:
        name: one of :data:`LOSSES`:

            * ``"mse"`` (paper default, §4): mean over the batch of the per-sample mean
              squared error, ``mean_b mean_j (p_bj - t_bj)^2``.
            * ``"cosine"``: ``mean_b (1 - cos(p_b, t_b))`` (in ``[0, 2]``).
            * ``"smooth_l1"``: Huber loss with ``beta=1``, averaged like ``mse``.
            * ``"soft_ce"``: the paper's "cross entropy" ablation (Fig. 10): cross-entropy
              between the teacher distribution ``softmax(t / T)`` and the student
              log-distribution ``log_softmax(p / T)`` over the embedding axis,
              ``mean_b -Σ_j softmax(t_b/T)_j · log_softmax(p_b/T)_j`` (no ``T²`` factor).
        temperature: ``T`` for ``soft_ce``; must be > 0 (ignored by the other losses).

    Returns:
        ``loss(pred, target)``: ``pred`` and ``target`` float tensors ``[B, d]`` (any float
        dtype; computed in float32) of identical shape; returns a float32 scalar tensor.
        ``target`` is detached. The callable raises ``ValueError`` naming both shapes when they
        differ (field report BR-24) and ``TypeError`` for non-tensors.

    Raises:
        ValueError: unknown ``name`` (the message lists :data:`LOSSES`) or ``temperature <= 0``.
    """
    key = str(name).lower().replace("-", "_")
    if key == "soft_ce":
        if not temperature > 0:
            raise ValueError(f"soft_ce temperature must be > 0, got {temperature!r}")
        return _make_soft_ce(float(temperature))
    table = {"mse": _mse, "cosine": _cosine, "smooth_l1": _smooth_l1}
    if key not in table:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return table[key]


def distillation_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    loss_fn: LossFn | str | Mapping[str, LossFn] = "mse",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum the per-head distillation losses (paper Eq. 3, ``L = L_D + L_A``).

    Only the heads present in ``targets`` contribute, so stage 1 of Algorithm 1 (disease head
    only) passes ``{"disease": E_D}`` and stage 2 passes both teachers' embeddings. Extra
    entries in ``outputs`` (``"e_da"``, heads not distilled this step) are ignored.

    Args:
        outputs: student outputs, ``{head: E'_head [B, d_head]}`` (e.g. from
            ``LeaderModel.forward``).
        targets: teacher embeddings, ``{head: E_head [B, d_head]}``; at least one entry.
        loss_fn: a loss callable (from :func:`make_loss`), a loss name, or a mapping
            ``{head: loss callable}`` to use different ``ℓ_s`` per branch.

    Returns:
        ``(total, parts)``: ``total`` is a float32 scalar tensor (differentiable w.r.t. the
        outputs), ``parts`` maps each head name to its own scalar loss tensor (also attached
        to the graph; call ``.item()`` to log).

    Raises:
        ValueError: ``targets`` is empty, or a pair of shapes differs (names the head and
            both shapes).
        KeyError: a target head has no matching student output (names it and the available
            outputs), or a per-head loss mapping lacks a head.
    """
    if not targets:
        raise ValueError("distillation_loss: targets is empty; pass at least one teacher embedding")
    if isinstance(loss_fn, str):
        loss_fn = make_loss(loss_fn)
    parts: dict[str, torch.Tensor] = {}
    for head, target in targets.items():
        if head not in outputs:
            raise KeyError(
                f"distillation_loss: no student output for head {head!r}; "
                f"outputs have {sorted(outputs)}"
            )
        fn = loss_fn
        if isinstance(loss_fn, Mapping):
            if head not in loss_fn:
                raise KeyError(f"distillation_loss: no loss function for head {head!r}")
            fn = loss_fn[head]
        pred = outputs[head]
        if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor) and pred.shape != target.shape:
            raise ValueError(
                f"head {head!r}: student output shape {tuple(pred.shape)} != teacher embedding "
                f"shape {tuple(target.shape)}; shapes must match exactly (no broadcasting)"
            )
        parts[head] = fn(pred, target)
    total = torch.stack([v.float() for v in parts.values()]).sum()
    return total, parts
