"""Ray Train overhead: `launch.fit` with 1 worker vs a plain PyTorch loop doing the same epochs.

Both train the same config (MR train split, batch 32, validation every epoch) with
the same seeds. The plain loop runs first, in this process, before Ray is started;
then `ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)` and
`advorch.trainers.launch.fit` with train.workers=1 and no MLflow (run_id None).

Measured:
- per-epoch time: the worker's own "epoch_seconds" metric (result.metrics_dataframe)
  vs the same span (train steps + metric reduction + validation) of the plain loop.
  Ratio target <= 1.10x.
- total wall time: the whole `fit` call (trainer and worker start-up, process group,
  data loading, epochs, reports and checkpoints, shut-down) vs the whole plain loop
  (data loading, build, epochs, checkpoint saves). Their difference, less the
  difference in epoch time, is Ray's fixed cost per fit; `ray.init` is reported apart.

The plain loop is `train_worker`'s per-epoch body without its ray.train calls, built
from the same pieces (load_slice, steps_per_epoch, build, batches, train_step,
evaluate, is_better): `train_worker` mixes Ray calls into its epoch loop, so it can
not be called without Ray. It also checks that both produce the same metrics.

    .venv/bin/python benchmarks/ray_overhead.py                    # regime at, 3 epochs
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--regimes", default="at", help="comma-separated regimes, each timed both ways")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the plain loop; also OMP_NUM_THREADS for the Ray "
                        "worker (Ray gives a 1-CPU worker 1 thread by default)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each (plain, fit) pair")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--data", default=None,
                   help="existing MR shard folder (built there if missing); default: a temp folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override, e.g. model.name=\"lstm\" (repeatable)")
    p.add_argument("--name", default="ray_overhead", help="results/NAME.json and RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results")
    return p.parse_args(argv)


def experiment(args, data: str, storage: str, regime: str):
    return mrdata.config(data, [
        f'regime.name="{regime}"', f"train.epochs={args.epochs}", f"train.patience={args.epochs}",
        f"train.batch_size={args.batch_size}", "train.workers=1", f'train.storage="{storage}"',
        *args.overrides])


def plain_fit(cfg, data: str, ckpt_dir: str) -> tuple[float, list[dict[str, Any]]]:
    """train_worker's work for rank 0 of 1, without Ray: (wall seconds, per-epoch metrics)."""
    import torch

    from advorch.pipelines.shards import read_manifest
    from advorch.trainers.data import batches, load_slice, steps_per_epoch
    from advorch.trainers.evaluate import evaluate
    from advorch.trainers.loop import CHECKPOINT_FILE, build, is_better, train_step

    t_start = time.perf_counter()
    device = torch.device("cpu")
    manifest = read_manifest(data)
    train = load_slice(data, "train", 0, 1, cfg.model.max_length, manifest)
    val = load_slice(data, "val", 0, 1, cfg.model.max_length, manifest)
    steps = steps_per_epoch(manifest["splits"]["train"]["rows"], 1, cfg.train.batch_size)
    model, regime = build(cfg, manifest)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    state = {"epoch": -1, "best_metric": None, "best_epoch": -1, "bad_epochs": 0, "best_model": None}
    history = []
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for batch in batches(train, cfg.train.batch_size, device, steps=steps, shuffle=True,
                             seed=cfg.train.seed * 100_003 + epoch * 101):  # rank 0
            for k, v in train_step(model, regime, optimizer, batch, cfg.train.grad_clip).items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {f"train_{k}": v / steps for k, v in sums.items() if k != "correct"}
        metrics["train_accuracy"] = sums["correct"] / (steps * cfg.train.batch_size)
        metrics.update(evaluate(model, val, cfg.train.batch_size * 4, device, prefix="val_"))
        metrics["epoch_seconds"] = time.perf_counter() - t0
        value = metrics[cfg.train.metric]
        if is_better(value, state["best_metric"], cfg.train.metric):
            state.update(best_metric=value, best_epoch=epoch, bad_epochs=0,
                         best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "state": state, "experiment": cfg.model_dump()},
                   os.path.join(ckpt_dir, CHECKPOINT_FILE))
        history.append(metrics)
        if state["bad_epochs"] >= cfg.train.patience:
            break
    return time.perf_counter() - t_start, history


def ray_fit(cfg, data: str) -> tuple[float, list[dict[str, Any]]]:
    """launch.fit with one worker, no MLflow: (wall seconds of the call, per-epoch metrics)."""
    from advorch.trainers.launch import fit

    t0 = time.perf_counter()
    result = fit(cfg, data, run_id=None, tracking_uri=None)
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    df = result.metrics_dataframe
    return wall, df.to_dict("records")


def probe_worker_threads() -> str:
    """torch threads and OMP_NUM_THREADS that a 1-CPU Ray worker process sees."""
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> str:
        import torch

        return f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"

    return ray.get(threads.remote())


