"""Cost of one training step per adversarial regime, relative to clean training of the same model.

Two models, each timed as its own group in one process:

    MR      LSTM-Attention (D=128, H=140) on one batch of MR train sentences (B=32)
    digits  the image CNN (trainers/models/image_cnn.py) on one batch of real 8×8 digits (B=64):
            `advorch preprocess images configs/digits.toml`, or, where that pipeline or config
            is missing or fails, sklearn.datasets.load_digits() directly (pixels = images/16)

Within a group every row trains its own copy of the model (built by `trainers.loop.build`, so
identical initial weights) with Adam on THE SAME batch, interleaved step by step (the order
alternates every round), so slow drifts of the machine hit all rows alike. The statistic is
the median `train_step` wall time; the ratio is median(row) / median(clean of that group).

A row is NAME[:key=value[:key=value...]]; NAME is a preset (PRESETS: input_gradient_fd,
pgd_linf), or regime terms joined by "+" ("fgsm+input_gradient"), where a part "sf" / "cat"
is regime.filter (the old "attention_at+sf" rows); key=value are regime.* settings of that
row only ("input_gradient:lam_ig=0.1:fd_step=0.001"). Digits rows are named "cnn/NAME".
Rows whose terms do not exist, or that `adversarial.check` rejects, are skipped with a message.

    .venv/bin/python benchmarks/step_cost.py                          # both models, every row
    .venv/bin/python benchmarks/step_cost.py --cnn-regimes ""         # MR only
    .venv/bin/python benchmarks/step_cost.py --regimes "" --cnn-regimes clean,fgsm
    .venv/bin/python benchmarks/step_cost.py --profile 20             # + where the time goes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrdata  # noqa: E402
import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits.toml"
MR_ROWS = ("clean,at,attention_at,attention_at+sf,attention_at+cat,vat,at_vat,pgd,"
           "fgsm,input_gradient,input_gradient_fd")
CNN_ROWS = "clean,fgsm,input_gradient,input_gradient_fd,pgd_linf"
CNN_PREFIX = "cnn/"
AMP = False  # --amp: train_step's bfloat16 autocast (CUDA only)
FILTERS = ("sf", "cat")

# row name → regime settings (regime.name included) when it is not a plain term list
PRESETS: dict[str, dict[str, Any]] = {
    "input_gradient_fd": {"name": "input_gradient", "ig_method": "finite_difference"},
    "pgd_linf": {"name": "pgd", "norm": "linf"},
}
# per-model settings of a row (before the row's own :key=value): ε of the L∞ rows. The MR rows
# of the old table (at … pgd) keep the config defaults (ε = 1.0 L2), as before.
ROW_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "mr": {"fgsm": {"epsilon": 0.1}},
    "cnn": {"fgsm": {"epsilon": 0.1}, "pgd_linf": {"epsilon": 0.1}},
}
# row (without the cnn/ prefix) → maximal median step-time ratio to clean, on both models
TARGETS = {"at": 2.1, "fgsm": 2.1, "input_gradient": 3.0, "input_gradient_fd": 2.2}
# counted forward/backward pairs; None: no simple count (double backprop, finite differences)
THEORY: dict[str, float | None] = {"at": 2.0, "fgsm": 2.0, "input_gradient": None,
                                   "input_gradient_fd": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--regimes", default=MR_ROWS,
                   help="MR rows, comma-separated (see the module docstring); '' skips MR")
    p.add_argument("--cnn-regimes", default=CNN_ROWS,
                   help="digits (image CNN) rows, comma-separated; '' skips the CNN")
    p.add_argument("--model", default="lstm_attention", choices=["lstm_attention", "lstm"],
                   help="the MR model")
    p.add_argument("--batch-size", type=int, default=32, help="MR batch")
    p.add_argument("--cnn-batch-size", type=int, default=64, help="digits batch")
    p.add_argument("--warmup", type=int, default=30, help="MR untimed rounds (one step per row)")
    p.add_argument("--rounds", type=int, default=200, help="MR timed rounds (one step per row)")
    p.add_argument("--cnn-warmup", type=int, default=100, help="digits untimed rounds")
    p.add_argument("--cnn-rounds", type=int, default=600, help="digits timed rounds")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data", default=None,
                   help="existing MR shard folder (built there if missing); default: a temp folder")
    p.add_argument("--digits", default="/tmp/digits_bench",
                   help="digits shard folder (built there by `advorch preprocess images` if missing)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every row of both models (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS steps per row with torch.profiler")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (benchmarks/gpu_check.sh)")
    p.add_argument("--amp", action="store_true", help="train.amp: bfloat16 autocast (CUDA)")
    p.add_argument("--name", default="step_cost", help="results/NAME.json and RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results")
    p.add_argument("--note", default="", help="extra text for the RESULTS.md notes (e.g. the load)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- rows → regime settings


def _toml_value(text: str) -> str:
    """A setting's value as a TOML literal: as written when it is one, else a quoted string."""
    try:
        tomllib.loads(f"v = {text}")
        return text
    except tomllib.TOMLDecodeError:
        return json.dumps(text)


