"""advorch against MLflow as deployed: `mlflow server --app-name basic-auth` with a PostgreSQL
backend store and a proxied artifact root, all real processes on 127.0.0.1 (conftest's
`mlflow_auth_server`: one PostgreSQL and one MLflow server for the module). The training run
and one refusal of each kind go through the real `advorch` console script; the other registry
commands run in-process (typer's CliRunner on the same `advorch.cli.app`, with the
environment given to each call): a console-script start costs seconds of CPU.

What MLflow 3.17's basic-auth app enforces (mlflow/server/auth/__init__.py; the tests assert
what the real server does), with `default_permission = READ` as here:
- every request but /health needs a known user and password: 401 otherwise;
- every user may read every experiment, run, artifact, registered model and version, and
  list them (READ by default);
- creating is open to every authenticated user (workspaces off): a new experiment or a NEW
  registered model, and its creator gets MANAGE on it;
- a run in an experiment needs EDIT on it (a READ user cannot train into someone else's
  experiment); a new version of an EXISTING registered model (CreateModelVersion) and moving
  an alias (SetRegisteredModelAlias) need EDIT (or MANAGE) on that model: 403 ("Permission
  denied") otherwise, until the admin grants it.
So a READ user is refused `advorch registry register` into someone else's model and
`advorch registry promote`, but may register under a new name of their own.

Credentials reach advorch only as MLflow reads them: MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD, else ~/.mlflow/credentials; never the config or the command line.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import mr_config, run_cli

MODEL = "mr-auth"
USERS = {"alice": "alice-trains-models", "bob": "bob-reads-models", "carol": "carol-edits-models"}


def cli_env(home: Path, user: str | None = None, password: str | None = None) -> dict[str, str]:
    """A clean environment for the console script: no credentials but the ones given, HOME a
    folder of the test's (so no ~/.mlflow/credentials of the machine's user is read)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    if user is not None:
        env["MLFLOW_TRACKING_USERNAME"] = user
        env["MLFLOW_TRACKING_PASSWORD"] = password if password is not None else USERS[user]
    return env


