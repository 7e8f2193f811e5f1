"""What every model exposes (DESIGN.md, abstraction 1): its named perturbable inputs.

`embed(batch) → {name: tensor}` returns the continuous representations that adversarial
terms perturb (word or page embeddings, feature vectors, pixels; a multimodal model
returns several); `forward(inputs, batch)` maps them to an `Output`. Each model says, per
input, which batch key masks it (padding, never perturbed) and the valid range of its
values (pixels stay in [0, 1]), in `perturbable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

Batch = dict[str, Tensor]
Inputs = dict[str, Tensor]


@dataclass(frozen=True)
class Perturbable:
    """How one named input may be perturbed.

    mask: the batch key of a (B, T) bool mask over its leading steps (True on real steps),
        or None when every element is real.
    bounds: the valid (low, high) range of its values, or None (embeddings are unbounded).
    raw: the input is the data itself (pixels, features), so a perturbation made on one model
        is meaningful for another (transfer attacks); embeddings are each model's own.
    """

    mask: str | None = None
    bounds: tuple[float, float] | None = None
    raw: bool = False


@dataclass
class Output:
    """scores (B, C): logits for classification; attention (B, T) summing to 1 over real steps,
    or None; hidden activations by layer name, e.g. {"lstm": (B, T, H), "pooled": (B, H)}."""

    scores: Tensor
    attention: Tensor | None = None
    hidden: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class PerturbableModel(Protocol):
    """A model split at the points where perturbations are added."""

    perturbable: dict[str, Perturbable]

    def embed(self, batch: Batch) -> Inputs:
        """The perturbable inputs, e.g. {"tokens": (B, T, D) embeddings}."""
        ...

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        """Score from the inputs (clean or perturbed)."""
        ...


def input_mask(model: PerturbableModel, name: str, batch: Batch) -> Tensor | None:
    """The (B, T) mask of input `name` in this batch, or None when it has none."""
    key = model.perturbable[name].mask
    return batch.get(key) if key else None


_TWICE = ContextVar("advorch_twice_differentiable", default=False)


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Inside: forwards must support double backward (input-gradient regularisation).

    cuDNN's RNN kernels have no double backward, so recurrent models fall back to the
    native kernels while this is active (`native_rnn`); convolutions are unaffected.
    """
    token = _TWICE.set(True)
    try:
        yield
    finally:
        _TWICE.reset(token)


def native_rnn(x: Tensor) -> AbstractContextManager:
    """cuDNN off for an RNN on CUDA inside `twice_differentiable`, else nothing."""
    return torch.backends.cudnn.flags(enabled=False) if x.is_cuda and _TWICE.get() else nullcontext()
