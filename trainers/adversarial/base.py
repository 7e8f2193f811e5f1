"""What every adversarial regime is (DESIGN.md, abstraction 2), and shared pieces.

A regime computes its training loss on one batch and accumulates the parameter
gradients of that loss (it calls backward itself, so that AT can reuse the clean
pass's input gradient: two forward/backward pairs, not three). It returns the
terms to log. Perturbations are pure functions of gradients (and attention).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from advorch.trainers.models.base import Batch, Output
from torch import Tensor, nn


class Regime(Protocol):
    """clean loss + λ · loss on the perturbed input, gradients accumulated."""

    name: str

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Accumulate ∇θ of the regime's loss; return {"loss", "clean_loss", ..., "logits"}."""
        ...


def classification_loss(out: Output, batch: Batch) -> Tensor:
    """Mean cross-entropy (Jia et al. eq. 10), class-weighted when the batch carries weights."""
    return F.cross_entropy(out.logits, batch["label"], weight=batch.get("class_weight"))


def l2_normalize_per_sample(g: Tensor, mask: Tensor, eps: float = 1e-12) -> Tensor:
    """g / ‖g‖₂ over all real steps of each sample; zero on padding.

    g: (B, T, D), mask: (B, T) → (B, T, D) with each sample's norm 1 (or 0 if g is 0).
    """
    g = g * mask.unsqueeze(-1)
    norm = g.flatten(1).norm(dim=1).clamp_min(eps)  # (B,)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def clean_pass(model: nn.Module, batch: Batch) -> tuple[Tensor, Output, Tensor]:
    """Forward and backward on the clean input, keeping ∇_e L.

    Returns (loss, output, g) where g = ∇_e L (B, T, D), detached.
    """
    e = model.embed(batch)
    e.retain_grad()
    out = model(e, batch)
    loss = classification_loss(out, batch)
    loss.backward()
    return loss.detach(), out, e.grad.detach()


def perturbed_pass(model: nn.Module, batch: Batch, r: Tensor, weight: float) -> tuple[Tensor, Output]:
    """Forward on embed(batch) + r (r constant) and accumulate weight · ∇θ L."""
    out = model(model.embed(batch) + r, batch)
    loss = classification_loss(out, batch)
    if weight:
        (weight * loss).backward()
    return loss.detach(), out


def no_grad_logits(model: nn.Module, batch: Batch) -> Tensor:
    with torch.no_grad():
        return model(model.embed(batch), batch).logits
