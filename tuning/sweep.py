"""Ray Tune sweeps over the config (`[tune.space]`), nested in MLflow, best model registered.

Ray 2.60 pattern (ENVIRONMENT.md): a Tune *function* trainable (`run_trial`) that fits a
TorchTrainer and forwards its epoch reports with `TuneReportCallback`; the trial itself
holds 0.01 CPU, its Train workers the rest. MLflow: one parent run per sweep, one child
run per trial (tag `mlflow.parentRunId`), created by the trial and ended by it; a trial
ASHA stops is ended KILLED by the driver, so no run is left RUNNING (mlflow#12639).

A sweep lives in `{train.storage}/{name}-sweep-{time}/`: Tune's experiment state, the
Train checkpoints of every trial (`train/trial-{id}`) and `advorch-sweep.json` (config,
dataset, parent run). `resume=True` continues the newest unfinished one: finished trials
are kept, unfinished ones continue from their last epoch checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from advorch import tracking
from advorch.config import ExperimentConfig, SpaceSpec
from advorch.trainers.launch import (
    check_experiment,
    dataset_uri,
    finish,
    fit,
    init_ray,
    read_dataset_manifest,
    run_params,
)

STATE_FILE = "advorch-sweep.json"
TRIAL_CPU = 0.01  # the trial only waits on its Train workers; with_resources rejects 0


class SweepError(RuntimeError):
    """A sweep cannot start or resume; the message says why and what to do."""


@dataclass
class SweepResult:
    sweep_dir: str
    tracking_uri: str
    parent_run_id: str
    trials: list[dict[str, Any]]  # one row per trial: params, metrics, status, run_id
    best: dict[str, Any] | None
    registered: tuple[str, int] | None = None
    plots: list[str] = field(default_factory=list)


def mode_of(metric: str) -> str:
    return "min" if metric.endswith("loss") else "max"


def search_space(space: dict[str, SpaceSpec]) -> dict[str, Any]:
    """The `[tune.space]` table as a Tune param_space keyed by `section.key`."""
    from ray import tune

    makers: dict[str, Callable[[Any], Any]] = {
        "grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    return {key: makers[spec.kind](getattr(spec, spec.kind)) for key, spec in space.items()}


def run_trial(params: dict[str, Any], *, base: dict[str, Any], data: str, uri: str, parent_run_id: str,
              train_storage: str) -> None:
    """One Tune trial: the config with this draw, fitted on Ray Train, tracked as a child run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = ExperimentConfig.model_validate(base).with_values(params)
    trial_id = tune.get_context().get_trial_id()
    manifest = read_dataset_manifest(data)
    run = tracking.find_child(uri, cfg.mlflow.experiment, parent_run_id, trial_id)
    if run is not None and run["status"] == "FINISHED":
        # finished before an interrupted driver could record it: report, do not retrain
        tune.report({k: v for k, v in run["metrics"].items()})
        return
    if run is not None:  # resumed: same child run, training continues from its checkpoint
        run_id = run["run_id"]
        tracking.set_status(uri, run_id, "RUNNING")
    else:
        run_id = tracking.start_run(
            uri, cfg.mlflow.experiment, f"{cfg.name}-{trial_id}", run_params(cfg, manifest),
            tags={"advorch.trial_id": trial_id, "advorch.regime": cfg.regime.name,
                  "advorch.dataset": data, "advorch.sweep_params": json.dumps(params)},
            parent_run_id=parent_run_id)
    try:
        result = fit(cfg, data, run_id=run_id, tracking_uri=uri, name=f"trial-{trial_id}",
                     storage=train_storage, callbacks=[TuneReportCallback()],
                     cpus_per_worker=1 - TRIAL_CPU)  # so N trials of W workers fit N·W CPUs
        finish(cfg, data, manifest, result, uri, run_id)
    except BaseException as e:
        # not ended here: the driver ends it KILLED if the scheduler stopped the trial,
        # FAILED if Tune saw it fail (conclude)
        tracking.set_tag(uri, run_id, "advorch.error", f"{type(e).__module__}.{type(e).__name__}: {e}"[:4000])
        raise


def _storage(storage: str) -> tuple[Any, str]:
    """(filesystem, root) of train.storage: a URI (s3://…, gs://…) or a local folder."""
    import fsspec

    return fsspec.core.url_to_fs(dataset_uri(storage))


def _uri(fs: Any, path: str) -> str:
    """A path of `fs` as Ray and fsspec take it back: plain for local files, else with its protocol."""
    from fsspec.implementations.local import LocalFileSystem

    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _sweep_dirs(storage: str, name: str) -> list[str]:
    fs, root = _storage(storage)
    return sorted(_uri(fs, p.rpartition("/")[0]) for p in fs.glob(f"{root}/{name}-sweep-*/{STATE_FILE}"))


