"""Robustness evaluation and explanations of a finished training run, logged back to it.

A run is found by its MLflow id: the model from the `advorch.model_uri` tag, the
config from its config.json artifact, the dataset from the `advorch.dataset` tag.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from advorch.config import ExperimentConfig


def load_run(run_id: str, mlflow_uri: str | None = None) -> tuple[Any, ExperimentConfig, str, str]:
    """(classifier, config, dataset URI, tracking URI) of a training run.

    Raises:
        LookupError: the run has no logged model (trained with mlflow.log_model = false).
    """
    from advorch.tuning import tracking

    uri = tracking.resolve_uri(mlflow_uri)
    tags = tracking.run_tags(uri, run_id)
    if "advorch.model_uri" not in tags:
        raise LookupError(f"run {run_id} has no logged model (it was trained with mlflow.log_model = false)")
    cfg = ExperimentConfig.model_validate(tracking.load_artifact_dict(uri, run_id, "config.json"))
    model = tracking.load_model(uri, tags["advorch.model_uri"]).model
    return model.eval(), cfg, tags["advorch.dataset"], uri


def evaluate_run(run_id: str, attacks: list[str], epsilons: list[float], mlflow_uri: str | None = None,
                 steps: int = 10, step_size: float | None = None,
                 split: str = "test") -> list[dict[str, Any]]:
    """Metrics under each attack × ε on the split; logged as metrics, a table and a plot."""
    from advorch.trainers.data import load_slice
    from advorch.trainers.robustness import plot, robustness
    from advorch.tuning import tracking

    model, cfg, data, uri = load_run(run_id, mlflow_uri)
    rows = robustness(model, load_slice(data, split, 0, 1, cfg.model.max_length), attacks, epsilons,
                      steps=steps, step_size=step_size)
    tracking.log_metrics(uri, run_id, {
        f"robust_{r['attack']}_eps{r['epsilon']:g}_{k}": r[k]
        for r in rows if r["attack"] != "clean" for k in ("accuracy", "auc") if k in r})
    tracking.log_dict(uri, run_id, rows, "robustness/robustness.json")
    with tempfile.TemporaryDirectory() as tmp:
        plot(rows, f"{tmp}/robustness.png")
        tracking.log_file(uri, run_id, f"{tmp}/robustness.png", "robustness")
    return rows


def explain_run(run_id: str, n: int = 5, epsilon: float | None = None, mlflow_uri: str | None = None,
                split: str = "test") -> tuple[list, float, list[str]]:
    """Explanations of the first n sequences of the split; logged as HTML and a PNG."""
    import torch

    from advorch.pipelines.shards import read_manifest, read_side_file
    from advorch.trainers.data import load_slice, make_batch
    from advorch.trainers.explain import as_html, attention_plot, explain
    from advorch.tuning import tracking

    model, cfg, data, uri = load_run(run_id, mlflow_uri)
    manifest = read_manifest(data)
    eps = cfg.regime.epsilon if epsilon is None else epsilon
    rows = load_slice(data, split, 0, 1, cfg.model.max_length, manifest)
    if rows.features is not None:
        return explain_series_run(model, manifest, data, rows, n, eps, uri, run_id), eps, manifest["classes"]
    vocab = json.loads(read_side_file(data, "vocab.json", manifest))
    items = explain(model, make_batch(rows, torch.arange(min(n, len(rows))), torch.device("cpu")), vocab, eps)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "explanations.html").write_text(as_html(items, manifest["classes"], eps))
        attention_plot(items, f"{tmp}/attention.png")
        for name in ("explanations.html", "attention.png"):
            tracking.log_file(uri, run_id, f"{tmp}/{name}", "explain")
    return items, eps, manifest["classes"]


def explain_series_run(model: Any, manifest: dict[str, Any], data: str, rows: Any, n: int, eps: float,
                       uri: str, run_id: str) -> list:
    """Fig. 4 for a feature-sequence run: NDVI vs class mean and attention clean vs perturbed."""
    import torch

    from advorch.trainers.data import load_slice, make_batch
    from advorch.trainers.explain_series import class_mean_ndvi, explain_series, series_plot
    from advorch.tuning import tracking

    names = manifest.get("feature_names", [])
    if "ndvi@0" not in names:
        raise LookupError("the dataset has no ndvi feature (data.modis.ndvi, or an ndvi band)")
    col = names.index("ndvi@0")
    train = load_slice(data, "train", 0, 1, 10**6, manifest)
    means = class_mean_ndvi(train.features, train.labels, col, len(manifest["classes"]))
    items = explain_series(model, make_batch(rows, torch.arange(min(n, len(rows))), torch.device("cpu")),
                           eps, col, means)
    with tempfile.TemporaryDirectory() as tmp:
        series_plot(items, manifest["classes"], eps, f"{tmp}/series.png")
        tracking.log_file(uri, run_id, f"{tmp}/series.png", "explain")
    return items
