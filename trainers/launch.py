"""Driver side of a training run: Ray Train fit, test evaluation, MLflow run.

One MLflow run per training: the resolved config as params, per-epoch metrics
(logged by rank 0 while training), `test_accuracy` / `test_auc` of the best
validation epoch, the model with an input example, config and vocabulary.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advorch.config import ExperimentConfig, RegimeConfig


class TrainingError(RuntimeError):
    """Training failed inside a Ray worker: the worker's own error (rank, type, message and
    where in advorch it was raised), out of Ray's wrappers and tracebacks."""


def worker_error(error: BaseException) -> TrainingError | None:
    """The error a Ray Train worker (or its controller) raised, as one clean TrainingError;
    None when `error` is not a training failure."""
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(error, WorkerGroupError) and error.worker_failures:
        rank = min(error.worker_failures)
        cause, where = error.worker_failures[rank], f"Ray worker rank {rank}"
    elif isinstance(error, ControllerError):
        cause, where = error.controller_failure, "the Ray Train controller"
    else:
        return None
    trace = getattr(error, "_error_message", "")  # Ray's snippet of the worker's traceback
    while getattr(cause, "cause", None) is not None:  # RayTaskError / RayActorError wrappers
        trace += getattr(cause, "traceback_str", "")
        cause = cause.cause
    trace += "".join(traceback.format_tb(cause.__traceback__))
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', trace)
              if "site-packages" not in f[0]]  # the last frame of ours, not torch's
    at = f" (at {Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]})" if frames else ""
    first = (str(cause).strip().splitlines() or [""])[0]
    return TrainingError(f"training failed on {where}: {type(cause).__name__}: {first}{at}")


@dataclass
class TrainResult:
    run_id: str | None
    tracking_uri: str | None
    metrics: dict[str, float]
    checkpoint_path: str
    model_uri: str | None


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray instance.

    Worker logs stay in Ray's log folder (the driver shows progress from the epoch
    reports instead): without the dashboard, Ray's own messages would flood it.
    `dashboard=True` for Tune: the dashboard serves the State API, without which a trial
    stopped by ASHA never releases its placement group (ENVIRONMENT.md).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # "local": never join a cluster `ray start` left on this host without being asked
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False)


def fit(cfg: ExperimentConfig, data: str, *, run_id: str | None = None,
        tracking_uri: str | None = None, name: str | None = None, storage: str | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, callbacks: list[Any] | None = None,
        cpus_per_worker: float | None = None):
    """`fit_once`, or two stages: with regime.schedule = "offline" MMAT's Algorithm 1 (Chen et
    al.; trainers/augment.py): a clean fit, then a fit from its best weights on the train split
    plus its adversarial copy crafted once with that model; with regime.warm_start a clean fit,
    then the regime from its best weights (AMR's Algorithm 1 line 1). Returns the last
    stage's ray.train.Result; the epochs of both reach MLflow as one series, and `callbacks`
    (Tune's report) see the second stage only."""
    once = dict(run_id=run_id, tracking_uri=tracking_uri, storage=storage, on_epoch=on_epoch,
                cpus_per_worker=cpus_per_worker)
    offline = cfg.regime.schedule == "offline"  # an mmat key: `check` refuses it elsewhere
    if not offline and not cfg.regime.warm_start:
        return fit_once(cfg, data, name=name, callbacks=callbacks, **once)
    from advorch.trainers.augment import settings

    name = name or f"{cfg.name}-{uuid.uuid4().hex[:8]}"
    clean = cfg.model_copy(update={"regime": RegimeConfig()})
    first = fit_once(clean, data, name=f"{name}-stage1", **once)
    if first.error:
        raise first.error
    extra = {"initial": load_checkpoint_dir(first.checkpoint)["state"]["best_model"],
             "step_offset": first.metrics["epoch"] + 1}
    if offline:  # MMAT: both stages train on the plain loss, the second on train ∪ adversarial
        return fit_once(clean, data, name=f"{name}-stage2", callbacks=callbacks,
                        extra={**extra, "adversarial": settings(cfg.regime)}, **once)
    return fit_once(cfg, data, name=f"{name}-stage2", callbacks=callbacks, extra=extra, **once)


