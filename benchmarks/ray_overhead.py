"""Ray Train overhead: `launch.fit` with 1 worker vs a plain PyTorch loop doing the same epochs.

Both train the same config (MR train split, batch 32, validation every epoch) with
the same seeds. The plain loop runs first, in this process, before Ray is started;
then `ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)` and
`advorch.trainers.launch.fit` with train.workers=1 and no MLflow (run_id None).

Measured:
- per-epoch time: the worker's own "epoch_seconds" metric vs the same span (train steps
  + metric reduction + validation) of the plain loop. Ratio target <= 1.10x. Ray Train
  V2 builds result.metrics_dataframe from the checkpoints it keeps (launch.fit:
  num_to_keep=2), so it holds the last two epochs only; every epoch is read from the
  run's progress.jsonl (rank 0 appends each report there) when it exists.
- total wall time: the whole `fit` call (trainer and worker start-up, process group,
  data loading, epochs, reports and checkpoints, shut-down) vs the whole plain loop
  (data loading, build, epochs, checkpoint saves). Their difference, less the
  difference in epoch time, is Ray's fixed cost per fit; `ray.init` is reported apart.

The Dask cluster of the preprocessing used to leave MALLOC_TRIM_THRESHOLD_=65536 (and
more) in this process's environment, which Ray's processes inherited (~2x slower
steps); pipelines/cluster.py now restores the environment, and --keep-dask-env skips
the benchmark's own guard to check that.

The plain loop is `train_worker` without its ray.train calls: the same `setup_worker`,
`train_epoch` and `save_state` (trainers/loop.py). It also checks that both produce
the same metrics.

    .venv/bin/python benchmarks/ray_overhead.py                    # at, 3 epochs, 2 runs each way
    .venv/bin/python benchmarks/ray_overhead.py --regimes clean,at --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrdata  # noqa: E402
import report  # noqa: E402

TARGET = 1.10  # Ray per-epoch time / plain per-epoch time
WORKER = "ray::RayTrainWorker"  # process title of a Ray Train worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--regimes", default="at",
                   help="comma-separated regimes (NAME or NAME+FILTER), each timed both ways")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the plain loop; also OMP_NUM_THREADS for the Ray "
                        "worker (Ray gives a 1-CPU worker 1 thread by default)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs each way (all plain runs first, then all fits)")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--data", default=None,
                   help="existing MR shard folder (built there if missing); default: a temp folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override, e.g. model.name=\"lstm\" (repeatable)")
    p.add_argument("--name", default="ray_overhead",
                   help="results/NAME.json and RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results")
    p.add_argument("--keep-dask-env", action="store_true",
                   help="keep the environment variables the preprocessing Dask cluster leaves "
                        "behind (MALLOC_TRIM_THRESHOLD_=65536, ...) for the Ray processes, as "
                        "`advorch demo` does; default: restore them")
    p.add_argument("--note", default="", help="extra text for the RESULTS.md notes (e.g. the load)")
    return p.parse_args(argv)


def experiment(args, data: str, storage: str, regime_set: list[str]):
    return mrdata.config(data, [
        *regime_set, f"train.epochs={args.epochs}", f"train.patience={args.epochs}",
        f"train.batch_size={args.batch_size}", "train.workers=1", f'train.storage="{storage}"',
        *args.overrides])


def plain_fit(cfg, data: str, ckpt_dir: str) -> tuple[float, list[dict[str, Any]], float]:
    """train_worker's work for rank 0 of 1 without Ray: the same setup, epochs and checkpoint
    file, minus the ray.train calls. Returns (wall s, per-epoch metrics, CPU s)."""
    from advorch.trainers.loop import save_state, setup_worker, train_epoch

    t_start, cpu_start = time.perf_counter(), time.process_time()
    w = setup_worker(cfg, data)
    history = []
    for epoch in range(cfg.train.epochs):
        metrics = train_epoch(w, epoch)
        save_state(w, ckpt_dir)
        history.append(metrics)
        if metrics["final_epoch"]:
            break
    return time.perf_counter() - t_start, history, time.process_time() - cpu_start


class CpuSampler:
    """CPU seconds (user + system) of this process and all its descendants (the local Ray
    instance's processes among them), sampled every `period` s in a thread, so that
    processes that exit before the end (the Train worker) are counted too.

    Wall times on a busy machine mix Ray's cost with other users' load; CPU seconds and
    the worker's CPU share (CPU seconds / seconds alive) tell the two apart.
    """

    def __init__(self, period: float = 0.5) -> None:
        import threading

        import psutil

        self.psutil, self.period = psutil, period
        self.me = psutil.Process()
        self.base: dict[int, float] = {}
        # pid → (label, cpu seconds, first seen, last seen)
        self.last: dict[int, tuple[str, float, float, float]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _label(self, p) -> str:
        if p.pid == self.me.pid:
            return "driver"
        cmd = p.cmdline()
        if cmd and cmd[0].startswith("ray::"):  # Ray's process title: ray::IDLE, ray::RayTrainWorker…
            return cmd[0].split()[0].split(".")[0]
        return p.name()

    def _sample(self) -> None:
        now = time.perf_counter()
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                cpu = t.user + t.system
                label = self._label(p)  # the title changes: a pre-started ray::IDLE becomes a worker
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            old = self.last.get(p.pid)
            first = old[2] if old and old[0] == label else now  # alive: since it took this title
            self.last[p.pid] = (label, cpu, first, now)

    def _run(self) -> None:
        while not self.stop_event.wait(self.period):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self.base = {pid: cpu for pid, (_, cpu, _, _) in self.last.items()}
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()
        self._sample()

    def by_label(self) -> dict[str, tuple[float, float]]:
        """label → (CPU seconds used while sampling, seconds seen alive)."""
        out: dict[str, tuple[float, float]] = {}
        for pid, (label, cpu, first, last) in self.last.items():
            c, a = out.get(label, (0.0, 0.0))
            out[label] = (c + cpu - self.base.get(pid, 0.0), a + last - first)
        return out


def ray_fit(cfg, data: str) -> tuple[float, list[dict[str, Any]], dict[str, tuple[float, float]], str]:
    """launch.fit with one worker, no MLflow: (wall seconds of the call, per-epoch metrics,
    CPU use by process label, where the per-epoch metrics came from)."""
    import json
    import uuid

    from advorch.trainers.launch import fit

    name = f"bench-{uuid.uuid4().hex[:8]}"
    with CpuSampler() as cpu:
        t0 = time.perf_counter()
        result = fit(cfg, data, run_id=None, tracking_uri=None, name=name)
        wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    # Ray Train V2 builds metrics_dataframe from the checkpoints it KEEPS (launch.fit:
    # CheckpointConfig(num_to_keep=2)), so it holds the last two epochs only. Rank 0 also
    # appends every epoch's reported metrics to <storage>/<name>/progress.jsonl: use that
    # when it is there (checked against metrics_dataframe), else metrics_dataframe.
    kept = sorted(result.metrics_dataframe.to_dict("records"), key=lambda m: m["epoch"])
    progress = Path(cfg.train.storage).absolute() / name / "progress.jsonl"
    if progress.is_file():
        every = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
        by_epoch = {m["epoch"]: m for m in every}
        if all(by_epoch.get(m["epoch"], {}).get("epoch_seconds") == m["epoch_seconds"] for m in kept):
            return wall, every, cpu.by_label(), "progress.jsonl (all epochs)"
        print("warning: progress.jsonl disagrees with metrics_dataframe; using metrics_dataframe")
    return wall, kept, cpu.by_label(), "metrics_dataframe (kept checkpoints only)"


def probe_worker_threads() -> str:
    """torch threads and OMP_NUM_THREADS that a 1-CPU Ray worker process sees."""
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> str:
        import torch

        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")}
        return f"torch threads {torch.get_num_threads()}, " + ", ".join(f"{k}={v}" for k, v in env.items())

    return ray.get(threads.remote())


def others_cpu(cpu: dict[str, tuple[float, float]]) -> float:
    """CPU seconds of every sampled process but the Train worker (Ray's own and the driver)."""
    return sum(c for k, (c, _) in cpu.items() if k != WORKER)


def same_metrics(plain: list[dict], ray: list[dict],
                 keys=("train_loss", "train_accuracy", "val_accuracy", "val_loss")) -> str:
    """Do the Ray epochs (those in metrics_dataframe) match the plain epochs of the same index?"""
    by_epoch = {m["epoch"]: m for m in plain}
    diffs = [abs(m[k] - by_epoch[m["epoch"]][k]) for m in ray if m["epoch"] in by_epoch
             for k in keys]
    epochs = [int(m["epoch"]) for m in ray]
    return (f"identical on epochs {epochs}" if max(diffs, default=1.0) == 0
            else f"max |difference| {max(diffs, default=float('nan')):.2e} on epochs {epochs}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the Ray processes
    import torch

    torch.set_num_threads(args.threads)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    from advorch.trainers.adversarial import REGIMES

    regime_sets = {r: mrdata.regime_overrides(r, list(REGIMES)) for r in regimes}
    regimes = [r for r in regimes if regime_sets[r] is not None]
    if not regimes:
        return 2

    plain: dict[str, list] = {r: [] for r in regimes}  # (wall, epochs, cpu)
    rayed: dict[str, list] = {r: [] for r in regimes}  # (wall, epochs, cpu by process)
    t_begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="advorch-bench-") as tmp:
        data = args.data or str(Path(tmp) / "mr")
        _, _, leaked = mrdata.prepare(data, keep_env=args.keep_dask_env)
        storage = str(Path(tmp) / "ray_runs")
        cfgs = {r: experiment(args, data, storage, regime_sets[r]) for r in regimes}

        for rep in range(args.repeats):
            for r in regimes:
                with tempfile.TemporaryDirectory(dir=tmp) as ckpt:
                    wall, hist, cpu = plain_fit(cfgs[r], data, ckpt)
                plain[r].append((wall, hist, cpu))
                print(f"[plain #{rep}] {r}: {wall:.1f} s total ({cpu / wall:.0%} CPU), epoch s "
                      f"{[round(h['epoch_seconds'], 2) for h in hist]}, "
                      f"val_accuracy {[round(h['val_accuracy'], 4) for h in hist]}", flush=True)

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        ray_init = time.perf_counter() - t0
        print(f"ray.init: {ray_init:.1f} s", flush=True)
        try:
            worker_threads = probe_worker_threads()
            for rep in range(args.repeats):
                for r in regimes:
                    wall, hist, cpu, source = ray_fit(cfgs[r], data)
                    rayed[r].append((wall, hist, cpu))
                    w_cpu, w_alive = cpu.get(WORKER, (0.0, 0.0))
                    print(f"[ray   #{rep}] {r}: {wall:.1f} s total, epoch s "
                          f"{ {int(h['epoch']): round(h['epoch_seconds'], 2) for h in hist} }, "
                          f"val_accuracy {[round(h['val_accuracy'], 4) for h in hist]}; "
                          f"train worker {w_cpu:.1f} CPU s over {w_alive:.1f} s alive, "
                          f"other Ray processes {others_cpu(cpu):.1f} CPU s",
                          flush=True)
        finally:
            ray.shutdown()
    elapsed = time.perf_counter() - t_begin

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    rows = [report.row("ray.init", "wall", ray_init, None, 1, "s")]
    verdicts, cpu_lines = [], []
    print(f"\n{'regime':<8}{'way':<7}{'epoch s (median)':>18}{'total s':>9}"
          f"{'outside epochs s':>18}")
    for r in regimes:
        # per epoch: the epochs Ray reported (all, or the last two when only metrics_dataframe
        # was there), against the same epochs of the plain runs
        kept = sorted({int(h["epoch"]) for _, hist, _ in rayed[r] for h in hist})
        pe = [h["epoch_seconds"] for _, hist, _ in plain[r] for h in hist if h["epoch"] in kept]
        re_ = [h["epoch_seconds"] for _, hist, _ in rayed[r] for h in hist]
        ratio = statistics.median(re_) / statistics.median(pe)
        pt = [w for w, _, _ in plain[r]]
        rt = [w for w, _, _ in rayed[r]]
        # outside the epochs: total − Σ epoch_seconds; Ray's missing epochs (if any) are
        # estimated as the plain runs' same epochs × the per-epoch ratio
        po = [w - sum(h["epoch_seconds"] for h in hist) for w, hist, _ in plain[r]]
        p_missing = statistics.fmean(sum(h["epoch_seconds"] for h in hist if h["epoch"] not in kept)
                                     for _, hist, _ in plain[r])
        ro = [w - sum(h["epoch_seconds"] for h in hist) - p_missing * ratio
              for w, hist, _ in rayed[r]]
        fixed = statistics.fmean(ro) - statistics.fmean(po)
        p_cpu = [c for _, _, c in plain[r]]
        w_cpu = [c.get(WORKER, (0.0, 0.0))[0] for _, _, c in rayed[r]]
        w_alive = [c.get(WORKER, (0.0, 1.0))[1] for _, _, c in rayed[r]]
        others = [others_cpu(c) for _, _, c in rayed[r]]
        mean = statistics.fmean
        rows += [
            *report.summary_rows(f"{r} plain", "epoch_seconds", pe, "s"),
            *report.summary_rows(f"{r} ray", "epoch_seconds", re_, "s"),
            report.row(r, "epoch_ratio_ray_to_plain_of_medians", ratio, None, len(re_), "x"),
            report.row(f"{r} plain", "total_wall", statistics.fmean(pt), sd(pt), len(pt), "s"),
            report.row(f"{r} ray", "total_wall_fit", statistics.fmean(rt), sd(rt), len(rt), "s"),
            report.row(r, "total_ratio_ray_to_plain", statistics.fmean(rt) / statistics.fmean(pt),
                       None, len(rt), "x"),
            report.row(f"{r} plain", "outside_epochs", statistics.fmean(po), sd(po), len(po), "s"),
            report.row(f"{r} ray", "outside_epochs", mean(ro), sd(ro), len(ro), "s"),
            report.row(r, "ray_fixed_cost_per_fit", fixed, None, len(ro), "s"),
            report.row(f"{r} plain", "cpu_seconds", mean(p_cpu), sd(p_cpu), len(p_cpu), "s"),
            report.row(f"{r} plain", "cpu_share", mean(p_cpu) / mean(pt), None, len(pt), "x"),
            report.row(f"{r} ray worker", "cpu_seconds", mean(w_cpu), sd(w_cpu), len(w_cpu), "s"),
            report.row(f"{r} ray worker", "cpu_share", mean(w_cpu) / mean(w_alive), None,
                       len(w_cpu), "x"),
            report.row(f"{r} ray others", "cpu_seconds", mean(others), sd(others),
                       len(others), "s"),
        ]
        for way, e, t, o in (("plain", pe, pt, po), ("ray", re_, rt, ro)):
            print(f"{r:<8}{way:<7}{statistics.median(e):>18.2f}{statistics.fmean(t):>9.1f}"
                  f"{statistics.fmean(o):>18.1f}")
        check = same_metrics(plain[r][0][1], rayed[r][0][1])
        verdicts.append(
            f"{r}: per-epoch ray/plain = {ratio:.3f}x on epochs {kept} (target <= {TARGET}x): "
            f"{'OK' if ratio <= TARGET else 'ABOVE TARGET'}; Ray fixed cost per fit ≈ "
            f"{fixed:.1f} s (+ ray.init {ray_init:.1f} s once per process); total "
            f"{mean(rt):.1f} s vs {mean(pt):.1f} s; metrics plain vs Ray: {check}")
        last = rayed[r][-1][2]
        cpu_lines.append(
            f"{r}: CPU s — plain loop {mean(p_cpu):.1f} ({mean(p_cpu) / mean(pt):.0%} of its "
            f"wall time); Ray train worker {mean(w_cpu):.1f} ({mean(w_cpu) / mean(w_alive):.0%} "
            f"of its {mean(w_alive):.1f} s alive); other Ray processes and driver "
            f"{mean(others):.1f} during the fit; last fit by process: "
            + ", ".join(f"{k} {c:.1f}" for k, (c, _) in sorted(last.items(), key=lambda kv: -kv[1][0])
                        if c >= 0.05))
    print(f"ray.init {ray_init:.1f} s; Ray worker: {worker_threads}; epochs from {source}; "
          f"whole benchmark {elapsed:.0f} s")
    for v in [*verdicts, *cpu_lines]:
        print(v)

    if not args.no_write:
        notes = [
            f"- {args.epochs} epochs of the MR train split (batch {args.batch_size}, validation "
            f"every epoch), {args.repeats} run(s) each way; plain loop in this process with "
            f"torch.set_num_threads({args.threads}), run before Ray starts; Ray: "
            f"`ray.init(num_cpus={args.num_cpus}, include_dashboard=False, log_to_driver=False)`, "
            f"`launch.fit` with train.workers=1, no MLflow. Ray worker: {worker_threads}.",
            "- Environment left by the preprocessing Dask cluster: "
            + (f"{dict(sorted(leaked.items()))}, "
               + ("KEPT for the Ray processes (--keep-dask-env)." if args.keep_dask_env
                  else "restored before Ray started.") if leaked else "none (shards up to date)."),
            f"- Per epoch: the worker's own `epoch_seconds` (train steps + metric reduction + "
            f"validation), read from {source}, against the plain loop's same span of the same "
            "epochs (Ray Train V2 fills `result.metrics_dataframe` from the KEPT checkpoints only: "
            "`launch.fit` keeps 2). `*_median` rows hold the median in `mean`.",
            "- `total_wall*`: the whole plain loop / the whole `fit` call. `outside_epochs` = "
            "total − Σ epoch_seconds (data loading, build, checkpoints; for Ray also trainer and "
            "worker start-up, process group, reports, shut-down); `ray_fixed_cost_per_fit` = "
            "ray − plain of it. `ray.init` is paid once per process, not per fit.",
            "- CPU seconds (psutil, sampled every 0.5 s): on a busy machine a CPU share well "
            "below 100% means the process waited for a core.",
            *(f"- {v}" for v in [*verdicts, *cpu_lines]),
            *([f"- {args.note}"] if args.note else []),
        ]
        path = report.write(args.name, rows, notes="\n".join(notes))
        print(f"wrote {path} and the {args.name!r} section of {report.RESULTS_MD}")
    return 0


if __name__ == "__main__":  # required: the MR pipeline starts a Dask LocalCluster (spawn)
    sys.exit(main())
