"""Virtual adversarial training (Miyato et al.; Jia et al. KDD'19 eq. 3 and §2.2.1).

r_vat = argmax_{‖r‖≤ε} D[p(ŷ|x; θ_c) ‖ p(ŷ|x + r; θ)], θ_c not differentiated, D the task's
divergence (KL for classification). The argmax is approximated by power iteration:
d ← ∇_d D(p ‖ p(x + ξ·d)) normalised, from a random d; then r_vat = ε·d (per sample) or
α^t·ε·d^t (attention-aware, eq. 11). No label is used, so the term also applies to
unlabelled sequences (batch["unlabelled"], the transductive setting).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import CleanPass, add, weighted_backward
from advorch.trainers.adversarial.perturb import radius, within
from advorch.trainers.adversarial.selective_filtering import filtered_mean
from advorch.trainers.models.base import Batch, Inputs, input_mask
from advorch.trainers.tasks.base import Task


def power_iteration(model: nn.Module, task: Task, batch: Batch, inputs: Inputs, clean_scores: Tensor,
                    xi: float, iterations: int, alpha: Tensor | None,
                    generator: torch.Generator | None = None) -> Inputs:
    """The dominant direction of the divergence's curvature at the inputs, per input unit-normalised
    like the radius. Accumulates no parameter gradient."""
    inputs = {k: v.detach() for k, v in inputs.items()}
    masks = {k: input_mask(model, k, batch) for k in inputs}

    def unit(g: Tensor, k: str) -> Tensor:
        return radius(g, masks[k], 1.0, alpha if masks[k] is not None else None)

    d = {k: unit(torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype), k)
         for k, v in inputs.items()}
    for _ in range(iterations):
        d = {k: (xi * v).requires_grad_(True) for k, v in d.items()}
        div = task.divergence(clean_scores, model(add(inputs, d), batch)).sum()
        g = torch.autograd.grad(div, list(d.values()))
        d = {k: unit(gk, k) for k, gk in zip(d, g, strict=True)}
    return {k: v.detach() for k, v in d.items()}


class VirtualAdversarialLoss:
    """λ_vat · D(p(x) ‖ p(x + r_vat)) on the labelled batch, or on batch["unlabelled"]."""

    FIELDS = ("epsilon", "lam_vat", "xi", "power_iterations", "attention_aware", "transductive",
              "filter", "keep_ratio")
    name = "vat"

    def __init__(self, epsilon: float, lam: float = 1.0, xi: float = 0.1, iterations: int = 1,
                 attention: bool = True, keep_ratio: float = 1.0) -> None:
        self.epsilon, self.lam, self.xi, self.iterations = epsilon, lam, xi, iterations
        self.attention, self.keep_ratio = attention, keep_ratio
        self.needs = frozenset({"attention"} if attention or keep_ratio < 1.0 else set())

    @classmethod
    def from_config(cls, name: str, cfg: RegimeConfig) -> VirtualAdversarialLoss:
        return cls(cfg.epsilon, cfg.lam_vat, cfg.xi, cfg.power_iterations, cfg.attention_aware,
                   cfg.keep_ratio if cfg.filter == "sf" else 1.0)

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        model, ub = cp.model, cp.batch.get("unlabelled", cp.batch)
        scores, alpha, inputs = cp.out.scores.detach(), cp.attention, cp.inputs
        if ub is not cp.batch:
            with torch.no_grad():
                inputs = model.embed(ub)
                out_u = model(inputs, ub)
            scores, alpha = out_u.scores, out_u.attention
        att = alpha if self.attention else None
        d = power_iteration(model, cp.task, ub, inputs, scores, self.xi, self.iterations, att)
        r = {k: within(inputs[k], self.epsilon * v, model.perturbable[k].bounds) for k, v in d.items()}
        out = cp.perturbed(r, ub)
        mask = cp.step_mask(r, ub)
        vat, _ = filtered_mean(cp.task.divergence(scores, out), att, out.attention, mask, self.keep_ratio)
        weighted_backward(vat, self.lam)
        return {"weighted": self.lam * vat.detach(), "vat_loss": vat.detach()}