def fit_once(cfg: ExperimentConfig, data: str, *, run_id: str | None = None,
             tracking_uri: str | None = None, name: str | None = None, storage: str | None = None,
             on_epoch: Callable[[dict[str, Any]], None] | None = None, callbacks: list[Any] | None = None,
             cpus_per_worker: float | None = None, extra: dict[str, Any] | None = None):
    """Run `train_worker` on Ray Train workers; returns the ray.train.Result.

    `name` under `storage` (default: cfg.train.storage) holds the checkpoints; reusing a
    name continues from its last checkpoint. `on_epoch` is called in the driver with
    each epoch's metrics as rank 0 reports them; `callbacks` are Ray Train callbacks.
    `cpus_per_worker` (default 1; none with GPUs) is less than 1 inside a Tune trial, whose
    own share of a CPU would otherwise leave a whole CPU short.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from advorch.trainers.device import backend
    from advorch.trainers.loop import train_worker

    workers = cfg.train.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    storage = dataset_uri(storage or cfg.train.storage)
    name = name or f"{cfg.name}-{uuid.uuid4().hex[:8]}"  # fresh: a reused name resumes
    progress = f"{storage}/{name}/progress.jsonl"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"experiment": cfg.model_dump(), "data": data, "progress": progress,
                           "run_id": run_id, "tracking_uri": tracking_uri, **(extra or {})},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=cfg.train.gpus,
            resources_per_worker=None if cpus_per_worker is None else {"CPU": cpus_per_worker}),
        torch_config=TorchConfig(backend=backend(cfg.train.gpus)),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    if on_epoch is None:
        return trainer.fit()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(trainer.fit)
        seen = 0
        while seen >= 0:
            done = running.done()
            seen = _follow(progress, seen, on_epoch)
            if done:
                break
            time.sleep(0.5)
        return running.result()


def _follow(uri: str, seen: int, on_epoch: Callable[[dict[str, Any]], None]) -> int:
    """Call on_epoch for the progress lines after the first `seen`; return the new count."""
    import fsspec

    try:
        with fsspec.open(uri, "r") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return seen
    for line in lines[seen:]:
        on_epoch(json.loads(line))
    return len(lines)


def test_metrics(cfg: ExperimentConfig, data: str,
                 model_state: dict[str, Any]) -> tuple[dict[str, float], Any, Any, Any]:
    """test_* metrics of a trained state on the whole test split; (metrics, model, task, test
    split as TensorData)."""
    import torch

    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice
    from advorch.trainers.loop import build

    spec = read_spec(data)
    model, task, _ = build(cfg, spec, init_weights=False)
    model.load_state_dict(model_state)
    test = load_slice(spec, "test", 0, 1, cfg.model.max_length)
    metrics = task.evaluate(model, test, 256, torch.device("cpu"), prefix="test_")
    return metrics, model, task, test


def train(cfg: ExperimentConfig, data: str | None = None, *, ray_address: str | None = None,
          mlflow_uri: str | None = None, track: bool = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Fit on Ray, evaluate the best epoch on test, record everything in MLflow."""
    from advorch import tracking

    data = dataset_uri(data or cfg.data.output)
    manifest = read_dataset_manifest(data)
    check_experiment(cfg, data)
    init_ray(ray_address)
    uri = run_id = None
    if track:
        uri = tracking.resolve_uri(mlflow_uri or cfg.mlflow.tracking_uri)
        run_id = tracking.start_run(uri, cfg.mlflow.experiment, cfg.name, run_params(cfg, manifest),
                                    tags=run_tags(cfg, data))
    try:
        try:
            result = fit(cfg, data, run_id=run_id, tracking_uri=uri, on_epoch=on_epoch)
            return finish(cfg, data, manifest, result, uri, run_id)
        except Exception as e:
            clean = worker_error(e)
            if clean is None:
                raise
            raise clean from e
    except BaseException as e:
        if track:  # the reason on the run: the UI's FAILED runs say why
            tracking.set_tag(uri, run_id, "advorch.error", f"{type(e).__name__}: {e}"[:4000])
            tracking.end_run(uri, run_id, status="FAILED")
        raise


