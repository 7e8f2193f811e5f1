"""Every MLflow call of advorch goes through this module: trainers, tuning and the registry.

Default store: sqlite under ./mlruns (so the model registry works), artifacts
beside it; `--mlflow-uri` / MLFLOW_TRACKING_URI point at a server instead.

A server with authentication (`mlflow server --app-name basic-auth`) takes the credentials
MLflow itself reads: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, else
~/.mlflow/credentials. Never the config or the command line: an http(s) URI with
`user:password@` is refused (it would be logged in the run's params and printed).
`server_access` turns the server's 401 and 403 answers into AccessDenied, one line that
names the server and the fix.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
CREDENTIALS_HELP = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or write them to "
                    "~/.mlflow/credentials ([mlflow] mlflow_tracking_username = …, "
                    "mlflow_tracking_password = …)")


class AccessDenied(RuntimeError):
    """The MLflow server refused a request: 401 (no or wrong credentials) or 403 (the user
    lacks the permission). The message is one line: the server, the user, the fix."""


def check_uri(uri: str) -> str:
    """`uri`, unless it is an http(s) URI with credentials in it (`user:password@host`),
    which would end up in the run's params and in printed output.

    Raises:
        ValueError: naming the host and where credentials go instead.
    """
    if re.match(r"https?://[^/@]*@", uri):
        host = uri.split("@", 1)[1].split("/", 1)[0]
        raise ValueError(f"the MLflow URI for {host} carries credentials (user:password@): give the "
                         f"server's URI without them and {CREDENTIALS_HELP}")
    return uri


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use, with a relative sqlite path made absolute (workers on
    other processes run in other folders) and its folder created.

    Raises:
        ValueError: an http(s) URI carrying credentials (`user:password@host`).
    """
    uri = check_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///")).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def _denial(exc: BaseException) -> tuple[int, str] | None:
    """(401 or 403, the refused endpoint) when `exc` or an exception it was raised from or
    while handling is the server's refusal; else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(getattr(exc, "error_code", None))
        response = getattr(exc, "response", None)  # requests.HTTPError: artifact uploads, downloads
        if code is None and getattr(response, "status_code", None) in (401, 403):
            code = response.status_code
        if code is not None:
            found = re.search(r"endpoint (\S+)|for url: (\S+)", str(exc))
            endpoint = next(g for g in found.groups() if g).rstrip(".,;") if found else ""
            return code, urlsplit(endpoint).path if "://" in endpoint else endpoint
        exc = exc.__cause__ or exc.__context__
    return None


def access_message(exc: BaseException, uri: str | None, resource: str | None = None) -> str | None:
    """One line explaining the MLflow server's 401 / 403 in `exc` (and its chain), naming
    the server, the user and the fix; None when `exc` is no such refusal. `resource` says
    what the request was about, e.g. "registered model 'mr-lstm'"."""
    found = _denial(exc)
    if found is None:
        return None
    from mlflow.utils.credentials import read_mlflow_creds

    code, endpoint = found
    server = uri or os.environ.get("MLFLOW_TRACKING_URI") or "the MLflow server"
    where = f", {endpoint}" if endpoint else ""
    user = read_mlflow_creds().username
    if code == 401 and not user:
        return (f"the MLflow server at {server} needs credentials (HTTP 401{where}): "
                f"{CREDENTIALS_HELP}")
    if code == 401:
        return (f"the MLflow server at {server} did not accept the credentials of user {user!r} "
                f"(HTTP 401{where}): check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or "
                "~/.mlflow/credentials (the environment variables win)")
    on = f" on {resource}" if resource else ""
    return (f"permission denied: the MLflow server at {server} refused user {user!r}{on} "
            f"(HTTP 403{where}); ask the server's admin for EDIT or MANAGE permission{on}, "
            "or use an account that has it")


@contextmanager
def server_access(uri: str | None, resource: str | None = None) -> Iterator[None]:
    """Raise the MLflow server's 401 / 403 inside the block as AccessDenied (one line, see
    `access_message`); any other exception passes unchanged."""
    try:
        yield
    except AccessDenied:
        raise
    except Exception as e:
        message = access_message(e, uri, resource)
        if message is None:
            raise
        raise AccessDenied(message) from e


def check_access(uri: str, experiment: str) -> None:
    """One read of `experiment` on an MLflow server (http, https), so that refused credentials
    end a command before it starts Ray; local stores are not asked. Raises what MLflow raises
    (under `server_access`: AccessDenied)."""
    if uri.startswith(("http://", "https://")):
        _client(uri).get_experiment_by_name(experiment)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, creating it (artifacts next to a local sqlite store)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """Create a run with the resolved config as params; return its id."""
    from mlflow.entities import Param

    client = _client(uri)
    tags = dict(tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, values: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in values.items()])


def log_dict(uri: str, run_id: str, data: Any, artifact_file: str) -> None:
    _client(uri).log_dict(run_id, data, artifact_file)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(uri).log_text(run_id, text, artifact_file)


def log_model(uri: str, run_id: str, model: Any, input_example: Any, extra_files: dict[str, Any]) -> str:
    """Log a torch model (pickle format, with an input example) into the run; return its URI.

    Pickle, not MLflow's default pt2: torch.export of an LSTM over variable-length
    batches is fragile, and loading needs advorch installed either way.
    """
    import logging

    import mlflow

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format caution

    mlflow.set_tracking_uri(uri)
    nested = mlflow.active_run() is not None
    mlflow.start_run(run_id=run_id, nested=nested)
    # not `with start_run`: its exit would mark the run FINISHED here, before the caller has
    # tagged the model and ended the run; a reader (a resumed sweep) could then take a finished
    # run without its model. Leaving it RUNNING, the caller ends it once, with everything set.
    try:
        return _log_model(model, input_example, extra_files)
    finally:
        mlflow.end_run(status="RUNNING")


def _log_model(model: Any, input_example: Any, extra_files: dict[str, Any]) -> str:
    import mlflow
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, content in extra_files.items():
            p = Path(tmp) / name
            p.write_text(content if isinstance(content, str) else json.dumps(content))
            paths.append(str(p))
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=input_example, serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            extra_files=paths,
        )
    return info.model_uri


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def set_status(uri: str, run_id: str, status: str) -> None:
    """Set a run's status, e.g. back to RUNNING when an interrupted sweep resumes it."""
    _client(uri).update_run(run_id, status=status)


