"""Classification: cross-entropy (Jia et al. eq. 10), class weights, accuracy / AUC, serving.

The splits of a classification dataset are stratified by class when a pipeline writes them
(pipelines.common.stratified_codes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.data import TensorData, batches, unpack
from advorch.trainers.device import all_gather_cat
from advorch.trainers.models.base import Batch, Output
from advorch.trainers.tasks.base import Perturb


class Classification:
    """Cross-entropy over `scores` (logits), class-weighted when `class_weight` is given."""

    name = "classification"

    def __init__(self, num_classes: int, class_weight: Tensor | None = None) -> None:
        self.num_classes, self.class_weight = num_classes, class_weight

    def to(self, device: torch.device) -> Classification:
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(device)
        return self

    def prepare(self, batch: Batch, seed: int) -> Batch:
        return batch  # a row is complete as stored

    def loss(self, out: Output, batch: Batch, reduction: str = "mean") -> Tensor:
        """Cross-entropy (eq. 10); class-weighted: Σ w_y ℓ / Σ w_y ("mean"), w_y ℓ ("none")."""
        return F.cross_entropy(out.scores, batch["label"], weight=self.class_weight, reduction=reduction)

    def divergence(self, clean_scores: Tensor, out: Output) -> Tensor:
        """Per-sample KL[p_clean ‖ softmax(scores)] (VAT, eq. 3); p_clean is held constant."""
        p = F.softmax(clean_scores.detach(), -1)
        return (p * (p.clamp_min(1e-12).log() - F.log_softmax(out.scores, -1))).sum(-1)

    def train_metrics(self, scores: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"accuracy": (scores.argmax(1) == batch["label"]).float().mean()}

    def evaluate(self, model: nn.Module, data: TensorData, batch_size: int, device: torch.device,
                 prefix: str = "", perturb: Perturb | None = None) -> dict[str, float]:
        """accuracy, loss (and AUC for two classes) over all ranks' slices together."""
        probs = predict(model, data, batch_size, device, perturb)
        probs = all_gather_cat(probs.flatten()).view(-1, self.num_classes)
        labels = all_gather_cat(data.labels.to(probs.device))
        return metrics(probs, labels, prefix)

    def serving(self, model: nn.Module, layout: list[tuple[str, tuple[int, ...]]] | None = None) -> nn.Module:
        return Serving(model, layout)

    @staticmethod
    def problems(metric: str, spec: DatasetSpec) -> list[str]:
        """Why this dataset cannot be trained and scored by `metric` (train.metric): no rows in a
        split the run reads, fewer than two classes, a class absent from train, AUC without
        exactly two classes or without both of them in val. Each names the counts and the fix."""
        out = []
        if metric in ("val_hr_10", "val_ndcg_10"):
            out.append(f"train.metric = \"{metric}\" scores a ranking; {spec.uri} is a classification: use "
                       "\"val_accuracy\", \"val_auc\" or \"val_loss\"")
        rebuild = "rebuild the dataset with `advorch preprocess`"
        for split, key in (("train", "data.test_fraction"), ("val", "data.val_fraction"),
                           ("test", "data.test_fraction")):
            if not spec.split_rows.get(split):
                out.append(f"{spec.uri}: split {split} has 0 rows; {rebuild} with another {key}")
        if spec.num_classes < 2:
            out.append(f"{spec.uri}: {spec.num_classes} class ({', '.join(spec.classes) or 'none'}): a "
                       "classifier needs two or more; check the dataset's label source and rebuild it")
            return out
        train = spec.class_counts.get("train", {})
        if spec.split_rows.get("train") and (absent := [c for c in spec.classes if not train.get(c)]):
            out.append(f"{spec.uri}: class {', '.join(absent)} has no train rows (train: {train}); {rebuild} "
                       "with another data.test_fraction / data.seed, or more data")
        if metric == "val_auc":
            val = spec.class_counts.get("val", {})
            if spec.num_classes != 2:
                out.append(f"train.metric = \"val_auc\" needs two classes, {spec.uri} has "
                           f"{spec.num_classes}: use train.metric = \"val_accuracy\" or \"val_loss\"")
            elif spec.split_rows.get("val") and not all(val.get(c) for c in spec.classes):
                out.append(f"train.metric = \"val_auc\" needs both classes in val, {spec.uri} has {val}: "
                           "use train.metric = \"val_loss\", or rebuild with a larger data.val_fraction")
        return out

    @classmethod
    def from_spec(cls, spec: DatasetSpec, class_weights: bool) -> Classification:
        """With class_weights, n / (k · n_c) per class c over the train split ("balanced")."""
        if not class_weights:
            return cls(spec.num_classes)
        train = spec.class_counts.get("train", {})
        counts = torch.tensor([train.get(c, 0) for c in spec.classes], dtype=torch.float32)
        return cls(spec.num_classes, counts.sum() / (len(counts) * counts.clamp_min(1)))


def predict(model: nn.Module, data: TensorData, batch_size: int, device: torch.device,
            perturb: Perturb | None = None) -> Tensor:
    """Class probabilities (N, C) in data order, of the perturbed inputs when `perturb` is given."""
    model.eval()
    probs = []
    for b in batches(data, batch_size, device):
        r = perturb(b) if perturb else {}
        with torch.no_grad():
            inputs = {k: v + r[k] if k in r else v for k, v in model.embed(b).items()}
            probs.append(torch.softmax(model(inputs, b).scores, -1))
    return torch.cat(probs) if probs else torch.zeros(0, 2)


def metrics(probs: Tensor, labels: Tensor, prefix: str = "") -> dict[str, float]:
    """accuracy, loss, and auc when there are two classes (and both occur)."""
    probs, labels = probs.double().cpu(), labels.long().cpu()
    out = {
        f"{prefix}accuracy": float((probs.argmax(1) == labels).double().mean()),
        f"{prefix}loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
    }
    if probs.shape[1] == 2 and len(np.unique(labels.numpy())) == 2:
        from sklearn.metrics import roc_auc_score

        out[f"{prefix}auc"] = float(roc_auc_score(labels.numpy(), probs[:, 1].numpy()))
    return out


class Serving(nn.Module):
    """The model's serving input (token ids (B, T) 0-padded, features (B, T, F), pixels
    (B, C, H, W) in [0, 1]; several inputs packed in one float32 (B, W) array by `layout`, see
    data.TensorData.serving_inputs) → class probabilities (B, C): the logged model."""

    def __init__(self, model: nn.Module, layout: list[tuple[str, tuple[int, ...]]] | None = None) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, inputs: Tensor) -> Tensor:
        batch = unpack(inputs, self.layout) if self.layout else self.model.serving_batch(inputs)
        return torch.softmax(self.model(self.model.embed(batch), batch).scores, dim=-1)
