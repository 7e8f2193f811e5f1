"""Ranking: BPR over sampled negatives, leave-one-out HR@N / NDCG@N (Tang et al., AMR §3.1, §5.1).

A ranking dataset (pipelines/interactions.py) holds (user, item) pairs: the input "user" and the
positive item as the row's label; val and test hold each user's one held-out item.

    training   each batch gets one negative j per (u, i), drawn uniformly from the items u has
               no train pair with (`prepare`, seeded); loss −ln σ(ŷ_ui − ŷ_uj) (eq. 3)
    evaluation the held-out item among `negatives` items the user never interacted with (999 in
               the paper), or among all items but the user's other known positives (negatives =
               0, full ranking); rank = how many candidates score at least as high (ties count
               against the model, so a constant scorer gets no credit); HR@N = [rank < N],
               NDCG@N = [rank < N] / log2(rank + 2), N = 5, 10, 20; cold items (no train pair)
               are reported apart

Models score through `score(users (B,), items (B, K), delta)` — `delta` an (I, D) perturbation of
the item content features (robustness, Table 3) or None — and train through embed/forward on a
batch whose distinct users and items are listed once ("users", "items", with the batch's
positions in them: "user_at", "pos_at", "neg_at"), so a perturbation of an item is one vector
per item however often the item occurs in the batch (AMR eq. 11-12: the minibatch's summed loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.config import TrainConfig
from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.data import TensorData
from advorch.trainers.device import all_gather_cat
from advorch.trainers.models.base import Batch, Output
from advorch.trainers.tasks.base import Perturb

CUTOFFS = (5, 10, 20)


class Pairs:
    """A set of (user, item) pairs as sorted int64 keys user·I + item: vectorised membership."""

    def __init__(self, users: Tensor, items: Tensor, num_items: int) -> None:
        self.num_items = num_items
        self.keys = torch.unique(users.long() * num_items + items.long())  # sorted

    def to(self, device: torch.device) -> Pairs:
        out = Pairs.__new__(Pairs)
        out.num_items, out.keys = self.num_items, self.keys.to(device)
        return out

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool, the shape of `items` (users broadcast against it): which pairs are in the set."""
        keys = users.long() * self.num_items + items.long()
        if not len(self.keys):
            return torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[at] == keys


def sample_negatives(users: Tensor, known: Pairs, num_items: int, count: int,
                     generator: torch.Generator) -> Tensor:
    """(B, count) items drawn uniformly from those each user has no pair with in `known`: draw all,
    redraw only the hits (a few rounds while users know a small share of the items)."""
    out = torch.randint(num_items, (len(users), count), generator=generator)
    hit = known.contains(users.unsqueeze(1), out)
    for _ in range(1000):
        if not hit.any():
            return out
        out[hit] = torch.randint(num_items, (int(hit.sum()),), generator=generator)
        hit = known.contains(users.unsqueeze(1), out)
    raise ValueError("a user has a pair with (almost) every item: no negatives to sample")


