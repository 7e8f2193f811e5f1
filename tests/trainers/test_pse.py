"""The promotion/suppression definitions (trainers/pse.py) on a hand-built two-unit network whose
every number is known by hand; thresholds, signs, targeted attacks and unit masking.

The network is generated here (the real data has no model whose units can be computed by hand):
h = x (two units), three classes, z = W·h with W = [[2, 0], [0, 1], [-2, -1]] (its rows sum to 0, so
W is its own centred W̃) and no bias, true class 0.
"""

import pytest
import torch
from torch import nn

from advorch.trainers import pse
from advorch.trainers.data import TensorData
from advorch.trainers.models.base import Output, Perturbable
from advorch.trainers.tasks.classification import Classification


class TwoUnits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(2, 3, bias=False)
        self.out.weight.data = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-2.0, -1.0]])
        self.perturbable = {"pixels": Perturbable(raw=True)}

    def embed(self, batch):
        return {"pixels": batch["pixels"]}

    def forward(self, inputs, batch):
        h = inputs["pixels"]
        return Output(self.out(h), hidden={"pooled": h})


CLEAN = torch.tensor([1.0, 0.5])
# adversarial units and, by hand: σ = (2·(1 − h₀'), 0), π = (0, h₁' − 0.5), S = Σσ, P = Σπ, s, type
CASES = [  # h'          σ₀    π₁    s
    ((0.4, 1.0), 1.2, 0.5, 1.2 / 1.7, "suppression"),
    ((0.9, 1.5), 0.2, 1.0, 0.2 / 1.2, "promotion"),
    ((0.5, 1.5), 1.0, 1.0, 0.5, "balanced"),
    ((1.2, 1.5), -0.4, 1.0, 0.0, "promotion"),  # the true class rose: all of the margin drop is promotion
    ((0.2, 0.3), 1.6, -0.2, 1.0, "suppression"),  # the target fell: all of it is suppression
    ((1.0, 0.5), 0.0, 0.0, float("nan"), "none"),  # nothing moved
]


def test_promotion_and_suppression_of_each_unit_and_the_type_match_the_hand_computation():
    model = TwoUnits()
    adv = torch.tensor([c[0] for c in CASES])
    h = CLEAN.expand_as(adv)
    true, target = torch.zeros(len(CASES), dtype=torch.long), torch.ones(len(CASES), dtype=torch.long)
    e = pse.effects(model.out.weight, h, adv, true, target, torch.ones(len(CASES), dtype=torch.bool))
    sigma0 = torch.tensor([c[1] for c in CASES])
    pi1 = torch.tensor([c[2] for c in CASES])
    torch.testing.assert_close(e.sigma, torch.stack([sigma0, torch.zeros(len(CASES))], 1))
    torch.testing.assert_close(e.pi, torch.stack([torch.zeros(len(CASES)), pi1], 1))
    torch.testing.assert_close(e.s, torch.tensor([c[3] for c in CASES]), equal_nan=True)
    assert [pse.TYPES[k] for k in e.kind] == [c[4] for c in CASES]
    # S and P are the logit changes of t and a themselves
    z, z_adv = model.out(h), model.out(adv)
    torch.testing.assert_close(e.S, z[:, 0] - z_adv[:, 0])
    torch.testing.assert_close(e.P, z_adv[:, 1] - z[:, 1])


def test_a_shift_of_every_logit_changes_nothing_and_two_classes_are_always_balanced():
    """Softmax ignores z_c + u·h for all c; so do σ and π (centred W). With two classes S = P."""
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-2.0, -1.0]])
    h, h_adv = CLEAN.expand(3, 2), torch.tensor([c[0] for c in CASES[:3]])
    t, a = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    ok = torch.ones(3, dtype=torch.bool)
    e = pse.effects(w, h, h_adv, t, a, ok)
    shifted = pse.effects(w + torch.tensor([5.0, -3.0]), h, h_adv, t, a, ok)
    torch.testing.assert_close(e.sigma, shifted.sigma)
    torch.testing.assert_close(e.pi, shifted.pi)
    binary = pse.effects(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), h, h_adv, t, a, ok)
    torch.testing.assert_close(binary.S, binary.P)
    torch.testing.assert_close(binary.s, torch.full((3,), 0.5))


def test_thresholds_move_the_type_boundaries_and_bad_thresholds_are_refused():
    s = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0, float("nan")])
    assert [pse.TYPES[k] for k in pse.types(s)] == ["promotion", "promotion", "balanced", "suppression",
                                                     "suppression", "none"]
    assert [pse.TYPES[k] for k in pse.types(s, low=0.2, high=0.8)] == ["promotion", "balanced", "balanced",
                                                                      "balanced", "suppression", "none"]
    assert [pse.TYPES[k] for k in pse.types(torch.tensor([0.5]), low=0.5, high=0.6)] == ["promotion"]
    for low, high in ((0.7, 0.3), (-0.1, 0.5), (0.2, 1.5), (0.5, 0.5)):
        with pytest.raises(ValueError, match="0 <= low < high <= 1"):
            pse.types(s, low, high)
    # S and P both negative: the margin grew, no type
    assert pse.share(torch.tensor([-1.0]), torch.tensor([-2.0])).isnan().all()


