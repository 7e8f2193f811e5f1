"""Robustness: the test metrics under attack, over a grid of ε, white-box or transferred.

Attacks act on the perturbable inputs (embeddings, features, pixels), never on token ids:
    at        one step along the loss gradient, ‖r‖₂ = ε per sample (Jia et al. eq. 2)
    fgsm      one step ε·sign(∇_x L), ‖r‖∞ = ε (Goodfellow et al. 2015)
    pgd       k projected steps in the per-sample L2 ε-ball (adversarial/pgd.py)
    pgd_linf  k projected sign steps in the L∞ ε-box
Pixels stay in [0, 1]. A transferred attack is crafted on another model (the source) and
evaluated on this one: only inputs that are the data itself (pixels, features) transfer;
embeddings are each model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advorch.trainers.adversarial.perturb import radius, within
from advorch.trainers.adversarial.pgd import pgd_attack
from advorch.trainers.data import TensorData
from advorch.trainers.models.base import Batch, Inputs, input_mask
from advorch.trainers.tasks.base import Task

ATTACKS = ("at", "fgsm", "pgd", "pgd_linf")


def attack(model: nn.Module, task: Task, batch: Batch, name: str, epsilon: float, steps: int = 10,
           step_size: float | None = None) -> Inputs:
    """The perturbation per input of attack `name` at radius ε, on `model`.

    PGD's step defaults to 2.5·ε/steps (Madry et al.), so it can cross the ball and back.
    """
    inputs = {k: v.detach() for k, v in model.embed(batch).items()}
    if name in ("at", "fgsm"):
        x = {k: v.requires_grad_(True) for k, v in inputs.items()}
        g = torch.autograd.grad(task.loss(model(x, batch), batch), list(x.values()))
        norm = "linf" if name == "fgsm" else "l2"
        return {k: within(inputs[k], radius(gk, input_mask(model, k, batch), epsilon, norm=norm),
                          model.perturbable[k].bounds) for k, gk in zip(x, g, strict=True)}
    if name in ("pgd", "pgd_linf"):
        return pgd_attack(model, task, batch, inputs, epsilon, steps, step_size or 2.5 / steps,
                          norm="linf" if name == "pgd_linf" else "l2")
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def transferable(model: nn.Module) -> bool:
    """Whether a perturbation made on another model means the same on this one (raw inputs only)."""
    return all(p.raw for p in model.perturbable.values())


def robustness(model: nn.Module, task: Task, data: TensorData, attacks: Sequence[str],
               epsilons: Sequence[float], batch_size: int = 256, steps: int = 10,
               step_size: float | None = None, device: torch.device | None = None,
               source: nn.Module | None = None) -> list[dict[str, float | str]]:
    """Rows {attack, epsilon, accuracy[, auc], loss} for the clean input (ε = 0) and each attack × ε.

    With `source`, the attack is crafted on that model (a transfer attack) and evaluated on this one.

    Raises:
        ValueError: a transfer between models whose inputs are their own embeddings.
    """
    device = device or torch.device("cpu")
    crafter = source if source is not None else model
    if source is not None and not (transferable(model) and transferable(source)):
        raise ValueError("transfer attacks need inputs both models read as they are (pixels, features); "
                         "these models perturb their own embeddings")
    model.eval()  # no dropout: the attack sees the deployed model
    crafter.eval()
    rows = []
    for name, eps in [("clean", 0.0)] + [(a, e) for a in attacks for e in epsilons]:
        perturb = None if name == "clean" else (
            lambda b, name=name, eps=eps: attack(crafter, task, b, name, eps, steps, step_size))
        rows.append({"attack": name, "epsilon": eps,
                     **task.evaluate(model, data, batch_size, device, perturb=perturb)})
    return rows


def plot(rows: list[dict], path: str, metric: str = "accuracy", xlabel: str = "ε") -> None:
    """Metric vs ε per attack, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next(r[metric] for r in rows if r["attack"] == "clean")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in sorted({r["attack"] for r in rows} - {"clean"}):
        pts = sorted((r["epsilon"], r[metric]) for r in rows if r["attack"] == name)
        ax.plot([0.0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
