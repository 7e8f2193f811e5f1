"""Robustness: the test metrics under attack, over a grid of ε.

Attacks act on the embedded input, never on token ids:
    at   one step along the loss gradient, ‖r‖₂ = ε per sample (Jia et al. eq. 2)
    pgd  k projected steps in the same per-sample ε-ball (adversarial/pgd.py)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advorch.trainers.adversarial.base import classification_loss
from advorch.trainers.adversarial.perturb import sequence_radius
from advorch.trainers.adversarial.pgd import pgd_attack
from advorch.trainers.data import SequenceData, batches
from advorch.trainers.evaluate import metrics
from advorch.trainers.models.base import Batch

ATTACKS = ("at", "pgd")


def attack(model: nn.Module, batch: Batch, name: str, epsilon: float, steps: int = 10,
           step_size: float | None = None) -> torch.Tensor:
    """The perturbation r (B, T, D) of attack `name` at radius ε.

    PGD's step defaults to 2.5·ε/steps (Madry et al.), so it can cross the ball and back.
    """
    e = model.embed(batch).detach()
    if name == "at":
        e.requires_grad_(True)
        (g,) = torch.autograd.grad(classification_loss(model(e, batch), batch), e)
        return sequence_radius(g, batch["mask"], epsilon)
    if name == "pgd":
        return pgd_attack(model, batch, e, epsilon, steps, step_size or 2.5 / steps)
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def robustness(model: nn.Module, data: SequenceData, attacks: Sequence[str], epsilons: Sequence[float],
               batch_size: int = 256, steps: int = 10, step_size: float | None = None,
               device: torch.device | None = None) -> list[dict[str, float | str]]:
    """Rows {attack, epsilon, accuracy[, auc], loss} for the clean input (ε = 0) and each attack × ε."""
    device = device or torch.device("cpu")
    model.eval()  # no dropout: the attack sees the deployed model
    rows = []
    for name, eps in [("clean", 0.0)] + [(a, e) for a in attacks for e in epsilons]:
        probs = []
        for b in batches(data, batch_size, device):
            r = attack(model, b, name, eps, steps, step_size) if name != "clean" else 0.0
            with torch.no_grad():
                probs.append(torch.softmax(model(model.embed(b) + r, b).logits, -1))
        rows.append({"attack": name, "epsilon": eps, **metrics(torch.cat(probs), data.labels)})
    return rows


def plot(rows: list[dict], path: str, metric: str = "accuracy") -> None:
    """Metric vs ε per attack, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next(r[metric] for r in rows if r["attack"] == "clean")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in sorted({r["attack"] for r in rows} - {"clean"}):
        pts = sorted((r["epsilon"], r[metric]) for r in rows if r["attack"] == name)
        ax.plot([0.0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("ε (L2 radius on the embeddings)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