def test_measure_attacks_the_network_and_the_summary_counts_successful_examples_only():
    model, task = TwoUnits(), Classification(3)
    x = torch.tensor([[1.0, 0.5], [1.0, 1.3], [0.2, 1.0]])  # true class 0, 0, 1; margins 1.5, 0.7, 0.6
    data = TensorData({"pixels": x}, torch.tensor([0, 0, 1]), ["a", "b", "c"])
    e = pse.measure(model, task, data, "fgsm", 0.3, low=0.4, high=0.6)
    # FGSM moves each unit by 0.3 against the true class: h₀ − 0.3, h₁ + 0.3 (class 0), the reverse (class 1)
    torch.testing.assert_close(e.dh, torch.tensor([[-0.3, 0.3], [-0.3, 0.3], [0.3, -0.3]]))
    torch.testing.assert_close(e.S, torch.tensor([0.6, 0.6, 0.3]))
    torch.testing.assert_close(e.P, torch.tensor([0.3, 0.3, 0.6]))
    assert e.success.tolist() == [False, True, True]  # the margin drops by 0.9: only 1.5 survives
    assert e.target.tolist() == [1, 1, 0]
    torch.testing.assert_close(e.s, torch.tensor([2 / 3, 2 / 3, 1 / 3]))
    out = pse.summary(e)
    assert out["success"] == pytest.approx(2 / 3)
    assert (out["suppression"], out["balanced"], out["promotion"]) == (0.5, 0.0, 0.5)
    assert out["mean_share"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_targeted_attacks_aim_at_a_seeded_other_class():
    labels = torch.arange(10).repeat(50)
    t1, t2 = pse.random_targets(labels, 10, seed=3), pse.random_targets(labels, 10, seed=3)
    assert torch.equal(t1, t2) and (t1 != labels).all()
    assert set(t1.tolist()) == set(range(10))
    assert torch.equal(pse.random_targets(torch.tensor([0, 1, 1]), 2, seed=0), torch.tensor([1, 0, 0]))
    # towards a target: the targeted step raises the target's logit
    model, task = TwoUnits(), Classification(3)
    batch = {"pixels": torch.tensor([[1.0, 0.5]]), "label": torch.tensor([0])}
    r = pse.perturb(model, task, batch, "fgsm", 0.1, target=torch.tensor([1]))
    torch.testing.assert_close(r["pixels"], torch.tensor([[-0.1, 0.1]]))


def test_masking_zeroes_the_named_units_only_inside_the_block():
    model = TwoUnits()
    x = {"pixels": torch.tensor([[1.0, 0.5]])}
    with pse.masked(model, torch.tensor([0])):
        torch.testing.assert_close(model(x, x).scores, torch.tensor([[0.0, 0.5, -0.5]]))
    torch.testing.assert_close(model(x, x).scores, torch.tensor([[2.0, 0.5, -2.5]]))
    h, h_adv = torch.tensor([[1.0, 0.5], [0.0, 0.5]]), torch.tensor([[0.0, 0.5], [0.0, 0.5]])
    zero, one = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    e = pse.effects(model.out.weight, h, h_adv, zero, one, one.bool())
    sens = pse.sensitivity(e)  # unit 0 moved by 0.5 on average, its clean spread is 0.707; unit 1 never
    torch.testing.assert_close(sens, torch.tensor([0.5 / 0.5**0.5, 0.0]))


def test_a_model_without_a_linear_head_is_refused():
    with pytest.raises(ValueError, match="no linear classifier layer"):
        pse.head(nn.Sequential(nn.Linear(2, 2)))


def test_grad_cam_equals_the_exact_cam_on_a_pooled_cnn_and_runs_on_the_crisis_cnn():
    """On a globally pooled CNN ∂z_c/∂A_k = W[c, k]/(h·w), so Grad-CAM = ReLU(CAM)/(h·w); the crisis
    Visual-CNN (flattened maps, no CAM) gets Grad-CAM maps at the image's size."""
    from advorch.trainers.models import ImageCNN, VisualCNN
    from advorch.trainers.pse_report import class_maps, grad_cam

    torch.manual_seed(0)
    cnn = ImageCNN(1, 10, (4, 6)).eval()
    x = {"pixels": torch.rand(5, 1, 8, 8)}
    c = torch.tensor([0, 3, 9, 2, 2])
    cam = cnn.class_activation_maps(cnn(x, x).hidden["conv"])[torch.arange(5), c]  # (5, 4, 4)
    torch.testing.assert_close(grad_cam(cnn, x, x, c), cam.relu().detach() / 16)
    visual = VisualCNN((3, 16, 16), 2).eval()
    x = {"pixels": torch.rand(3, 3, 16, 16)}
    maps = class_maps(visual, x, x, torch.tensor([0, 1, 1]))
    assert maps.shape == (3, 16, 16) and (maps >= 0).all() and maps.sum() > 0
