"""Real clusters on loopback: a multi-node Ray cluster (`ray start`) that takes a job through
`advorch submit`, loses a worker node mid-training and finishes from the last checkpoint,
logging and registering its model on a real `mlflow server`; and a real Dask scheduler with
two worker processes that builds the same dataset as a local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import digi_config, mr_config, run_cli
from tests.processes import RayCluster, env, kill, start_dask_cluster, wait_for

pytestmark = pytest.mark.slow
EPOCHS = 4  # the job's; a node is killed after the first checkpoint


@pytest.fixture
def ray_cluster(tmp_path):
    """Head (0 CPUs) + three 1-CPU worker nodes, each `ray start` in its own process group."""
    cluster = RayCluster(tmp_path)
    cluster.start_head()
    try:
        for n, name in enumerate(("node_a", "node_b", "node_c"), start=2):
            cluster.add_worker(name)
            cluster.wait_nodes(n)  # one at a time: joining all at once overloads a 2-core GCS
        yield cluster
    finally:
        cluster.stop()


def _progress_lines(storage: Path) -> list[dict]:
    files = list(storage.glob("*/progress.jsonl"))
    return [json.loads(x) for f in files for x in f.read_text().splitlines() if x.strip()]


def _registered_checkpoints(storage: Path) -> int:
    """Checkpoints Ray Train's controller has registered (a folder alone may still be in flight)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except json.JSONDecodeError:
            return 0  # being written
    return 0


def _train_workers(cluster: RayCluster) -> list[str]:
    """Node names of the alive Ray Train worker actors."""
    from ray.util.state import list_actors

    names = cluster.node_names()
    actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000)
    return sorted(names.get(a["node_id"], "?") for a in actors if a["class_name"] == "RayTrainWorker")


