"""Pure perturbation geometry: radii under a declared norm, projections, valid ranges,
attention similarity and filtering (Jia et al. KDD'19; Goodfellow et al.; Madry et al.).

g, r have the input's shape (B, …): (B, T, D) embeddings, (B, T, F) features, (B, C, H, W)
pixels. A mask (B, T) marks the real steps of a padded input and is None where every
element is real; masked-out positions are never perturbed. alpha (B, T) is attention.

    l2       ε · g / ‖g‖₂ per sample (eq. 2): ‖r‖₂ = ε
    l2_step  α^t · ε · g^t / ‖g^t‖₂ per step (eq. 11): ‖r^t‖₂ = α^t·ε
    linf     ε · sign(g) (FGSM): ‖r‖∞ = ε
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TINY = 1e-12
NORMS = ("l2", "linf")


def masked(x: Tensor, mask: Tensor | None) -> Tensor:
    """x with the masked-out steps zeroed; mask (B, T) broadcast over x's trailing dims."""
    if mask is None:
        return x
    return x * mask.view(*mask.shape, *([1] * (x.dim() - mask.dim()))).to(x.dtype)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """A (B,) value shaped to broadcast over x (B, …)."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def sequence_radius(g: Tensor, mask: Tensor | None, epsilon: float) -> Tensor:
    """ε · g / ‖g‖₂ with the norm over all real elements of a sample (eq. 2): ‖r‖₂ = ε."""
    g = masked(g, mask)
    return epsilon * g / _per_sample(g.flatten(1).norm(dim=1).clamp_min(TINY), g)


def attention_radius(g: Tensor, alpha: Tensor, mask: Tensor | None, epsilon: float) -> Tensor:
    """Per step t: α^t · ε · g^t / ‖g^t‖₂ (eq. 11), so ‖r^t‖ = α^t·ε where g^t ≠ 0; g (B, T, D).

    α is the clean input's attention, held constant.
    """
    g = masked(g, mask)
    unit = g / g.norm(dim=-1, keepdim=True).clamp_min(TINY)  # (B, T, D)
    return epsilon * alpha.detach().unsqueeze(-1) * unit


def sign_radius(g: Tensor, mask: Tensor | None, epsilon: float) -> Tensor:
    """ε · sign(g) (FGSM, Goodfellow et al. 2015): the steepest ascent under ‖r‖∞ ≤ ε."""
    return masked(epsilon * g.sign(), mask)


def radius(g: Tensor, mask: Tensor | None, epsilon: float, alpha: Tensor | None = None,
           norm: str = "l2") -> Tensor:
    """The steepest direction of g scaled to the boundary: eq. 11 with α, eq. 2 (l2) or FGSM (linf)."""
    if norm == "linf":
        return sign_radius(g, mask, epsilon)
    return sequence_radius(g, mask, epsilon) if alpha is None else attention_radius(g, alpha, mask, epsilon)


def project(r: Tensor, mask: Tensor | None, epsilon: float, alpha: Tensor | None = None,
            norm: str = "l2") -> Tensor:
    """Project r onto the allowed set: the per-sample L2 ε-ball, per-step α^t·ε balls, or the
    L∞ box [-ε, ε]."""
    r = masked(r, mask)
    if norm == "linf":
        return r.clamp(-epsilon, epsilon)
    if alpha is None:
        return r * (epsilon / _per_sample(r.flatten(1).norm(dim=1).clamp_min(TINY), r)).clamp(max=1.0)
    limit = epsilon * alpha.detach().unsqueeze(-1)  # (B, T, 1)
    return r * (limit / r.norm(dim=-1, keepdim=True).clamp_min(TINY)).clamp(max=1.0)


def within(x: Tensor, r: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """r cut so that x + r stays in the input's valid range (pixels in [0, 1])."""
    if bounds is None:
        return r
    return (x.detach() + r).clamp(*bounds) - x.detach()


def attention_similarity(alpha: Tensor, alpha_adv: Tensor, mask: Tensor | None) -> Tensor:
    """R = Σ_t α^t log α_adv^t per sample (eq. 12); larger means more similar attention. (B,)"""
    terms = alpha * alpha_adv.clamp_min(TINY).log()
    if mask is not None:
        terms = torch.where(mask, terms, torch.zeros_like(terms))
    return terms.sum(1)


def select_top(scores: Tensor, keep_ratio: float) -> Tensor:
    """Boolean (B,) mask of the ⌈K·B⌉ samples with the largest scores (SF, eq. 12)."""
    k = max(1, math.ceil(keep_ratio * scores.numel() - 1e-9))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[scores.topk(k).indices] = True
    return keep
