"""Evaluation metrics: accuracy, cross-entropy and (binary tasks) ROC AUC."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.trainers.data import SequenceData, batches
from advorch.trainers.device import all_gather_cat


@torch.no_grad()
def predict(model: nn.Module, data: SequenceData, batch_size: int,
            device: torch.device) -> Tensor:
    """Class probabilities (N, C) in data order."""
    model.eval()
    probs = [torch.softmax(model(model.embed(b), b).logits, -1)
             for b in batches(data, batch_size, device)]
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


def evaluate(model: nn.Module, data: SequenceData, batch_size: int, device: torch.device,
             prefix: str = "") -> dict[str, float]:
    """Metrics over all ranks' slices together (each rank passes its own slice)."""
    probs = predict(model, data, batch_size, device)
    c = probs.shape[1]
    probs = all_gather_cat(probs.flatten()).view(-1, c)
    labels = all_gather_cat(data.labels.to(probs.device))
    return metrics(probs, labels, prefix)