def _write_state(sweep_dir: str, state: dict[str, Any]) -> None:
    fs, path = _storage(sweep_dir)
    fs.pipe_file(f"{path}/.{STATE_FILE}.tmp", json.dumps(state, indent=1).encode())
    fs.mv(f"{path}/.{STATE_FILE}.tmp", f"{path}/{STATE_FILE}")  # a killed driver leaves old or new


def _start(cfg: ExperimentConfig, data: str | None, mlflow_uri: str | None) -> tuple[str, dict[str, Any]]:
    if not cfg.tune.space:
        raise SweepError("the config has no [tune.space]: add e.g. "
                         "tune.space.\"regime.epsilon\" = { grid = [1.0, 4.0] }")
    data = dataset_uri(data or cfg.data.output)
    manifest = read_dataset_manifest(data)
    uri = tracking.resolve_uri(mlflow_uri or cfg.mlflow.tracking_uri)
    name = f"{cfg.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    fs, root = _storage(cfg.train.storage)
    fs.makedirs(f"{root}/{name}", exist_ok=True)  # the name is new: it holds the start time
    sweep_dir = _uri(fs, f"{root}/{name}")
    parent = tracking.start_run(uri, cfg.mlflow.experiment, name, run_params(cfg, manifest),
                                tags={"advorch.sweep": name, "advorch.dataset": data})
    tracking.log_dict(uri, parent, {k: v.model_dump(exclude_none=True) for k, v in cfg.tune.space.items()},
                      "tune/space.json")
    state = {"config": cfg.model_dump(), "data": data, "tracking_uri": uri, "parent_run_id": parent,
             "status": "running"}
    _write_state(sweep_dir, state)
    return sweep_dir, state


