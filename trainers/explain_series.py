"""Explanations of feature sequences (Jia et al. KDD'19 Fig. 4, MODIS): a sample's NDVI series
against its class mean, and its attention on the clean input vs under AT on all steps
(eq. 2) and attention-aware AT (eq. 11)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from advorch.trainers.explain import perturbations, perturbed_attention
from advorch.trainers.models.base import Batch
from advorch.trainers.tasks.base import Task


@dataclass
class SeriesExplanation:
    """One sample: its label, NDVI per step with its class's mean, clean and perturbed attention."""

    label: int
    ndvi: list[float]
    class_mean: list[float]
    attention: list[float]
    perturbed_attention: dict[str, list[float]]

    def shift(self, name: str) -> float:
        """Total variation between the clean and the perturbed attention (0 = unchanged, 1 = disjoint)."""
        return 0.5 * float(np.abs(np.subtract(self.attention, self.perturbed_attention[name])).sum())


def explain_series(model: nn.Module, task: Task, batch: Batch, epsilon: float, ndvi_column: int,
                   class_means: np.ndarray) -> list[SeriesExplanation]:
    """Explanations for every sample of `batch` (features (B, T, F)); `class_means` (C, T) of NDVI."""
    _, alpha, methods = perturbations(model, task, batch, epsilon)
    out = []
    for i in range(len(batch["label"])):
        label = int(batch["label"][i])
        attention = {k: perturbed_attention(model, batch, i, r).tolist() for k, r in methods.items()}
        out.append(SeriesExplanation(label, batch["features"][i, :, ndvi_column].tolist(),
                                     class_means[label].tolist(), alpha[i].tolist(), attention))
    return out


def class_mean_ndvi(features: torch.Tensor, labels: torch.Tensor, ndvi_column: int,
                    classes: int) -> np.ndarray:
    """(C, T) mean NDVI per class and step over a split (NaN for a class it lacks)."""
    ndvi, y = features[:, :, ndvi_column].numpy(), labels.numpy()
    return np.stack([ndvi[y == c].mean(0) if (y == c).any() else np.full(ndvi.shape[1], np.nan)
                     for c in range(classes)])


def series_plot(items: list[SeriesExplanation], classes: list[str], epsilon: float, path: str) -> None:
    """Per sample: NDVI vs its class mean (left); attention clean / AT / attention-aware AT (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 2, figsize=(11, 2.4 * len(items) + 0.4), squeeze=False)
    for (left, right), x in zip(axes, items, strict=True):
        steps = range(len(x.ndvi))
        left.plot(steps, x.ndvi, "-o", ms=3, label="sample")
        left.plot(steps, x.class_mean, "--", label=f"mean of {classes[x.label]}")
        left.set_ylabel("NDVI")
        left.legend(fontsize=7)
        right.plot(steps, x.attention, "-k", label="clean")
        for name, att in x.perturbed_attention.items():
            right.plot(steps, att, label=f"{name} (shift {x.shift(name):.2f})")
        right.set_ylabel("attention")
        right.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step (window)")
    axes[-1, 1].set_xlabel(f"step (window), ε = {epsilon:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
