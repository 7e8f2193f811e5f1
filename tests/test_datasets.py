"""`advorch datasets` and the demo's fetch path, against a real HTTP server on 127.0.0.1 that
serves the real files of ../shared/data (a mirror: MIRROR/FOLDER/FILE), and that can be told
to corrupt a file or to drop the connection half-way through one."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import zipfile
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from advorch import datasets
from advorch.datasets import DatasetError, Source
from tests.conftest import SHARED_DATA, run_cli


class Mirror(SimpleHTTPRequestHandler):
    """Serves `directory`; paths in `tampered` get one byte flipped, the first request for a
    path in `cut` ends after half of its declared Content-Length."""

    tampered: set[str] = set()
    cut: set[str] = set()
    hits: list[str] = []

    def do_GET(self) -> None:
        rel = self.path.lstrip("/")
        self.hits.append(rel)
        if rel not in self.tampered and rel not in self.cut:
            return super().do_GET()
        body = bytearray((Path(self.directory) / rel).read_bytes())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if rel in self.cut:
            self.cut.discard(rel)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body[len(body) // 3] ^= 0xFF
        self.wfile.write(bytes(body))

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(mr_dir, tmp_path):
    """A loopback HTTP server over ../shared/data plus `extra/` (files a test adds); its URL."""
    served = tmp_path / "served"
    served.mkdir()
    for entry in SHARED_DATA.iterdir():
        (served / entry.name).symlink_to(entry)
    Mirror.tampered, Mirror.cut, Mirror.hits = set(), set(), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Mirror, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", served
    server.shutdown()
    server.server_close()


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


def test_fetch_verifies_and_places_the_real_files(mirror, tmp_path):
    url, _ = mirror
    root = tmp_path / "cache"
    folder = datasets.fetch("mr", root, url)
    assert folder == root / "mr"
    for name in ("rt-polarity.neg", "rt-polarity.pos"):
        assert (folder / name).read_bytes() == (SHARED_DATA / "mr" / name).read_bytes()
    assert datasets.problems(datasets.get("mr"), folder) == []
    assert not leftovers(root)
    assert datasets.fetch("mr", root, url) == folder  # complete: nothing downloaded again
    assert len(Mirror.hits) == 2


@pytest.mark.parametrize(("fault", "error"), [
    ("tampered", r"rt-polarity.neg: checksum mismatch, the file was rejected"),
    ("cut", r"could not download .*/mr/rt-polarity.neg"),
])
def test_a_corrupted_or_interrupted_download_leaves_nothing_and_restarts(mirror, tmp_path, fault, error):
    url, _ = mirror
    setattr(Mirror, fault, {"mr/rt-polarity.neg"})
    root = tmp_path / "cache"
    with pytest.raises(DatasetError, match=error):
        datasets.fetch("mr", root, url)
    assert not (root / "mr").exists() and not leftovers(root)
    Mirror.tampered = set()  # a cut happens once; the mirror is repaired
    folder = datasets.fetch("mr", root, url)  # the next try starts over and succeeds
    assert datasets.problems(datasets.get("mr"), folder) == []


def test_offline_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "cache"
    with pytest.raises(DatasetError) as e:
        datasets.fetch("pinterest", root, f"http://127.0.0.1:{port}")
    message = str(e.value)
    assert f"http://127.0.0.1:{port}/recsys/pinterest/pos.txt" in message
    digest = datasets.get("pinterest").files["pos.txt"]
    assert f"put it at {root / 'recsys/pinterest/pos.txt'} (sha256 {digest})" in message
    assert not (root / "recsys" / "pinterest").exists()


def test_an_archive_source_yields_only_the_listed_files(mirror, tmp_path):
    """Upstream NDVI.zip is not reachable offline, so the test zips the real tiles itself
    (plus a traversal member and an unlisted file, which must not be extracted)."""
    url, served = mirror
    ds = datasets.get("modis_ndvi_2016")
    extra = served / "extra"
    extra.mkdir()
    with zipfile.ZipFile(extra / "NDVI.zip", "w") as z:
        for rel in ds.files:
            z.write(SHARED_DATA / ds.folder / rel, f"NDVI/{rel}")
        z.writestr("../../escaped.tif", b"x")
        z.writestr("NDVI/unlisted.txt", b"x")
    ds = replace(ds, sources=(Source(url=f"{url}/extra/NDVI.zip", archive="zip"),))
    root = tmp_path / "cache"
    folder = datasets.fetch_dataset(ds, root, mirror="")
    assert sorted(p.name for p in folder.iterdir()) == sorted(ds.files)
    assert datasets.problems(ds, folder) == []
    assert not list(tmp_path.rglob("escaped.tif")) and not leftovers(root)


def test_a_folder_that_fails_verification_is_refused_untouched(mirror, tmp_path):
    url, _ = mirror
    root = tmp_path / "cache"
    (root / "mr").mkdir(parents=True)
    (root / "mr" / "rt-polarity.neg").write_text("my own edits\n")
    with pytest.raises(DatasetError, match=r"rt-polarity.neg: sha256 .* is not the pinned .*; "
                                           r"rt-polarity.pos: missing"):
        datasets.fetch("mr", root, url)
    assert (root / "mr" / "rt-polarity.neg").read_text() == "my own edits\n"


def test_manual_datasets_print_steps_and_verify_once_in_place(tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"sits can't be downloaded automatically .*\n  1\. "):
        datasets.fetch("sits", root)
    shutil.copytree(SHARED_DATA / "modis" / "sits", root / "modis" / "sits")  # put in place by hand
    assert datasets.fetch("sits", root) == root / "modis" / "sits"


def test_every_registered_file_matches_the_real_data():
    """The pinned checksums are those of ../shared/data (byte copies of the upstream files)."""
    for name, ds in datasets.registry().items():
        if ds.files:
            assert datasets.problems(ds, SHARED_DATA / ds.folder) == [], name
            on_disk = sum((SHARED_DATA / ds.folder / rel).stat().st_size for rel in ds.files)
            assert on_disk == ds.size, name
        else:
            assert ds.access != "open" and ds.steps, name


def test_cli_list_info_fetch(mirror, tmp_path):
    url, _ = mirror
    env = {**os.environ, "ADVORCH_DATA": str(tmp_path / "cache"), "ADVORCH_MIRROR": url}
    listed = run_cli("datasets", "list", env={**env, "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    for name, ds in datasets.registry().items():
        assert name in listed.stdout and ds.licence.split(" ")[0] in listed.stdout
    info = run_cli("datasets", "info", "mediaeval2016", env=env)
    assert info.returncode == 0 and "416 files" in info.stdout
    assert "read by: configs/mediaeval_tweets.toml" in info.stdout
    fetched = run_cli("datasets", "fetch", "pinterest", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "cache/recsys/pinterest/pos.txt").read_bytes() == \
        (SHARED_DATA / "recsys/pinterest/pos.txt").read_bytes()
    refused = run_cli("datasets", "fetch", "crisismmd_images", env=env)
    assert refused.returncode == 1 and "accept the terms of use" in refused.stderr


@pytest.mark.ray
def test_demo_without_shared_data_fetches_mr_then_trains(mirror, tmp_path):
    """A clone with no ../shared beside it: the demo fetches MR (checksummed) from the
    loopback mirror and trains (one epoch here, to keep the test short) and prints accuracy."""
    url, _ = mirror
    env = {**os.environ, "ADVORCH_SHARED_DATA": str(tmp_path / "no-shared"),
           "ADVORCH_DATA": str(tmp_path / "cache"), "ADVORCH_MIRROR": url,
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = run_cli("demo", "--workers", "1", "--output", str(tmp_path / "shards"),
                   "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
                   "--set", "train.epochs=1", "--set", "model.hidden_dim=16",
                   "--set", "model.embedding_dim=16",
                   env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "fetching it into" in proc.stdout and "test_accuracy = " in proc.stdout
    assert f"MR sentences from {tmp_path / 'cache' / 'mr'}" in proc.stdout
    assert sorted(Mirror.hits) == ["mr/rt-polarity.neg", "mr/rt-polarity.pos"]

    # what a user sees first in MLflow: losses and metrics as curves, bookkeeping as tags,
    # the training-curve and attention plots
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mr").experiment_id])
    assert {"train_loss", "val_loss", "val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    assert not {"epoch", "best_epoch", "final_epoch", "resumed_from_epoch"} & set(run.data.metrics)
    assert run.data.tags["advorch.best_epoch"] == "0"
    artifacts = {a.path for folder in ("plots", "explain")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"plots/training_curves.png", "explain/attention.png"} <= artifacts
