"""Selective Filtering (Jia et al. KDD'19, eq. 12).

Per sample R = Σ_t α^t log α_adv^t compares the clean attention α with the attention
α_adv on the perturbed input; only the top K% of R in the batch (the perturbations
that kept the discriminative period where it was) enter the adversarial loss, which
is averaged over the kept samples X_sf.
"""

from __future__ import annotations

from torch import Tensor

from advorch.trainers.adversarial.perturb import attention_similarity, select_top


def filtered_mean(per_sample: Tensor, alpha: Tensor | None, alpha_adv: Tensor | None, mask: Tensor | None,
                  keep_ratio: float) -> tuple[Tensor, Tensor]:
    """(mean loss over the kept samples, kept mask (B,)); keeps all when keep_ratio = 1
    or the model has no attention."""
    if keep_ratio >= 1.0 or alpha is None or alpha_adv is None:
        return per_sample.mean(), per_sample.new_ones(per_sample.shape, dtype=bool)
    keep = select_top(attention_similarity(alpha.detach(), alpha_adv.detach(), mask), keep_ratio)
    return per_sample[keep].mean(), keep
