"""What every task is (DESIGN.md, abstraction 2): what is learned and how it is scored.

A task gives the loss (with its reduction), the divergence VAT uses, the train metrics of a
batch, the evaluation of a model on a split (optionally under a perturbation, for the
robustness evaluation) and the serving wrapper that is logged and registered. Nothing
outside a task module calls a loss by name: `classification` and `ranking` (BPR on sampled
negatives, leave-one-out HR/NDCG). `prepare` completes a train batch before the step (the
ranking task draws its negatives there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs, Output

# batch → perturbation per named input, added to embed(batch) before the forward
Perturb = Callable[[Batch], Inputs]


class Task(Protocol):
    name: str

    def prepare(self, batch: Batch, seed: int) -> Batch:
        """The train batch completed for the step (e.g. with sampled negatives); seeded."""
        ...

    def loss(self, out: Output, batch: Batch, reduction: str = "mean") -> Tensor:
        """The training loss of a forward (reduction "none": one value per sample, (B,))."""
        ...

    def divergence(self, clean_scores: Tensor, out: Output) -> Tensor:
        """Per-sample divergence of `out` from the clean scores, held constant (VAT, eq. 3). (B,)"""
        ...

    def train_metrics(self, scores: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Metrics of one training batch (batch means), e.g. {"accuracy": …}."""
        ...

    def evaluate(self, model: nn.Module, data, batch_size: int, device: torch.device, prefix: str = "",
                 perturb: Perturb | None = None) -> dict[str, float]:
        """Metrics of the model on `data` (over all ranks' slices), on perturbed inputs if given."""
        ...

    def serving(self, model: nn.Module, layout: list[tuple[str, tuple[int, ...]]] | None = None) -> nn.Module:
        """The module that is logged: the model's serving input (several inputs packed by
        `layout`) → what users get back."""
        ...

    def to(self, device: torch.device) -> Task:
        ...
