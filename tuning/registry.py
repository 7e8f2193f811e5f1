"""MLflow model registry: register a run's model, list, set aliases, predict by alias.

A registered advorch model is the logged serving module of its task (the model's input →
class probabilities);
its run's artifacts hold the vocabulary and config needed to turn text into ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec

from advorch import tracking


def register(uri: str, run_id: str, name: str, alias: str | None = "candidate") -> int:
    """Register the run's logged model under `name` (alias optional); return the version."""
    tags = tracking.run_tags(uri, run_id)
    if "advorch.model_uri" not in tags:
        raise LookupError(f"run {run_id} has no logged model (trained with mlflow.log_model = false)")
    version = tracking.register_model(uri, tags["advorch.model_uri"], name, {"advorch.run_id": run_id})
    if alias:
        tracking.set_alias(uri, name, alias, version)
    return version


def promote(uri: str, name: str, version: int, alias: str) -> None:
    tracking.set_alias(uri, name, alias, version)


def list_models(uri: str) -> list[dict[str, Any]]:
    """One row per registered version: name, version, aliases, run id, status."""
    return sorted(tracking.model_versions(uri), key=lambda r: (r["name"], -r["version"]))


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: list[float]


def predict(uri: str, model_ref: str, source: str, split: str = "test", limit: int | None = None
            ) -> list[Prediction]:
    """Predict with `models:/NAME@ALIAS` (or NAME@ALIAS) on a shard folder's split or a text
    file of sentences (one per line, UTF-8)."""
    import torch

    from advorch.config import ExperimentConfig
    from advorch.pipelines.shards import read_manifest
    from advorch.pipelines.spec import read_spec
    from advorch.pipelines.text import OOV, tokenize
    from advorch.trainers.data import load_slice

    ref = model_ref if model_ref.startswith("models:/") else f"models:/{model_ref}"
    name, _, alias = ref.removeprefix("models:/").partition("@")
    if not alias:
        raise LookupError(f"{model_ref}: name a version by alias, e.g. {name}@candidate")
    run_id = tracking.version_run_id(uri, name, alias)
    model = tracking.load_model(uri, ref).eval()
    cfg = ExperimentConfig.model_validate(tracking.load_artifact_dict(uri, run_id, "config.json"))
    classes = tracking.load_artifact_dict(uri, run_id, "dataset/manifest.json")["classes"]
    if read_manifest(source) is not None:  # a shard folder or URI
        data = load_slice(read_spec(source), split, 0, 1, cfg.model.max_length)
        tokens, texts = data.serving_inputs(), data.ids
    else:
        words = tracking.load_artifact_dict(uri, run_id, "dataset/vocab.json")
        vocab = {t: i for i, t in enumerate(words)}
        with fsspec.open(source, "r", encoding="utf-8") as f:  # a local file or a URI
            lines = f.read().splitlines()
        texts = [line.strip() for line in lines if line.strip()]
        ids = [[vocab.get(t, vocab[OOV]) for t in tokenize(s, cfg.data.lowercase)][: cfg.model.max_length]
               or [vocab[OOV]] for s in texts]
        tokens = torch.zeros(len(ids), max(map(len, ids), default=1), dtype=torch.long)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.tensor(row)
    if limit:
        tokens, texts = tokens[:limit], texts[:limit]
    with torch.no_grad():
        chunks = [model(tokens[i:i + 512]) for i in range(0, len(tokens), 512)]
        probs = torch.cat(chunks) if chunks else []
    return [Prediction(t, classes[int(p.argmax())], [round(float(x), 4) for x in p])
            for t, p in zip(texts, probs, strict=True)]


def prediction_json(preds: list[Prediction]) -> str:
    return "\n".join(json.dumps(p.__dict__) for p in preds)
