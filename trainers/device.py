"""All device and process-group handling lives here: CPU by default, CUDA when asked
and present; gloo on CPU, NCCL on GPUs."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def backend(use_gpu: bool) -> str:
    """The torch.distributed backend for the workers."""
    return "nccl" if use_gpu and torch.cuda.is_available() else "gloo"


def worker_device() -> torch.device:
    """This worker's device: Ray Train's assignment inside a Ray worker, else CUDA/CPU."""
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except (ImportError, RuntimeError, AttributeError):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if world()[1] > 1:
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)


def average_gradients(model: nn.Module) -> None:
    """Average gradients over ranks in one flat all-reduce.

    Done by hand rather than by DistributedDataParallel: regimes call `embed` and
    `forward` separately and run two backward passes per step, which DDP's
    forward-hook reducer does not support; one flat all-reduce per step costs the
    same communication as DDP's buckets.
    """
    if world()[1] == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a short list of numbers over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from all ranks (rank order)."""
    if world()[1] == 1:
        return t
    sizes = [None] * world()[1]
    dist.all_gather_object(sizes, int(t.numel()))
    padded = torch.zeros(max(sizes), dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, sizes, strict=True)])
