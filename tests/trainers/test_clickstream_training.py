"""The sequence trainers, unchanged, on clickstream session shards (the real DIGINETICA
sample): page embeddings from the dataset, class weights for the skewed label, every
regime, and the real `advorch train` on Ray with its MLflow run."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch

from advorch.pipelines.shards import read_manifest, read_side_file
from advorch.pipelines.spec import spec_from_manifest
from advorch.trainers.loop import setup_worker, train_epoch
from advorch.trainers.tasks import Classification
from tests.conftest import ROOT, digi_config, run_cli

REGIMES = {
    "clean": [], "at": ["regime.epsilon=2.0"], "attention_at": [],
    "attention_at+sf": ['regime.filter="sf"'], "attention_at+cat": ['regime.filter="cat"'],
    "vat": ['regime.name="vat"'], "at_vat+cat": ['regime.name="at_vat"', 'regime.filter="cat"'],
}


def small(digi_shards, *more: str):
    return digi_config(digi_shards, "model.hidden_dim=16", "train.epochs=1", "train.batch_size=64", *more)


def test_model_starts_from_the_dataset_page_embeddings(digi_shards) -> None:
    w = setup_worker(small(digi_shards), str(digi_shards))
    stored = np.load(io.BytesIO(read_side_file(str(digi_shards), "embeddings.npy")))
    assert torch.equal(w.model.embedding.weight.detach(), torch.from_numpy(stored))
    rand = setup_worker(small(digi_shards, 'model.init_embeddings="random"'), str(digi_shards))
    assert not torch.equal(rand.model.embedding.weight.detach(), torch.from_numpy(stored))


def test_embedding_size_mismatch_names_the_fix(digi_shards) -> None:
    with pytest.raises(ValueError, match=r"set model.embedding_dim = 120 or model.init_embeddings"):
        setup_worker(small(digi_shards, "model.embedding_dim=32"), str(digi_shards))


def test_class_weights_balance_the_train_split(digi_shards) -> None:
    m = read_manifest(str(digi_shards))
    n = m["splits"]["train"]["classes"]
    spec = spec_from_manifest(m, str(digi_shards))
    weights = Classification.from_spec(spec, class_weights=True).class_weight
    total = n["no_purchase"] + n["purchase"]
    assert weights.tolist() == pytest.approx([total / (2 * n["no_purchase"]), total / (2 * n["purchase"])])
    # each class then carries half of the total weight
    assert float(weights[0] * n["no_purchase"]) == pytest.approx(float(weights[1] * n["purchase"]))
    w = setup_worker(small(digi_shards, "train.class_weights=true"), str(digi_shards))
    assert torch.equal(w.task.class_weight, weights)


@pytest.mark.parametrize("regime", list(REGIMES))
def test_every_sequence_regime_trains_on_sessions(digi_shards, regime) -> None:
    name = regime.split("+")[0]
    cfg = small(digi_shards, f'regime.name="{name}"', "train.class_weights=true", *REGIMES[regime])
    w = setup_worker(cfg, str(digi_shards))
    before = w.model.embedding.weight.detach().clone()
    metrics = train_epoch(w, 0)
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_auc"] <= 1.0
    assert not torch.equal(before, w.model.embedding.weight.detach())  # the embedding is fine-tuned


@pytest.mark.ray
def test_advorch_train_on_diginetica_records_test_auc(digi_shards, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("train", str(ROOT / "configs" / "diginetica.toml"), "--data", str(digi_shards),
                   "--workers", "2", "--mlflow-uri", uri, "--set", "train.epochs=2",
                   "--set", "model.hidden_dim=16", "--set", "mlflow.log_model=false",
                   "--set", f'train.storage="{tmp_path / "runs"}"', cwd=tmp_path,
                   env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = MlflowClient(uri).get_run(re.search(r"MLflow run: (\w+)", proc.stdout).group(1))
    assert run.info.status == "FINISHED"
    assert 0.0 <= run.data.metrics["test_auc"] <= 1.0 and "best_val_auc" in run.data.metrics
    assert run.data.params["train.class_weights"] == "True"