def dataset_uri(data: str) -> str:
    """A location as every process (and every node) must see it: URIs as they are, local
    paths absolute. Used for datasets, checkpoint storage and sweeps."""
    return data if "://" in data else str(Path(data).expanduser().absolute())


def check_experiment(cfg: ExperimentConfig, data: str | None = None) -> None:
    """Refuse, before Ray starts, an experiment that cannot run (trainers.adversarial.check).

    Raises:
        ConfigError: every problem, each naming the keys and the fix.
    """
    from advorch.config import ConfigError
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.adversarial import check
    from advorch.trainers.tasks import task_problems

    problems = check(cfg)  # the config alone first: a typo needs no dataset to be found
    if not problems and data is not None:
        spec = read_spec(data)
        problems = task_problems(cfg, spec) + check(cfg, spec)
    if problems:
        raise ConfigError(f"experiment {cfg.name!r} cannot run:\n  " + "\n  ".join(problems))


def read_dataset_manifest(data: str) -> dict[str, Any]:
    from advorch.pipelines.shards import read_manifest

    manifest = read_manifest(data)
    if manifest is None:
        raise FileNotFoundError(f"{data} holds no manifest.json: run `advorch preprocess` first")
    return manifest


def run_params(cfg: ExperimentConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """MLflow params of a training run: the resolved config and the dataset build."""
    return {**cfg.flat(), "data.build_id": manifest["build_id"]}


def run_tags(cfg: ExperimentConfig, data: str) -> dict[str, str]:
    return {"advorch.dataset": data, "advorch.regime": cfg.regime.name}


def log_curves(uri: str, run_id: str) -> None:
    """plots/training_curves.png: the run's losses and validation metrics per epoch."""
    from advorch import tracking
    from advorch.trainers.curves import curves_figure, histories

    with tempfile.TemporaryDirectory() as tmp:
        if path := curves_figure(histories(uri, run_id), Path(tmp) / "training_curves.png"):
            tracking.log_file(uri, run_id, str(path), "plots")


def finish(cfg: ExperimentConfig, data: str, manifest: dict[str, Any], result: Any,
           uri: str | None, run_id: str | None) -> TrainResult:
    """After a fit: test metrics of the best epoch, then (tracked) artifacts, model, run ended."""
    from advorch import tracking
    from advorch.pipelines.shards import read_side_file

    if result.error:
        raise result.error
    saved = load_checkpoint_dir(result.checkpoint)
    metrics, model, task, test = test_metrics(cfg, data, saved["state"]["best_model"])
    metrics["best_epoch"] = saved["state"]["best_epoch"]
    metrics["best_" + cfg.train.metric] = saved["state"]["best_metric"]
    model_uri = None
    if run_id:
        tracking.log_metrics(uri, run_id, {k: v for k, v in metrics.items() if k != "best_epoch"})
        tracking.set_tag(uri, run_id, "advorch.best_epoch", str(metrics["best_epoch"]))
        log_curves(uri, run_id)
        tracking.log_dict(uri, run_id, cfg.model_dump(), "config.json")
        tracking.log_dict(uri, run_id, manifest, "dataset/manifest.json")
        for side in ("vocab.json", "users.json", "items.json"):  # what turns ids into inputs and back
            if side in manifest.get("side_files", {}):
                text = read_side_file(data, side, manifest).decode()
                tracking.log_text(uri, run_id, text, f"dataset/{side}")
        if cfg.mlflow.log_model:
            layout = test.serving_layout()  # several inputs: served packed in one array
            model_uri = tracking.log_model(uri, run_id, task.serving(model.eval(), layout),
                                           test.serving_inputs(4).numpy(),
                                           {"classes.json": manifest["classes"],
                                            **({"serving_layout.json": layout} if layout else {})})
            tracking.set_tag(uri, run_id, "advorch.model_uri", model_uri)
        tracking.end_run(uri, run_id)
    return TrainResult(run_id, uri, metrics, result.checkpoint.path, model_uri)


def load_checkpoint_dir(checkpoint) -> dict[str, Any]:
    from advorch.trainers.loop import load_checkpoint

    with checkpoint.as_directory() as d:
        return load_checkpoint(d)
