"""The second family end to end on Ray: real digits → image CNN under FGSM-AT + input-gradient
regularisation, white-box and transferred FGSM evaluation, saliency maps, all in MLflow."""

import os
from pathlib import Path

import pytest

from advorch.config import load_config
from tests.conftest import run_cli

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from advorch.pipelines import images

    out = tmp_path_factory.mktemp("digits") / "shards"
    cfg = load_config(None, ['data.kind="images"', 'data.images.source="digits"', "data.test_fraction=0.5",
                             f'data.output="{out}"'])
    images.run(cfg.data)
    return out


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [
        'name="digits"', 'model.name="image_cnn"', "model.channels=[8, 16]", "model.dropout=0.0",
        "train.batch_size=32", "train.workers=2", "train.epochs=8", "train.lr=0.01", "train.patience=50",
        f'train.storage="{tmp_path / "runs"}"', 'mlflow.experiment="digits"', *extra])


def test_image_cnn_trains_with_fgsm_and_input_gradient_and_is_evaluated_under_transfer(
        ray_local, digits, tmp_path):
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

    from advorch import tracking
    from advorch.trainers.analysis import evaluate_run, explain_run
    from advorch.trainers.launch import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    clean = train(_cfg(tmp_path, 'regime.name="clean"'), str(digits), mlflow_uri=uri)
    robust = train(_cfg(tmp_path, 'regime.name="fgsm+input_gradient"', "regime.epsilon=0.1",
                        'regime.ig_method="finite_difference"', "regime.lam_ig=1.0", "regime.fd_step=0.05"),
                   str(digits), mlflow_uri=uri)
    client = MlflowClient(uri)
    for r in (clean, robust):
        assert r.metrics["test_accuracy"] > 0.5  # 10 classes: far above chance after 8 short epochs
    history = client.get_metric_history(robust.run_id, "train_ig_penalty")
    assert len(history) == 8 and all(np.isfinite(m.value) and m.value >= 0 for m in history)
    assert client.get_metric_history(robust.run_id, "train_adv_loss")

    model = tracking.load_model(uri, robust.model_uri)  # the logged model takes pixels in [0, 1]
    probs = model(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))

    rows = evaluate_run(robust.run_id, ["fgsm"], [0.1, 0.3], uri, transfer_from=[clean.run_id])
    acc = {(r["source"], r["attack"], r["epsilon"]): r["accuracy"] for r in rows}
    white = {k[1:]: v for k, v in acc.items() if k[0] == "white-box"}
    moved = {k[1:]: v for k, v in acc.items() if k[0] == clean.run_id}
    assert white[("clean", 0.0)] == pytest.approx(robust.metrics["test_accuracy"])
    assert white[("fgsm", 0.3)] < white[("fgsm", 0.1)] <= white[("clean", 0.0)]
    assert moved[("fgsm", 0.3)] < moved[("clean", 0.0)]  # the clean model's attack transfers
    metrics = client.get_run(robust.run_id).data.metrics
    assert f"transfer_{clean.run_id[:8]}_fgsm_eps0.1_accuracy" in metrics
    assert "robust_fgsm_eps0.3_accuracy" in metrics

    items, _, classes = explain_run(robust.run_id, n=4, mlflow_uri=uri)
    assert len(items) == 4 and classes == [str(d) for d in range(10)]
    assert all(x["gradient_l1"] > 0 for x in items)
    logged = {a.path for d in ("robustness", "explain") for a in client.list_artifacts(robust.run_id, d)}
    assert {"robustness/robustness.png", f"robustness/transfer-from-{clean.run_id}.png",
            "robustness/robustness.json", "explain/saliency.png"} <= logged

    # `advorch analyze pse`, targeted: CAMs of clean vs adversarial digits, masking, the table printed
    proc = run_cli("analyze", "pse", clean.run_id, "--attack", "fgsm", "--eps", "0.1,0.3", "--targeted",
                   "--n", "300", "--mlflow-uri", uri, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "suppression" in proc.stdout and "most sensitive" in proc.stdout
    metrics = client.get_run(clean.run_id).data.metrics
    assert metrics["pse_fgsm_eps0.1_success"] < metrics["pse_fgsm_eps0.3_success"]
    assert sum(metrics[f"pse_fgsm_eps0.3_{t}"] for t in ("suppression", "balanced", "promotion")) == \
        pytest.approx(1.0, abs=1e-6)
    report = tracking.load_artifact_dict(uri, clean.run_id, "pse/pse.json")
    assert len(report["sensitivity"]) == 16  # the second conv block's channels, pooled
    assert {"pse/cam.png", "pse/report.html"} <= {a.path for a in client.list_artifacts(clean.run_id, "pse")}


def test_transfer_between_embedding_models_is_refused(mr_shards):
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice
    from advorch.trainers.loop import build
    from advorch.trainers.robustness import robustness

    cfg = load_config(None, ["model.hidden_dim=8", "model.embedding_dim=8"])
    spec = read_spec(str(mr_shards))
    a, task, _ = build(cfg, spec, init_weights=False)
    b, _, _ = build(cfg, spec, init_weights=False)
    with pytest.raises(ValueError, match="perturb their own embeddings"):
        robustness(a, task, load_slice(spec, "val"), ["at"], [1.0], source=b)
