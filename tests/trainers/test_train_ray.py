"""Ray Train on a real local Ray instance: a tracked run, and recovery from a killed worker."""

from pathlib import Path

import pytest

from advorch.config import load_config

pytestmark = pytest.mark.ray


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [
        'name="t"', 'model.hidden_dim=16', 'model.embedding_dim=16', 'model.max_length=24',
        'train.batch_size=64', 'train.workers=2', f'train.storage="{tmp_path / "runs"}"', 'train.patience=50',
        *extra])


def test_training_is_tracked_in_mlflow_with_the_model(ray_local, mr_shards, tmp_path):
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from advorch.trainers.launch import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _cfg(tmp_path, 'regime.name="at"', "train.epochs=2", 'mlflow.experiment="t"')
    result = train(cfg, str(mr_shards), mlflow_uri=uri)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["regime.name"] == "at" and run.data.params["train.workers"] == "2"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_accuracy")] == [0, 1]
    for key in ("test_accuracy", "test_auc"):
        assert 0.5 < run.data.metrics[key] <= 1.0  # better than chance after 2 epochs
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "dataset"} <= artifacts
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(result.model_uri)
    import torch

    probs = model(torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]))
    np.testing.assert_allclose(probs.sum(1).detach().numpy(), 1.0, rtol=1e-5)

    # robustness and explanations of the finished run, logged back to it
    from advorch.trainers.analysis import evaluate_run, explain_run

    rows = evaluate_run(result.run_id, ["at", "pgd"], [0.5, 4.0], uri, steps=3)
    acc = {(r["attack"], r["epsilon"]): r["accuracy"] for r in rows}
    assert acc[("clean", 0.0)] == pytest.approx(run.data.metrics["test_accuracy"])
    assert acc[("at", 4.0)] < acc[("at", 0.5)] <= acc[("clean", 0.0)]
    assert acc[("pgd", 4.0)] <= acc[("at", 4.0)] + 0.02
    items, eps, classes = explain_run(result.run_id, n=3, mlflow_uri=uri)
    assert len(items) == 3 and eps == 1.0 and classes == ["neg", "pos"]
    assert all(len(x.perturbed["at"]) == len(x.tokens) == len(x.attention) for x in items)
    logged = {a.path for d in ("robustness", "explain") for a in client.list_artifacts(result.run_id, d)}
    assert logged == {"robustness/robustness.json", "robustness/robustness.png",
                      "explain/explanations.html", "explain/attention.png", "explain/saliency.png"}
    assert "robust_pgd_eps4_accuracy" in client.get_run(result.run_id).data.metrics

    # promotion / suppression on the LSTM-Attention's pooled units (binary: the target is the other class)
    from advorch.trainers.analysis import pse_run
    from advorch.trainers.pse import TYPES

    pse = pse_run(result.run_id, ["pgd"], [0.5, 4.0], uri, n=96, steps=3, fractions=(0.1,))
    success = {s["epsilon"]: s["success"] for s in pse.summaries}
    assert success[0.5] <= success[4.0] and success[4.0] == pytest.approx(1 - acc[("pgd", 4.0)], abs=0.1)
    for s in pse.summaries:
        assert sum(s[t] for t in TYPES) == pytest.approx(1.0) and s["none"] == 0.0  # successful ones moved
    assert [m["units"] for m in pse.masking] == ["none", "most sensitive", "random"]
    assert pse.masking[0]["clean_accuracy"] == pytest.approx(acc[("clean", 0.0)], abs=0.1)  # first 96 rows
    assert {"pse/report.html", "pse/attention.png", "pse/scatter.png", "pse/masking.png", "pse/pse.json"} <= {
        a.path for a in client.list_artifacts(result.run_id, "pse")}

    # the registry: register with alias candidate, load by alias, predict text and shards
    from advorch.tuning.registry import list_models, predict, promote, register

    assert register(uri, result.run_id, "mr-test") == 1
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a gorgeous , witty film .\n\nthe plot is dull .\n", encoding="utf-8")
    preds = predict(uri, "mr-test@candidate", str(sentences))
    assert [p.text for p in preds] == ["a gorgeous , witty film .", "the plot is dull ."]
    assert all(p.label in ("neg", "pos") and abs(sum(p.probabilities) - 1) < 1e-3 for p in preds)
    on_shards = predict(uri, "models:/mr-test@candidate", str(mr_shards), split="val", limit=7)
    assert len(on_shards) == 7
    promote(uri, "mr-test", 1, "champion")
    assert list_models(uri) == [{"name": "mr-test", "version": 1, "aliases": ["candidate", "champion"],
                                 "run_id": result.run_id, "status": "READY"}]


def test_same_seed_same_training(ray_local, mr_shards, tmp_path):
    """Seeded: two Ray runs with one seed (two workers each) give identical metrics; another seed
    starts from other weights (checked without a third Ray run)."""
    import torch

    from advorch.pipelines.spec import read_spec
    from advorch.trainers.launch import fit
    from advorch.trainers.loop import build

    def cfg(seed: int):
        return _cfg(tmp_path, 'regime.name="at"', "train.epochs=1", f"train.seed={seed}",
                    "train.batch_size=256")

    def history(seed: int) -> list[float]:
        result = fit(cfg(seed), str(mr_shards))
        assert result.error is None
        return [result.metrics["train_loss"], result.metrics["val_loss"]]

    first = history(3)
    assert history(3) == first
    spec = read_spec(str(mr_shards))
    weights = [build(cfg(seed), spec)[0].state_dict() for seed in (3, 3, 4)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