def row_overrides(spec: str, model: str) -> list[str] | None:
    """`regime.*` overrides of a row spec (see the module docstring); None, after a message,
    when it names a term that does not exist (yet)."""
    from advorch.trainers.adversarial import term_names

    row, *extra = spec.split(":")
    if row in PRESETS:
        settings = dict(PRESETS[row])
    else:
        parts = row.split("+")
        terms, filters = [p for p in parts if p not in FILTERS], [p for p in parts if p in FILTERS]
        settings = {"name": "+".join(terms) or "clean", **({"filter": filters[0]} if filters else {})}
    try:
        term_names(settings["name"])
    except ValueError as e:
        print(f"skipping {spec!r}: {e}")
        return None
    settings.update(ROW_SETTINGS.get(model, {}).get(row, {}))
    out = [f"regime.{k}={json.dumps(v)}" for k, v in settings.items()]
    for kv in extra:
        key, sep, value = kv.partition("=")
        if not sep:
            print(f"skipping {spec!r}: setting {kv!r} is not key=value")
            return None
        out.append(f"regime.{key.strip().removeprefix('regime.')}={_toml_value(value.strip())}")
    return out


# ---------------------------------------------------------------- the two groups


@dataclass
class Group:
    """One model's rows: {row: (model, task, regime, optimizer)}, the shared batch, and what to say."""

    key: str  # "mr" or "cnn"
    runners: dict[str, tuple[Any, Any, Any, Any]]
    batch: dict[str, Any]
    grad_clip: float
    warmup: int
    rounds: int
    describe: str
    notes: list[str] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    wall: float = 0.0
    load: float = 0.0  # 1-minute load average at the end of the timed section


def make_runners(specs: list[str], model_key: str, prefix: str, config, spec):
    """{row: (model, task, regime, optimizer)} for the rows that build and pass `check`."""
    from advorch.config import ConfigError
    from advorch.trainers.adversarial import check
    from advorch.trainers.loop import build, make_optimizer

    runners, cfg0 = {}, None
    for s in specs:
        regime_set = row_overrides(s, model_key)
        if regime_set is None:
            continue
        try:
            cfg = config(regime_set)
        except ConfigError as e:
            print(f"skipping {s!r}: {e}")
            continue
        problems = check(cfg, spec)
        if problems:
            print(f"skipping {s!r}: " + "; ".join(problems))
            continue
        model, task, regime = build(cfg, spec)
        runners[prefix + s] = (model, task, regime, make_optimizer(cfg, model))
        cfg0 = cfg0 or cfg
    return runners, cfg0


def to_device(runners: dict[str, tuple], device: str) -> None:
    """Models and class weights onto the device (in place: the optimizers keep their parameters)."""
    for model, task, _, _ in runners.values():
        model.to(device)
        task.to(device)


def mr_group(args, data: str) -> Group | None:
    import torch

    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice, make_batch

    specs = [r.strip() for r in args.regimes.split(",") if r.strip()]
    spec = read_spec(data)
    base = [f'model.name="{args.model}"', "model.embedding_dim=128", "model.hidden_dim=140",
            f"train.batch_size={args.batch_size}"]
    runners, cfg = make_runners(specs, "mr", "", lambda o: mrdata.config(data, [*base, *o, *args.overrides]),
                                spec)
    if not runners:
        return None
    train = load_slice(spec, "train", 0, 1, cfg.model.max_length)
    batch = make_batch(train, torch.arange(args.batch_size), torch.device(args.device))
    to_device(runners, args.device)
    return Group("mr", runners, batch, cfg.train.grad_clip, args.warmup, args.rounds,
                 f"MR: model {args.model} (D=128, H=140, dropout {cfg.model.dropout}), Adam, grad clip "
                 f"{cfg.train.grad_clip}; the same batch {tuple(batch['tokens'].shape)} (B, T) = the first "
                 f"{args.batch_size} rows of the MR train split, for every step of every row")


