"""Input-gradient regularisation (Ross & Doshi-Velez, AAAI'18; Drucker & LeCun 1992).

min_θ L(x, y) + λ · mean_i ‖∇_{x_i} ℓ_i(x_i, y_i)‖²

penalising how much a small change of the input can move each example's loss. The norm is
per example (the gradient of its own loss ℓ_i, over all its perturbable inputs and real
steps), so λ does not scale with the batch size. Two ways to compute it:

    double_backprop     the exact penalty: ∇_x ℓ with create_graph, then backpropagated
                        through (Drucker & LeCun's double backpropagation)
    finite_difference   ‖∇_x ℓ_i‖ ≈ (ℓ_i(x_i + h·d_i) − ℓ_i(x_i)) / h with d_i = ∇ℓ_i / ‖∇ℓ_i‖
                        held constant (Finlay & Oberman 2019): no second-order graph; one
                        extra forward and two extra backwards over clean training (d needs
                        ∇_x ℓ before the shifted forward, and the penalty's gradient flows
                        through both graphs). The shifted forward replays the clean forward's
                        random state, so dropout draws the same masks in both.

Cost per step (benchmarks/step_cost.py): on the image CNN both forms are ≈ 2x clean; on the
CPU LSTM double backprop is ≈ 5x (PyTorch's LSTM double backward runs step by step), so
recurrent models should use the finite difference (≈ 2.4x).
"""

from __future__ import annotations

import torch
from torch import Tensor

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import CleanPass
from advorch.trainers.adversarial.perturb import masked

METHODS = ("double_backprop", "finite_difference")


def penalty(grads: dict[str, Tensor], masks: dict[str, Tensor | None]) -> Tensor:
    """mean_i Σ_inputs ‖∇_{x_i} ℓ_i‖² over the real elements (B,)→(); grads are per example."""
    return sum(masked(g, masks[k]).flatten(1).pow(2).sum(1) for k, g in grads.items()).mean()


def directions(grads: dict[str, Tensor], masks: dict[str, Tensor | None]) -> dict[str, Tensor]:
    """d_i = ∇ℓ_i / ‖∇ℓ_i‖ per example, the norm over all its inputs together."""
    flat = torch.cat([masked(g, masks[k]).flatten(1) for k, g in grads.items()], 1)
    norm = flat.norm(dim=1).clamp_min(1e-12)
    return {k: masked(g, masks[k]) / norm.view(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}


class InputGradientPenalty:
    """λ_ig · mean_i ‖∇_x ℓ_i‖², exact or by finite differences (see the module docstring)."""

    FIELDS = ("lam_ig", "ig_method", "fd_step", "inputs")
    name = "input_gradient"

    def __init__(self, lam: float, method: str = "double_backprop", step: float = 0.01,
                 inputs: tuple[str, ...] = ()) -> None:
        if method not in METHODS:
            raise ValueError(f"regime.ig_method {method!r}: use one of {', '.join(METHODS)}")
        self.lam, self.method, self.step, self.inputs = lam, method, step, inputs
        self.needs = frozenset({"graph", "double_backward"} if method == "double_backprop" else {"graph"})

    @classmethod
    def from_config(cls, name: str, cfg: RegimeConfig) -> InputGradientPenalty:
        return cls(cfg.lam_ig, cfg.ig_method, cfg.fd_step, tuple(cfg.inputs))

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        names = self.inputs or tuple(cp.inputs)
        masks = {k: cp.mask(k) for k in names}
        if self.method == "double_backprop":
            pen = penalty({k: cp.grad_graph[k] for k in names}, masks)
        else:
            pen = self._finite_difference(cp, names, masks)
        cp.pending.append(self.lam * pen)
        return {"weighted": self.lam * pen.detach(), "ig_penalty": pen.detach()}

    def _finite_difference(self, cp: CleanPass, names: tuple[str, ...],
                           masks: dict[str, Tensor | None]) -> Tensor:
        d = directions({k: cp.grads[k] for k in names}, masks)
        with torch.random.fork_rng(devices=range(len(cp.rng[1])) if cp.rng[1] else []):
            torch.set_rng_state(cp.rng[0])
            if cp.rng[1]:
                torch.cuda.set_rng_state_all(cp.rng[1])
            shifted = cp.perturbed({k: self.step * v for k, v in d.items()})
        task, batch = cp.task, cp.batch
        slope = (task.loss(shifted, batch, "none") - task.loss(cp.out, batch, "none")) / self.step
        return slope.pow(2).mean()
