"""`advorch submit` / `advorch jobs`: training and tune runs on an existing Ray cluster,
through the Ray Jobs API (the dashboard's HTTP server on the head, port 8265).

The job ships a small working directory holding the config (plus, with `working_dir`,
any folder of the user's), and runs `advorch train|tune config.toml …` on the cluster,
where the advorch image is installed (infra/). Paths the job reads or writes must be
reachable from every node, so before shipping, local relative paths (dataset,
checkpoint storage, an sqlite tracking store) are made absolute on this machine and
the user is told: on a real cluster they should be URIs (s3://…, http://mlflow:5000)
or a shared filesystem.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advorch.config import ExperimentConfig
from advorch.trainers.launch import dataset_uri


class JobError(RuntimeError):
    """The cluster refused or lost the job; the message names the address and the fix."""


def client(address: str):
    """A JobSubmissionClient for `address` (http://HEAD:8265), with a clear error when the
    dashboard does not answer."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobError(f"no Ray job server at {address}: {e}. Give the head's dashboard address "
                       "(http://HEAD:8265); the cluster needs ray[default] for the Jobs API.") from e


def cluster_tracking_uri(uri: str) -> str:
    """sqlite:///relative.db → sqlite:////abs/relative.db; any other URI as it is."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).absolute())
    return uri


def entrypoint_args(cfg: ExperimentConfig, command: str, *, data: str | None = None,
                    mlflow_uri: str | None = None, overrides: list[str] | None = None,
                    ) -> tuple[list[str], list[str]]:
    """The job's command line (`advorch train|tune config.toml …` with the dataset, checkpoint
    storage and tracking store as the cluster must see them) and notes for the user."""
    if command not in ("train", "tune"):
        raise JobError(f"--command {command!r}: choose train or tune")
    notes = []
    data_path = dataset_uri(data or cfg.data.output)
    storage = dataset_uri(cfg.train.storage)
    tracking = cluster_tracking_uri(mlflow_uri or cfg.mlflow.tracking_uri)
    for name, value in (("dataset", data_path), ("checkpoint storage", storage), ("MLflow", tracking)):
        if "://" not in value or value.startswith(("file://", "sqlite:")):
            notes.append(f"{name} {value} is on this machine's filesystem: every node must see it "
                         "(shared filesystem), else use a URI (s3://…, gs://…, http://mlflow:5000)")
    args = ["advorch", command, "config.toml", "--data", data_path, "--mlflow-uri", tracking,
            "--set", f"train.storage={json.dumps(storage)}"]  # a TOML string
    for o in overrides or []:
        args += ["--set", o]
    return args, notes


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    notes: list[str]


def submit(address: str, config: Path, cfg: ExperimentConfig, command: str = "train", *,
           data: str | None = None, mlflow_uri: str | None = None, overrides: list[str] | None = None,
           working_dir: Path | None = None, env: dict[str, str] | None = None) -> Submission:
    """Submit `advorch COMMAND config.toml` to the cluster; return its submission id.

    The entrypoint reserves no CPU (the training workers do), so a head started with
    `--num-cpus 0` can run it.
    """
    args, notes = entrypoint_args(cfg, command, data=data, mlflow_uri=mlflow_uri, overrides=overrides)
    entrypoint = shlex.join(args)

    staged = Path(tempfile.mkdtemp(prefix="advorch-job-"))
    try:
        if working_dir is not None:
            shutil.copytree(working_dir, staged, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "mlruns", "runs"))
        shutil.copy(config, staged / "config.toml")
        submission_id = f"advorch-{cfg.name}-{command}-{uuid.uuid4().hex[:8]}"
        client(address).submit_job(
            entrypoint=entrypoint, submission_id=submission_id, entrypoint_num_cpus=0,
            runtime_env={"working_dir": str(staged),
                         "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}},
            metadata={"advorch.config": cfg.name, "advorch.command": command})
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # uploaded by submit_job
    return Submission(submission_id, entrypoint, notes)


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))  # JobStatus is a str enum


def status(address: str, job_id: str) -> dict[str, Any]:
    """Status, message, entrypoint, start/end time of one job."""
    try:
        info = client(address).get_job_info(job_id)
    except RuntimeError as e:
        raise JobError(f"job {job_id} is not known at {address}: {e}") from e
    return {"id": job_id, "status": _name(info.status),
            "message": info.message or "", "entrypoint": info.entrypoint,
            "start_time": info.start_time, "end_time": info.end_time}


def list_jobs(address: str) -> list[dict[str, Any]]:
    """Every job the cluster knows, newest first."""
    jobs = client(address).list_jobs()
    rows = [{"id": j.submission_id or j.job_id, "status": _name(j.status),
             "entrypoint": j.entrypoint, "start_time": j.start_time or 0} for j in jobs]
    return sorted(rows, key=lambda r: -r["start_time"])


def logs(address: str, job_id: str) -> str:
    """Everything the job's entrypoint has printed so far."""
    try:
        return client(address).get_job_logs(job_id)
    except RuntimeError as e:
        raise JobError(f"no logs for job {job_id} at {address}: {e}") from e


def stop(address: str, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    return bool(client(address).stop_job(job_id))


def follow(address: str, job_id: str, write: Callable[[str], None]) -> str:
    """Print the job's log as it comes (Ray's log stream, from the start), until it ends;
    return its final status."""
    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as e:
        raise JobError(f"lost the log stream of job {job_id} at {address}: {e}") from e
    return _name(c.get_job_status(job_id))