def _digits_toml_overrides() -> list[str]:
    """configs/digits.toml's model and train keys as overrides (its regime is the rows' own)."""
    if not DIGITS_CONFIG.is_file():
        return []
    raw = tomllib.loads(DIGITS_CONFIG.read_text(encoding="utf-8"))
    return [f"{section}.{k}={json.dumps(v)}" for section in ("model", "train")
            for k, v in raw.get(section, {}).items() if not isinstance(v, dict)]


def digits_data(args) -> tuple[Any, dict[str, Any], str]:
    """(spec, batch of the first B train rows, where they came from): the advorch images pipeline's
    shards, else sklearn's load_digits() directly."""
    import torch

    from advorch.pipelines.spec import DatasetSpec, InputSpec, read_spec
    from advorch.trainers.data import load_slice, make_batch

    out, why = Path(args.digits), ""
    if not (out / "manifest.json").is_file():
        if not DIGITS_CONFIG.is_file():
            why = f"{DIGITS_CONFIG.relative_to(ROOT)} does not exist"
        else:
            cmd = [str(Path(sys.executable).parent / "advorch"), "preprocess", "images",
                   str(DIGITS_CONFIG), "--output", str(out)]
            print("$ " + " ".join(cmd), flush=True)
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            print((res.stdout + res.stderr)[-2000:], flush=True)
            if res.returncode:
                why = f"`advorch preprocess images` exited {res.returncode}"
    if not why:
        try:
            spec = read_spec(str(out))
            train = load_slice(spec, "train", 0, 1)
            batch = make_batch(train, torch.arange(args.cnn_batch_size), torch.device("cpu"))
            return spec, batch, (f"the first {args.cnn_batch_size} rows of the train split of "
                                 f"`advorch preprocess images configs/digits.toml --output {out}`")
        except Exception as e:  # a half-written pipeline: say so and use sklearn's copy
            why = f"reading {out} failed: {type(e).__name__}: {e}"
    print(f"digits: {why}; building the batch from sklearn.datasets.load_digits() directly", flush=True)
    from sklearn.datasets import load_digits

    d = load_digits()
    n = args.cnn_batch_size
    batch = {"pixels": torch.tensor(d.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1),
             "label": torch.tensor(d.target[:n], dtype=torch.int64)}
    spec = DatasetSpec(uri="sklearn:load_digits", kind="images", task="classification",
                       inputs={"pixels": InputSpec("pixels", "pixels", (1, 8, 8), "uint8", (0.0, 1.0))},
                       classes=[str(c) for c in range(10)], split_rows={"train": len(d.target)},
                       class_counts={})
    return spec, batch, (f"the first {n} images of sklearn.datasets.load_digits() (pixels = images/16, "
                         f"B×1×8×8), not the advorch pipeline: {why}")


def cnn_group(args) -> Group | None:
    from advorch.config import load_config

    specs = [r.strip() for r in args.cnn_regimes.split(",") if r.strip()]
    spec, batch, source = digits_data(args)
    base = ['model.name="image_cnn"', *_digits_toml_overrides(), f"train.batch_size={args.cnn_batch_size}"]
    runners, cfg = make_runners(specs, "cnn", CNN_PREFIX,
                                lambda o: load_config(None, [*base, *o, *args.overrides]), spec)
    if not runners:
        return None
    m = cfg.model
    to_device(runners, args.device)
    batch = {k: v.to(args.device) for k, v in batch.items()}
    return Group("cnn", runners, batch, cfg.train.grad_clip, args.cnn_warmup, args.cnn_rounds,
                 f"digits: image_cnn (channels {m.channels}, {m.activation}, dropout {m.dropout}), Adam, "
                 f"grad clip {cfg.train.grad_clip}; the same batch {tuple(batch['pixels'].shape)} "
                 f"(B, C, H, W) = {source}, for every step of every row")