def same_metrics(a: list[dict], b: list[dict], keys=("train_loss", "val_accuracy", "val_loss")) -> str:
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b, strict=False) for k in keys if k in x and k in y]
    if len(a) != len(b):
        return f"epoch counts differ ({len(a)} plain, {len(b)} Ray)"
    return "identical" if max(diffs, default=0.0) == 0 else f"max |difference| {max(diffs):.2e}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the Ray processes
    import torch

    torch.set_num_threads(args.threads)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    from advorch.trainers.adversarial import REGIMES

    for r in [r for r in regimes if r not in REGIMES]:
        print(f"skipping regime {r!r}: not implemented yet (known: {', '.join(REGIMES)})")
    regimes = [r for r in regimes if r in REGIMES]
    if not regimes:
        return 2

    plain: dict[str, list[tuple[float, list[dict]]]] = {r: [] for r in regimes}
    rayed: dict[str, list[tuple[float, list[dict]]]] = {r: [] for r in regimes}
    with tempfile.TemporaryDirectory(prefix="advorch-bench-") as tmp:
        data = args.data or str(Path(tmp) / "mr")
        mrdata.prepare(data)
        storage = str(Path(tmp) / "ray_runs")
        cfgs = {r: experiment(args, data, storage, r) for r in regimes}

        for rep in range(args.repeats):
            for r in regimes:
                with tempfile.TemporaryDirectory(dir=tmp) as ckpt:
                    wall, hist = plain_fit(cfgs[r], data, ckpt)
                plain[r].append((wall, hist))
                print(f"[plain #{rep}] {r}: {wall:.1f} s total, epochs "
                      f"{[round(h['epoch_seconds'], 2) for h in hist]} s, "
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
                    wall, hist = ray_fit(cfgs[r], data)
                    rayed[r].append((wall, hist))
                    print(f"[ray   #{rep}] {r}: {wall:.1f} s total, epochs "
                          f"{[round(h['epoch_seconds'], 2) for h in hist]} s, "
                          f"val_accuracy {[round(h['val_accuracy'], 4) for h in hist]}", flush=True)
        finally:
            ray.shutdown()

    rows = [report.row("ray.init", "wall", ray_init, None, 1, "s")]
    notes, verdicts = [], []
    print(f"\n{'regime':<8}{'way':<7}{'epoch s (median)':>18}{'total s':>9}{'outside epochs s':>18}")
    for r in regimes:
        pe = [h["epoch_seconds"] for _, hist in plain[r] for h in hist]
        re_ = [h["epoch_seconds"] for _, hist in rayed[r] for h in hist]
        pt = [w for w, _ in plain[r]]
        rt = [w for w, _ in rayed[r]]
        # wall time outside the epochs' own span, per run
        po = [w - sum(h["epoch_seconds"] for h in hist) for w, hist in plain[r]]
        ro = [w - sum(h["epoch_seconds"] for h in hist) for w, hist in rayed[r]]
        ratio = statistics.median(re_) / statistics.median(pe)
        fixed = statistics.fmean(ro) - statistics.fmean(po)
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        rows += [
            *report.summary_rows(f"{r} plain", "epoch_seconds", pe, "s"),
            *report.summary_rows(f"{r} ray", "epoch_seconds", re_, "s"),
            report.row(r, "epoch_ratio_ray_to_plain_of_medians", ratio, None, len(re_), "x"),
            report.row(f"{r} plain", "total_wall", statistics.fmean(pt), sd(pt), len(pt), "s"),
            report.row(f"{r} ray", "total_wall_fit", statistics.fmean(rt), sd(rt), len(rt), "s"),
            report.row(r, "total_ratio_ray_to_plain", statistics.fmean(rt) / statistics.fmean(pt),
                       None, len(rt), "x"),
            report.row(f"{r} plain", "outside_epochs", statistics.fmean(po), sd(po), len(po), "s"),
            report.row(f"{r} ray", "outside_epochs", statistics.fmean(ro), sd(ro), len(ro), "s"),
            report.row(r, "ray_fixed_cost_per_fit", fixed, None, len(ro), "s"),
        ]
        for way, e, t, o in (("plain", pe, pt, po), ("ray", re_, rt, ro)):
            print(f"{r:<8}{way:<7}{statistics.median(e):>18.2f}{statistics.fmean(t):>9.1f}"
                  f"{statistics.fmean(o):>18.1f}")
        check = same_metrics(plain[r][0][1], rayed[r][0][1])
        verdicts.append(f"{r}: per-epoch ray/plain = {ratio:.3f}x (target <= {TARGET}x): "
                        f"{'OK' if ratio <= TARGET else 'ABOVE TARGET'}; Ray fixed cost per fit "
                        f"{fixed:.1f} s (+ ray.init {ray_init:.1f} s once); total "
                        f"{statistics.fmean(rt):.1f} s vs {statistics.fmean(pt):.1f} s; "
                        f"metrics plain vs Ray: {check}")
    print(f"ray.init {ray_init:.1f} s; Ray worker: {worker_threads}")
    for v in verdicts:
        print(v)

    if not args.no_write:
        notes = [
            f"- {args.epochs} epochs of the MR train split (batch {args.batch_size}, validation "
            f"every epoch), {args.repeats} run(s) each way; plain loop in this process with "
            f"torch.set_num_threads({args.threads}), run before Ray starts; Ray: "
            f"`ray.init(num_cpus={args.num_cpus}, include_dashboard=False, log_to_driver=False)`, "
            "`launch.fit` with train.workers=1, no MLflow. Ray worker: " + worker_threads + ".",
            "- `epoch_seconds`: train steps + metric reduction + validation of one epoch (the "
            "worker's own metric for Ray; `*_median` rows hold the median in `mean`). "
            "`total_wall*`: the whole plain loop / the whole `fit` call. `outside_epochs` = "
            "total − Σ epoch_seconds (data loading, build, checkpoints; for Ray also trainer and "
            "worker start-up, process group, reports, shut-down); `ray_fixed_cost_per_fit` = "
            "ray − plain of it. `ray.init` is paid once per process, not per fit.",
            *(f"- {v}" for v in verdicts),
        ]
        path = report.write(args.name, rows, notes="\n".join(notes))
        print(f"wrote {path} and the {args.name!r} section of {report.RESULTS_MD}")
    return 0


if __name__ == "__main__":  # required: the MR pipeline starts a Dask LocalCluster (spawn)
    sys.exit(main())
