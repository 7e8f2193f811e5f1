"""Projected gradient descent on embeddings (Madry et al.; beyond the KDD'19 paper).

k steps of r ← Π(r + η·ε·u(∇_r L(e + r))), u the steepest unit direction under the
same geometry as the radius (per sample, or per step scaled by α^t), Π the projection
onto ‖r‖₂ ≤ ε per sample (or ‖r^t‖ ≤ α^t·ε per step). Used as an attack for the
robustness evaluation and as a training regime (its last r gives the adversarial loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.base import (
    classification_loss,
    clean_pass,
    perturbed_forward,
    weighted_backward,
)
from advorch.trainers.adversarial.perturb import project, radius
from advorch.trainers.models.base import Batch


def pgd_attack(model: nn.Module, batch: Batch, e: Tensor, epsilon: float, steps: int,
               step_size: float, alpha: Tensor | None = None, r0: Tensor | None = None) -> Tensor:
    """The perturbation r (B, T, D) after `steps` projected ascent steps from r0 (default 0).

    Accumulates no parameter gradient; step_size is a share of ε.
    """
    e = e.detach()
    mask = batch["mask"]
    r = torch.zeros_like(e) if r0 is None else r0.detach()
    for _ in range(steps):
        r.requires_grad_(True)
        loss = classification_loss(model(e + r, batch), batch)
        (g,) = torch.autograd.grad(loss, r)
        r = project(r.detach() + radius(g, mask, step_size * epsilon, alpha), mask, epsilon, alpha)
    return r.detach()


class PGDTraining:
    """L(e) + λ·L(e + r_pgd): the clean input gradient gives the first step for free."""

    name = "pgd"

    def __init__(self, epsilon: float, lam: float, steps: int, step_size: float,
                 attention_aware: bool) -> None:
        self.epsilon, self.lam, self.steps, self.step_size = epsilon, lam, steps, step_size
        self.attention_aware = attention_aware

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        cp = clean_pass(model, batch)
        alpha = cp.out.attention.detach() if self.attention_aware and cp.out.attention is not None else None
        mask = batch["mask"]
        r0 = project(radius(cp.grad, mask, self.step_size * self.epsilon, alpha), mask, self.epsilon, alpha)
        r = pgd_attack(model, batch, model.embed(batch), self.epsilon, self.steps - 1, self.step_size,
                       alpha, r0)
        adv = classification_loss(perturbed_forward(model, batch, r), batch)
        weighted_backward(adv, self.lam)
        return {"loss": cp.loss + self.lam * adv.detach(), "clean_loss": cp.loss,
                "adv_loss": adv.detach(), "logits": cp.out.logits.detach()}