def test_submitted_job_spreads_over_nodes_survives_node_loss_and_registers_on_mlflow_server(
        ray_cluster, mlflow_server, mr_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "checkpoints"
    cfg = mr_config(tmp_path / "job.toml", mr_shards,
                    model={"hidden_dim": 32, "embedding_dim": 32, "max_length": 50},
                    regime={"name": "at", "epsilon": 2.0},
                    train={"epochs": EPOCHS, "patience": 50, "batch_size": 32, "workers": 2,
                           "max_failures": 3},
                    mlflow={"experiment": "cluster"})
    # shards and checkpoints by URI, as every node of a real cluster would reach them
    proc = run_cli("submit", str(cfg), "--address", ray_cluster.address, "--data", mr_shards.as_uri(),
                   "--mlflow-uri", mlflow_server, "--set", f'train.storage="{storage.as_uri()}"', env=env(),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split("submitted ")[1].split(":")[0].strip()
    assert job_id.startswith("advorch-mr-test-train-")

    # the two workers run on two different worker nodes (the head has no CPU)
    wait_for(lambda: len(_train_workers(ray_cluster)) == 2, "2 Ray Train workers alive", timeout=180)
    placed = _train_workers(ray_cluster)
    assert len(set(placed)) == 2 and "head" not in placed, placed

    # once Ray Train has registered a checkpoint, lose one of the workers' nodes (SIGKILL, whole node)
    wait_for(lambda: _registered_checkpoints(storage) >= 1, "first epoch checkpointed", timeout=240)
    victim = placed[0]
    kill(ray_cluster.nodes[victim])

    follow = run_cli("jobs", "logs", job_id, "--address", ray_cluster.address, "--follow",
                     env=env(), timeout=600)
    assert follow.returncode == 0, follow.stdout[-3000:] + follow.stderr[-3000:]
    assert f"job {job_id}: SUCCEEDED" in follow.stdout, follow.stdout[-3000:]
    assert "test metrics" in follow.stdout and "test_accuracy" in follow.stdout  # the job's own output
    status = run_cli("jobs", "status", job_id, "--address", ray_cluster.address, env=env())
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    listed = run_cli("jobs", "list", "--address", ray_cluster.address, env=env())
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    stop = run_cli("jobs", "stop", job_id, "--address", ray_cluster.address, env=env())
    assert stop.returncode == 0 and "already ended" in stop.stdout

    # the first worker group stopped mid-run; the second continued from a checkpoint the
    # first had written (the kill takes effect within a few seconds: an epoch may still end)
    lines = _progress_lines(storage)
    epochs = [x["epoch"] for x in lines]
    restart = next((i for i, x in enumerate(lines) if x["resumed_from_epoch"] > 0), None)
    assert restart is not None, f"no epoch after a restart from a checkpoint: {epochs}"
    resumed = lines[restart]["resumed_from_epoch"]
    assert restart < EPOCHS and 1 <= resumed <= restart, epochs
    assert epochs[:restart] == list(range(restart)) and epochs[restart:] == list(range(resumed, EPOCHS))

    # a direct run on the same cluster, this process as the driver (--ray-address)
    direct = run_cli("train", str(cfg), "--ray-address", f"127.0.0.1:{ray_cluster.gcs_port}",
                     "--data", str(mr_shards), "--mlflow-uri", mlflow_server,
                     "--set", "train.epochs=1", "--set", f'train.storage="{tmp_path / "direct"}"',
                     env=env(), cwd=tmp_path, timeout=300)
    assert direct.returncode == 0, direct.stdout[-3000:] + direct.stderr[-3000:]
    assert "test_accuracy" in direct.stdout

    # the result is on the MLflow server; register it there and load it by alias
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    run = min(runs, key=lambda r: r.info.start_time)  # the job's
    assert 0.5 < run.data.metrics["test_accuracy"] <= 1.0
    # bookkeeping is a tag, not a metric curve; the curves are a plot
    assert int(run.data.tags["advorch.resumed_from_epoch"]) == resumed
    assert "resumed_from_epoch" not in run.data.metrics and "best_epoch" not in run.data.metrics
    assert 0 <= int(run.data.tags["advorch.best_epoch"]) < EPOCHS
    assert "plots/training_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    reg = run_cli("registry", "register", run.info.run_id, "mr-cluster", "--mlflow-uri", mlflow_server)
    assert reg.returncode == 0, reg.stderr
    pred = run_cli("registry", "predict", "mr-cluster@candidate", str(mr_shards), "--limit", "3",
                   "--mlflow-uri", mlflow_server)
    assert pred.returncode == 0, pred.stderr
    rows = [line.split() for line in pred.stdout.strip().splitlines()]
    assert len(rows) == 3 and all(r[0] in ("neg", "pos") for r in rows)
    assert all(float(r[1]) + float(r[2]) == pytest.approx(1.0, abs=2e-3) for r in rows)


def test_submit_names_an_unreachable_cluster(tmp_path, mr_shards):
    cfg = mr_config(tmp_path / "job.toml", mr_shards)
    proc = run_cli("submit", str(cfg), "--address", "http://127.0.0.1:9", env=env(), timeout=120)
    assert proc.returncode == 1
    assert "http://127.0.0.1:9" in proc.stderr and "8265" in proc.stderr


def _dataset(root: Path) -> dict:
    """What a build holds, without build ids or times: splits, rows, classes, part contents."""
    import pyarrow.parquet as pq

    m = json.loads((root / "manifest.json").read_text())
    content = {split: sorted(str(r) for p in s["parts"] for r in pq.read_table(root / p["path"]).to_pylist())
               for split, s in m["splits"].items()}
    return {"rows": m["rows"], "splits": {k: (v["rows"], v["classes"]) for k, v in m["splits"].items()},
            "classes": m["classes"], "sources": [s["blake3"] for s in m["sources"]],
            "quarantine": m["quarantine"]["by_reason"], "params": m["params"], "content": content}


def test_pipelines_on_a_real_dask_cluster_build_what_a_local_run_builds(tmp_path, mr_shards, digi):
    procs, address = start_dask_cluster(tmp_path)
    try:
        mr = mr_config(tmp_path / "mr.toml", tmp_path / "mr-on-cluster")
        proc = run_cli("preprocess", "text", str(mr), "--dask-address", address, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _dataset(tmp_path / "mr-on-cluster") == _dataset(mr_shards)

        from advorch.pipelines import clickstream

        local = tmp_path / "digi-local"
        clickstream.run(digi_config(local).data)  # threads in this process
        remote = tmp_path / "digi-on-cluster"
        clickstream.run(digi_config(remote).data, dask_address=address)
        assert _dataset(remote) == _dataset(local)
    finally:
        for p in procs:
            kill(p)
