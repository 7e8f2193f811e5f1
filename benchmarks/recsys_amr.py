"""AMR (Tang et al.) Tables 2-3 on real data: POP, MF-BPR, APR, VBPR and AMR, leave-one-out, the
held-out item among 999 sampled negatives (HR/NDCG@5/10/20), and the relative NDCG@10 drop under
adversarial feature perturbations (ε = 0.05, 0.1, 0.2) for VBPR and AMR; per-epoch time of our
VBPR and AMR; Cornac 3.0.1's VBPR and AMR side by side when its own environment exists
(benchmarks/cornac_env.sh, never a dependency of advorch).

Sources (real, ../shared/data/recsys): amazon_scientific with its 512-d image vectors
(Scientific.feat3CLS) and with its 512-d text vectors (feat1CLS); Pinterest pairs (no features
offline: MF-BPR / APR only). Settings (SETTINGS) were chosen on the validation split. Training is
in-process (benchmarks/inprocess.py: the loop Ray Train runs, one worker).

    .venv/bin/python benchmarks/recsys_amr.py --seeds 5
    .venv/bin/python benchmarks/recsys_amr.py --seeds 3 --sources pinterest,text --no-cornac \
        --name recsys_amr_more
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from inprocess import experiment, fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCI = "../shared/data/recsys/amazon_scientific"
CORNAC = ROOT / "benchmarks" / ".venv-cornac" / "bin" / "python"
SOURCES = {  # name: (config, overrides, models)
    "image": ("amazon_scientific", [], ["pop", "mf_bpr", "apr", "vbpr", "amr"]),
    "text": ("amazon_scientific", [f'data.interactions.features.path="{SCI}/Scientific.feat1CLS"'],
             ["vbpr", "amr"]),
    "pinterest": ("pinterest", [], ["pop", "mf_bpr", "apr"]),
}
TITLES = {"image": "amazon_scientific, image features", "text": "amazon_scientific, text features",
          "pinterest": "pinterest (no features)"}
COMMON = ["model.embedding_dim=64", "train.batch_size=512", "train.epochs=100", "train.patience=8",
          "train.lr=0.001", 'train.metric="val_ndcg_10"', "train.grad_clip=0", "train.workers=1"]
SETTINGS = {  # model: (model.name, regime, overrides); chosen on val (AMR §5.1: λ then ε)
    "mf_bpr": ("mf_bpr", {"name": "clean"}, ["model.l2=0.01"]),
    "apr": ("mf_bpr", {"name": "at", "epsilon": 0.5, "lam": 1.0, "warm_start": True}, ["model.l2=0.01"]),
    "vbpr": ("vbpr", {"name": "clean"}, ["model.l2=0.01"]),
    "amr": ("vbpr", {"name": "at", "epsilon": 1.0, "lam": 1.0, "inputs": ["features"], "warm_start": True},
            ["model.l2=0.01"]),
}
CUTS = ("hr_5", "hr_10", "hr_20", "ndcg_5", "ndcg_10", "ndcg_20")
EPSILONS = (0.05, 0.1, 0.2)


def build(source: str, tmp: str) -> tuple[Path, str]:
    """(config, dataset) of a source, built by the interactions pipeline."""
    from advorch.config import load_config
    from advorch.pipelines import interactions

    name, overrides, _ = SOURCES[source]
    config, data = ROOT / "configs" / f"{name}.toml", f"{tmp}/{source}"
    s = interactions.run(load_config(config, [f'data.output="{data}"', *overrides]).data)
    print(f"{source}: {s.manifest['interactions']}", flush=True)
    return config, data


def popularity(data: str):
    """(POP model, ranking task) of a dataset: items scored by their train interactions."""
    import torch

    from advorch.config import load_config
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.models import Popularity
    from advorch.trainers.tasks import Ranking

    spec = read_spec(data)
    task = Ranking.build(load_config(None, ['train.metric="val_ndcg_10"']).train, spec)
    from advorch.trainers.data import load_slice

    counts = torch.bincount(load_slice(spec, "train").labels, minlength=task.num_items)
    return Popularity(counts), task


def epoch_ms(w, epochs: int = 3) -> float:
    """Median training time of one epoch (train steps only, no validation), in ms."""
    from advorch.trainers.data import batches
    from advorch.trainers.loop import train_step

    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for step, b in enumerate(batches(w.train, w.cfg.train.batch_size, w.device, steps=w.steps,
                                         shuffle=True, seed=epoch)):
            train_step(w.model, w.task, w.regime, w.optimizer, w.task.prepare(b, step))
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run_source(source: str, config: Path, data: str, seeds: int, extra: list[str], got: dict) -> None:
    import torch

    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice
    from advorch.trainers.tasks.ranking import feature_robustness

    spec = read_spec(data)
    test, train = load_slice(spec, "test"), load_slice(spec, "train")
    for model in SOURCES[source][2]:
        for seed in range(seeds):
            t0 = time.perf_counter()
            if model == "pop":
                m, task = popularity(data)
                metrics = task.evaluate(m, test, 1024, torch.device("cpu"))
            else:
                name, regime, overrides = SETTINGS[model]
                cfg = experiment(config, data, regime, seed, [f'model.name="{name}"', *COMMON, *overrides,
                                                              *extra])
                w, _ = fit(cfg, data)
                metrics = w.task.evaluate(w.model, test, 1024, w.device)
                if name == "vbpr":
                    for r in feature_robustness(w.model, w.task, train, test, EPSILONS)[1:]:
                        metrics[f"drop_{r['attack']}_{r['epsilon']}"] = 100 * r["ndcg_10_drop"]
                if seed == 0 and source == "image" and name == "vbpr":
                    metrics["epoch_ms"] = epoch_ms(w)
            for k, v in metrics.items():
                got.setdefault((source, model), {}).setdefault(k, []).append(v)
            print(f"{source} {model} seed {seed}: HR@10 {metrics['hr_10']:.4f} NDCG@10 "
                  f"{metrics['ndcg_10']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)


def cornac(data: str, seeds: int) -> list[dict]:
    """Cornac 3.0.1's VBPR and AMR on the same dataset folder, in their own environment."""
    if not CORNAC.exists():
        print(f"no {CORNAC}: run benchmarks/cornac_env.sh for the Cornac columns", flush=True)
        return []
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([str(CORNAC), str(ROOT / "benchmarks" / "cornac_amr.py"), "--data", data,
                        "--seeds", str(seeds), "--out", f.name], check=True)
        return json.loads(Path(f.name).read_text())["rows"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sources", default="image,text,pinterest")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cornac", action="store_true")
    ap.add_argument("--name", default="recsys_amr", help="results name")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="config overrides")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    got: dict[tuple[str, str], dict[str, list[float]]] = {}
    cornac_rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources.split(","):
            config, data = build(source, tmp)
            run_source(source, config, data, args.seeds, args.extra, got)
            if source == "image" and not args.no_cornac:
                cornac_rows = cornac(data, args.seeds)
            write(args, got, cornac_rows, time.perf_counter() - t0)


