"""What every model exposes (DESIGN.md, abstraction 1): its perturbable input.

`embed(batch) → e` returns the continuous representation that adversarial regimes
perturb (word or page embeddings, feature vectors, pixels); `forward(e, batch)`
maps it to an `Output`. A batch is a dict of tensors; sequence models read
`mask` (B, T) bool, True on real steps, and regimes never perturb masked steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

Batch = dict[str, Tensor]


@dataclass
class Output:
    """logits (B, C); attention (B, T) summing to 1 over real steps, or None; hidden (B, T, H) or None."""

    logits: Tensor
    attention: Tensor | None = None
    hidden: Tensor | None = None


@runtime_checkable
class PerturbableModel(Protocol):
    """A classifier split at the point where perturbations are added."""

    def embed(self, batch: Batch) -> Tensor:
        """The perturbable input e, e.g. (B, T, D) embeddings."""
        ...

    def forward(self, e: Tensor, batch: Batch) -> Output:
        """Classify from e (clean or perturbed)."""
        ...