# ---------------------------------------------------------------- timing


def time_group(g: Group) -> None:
    import torch

    from advorch.trainers.loop import train_step

    names = list(g.runners)
    print(f"\n[{g.key}] {g.describe}\nrows {names}; {g.warmup} warm-up + {g.rounds} timed rounds",
          flush=True)

    def step(name: str) -> tuple[float, dict[str, float]]:
        model, task, regime, opt = g.runners[name]
        t0 = time.perf_counter()
        logs = train_step(model, task, regime, opt, g.batch, g.grad_clip, AMP)  # floats: work is done
        return time.perf_counter() - t0, logs

    # first step of every row from the same weights, batch and random state (dropout masks):
    # clean_loss must agree across rows, and the terms can be compared (e.g. the two penalties)
    for name in names:
        torch.manual_seed(1234)
        g.first[name] = step(name)[1]
    for _ in range(g.warmup - 1):
        for name in names:
            step(name)
    g.times = {n: [] for n in names}
    t_start = time.perf_counter()
    for i in range(g.rounds):
        for name in names if i % 2 == 0 else reversed(names):
            dt, g.last[name] = step(name)
            g.times[name].append(dt * 1e3)
    g.wall = time.perf_counter() - t_start
    g.load = os.getloadavg()[0]


def profile(g: Group, steps: int) -> None:
    """torch.profiler tables of the top operators per row (self CPU time, and total CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from advorch.trainers.loop import train_step

    for name, (model, task, regime, opt) in g.runners.items():
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                train_step(model, task, regime, opt, g.batch, g.grad_clip, AMP)
        avg = prof.key_averages()
        print(f"\n== torch.profiler, row {name!r}, {steps} steps, by self CPU time ==")
        print(avg.table(sort_by="self_cpu_time_total", row_limit=15))
        print(f"== row {name!r}, by total CPU time (autograd nodes and their children) ==")
        print(avg.table(sort_by="cpu_time_total", row_limit=12))


# ---------------------------------------------------------------- results


def _fmt_logs(logs: dict[str, float]) -> str:
    keep = [k for k in ("loss", "clean_loss", "adv_loss", "vat_loss", "ig_penalty", "kept") if k in logs]
    keep += [k for k in logs if k not in keep and k != "accuracy"]
    return ", ".join(f"{k} {logs[k]:.4g}" for k in keep)


def summarise(g: Group) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(report rows, verdict lines, first/last-step loss lines) of a timed group."""
    rows: list[dict[str, Any]] = []
    clean = CNN_PREFIX + "clean" if g.key == "cnn" else "clean"
    med = {n: statistics.median(ts) for n, ts in g.times.items()}
    print(f"\n[{g.key}] {'row':<26}{'median ms':>10}{'mean ms':>9}{'std ms':>8}{'p10':>8}{'p90':>8}"
          f"{'x clean':>9}{'paired x':>10}{'target':>8}")
    verdicts = []
    for n, ts in g.times.items():
        rows += report.summary_rows(n, "step_time", ts, "ms")
        q = statistics.quantiles(ts, n=10)
        ratio = paired = target = ""
        if clean in g.times and n != clean:
            r = med[n] / med[clean]
            pr = [a / b for a, b in zip(ts, g.times[clean], strict=True)]
            rows.append(report.row(n, "ratio_to_clean_of_medians", r, None, len(ts), "x"))
            rows.append(report.row(n, "ratio_to_clean_paired_median", statistics.median(pr),
                                   statistics.stdev(pr), len(pr), "x"))
            ratio, paired = f"{r:.2f}x", f"{statistics.median(pr):.2f}x"
            bare = n.removeprefix(CNN_PREFIX)
            if bare in TARGETS:
                limit, theory = TARGETS[bare], THEORY.get(bare)
                target = f"<={limit}x"
                verdicts.append(f"`{n}` = {r:.2f}x `{clean}` (paired {statistics.median(pr):.2f}x; target "
                                f"<= {limit}x{f', theory {theory}x' if theory else ''}): "
                                f"{'met' if r <= limit else 'NOT MET'}")
        print(f"[{g.key}] {n:<26}{med[n]:>10.2f}{statistics.fmean(ts):>9.2f}{statistics.stdev(ts):>8.2f}"
              f"{q[0]:>8.2f}{q[-1]:>8.2f}{ratio:>9}{paired:>10}{target:>8}")
    if clean not in g.times:
        print(f"[{g.key}] no {clean!r} row: no ratios")
    print(f"[{g.key}] timed section: {g.wall:.1f} s")
    for v in verdicts:
        print(v)
    losses = [f"`{n}`: first step {_fmt_logs(g.first[n])}; last {_fmt_logs(g.last[n])}" for n in g.times]
    for line in losses:
        print(f"[{g.key}] {line}")
    return rows, verdicts, losses


