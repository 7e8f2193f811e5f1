"""Robustness: the test metrics under attack, over a grid of ε, white-box or transferred.

Attacks act on the perturbable inputs (embeddings, features, pixels), never on token ids:
    at        one step along the loss gradient, ‖r‖₂ = ε per sample (Jia et al. eq. 2)
    fgsm      one step ε·sign(∇_x L), ‖r‖∞ = ε (Goodfellow et al. 2015)
    pgd       k projected steps in the per-sample L2 ε-ball (adversarial/pgd.py)
    pgd_linf  k projected sign steps in the L∞ ε-box
    word_replace  Chen et al. eq. 2 on the token ids: each word → its candidate of largest
              (E[w'] − E[w])·ε·sign(∇), above a threshold (adversarial/word_replace.py); text only
    fgsm_words    FGSM (ε = the paper's θ) on the raw inputs and eq. 2 on the tokens: each model gets
              what it reads (Visual-CNN pixels, Text-CNN words, MMN both)
The word attacks return r_tokens = E[w'] − E[w], so embed + r is the replaced words' vectors;
`adversarial_examples` returns the adversarial token ids and pixels themselves.
Pixels stay in [0, 1]. A transferred attack is crafted on another model (the source) and
evaluated on this one: only inputs that are the data itself (pixels, features) transfer;
embeddings are each model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.perturb import radius, within
from advorch.trainers.adversarial.pgd import pgd_attack
from advorch.trainers.adversarial.word_replace import craft, eval_gradients
from advorch.trainers.data import TensorData
from advorch.trainers.models.base import Batch, Inputs, input_mask
from advorch.trainers.tasks.base import Task

ATTACKS = ("at", "fgsm", "pgd", "pgd_linf", "word_replace", "fgsm_words")


def attack(model: nn.Module, task: Task, batch: Batch, name: str, epsilon: float, steps: int = 10,
           step_size: float | None = None, neighbours: int = 10, threshold: float = 0.5) -> Inputs:
    """The perturbation per input of attack `name` at radius ε, on `model` (at, fgsm and the word
    attacks take their gradient in eval mode; `robustness` evaluates in eval mode anyway).

    PGD's step defaults to 2.5·ε/steps (Madry et al.), so it can cross the ball and back.
    word_replace / fgsm_words: `neighbours` candidates per word, `threshold` on (E[w'] − E[w])·η
    (Chen et al. eq. 2); word_replace on a model without tokens perturbs nothing.
    """
    if name in ("at", "fgsm"):
        inputs, g = eval_gradients(model, task, batch)
        norm = "linf" if name == "fgsm" else "l2"
        return {k: within(inputs[k], radius(g[k], input_mask(model, k, batch), epsilon, norm=norm),
                          model.perturbable[k].bounds) for k in inputs}
    if name in ("pgd", "pgd_linf"):
        inputs = {k: v.detach() for k, v in model.embed(batch).items()}
        return pgd_attack(model, task, batch, inputs, epsilon, steps, step_size or 2.5 / steps,
                          norm="linf" if name == "pgd_linf" else "l2")
    if name in ("word_replace", "fgsm_words"):
        if name == "word_replace" and "tokens" not in model.perturbable:
            return {}
        words = ("tokens",) if name == "word_replace" else ()
        return craft(model, task, batch, epsilon, neighbours, threshold, words).r
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def adversarial_examples(model: nn.Module, task: Task, batch: Batch, epsilon: float, neighbours: int = 10,
                         threshold: float = 0.5) -> dict[str, Tensor]:
    """Chen et al.'s adversarial examples of a batch (eq. 1 on the pixels, eq. 2 on the words, one
    gradient of the model in eval mode), for the inputs the model reads: "pixels" (B, C, H, W) in
    [0, 1], "tokens" (B, T) ids with "changed" (B, T) True at the replaced words. Algorithm 1's
    augmented set is the clean rows plus these (same labels)."""
    adv = craft(model, task, batch, epsilon, neighbours, threshold)
    out = {}
    if "pixels" in adv.r:
        out["pixels"] = batch["pixels"] + adv.r["pixels"]
    if adv.changed is not None:
        out["tokens"], out["changed"] = adv.batch["tokens"], adv.changed
    return out


def transferable(model: nn.Module) -> bool:
    """Whether a perturbation made on another model means the same on this one (raw inputs only)."""
    return all(p.raw for p in model.perturbable.values())


def robustness(model: nn.Module, task: Task, data: TensorData, attacks: Sequence[str],
               epsilons: Sequence[float], batch_size: int = 256, steps: int = 10,
               step_size: float | None = None, device: torch.device | None = None,
               source: nn.Module | None = None, neighbours: int = 10, threshold: float = 0.5
               ) -> list[dict[str, float | str]]:
    """Rows {attack, epsilon, accuracy[, auc], loss} for the clean input (ε = 0) and each attack × ε
    (`neighbours`, `threshold`: the word attacks', see `attack`).

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
            lambda b, name=name, eps=eps: attack(crafter, task, b, name, eps, steps, step_size, neighbours,
                                                 threshold))
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
