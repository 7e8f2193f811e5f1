"""Real server processes on 127.0.0.1 for the cluster tests: Ray nodes (`ray start`),
a Dask scheduler and workers, an MLflow server (sqlite, or PostgreSQL with basic auth), a
PostgreSQL server. Each runs in its own process group, so a test can kill one node (SIGKILL
to the group) and teardown leaves nothing behind."""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    """The environment of a server started from this venv (as an activated venv would be)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90,
             procs: list[subprocess.Popen] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs or []:
            assert p.poll() is None, f"{what}: {p.args[:3]} exited with {p.returncode}"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def start(args: list[str], log: Path, extra_env: dict[str, str] | None = None,
          user: pwd.struct_passwd | None = None) -> subprocess.Popen:
    """Start `args` in a new process group, output appended to `log`; as `user` if given
    (root only: its uid, its primary group and no supplementary groups)."""
    f = open(log, "ab")  # noqa: SIM115 - kept open for the process's life
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env={**env(), **(extra_env or {})},
                            start_new_session=True, **as_user)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process's whole group (a Ray node: raylet, agents, workers)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


@dataclass
class RayCluster:
    """A head (no CPUs: only drivers) and worker nodes with 1 CPU each, all on 127.0.0.1."""

    folder: Path
    temp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self, name: str) -> list[str]:
        # a temp dir per node, as on separate machines: nodes on one host would otherwise share
        # one runtime_resources folder, and the first node to drop a job's working_dir deletes it
        # from under the others (short path: Unix socket names are limited to 107 bytes)
        return ["--block", "--temp-dir", str(self.temp / name), "--node-ip-address", "127.0.0.1",
                "--disable-usage-stats",
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--object-store-memory", str(150 * 2**20)]

    def start_head(self) -> None:
        self.nodes["head"] = start(
            [str(BIN / "ray"), "start", "--head", "--port", str(self.gcs_port), "--num-cpus", "0",
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
             *self._node_args("head")], self.folder / "head.log")
        wait_for(lambda: http_json(f"{self.address}/api/version") is not None, "ray head dashboard",
                 procs=[self.nodes["head"]])

    def add_worker(self, name: str) -> None:
        """A worker node with 1 CPU and a custom resource `name` (to find it again)."""
        self.nodes[name] = start(
            [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", "1",
             "--resources", json.dumps({name: 1}), *self._node_args(name)], self.folder / f"{name}.log")

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")])]

    def wait_nodes(self, n: int) -> None:
        wait_for(lambda: len(self.alive_nodes()) == n, f"{n} ray nodes alive", timeout=120,
                 procs=list(self.nodes.values()))

    def node_names(self) -> dict[str, str]:
        """node id → our name (head or the worker's custom resource)."""
        names = {}
        for n in self.alive_nodes():
            res = n.get("resources_total", {}) if isinstance(n, dict) else n.resources_total
            node_id = n["node_id"] if isinstance(n, dict) else n.node_id
            names[node_id] = next((k for k in res if k in self.nodes), "head")
        return names

    def stop(self) -> None:
        """SIGKILL every node's process group (SIGTERM drains each node for up to 30 s), then
        anything still running from the cluster's temp dir."""
        import psutil

        for proc in self.nodes.values():
            kill(proc)
        for p in psutil.process_iter(["cmdline"]):
            if any(str(self.temp) in arg for arg in p.info["cmdline"] or []):
                p.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def start_mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts)."""
    port = free_port()
    proc = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{folder}/server.db",
                  "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
                 folder / "mlflow-server.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
             "mlflow server /health", procs=[proc])
    return proc, url


def start_dask_cluster(folder: Path, workers: int = 2) -> tuple[list[subprocess.Popen], str]:
    """A real `dask scheduler` and `dask worker` processes (1 thread each)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                    "--no-dashboard"], folder / "dask-scheduler.log")]
    procs += [start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                     "--name", f"w{i}", "--local-directory", str(folder / f"w{i}")],
                    folder / f"dask-worker-{i}.log") for i in range(workers)]

    def ready() -> bool:
        from distributed import Client

        with Client(address, timeout="5s") as c:
            return len(c.scheduler_info(n_workers=-1)["workers"]) == workers

    wait_for(ready, f"dask scheduler + {workers} workers", procs=procs)
    return procs, address


POSTGRES_MISSING = ("PostgreSQL server binaries (initdb, postgres) not found via `pg_config --bindir` or "
                    "/usr/lib/postgresql/*/bin: install them with `apt-get install postgresql` "
                    "(Debian/Ubuntu; .ci/run does)")


