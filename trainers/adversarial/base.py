"""What an adversarial regime is (DESIGN.md, abstraction 3): a sum of small terms over one
shared clean pass.

The regime runs the clean forward/backward once; every term then reads what it needs from
that pass (the clean output, attention, ∇_x L of each named input) and adds its loss,
accumulating its parameter gradients itself — so AT reuses the clean input gradient (two
forward/backward pairs per step, not three). A term that differentiates through the clean
graph (input-gradient regularisation) adds its loss to `pending`, and the clean loss and
those terms are backpropagated once, together, at the end of the step.

A model may have `regulariser(batch) → scalar | None` (the recommenders' L2 β, AMR eq. 10): it is added
once per step, outside every term, so no adversarial loss repeats it (AMR §3.2).

Each term declares what it needs from the model and the pass:
    attention        the model returns attention (LSTM-Attention)
    graph            the clean graph is kept for a term's loss (clean backward deferred)
    double_backward  ∇_x L is itself differentiable (create_graph)
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.perturb import within
from advorch.trainers.models.base import Batch, Inputs, Output, input_mask, twice_differentiable
from advorch.trainers.tasks.base import Task


@dataclass
class CleanPass:
    """The shared clean pass of one step.

    inputs: the clean perturbable inputs (in the graph); out: the clean output; loss: the
    clean loss; grads: ∇_x L per input, detached (terms use its direction: with a deferred
    backward it is the per-example ∇_{x_i} ℓ_i, else that divided by the batch size);
    grad_graph: the per-example gradients, differentiable (double backward only); pending:
    losses backpropagated with the clean loss at the end of the step (empty when the clean
    loss was backpropagated at once); rng: the random state before the clean forward (to
    replay its dropout masks).
    """

    model: nn.Module
    task: Task
    batch: Batch
    inputs: Inputs
    out: Output
    loss: Tensor
    grads: Inputs
    grad_graph: Inputs | None = None
    pending: list[Tensor] = field(default_factory=list)
    rng: tuple[Tensor, list[Tensor]] | None = None

    @property
    def attention(self) -> Tensor | None:
        return self.out.attention.detach() if self.out.attention is not None else None

    def mask(self, name: str, batch: Batch | None = None) -> Tensor | None:
        return input_mask(self.model, name, self.batch if batch is None else batch)

    def step_mask(self, names: Iterable[str], batch: Batch | None = None) -> Tensor | None:
        """The mask of the first of these inputs that has one: the steps attention runs over."""
        return next((m for m in (self.mask(n, batch) for n in names) if m is not None), None)

    def bounded(self, r: Inputs) -> Inputs:
        """Each perturbation cut so that the perturbed input stays in its valid range."""
        return {k: within(self.inputs[k], v, self.model.perturbable[k].bounds) for k, v in r.items()}

    def perturbed(self, r: Inputs, batch: Batch | None = None) -> Output:
        """Forward on embed(batch) + r; r is a constant, gradients reach θ through the embedding."""
        return perturbed_forward(self.model, self.batch if batch is None else batch, r)


class Term(Protocol):
    """One additive part of a regime's loss. `__call__` accumulates its parameter gradients (or
    appends its loss to cp.pending) and returns the values to log, with "weighted": its
    detached contribution λ·loss to the step's total loss."""

    name: str
    needs: frozenset[str]

    def __call__(self, cp: CleanPass) -> dict[str, Tensor]:
        ...


def perturbed_forward(model: nn.Module, batch: Batch, r: Inputs) -> Output:
    """Forward on embed(batch) + r for the perturbed inputs."""
    return model(add(model.embed(batch), r), batch)


def add(inputs: Inputs, r: Inputs) -> Inputs:
    return {k: v + r[k] if k in r else v for k, v in inputs.items()}


def _rng_state() -> tuple[Tensor, list[Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def clean_pass(model: nn.Module, task: Task, batch: Batch, *, keep_graph: bool = False,
               double_backward: bool = False) -> CleanPass:
    """Forward and backward on the clean input, keeping g = ∇_x L for every perturbable input.

    keep_graph defers the clean loss's parameter backward (to `pending`); double_backward
    also makes g differentiable (create_graph). Raw inputs (pixels, features) become leaves
    that keep their gradient.
    """
    rng = _rng_state()
    inputs = {k: v if v.requires_grad else v.detach().requires_grad_(True)
              for k, v in model.embed(batch).items()}
    if not keep_graph and not double_backward:
        for v in inputs.values():
            v.retain_grad()
        out = model(inputs, batch)
        loss = task.loss(out, batch)
        loss.backward()
        return CleanPass(model, task, batch, inputs, out, loss.detach(),
                         {k: v.grad.detach() for k, v in inputs.items()}, rng=rng)
    with twice_differentiable() if double_backward else nullcontext():
        out = model(inputs, batch)
        loss = task.loss(out, batch)
        # input gradients only (the parameters' share comes with the deferred backward), of the
        # summed per-sample losses: row i of g is then exactly ∇_{x_i} ℓ_i
        g = torch.autograd.grad(task.loss(out, batch, "none").sum(), list(inputs.values()),
                                create_graph=double_backward, retain_graph=True)
    graph = dict(zip(inputs, g, strict=True))
    return CleanPass(model, task, batch, inputs, out, loss, {k: v.detach() for k, v in graph.items()},
                     graph if double_backward else None, [loss], rng)


def weighted_backward(loss: Tensor, weight: float) -> None:
    """Accumulate weight · ∇θ loss (nothing when the weight is 0 or nothing was kept)."""
    if weight and loss.requires_grad:
        (weight * loss).backward()


class Regime:
    """The clean loss plus its terms, over one shared clean pass (see the module docstring)."""

    def __init__(self, name: str, terms: list[Term]) -> None:
        self.name, self.terms = name, terms
        self.needs = frozenset().union(*(t.needs for t in terms))

    def backward(self, model: nn.Module, task: Task, batch: Batch) -> dict[str, Tensor]:
        """Accumulate ∇θ of the regime's loss; return {"loss", "clean_loss", …, "scores"}."""
        cp = clean_pass(model, task, batch, keep_graph="graph" in self.needs,
                        double_backward="double_backward" in self.needs)
        logs: dict[str, Tensor] = {"clean_loss": cp.loss.detach()}
        total = cp.loss.detach()
        for term in self.terms:
            values = term(cp)
            total = total + values.pop("weighted")
            logs.update(values)
        if cp.pending:
            sum(cp.pending).backward()
        regulariser = getattr(model, "regulariser", None)
        penalty = regulariser(batch) if regulariser is not None else None
        if penalty is not None:  # the model's own penalty on its parameters, never perturbed
            penalty.backward()
            total = total + penalty.detach()
            logs["penalty"] = penalty.detach()
        return {"loss": total, **logs, "scores": cp.out.scores.detach()}
