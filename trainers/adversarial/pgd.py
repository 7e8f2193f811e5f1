"""Projected gradient descent on the perturbable inputs (Madry et al. 2018).

k steps of r ← Π(r + η·ε·u(∇_r L(x + r))), u the steepest unit direction under the declared
norm (L2 per sample, L2 per step scaled by α^t, or L∞ sign), Π the projection onto the
ε-ball of that norm intersected with the input's valid range (pixels in [0, 1]). Used as an
attack for the robustness evaluation and as a training term (its last r gives the
adversarial loss; the clean input gradient gives the first step for free).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import CleanPass, add, weighted_backward
from advorch.trainers.adversarial.perturb import project, radius, within
from advorch.trainers.models.base import Batch, Inputs, input_mask
from advorch.trainers.tasks.base import Task


def pgd_attack(model: nn.Module, task: Task, batch: Batch, inputs: Inputs, epsilon: float, steps: int,
               step_size: float, alpha: Tensor | None = None, r0: Inputs | None = None,
               norm: str = "l2") -> Inputs:
    """The perturbation of the inputs r0 names (default: all, from 0) after `steps` projected
    ascent steps. Accumulates no parameter gradient; step_size is a share of ε.
    """
    x = {k: v.detach() for k, v in inputs.items()}
    masks = {k: input_mask(model, k, batch) for k in x}
    geometry = {k: alpha if masks[k] is not None else None for k in x}
    r = {k: v.detach() for k, v in r0.items()} if r0 is not None else {k: torch.zeros_like(v)
                                                                          for k, v in x.items()}

    def step(k: str, rk: Tensor, g: Tensor | None) -> Tensor:
        if g is not None:
            rk = rk + radius(g, masks[k], step_size * epsilon, geometry[k], norm)
        rk = project(rk, masks[k], epsilon, geometry[k], norm)
        return within(x[k], rk, model.perturbable[k].bounds)

    for _ in range(steps):
        r = {k: v.requires_grad_(True) for k, v in r.items()}
        loss = task.loss(model(add(x, r), batch), batch)
        g = torch.autograd.grad(loss, list(r.values()))
        r = {k: step(k, r[k].detach(), gk) for k, gk in zip(r, g, strict=True)}
    return {k: v.detach() for k, v in r.items()}


class PGDLoss:
    """λ · L(x + r_pgd) with r_pgd after `steps` projected steps (the first from the clean pass)."""

    FIELDS = ("epsilon", "lam", "norm", "pgd_steps", "pgd_step_size", "attention_aware", "inputs")
    name = "pgd"

    def __init__(self, epsilon: float, lam: float, steps: int, step_size: float,
                 attention: bool = False, norm: str = "l2", inputs: tuple[str, ...] = ()) -> None:
        self.epsilon, self.lam, self.steps, self.step_size = epsilon, lam, steps, step_size
        self.attention, self.norm, self.inputs = attention, norm, inputs
        self.needs = frozenset({"attention"} if attention else set())

    @classmethod
    def from_config(cls, name: str, cfg: RegimeConfig) -> PGDLoss:
        # attention-aware only where the L2 geometry of eq. 11 applies
        return cls(cfg.epsilon, cfg.lam, cfg.pgd_steps, cfg.pgd_step_size,
                   cfg.attention_aware and cfg.norm == "l2", cfg.norm, tuple(cfg.inputs))

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        alpha = cp.attention if self.attention else None
        names = self.inputs or tuple(cp.inputs)
        r0 = {}
        for k in names:
            mask = cp.mask(k)
            geometry = alpha if mask is not None else None
            first = radius(cp.grads[k], mask, self.step_size * self.epsilon, geometry, self.norm)
            r0[k] = project(first, mask, self.epsilon, geometry, self.norm)
        r0 = cp.bounded(r0)
        r = pgd_attack(cp.model, cp.task, cp.batch, cp.inputs, self.epsilon, self.steps - 1,
                       self.step_size, alpha, r0, self.norm)
        adv = cp.task.loss(cp.perturbed(r), cp.batch)
        weighted_backward(adv, self.lam)
        return {"weighted": self.lam * adv.detach(), "adv_loss": adv.detach()}