def cell(xs: list[float], digits: int = 4) -> str:
    return f"{statistics.fmean(xs):.{digits}f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.{digits}f}"


def write(args: argparse.Namespace, got: dict, cornac_rows: list[dict], seconds: float) -> None:
    rows, lines = [], []
    for (source, model), metrics in got.items():
        for k, xs in metrics.items():
            unit = "ms" if k == "epoch_ms" else "%" if k.startswith("drop") else "fraction"
            rows.append(report.row(f"{source} {model} {k}", "mean", statistics.fmean(xs),
                                   statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs), unit))
        lines.append(f"| {TITLES[source]} | {model} | " + " | ".join(cell(metrics[k]) for k in CUTS) + " |")
    for model in ("cornac_vbpr", "cornac_amr"):
        mine = [r for r in cornac_rows if r["model"] == model]
        if mine:
            for k in (*CUTS, "epoch_ms"):
                xs = [r[k] for r in mine]
                rows.append(report.row(f"image {model} {k}", "mean", statistics.fmean(xs),
                                       statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs),
                                       "ms" if k == "epoch_ms" else "fraction"))
            lines.append(f"| {TITLES['image']} | {model} | "
                         + " | ".join(cell([r[k] for r in mine]) for k in CUTS) + " |")
    drops = [f"| {TITLES[s]} | {m} | " + " | ".join(
        cell(got[(s, m)][f"drop_{a}_{e}"], 1) for a in ("at", "random") for e in EPSILONS) + " |"
        for (s, m) in got if f"drop_at_{EPSILONS[0]}" in got[(s, m)]]
    ours = [(f"advorch {m}", got[("image", m)]["epoch_ms"]) for m in ("vbpr", "amr")
            if "epoch_ms" in got.get(("image", m), {})]
    theirs = [(m, [x["epoch_ms"] for x in cornac_rows if x["model"] == m])
              for m in ("cornac_vbpr", "cornac_amr")]
    timing = [f"| {name} | {statistics.fmean(xs):.0f} |" for name, xs in ours + theirs if xs]
    header = "| data | model | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 |"
    notes = "\n".join([
        header, "|---|---|---|---|---|---|---|---|", *lines, "",
        "Relative NDCG@10 drop (%) under feature perturbations of radius ε per item (AMR Table 3):", "",
        "| data | model | adv 0.05 | adv 0.1 | adv 0.2 | random 0.05 | random 0.1 | random 0.2 |",
        "|---|---|---|---|---|---|---|---|", *drops, "",
        "Per-epoch training time (amazon_scientific image, 27 batches of 512, train steps only):", "",
        "| model | ms/epoch |", "|---|---|", *timing, "",
        f"- {args.seeds} seed(s), mean ± std; settings: {json.dumps(SETTINGS)}; common: {COMMON}; "
        f"overrides {args.extra or 'none'}; wall time {seconds:.0f} s."])
    print(notes, flush=True)
    report.write(args.name, rows, notes)


if __name__ == "__main__":
    main()
