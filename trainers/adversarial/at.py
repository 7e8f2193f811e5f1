"""Adversarial training on all time steps (Goodfellow et al.; Miyato et al.; Jia et al. eq. 1-2).

min_θ L(e, y) + λ · L(e + r_adv, y),   r_adv = ε · g / ‖g‖₂,   g = ∇_e L(e, y)

e is the embedded input (never the token ids); the L2 norm is taken per sample over
all real time steps and features, so ‖r_adv‖₂ = ε for every sample (0 on padding).
The sign is +g: r_adv ascends the loss (the linear approximation of the argmax in
eq. 1). g comes from the clean pass's own backward, so a step costs two
forward/backward pairs.
"""

from __future__ import annotations

from advorch.trainers.adversarial.base import clean_pass, l2_normalize_per_sample, perturbed_pass
from advorch.trainers.models.base import Batch
from torch import Tensor, nn


def at_perturbation(g: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    """r_adv = ε · g / ‖g‖₂ per sample (eq. 2); g (B, T, D), mask (B, T)."""
    return epsilon * l2_normalize_per_sample(g, mask)


class AllStepAT:
    name = "at"

    def __init__(self, epsilon: float = 1.0, lam: float = 1.0) -> None:
        self.epsilon, self.lam = epsilon, lam

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        clean_loss, out, g = clean_pass(model, batch)
        r = at_perturbation(g, batch["mask"], self.epsilon)
        adv_loss, _ = perturbed_pass(model, batch, r, self.lam)
        return {"loss": clean_loss + self.lam * adv_loss, "clean_loss": clean_loss,
                "adv_loss": adv_loss, "logits": out.logits.detach()}
