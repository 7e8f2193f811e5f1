"""Recommenders for the ranking task (Tang et al., AMR; He et al., APR): POP, MF-BPR and VBPR.

    pop      ŷ_ui = train interactions of i (not trained; the paper's Pop baseline)
    mf_bpr   ŷ_ui = p_uᵀ q_i                              (AMR eq. 1; APR perturbs p_u and q_i)
    vbpr     ŷ_ui = p_uᵀ (q_i + E·c_i) + b_i               (AMR eq. 5, VBPR's item bias kept;
             c_i the item's content feature vector; AMR perturbs c_i)

AMR = vbpr with regime "at" on the input "features" (Δ_i = ε·Γ_i/‖Γ_i‖ per item, eq. 11-12);
APR = mf_bpr with regime "at" on "users" and "items". The batch lists its distinct users and
items once (trainers/tasks/ranking.py), so each perturbed vector belongs to one user or item.
Cold items (no train pair) have q_i = 0 and b_i = 0: they are scored from their features alone.
`regulariser` is eq. 10's β(‖p_u‖² + ‖q_i‖² + ‖q_j‖² (+ ‖E‖²)) averaged over the batch's triples;
the regime adds it once per step, never to the adversarial loss (§3.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable


def _pair_scores(pu: Tensor, v: Tensor, b: Tensor, batch: Batch) -> Tensor:
    """(B, 2) = [ŷ_ui, ŷ_uj] from the users' vectors (B, k) and the batch's distinct items' vectors
    v (I_b, k) and biases b (I_b,)."""
    pos, neg = batch["pos_at"], batch["neg_at"]
    return torch.stack([(pu * v[pos]).sum(-1) + b[pos], (pu * v[neg]).sum(-1) + b[neg]], dim=1)


def _squares(*rows: Tensor) -> Tensor:
    """Mean over the batch of the summed squares of each row's vectors."""
    return sum(r.square().sum(-1) for r in rows).mean()


class MFBPR(nn.Module):
    """Matrix factorisation trained by BPR (AMR eq. 1-3); perturbable "users" / "items" (APR)."""

    def __init__(self, num_users: int, num_items: int, warm: Tensor, dim: int = 64, l2: float = 0.0) -> None:
        super().__init__()
        self.user, self.item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        for e in (self.user, self.item):
            nn.init.normal_(e.weight, std=0.01)
        self.register_buffer("warm", warm.float())
        self.l2 = l2
        self.perturbable = {"users": Perturbable(), "items": Perturbable()}

    def regulariser(self, batch: Batch) -> Tensor | None:
        """β · mean over triples of ‖p_u‖² + ‖q_i‖² + ‖q_j‖² (eq. 10); None when β = 0."""
        if not self.l2:
            return None
        u, i, j = batch["user"], batch["label"], batch["neg"]
        return self.l2 * _squares(self.user(u), self.item(i), self.item(j))

    def embed(self, batch: Batch) -> Inputs:
        """The batch's distinct users' p_u and items' q_i (cold items: 0)."""
        return {"users": self.user(batch["users"]),
                "items": self.item(batch["items"]) * self.warm[batch["items"], None]}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        v = inputs["items"]
        s = _pair_scores(inputs["users"][batch["user_at"]], v, v.new_zeros(len(v)), batch)
        return Output(s)

    def score(self, users: Tensor, items: Tensor, delta: Tensor | None = None) -> Tensor:
        """ŷ for users (B,) × items (B, K) → (B, K)."""
        q = self.item.weight * self.warm[:, None]
        return torch.einsum("bk,bnk->bn", self.user(users), q[items])


class VBPR(nn.Module):
    """Visually-aware BPR (AMR eq. 5 + item bias) over fixed item content features; perturbable
    "features" (the batch's distinct items' c_i: AMR)."""

    def __init__(self, num_users: int, num_items: int, features: Tensor, warm: Tensor, dim: int = 64,
                 l2: float = 0.0) -> None:
        super().__init__()
        self.l2 = l2
        self.user, self.item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        self.bias = nn.Embedding(num_items, 1)
        self.project = nn.Linear(features.shape[1], dim, bias=False)  # E
        for e in (self.user, self.item):
            nn.init.normal_(e.weight, std=0.01)
        nn.init.zeros_(self.bias.weight)
        # E = 0: training starts from MF's scores and lets the content in as it helps; a random E
        # makes E·c_i outweigh q_i from the first step and VBPR ends below MF-BPR (HR@10 0.09 vs
        # 0.14 on amazon_scientific, measured)
        nn.init.zeros_(self.project.weight)
        self.register_buffer("features", features.float())
        self.register_buffer("warm", warm.float())
        self.perturbable = {"features": Perturbable(raw=True)}

    def regulariser(self, batch: Batch) -> Tensor | None:
        """β · (mean over triples of ‖p_u‖² + ‖q_i‖² + ‖q_j‖² + b_i² + b_j², plus ‖E‖²) (eq. 10);
        None when β = 0."""
        if not self.l2:
            return None
        i, j = batch["label"], batch["neg"]
        rows = _squares(self.user(batch["user"]), self.item(i), self.item(j), self.bias(i), self.bias(j))
        return self.l2 * (rows + self.project.weight.square().sum())

    def embed(self, batch: Batch) -> Inputs:
        """{"features": c_i (I_b, D)} of the batch's distinct items."""
        return {"features": self.features[batch["items"]]}

    def _items(self, items: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """(q_i + E·c_i, b_i) of these items, with q_i = b_i = 0 for cold items."""
        warm = self.warm[items]
        return self.item(items) * warm[..., None] + self.project(c), self.bias(items)[..., 0] * warm

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        v, b = self._items(batch["items"], inputs["features"])
        return Output(_pair_scores(self.user(batch["user"]), v, b, batch))

    def score(self, users: Tensor, items: Tensor, delta: Tensor | None = None) -> Tensor:
        """ŷ for users (B,) × items (B, K) → (B, K); `delta` (I, D) perturbs every item's c_i."""
        every = torch.arange(len(self.features), device=users.device)
        v, b = self._items(every, self.features if delta is None else self.features + delta)
        return torch.einsum("bk,bnk->bn", self.user(users), v[items]) + b[items]


class Popularity(nn.Module):
    """Pop: every user gets the items with the most train interactions (nothing to train)."""

    def __init__(self, counts: Tensor) -> None:
        super().__init__()
        self.register_buffer("counts", counts.float())
        self.perturbable: dict[str, Perturbable] = {}

    def score(self, users: Tensor, items: Tensor, delta: Tensor | None = None) -> Tensor:
        return self.counts[items]