class Ranking:
    """BPR (eq. 3) and leave-one-out HR/NDCG (see the module docstring)."""

    name = "ranking"

    def __init__(self, num_users: int, num_items: int, train: Pairs, known: Pairs, warm: Tensor,
                 negatives: int = 999, seed: int = 0) -> None:
        self.num_users, self.num_items = num_users, num_items
        self.train, self.known, self.warm = train, known, warm
        self.negatives, self.seed = negatives, seed

    def to(self, device: torch.device) -> Ranking:
        return self  # sampling and ranking bookkeeping stay on the CPU; scores come back from the device

    def prepare(self, batch: Batch, seed: int) -> Batch:
        """A train batch's negatives and distinct users / items (see the module docstring)."""
        device = batch["user"].device
        users, pos = batch["user"].cpu(), batch["label"].cpu()
        neg = sample_negatives(users, self.train, self.num_items, 1,
                               torch.Generator().manual_seed(seed))[:, 0]
        items, at = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        uniq, user_at = torch.unique(users, return_inverse=True)
        extra = {"neg": neg, "items": items, "pos_at": at[:len(pos)], "neg_at": at[len(pos):],
                 "users": uniq, "user_at": user_at}
        return {**batch, **{k: v.to(device) for k, v in extra.items()}}

    def loss(self, out: Output, batch: Batch, reduction: str = "mean") -> Tensor:
        """−ln σ(ŷ_ui − ŷ_uj) per (u, i, j) (eq. 3); scores (B, 2) = [ŷ_ui, ŷ_uj]."""
        loss = -F.logsigmoid(out.scores[:, 0] - out.scores[:, 1])
        return loss.mean() if reduction == "mean" else loss

    def divergence(self, clean_scores: Tensor, out: Output) -> Tensor:
        """Per-triple KL of the preference P(i ≻ j) = σ(ŷ_ui − ŷ_uj), clean held constant (VAT)."""
        p = torch.sigmoid(clean_scores[:, 0] - clean_scores[:, 1]).detach()
        logq = F.logsigmoid(out.scores[:, 0] - out.scores[:, 1])
        log1q = F.logsigmoid(out.scores[:, 1] - out.scores[:, 0])
        return (p * (p.clamp_min(1e-12).log() - logq)
                + (1 - p) * ((1 - p).clamp_min(1e-12).log() - log1q))

    def train_metrics(self, scores: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"pair_accuracy": (scores[:, 0] > scores[:, 1]).float().mean()}

    def ranks(self, model: nn.Module, data: TensorData, batch_size: int, device: torch.device,
              perturb: Perturb | None = None) -> Tensor:
        """The held-out item's rank (0 = top) per row of `data`, sampled or full (module docstring)."""
        model.eval()
        users, items = data.inputs["user"].long(), data.labels.long()
        delta = perturb({"items": torch.arange(self.num_items, device=device)}) if perturb else None
        gen = torch.Generator().manual_seed(self.seed * 7919 + 17)  # the same candidates every epoch
        out = []
        for start in range(0, len(users), batch_size):
            u, i = users[start:start + batch_size], items[start:start + batch_size]
            if self.negatives:
                cands = torch.cat([i[:, None], sample_negatives(u, self.known, self.num_items,
                                                                self.negatives, gen)], 1)
                with torch.no_grad():
                    s = model.score(u.to(device), cands.to(device), delta).float().cpu()
                out.append((s[:, 1:] >= s[:, :1]).sum(1))
            else:
                every = torch.arange(self.num_items).expand(len(u), -1)
                with torch.no_grad():
                    s = model.score(u.to(device), every.to(device), delta).float().cpu()
                # the user's other positives are not candidates
                s = s.masked_fill(self.known.contains(u[:, None], every) & (every != i[:, None]), -math.inf)
                pos = s.gather(1, i[:, None])
                out.append((s >= pos).sum(1) - 1)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def evaluate(self, model: nn.Module, data: TensorData, batch_size: int, device: torch.device,
                 prefix: str = "", perturb: Perturb | None = None) -> dict[str, float]:
        """HR@N and NDCG@N (N = 5, 10, 20) over all ranks' slices, and apart for warm and cold items."""
        ranks = all_gather_cat(self.ranks(model, data, batch_size, device, perturb).to(device)).cpu()
        cold = ~self.warm[all_gather_cat(data.labels.to(device)).cpu()]
        out = metrics(ranks, prefix)
        if cold.any():
            out.update(metrics(ranks[cold], f"{prefix}cold_", (10,)))
            out.update(metrics(ranks[~cold], f"{prefix}warm_", (10,)))
        return out

    def serving(self, model: nn.Module, layout: list[tuple[str, tuple[int, ...]]] | None = None) -> nn.Module:
        return TopItems(model, self.train, self.num_items)

    @staticmethod
    def problems(metric: str, spec: DatasetSpec) -> list[str]:
        """Why the dataset cannot be trained and scored as a ranking (empty when it can)."""
        out = []
        for split in ("train", "val", "test"):
            if not spec.split_rows.get(split):
                out.append(f"{spec.uri}: split {split} has 0 rows; rebuild it with `advorch preprocess "
                           "interactions` (leave-one-out needs users with 3 or more interactions)")
        if metric not in ("val_hr_10", "val_ndcg_10"):
            out.append(f"train.metric = \"{metric}\" is a classification metric; a ranking is scored by "
                       "\"val_ndcg_10\" or \"val_hr_10\"")
        return out

    @classmethod
    def build(cls, train: TrainConfig, spec: DatasetSpec) -> Ranking:
        """From the dataset's splits: the train pairs (negatives are sampled outside them), every
        known pair (evaluation candidates are sampled outside them), the warm items."""
        from advorch.trainers.data import load_slice

        info = spec.manifest.get("interactions", {})
        num_users, num_items = int(info["users"]), int(info["items"])
        splits = {s: load_slice(spec, s) for s in ("train", "val", "test")}
        cat = lambda f: torch.cat([f(d) for d in splits.values()])  # noqa: E731
        tr = splits["train"]
        warm = torch.zeros(num_items, dtype=torch.bool)
        warm[tr.labels] = True
        return cls(num_users, num_items, Pairs(tr.inputs["user"], tr.labels, num_items),
                   Pairs(cat(lambda d: d.inputs["user"]), cat(lambda d: d.labels), num_items), warm,
                   train.eval_negatives, train.seed)


