"""MLflow model registry: register a run's model, list, set aliases, predict by alias.

A registered advorch model is the logged `Serving` module (token ids → probabilities);
its run's artifacts hold the vocabulary and config needed to turn text into ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec

from advorch.tuning import tracking


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def register(uri: str, run_id: str, name: str, alias: str | None = "candidate") -> int:
    """Register the run's logged model under `name` (alias optional); return the version."""
    import mlflow

    tags = tracking.run_tags(uri, run_id)
    if "advorch.model_uri" not in tags:
        raise LookupError(f"run {run_id} has no logged model (trained with mlflow.log_model = false)")
    mlflow.set_tracking_uri(uri)
    mv = mlflow.register_model(tags["advorch.model_uri"], name, tags={"advorch.run_id": run_id})
    if alias:
        _client(uri).set_registered_model_alias(name, alias, mv.version)
    return int(mv.version)


def promote(uri: str, name: str, version: int, alias: str) -> None:
    _client(uri).set_registered_model_alias(name, alias, str(version))


def list_models(uri: str) -> list[dict[str, Any]]:
    """One row per registered version: name, version, aliases, run id, status."""
    client = _client(uri)
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model.name}'"):
            rows.append({"name": model.name, "version": int(mv.version),
                         "aliases": sorted(aliases.get(str(mv.version), [])),
                         "run_id": mv.run_id or mv.tags.get("advorch.run_id", ""), "status": mv.status})
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: list[float]


def predict(uri: str, model_ref: str, source: str, split: str = "test", limit: int | None = None
            ) -> list[Prediction]:
    """Predict with `models:/NAME@ALIAS` (or NAME@ALIAS) on a shard folder's split or a text
    file of sentences (one per line, UTF-8)."""
    import mlflow
    import torch

    from advorch.config import ExperimentConfig
    from advorch.pipelines.shards import read_manifest
    from advorch.pipelines.text import OOV, tokenize
    from advorch.trainers.data import load_slice

    ref = model_ref if model_ref.startswith("models:/") else f"models:/{model_ref}"
    name, _, alias = ref.removeprefix("models:/").partition("@")
    client = _client(uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else None
    if mv is None:
        raise LookupError(f"{model_ref}: name a version by alias, e.g. {name}@candidate")
    run_id = mv.run_id or mv.tags.get("advorch.run_id")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(ref, map_location="cpu").eval()
    cfg = ExperimentConfig.model_validate(tracking.load_artifact_dict(uri, run_id, "config.json"))
    classes = tracking.load_artifact_dict(uri, run_id, "dataset/manifest.json")["classes"]
    if read_manifest(source) is not None:  # a shard folder or URI
        data = load_slice(source, split, 0, 1, cfg.model.max_length)
        tokens, texts = data.tokens, data.ids
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
