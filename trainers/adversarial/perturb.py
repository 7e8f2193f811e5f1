"""Pure perturbation geometry (Jia et al. KDD'19): radii, attention similarity, filtering.

All tensors are batch-first: g, r (B, T, D); alpha, mask (B, T). Padding (mask False)
is never perturbed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TINY = 1e-12


def sequence_radius(g: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    """ε · g / ‖g‖₂ with the norm over all real steps of a sample (eq. 2): ‖r‖₂ = ε."""
    g = g * mask.unsqueeze(-1)
    norm = g.flatten(1).norm(dim=1).clamp_min(TINY)  # (B,)
    return epsilon * g / norm.view(-1, *([1] * (g.dim() - 1)))


def attention_radius(g: Tensor, alpha: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    """Per step t: α^t · ε · g^t / ‖g^t‖₂ (eq. 11), so ‖r^t‖ = α^t·ε where g^t ≠ 0.

    α is the clean input's attention, held constant.
    """
    g = g * mask.unsqueeze(-1)
    unit = g / g.norm(dim=-1, keepdim=True).clamp_min(TINY)  # (B, T, D)
    return epsilon * alpha.detach().unsqueeze(-1) * unit


def project(r: Tensor, mask: Tensor, epsilon: float, alpha: Tensor | None = None) -> Tensor:
    """Project r onto the allowed set: the per-sample ε-ball, or per-step α^t·ε balls."""
    r = r * mask.unsqueeze(-1)
    if alpha is None:
        norm = r.flatten(1).norm(dim=1).clamp_min(TINY).view(-1, *([1] * (r.dim() - 1)))
        return r * (epsilon / norm).clamp(max=1.0)
    limit = epsilon * alpha.detach().unsqueeze(-1)  # (B, T, 1)
    norm = r.norm(dim=-1, keepdim=True).clamp_min(TINY)
    return r * (limit / norm).clamp(max=1.0)


def radius(g: Tensor, mask: Tensor, epsilon: float, alpha: Tensor | None) -> Tensor:
    """The steepest direction of g scaled to the boundary: eq. 11 with α, else eq. 2."""
    return sequence_radius(g, mask, epsilon) if alpha is None else attention_radius(g, alpha, mask, epsilon)


def attention_similarity(alpha: Tensor, alpha_adv: Tensor, mask: Tensor) -> Tensor:
    """R = Σ_t α^t log α_adv^t per sample (eq. 12); larger means more similar attention. (B,)"""
    terms = alpha * alpha_adv.clamp_min(TINY).log()
    return torch.where(mask, terms, torch.zeros_like(terms)).sum(1)


def select_top(scores: Tensor, keep_ratio: float) -> Tensor:
    """Boolean (B,) mask of the ⌈K·B⌉ samples with the largest scores (SF, eq. 12)."""
    k = max(1, math.ceil(keep_ratio * scores.numel() - 1e-9))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[scores.topk(k).indices] = True
    return keep
