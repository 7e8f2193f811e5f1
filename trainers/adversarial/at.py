"""Adversarial training on the loss gradient (Goodfellow et al.; Miyato et al.; Jia et al. KDD'19).

min_θ L(x, y) + λ · L(x + r_adv, y),   r_adv from g = ∇_x L(x, y) at the clean input:

    at            ε · g / ‖g‖₂ per sample (eq. 1-2), ‖r‖₂ = ε (0 on padding)
    attention_at  α^t · ε · g^t / ‖g^t‖₂ per step (eq. 11), α the clean attention
    fgsm          ε · sign(g) (Goodfellow et al. 2015), ‖r‖∞ = ε, inputs kept in range

x is each named perturbable input (embeddings, features, pixels), never token ids; the
sign is +g: r ascends the loss (the linear approximation of the argmax in eq. 1).
Refinements (regime.filter): "sf" keeps only the top K% of the batch by attention
similarity (eq. 12, selective_filtering.py); "cat" turns r towards keeping attention where
it was (eq. 13, conservative.py).
"""

from __future__ import annotations

from torch import Tensor

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import CleanPass, weighted_backward
from advorch.trainers.adversarial.conservative import similarity_gradient
from advorch.trainers.adversarial.perturb import radius
from advorch.trainers.adversarial.selective_filtering import filtered_mean


class AdversarialLoss:
    """λ · L(x + r_adv) with r_adv one step along the clean input gradient (see the module)."""

    FIELDS = ("epsilon", "lam", "norm", "filter", "keep_ratio", "gamma", "inputs")

    def __init__(self, name: str, epsilon: float, lam: float = 1.0, norm: str = "l2",
                 attention: bool = False, filter: str = "none", keep_ratio: float = 0.6,
                 gamma: float = 0.2, inputs: tuple[str, ...] = ()) -> None:
        self.name, self.epsilon, self.lam, self.norm, self.attention = name, epsilon, lam, norm, attention
        self.keep_ratio = keep_ratio if filter == "sf" else 1.0
        self.gamma = gamma if filter == "cat" else 0.0
        self.inputs = inputs
        self.needs = frozenset({"attention"} if attention or filter != "none" else set())

    @classmethod
    def from_config(cls, name: str, cfg: RegimeConfig) -> AdversarialLoss:
        return cls(name, cfg.epsilon, cfg.lam, "linf" if name == "fgsm" else cfg.norm,
                   attention=name == "attention_at", filter=cfg.filter, keep_ratio=cfg.keep_ratio,
                   gamma=cfg.gamma, inputs=tuple(cfg.inputs))

    def perturbation(self, cp: CleanPass) -> dict[str, Tensor]:
        """r_adv per perturbed input (eq. 2, 11 or FGSM), CAT-turned when γ > 0 (eq. 13)."""
        alpha = cp.attention if self.attention else None
        r = {}
        for name in self.inputs or cp.inputs:
            mask = cp.mask(name)
            r[name] = radius(cp.grads[name], mask, self.epsilon, alpha, self.norm)
            if self.gamma:
                g = cp.grads[name] + self.gamma * similarity_gradient(cp, name, r[name])
                r[name] = radius(g, mask, self.epsilon, alpha, self.norm)
        return cp.bounded(r)

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        out = cp.perturbed(self.perturbation(cp))
        mask = cp.step_mask(self.inputs or cp.inputs)
        adv, keep = filtered_mean(cp.task.loss(out, cp.batch, "none"), cp.attention, out.attention,
                                  mask, self.keep_ratio)
        weighted_backward(adv, self.lam)
        return {"weighted": self.lam * adv.detach(), "adv_loss": adv.detach(), "kept": keep.float().mean()}
