"""`advorch tune`: Ray Tune sweeps on MR, nested MLflow runs, the registry, resume after a kill.

The sweeps run the real console script (its own local Ray with the dashboard, which
ASHA needs) against a sqlite store and against a real `mlflow server` on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ADVORCH, mr_config, run_cli

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# two trials (ε): the fewest that show side-by-side trials, ASHA, a best pick and a resume
GRID = {(1.0, 0.4), (8.0, 0.4)}
SPACE = ('[tune.space]\n"regime.epsilon" = { grid = [1.0, 8.0] }\n'
         '"regime.keep_ratio" = { grid = [0.4] }\n')


def sweep_config(tmp_path: Path, shards: Path, **tune: object) -> Path:
    """A 2-trial sweep (ε, K% fixed) of a small attention-aware AT + SF model, 1 worker per trial."""
    path = mr_config(tmp_path / "sweep.toml", shards,
                     model={"hidden_dim": 16, "embedding_dim": 16},
                     regime={"name": "attention_at", "filter": "sf"},
                     train={"epochs": 2, "batch_size": 64, "lr": 0.004, "workers": 1,
                            # a URI, as on a cluster (file:// here; s3:// there)
                            "storage": (tmp_path / "runs").as_uri()},
                     mlflow={"experiment": "sweep"},
                     tune={"register_as": "mr-sweep", **tune})
    path.write_text(path.read_text() + SPACE)
    return path


def sweep_runs(uri: str) -> tuple[object, list[object]]:
    """(parent run, child runs) of the newest sweep in experiment 'sweep'."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep")
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "advorch.sweep" in r.data.tags]
    if not parents:
        return None, []
    parent = max(parents, key=lambda r: r.info.start_time)
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def check_sweep(uri: str, tmp_path: Path, cli_predict: bool = True) -> None:
    """One parent, a child per grid point nested and all ended, best tagged and registered as
    candidate, which loads by alias and predicts."""
    import mlflow
    import torch

    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert len(children) == len(GRID)
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    drawn = {(float(c.data.params["regime.epsilon"]), float(c.data.params["regime.keep_ratio"]))
             for c in children}
    assert drawn == GRID
    finished = [c for c in children if c.info.status == "FINISHED"]
    best = max(finished, key=lambda c: c.data.metrics["best_val_accuracy"])
    assert parent.data.tags["advorch.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["best_val_accuracy"]
    for c in children:
        if c.info.status == "KILLED":
            assert c.data.tags["advorch.end_reason"].startswith("stopped early")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias("mr-sweep", "candidate")
    assert mv.run_id == best.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tune/sensitivity")}
    assert "tune/sensitivity/best_val_accuracy_vs_regime.epsilon.png" in artifacts
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/mr-sweep@candidate", map_location="cpu")
    probs = model(torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]))
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))

    if not cli_predict:
        return
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a gorgeous , witty film .\nthe plot is dull .\n", encoding="utf-8")
    proc = run_cli("registry", "predict", "mr-sweep@candidate", str(sentences), "--mlflow-uri", uri,
                   env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == 2


@pytest.mark.ray
def test_sweep_on_sqlite_with_asha(mr_shards, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = sweep_config(tmp_path, mr_shards, scheduler="asha", grace_period=1)
    proc = run_cli("tune", str(cfg), "--mlflow-uri", uri, env=ENV, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "models:/mr-sweep@candidate" in proc.stdout
    check_sweep(uri, tmp_path)
    # max_concurrent 0 → as many 1-worker trials as CPUs: with 2 or more, some ran side by side
    _, children = sweep_runs(uri)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    overlapped = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert overlapped or (os.cpu_count() or 1) < 2


@pytest.mark.ray
def test_sweep_on_mlflow_server_resumes_after_driver_kill(mr_shards, tmp_path, mlflow_server):
    """Kill the sweep driver once a trial has finished; `--resume` keeps finished trials."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_server
    cfg = sweep_config(tmp_path, mr_shards, scheduler="fifo", max_concurrent=1)
    driver = subprocess.Popen([ADVORCH, "tune", str(cfg), "--mlflow-uri", uri], cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, before = time.time() + 300, []
    while time.time() < deadline and not before:
        assert driver.poll() is None, "the sweep ended before it could be killed"
        before = [c for c in sweep_runs(uri)[1] if c.info.status == "FINISHED"]
        time.sleep(1)
    assert before, "no trial finished within 300 s"
    driver.kill()  # SIGKILL: no cleanup runs in the driver
    driver.wait()
    time.sleep(3)
    os.killpg(driver.pid, signal.SIGKILL)  # what is left of its local Ray instance
    parent, children = sweep_runs(uri)
    assert parent.info.status == "RUNNING"
    assert len(children) < len(GRID) or any(c.info.status == "RUNNING" for c in children), \
        "every trial was over at the kill: nothing left to resume"
    client = MlflowClient(uri)
    history = {c.info.run_id: (c.info.end_time, len(client.get_metric_history(c.info.run_id, "val_loss")))
               for c in before}

    proc = run_cli("tune", str(cfg), "--resume", "--mlflow-uri", uri, env=ENV, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    parent_after, children = sweep_runs(uri)
    assert parent_after.info.run_id == parent.info.run_id
    assert len({c.data.tags["advorch.trial_id"] for c in children}) == len(children) == len(GRID)
    for run_id, (end_time, epochs) in history.items():  # not rerun: untouched
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.end_time == end_time
        assert len(client.get_metric_history(run_id, "val_loss")) == epochs
    check_sweep(uri, tmp_path, cli_predict=False)
