"""MLflow model registry: register a run's model, list, set aliases, predict by alias.

A registered advorch model is the logged serving module of its task (a classifier: the model's
input → class probabilities; a recommender: user indices → its best items); its run's artifacts
hold the vocabulary, users and items, and the config needed to turn inputs into ids and back.
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


@dataclass
class Recommendation:
    user: str
    items: list[str]


def recommend(uri: str, model_ref: str, source: str, split: str = "test", limit: int | None = None,
              top: int = 10) -> list[Recommendation]:
    """The `top` items (raw ids, best first) a registered recommender gives each user of a text file
    of user ids (one per line) or of a ranking dataset's split; items a user has train pairs with
    are left out. Users the model was not trained on are refused, named."""
    import torch

    from advorch.pipelines.shards import read_manifest

    run_id, model = _load(uri, model_ref)
    users = tracking.load_artifact_dict(uri, run_id, "dataset/users.json")
    items = tracking.load_artifact_dict(uri, run_id, "dataset/items.json")
    index = {u: i for i, u in enumerate(users)}
    if read_manifest(source) is not None:
        from advorch.pipelines.spec import read_spec
        from advorch.trainers.data import load_slice

        ids = load_slice(read_spec(source), split).inputs["user"].unique().tolist()
        asked = [users[i] for i in ids]
    else:
        with fsspec.open(source, "r", encoding="utf-8") as f:
            asked = [line.strip() for line in f.read().splitlines() if line.strip()]
        unknown = [u for u in asked if u not in index]
        if unknown:
            raise LookupError(f"{source}: {len(unknown)} user(s) the model was not trained on, e.g. "
                              f"{', '.join(unknown[:3])}; give ids from the training data's users")
    asked = asked[:limit] if limit else asked
    with torch.no_grad():
        best = model(torch.tensor([index[u] for u in asked], dtype=torch.long))[:, :top]
    return [Recommendation(u, [items[int(i)] for i in row]) for u, row in zip(asked, best, strict=True)]


def _load(uri: str, model_ref: str) -> tuple[str, Any]:
    """(run id, loaded serving model) of `models:/NAME@ALIAS` or NAME@ALIAS."""
    ref = model_ref if model_ref.startswith("models:/") else f"models:/{model_ref}"
    name, _, alias = ref.removeprefix("models:/").partition("@")
    if not alias:
        raise LookupError(f"{model_ref}: name a version by alias, e.g. {name}@candidate")
    return tracking.version_run_id(uri, name, alias), tracking.load_model(uri, ref).eval()


def task_of(uri: str, model_ref: str) -> str:
    """The task ("classification", "ranking") of a registered model's training data."""
    ref = model_ref.removeprefix("models:/")
    name, _, alias = ref.partition("@")
    run_id = tracking.version_run_id(uri, name, alias or "champion")
    return tracking.load_artifact_dict(uri, run_id, "dataset/manifest.json").get("task", "classification")


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

    run_id, model = _load(uri, model_ref)
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
        # the run's own tokenizer: words, or a pretrained encoder's word pieces (data.tokenizer)
        ids = [[vocab.get(t, vocab[OOV]) for t in tokenize(s, cfg.data.lowercase, cfg.data.tokenizer)]
               [: cfg.model.max_length] or [vocab[OOV]] for s in texts]
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
