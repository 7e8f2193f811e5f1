"""The promotion/suppression effect (PSE) of adversarial perturbations on neurons (Xu et al. 2019,
arXiv:1904.02057; only the abstract is available, so the definitions are ours, written to be exact).

Setting: a classifier whose logits are an affine map of its penultimate units, z = W·h + b
(`model.out` reads `hidden["pooled"]`; dropout is off in eval mode). x is a clean input of true
class t, x' its adversarial version, a the target class: the one a targeted attack aims at, else
the class the attack reaches (the top non-true class at x'). Δh = h(x') − h(x).

Softmax is unchanged when the same u·h is added to every logit, so raw logits (and W) are defined
only up to that shift, and "the true class's logit fell" would depend on it (on the initialisation,
in practice). We use the centred logits z̃_c = z_c − mean_c' z_c', i.e. W̃ = W − mean_c W[c], the one
representative that does not:

    suppression of unit k    σ_k = W̃[t, k]·(h_k(x) − h_k(x'))    its contribution to t that is lost
    promotion of unit k      π_k = W̃[a, k]·(h_k(x') − h_k(x))    its contribution to a that is gained
    per example              S = Σ_k σ_k = z̃_t(x) − z̃_t(x'),  P = Σ_k π_k = z̃_a(x') − z̃_a(x)

The bias cancels, so S and P are the centred logit changes themselves, and S + P is exactly the drop
of the margin z_t − z_a that the attack must remove: s = S / (S + P) is the share of that drop made
by suppressing the true class. That is why s is defined on the margin rather than on, e.g., softmax
probabilities (which mix every class). With two classes z̃_0 = −z̃_1, so S = P and every example is
balanced (s = 1/2): the distinction needs three or more classes.
Signs: with S⁺ = max(S, 0), P⁺ = max(P, 0), s = S⁺ / (S⁺ + P⁺):
a perturbation that raises the true class (S < 0) works by promotion alone (s = 0), one that lowers
the target class (P < 0) by suppression alone (s = 1); when neither moved the margin (S⁺ + P⁺ = 0)
the example is of type "none". Types: suppression-dominated for s ≥ 2/3, promotion-dominated for
s ≤ 1/3, balanced between (thresholds configurable). Shares of types are taken over the
successful adversarial examples (prediction ≠ t; = a when targeted).

A unit's attack sensitivity is mean_n |Δh_k| over the examples divided by the spread (standard
deviation) of its clean activation h_k(x): how far attacks move it, in units of its normal range.
`masked` zeroes chosen units at the classifier's input (for the masking experiment).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.base import add
from advorch.trainers.data import TensorData, batches
from advorch.trainers.models.base import Batch, Inputs, Output
from advorch.trainers.tasks.base import Task

TYPES = ("suppression", "balanced", "promotion", "none")


def head(model: nn.Module) -> nn.Linear:
    """The classifier layer z = W·h + b over the penultimate units (every advorch classifier's `out`).

    Raises:
        ValueError: the model has no linear `out` layer (a recommender, say).
    """
    out = getattr(model, "out", None)
    if not isinstance(out, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classifier layer `out` over pooled units: "
                         "PSE analyses classifiers (image_cnn, lstm_attention, visual_cnn, text_cnn, mmn)")
    return out


def share(S: Tensor, P: Tensor) -> Tensor:
    """s = S⁺ / (S⁺ + P⁺) per example (N,), NaN where neither is positive (see the module docstring)."""
    s, p = S.clamp_min(0), P.clamp_min(0)
    total = s + p
    return torch.where(total > 0, s / total.where(total > 0, torch.ones_like(total)), torch.nan)


def types(s: Tensor, low: float = 1 / 3, high: float = 2 / 3) -> Tensor:
    """Type index into TYPES per example (N,): suppression (s ≥ high), promotion (s ≤ low), balanced
    between, none where s is NaN.

    Raises:
        ValueError: thresholds outside 0 ≤ low < high ≤ 1.
    """
    if not 0 <= low < high <= 1:
        raise ValueError(f"PSE thresholds need 0 <= low < high <= 1, got low {low}, high {high}")
    kind = torch.full(s.shape, TYPES.index("balanced"), dtype=torch.long)
    kind[s >= high] = TYPES.index("suppression")
    kind[s <= low] = TYPES.index("promotion")
    kind[s.isnan()] = TYPES.index("none")
    return kind


@dataclass
class Effects:
    """Per example (N) and unit (K): true class t, target a, success, S, P, s, type, the clean units h
    (N, K), Δh (N, K), suppression σ (N, K) and promotion π (N, K)."""

    true: Tensor
    target: Tensor
    success: Tensor
    S: Tensor
    P: Tensor
    s: Tensor
    kind: Tensor
    h: Tensor
    dh: Tensor
    sigma: Tensor
    pi: Tensor


def effects(weight: Tensor, h: Tensor, h_adv: Tensor, true: Tensor, target: Tensor, success: Tensor,
            low: float = 1 / 3, high: float = 2 / 3) -> Effects:
    """σ, π, S, P, s and the type of each example from the units clean and adversarial (N, K), the
    classifier weights W (C, K), true and target classes (N,); W is centred over the classes first."""
    weight = weight - weight.mean(0, keepdim=True)  # W̃: the softmax-invariant representative
    dh = h_adv - h  # (N, K)
    sigma = -weight[true] * dh  # W[t, k]·(h_k(x) − h_k(x'))
    pi = weight[target] * dh  # W[a, k]·(h_k(x') − h_k(x))
    S, P = sigma.sum(1), pi.sum(1)
    s = share(S, P)
    return Effects(true, target, success, S, P, s, types(s, low, high), h, dh, sigma, pi)


def sensitivity(e: Effects) -> Tensor:
    """Per unit (K,): mean |Δh_k| over the examples / the standard deviation of the clean h_k."""
    spread = e.h.std(0) if len(e.h) > 1 else torch.ones(e.h.shape[1])
    return e.dh.abs().mean(0) / spread.clamp_min(1e-6)


class Towards:
    """A task whose loss is the negated loss of the batch's labels: with the labels set to the target
    classes, an attack that ascends it descends the target's loss (a targeted attack)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def loss(self, out: Output, batch: Batch, reduction: str = "mean") -> Tensor:
        return -self.task.loss(out, batch, reduction)


def random_targets(labels: Tensor, num_classes: int, seed: int) -> Tensor:
    """A seeded target class ≠ the label per example (N,), uniform over the others."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, labels.shape, generator=g)
    return (labels + shift) % num_classes


def perturb(model: nn.Module, task: Task, batch: Batch, attack: str, epsilon: float,
            target: Tensor | None = None, steps: int = 10) -> Inputs:
    """The attack's perturbation per input (robustness.attack), towards `target` when given."""
    from advorch.trainers.robustness import attack as craft

    if target is None:
        return craft(model, task, batch, attack, epsilon, steps)
    return craft(model, Towards(task), {**batch, "label": target}, attack, epsilon, steps)


def measure(model: nn.Module, task: Task, data: TensorData, attack: str, epsilon: float,
            targets: Tensor | None = None, steps: int = 10, batch_size: int = 256,
            low: float = 1 / 3, high: float = 2 / 3) -> Effects:
    """Attack every example of `data` (targeted when `targets` (N,) is given) and measure the PSE."""
    model.eval()
    w = head(model).weight.detach()
    parts, start = [], 0
    for b in batches(data, batch_size, torch.device("cpu")):
        n = len(b["label"])
        target = targets[start:start + n] if targets is not None else None
        r = perturb(model, task, b, attack, epsilon, target, steps)
        with torch.no_grad():
            x = model.embed(b)
            clean, adv = model(x, b), model(add(x, r), b)
        pred = adv.scores.argmax(1)
        if target is None:  # the class the attack reaches: the top non-true class at x'
            target = adv.scores.scatter(1, b["label"][:, None], float("-inf")).argmax(1)
            success = pred != b["label"]
        else:
            success = pred == target
        parts.append((clean.hidden["pooled"], adv.hidden["pooled"], b["label"], target, success))
        start += n
    h, h_adv, true, target, success = (torch.cat(p) for p in zip(*parts, strict=True))
    return effects(w, h, h_adv, true, target, success, low, high)


def summary(e: Effects) -> dict[str, float]:
    """n, success rate, the type shares over the successful examples, their mean s, mean S and P."""
    ok = e.success
    n_ok = int(ok.sum())
    counts = torch.bincount(e.kind[ok], minlength=len(TYPES)).float()
    out = {"n": float(len(ok)), "success": float(ok.float().mean()) if len(ok) else 0.0,
           **{t: float(counts[i] / max(n_ok, 1)) for i, t in enumerate(TYPES)}}
    s = e.s[ok]
    out["mean_share"] = float(s[~s.isnan()].mean()) if n_ok and (~s.isnan()).any() else float("nan")
    out["mean_S"] = float(e.S[ok].mean()) if n_ok else float("nan")
    out["mean_P"] = float(e.P[ok].mean()) if n_ok else float("nan")
    return out


def top_units(e: Effects, classes: Sequence[str], k: int = 3, pairs: int = 10) -> list[dict]:
    """For the most frequent (true → target) pairs among successful examples: the k units of largest
    mean suppression σ and of largest mean promotion π, with those means."""
    ok = e.success
    t, a = e.true[ok], e.target[ok]
    pair, counts = torch.unique(t * len(classes) + a, return_counts=True)
    rows = []
    for p, c in sorted(zip(pair.tolist(), counts.tolist(), strict=True), key=lambda x: -x[1])[:pairs]:
        sel = (t * len(classes) + a) == p
        sig, pi = e.sigma[ok][sel].mean(0), e.pi[ok][sel].mean(0)
        rows.append({"true": classes[p // len(classes)], "target": classes[p % len(classes)], "n": c,
                     "suppressed": [(int(u), float(sig[u])) for u in sig.argsort(descending=True)[:k]],
                     "promoted": [(int(u), float(pi[u])) for u in pi.argsort(descending=True)[:k]]})
    return rows


@contextmanager
def masked(model: nn.Module, units: Tensor) -> Iterator[nn.Module]:
    """The model with these penultimate units zeroed at its classifier's input, inside the block."""
    layer = head(model)
    keep = torch.ones(layer.in_features)
    keep[units] = 0.0
    handle = layer.register_forward_pre_hook(lambda _m, args: (args[0] * keep.to(args[0]),))
    try:
        yield model
    finally:
        handle.remove()


def masking(model: nn.Module, task: Task, data: TensorData, scores: Tensor, fractions: Sequence[float],
            attack: str, epsilon: float, steps: int = 10, controls: int = 3, seed: int = 0
            ) -> list[dict[str, float | str]]:
    """Clean and adversarial accuracy (white-box, re-crafted on the masked model) with the
    round(f·K) (at least 1) units of highest `scores` zeroed, for each fraction f; with f = 0 the
    unmasked model, and as a control the same number of random units (mean of `controls` draws)."""
    from advorch.trainers.robustness import robustness

    def accuracies(units: Tensor) -> tuple[float, float]:
        with masked(model, units):
            rows = robustness(model, task, data, [attack], [epsilon], steps=steps)
        return rows[0]["accuracy"], rows[1]["accuracy"]

    K = len(scores)
    g = torch.Generator().manual_seed(seed)
    clean, adv = accuracies(torch.zeros(0, dtype=torch.long))
    out = [{"units": "none", "fraction": 0.0, "masked": 0.0, "clean_accuracy": clean, "adv_accuracy": adv}]
    for f in fractions:
        k = max(1, round(f * K))
        clean, adv = accuracies(scores.argsort(descending=True)[:k])
        out.append({"units": "most sensitive", "fraction": f, "masked": float(k), "clean_accuracy": clean,
                    "adv_accuracy": adv})
        draws = [accuracies(torch.randperm(K, generator=g)[:k]) for _ in range(controls)]
        out.append({"units": "random", "fraction": f, "masked": float(k),
                    "clean_accuracy": sum(d[0] for d in draws) / controls,
                    "adv_accuracy": sum(d[1] for d in draws) / controls})
    return out