def advorch(*args: str, home: Path, user: str | None = None, password: str | None = None
            ) -> SimpleNamespace:
    """`advorch ARGS` in this process, as `user` (or with no credentials in the environment:
    then only HOME/.mlflow/credentials, if any); its exit code, stdout and stderr."""
    from mlflow.tracking._tracking_service import utils as mlflow_state
    from typer.testing import CliRunner

    from advorch.cli import app

    env = {"HOME": str(home), "MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None,
           "MLFLOW_TRACKING_URI": None, "MLFLOW_TRACKING_TOKEN": None}  # restored after the call
    if user is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or USERS[user]}
    before = mlflow_state._tracking_uri
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:  # `registry predict` sets MLflow's global URI: not this module's server for later tests
        mlflow_state._tracking_uri = before
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def admin_api(server: SimpleNamespace, path: str, payload: dict[str, str]) -> None:
    """POST to the basic-auth app's admin REST API as the admin: the requests MLflow's
    `get_app_client("basic-auth", url).create_user` / `.grant_user_permission` send (made
    here with urllib: importing mlflow.server costs seconds of CPU)."""
    token = base64.b64encode(":".join(server.admin).encode()).decode()
    request = urllib.request.Request(f"{server.url}{path}", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Authorization": f"Basic {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200, r.read()


def query(server: SimpleNamespace, sql: str, *args: object) -> list[tuple]:
    """Rows straight from the server's PostgreSQL backend store."""
    import psycopg2

    conn = psycopg2.connect(server.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def refused(proc, *phrases: str, code: int = 1) -> str:
    """Exit `code` with one `error:` line holding every phrase, and no traceback; the line."""
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def server(mlflow_auth_server):
    """The module's server with the users alice, bob and carol (no grants: READ)."""
    for user, password in USERS.items():
        admin_api(mlflow_auth_server, "/api/2.0/mlflow/users/create",
                  {"username": user, "password": password})
    return mlflow_auth_server


@pytest.fixture(scope="module")
def trained(server, mr_shards, tmp_path_factory):
    """alice's `advorch train` run (1 epoch, 1 worker, tiny model, model logged) through the
    console script, then registered by her as MODEL version 1 (alias candidate)."""
    tmp = tmp_path_factory.mktemp("alice")
    cfg = mr_config(tmp / "mr.toml", mr_shards,
                    model={"hidden_dim": 16, "embedding_dim": 16, "max_length": 24},
                    regime={"name": "at", "epsilon": 2.0},
                    train={"epochs": 1, "batch_size": 256, "storage": str(tmp / "runs")},
                    mlflow={"experiment": "auth"})
    proc = run_cli("train", str(cfg), "--workers", "1", "--mlflow-uri", server.url, cwd=tmp,
                   env=cli_env(tmp, "alice"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = re.search(r"MLflow run: (\w+)", proc.stdout).group(1)
    reg = advorch("registry", "register", run_id, MODEL, "--mlflow-uri", server.url, home=tmp, user="alice")
    assert reg.returncode == 0, reg.stderr[-3000:]
    assert f"registered {MODEL} version 1 (alias candidate)" in reg.stdout
    return SimpleNamespace(run_id=run_id, config=cfg, stdout=proc.stdout, stderr=proc.stderr, folder=tmp)


def test_a_client_without_valid_credentials_is_refused_with_the_fix(server, tmp_path):
    # no credentials at all (and no ~/.mlflow/credentials in HOME): the real console script
    proc = run_cli("registry", "list", "--mlflow-uri", server.url, env=cli_env(tmp_path))
    refused(proc, server.url, "needs credentials", "HTTP 401", "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD", "~/.mlflow/credentials")
    assert proc.stdout == ""
    # a known user, the wrong password
    proc = advorch("registry", "list", "--mlflow-uri", server.url, home=tmp_path, user="bob",
                   password="not-bobs-password")
    refused(proc, server.url, "did not accept the credentials of user 'bob'", "HTTP 401")
    # credentials in the URI are refused before any request: they would be logged and printed
    host = server.url.removeprefix("http://")
    proc = advorch("registry", "list", "--mlflow-uri", f"http://bob:{USERS['bob']}@{host}", home=tmp_path)
    line = refused(proc, "carries credentials", "MLFLOW_TRACKING_USERNAME", "~/.mlflow/credentials", code=2)
    assert USERS["bob"] not in line


def test_train_without_credentials_stops_before_ray_starts(server, mr_shards, tmp_path):
    cfg = mr_config(tmp_path / "mr.toml", mr_shards, train={"epochs": 1, "storage": str(tmp_path / "runs")},
                    mlflow={"experiment": "nobody"})
    proc = run_cli("train", str(cfg), "--workers", "1", "--mlflow-uri", server.url, cwd=tmp_path,
                   env=cli_env(tmp_path))
    refused(proc, server.url, "needs credentials", "MLFLOW_TRACKING_USERNAME", "~/.mlflow/credentials")
    assert "Ray instance" not in proc.stderr and not (tmp_path / "runs").exists()  # nothing started
    assert query(server, "SELECT count(*) FROM experiments WHERE name = %s", "nobody") == [(0,)]


@pytest.mark.ray
def test_training_by_a_permitted_user_lands_in_postgres_and_the_artifact_root(server, trained):
    run_id = trained.run_id
    assert "test_accuracy" in trained.stdout and server.url in trained.stdout
    assert "Ray instance" in trained.stderr  # what a refused train never gets to (the test above)
    # the URI advorch was given holds no credentials, nor does the config: alice's came from the
    # environment only, and her password is nowhere in what the server stored
    assert "@" not in server.url and USERS["alice"] not in trained.config.read_text()
    ((status, experiment_id, artifact_uri),) = query(
        server, "SELECT status, experiment_id, artifact_uri FROM runs WHERE run_uuid = %s", run_id)
    assert status == "FINISHED"
    experiments = query(server, "SELECT name FROM experiments WHERE experiment_id = %s", experiment_id)
    assert experiments == [("auth",)]
    (accuracy,) = query(server, "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = %s",
                        run_id, "test_accuracy")
    assert 0.0 < accuracy[0] <= 1.0
    params = dict(query(server, "SELECT key, value FROM params WHERE run_uuid = %s", run_id))
    assert params["model.hidden_dim"] == "16" and params["train.workers"] == "1"
    assert not any(USERS["alice"] in v for v in params.values())
    versions = query(server, "SELECT run_id FROM model_versions WHERE name = %s AND version = 1", MODEL)
    assert versions == [(run_id,)]  # alice's registration
    # artifacts went through the server into its artifact root
    assert artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"
    run_folder = server.artifacts / str(experiment_id) / run_id / "artifacts"
    assert (run_folder / "config.json").is_file() and (run_folder / "dataset" / "manifest.json").is_file()
    assert list((server.artifacts / str(experiment_id)).rglob("MLmodel")), "no model in the artifact root"


@pytest.mark.ray
def test_a_read_only_user_reads_but_cannot_register_into_or_promote_the_model(server, trained, ray_local,
                                                                             tmp_path):
    # bob's credentials from MLflow's credentials file only (HOME holds it; no variables)
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = bob\nmlflow_tracking_password = {USERS['bob']}\n")
    listed = advorch("registry", "list", "--mlflow-uri", server.url, home=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert re.search(rf"{MODEL}\s*│\s*1\s*│\s*candidate\s*│", listed.stdout), listed.stdout
    (tmp_path / "reviews.txt").write_text("a gripping , beautifully acted film\na dull , lifeless mess\n")
    predicted = advorch("registry", "predict", f"{MODEL}@candidate", str(tmp_path / "reviews.txt"),
                        "--mlflow-uri", server.url, home=tmp_path)  # the model's artifacts, downloaded
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert [line.split()[0] in ("neg", "pos") for line in predicted.stdout.splitlines()] == [True, True]

    def registry_rows() -> tuple[list[tuple], list[tuple]]:
        return (query(server, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", MODEL),
                query(server, "SELECT alias, version FROM registered_model_aliases WHERE name = %s "
                              "ORDER BY alias", MODEL))

    before = registry_rows()
    assert ("champion", 1) not in before[1]
    register = run_cli("registry", "register", trained.run_id, MODEL, "--mlflow-uri", server.url,
                       env=cli_env(tmp_path))  # the real console script, the credentials file
    refused(register, "permission denied", server.url, "user 'bob'", f"registered model '{MODEL}'",
            "HTTP 403", "EDIT or MANAGE")
    promote = advorch("registry", "promote", MODEL, "1", "--alias", "champion", "--mlflow-uri", server.url,
                      home=tmp_path)
    refused(promote, "permission denied", "user 'bob'", f"registered model '{MODEL}'", "HTTP 403")
    assert registry_rows() == before  # no version added, no alias moved

    # nor write into alice's run: the artifact upload (requests' HTTPError, not an MlflowException)
    from advorch import tracking

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path))  # bob's credentials file, as above
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.delenv(name, raising=False)
        with pytest.raises(tracking.AccessDenied, match=r"permission denied: .* user 'bob' on run "
                           r".*HTTP 403, /api/2\.0/mlflow-artifacts/artifacts/"):
            with tracking.server_access(server.url, f"run {trained.run_id}"):
                tracking.log_text(server.url, trained.run_id, "not alice's", "bob.txt")
    assert not list(server.artifacts.rglob("bob.txt"))

    # nor may bob train into alice's experiment (EDIT on it needed to create a run)
    train = advorch("train", str(trained.config), "--workers", "1", "--mlflow-uri", server.url,
                    "--set", f'train.storage="{tmp_path / "runs"}"', home=tmp_path)
    refused(train, "permission denied", "user 'bob'", "experiment 'auth'", "HTTP 403")

    # what the server does allow a READ user: a NEW registered model of their own (its creator
    # gets MANAGE on it), from alice's run, which bob may read
    own = advorch("registry", "register", trained.run_id, "bobs-mr", "--mlflow-uri", server.url,
                  home=tmp_path)
    assert own.returncode == 0, own.stderr[-3000:]
    versions = query(server, "SELECT version, run_id FROM model_versions WHERE name = %s", "bobs-mr")
    assert versions == [(1, trained.run_id)]


@pytest.mark.ray
def test_a_user_granted_edit_on_the_model_registers_and_promotes(server, trained, tmp_path):
    admin_api(server, "/api/3.0/mlflow/users/permissions/grant",
              {"username": "carol", "resource_type": "registered_model", "resource_id": MODEL,
               "permission": "EDIT"})
    register = advorch("registry", "register", trained.run_id, MODEL, "--mlflow-uri", server.url,
                       home=tmp_path, user="carol")
    assert register.returncode == 0, register.stderr[-3000:]
    version = int(re.search(rf"registered {MODEL} version (\d+) \(alias candidate\)",
                            register.stdout).group(1))
    promote = advorch("registry", "promote", MODEL, str(version), "--alias", "champion",
                      "--mlflow-uri", server.url, home=tmp_path, user="carol")
    assert promote.returncode == 0, promote.stderr[-3000:]
    aliases = query(server, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", MODEL)
    assert sorted(aliases) == [("candidate", version), ("champion", version)]
    assert query(server, "SELECT max(version) FROM model_versions WHERE name = %s", MODEL) == [(version,)]
    # the grant is carol's alone: bob is still refused
    bob = advorch("registry", "promote", MODEL, "1", "--alias", "champion", "--mlflow-uri", server.url,
                  home=tmp_path, user="bob")
    refused(bob, "permission denied", "user 'bob'")
