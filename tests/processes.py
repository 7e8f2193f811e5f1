"""Real server processes on 127.0.0.1 for the cluster tests: Ray nodes (`ray start`),
a Dask scheduler and workers, an MLflow server. Each runs in its own process group, so a
test can kill one node (SIGKILL to the group) and teardown leaves nothing behind."""

from __future__ import annotations

import json
import os
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


def start(args: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "ab")  # noqa: SIM115 - kept open for the process's life
    return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env(), start_new_session=True)


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
