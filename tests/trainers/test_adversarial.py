"""Regimes on tiny tensors where the answer is known by hand."""

import pytest
import torch
import torch.nn.functional as F

from advorch.config import ModelConfig, RegimeConfig
from advorch.trainers.adversarial import build_regime
from advorch.trainers.adversarial.perturb import sequence_radius as at_perturbation
from advorch.trainers.models import build_model
from advorch.trainers.tasks import Classification
from tests.trainers.specs import token_spec

TASK = Classification(2)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden_dim=8, embedding_dim=6, dropout=0.0), token_spec())
    tokens = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [12, 13, 0, 0, 0]])
    batch = {"tokens": tokens, "mask": tokens != 0, "label": torch.tensor([0, 1, 1])}
    return model, batch


def test_at_perturbation_has_norm_epsilon_per_sample_and_spares_padding():
    g = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    r = at_perturbation(g, mask, epsilon=0.7)
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((3,), 0.7))
    assert torch.all(r[~mask] == 0)
    # direction: r is parallel to g on the real steps (eq. 2, sign +)
    cos = F.cosine_similarity((g * mask.unsqueeze(-1)).flatten(1), r.flatten(1))
    torch.testing.assert_close(cos, torch.ones(3))


def test_at_perturbation_of_a_zero_gradient_is_zero():
    r = at_perturbation(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), 1.0)
    assert torch.all(r == 0)


def test_at_ascends_the_loss_more_than_a_random_direction():
    model, batch = _setup()
    model.eval()
    e = model.embed(batch)["tokens"].detach().requires_grad_(True)
    loss = F.cross_entropy(model({"tokens": e}, batch).scores, batch["label"])
    (g,) = torch.autograd.grad(loss, e)
    r = at_perturbation(g, batch["mask"], 0.5)
    rand = at_perturbation(torch.randn_like(g), batch["mask"], 0.5)
    with torch.no_grad():
        adv = F.cross_entropy(model({"tokens": e + r}, batch).scores, batch["label"])
        rnd = F.cross_entropy(model({"tokens": e + rand}, batch).scores, batch["label"])
    assert adv > loss > 0 and adv > rnd


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.3])
def test_at_gradients_equal_autograd_of_the_eq1_objective(lam):
    """The two-backward implementation equals ∇θ [L(e) + λ L(e + r_adv)] with r_adv constant."""
    model, batch = _setup()
    regime = build_regime(RegimeConfig(name="at", epsilon=0.5, lam=lam))
    model.zero_grad()
    terms = regime.backward(model, TASK, batch)
    fast = _grads(model)

    model.zero_grad()
    e = model.embed(batch)
    clean = F.cross_entropy(model(e, batch).scores, batch["label"])
    (g,) = torch.autograd.grad(clean, e["tokens"], retain_graph=True)
    r = at_perturbation(g.detach(), batch["mask"], 0.5)
    adv = F.cross_entropy(model({"tokens": model.embed(batch)["tokens"] + r}, batch).scores, batch["label"])
    (clean + lam * adv).backward()
    torch.testing.assert_close(fast, _grads(model))
    torch.testing.assert_close(terms["loss"], (clean + lam * adv).detach())


def test_clean_regime_is_plain_cross_entropy():
    model, batch = _setup()
    terms = build_regime(RegimeConfig(name="clean")).backward(model, TASK, batch)
    fast = _grads(model)
    model.zero_grad()
    F.cross_entropy(model(model.embed(batch), batch).scores, batch["label"]).backward()
    torch.testing.assert_close(fast, _grads(model))
    assert "adv_loss" not in terms


def test_unknown_regime_names_the_known_ones():
    with pytest.raises(ValueError, match="known: clean, at, attention_at, fgsm"):
        build_regime(RegimeConfig(name="nope"))