def metrics(ranks: Tensor, prefix: str = "", cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """hr_N and ndcg_N of 0-based ranks (see the module docstring)."""
    r = ranks.double()
    out = {}
    for n in cutoffs:
        hit = r < n
        out[f"{prefix}hr_{n}"] = float(hit.double().mean()) if len(r) else 0.0
        out[f"{prefix}ndcg_{n}"] = float((hit / torch.log2(r + 2)).mean()) if len(r) else 0.0
    return out


class TopItems(nn.Module):
    """The logged recommender: user indices (B,) → the indices of its N best items (B, N) by score,
    leaving out the items the user already has train pairs with."""

    def __init__(self, model: nn.Module, train: Pairs, num_items: int, n: int = 20) -> None:
        super().__init__()
        self.model, self.seen, self.num_items, self.n = model, train, num_items, n

    def forward(self, users: Tensor) -> Tensor:
        users = users.reshape(-1).long()
        every = torch.arange(self.num_items, device=users.device).expand(len(users), -1)
        s = self.model.score(users, every, None).float()
        s = s.masked_fill(self.seen.to(users.device).contains(users[:, None], every), -math.inf)
        return s.topk(min(self.n, self.num_items), dim=1).indices


def feature_attack(model: nn.Module, task: Ranking, train: TensorData, epsilon: float, batch_size: int = 4096,
                   seed: int = 0, random: bool = False) -> Tensor:
    """Δ (I, D) on every item's content features: Δ_i = ε·Γ_i/‖Γ_i‖ with Γ the gradient of the BPR
    loss summed over the train pairs (one seeded negative each) at the trained model (AMR eq. 8,
    §5.4 Table 3); items that get no gradient stay unperturbed. `random`: a uniformly random
    direction per item at the same radius (the paper's VBPR-rand)."""
    from advorch.trainers.adversarial.perturb import sequence_radius
    from advorch.trainers.data import batches

    features = model.features
    if random:
        g = torch.randn(features.shape, generator=torch.Generator().manual_seed(seed)).to(features.device)
        return sequence_radius(g, None, epsilon)
    model.eval()
    delta = torch.zeros_like(features, requires_grad=True)
    g = torch.zeros_like(features)
    for step, b in enumerate(batches(train, batch_size, features.device)):
        b = task.prepare(b, seed * 1_000_003 + step)
        inputs = {"features": model.embed(b)["features"] + delta[b["items"]]}
        g += torch.autograd.grad(task.loss(model(inputs, b), b, "none").sum(), delta)[0]
    has = g.norm(dim=1, keepdim=True) > 0
    return sequence_radius(g, None, epsilon) * has


def feature_robustness(model: nn.Module, task: Ranking, train: TensorData, test: TensorData,
                       epsilons: tuple[float, ...] = (0.05, 0.1, 0.2), batch_size: int = 1024,
                       device: torch.device | None = None) -> list[dict[str, float | str]]:
    """Rows {attack, epsilon, hr_*, ndcg_*, ndcg_10_drop} for the clean test and for adversarial
    ("at") and random ("random") feature perturbations at each ε: the relative NDCG@10 drop of
    AMR's Table 3."""
    device = device or torch.device("cpu")
    clean = task.evaluate(model, test, batch_size, device)
    rows: list[dict[str, float | str]] = [{"attack": "clean", "epsilon": 0.0, **clean, "ndcg_10_drop": 0.0}]
    for name in ("at", "random"):
        for eps in epsilons:
            delta = feature_attack(model, task, train, eps, random=name == "random")
            m = task.evaluate(model, test, batch_size, device, perturb=lambda b, d=delta: d)
            drop = 1 - m["ndcg_10"] / clean["ndcg_10"] if clean["ndcg_10"] else 0.0
            rows.append({"attack": name, "epsilon": eps, **m, "ndcg_10_drop": drop})
    return rows
