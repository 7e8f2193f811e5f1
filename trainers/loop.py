"""The one training step and loop, and their Ray Train wiring.

`train_step` serves every model × regime. `train_worker` is the Ray Train worker
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
from advorch.pipelines.shards import read_manifest
from advorch.trainers import device as dev
from advorch.trainers.adversarial import Regime, build_regime
from advorch.trainers.data import SequenceData, batches, load_slice, steps_per_epoch
from advorch.trainers.evaluate import evaluate
from advorch.trainers.models import build_model

CHECKPOINT_FILE = "state.pt"


def train_step(model: nn.Module, regime: Regime, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], grad_clip: float = 0.0) -> dict[str, float]:
    """One optimisation step: the regime's gradients, averaged over ranks, clipped, applied."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    terms = regime.backward(model, batch)
    dev.average_gradients(model)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    correct = (terms.pop("logits").argmax(1) == batch["label"]).sum()
    return {**{k: float(v) for k, v in terms.items()}, "correct": float(correct)}


def is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


def build(cfg: ExperimentConfig, manifest: dict[str, Any],
          data: str | None = None) -> tuple[nn.Module, Regime]:
    """Model and regime for a dataset, seeded so every rank builds the same weights.

    The embedding starts from the dataset's own vectors (the clickstream pipeline's
    Word2Vec page embeddings, side file embeddings.npy) unless model.init_embeddings is
    "random"; with model.pretrained_vectors set, from that word2vec/GloVe file instead
    (the dataset's vocabulary side file maps tokens to ids).
    """
    torch.manual_seed(cfg.train.seed)
    features = manifest.get("shapes", {}).get("features")  # [T, F]: feature sequences, no vocabulary
    stats = manifest.get("feature_stats")
    model = build_model(cfg.model, manifest.get("vocab_size", 0), len(manifest["classes"]),
                        input_dim=features[1] if features else None,
                        input_stats=(torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if stats
                        else None)
    if data is None or features:
        return model, build_regime(cfg.regime)
    import json

    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.models.pretrained import load_dataset_vectors, load_word_vectors

    if cfg.model.pretrained_vectors:
        vocab = json.loads(read_side_file(data, "vocab.json", manifest))
        weights, _ = load_word_vectors(cfg.model.pretrained_vectors, vocab, cfg.model.embedding_dim,
                                       init=model.embedding.weight.data)
        model.embedding.weight.data.copy_(weights)
    elif cfg.model.init_embeddings == "dataset" and "embeddings.npy" in manifest.get("side_files", {}):
        model.embedding.weight.data.copy_(load_dataset_vectors(data, manifest, cfg.model.embedding_dim))
    return model, build_regime(cfg.regime)


def class_weights(manifest: dict[str, Any]) -> torch.Tensor:
    """n / (k · n_c) per class c over the train split ("balanced"), for a skewed label."""
    counts = torch.tensor([manifest["splits"]["train"]["classes"].get(c, 0) for c in manifest["classes"]],
                          dtype=torch.float32)
    return counts.sum() / (len(counts) * counts.clamp_min(1))


def make_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam; the fused kernel: the dense update of a large embedding costs 1.3 ms, not 7.5."""
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            fused=True)


@dataclass
class Worker:
    """What one rank trains with: its slices of the shards, model, regime, optimizer, state."""

    cfg: ExperimentConfig
    model: nn.Module
    regime: Regime
    optimizer: torch.optim.Optimizer
    train: SequenceData
    val: SequenceData
    unlabelled: SequenceData | None
    steps: int
    device: torch.device
    rank: int = 0
    world: int = 1
    class_weight: torch.Tensor | None = None
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": -1, "best_metric": None, "best_epoch": -1, "bad_epochs": 0, "best_model": None})


def setup_worker(cfg: ExperimentConfig, data: str, rank: int = 0, world: int = 1,
                 device: torch.device | None = None) -> Worker:
    """Read this rank's slices and build model, regime and optimizer (same weights on every rank)."""
    device = device or torch.device("cpu")
    manifest = read_manifest(data)
    load = lambda split: load_slice(data, split, rank, world, cfg.model.max_length, manifest)  # noqa: E731
    model, regime = build(cfg, manifest, data)
    model.to(device)
    return Worker(
        cfg, model, regime, make_optimizer(cfg, model), load("train"), load("val"),
        # the paper's transductive setting (§3.1): VAT also sees the test inputs, never their labels
        load("test") if cfg.regime.transductive else None,
        steps_per_epoch(manifest["splits"]["train"]["rows"], world, cfg.train.batch_size),
        device, rank, world, class_weights(manifest).to(device) if cfg.train.class_weights else None)


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
    for batch in batches(w.train, cfg.train.batch_size, w.device, steps=w.steps, shuffle=True, seed=seed):
        if w.class_weight is not None:
            batch["class_weight"] = w.class_weight
        if extra is not None:
            batch["unlabelled"] = {k: v for k, v in next(extra).items() if k != "label"}
        for k, v in train_step(w.model, w.regime, w.optimizer, batch, cfg.train.grad_clip).items():
            sums[k] = sums.get(k, 0.0) + v
    keys = sorted(sums)
    totals = dict(zip(keys, dev.all_sum([sums[k] for k in keys], w.device), strict=True))
    metrics = {f"train_{k}": totals[k] / (w.steps * w.world) for k in keys if k != "correct"}
    metrics["train_accuracy"] = totals["correct"] / (w.steps * cfg.train.batch_size * w.world)
    metrics.update(evaluate(w.model, w.val, cfg.train.batch_size * 4, w.device, prefix="val_"))
    metrics["epoch_seconds"] = time.perf_counter() - t0

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


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train on this rank's slice, validate, checkpoint and report each epoch.

    config: {"experiment": ExperimentConfig dump, "data": dataset URI, "progress": URI | None,
             "tracking_uri": str | None, "run_id": str | None}
    """
    import ray.train

    cfg = ExperimentConfig.model_validate(config["experiment"])
    ctx = ray.train.get_context()
    w = setup_worker(cfg, config["data"], ctx.get_world_rank(), ctx.get_world_size(), dev.worker_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resumed after a failure: continue after the last reported epoch
        with checkpoint.as_directory() as d:
            restore_state(w, d)
    else:
        dev.broadcast_parameters(w.model)
    resumed_from = w.state["epoch"] + 1

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
                    from advorch.tuning import tracking

                    tracking.log_metrics(config["tracking_uri"], config["run_id"],
                                         {k: v for k, v in metrics.items() if v is not None}, step=epoch)
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
