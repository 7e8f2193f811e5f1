"""The real `advorch train` command, end to end, for one short epoch."""

import re

import pytest

from tests.conftest import mr_config, run_cli

pytestmark = pytest.mark.ray


def test_advorch_train_runs_and_records_an_mlflow_run(mr_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = mr_config(tmp_path / "mr.toml", mr_shards,
                    model={"hidden_dim": 16, "embedding_dim": 16, "max_length": 24},
                    regime={"name": "at", "epsilon": 2.0},
                    train={"epochs": 1, "batch_size": 128, "storage": str(tmp_path / "runs")},
                    mlflow={"experiment": "cli"})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("train", str(cfg), "--workers", "2", "--mlflow-uri", uri,
                   "--set", "mlflow.log_model=false", cwd=tmp_path,
                   env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                        "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_accuracy" in proc.stdout
    run_id = re.search(r"MLflow run: (\w+)", proc.stdout).group(1)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["regime.epsilon"] == "2.0"
    assert "test_auc" in run.data.metrics


@pytest.mark.parametrize("overrides,message", [
    (['regime.name="vat"', 'regime.filter="cat"'], 'regime.filter = "cat"'),
    (['regime.name="attention_at"', 'model.name="lstm"'], "needs attention"),
])
def test_advorch_train_refuses_an_impossible_regime_before_ray_starts(mr_shards, tmp_path, overrides,
                                                                     message):
    import time

    cfg = mr_config(tmp_path / "mr.toml", mr_shards, train={"storage": str(tmp_path / "runs")})
    t0 = time.perf_counter()
    proc = run_cli("train", str(cfg), *[a for o in overrides for a in ("--set", o)], cwd=tmp_path,
                   env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "cannot run" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()  # nothing started
    assert time.perf_counter() - t0 < 30
