"""Virtual adversarial training (Miyato et al.; Jia et al. KDD'19 eq. 3 and §2.2.1).

r_vat = argmax_{‖r‖≤ε} KL[p(ŷ|x; θ_c) ‖ p(ŷ|x + r; θ)], θ_c not differentiated.
The argmax is approximated by power iteration: d ← ∇_d KL(p ‖ p(x + ξ·d)) normalised,
from a random d; then r_vat = ε·d (per sample) or α^t·ε·d^t (attention-aware, eq. 11).
No label is used, so the term also applies to unlabelled sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.base import kl_from_clean
from advorch.trainers.adversarial.perturb import radius
from advorch.trainers.models.base import Batch


def power_iteration(model: nn.Module, batch: Batch, e: Tensor, p_clean: Tensor, xi: float,
                    iterations: int, alpha: Tensor | None, generator: torch.Generator | None = None
                    ) -> Tensor:
    """The dominant direction of the KL's curvature at e, unit-normalised like the radius.

    Accumulates no parameter gradient. e (B, T, D) is detached here.
    """
    mask = batch["mask"]
    e = e.detach()
    d = radius(torch.randn(e.shape, generator=generator, device=e.device, dtype=e.dtype),
               mask, 1.0, alpha)
    for _ in range(iterations):
        d = (xi * d).requires_grad_(True)
        kl = kl_from_clean(p_clean, model(e + d, batch).logits).sum()
        (g,) = torch.autograd.grad(kl, d)
        d = radius(g, mask, 1.0, alpha)
    return d.detach()
