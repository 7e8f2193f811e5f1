"""Adversarial words and images (Chen et al., §III-B, eq. 1-2; Papernot et al. 2016).

Images: x_i' = x_i + η_i, η_i = ε·sign(∇_{x_i} J) (FGSM, eq. 1; ε is the paper's θ = 0.1), kept in [0, 1].
Texts: η_t = ε·sign(∇_{e} J) at every word vector e = E[w] (eq. 1), and each word w becomes

    w' = argmax_{w' ∈ C(w)} (E[w'] − E[w]) · η_t                                        (eq. 2)

over its candidate set C(w), the n nearest words of w in the embedding space (cosine; never w
itself, the padding id 0 or the OOV id 1), and only where that projection exceeds `threshold`
(the paper: 0.5, with ε = 0.1) — a word whose gradient is 0 (e.g. outside every max-pooled
window of the Text-CNN) is never replaced, nor is padding, nor the OOV token. η is taken once per
batch, at the clean input, so the paper's word-by-word iteration is one vectorised choice per
position. The candidate table is computed once per embedding matrix, from its values at first
use (the pretrained vectors, at the start of training), and cached per model; the projection
uses the current vectors.

The gradient is taken with the model in eval mode (no dropout): an attack on the deployed
model, not on a random thinned one (TextAttack issue 457). In training this costs one more
forward/backward than AT, which reuses the train-mode gradient of the clean pass.

The term `mmat` is the online form of Algorithm 1: every batch, fresh adversarial images and
texts of the current model, λ·L(x_adv) added to the clean loss (the paper retrains once on a
set augmented by the first model's examples: `robustness.adversarial_examples` writes those).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import CleanPass, add, weighted_backward
from advorch.trainers.adversarial.perturb import sign_radius, within
from advorch.trainers.models.base import Batch, Inputs, Output, input_mask
from advorch.trainers.tasks.base import Task

RESERVED = 2  # ids 0 (padding) and 1 (OOV): never candidates, never replaced
CHUNK = 4096  # rows of the similarity matrix at a time (CHUNK × V floats)

_TABLES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Tensor]] = weakref.WeakKeyDictionary()


def neighbour_table(weight: Tensor, n: int, metric: str = "cosine") -> Tensor:
    """(V, n) ids of the n nearest words of every word (the candidate sets C of eq. 2), by cosine
    similarity or L2 distance between rows of weight (V, D); never the word itself nor ids 0, 1.
    Rows 0 and 1 hold their own id (a candidate with projection 0: they are never replaced).

    Raises:
        ValueError: fewer than n other words, or an unknown metric.
    """
    v = weight.size(0)
    if n > v - RESERVED - 1:
        raise ValueError(f"regime.neighbours = {n}: the vocabulary has {v - RESERVED} words, so at most "
                         f"{v - RESERVED - 1} neighbours each")
    if metric not in ("cosine", "l2"):
        raise ValueError(f"unknown metric {metric!r}; known: cosine, l2")
    w = weight.detach().float()
    if metric == "cosine":
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sq = w.pow(2).sum(1)
    out = torch.empty(v, n, dtype=torch.long, device=w.device)
    for start in range(0, v, CHUNK):  # chunks of rows, not words: CHUNK × V at a time
        rows = torch.arange(start, min(start + CHUNK, v), device=w.device)
        score = w[rows] @ w.T  # cosine similarity, or −‖a − b‖²/2 up to a per-row constant
        if metric == "l2":
            score = score - sq / 2
        score[:, :RESERVED] = float("-inf")
        score[torch.arange(len(rows), device=w.device), rows] = float("-inf")
        out[rows] = score.topk(n, dim=1).indices
    out[:RESERVED] = torch.arange(RESERVED, device=w.device).unsqueeze(1)
    return out


def candidates(model: nn.Module, n: int) -> Tensor:
    """The model's (V, n) neighbour table, computed once per embedding matrix (its storage, shape
    and n) and cached for the model's lifetime."""
    weight = model.embedding.weight
    key = (n, weight.data_ptr(), tuple(weight.shape), weight.device)
    cached = _TABLES.get(model)
    if cached is None or cached[0] != key:
        cached = (key, neighbour_table(weight, n))
        _TABLES[model] = cached
    return cached[1]


