"""Tasks, one module each (base.py: the Protocol): what is learned and how it is scored.

    classification   classification.py: cross-entropy, class weights, accuracy / AUC
"""

from __future__ import annotations

from advorch.config import ExperimentConfig
from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.tasks.base import Perturb, Task
from advorch.trainers.tasks.classification import Classification

__all__ = ["Task", "Perturb", "Classification", "build_task"]


def build_task(cfg: ExperimentConfig, spec: DatasetSpec) -> Task:
    """The task the dataset declares (spec.task).

    Raises:
        ValueError: a task this version cannot train yet.
    """
    if spec.task == "classification":
        return Classification.from_spec(spec, cfg.train.class_weights)
    raise ValueError(f"{spec.uri}: task {spec.task!r} has no trainer yet (known: classification)")
