"""The one training step and loop, and their Ray Train wiring.

`train_step` serves every model × task × regime. `train_worker` is the Ray Train worker
function: plain PyTorch plus `ray.train` calls for context, checkpoint and report
(Ray's own examples' shape); it takes a flat dict so Ray Tune can sweep it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advorch.config import ExperimentConfig
from advorch.pipelines.spec import DatasetSpec, read_spec
from advorch.trainers import device as dev
from advorch.trainers.adversarial import Regime, build_regime
from advorch.trainers.data import TensorData, batches, load_slice, steps_per_epoch
from advorch.trainers.models import build_model
from advorch.trainers.tasks import Task, build_task

CHECKPOINT_FILE = "state.pt"


def train_step(model: nn.Module, task: Task, regime: Regime, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], grad_clip: float = 0.0, amp: bool = False) -> dict[str, float]:
    """One optimisation step: the regime's gradients, averaged over ranks, clipped, applied.

    `amp` runs the forward passes in bfloat16 autocast (CUDA only; no loss scaling needed).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        terms = regime.backward(model, task, batch)
    dev.average_gradients(model)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scores = terms.pop("scores")
    return {k: float(v) for k, v in {**terms, **task.train_metrics(scores, batch)}.items()}


def is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


def build(cfg: ExperimentConfig, spec: DatasetSpec, init_weights: bool = True
          ) -> tuple[nn.Module, Task, Regime]:
    """Model, task and regime for a dataset, seeded so every rank builds the same weights.

    `init_weights` loads the initial embeddings the config asks for (the dataset's own
    vectors, or model.pretrained_vectors); a model about to load a trained state skips it.
    """
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model, spec, init_weights), build_task(cfg, spec), build_regime(cfg.regime)


def make_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (the fused kernel: the dense update of a large embedding costs 1.3 ms, not 7.5), or
    Adagrad (train.optimizer, the AMR paper's); weight_decay is the L2 regulariser β."""
    t = cfg.train
    # a pretrained encoder: its own learning rate when fine-tuned, no state at all when frozen
    params = (model.parameter_groups(t.lr, cfg.model.encoder_lr) if hasattr(model, "parameter_groups")
              else model.parameters())
    if t.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)


@dataclass
class Worker:
    """What one rank trains with: its slices of the shards, model, task, regime, optimizer, state."""

    cfg: ExperimentConfig
    model: nn.Module
    task: Task
    regime: Regime
    optimizer: torch.optim.Optimizer
    train: TensorData
    val: TensorData
    unlabelled: TensorData | None
    steps: int
    device: torch.device
    rank: int = 0
    world: int = 1
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": -1, "best_metric": None, "best_epoch": -1, "bad_epochs": 0, "best_model": None})


def setup_worker(cfg: ExperimentConfig, data: str, rank: int = 0, world: int = 1,
                 device: torch.device | None = None) -> Worker:
    """Read this rank's slices and build model, regime and optimizer (same weights on every rank)."""
    device = device or torch.device("cpu")
    spec = read_spec(data)
    load = lambda split: load_slice(spec, split, rank, world, cfg.model.max_length)  # noqa: E731
    model, task, regime = build(cfg, spec)
    model.to(device)
    return Worker(
        cfg, model, task.to(device), regime, make_optimizer(cfg, model), load("train"), load("val"),
        # the paper's transductive setting (§3.1): VAT also sees the test inputs, never their labels
        load("test") if cfg.regime.transductive else None,
        steps_per_epoch(spec.split_rows["train"], world, cfg.train.batch_size),
        device, rank, world)


def train_epoch(w: Worker, epoch: int) -> dict[str, float]:
    """One epoch of `train_step`s over this rank's slice, then validation over all ranks.

    Updates w.state (best epoch and weights, early-stopping count) and returns the
    epoch's metrics, the same on every rank (sums are all-reduced).
    """
    cfg, t0 = w.cfg, time.perf_counter()
    sums: dict[str, float] = {}
    seed = cfg.train.seed * 100_003 + epoch * 101 + w.rank
    extra = (batches(w.unlabelled, cfg.train.batch_size, w.device, steps=w.steps, shuffle=True, seed=seed + 7)
             if w.unlabelled is not None else None)
    for step, batch in enumerate(batches(w.train, cfg.train.batch_size, w.device, steps=w.steps, shuffle=True,
                                         seed=seed)):
        batch = w.task.prepare(batch, seed * 1_000_003 + step)
        if extra is not None:
            batch["unlabelled"] = {k: v for k, v in next(extra).items() if k != "label"}
        for k, v in train_step(w.model, w.task, w.regime, w.optimizer, batch, cfg.train.grad_clip,
                               cfg.train.amp).items():
            sums[k] = sums.get(k, 0.0) + v
    keys = sorted(sums)
    totals = dict(zip(keys, dev.all_sum([sums[k] for k in keys], w.device), strict=True))
    # every step is a full batch on every rank: the mean of batch means is the epoch's mean
    metrics = {f"train_{k}": totals[k] / (w.steps * w.world) for k in keys}
    metrics.update(w.task.evaluate(w.model, w.val, cfg.train.batch_size * 4, w.device, prefix="val_"))
    metrics["epoch_seconds"] = time.perf_counter() - t0
    metrics["train_rows"] = float(dev.all_sum([float(len(w.train))], w.device)[0])  # all ranks'

    state, value = w.state, metrics[cfg.train.metric]
    if is_better(value, state["best_metric"], cfg.train.metric):
        state.update(best_metric=value, best_epoch=epoch, bad_epochs=0,
                     best_model={k: v.detach().cpu().clone() for k, v in w.model.state_dict().items()})
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    stop = state["bad_epochs"] >= cfg.train.patience or epoch == cfg.train.epochs - 1
    metrics.update(epoch=epoch, best_epoch=state["best_epoch"], best_metric=state["best_metric"],
                   final_epoch=int(stop))  # not "done": Tune ends a trial on that key
    return metrics


