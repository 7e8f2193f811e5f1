"""Attention-aware AT, SF, CAT, VAT and PGD (Jia et al. KDD'19 eq. 3, 11-13) on tiny tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advorch.config import ModelConfig, RegimeConfig
from advorch.trainers.adversarial import build_regime
from advorch.trainers.adversarial.perturb import (
    attention_radius,
    attention_similarity,
    project,
    select_top,
)
from advorch.trainers.adversarial.pgd import pgd_attack
from advorch.trainers.adversarial.vat import power_iteration
from advorch.trainers.models import Output, Perturbable, build_model
from advorch.trainers.tasks import Classification
from tests.trainers.specs import token_spec

TASK = Classification(2)


def kl_from_clean(p, logits):
    return TASK.divergence(p.log(), Output(logits))

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)


def _alpha(seed=0):
    torch.manual_seed(seed)
    scores = torch.randn(3, 5).masked_fill(~MASK, float("-inf"))
    return torch.softmax(scores, 1)


def test_attention_radius_per_step_norm_is_alpha_eps_where_gradient_is_nonzero():
    alpha, g = _alpha(), torch.randn(3, 5, 4)
    g[1, 2] = 0  # a real step without gradient gets no perturbation
    r = attention_radius(g, alpha, MASK, epsilon=2.0)
    norms = r.norm(dim=-1)
    expected = 2.0 * alpha * (g.norm(dim=-1) > 0)
    torch.testing.assert_close(norms, expected)
    assert torch.all(norms <= 2.0 * alpha + 1e-6)
    assert torch.all(r[~MASK] == 0)
    # direction per step: along +g
    cos = F.cosine_similarity(r[MASK], g[MASK], dim=-1)
    assert torch.allclose(cos[g[MASK].norm(dim=-1) > 0], torch.tensor(1.0))


def test_projection_keeps_each_step_inside_its_ball():
    alpha, r = _alpha(), 10 * torch.randn(3, 5, 4)
    p = project(r, MASK, 1.5, alpha)
    assert torch.all(p.norm(dim=-1) <= 1.5 * alpha + 1e-6) and torch.all(p[~MASK] == 0)
    small = 1e-3 * torch.randn(3, 5, 4) * MASK.unsqueeze(-1)
    torch.testing.assert_close(project(small, MASK, 100.0), small)  # inside: unchanged
    assert torch.all(project(r, MASK, 0.7).flatten(1).norm(dim=1) <= 0.7 + 1e-6)


def test_attention_similarity_is_largest_for_unchanged_attention():
    alpha = _alpha()
    same = attention_similarity(alpha, alpha, MASK)
    other = attention_similarity(alpha, _alpha(1), MASK)
    # Σ α log β ≤ Σ α log α (Gibbs' inequality), equality iff β = α
    assert torch.all(other <= same + 1e-6)
    torch.testing.assert_close(same, (alpha.clamp_min(1e-12).log() * alpha).nan_to_num().sum(1))


@pytest.mark.parametrize("keep_ratio,batch", [(0.6, 10), (0.8, 7), (0.4, 5), (1.0, 3), (0.01, 4)])
def test_sf_keeps_ceil_k_of_the_batch_with_the_largest_r(keep_ratio, batch):
    scores = torch.randperm(batch).float()
    keep = select_top(scores, keep_ratio)
    k = math.ceil(keep_ratio * batch)
    assert int(keep.sum()) == k
    assert set(scores[keep].tolist()) == set(range(batch - k, batch))  # the k largest R


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden_dim=8, embedding_dim=6, dropout=dropout), token_spec())


def _batch():
    tokens = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [12, 13, 0, 0, 0], [5, 6, 7, 8, 0]])
    return {"tokens": tokens, "mask": tokens != 0, "label": torch.tensor([0, 1, 1, 0])}


def _grads_after(regime_cfg: RegimeConfig, seed=0):
    model, batch = _model(seed), _batch()
    terms = build_regime(regime_cfg).backward(model, TASK, batch)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), terms


def test_cat_with_gamma_zero_equals_attention_aware_at():
    a, ta = _grads_after(RegimeConfig(name="attention_at", epsilon=1.0, filter="cat", gamma=0.0))
    b, tb = _grads_after(RegimeConfig(name="attention_at", epsilon=1.0))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta["loss"], tb["loss"])
    c, _ = _grads_after(RegimeConfig(name="attention_at", epsilon=1.0, filter="cat", gamma=5.0))
    assert not torch.allclose(a, c)  # γ > 0 changes the perturbation


def test_cat_similarity_gradient_touches_no_parameter_and_matches_autograd():
    from advorch.trainers.adversarial.base import CleanPass
    from advorch.trainers.adversarial.conservative import similarity_gradient

    model, batch = _model(), _batch()
    with torch.no_grad():
        out0 = model(model.embed(batch), batch)
    alpha = out0.attention
    cp = CleanPass(model, TASK, batch, model.embed(batch), out0, torch.tensor(0.0), {})
    r0 = 0.3 * torch.randn(4, 5, 6) * batch["mask"][..., None]
    g = similarity_gradient(cp, "tokens", r0)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    r = r0.clone().requires_grad_(True)  # reference: parameters left trainable
    out = model({"tokens": model.embed(batch)["tokens"].detach() + r}, batch)
    (ref,) = torch.autograd.grad(attention_similarity(alpha, out.attention, batch["mask"]).mean(), r)
    torch.testing.assert_close(g, ref)
    assert g.abs().sum() > 0


def test_sf_with_full_keep_ratio_equals_attention_aware_at_and_reports_kept_share():
    a, _ = _grads_after(RegimeConfig(name="attention_at", filter="sf", keep_ratio=1.0))
    b, _ = _grads_after(RegimeConfig(name="attention_at"))
    torch.testing.assert_close(a, b)
    _, t = _grads_after(RegimeConfig(name="attention_at", filter="sf", keep_ratio=0.5))
    assert float(t["kept"]) == 0.5  # 2 of 4


def test_attention_aware_at_gradients_match_the_eq11_objective():
    model, batch = _model(), _batch()
    build_regime(RegimeConfig(name="attention_at", epsilon=0.8, lam=0.5)).backward(model, TASK, batch)
    fast = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    e = model.embed(batch)
    out = model(e, batch)
    clean = F.cross_entropy(out.scores, batch["label"])
    (g,) = torch.autograd.grad(clean, e["tokens"], retain_graph=True)
    r = attention_radius(g, out.attention.detach(), batch["mask"], 0.8)
    adv = F.cross_entropy(model({"tokens": model.embed(batch)["tokens"] + r}, batch).scores, batch["label"])
    (clean + 0.5 * adv).backward()
    torch.testing.assert_close(fast, torch.cat([p.grad.flatten() for p in model.parameters()]))


class _Quadratic(nn.Module):
    """logits = A·vec(e): KL(p ‖ p(e + r)) ≈ ½ rᵀ Aᵀ (diag p − p pᵀ) A r near r = 0."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a
        self.perturbable = {"e": Perturbable(mask="mask")}

    def embed(self, batch):
        return {"e": batch["e"]}

    def forward(self, inputs, batch):
        return Output(inputs["e"].flatten(1) @ self.a.T)


