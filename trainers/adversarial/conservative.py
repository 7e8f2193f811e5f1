"""Conservative Adversarial Training (Jia et al. KDD'19, eq. 13).

r_adv = argmax_r L_att(x + r) + γ Σ_t α^t log α_adv^t   s.t. ‖r^t‖ ≤ α^t·ε.

The attention term R(r) = Σ_t α^t log α_adv^t(r) is maximal at r = 0 (Gibbs'
inequality), so its gradient there is exactly zero and a linearisation at r = 0
(as eq. 2 does for L) would ignore γ. We therefore linearise L at r = 0 and take
R's gradient where the attention-aware perturbation r₀ lands:

    direction = ∇_e L(e) + γ · ∇_r R(e + r₀),   r_adv = α^t·ε · direction^t / ‖direction^t‖

γ = 0 gives attention-aware AT exactly; larger γ turns the perturbation towards
keeping the discriminative period where it was. Costs one more forward and an
input-only backward per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.base import CleanPass
from advorch.trainers.adversarial.perturb import attention_similarity


def similarity_gradient(cp: CleanPass, name: str, r0: Tensor) -> Tensor:
    """∇_r of the batch-mean R(α, α_adv(x + r)) at r = r0 for input `name`; no parameter gradient.

    The parameters are frozen for this pass so that autograd neither records nor computes
    their gradients: the backward does the input-gradient half of the work only.
    """
    r = r0.detach().requires_grad_(True)
    model, batch = cp.model, cp.batch
    with frozen(model):
        inputs = {k: v.detach() for k, v in model.embed(batch).items()}
        inputs[name] = inputs[name] + r
        out = model(inputs, batch)
        if out.attention is None:
            raise ValueError("Conservative AT needs a model with attention (model.name = lstm_attention)")
        objective = attention_similarity(cp.attention, out.attention, cp.mask(name)).mean()
        (g,) = torch.autograd.grad(objective, r)
    return g


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters with requires_grad off inside the block, restored after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
