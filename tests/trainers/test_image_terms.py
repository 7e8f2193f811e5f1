"""FGSM, PGD-L∞ and input-gradient regularisation on tiny models with known answers, the image
CNN, and the config checks that refuse impossible regimes before anything starts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advorch.config import ExperimentConfig, ModelConfig, RegimeConfig, load_config
from advorch.trainers.adversarial import build_regime, check
from advorch.trainers.adversarial.input_gradient import InputGradientPenalty
from advorch.trainers.models import ImageCNN, Output, Perturbable, build_model
from advorch.trainers.robustness import attack
from advorch.trainers.tasks import Classification
from tests.trainers.specs import pixel_spec, token_spec

TASK = Classification(3)


class Linear(nn.Module):
    """scores = W·vec(x) + b on pixels (B, 1, 2, 2): ∇_x ℓ = Wᵀ(p − y) per example."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)
        self.perturbable = {"pixels": Perturbable(bounds=(0.0, 1.0), raw=True)}

    def embed(self, batch):
        return {"pixels": batch["pixels"]}

    def forward(self, inputs, batch):
        return Output(inputs["pixels"].flatten(1) @ self.w.T + self.b)


def _linear(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(3, 4, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype))
    pixels = torch.rand(5, 1, 2, 2, generator=g, dtype=dtype)
    batch = {"pixels": pixels, "label": torch.tensor([0, 1, 2, 1, 0])}
    return model, batch


def _by_hand(model, batch):
    """λ-free objective by hand: mean CE + mean_i ‖Wᵀ(p_i − y_i)‖²."""
    x = batch["pixels"].flatten(1)
    p = torch.softmax(x @ model.w.T + model.b, -1)
    y = F.one_hot(batch["label"], 3).to(p.dtype)
    grads = (p - y) @ model.w  # (B, 4): row i is Wᵀ(p_i − y_i)
    return F.cross_entropy(x @ model.w.T + model.b, batch["label"]), grads.pow(2).sum(1).mean()


def test_double_backprop_penalty_and_its_parameter_gradient_match_the_linear_softmax_by_hand():
    model, batch = _linear()
    lam = 0.7
    terms = build_regime(RegimeConfig(name="input_gradient", lam_ig=lam)).backward(model, TASK, batch)
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ce, pen = _by_hand(model, batch)
    (ce + lam * pen).backward()
    torch.testing.assert_close(terms["ig_penalty"], pen.detach())
    torch.testing.assert_close(terms["loss"], (ce + lam * pen).detach())
    for a, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_the_penalty_is_per_example_so_lambda_does_not_scale_with_the_batch():
    model, batch = _linear()
    twice = {k: torch.cat([v, v]) for k, v in batch.items()}
    one = build_regime(RegimeConfig(name="input_gradient")).backward(model, TASK, batch)["ig_penalty"]
    two = build_regime(RegimeConfig(name="input_gradient")).backward(model, TASK, twice)["ig_penalty"]
    torch.testing.assert_close(one, two)


def test_finite_difference_and_exact_penalties_agree_on_a_smooth_model():
    torch.manual_seed(0)
    model = ImageCNN(1, 3, (4, 6), activation="softplus").double()
    batch = {"pixels": torch.rand(6, 1, 8, 8, dtype=torch.float64), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    exact = build_regime(RegimeConfig(name="input_gradient")).backward(model, TASK, batch)
    g_exact = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fd = build_regime(RegimeConfig(name="input_gradient", ig_method="finite_difference", fd_step=1e-4)
                      ).backward(model, TASK, batch)
    torch.testing.assert_close(fd["ig_penalty"], exact["ig_penalty"], rtol=1e-3, atol=0)
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in g_exact]),
                              torch.cat([p.grad.flatten() for p in model.parameters()]), dim=0)
    assert cos > 0.999


