"""Shared fixtures: the real data in ../shared/data, one Ray instance per session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ADVORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
MR = SHARED_DATA / "mr"
DIGI = SHARED_DATA / "clickstream" / "diginetica"
VIEWS = DIGI / "sample_train-item-views.csv"
PURCHASES = DIGI / "train-purchases.csv"
ADVORCH = str(Path(sys.executable).with_name("advorch"))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def mr_dir() -> Path:
    if not (MR / "rt-polarity.neg").is_file():
        pytest.skip(f"real MR data not found at {MR} (../shared/data beside the repository)")
    return MR


def mr_config(path: Path, output: Path, **sections: dict) -> Path:
    """Write a config file for the MR corpus (plus extra `section.key` values)."""
    lines = ['name = "mr-test"', "[data]", 'encoding = "cp1252"', f'output = "{output}"',
             f'sources = [{{path = "{MR}/rt-polarity.neg", label = "neg"}}, '
             f'{{path = "{MR}/rt-polarity.pos", label = "pos"}}]']
    for section, values in sections.items():
        if section != "data":
            lines.append(f"[{section}]")
        for k, v in values.items():
            value = str(v).lower() if isinstance(v, bool) else repr(v).replace("'", '"')
            lines.append(f"{k} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def repo_config(name: str, folder: Path) -> Path:
    """configs/NAME.toml copied into `folder` with its ../shared/data paths pointing at SHARED_DATA."""
    path = folder / f"{name}.toml"
    text = (ROOT / "configs" / f"{name}.toml").read_text()
    path.write_text(text.replace("../shared/data", str(SHARED_DATA)))
    return path


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `advorch` console script."""
    return subprocess.run([ADVORCH, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def mr_shards(tmp_path_factory, mr_dir) -> Path:
    """MR preprocessed once per session (read-only for tests)."""
    from advorch.config import load_config
    from advorch.pipelines import text

    out = tmp_path_factory.mktemp("mr") / "shards"
    cfg = load_config(mr_config(out.parent / "mr.toml", out))
    text.run(cfg.data)
    return out


@pytest.fixture(scope="module")
def dask_address():
    """One real Dask cluster (scheduler + 2 worker processes) for the runs that only need
    a cluster, reached through `--dask-address` as a scheduled run on a real cluster would.
    It saves a LocalCluster start per run; the CLI's own LocalCluster is exercised by the
    SIGKILL test (and the session's `mr_shards`)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def digi() -> Path:
    if not VIEWS.is_file():
        pytest.skip(f"real DIGINETICA sample not found at {DIGI}")
    return DIGI


def digi_config(output: Path, *overrides: str):
    """configs/diginetica.toml with absolute data paths and `output`."""
    from advorch.config import load_config

    return load_config(ROOT / "configs" / "diginetica.toml", [
        f'data.output="{output}"', f'data.clickstream.events=["{VIEWS}"]',
        f'data.clickstream.purchases=["{PURCHASES}"]',
        f'data.clickstream.item_map.path="{DIGI / "product-categories.csv"}"', *overrides])


@pytest.fixture(scope="session")
def digi_shards(tmp_path_factory, digi) -> Path:
    """The DIGINETICA sample preprocessed once per session (read-only for tests)."""
    from advorch.pipelines import clickstream

    out = tmp_path_factory.mktemp("digi") / "shards"
    clickstream.run(digi_config(out).data)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (ray.init costs seconds)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts); its URL."""
    from tests.processes import kill, start_mlflow_server

    proc, url = start_mlflow_server(tmp_path)
    yield url
    kill(proc, signal.SIGTERM)


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory):
    """A real PostgreSQL server and on it a real `mlflow server --app-name basic-auth` (runs,
    registry and users in PostgreSQL, artifacts proxied into a folder), one per module:
    `.url`, `.admin` (username, password), `.dsn` (the runs database, for psycopg2),
    `.artifacts` (the artifact root). Skipped, naming the package, without PostgreSQL."""
    from types import SimpleNamespace

    from tests import processes as p

    if p.postgres_bindir() is None:
        pytest.skip(p.POSTGRES_MISSING)
    folder = tmp_path_factory.mktemp("mlflow-auth")
    postgres, dsn = p.start_postgres(folder)
    try:
        proc, url, admin = p.start_mlflow_auth_server(folder, dsn, postgres.create_database("mlflow_auth"))
        try:
            yield SimpleNamespace(url=url, admin=admin, dsn=dsn, artifacts=folder / "artifacts",
                                  folder=folder)
        finally:
            # SIGKILL: graceful shutdown would wait for the keep-alive connections of the
            # in-process clients; the data is in PostgreSQL and the artifact folder already
            p.kill(proc)
    finally:
        postgres.stop()