def test_vat_power_iteration_finds_the_dominant_direction_of_a_known_quadratic():
    torch.manual_seed(0)
    a = torch.randn(4, 6, dtype=torch.float64)
    e = torch.zeros(1, 2, 3, dtype=torch.float64)  # p uniform at e = 0
    batch = {"e": e, "mask": torch.ones(1, 2, dtype=torch.bool)}
    model = _Quadratic(a)
    scores = model({"e": e}, batch).scores
    p = torch.softmax(scores, -1)
    h = a.T @ (torch.diag(p[0]) - p[0:1].T @ p[0:1]) @ a  # the KL's Hessian
    eigvals, eigvecs = np.linalg.eigh(h.numpy())
    top = torch.from_numpy(eigvecs[:, -1])
    d = power_iteration(model, TASK, batch, {"e": e}, scores, xi=1e-6, iterations=50, alpha=None,
                        generator=torch.Generator().manual_seed(1))["e"]
    assert abs(float(F.cosine_similarity(d.flatten(1), top[None], dim=1))) > 0.999
    assert abs(float(d.norm()) - 1.0) < 1e-9


def test_vat_kl_is_nonnegative_and_zero_only_without_perturbation():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(5, 3), -1)
    assert torch.all(kl_from_clean(p, torch.randn(5, 3)) >= 0)
    torch.testing.assert_close(kl_from_clean(p, p.log()), torch.zeros(5))


@pytest.mark.parametrize("name", ["attention_at", "vat", "at_vat", "pgd"])
def test_no_regime_touches_padding_or_token_ids(name):
    """Padding embeddings get no gradient from any term; token ids are never changed."""
    model, batch = _model(), _batch()
    tokens = batch["tokens"].clone()
    terms = build_regime(RegimeConfig(name=name, epsilon=1.0, filter="sf")).backward(model, TASK, batch)
    assert torch.equal(batch["tokens"], tokens)
    assert torch.all(model.embedding.weight.grad[0] == 0)  # id 0 = padding
    assert all(torch.isfinite(v).all() for v in terms.values())


def test_vat_uses_the_unlabelled_batch_when_given():
    model, batch = _model(), _batch()
    unlabelled = {"tokens": torch.tensor([[20, 21, 22, 0]]), "mask": torch.tensor([[1, 1, 1, 0]]).bool()}
    batch["unlabelled"] = unlabelled
    build_regime(RegimeConfig(name="vat", lam_vat=1.0)).backward(model, TASK, batch)
    assert torch.any(model.embedding.weight.grad[20] != 0)  # only the unlabelled batch has id 20


def test_pgd_stays_in_the_ball_and_beats_one_step():
    model, batch = _model(), _batch()
    model.eval()
    e = model.embed(batch)["tokens"].detach()
    alpha = model({"tokens": e}, batch).attention.detach()
    for att in (None, alpha):
        r1 = pgd_attack(model, TASK, batch, {"tokens": e}, 1.0, steps=1, step_size=1.0, alpha=att)["tokens"]
        r5 = pgd_attack(model, TASK, batch, {"tokens": e}, 1.0, steps=5, step_size=0.5, alpha=att)["tokens"]
        limit = 1.0 + 1e-5 if att is None else None
        if att is None:
            assert torch.all(r5.flatten(1).norm(dim=1) <= limit)
        else:
            assert torch.all(r5.norm(dim=-1) <= att + 1e-5)
        with torch.no_grad():
            l1 = F.cross_entropy(model({"tokens": e + r1}, batch).scores, batch["label"])
            l5 = F.cross_entropy(model({"tokens": e + r5}, batch).scores, batch["label"])
        assert l5 >= l1 - 1e-6