def test_finite_difference_replays_the_dropout_masks_of_the_clean_pass():
    """With dropout on, the shifted forward must see the clean forward's masks, or the
    difference quotient is dominated by dropout noise."""
    torch.manual_seed(0)
    model = ImageCNN(1, 3, (4, 6), dropout=0.5, activation="softplus").double().train()
    batch = {"pixels": torch.rand(6, 1, 8, 8, dtype=torch.float64), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    penalty = InputGradientPenalty(1.0, "finite_difference", 1e-5)
    from advorch.trainers.adversarial import clean_pass

    cp = clean_pass(model, TASK, batch, keep_graph=True)
    with torch.no_grad():
        exact = cp.grads["pixels"].flatten(1).pow(2).sum(1).mean()
    got = penalty(cp)["ig_penalty"]
    assert float(got) == pytest.approx(float(exact), rel=1e-2)


def _cnn_and_images(widths: tuple[int, int], n: int):
    """A seeded image CNN in eval mode and n random 8x8 grey images with random labels (generated)."""
    torch.manual_seed(0)
    model = ImageCNN(1, 3, widths).eval()
    x = torch.rand(n, 1, 8, 8)
    return model, x, {"pixels": x, "label": torch.randint(0, 3, (n,))}


def test_fgsm_moves_every_pixel_by_epsilon_exactly_and_keeps_pixels_in_range():
    model, x, batch = _cnn_and_images((4, 6), 8)
    r = attack(model, TASK, batch, "fgsm", 0.1)["pixels"]
    adv = x + r
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    inside = (x > 0.1) & (x < 0.9)  # where the range does not cut the step
    torch.testing.assert_close(r[inside].abs(), torch.full_like(r[inside], 0.1))
    assert r.abs().max() <= 0.1 + 1e-7  # ‖δ‖∞ = ε
    with torch.no_grad():
        clean = F.cross_entropy(model({"pixels": x}, batch).scores, batch["label"])
        moved = F.cross_entropy(model({"pixels": adv}, batch).scores, batch["label"])
    assert moved > clean


def test_pgd_linf_stays_in_the_box_and_the_range_and_beats_fgsm():
    model, x, batch = _cnn_and_images((8, 8), 16)
    r1 = attack(model, TASK, batch, "fgsm", 0.05)["pixels"]
    r10 = attack(model, TASK, batch, "pgd_linf", 0.05, steps=10)["pixels"]
    assert r10.abs().max() <= 0.05 + 1e-6 and (x + r10).min() >= 0 and (x + r10).max() <= 1
    with torch.no_grad():
        losses = [F.cross_entropy(model({"pixels": x + r}, batch).scores, batch["label"]) for r in (r1, r10)]
    assert losses[1] >= losses[0] - 1e-6


def test_fgsm_training_term_gradients_equal_the_objective_by_hand():
    model, batch = _linear()
    build_regime(RegimeConfig(name="fgsm", epsilon=0.2, lam=0.5)).backward(model, TASK, batch)
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x = batch["pixels"].detach().requires_grad_(True)
    clean = F.cross_entropy(model({"pixels": x}, batch).scores, batch["label"])
    (g,) = torch.autograd.grad(clean, x, retain_graph=True)
    adv_x = (x.detach() + 0.2 * g.sign()).clamp(0, 1)
    (clean + 0.5 * F.cross_entropy(model({"pixels": adv_x}, batch).scores, batch["label"])).backward()
    for a, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_image_cnn_class_activation_maps_average_to_the_scores():
    """Global average pooling before the classifier: mean_hw CAM_c + b_c = score_c (Zhou et al.)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="image_cnn", channels=[4, 6]), pixel_spec(3, 16, 5)).eval()
    batch = {"pixels": torch.rand(2, 3, 16, 16)}
    out = model(model.embed(batch), batch)
    assert out.scores.shape == (2, 5) and out.hidden["conv"].shape == (2, 6, 8, 8)
    cam = model.class_activation_maps(out.hidden["conv"])
    torch.testing.assert_close(cam.mean((2, 3)) + model.out.bias, out.scores)


def _cfg(*overrides: str) -> ExperimentConfig:
    return load_config(None, list(overrides))


@pytest.mark.parametrize("overrides,message", [
    (['regime.name="vat"', 'regime.filter="cat"'], r'filter = "cat" .* regime \'vat\' has none'),
    (['regime.name="pgd"', 'regime.filter="sf"'], r"regime.filter = 'sf' is not used by regime 'pgd'"),
    (['regime.name="attention_at"', 'model.name="lstm"'], r"needs attention, model.name = 'lstm' has none"),
    (['regime.name="at"', "regime.transductive=true"], r"transductive = True is not used by regime 'at'"),
    (['regime.name="attention_at"', 'regime.norm="linf"'], r"eq. 11 is an L2 radius per step"),
    (['regime.name="fgsm+nope"'], r"unknown regime.name 'fgsm\+nope' \(term 'nope'\)"),
])
def test_impossible_combinations_are_refused_with_the_keys_and_the_fix(overrides, message):
    problems = check(_cfg(*overrides))
    assert problems and any(__import__("re").search(message, p) for p in problems), problems


def test_possible_combinations_pass_and_a_model_that_cannot_read_the_data_is_refused():
    for name in ("clean", "at", "fgsm", "input_gradient", "fgsm+input_gradient", "at_vat", "pgd"):
        assert check(_cfg(f'regime.name="{name}"'), token_spec()) == []
    assert check(_cfg('regime.name="vat"', 'model.name="lstm"', "regime.attention_aware=false")) == []
    problems = check(_cfg('model.name="image_cnn"'), token_spec())
    assert problems == ["model.name = 'image_cnn' reads pixels, the dataset memory://tokens has tokens; "
                        "use model.name = 'lstm' or 'lstm_attention' or 'text_cnn'"]
    assert check(_cfg('model.name="image_cnn"', 'regime.name="fgsm"'), pixel_spec()) == []


def test_a_sweep_over_a_key_the_regime_never_reads_is_refused():
    cfg = _cfg('regime.name="vat"', 'tune.space."regime.gamma".grid=[0.1, 0.2]')
    assert any("sweeps 'regime.gamma'" in p for p in check(cfg))