def replace_words(tokens: Tensor, grad: Tensor, weight: Tensor, table: Tensor, threshold: float,
                  epsilon: float = 1.0, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(new ids (B, T), changed (B, T) bool) by eq. 2: at every position the candidate w' of
    table[w] with the largest (E[w'] − E[w])·η, η = ε·sign(grad) (eq. 1), where it exceeds the
    threshold; never at padding (mask False, or id 0) nor at the reserved ids 0, 1.

    tokens (B, T) ids; grad (B, T, D) the loss gradient at the word vectors; weight (V, D) = E.
    """
    eta = (epsilon * grad.sign()).to(weight.dtype).unsqueeze(-1)  # (B, T, D, 1)
    cand = F.embedding(tokens, table)  # (B, T, n); embedding = index_select, far faster than [] on CPU
    gain = (F.embedding(cand, weight) @ eta - F.embedding(tokens, weight).unsqueeze(2) @ eta).squeeze(-1)
    best, pick = gain.max(-1)  # (B, T): E[w']·η − E[w]·η over the n candidates
    changed = (best > threshold) & (tokens >= RESERVED)
    if mask is not None:
        changed &= mask
    return torch.where(changed, cand.gather(-1, pick.unsqueeze(-1)).squeeze(-1), tokens), changed


def eval_gradients(model: nn.Module, task: Task, batch: Batch) -> tuple[Inputs, Inputs]:
    """(clean inputs, ∇_x L per input), detached, with the model in eval mode (no dropout); its
    mode is restored after. No parameter gradient is accumulated."""
    training = model.training
    model.eval()
    try:
        x = {k: v.detach().requires_grad_(True) for k, v in model.embed(batch).items()}
        g = torch.autograd.grad(task.loss(model(x, batch), batch), list(x.values()))
    finally:
        model.train(training)
    return {k: v.detach() for k, v in x.items()}, dict(zip(x, g, strict=True))


@dataclass
class Crafted:
    """Adversarial examples of one batch: `batch` with the replaced token ids (other keys as they
    were); `r` the perturbation of each changed input, additive to embed(clean batch): FGSM on the
    raw inputs, r_tokens = E[w'] − E[w] on the word vectors; `changed` (B, T) the replaced words
    (None without tokens)."""

    batch: Batch
    r: Inputs
    changed: Tensor | None

    def forward(self, model: nn.Module) -> Output:
        """The model on the adversarial examples: the replaced words' own vectors (so gradients
        reach E[w'], as retraining on them would) plus the raw inputs' perturbations."""
        return model(add(model.embed(self.batch), {k: v for k, v in self.r.items() if k != "tokens"}),
                     self.batch)


def craft(model: nn.Module, task: Task, batch: Batch, epsilon: float, neighbours: int = 10,
          threshold: float = 0.5, inputs: tuple[str, ...] = ()) -> Crafted:
    """Eq. 1 on the raw inputs (pixels, features: ε·sign(∇), in range) and eq. 2 on the tokens, from
    one eval-mode gradient of the batch; `inputs` restricts them (default: all the model reads)."""
    x, g = eval_gradients(model, task, batch)
    adv, r, changed = dict(batch), {}, None
    for k in inputs or tuple(x):
        if k == "tokens":
            weight = model.embedding.weight.detach()
            adv[k], changed = replace_words(batch[k], g[k], weight, candidates(model, neighbours), threshold,
                                            epsilon, input_mask(model, k, batch))
            r[k] = F.embedding(adv[k], weight) - F.embedding(batch[k], weight)
        elif model.perturbable[k].raw:
            r[k] = within(x[k], sign_radius(g[k], input_mask(model, k, batch), epsilon),
                          model.perturbable[k].bounds)
    return Crafted(adv, r, changed)


class MultiModalAdversarialLoss:
    """λ · L(x_i', x_t') with fresh FGSM images and eq. 2 texts every batch (online Algorithm 1)."""

    FIELDS = ("epsilon", "lam", "neighbours", "threshold", "inputs", "schedule")
    name = "mmat"
    needs = frozenset()

    def __init__(self, epsilon: float, lam: float = 1.0, neighbours: int = 10, threshold: float = 0.5,
                 inputs: tuple[str, ...] = ()) -> None:
        self.epsilon, self.lam, self.neighbours, self.threshold, self.inputs = (
            epsilon, lam, neighbours, threshold, inputs)

    @classmethod
    def from_config(cls, name: str, cfg: RegimeConfig) -> MultiModalAdversarialLoss:
        return cls(cfg.epsilon, cfg.lam, cfg.neighbours, cfg.threshold, tuple(cfg.inputs))

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        adv = craft(cp.model, cp.task, cp.batch, self.epsilon, self.neighbours, self.threshold, self.inputs)
        loss = cp.task.loss(adv.forward(cp.model), adv.batch)
        weighted_backward(loss, self.lam)
        logs = {"weighted": self.lam * loss.detach(), "adv_loss": loss.detach()}
        if adv.changed is not None:
            mask = cp.batch.get("mask", torch.ones_like(adv.changed))
            logs["replaced"] = adv.changed.sum() / mask.sum().clamp_min(1)
        return logs