def postgres_bindir() -> Path | None:
    """The folder holding initdb and postgres: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin; None when no PostgreSQL server is installed."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()), None)


@dataclass
class PostgresServer:
    """A real PostgreSQL server on 127.0.0.1, its cluster in `folder` (data, Unix socket)."""

    proc: subprocess.Popen
    folder: Path
    port: int
    user: str
    password: str

    def dsn(self, database: str = "postgres") -> str:
        """The libpq URI of `database` (psycopg2.connect takes it; SQLAlchemy wants +psycopg2)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; its DSN."""
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.dsn(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's group, SIGKILL after 30 s); the cluster
        folder removed."""
        kill(self.proc, signal.SIGINT)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(tmp: Path, database: str = "mlflow") -> tuple[PostgresServer, str]:
    """A real PostgreSQL server: `initdb` into a fresh cluster, `postgres` on a free loopback
    port (TCP on 127.0.0.1 only, password auth; its Unix socket in the cluster folder), with a
    database `database`. Returns the handle (`.stop()` at teardown) and that database's DSN.

    PostgreSQL refuses to run as root: as root, initdb and postgres run as `nobody` (uid and
    primary group, no supplementary groups), the cluster in a folder of /tmp that `nobody`
    owns (pytest's tmp folders are root-only). Logs go to `tmp`. Durability is off (fsync,
    synchronous_commit): a test server, thrown away at the end.

    Raises:
        FileNotFoundError: no PostgreSQL server installed (POSTGRES_MISSING says what to install).
    """
    import psycopg2

    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError(POSTGRES_MISSING)
    runas = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the socket path ≤ 107 bytes
    if runas is not None:
        os.chown(folder, runas.pw_uid, runas.pw_gid)
    password = secrets.token_hex(12)
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if runas is not None:
        os.chown(pwfile, runas.pw_uid, runas.pw_gid)
    as_user = {} if runas is None else {"user": runas.pw_uid, "group": runas.pw_gid, "extra_groups": []}
    user = "advorch"
    with open(tmp / "initdb.log", "ab") as log:
        done = subprocess.run(
            [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", user, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
             "--no-sync", "--no-instructions"], stdout=log, stderr=subprocess.STDOUT,
            env={**env(), "HOME": str(folder)}, cwd=folder, timeout=120, **as_user)
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise AssertionError(f"initdb exited with {done.returncode}: see {tmp / 'initdb.log'}")
    pwfile.unlink()
    port = free_port()
    proc = start([str(bindir / "postgres"), "-D", str(folder / "data"), "-p", str(port), "-h", "127.0.0.1",
                  "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
                  "-c", "full_page_writes=off"],
                 tmp / "postgres.log", extra_env={"HOME": str(folder)}, user=runas)
    server = PostgresServer(proc, folder, port, user, password)

    def accepts() -> bool:
        try:
            psycopg2.connect(server.dsn(), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    try:
        wait_for(accepts, "postgres accepting connections", timeout=60, procs=[proc])
        return server, server.create_database(database)
    except BaseException:
        server.stop()
        raise


def start_mlflow_auth_server(tmp: Path, dsn: str, auth_dsn: str | None = None,
                             default_permission: str = "READ"
                             ) -> tuple[subprocess.Popen, str, tuple[str, str]]:
    """A real `mlflow server --app-name basic-auth` on 127.0.0.1: runs and the registry in
    the database `dsn` (PostgreSQL, a libpq URI: postgresql://…; given to MLflow with the
    psycopg2 driver named), artifacts proxied into `tmp`/artifacts, users and
    permissions in `auth_dsn` (default: sqlite in `tmp`), configured by an ini file as a
    deployment would (MLFLOW_AUTH_CONFIG_PATH), the admin from MLFLOW_AUTH_ADMIN_*.
    Returns the process, its URL and the admin's (username, password)."""
    admin = ("admin", secrets.token_hex(12))
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the driver installed is psycopg2
    dsn, auth_dsn = (u and u.replace("postgresql://", "postgresql+psycopg2://", 1) for u in (dsn, auth_dsn))
    ini = tmp / "basic_auth.ini"
    ini.write_text("[mlflow]\n"
                   f"default_permission = {default_permission}\n"
                   f"database_uri = {auth_dsn or f'sqlite:///{tmp}/basic_auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "grant_default_workspace_access = false\n"
                   # a password check costs tens of ms of CPU per request (scrypt): cache a passed
                   # one for a minute, as a busy deployment would (a failed one is never cached)
                   "auth_cache_ttl_seconds = 60\n")
    port = free_port()
    proc = start([str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                  "--port", str(port), "--artifacts-destination", str(tmp / "artifacts"), "--workers", "1"],
                 tmp / "mlflow-auth-server.log",
                 # the database password in the environment, not in argv (`ps` shows argv to everyone)
                 extra_env={"MLFLOW_BACKEND_STORE_URI": dsn, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                            "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                            # no job runner (huey consumers for GenAI jobs): unused here, and
                            # starting it costs about as much CPU as the server itself
                            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
                 "mlflow basic-auth server /health", timeout=120, procs=[proc])
    except BaseException:
        kill(proc)
        raise
    return proc, url, admin
