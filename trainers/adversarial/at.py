"""Adversarial training on all time steps (Goodfellow et al.; Miyato et al.; Jia et al. eq. 1-2).

min_θ L(e, y) + λ · L(e + r_adv, y),   r_adv = ε · g / ‖g‖₂,   g = ∇_e L(e, y)

e is the embedded input (never the token ids); the L2 norm is taken per sample over
all real time steps and features, so ‖r_adv‖₂ = ε for every sample (0 on padding).
The sign is +g: r_adv ascends the loss (the linear approximation of the argmax in
eq. 1). The regime itself is `SequenceAdversarial(use_at=True, at_attention=False)`.
"""

from __future__ import annotations

from torch import Tensor

from advorch.trainers.adversarial.perturb import sequence_radius


def at_perturbation(g: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    """r_adv = ε · g / ‖g‖₂ per sample (eq. 2); g (B, T, D), mask (B, T)."""
    return sequence_radius(g, mask, epsilon)
