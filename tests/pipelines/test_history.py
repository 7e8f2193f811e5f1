"""Scheduled preprocessing: the schedule as cron / systemd / Kubernetes, the output's run lock
(two runs at once: one exits with a message naming the holder, or queues with --wait-lock),
SIGKILL mid-run (the next run completes it, nothing lost or duplicated) and the history."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ADVORCH, ROOT, mr_config, run_cli
from tests.test_cluster import _dataset


def _history(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "history.jsonl").read_text().splitlines()]


def test_schedule_renders_cron_systemd_and_a_kubernetes_cronjob(tmp_path):
    cfg = ROOT / "configs" / "diginetica.toml"
    cron = run_cli("schedule", str(cfg), "--every", "30 2 * * 1-5", cwd=tmp_path)
    assert cron.returncode == 0, cron.stderr
    fields = cron.stdout.split()
    assert fields[:5] == ["30", "2", "*", "*", "1-5"]
    assert f"cd {tmp_path} && {ADVORCH} preprocess clickstream {cfg}" in cron.stdout

    units = run_cli("schedule", str(cfg), "--every", "*/15 * * * *", "--format", "systemd", cwd=tmp_path)
    assert units.returncode == 0, units.stderr
    assert "Type=oneshot" in units.stdout and f"WorkingDirectory={tmp_path}" in units.stdout
    calendar = next(x.split("=", 1)[1] for x in units.stdout.splitlines() if x.startswith("OnCalendar="))
    assert calendar == "*-*-* *:0/15:00"
    if shutil.which("systemd-analyze"):  # the real parser, where the host has it
        check = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True)
        assert check.returncode == 0 and "Next elapse" in check.stdout, check.stdout + check.stderr

    k8s = run_cli("schedule", str(cfg), "--every", "@daily", "--format", "kubernetes",
                  "--output", "/data/diginetica", "--wait-lock", "600")
    assert k8s.returncode == 0, k8s.stderr
    assert "data.clickstream.events" in k8s.stderr and "is relative" in k8s.stderr  # named, not silent
    assert "data.output" not in k8s.stderr  # --output given
    job = yaml.safe_load(k8s.stdout)
    assert job["kind"] == "CronJob" and job["spec"]["schedule"] == "0 0 * * *"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["advorch", "preprocess", "clickstream", "/app/configs/diginetica.toml",
                                    "--output", "/data/diginetica", "--wait-lock", "600"]

    bad = run_cli("schedule", str(cfg), "--every", "0 2 * *")
    assert bad.returncode == 2 and "5 fields" in bad.stderr


def test_two_runs_at_once_one_exits_naming_the_holder_one_waits(tmp_path, mr_dir, dask_address):
    out = tmp_path / "mr"
    cfg = mr_config(tmp_path / "mr.toml", out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom advorch.pipelines.history import run_lock\n"
         "lock = run_lock(sys.argv[1]); lock.__enter__(); print('held', flush=True); time.sleep(120)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = run_cli("preprocess", "text", str(cfg), "--dask-address", dask_address)
        assert busy.returncode == 75, busy.stdout + busy.stderr
        assert "being written by another run" in busy.stderr and f"pid {holder.pid}" in busy.stderr
        assert "--wait-lock" in busy.stderr
        assert not (out / "manifest.json").exists()

        waiting = subprocess.Popen([ADVORCH, "preprocess", "text", str(cfg), "--dask-address", dask_address,
                                    "--wait-lock", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        time.sleep(3)
        assert waiting.poll() is None  # queued behind the holder
        holder.kill()  # SIGKILL: the kernel releases the flock; its holder record stays behind
        stdout, stderr = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, stdout + stderr
    finally:
        holder.kill()
    history = _history(out)
    assert [h["status"] for h in history] == ["interrupted", "built"]
    assert history[0]["pid"] == holder.pid
    assert history[1]["rows"] == 10662 and history[1]["rows_added"] == 10662
    assert len(history[1]["sources_added"]) == 2

    again = run_cli("preprocess", "text", str(cfg), "--dask-address", dask_address)
    assert again.returncode == 0 and "up to date" in again.stdout
    shown = run_cli("history", str(out))
    assert shown.returncode == 0 and shown.stdout.count("up_to_date") == 1
    assert [h["status"] for h in _history(out)][-1] == "up_to_date"


def test_sigkill_of_a_scheduled_run_is_completed_by_the_next_run(tmp_path, mr_dir, mr_shards):
    """The cron line itself, killed (whole process group) while it stages parts; the next
    scheduled run builds exactly what an uninterrupted run builds."""
    out = tmp_path / "mr"
    cfg = mr_config(tmp_path / "mr.toml", out)
    line = run_cli("schedule", str(cfg), "--every", "@hourly", cwd=tmp_path).stdout.strip()
    command = line.split(maxsplit=5)[5]  # drop the 5 schedule fields
    run = subprocess.Popen(["sh", "-c", command], start_new_session=True)
    deadline, staged = time.time() + 120, []
    while time.time() < deadline and not staged and run.poll() is None:
        staged = list(out.glob(".staging-*/*.parquet"))
        time.sleep(0.02)
    assert staged, "the run ended before it staged a part: nothing to interrupt"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (out / "manifest.json").exists()  # readers see no half-written build

    rerun = subprocess.run(["sh", "-c", command], timeout=300)
    assert rerun.returncode == 0, (tmp_path / "logs" / "preprocess-mr-test.log").read_text()[-3000:]
    assert _dataset(out) == _dataset(mr_shards)  # nothing lost, nothing duplicated
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {p["path"] for s in manifest["splits"].values() for p in s["parts"]}
    assert {f"parts/{p.name}" for p in (out / "parts").iterdir()} == listed
    assert not list(out.glob(".staging-*"))
    assert [h["status"] for h in _history(out)] == ["interrupted", "built"]
    assert "10662 rows" in (tmp_path / "logs" / "preprocess-mr-test.log").read_text()  # the cron log
