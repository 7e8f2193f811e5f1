"""The sequence adversarial regimes of Jia et al. KDD'19, from one set of parts.

    at            AT on all steps (eq. 1-2): ‖r‖₂ = ε per sample
    attention_at  attention-aware AT (eq. 11): ‖r^t‖ = α^t·ε per step
    vat           VAT (eq. 3), attention-aware unless regime.attention_aware = false
    at_vat        attention-aware AT + VAT, each with its own λ

Each can be refined by Selective Filtering (filter = "sf", eq. 12: only the top K%
by attention similarity enter the adversarial losses) or Conservative AT (filter =
"cat", eq. 13: the AT direction also keeps attention similar, weight γ).

loss = L(e) + λ·L(e + r_adv) + λ_vat·KL(p(e) ‖ p(e + r_vat)). One step costs: clean
forward/backward (its input gradient gives r_adv for free), one perturbed
forward/backward per term, and one forward/backward per VAT power iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.trainers.adversarial.base import (
    classification_loss,
    clean_pass,
    kl_from_clean,
    perturbed_forward,
    weighted_backward,
)
from advorch.trainers.adversarial.conservative import similarity_gradient
from advorch.trainers.adversarial.perturb import radius
from advorch.trainers.adversarial.selective_filtering import filtered_mean
from advorch.trainers.adversarial.vat import power_iteration
from advorch.trainers.models.base import Batch


class SequenceAdversarial:
    """AT and/or VAT terms on embeddings, optionally attention-aware, SF- or CAT-refined."""

    def __init__(self, name: str, *, epsilon: float, lam: float = 1.0, use_at: bool = True,
                 at_attention: bool = True, use_vat: bool = False, lam_vat: float = 1.0,
                 vat_attention: bool = True, xi: float = 0.1, power_iterations: int = 1,
                 filter: str = "none", keep_ratio: float = 0.6, gamma: float = 0.2) -> None:
        self.name, self.epsilon, self.lam, self.lam_vat = name, epsilon, lam, lam_vat
        self.use_at, self.at_attention = use_at, at_attention
        self.use_vat, self.vat_attention = use_vat, vat_attention
        self.xi, self.power_iterations = xi, power_iterations
        self.keep_ratio = keep_ratio if filter == "sf" else 1.0
        self.gamma = gamma if filter == "cat" else 0.0

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        mask = batch["mask"]
        cp = clean_pass(model, batch)
        alpha = cp.out.attention.detach() if cp.out.attention is not None else None
        terms = {"clean_loss": cp.loss}
        total = cp.loss
        if self.use_at:
            if self.at_attention and alpha is None:
                raise ValueError(f"regime {self.name!r} needs a model with attention")
            geometry = alpha if self.at_attention else None
            r = radius(cp.grad, mask, self.epsilon, geometry)
            if self.gamma:  # CAT, eq. 13
                g = cp.grad + self.gamma * similarity_gradient(model, batch, r, alpha)
                r = radius(g, mask, self.epsilon, geometry)
            out = perturbed_forward(model, batch, r)
            adv, keep = filtered_mean(classification_loss(out, batch, "none"), alpha, out.attention,
                                      mask, self.keep_ratio)
            weighted_backward(adv, self.lam)
            terms.update(adv_loss=adv.detach(), kept=keep.float().mean())
            total = total + self.lam * adv.detach()
        if self.use_vat:
            vat = self._vat_term(model, batch, cp.out.logits.detach(), alpha)
            total = total + self.lam_vat * vat
            terms["vat_loss"] = vat
        return {"loss": total, **terms, "logits": cp.out.logits.detach()}

    def _vat_term(self, model: nn.Module, batch: Batch, clean_logits: Tensor,
                  alpha: Tensor | None) -> Tensor:
        """KL on the labelled batch, or on batch["unlabelled"] when the loader adds one."""
        ub = batch.get("unlabelled", batch)
        if ub is not batch:
            with torch.no_grad():
                out_u = model(model.embed(ub), ub)
            clean_logits, alpha = out_u.logits, out_u.attention
        att = alpha if self.vat_attention else None
        p = F.softmax(clean_logits, -1)
        d = power_iteration(model, ub, model.embed(ub), p, self.xi, self.power_iterations, att)
        out = perturbed_forward(model, ub, self.epsilon * d)
        vat, _ = filtered_mean(kl_from_clean(p, out.logits), att, out.attention, ub["mask"],
                               self.keep_ratio)
        weighted_backward(vat, self.lam_vat)
        return vat.detach()