def _resume(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    for sweep_dir in reversed(_sweep_dirs(cfg.train.storage, cfg.name)):
        fs, path = _storage(sweep_dir)
        state = json.loads(fs.cat_file(f"{path}/{STATE_FILE}"))
        if state["status"] != "finished":
            tracking.set_status(state["tracking_uri"], state["parent_run_id"], "RUNNING")
            return sweep_dir, state
    raise SweepError(f"no unfinished sweep of {cfg.name!r} under {_uri(*_storage(cfg.train.storage))}: "
                     "start one without --resume")


def check_space(cfg: ExperimentConfig, data: str) -> None:
    """Refuse a sweep whose config, or the first point of its space, cannot run (before Ray).

    Raises:
        SweepError: the problems, each naming the keys and the fix.
    """
    from advorch.config import ConfigError

    first = {k: (spec.grid or spec.choice or spec.uniform or spec.loguniform or spec.randint)[0]
             for k, spec in cfg.tune.space.items()}
    try:
        check_experiment(cfg.with_values(first) if first else cfg, data)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def sweep(cfg: ExperimentConfig, data: str | None = None, *, ray_address: str | None = None,
          mlflow_uri: str | None = None, resume: bool = False,
          on_trial: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Run (or resume) the sweep, then end every child run, pick and register the best trial,
    log the trial table and sensitivity plots on the parent run.

    On resume the config, dataset and MLflow store are those the sweep started with.
    `on_trial` is called in the driver with each finished trial's last result.
    """
    from ray import tune

    if not resume:
        check_space(cfg, dataset_uri(data or cfg.data.output))
    sweep_dir, state = _resume(cfg) if resume else _start(cfg, data, mlflow_uri)
    cfg = ExperimentConfig.model_validate(state["config"])
    uri, parent = state["tracking_uri"], state["parent_run_id"]
    metric, mode = cfg.train.metric, mode_of(cfg.train.metric)
    init_ray(ray_address, dashboard=True)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=state["config"], data=state["data"], uri=uri,
                             parent_run_id=parent, train_storage=f"{sweep_dir}/train"),
        {"cpu": TRIAL_CPU})
    TrialCallback.listener = on_trial
    try:
        if resume:
            tuner = tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True,
                                       restart_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=search_space(cfg.tune.space),
                tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=cfg.tune.num_samples,
                                            # FIFO trials end only by returning, so their actor
                                            # can take the next trial warm (imports, Ray Train
                                            # setup: seconds per trial). Not with ASHA: a trial it
                                            # stops mid-fit cannot reset, and the next one fails.
                                            reuse_actors=cfg.tune.scheduler == "fifo",
                                            scheduler=_scheduler(cfg),
                                            max_concurrent_trials=_max_concurrent(cfg)),
                run_config=tune.RunConfig(name=sweep_dir.rpartition("/")[2],
                                          storage_path=sweep_dir.rpartition("/")[0],
                                          callbacks=[TrialCallback()], verbose=0))
        grid = tuner.fit()
    except BaseException:
        close_children(uri, cfg.mlflow.experiment, parent, "FAILED", "the sweep driver failed")
        tracking.end_run(uri, parent, status="FAILED")
        raise
    finally:
        TrialCallback.listener = None
    result = conclude(cfg, uri, parent, sweep_dir, grid)
    _write_state(sweep_dir, {**state, "status": "finished"})
    return result


def _scheduler(cfg: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: a trial reaching max_t is *stopped*, which would kill
    # it before its test evaluation and model logging
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs + 1,
                         grace_period=cfg.tune.grace_period, reduction_factor=cfg.tune.reduction_factor)


def _max_concurrent(cfg: ExperimentConfig) -> int:
    """As many trials as the cluster holds: each worker takes a CPU (a GPU with train.gpus)."""
    import ray

    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    units = int(ray.cluster_resources().get("GPU" if cfg.train.gpus else "CPU", 1))
    return max(1, units // max(1, cfg.train.workers or units))


class TrialCallback(Callback):
    """Tune driver callback: hands each ended trial's last result to `TrialCallback.listener`.

    The listener is a class attribute, not state: Tune pickles the run config with its
    callbacks (and restores it on resume), and a progress bar does not pickle.
    """

    listener: Callable[[dict[str, Any]], None] | None = None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if TrialCallback.listener:
            TrialCallback.listener({"trial_id": trial.trial_id, **(trial.last_result or {})})

    on_trial_error = on_trial_complete


def close_children(uri: str, experiment: str, parent: str, status: str, reason: str,
                   only: set[str] | None = None) -> None:
    """End the child runs still RUNNING (of the trials in `only`, default all) with `status`:
    their trial was stopped early or died without ending its run."""
    for run in tracking.child_runs(uri, experiment, parent):
        if run["status"] == "RUNNING" and (only is None or run["tags"].get("advorch.trial_id") in only):
            tracking.set_tag(uri, run["run_id"], "advorch.end_reason", reason)
            tracking.end_run(uri, run["run_id"], status=status)


def conclude(cfg: ExperimentConfig, uri: str, parent: str, sweep_dir: str, grid: Any) -> SweepResult:
    """After tuner.fit: close children, table, best trial tagged and registered, plots."""
    from advorch.tuning import plots, registry

    errored = {r.metrics.get("trial_id") for r in grid if r.error is not None}
    close_children(uri, cfg.mlflow.experiment, parent, "FAILED", "trial failed", only=errored)
    close_children(uri, cfg.mlflow.experiment, parent, "KILLED",
                   f"stopped early by {cfg.tune.scheduler.upper()}")
    metric = "best_" + cfg.train.metric
    trials = [{"run_id": r["run_id"], "trial_id": r["tags"].get("advorch.trial_id"), "status": r["status"],
               **json.loads(r["tags"].get("advorch.sweep_params", "{}")), **r["metrics"]}
              for r in tracking.child_runs(uri, cfg.mlflow.experiment, parent)]
    finished = [t for t in trials if t["status"] == "FINISHED" and metric in t]
    best = None
    if finished:
        best = (max if mode_of(cfg.train.metric) == "max" else min)(finished, key=lambda t: t[metric])
    result = SweepResult(sweep_dir, uri, parent, trials, best)
    tracking.log_text(uri, parent, plots.trial_table(trials, list(cfg.tune.space)), "tune/trials.csv")
    with tempfile.TemporaryDirectory() as folder:  # the plots live on the parent run
        for key in cfg.tune.space:
            for name in (metric, "test_accuracy"):
                path = plots.sensitivity(trials, key, name, Path(folder))
                if path:
                    tracking.log_file(uri, parent, str(path), "tune/sensitivity")
                    result.plots.append(path.name)
    if best is not None:
        tracking.set_tag(uri, parent, "advorch.best_run_id", best["run_id"])
        tracking.set_tag(uri, parent, "advorch.best_trial_id", str(best["trial_id"]))
        tracking.log_metrics(uri, parent, {k: best[k] for k in (metric, "test_accuracy", "test_auc")
                                           if k in best})
        if cfg.mlflow.log_model:
            name = cfg.tune.register_as or cfg.name
            result.registered = (name, registry.register(uri, best["run_id"], name, alias="candidate"))
            tracking.set_tag(uri, parent, "advorch.registered_model", f"{name}/{result.registered[1]}")
    tracking.end_run(uri, parent)
    return result
