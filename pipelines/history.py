"""A dataset's run lock and run history: what makes scheduled preprocessing safe.

Every `advorch preprocess` run (scheduled or by hand) goes through `locked_run`:

- **Lock.** One run at a time per output: a `flock` on `OUTPUT/.advorch.lock`
  (via filelock), which the kernel releases when the holder dies, even by SIGKILL,
  so a crashed run never leaves a stale lock. A second run exits at once with a
  message naming the holder (host, pid, start time), or waits `wait` seconds for it.
  Remote outputs (s3://…) are locked on the launching host only; on Kubernetes the
  CronJob's `concurrencyPolicy: Forbid` keeps runs apart (`advorch schedule`).
- **History.** Each run appends one JSON line to `OUTPUT/history.jsonl`: status
  (built / up_to_date / failed / interrupted), sources added / changed / removed,
  rows, rows added, quarantined, duration. A run killed while holding the lock left
  its holder record behind; the next run finds it and records the interruption. What
  the killed run staged is never visible (DatasetWriter commits atomically) and is
  removed by the next build, which writes it all again: nothing lost or duplicated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

import fsspec
from filelock import FileLock, Timeout
from fsspec.implementations.local import LocalFileSystem

from advorch.config import DataConfig
from advorch.pipelines.common import PipelineError, Summary
from advorch.pipelines.shards import HASH, read_manifest

LOCK = ".advorch.lock"
HOLDER = ".advorch.running.json"
HISTORY = "history.jsonl"


class LockBusy(PipelineError):
    """Another run is writing the same output."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _local_dir(output: str) -> Path:
    """Where the lock lives: the output folder itself, or (for a remote URI) a per-URI
    folder under ~/.cache/advorch/locks on this host."""
    fs, path = fsspec.core.url_to_fs(output)
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    return Path.home() / ".cache" / "advorch" / "locks" / hashlib.sha1(output.encode()).hexdigest()[:16]


@contextmanager
def run_lock(output: str, wait: float = 0) -> Iterator[dict[str, Any] | None]:
    """Hold the output's run lock; yield the holder record of a run that died holding it
    (or None). Raises LockBusy when another live run holds it for longer than `wait` s."""
    folder = _local_dir(output)
    holder_file = folder / HOLDER
    lock = FileLock(folder / LOCK, thread_local=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=wait, poll_interval=0.2)
    except PermissionError as e:
        raise PipelineError(f"cannot write to output folder {output}: {e.strerror}. Choose a folder "
                            "you can write to (data.output or --output).") from None
    except Timeout:
        raise LockBusy(f"{output} is being written by another run ({_describe(holder_file)}); "
                       "this run exits without touching it. Run again when it ends, or pass "
                       "--wait-lock SECONDS to queue behind it.") from None
    try:
        interrupted = _read_json(holder_file)
        holder_file.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                           "started": _now(), "argv": sys.argv}))
        try:
            yield interrupted
        finally:
            holder_file.unlink(missing_ok=True)
    finally:
        lock.release()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _describe(holder_file: Path) -> str:
    h = _read_json(holder_file)
    if not h:
        return "holder unknown"
    return f"host {h['host']}, pid {h['pid']}, started {h['started']}"


def append_history(output: str, record: dict[str, Any]) -> None:
    """Append one record to OUTPUT/history.jsonl (object stores have no append: rewrite)."""
    fs, path = fsspec.core.url_to_fs(output)
    target = f"{path.rstrip('/')}/{HISTORY}"
    line = json.dumps(record) + "\n"
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(path, exist_ok=True)
        with open(target, "a") as f:
            f.write(line)
        return
    old = fs.cat_file(target).decode() if fs.exists(target) else ""
    fs.pipe_file(target, (old + line).encode())


def read_history(output: str) -> list[dict[str, Any]]:
    """The output's run records, oldest first ([] before the first run)."""
    fs, path = fsspec.core.url_to_fs(output)
    target = f"{path.rstrip('/')}/{HISTORY}"
    if not fs.exists(target):
        return []
    return [json.loads(line) for line in fs.cat_file(target).decode().splitlines() if line.strip()]


def source_changes(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, list[str]]:
    """Source paths added, changed (new content hash) and removed between two manifests."""
    old = {s["path"]: s.get(HASH) for s in (before or {}).get("sources", [])}
    new = {s["path"]: s.get(HASH) for s in after.get("sources", [])}
    return {"sources_added": sorted(new.keys() - old.keys()),
            "sources_changed": sorted(p for p in new.keys() & old.keys() if new[p] != old[p]),
            "sources_removed": sorted(old.keys() - new.keys())}


def locked_run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None,
               wait: float = 0) -> Summary:
    """Run the config's pipeline (cfg.kind) under the output's lock and record it in the history."""
    output = str(output or cfg.output)
    run = import_module(f"advorch.pipelines.{cfg.kind}").run
    with run_lock(output, wait) as interrupted:
        if interrupted:
            append_history(output, {"status": "interrupted", "kind": cfg.kind, **interrupted,
                                    "found": _now()})
        before = read_manifest(output)
        started, t0 = _now(), time.perf_counter()
        record: dict[str, Any] = {"kind": cfg.kind, "started": started, "host": socket.gethostname(),
                                  "pid": os.getpid()}
        try:
            summary = run(cfg, output=output, dask_address=dask_address)
        except BaseException as e:
            append_history(output, {**record, "status": "failed", "finished": _now(),
                                    "seconds": round(time.perf_counter() - t0, 3),
                                    "error": f"{type(e).__name__}: {e}"})
            raise
        m = summary.manifest
        append_history(output, {
            **record, "status": "up_to_date" if summary.up_to_date else "built",
            "finished": _now(), "seconds": round(time.perf_counter() - t0, 3),
            "build_id": m["build_id"], "rows": summary.rows,
            "rows_added": summary.rows - (before or {}).get("rows", 0),
            "quarantined": summary.quarantined if not summary.up_to_date else 0,
            "sources": len(m.get("sources", [])), **source_changes(before, m)})
        return summary
