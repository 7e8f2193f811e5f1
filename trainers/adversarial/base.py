"""What every adversarial regime is (DESIGN.md, abstraction 2), and the passes they share.

A regime computes its training loss on one batch and accumulates the parameter
gradients of that loss: it calls backward itself, so that AT reuses the clean
pass's input gradient (two forward/backward pairs per step, not three). It
returns the terms to log. Perturbations are pure functions of gradients and
attention weights (perturb.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Output


class Regime(Protocol):
    """clean loss + λ · loss on the perturbed input, gradients accumulated."""

    name: str

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Accumulate ∇θ of the regime's loss; return {"loss", "clean_loss", ..., "logits"}."""
        ...


def classification_loss(out: Output, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy (Jia et al. eq. 10), class-weighted when the batch carries weights."""
    return F.cross_entropy(out.logits, batch["label"], weight=batch.get("class_weight"),
                           reduction=reduction)


def kl_from_clean(p_clean: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL[p_clean ‖ softmax(logits)] (VAT, eq. 3); p_clean is held constant."""
    return (p_clean * (p_clean.clamp_min(1e-12).log() - F.log_softmax(logits, -1))).sum(-1)


@dataclass
class CleanPass:
    """The clean forward/backward: loss (detached), output, g = ∇_e L (detached)."""

    loss: Tensor
    out: Output
    grad: Tensor


def clean_pass(model: nn.Module, batch: Batch) -> CleanPass:
    """Forward and backward on the clean input, keeping g = ∇_e L (B, T, D)."""
    e = model.embed(batch)
    if not e.requires_grad:  # raw input features (no embedding layer): a leaf that keeps ∇
        e = e.detach().requires_grad_(True)
    e.retain_grad()
    out = model(e, batch)
    loss = classification_loss(out, batch)
    loss.backward()
    return CleanPass(loss.detach(), out, e.grad.detach())


def perturbed_forward(model: nn.Module, batch: Batch, r: Tensor) -> Output:
    """Forward on embed(batch) + r; r is a constant, gradients reach θ through e."""
    return model(model.embed(batch) + r, batch)


def weighted_backward(loss: Tensor, weight: float) -> None:
    """Accumulate weight · ∇θ loss (nothing when the weight is 0 or nothing was kept)."""
    if weight and loss.requires_grad:
        (weight * loss).backward()
