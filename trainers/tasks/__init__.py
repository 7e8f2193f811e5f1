"""Tasks, one module each (base.py: the Protocol): what is learned and how it is scored.

    classification   classification.py: cross-entropy, class weights, accuracy / AUC
    ranking          ranking.py: BPR on sampled negatives, leave-one-out HR@N / NDCG@N
"""

from __future__ import annotations

from advorch.config import ExperimentConfig
from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.tasks.base import Perturb, Task
from advorch.trainers.tasks.classification import Classification
from advorch.trainers.tasks.ranking import Ranking

__all__ = ["Task", "Perturb", "Classification", "Ranking", "build_task", "task_problems"]

TASKS = {"classification": Classification, "ranking": Ranking}


def task_problems(cfg: ExperimentConfig, spec: DatasetSpec) -> list[str]:
    """Why the dataset cannot be learned and scored as the config asks (empty when it can)."""
    if spec.task not in TASKS:
        return [f"{spec.uri}: task {spec.task!r} has no trainer yet (known: {', '.join(TASKS)})"]
    return TASKS[spec.task].problems(cfg.train.metric, spec)


def build_task(cfg: ExperimentConfig, spec: DatasetSpec) -> Task:
    """The task the dataset declares (spec.task).

    Raises:
        ValueError: a task this version cannot train yet.
    """
    if spec.task not in TASKS:
        raise ValueError(task_problems(cfg, spec)[0])
    if spec.task == "ranking":
        return Ranking.build(cfg.train, spec)
    return Classification.from_spec(spec, cfg.train.class_weights)
