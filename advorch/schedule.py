"""`advorch schedule`: the schedule of an incremental preprocessing run, for the scheduler a
site already runs: a cron line, a systemd service + timer, or a Kubernetes CronJob.

Each scheduled run is a plain `advorch preprocess KIND CONFIG`: the pipeline keeps what
is unchanged, takes the output's run lock and appends to its history
(pipelines/history.py). A run that finds the lock held exits with code 75 and a message
(`--wait-lock` queues it instead); systemd never starts a unit twice and the CronJob
says `concurrencyPolicy: Forbid`, so overlapping runs are stopped twice over.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advorch import __version__

IMAGE = f"ghcr.io/advorch/advorch:{__version__}"
SHORTCUTS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
             "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
             "@annually": "0 0 1 1 *"}
DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]  # cron: 0 and 7 are Sunday


class ScheduleError(ValueError):
    """The schedule cannot be rendered or installed; the message says why and the fix."""


@dataclass
class Job:
    """One scheduled preprocessing run: what to run, from where, how often."""

    name: str
    kind: str
    config: Path              # absolute, on the scheduling host
    every: str                # cron expression (5 fields or @daily …)
    workdir: Path             # relative paths in the config resolve here
    output: str | None = None
    dask_address: str | None = None
    overrides: list[str] = field(default_factory=list)
    wait_lock: float = 0
    advorch: str = "advorch"  # the console script to run (absolute on a host)

    def args(self, config: str | None = None) -> list[str]:
        """The `advorch preprocess` command line (config path as given, or as seen in a container)."""
        cmd = [self.advorch, "preprocess", self.kind, config or str(self.config)]
        if self.output:
            cmd += ["--output", self.output]
        if self.dask_address:
            cmd += ["--dask-address", self.dask_address]
        if self.wait_lock:
            cmd += ["--wait-lock", f"{self.wait_lock:g}"]
        for o in self.overrides:
            cmd += ["--set", o]
        return cmd


def cron_fields(every: str) -> list[str]:
    """The five fields of a cron expression (shortcuts expanded); a clear error otherwise."""
    fields = SHORTCUTS.get(every.strip(), every).split()
    if len(fields) != 5:
        raise ScheduleError(f"--every {every!r}: give a cron expression of 5 fields "
                            "(minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\") or @daily")
    return fields


def on_calendar(every: str) -> str:
    """A cron expression as a systemd OnCalendar value (`0 2 * * 1-5` → `Mon..Fri *-*-* 2:0:00`)."""
    minute, hour, dom, month, dow = (_systemd_field(f) for f in cron_fields(every))
    if dow != "*":
        names = []
        for part in dow.split(","):
            lo, _, hi = part.partition("..")
            if not (lo.isdigit() and (not hi or hi.isdigit())):
                raise ScheduleError(f"--every {every!r}: day-of-week {part!r} must be numbers 0-7")
            names.append(DAYS[int(lo)] + (f"..{DAYS[int(hi)]}" if hi else ""))
        return f"{','.join(names)} *-{month}-{dom} {hour}:{minute}:00"
    return f"*-{month}-{dom} {hour}:{minute}:00"


def _systemd_field(f: str) -> str:
    # cron "*/15" is systemd "0/15" (start/step); ranges "1-5" are "1..5"
    return f.replace("*/", "0/").replace("-", "..")


def cron_line(job: Job) -> str:
    """A crontab line: cd to the work dir, run, append the output to a log beside it."""
    log = job.workdir / "logs" / f"preprocess-{job.name}.log"
    return (f"{' '.join(cron_fields(job.every))} mkdir -p {shlex.quote(str(log.parent))} && "
            f"cd {shlex.quote(str(job.workdir))} && {shlex.join(job.args())} "
            f">> {shlex.quote(str(log))} 2>&1")


def systemd_units(job: Job) -> dict[str, str]:
    """`advorch-NAME.service` (oneshot) and `advorch-NAME.timer` (OnCalendar, persistent)."""
    unit = f"advorch-preprocess-{job.name}"
    service = f"""[Unit]
Description=advorch incremental preprocessing: {job.name} ({job.kind})

[Service]
Type=oneshot
WorkingDirectory={job.workdir}
ExecStart={shlex.join(job.args())}
# exit 75: another run holds the output's lock; not a failure
SuccessExitStatus=75
"""
    timer = f"""[Unit]
Description=advorch incremental preprocessing schedule: {job.name}

[Timer]
OnCalendar={on_calendar(job.every)}
Persistent=true
Unit={unit}.service

[Install]
WantedBy=timers.target
"""
    return {f"{unit}.service": service, f"{unit}.timer": timer}


def cronjob(job: Job, image: str = IMAGE, namespace: str = "advorch", pvc: str = "advorch-data") -> str:
    """A Kubernetes CronJob (batch/v1) running the pipeline in the advorch image; shards and
    sources on the shared volume `pvc` at /data; never two runs at once (Forbid)."""
    in_image = f"/app/configs/{job.config.name}"
    container = {"name": "preprocess", "image": image, "workingDir": "/data",
                 "command": ["advorch", *job.args(in_image)[1:]],  # the image's console script
                 "env": [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                 "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}
    manifest = {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": f"advorch-preprocess-{job.name}", "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "advorch"}},
        "spec": {
            "schedule": " ".join(cron_fields(job.every)),
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}],
            }}}},
        },
    }
    return yaml.safe_dump(manifest, sort_keys=False)


def relative_paths(section: Any, prefix: str = "data") -> list[tuple[str, str]]:
    """(key, value) of every relative local path in a config section: in a CronJob they resolve
    against the container's working directory /data, not where the config was written."""
    if isinstance(section, dict):
        return [kv for k, v in section.items() for kv in relative_paths(v, f"{prefix}.{k}")]
    if isinstance(section, list):
        return [kv for v in section for kv in relative_paths(v, prefix)]
    if isinstance(section, str) and "/" in section and not section.startswith("/") and "://" not in section:
        return [(prefix, section)]
    return []


def install(job: Job, fmt: str) -> str:
    """Install the schedule on this host; return what was done. Kubernetes: apply it yourself."""
    if fmt == "cron":
        crontab = shutil.which("crontab")
        if not crontab:
            raise ScheduleError("crontab not found on this host: print the line with "
                                "`advorch schedule … --format cron` and add it where your cron reads")
        line = cron_line(job)
        current = subprocess.run([crontab, "-l"], capture_output=True, text=True).stdout
        kept = [x for x in current.splitlines() if f"preprocess-{job.name}.log" not in x]
        subprocess.run([crontab, "-"], input="\n".join([*kept, line]) + "\n", text=True, check=True)
        return f"crontab: {line}"
    if fmt == "systemd":
        folder = Path.home() / ".config" / "systemd" / "user"
        folder.mkdir(parents=True, exist_ok=True)
        units = systemd_units(job)
        for name, text in units.items():
            (folder / name).write_text(text)
        timer = next(n for n in units if n.endswith(".timer"))
        for args in (["daemon-reload"], ["enable", "--now", timer]):
            subprocess.run(["systemctl", "--user", *args], check=True)
        return f"installed {', '.join(units)} in {folder}; `systemctl --user list-timers` shows it"
    raise ScheduleError(f"--install supports cron and systemd; for {fmt}: "
                        f"advorch schedule … --format {fmt} | kubectl apply -f -")