def main(argv: list[str] | None = None) -> int:
    global AMP
    args = parse_args(argv)
    import torch

    AMP = args.amp
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}) "
          f"(get_num_threads={torch.get_num_threads()})", flush=True)
    groups: list[Group] = []
    with tempfile.TemporaryDirectory(prefix="advorch-bench-") as tmp:
        if args.cnn_regimes.strip():
            g = cnn_group(args)
            if g:
                groups.append(g)
        if args.regimes.strip():
            data = args.data or str(Path(tmp) / "mr")
            mrdata.prepare(data)
            g = mr_group(args, data)
            if g:
                groups.append(g)
        if not groups:
            print("no known regime to time")
            return 2
        for g in groups:
            time_group(g)
        if args.profile:
            for g in groups:
                profile(g, args.profile)

    rows, notes = [], []
    for g in groups:
        r, verdicts, losses = summarise(g)
        rows += r
        notes += [f"- {g.describe}.", f"- {g.key}: {g.warmup} warm-up rounds, then {g.rounds} timed rounds "
                  f"({g.wall:.0f} s; 1-min load average {g.load:.2f} at their end, {os.cpu_count()} CPUs).",
                  *(f"- target: {v}" for v in verdicts),
                  f"- {g.key} losses (first step: same weights, batch and dropout masks for every row; "
                  f"last: after {g.warmup + g.rounds} steps on that one batch): " + " | ".join(losses)]

    if not args.no_write:
        notes += [
            f"- One process, torch.set_num_threads({args.threads}); a round is one `train_step` per row "
            "of a group, the order alternating every round; the digits group is timed first, then MR.",
            "- Row names: MR rows as before (`attention_at+sf`: filter sf); `fgsm` ε = 0.1 (L∞) on both "
            "models, `cnn/pgd_linf` ε = 0.1, 3 steps; `input_gradient` = double backprop, λ_ig = 1; "
            "`input_gradient_fd` = finite differences, λ_ig = 1, h = 0.01; other MR rows keep the "
            "config defaults (ε = 1.0, L2).",
            "- `*_median` rows: `mean` holds the median, `std` the sample std. "
            "`ratio_to_clean_of_medians` = median(row) / median(clean of its model); "
            "`ratio_to_clean_paired_median` = median over rounds of row/clean step times of "
            "the same round (std over rounds). Targets (issue): at, fgsm <= 2.1x, input_gradient "
            "(double backprop) <= 3.0x, input_gradient_fd <= 2.2x, on both models.",
            "- Passes per step (F forward, B backward; clean = F + B): at / fgsm 2F + 2B (the clean "
            "backward gives θ and ∇_x at once); input_gradient (double backprop) F + B_x(create_graph) + "
            "one backward through the clean and the gradient graph (second order: ≈ 2B, and through an "
            "LSTM on CPU it is unrolled into per-time-step mm/mul ops); input_gradient_fd 2F + 3B: an "
            "input-only B_x over the clean graph (retain_graph), the perturbed F, then one backward "
            "through both graphs — one backward more than AT (the CPU LSTM kernel computes its weight "
            "gradients even for the input-only B_x; convolutions skip them).",
            "- Theory (2.0x for at / fgsm) counts forward/backward pairs only; zero_grad, gradient "
            "clipping and the Adam update are paid once per step by every row, so a measured ratio "
            "somewhat below theory is expected.",
            *([f"- {args.note}"] if args.note else []),
        ]
        path = report.write(args.name, rows, notes="\n".join(notes))
        print(f"wrote {path} and the {args.name!r} section of {report.RESULTS_MD}")
    return 0


if __name__ == "__main__":  # required: the MR pipeline starts a Dask LocalCluster (spawn)
    sys.exit(main())
