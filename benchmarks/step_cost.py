"""Cost of one training step per adversarial regime, relative to clean training.

Every regime trains its own copy of the same model (LSTM-Attention, D=128, H=140,
built by `advorch.trainers.loop.build`, so identical initial weights) with Adam on
THE SAME batch of sentences from the MR train split. All regimes are timed in one
process, interleaved step by step (the order alternates every round), so slow
drifts of the machine hit them alike. The statistic is the median `train_step`
wall time; the ratio is median(regime) / median(clean). Target for "at": <= 2.1x
(theory 2.0x: two forward/backward pairs per step; the optimizer update is paid once
per step by every regime, so the measured ratio may be lower).

    .venv/bin/python benchmarks/step_cost.py                      # clean,at
    .venv/bin/python benchmarks/step_cost.py --regimes clean,at,vat --rounds 400
    .venv/bin/python benchmarks/step_cost.py --profile 20         # + where the time goes

Unknown regime names (not in advorch.trainers.adversarial.REGIMES yet) are skipped
with a message, so the list can name regimes before they exist.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrdata  # noqa: E402
import report  # noqa: E402

TARGETS = {"at": 2.1}  # regime → maximal median step-time ratio to clean
THEORY = {"at": 2.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--regimes", default="clean,at",
                   help="comma-separated regimes, NAME or NAME+FILTER (e.g. attention_at+sf); "
                        "unknown ones are skipped")
    p.add_argument("--model", default="lstm_attention", choices=["lstm_attention", "lstm"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=30, help="untimed rounds (one step per regime)")
    p.add_argument("--rounds", type=int, default=200, help="timed rounds (one step per regime)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data", default=None,
                   help="existing MR shard folder (built there if missing); default: a temp folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override, e.g. regime.epsilon=2.0 (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS steps per regime with torch.profiler")
    p.add_argument("--name", default="step_cost", help="results/NAME.json and RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results")
    p.add_argument("--note", default="", help="extra text for the RESULTS.md notes (e.g. the load)")
    return p.parse_args(argv)


def build_runners(args, data: str, regimes: list[str]):
    """{regime: (model, regime, optimizer)} for the regimes that exist, and the shared batch."""
    import torch

    from advorch.config import ConfigError
    from advorch.pipelines.shards import read_manifest
    from advorch.trainers.adversarial import REGIMES
    from advorch.trainers.data import load_slice, make_batch
    from advorch.trainers.loop import build, make_optimizer

    manifest = read_manifest(data)
    runners = {}
    batch = grad_clip = None
    for name in regimes:
        regime_set = mrdata.regime_overrides(name, list(REGIMES))
        if regime_set is None:
            continue
        overrides = [f'model.name="{args.model}"', "model.embedding_dim=128", "model.hidden_dim=140",
                     f"train.batch_size={args.batch_size}", *regime_set, *args.overrides]
        try:
            cfg = mrdata.config(data, overrides)
        except ConfigError as e:
            print(f"skipping {name!r}: {e}")
            continue
        if batch is None:
            train = load_slice(data, "train", 0, 1, cfg.model.max_length, manifest)
            batch = make_batch(train, torch.arange(args.batch_size), torch.device("cpu"))
            grad_clip = cfg.train.grad_clip
        model, regime = build(cfg, manifest)
        optimizer = make_optimizer(cfg, model)
        runners[name] = (model, regime, optimizer)
    return runners, batch, grad_clip


def profile(runners, batch, grad_clip, steps: int) -> None:
    """torch.profiler table of the top operators per regime (self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from advorch.trainers.loop import train_step

    for name, (model, regime, opt) in runners.items():
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                train_step(model, regime, opt, batch, grad_clip)
        print(f"\n== torch.profiler, regime {name!r}, {steps} steps ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from advorch.trainers.loop import train_step

    wanted = [r.strip() for r in args.regimes.split(",") if r.strip()]
    with tempfile.TemporaryDirectory(prefix="advorch-bench-") as tmp:
        data = args.data or str(Path(tmp) / "mr")
        mrdata.prepare(data)
        runners, batch, grad_clip = build_runners(args, data, wanted)
        if not runners:
            print("no known regime to time")
            return 2
        names = list(runners)
        print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}) "
              f"(get_num_threads={torch.get_num_threads()}); batch {tuple(batch['tokens'].shape)} "
              f"(B, T); regimes {names}; {args.warmup} warm-up + {args.rounds} timed rounds",
              flush=True)

        def step(name: str) -> float:
            model, regime, opt = runners[name]
            t0 = time.perf_counter()
            train_step(model, regime, opt, batch, grad_clip)  # returns floats: work is done
            return time.perf_counter() - t0

        for _ in range(args.warmup):
            for name in names:
                step(name)
        times: dict[str, list[float]] = {n: [] for n in names}
        t_start = time.perf_counter()
        for i in range(args.rounds):
            for name in names if i % 2 == 0 else reversed(names):
                times[name].append(step(name) * 1e3)
        wall = time.perf_counter() - t_start

        if args.profile:
            profile(runners, batch, grad_clip, args.profile)

    rows = []
    med = {n: statistics.median(ts) for n, ts in times.items()}
    print(f"\n{'regime':<18}{'median ms':>11}{'mean ms':>10}{'std ms':>9}{'p10':>8}{'p90':>8}"
          f"{'x clean':>9}{'paired x':>10}{'target':>8}")
    for n, ts in times.items():
        rows += report.summary_rows(n, "step_time", ts, "ms")
        q = statistics.quantiles(ts, n=10)
        ratio = paired = ""
        if "clean" in times and n != "clean":
            r = med[n] / med["clean"]
            pr = [a / b for a, b in zip(ts, times["clean"], strict=True)]
            rows.append(report.row(n, "ratio_to_clean_of_medians", r, None, len(ts), "x"))
            rows.append(report.row(n, "ratio_to_clean_paired_median", statistics.median(pr),
                                   statistics.stdev(pr), len(pr), "x"))
            ratio, paired = f"{r:.2f}x", f"{statistics.median(pr):.2f}x"
        target = f"<={TARGETS[n]}x" if n in TARGETS else ""
        print(f"{n:<18}{med[n]:>11.2f}{statistics.fmean(ts):>10.2f}{statistics.stdev(ts):>9.2f}"
              f"{q[0]:>8.2f}{q[-1]:>8.2f}{ratio:>9}{paired:>10}{target:>8}")
    print(f"timed section: {wall:.1f} s")
    verdicts = []
    if "clean" in times:
        for n, limit in TARGETS.items():
            if n in med:
                r = med[n] / med["clean"]
                verdicts.append(f"{n}/clean = {r:.2f}x (target <= {limit}x, theory {THEORY[n]}x): "
                                f"{'OK' if r <= limit else 'ABOVE TARGET'}")
    else:
        print("no 'clean' regime in the list: no ratios")
    for v in verdicts:
        print(v)

    if not args.no_write:
        notes = "\n".join([
            f"- One process, torch.set_num_threads({args.threads}); model {args.model} "
            f"(D=128, H=140), Adam, grad clip {grad_clip}; the same batch "
            f"{tuple(batch['tokens'].shape)} (B, T) = the first {args.batch_size} rows of the MR "
            "train split, for every step of every regime.",
            f"- {args.warmup} warm-up rounds, then {args.rounds} timed rounds; a round is one "
            "`train_step` per regime, the order alternating every round.",
            "- `*_median` rows: `mean` holds the median, `std` the sample std. "
            "`ratio_to_clean_of_medians` = median(regime) / median(clean); "
            "`ratio_to_clean_paired_median` = median over rounds of regime/clean step times of "
            "the same round (std over rounds).",
            "- Theory (2.0x for at) counts forward/backward pairs only; zero_grad, gradient "
            "clipping and the Adam update (dense over the whole embedding matrix) are paid once "
            "per step by every regime, so a measured ratio somewhat below theory is expected.",
            *(f"- {v}" for v in verdicts),
            *([f"- {args.note}"] if args.note else []),
        ])
        path = report.write(args.name, rows, notes=notes)
        print(f"wrote {path} and the {args.name!r} section of {report.RESULTS_MD}")
    return 0


if __name__ == "__main__":  # required: the MR pipeline starts a Dask LocalCluster (spawn)
    sys.exit(main())