# the loop's own keys (Ray Train, Tune and the progress bar read them), not curves for MLflow:
# there the step is the epoch, and a resume is the tag advorch.resumed_from_epoch
BOOKKEEPING = frozenset({"epoch", "best_epoch", "best_metric", "final_epoch", "resumed_from_epoch"})


def save_state(w: Worker, folder: str) -> None:
    """The checkpoint file: weights, optimizer, training state and the config that built them."""
    torch.save({"model": w.model.state_dict(), "optimizer": w.optimizer.state_dict(),
                "state": w.state, "experiment": w.cfg.model_dump()}, os.path.join(folder, CHECKPOINT_FILE))


def restore_state(w: Worker, folder: str) -> None:
    """Continue from a checkpoint folder written by `save_state` (after a worker failure)."""
    saved = load_checkpoint(folder)
    w.model.load_state_dict(saved["model"])  # copies onto the model's device
    w.optimizer.load_state_dict(saved["optimizer"])
    w.state = saved["state"]


def start_augmented(w: Worker, initial: dict[str, Any], settings: dict[str, Any]) -> None:
    """Algorithm 1 steps 3-7 (Chen et al., trainers/augment.py) on this rank: load the trained
    model of stage 1 (`initial`, its best state dict), craft the adversarial copy of this
    rank's train slice with it in eval mode, and train on both from those weights."""
    from advorch.trainers.augment import adversarial_copy, augmented

    w.model.load_state_dict(initial)
    copy = adversarial_copy(w.model, w.task, w.train, w.cfg.train.batch_size * 4, w.device, settings)
    w.train = augmented(w.train, copy)
    w.steps *= 2  # every rank's slice doubled: the smallest still decides


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train on this rank's slice, validate, checkpoint and report each epoch.

    config: {"experiment": ExperimentConfig dump, "data": dataset URI, "progress": URI | None,
             "tracking_uri": str | None, "run_id": str | None}; for a second stage also
             "initial" (stage 1's best state dict) and "step_offset" (stage 1's epochs, for the
             MLflow steps), and for offline MMAT "adversarial" (epsilon, neighbours, threshold)
    """
    import ray.train

    cfg = ExperimentConfig.model_validate(config["experiment"])
    ctx = ray.train.get_context()
    w = setup_worker(cfg, config["data"], ctx.get_world_rank(), ctx.get_world_size(), dev.worker_device())
    if config.get("adversarial"):  # offline MMAT stage 2: from stage 1's best weights, on train ∪ adversarial
        start_augmented(w, config["initial"], config["adversarial"])
    elif config.get("initial"):  # warm start: the regime from the clean stage's best weights
        w.model.load_state_dict(config["initial"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resumed after a failure: continue after the last reported epoch
        with checkpoint.as_directory() as d:
            restore_state(w, d)
    elif not config.get("initial"):
        dev.broadcast_parameters(w.model)
    resumed_from = w.state["epoch"] + 1
    offset = config.get("step_offset", 0)  # stage 2 logs its epochs after stage 1's

    for epoch in range(resumed_from, cfg.train.epochs):
        metrics = train_epoch(w, epoch)
        metrics["resumed_from_epoch"] = resumed_from
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if w.rank == 0:
                if config.get("progress"):
                    append_progress(config["progress"], metrics)
                save_state(w, tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                if config.get("run_id"):
                    from advorch import tracking

                    tracking.log_metrics(config["tracking_uri"], config["run_id"],
                                         {k: v for k, v in metrics.items()
                                          if v is not None and k not in BOOKKEEPING},
                                         step=epoch + offset)
                    if epoch == resumed_from and resumed_from > 0:
                        tracking.set_tag(config["tracking_uri"], config["run_id"],
                                         "advorch.resumed_from_epoch", str(resumed_from))
            ray.train.report(metrics, checkpoint=ckpt)
        if metrics["final_epoch"]:
            break


def append_progress(uri: str, metrics: dict[str, Any]) -> None:
    """One JSON line per epoch beside the checkpoints; the driver's progress bar reads it."""
    import json

    import fsspec

    with fsspec.open(uri, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def load_checkpoint(path: str) -> dict[str, Any]:
    """The saved training state of a checkpoint folder (model, best model, config)."""
    return torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