def child_runs(uri: str, experiment: str, parent_run_id: str, trial_id: str | None = None
               ) -> list[dict[str, Any]]:
    """The runs nested under `parent_run_id` (optionally one trial's), oldest first."""
    client = _client(uri)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if trial_id:
        query += f" and tags.`advorch.trial_id` = '{trial_id}'"
    runs = client.search_runs([experiment_id(uri, experiment)], query, max_results=10_000,
                              order_by=["attributes.start_time ASC"])
    return [{"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags),
             "metrics": dict(r.data.metrics), "params": dict(r.data.params)} for r in runs]


def find_child(uri: str, experiment: str, parent_run_id: str, trial_id: str) -> dict[str, Any] | None:
    runs = child_runs(uri, experiment, parent_run_id, trial_id)
    return runs[-1] if runs else None


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    _client(uri).set_tag(run_id, key, value)


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    return dict(_client(uri).get_run(run_id).data.tags)


def load_artifact_dict(uri: str, run_id: str, artifact_file: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = _client(uri).download_artifacts(run_id, artifact_file, tmp)
        return json.loads(Path(path).read_text())


def log_file(uri: str, run_id: str, path: str, artifact_path: str | None = None) -> None:
    _client(uri).log_artifact(run_id, path, artifact_path)


def load_model(uri: str, model_uri: str) -> Any:
    """A logged torch model (advorch logs the `Serving` wrapper; `.model` is the classifier)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.pytorch.load_model(model_uri, map_location="cpu")


def register_model(uri: str, model_uri: str, name: str, tags: dict[str, str]) -> int:
    """Register a logged model (models:/m-ID) as a new version of `name`, creating `name` if
    new; return the version.

    What `mlflow.register_model` does, but its last step, the logged model's back-link tag
    (mlflow.modelVersions, shown on the model's page), is written only where the user may:
    on a basic-auth server it needs EDIT on the experiment of the run the model comes from,
    and a user with EDIT on the registered model alone got the version and then a 403.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    if not re.fullmatch(r"models:/m-\w+", model_uri):  # another kind of URI: MLflow's own path
        import mlflow

        mlflow.set_tracking_uri(uri)
        return int(mlflow.register_model(model_uri, name, tags=tags).version)
    client = _client(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = model_uri.removeprefix("models:/")
    version = client.create_model_version(name, model_uri, tags=tags, model_id=model_id)
    try:
        links = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*links, {"name": version.name, "version": version.version}])})
    except MlflowException as e:
        if _denial(e) is None:
            raise
    return int(version.version)


def set_alias(uri: str, name: str, alias: str, version: int | str) -> None:
    _client(uri).set_registered_model_alias(name, alias, str(version))


def model_versions(uri: str) -> list[dict[str, Any]]:
    """Every registered version: name, version, aliases, run id, status."""
    client = _client(uri)
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model.name}'"):
            rows.append({"name": model.name, "version": int(mv.version),
                         "aliases": sorted(aliases.get(str(mv.version), [])),
                         "run_id": mv.run_id or mv.tags.get("advorch.run_id", ""), "status": mv.status})
    return rows


def version_run_id(uri: str, name: str, alias: str) -> str:
    """The training run of the version `name@alias`."""
    mv = _client(uri).get_model_version_by_alias(name, alias)
    return mv.run_id or mv.tags.get("advorch.run_id")
