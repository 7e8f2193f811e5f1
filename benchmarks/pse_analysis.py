"""The promotion/suppression analysis (`advorch analyze pse`, trainers/pse.py) on the real digits
(image CNN) and MR (LSTM-Attention), clean and adversarially trained, several seeds: the share of
suppression-dominated, balanced and promotion-dominated adversarial examples under FGSM and PGD
(L∞) at two ε, and the masking experiment (the most attack-sensitive penultimate units zeroed at
test time, vs as many random units; the masked model re-attacked white-box).

Models train in-process (benchmarks/inprocess.py: the loop Ray Train runs, one worker, best
validation epoch) with the settings of configs/digits.toml and configs/mr.toml; only [regime]
differs per row:

    digits clean     cross-entropy only
    digits fgsm_at   FGSM-AT, ε 0.1 (L∞ on pixels in [0, 1]), λ 1
    mr clean         LSTM-Attention, cross-entropy only
    mr at            all-step AT, ε 8 (L2 over the sentence's embeddings), λ 1 (configs/mr.toml)

The analysis is `trainers.analysis.pse_analysis`, what `advorch analyze pse` runs before it logs:
the first --n rows of the test split (digits: all 898 images; MR: 500 of 5,331 sentences, as
the masking experiment re-attacks 13 times), units ranked on val. Seed 0 of
each dataset also writes the CAM figure (digits) / attention figure (MR) to benchmarks/results/,
and the analysis of 1,000 digits (test ∪ the first train rows) is timed.

    .venv/bin/python benchmarks/pse_analysis.py --seeds 5 --threads 2
    .venv/bin/python benchmarks/pse_analysis.py --seeds 1 --datasets digits
    .venv/bin/python benchmarks/pse_analysis.py --seeds 1 --datasets mediaeval --name pse_mediaeval
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
from inprocess import experiment, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # config, rows (key → regime), attacks, ε (L∞: pixels in [0, 1]; MR embeddings ~ N(0, 1))
    "digits": (ROOT / "configs" / "digits.toml",
               {"clean": {"name": "clean"}, "fgsm_at": {"name": "fgsm", "epsilon": 0.1, "lam": 1.0}},
               ("fgsm", "pgd_linf"), (0.1, 0.2)),
    "mr": (ROOT / "configs" / "mr.toml",
           {"clean": {"name": "clean"}, "at": {"name": "at", "epsilon": 8.0, "lam": 1.0}},
           ("fgsm", "pgd_linf"), (0.05, 0.1)),
    # Chen et al.'s Visual-CNN on the MediaEval 2016 tweet images (64 x 64), clean and MMAT online
    # (FGSM θ 0.1 on the images every batch); the settings of benchmarks/table1_crisis.py
    "mediaeval": (ROOT / "configs" / "mediaeval_tweets.toml",
                  {"clean": {"name": "clean"},
                   "mmat_online": {"name": "mmat", "schedule": "online", "epsilon": 0.1, "neighbours": 10,
                                   "threshold": 0.5}},
                  ("fgsm", "pgd_linf"), (0.05, 0.1)),
}
EXTRA = {"mediaeval": ['model.name="visual_cnn"', "train.epochs=6", "train.patience=2"]}
TYPES = ("suppression", "balanced", "promotion")
FRACTIONS = (0.01, 0.05, 0.1)


def build(name: str, tmp: str) -> str:
    """The dataset's shards in tmp."""
    from advorch.config import load_config
    from advorch.pipelines import images

    out = f"{tmp}/{name}"
    if name == "mr":
        mrdata.prepare(out)
    elif name == "mediaeval":
        from advorch.pipelines import tweets

        tweets.run(load_config(DATASETS[name][0], [f'data.output="{out}"']).data)
    else:
        images.run(load_config(DATASETS[name][0], [f'data.output="{out}"']).data)
    return out


def analyse_seed(name: str, key: str, data: str, seed: int, n: int, extra: list[str], figures: bool):
    """(PSEResult, train seconds, analysis seconds, worker, dataset spec, test rows) of one row and seed."""
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.analysis import first_rows, pse_analysis
    from advorch.trainers.data import load_slice

    config, rows, attacks, eps = DATASETS[name]
    cfg = experiment(config, data, rows[key], seed, EXTRA.get(name, []) + extra)
    w, train_s = fit(cfg, data)
    spec = read_spec(data)
    test = first_rows(load_slice(spec, "test", 0, 1, cfg.model.max_length), n)
    t0 = time.perf_counter()
    res = pse_analysis(w.model, w.task, test, first_rows(w.val, n), spec.classes, list(attacks), list(eps),
                       steps=10, fractions=FRACTIONS, seed=seed)
    secs = time.perf_counter() - t0
    if figures:
        write_figure(name, key, w, spec, test, res)
    return res, train_s, secs, w, spec, test


def write_figure(name: str, key: str, w, spec, data, res) -> None:
    """benchmarks/results/pse_{name}_{key}.png: CAMs of 3 images, or MR attention, clean vs adversarial."""
    import json

    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.analysis import pse_examples

    vocab = (json.loads(read_side_file(spec.uri, "vocab.json", spec.manifest))
             if "vocab.json" in spec.side_files else None)
    pse_examples(w.model, w.task, data, res, spec.classes, vocab, str(report.RESULTS_DIR),
                 f"pse_{name}_{key}")


def time_thousand(w, spec, test, seed: int) -> float:
    """Seconds of the digits analysis of 1,000 examples (test ∪ the first train rows)."""
    import torch

    from advorch.trainers.analysis import pse_analysis
    from advorch.trainers.data import TensorData

    data = TensorData({k: torch.cat([test.inputs[k], w.train.inputs[k]])[:1000] for k in test.inputs},
                      torch.cat([test.labels, w.train.labels])[:1000], (test.ids + w.train.ids)[:1000])
    _, _, attacks, eps = DATASETS["digits"]
    t0 = time.perf_counter()
    pse_analysis(w.model, w.task, data, w.val, spec.classes, list(attacks), list(eps), fractions=FRACTIONS,
                 seed=seed)
    return time.perf_counter() - t0


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_row(name: str, key: str, data: str, args: argparse.Namespace) -> list[dict]:
    """Result rows of one dataset × training row over the seeds: type shares per attack × ε, masking
    accuracies, train / analysis seconds (and, for digits clean seed 0, the 1,000-example timing)."""
    samples: dict[tuple[str, str, str], list[float]] = {}  # (row name, metric, unit) → per seed
    out = []

    def add(row: str, metric: str, unit: str, value: float) -> None:
        samples.setdefault((row, metric, unit), []).append(value)

    n = int(dict(x.split("=") for x in args.n.split(","))[name])
    for seed in range(args.seeds):
        res, train_s, secs, w, spec, test = analyse_seed(name, key, data, seed, n, args.extra, seed == 0)
        add(f"{name}/{key}", "train_seconds", "s", train_s)
        add(f"{name}/{key}", "analysis_seconds", "s", secs)
        for s in res.summaries:
            for metric in ("success", *TYPES, "mean_share"):
                add(f"{name}/{key}/{s['attack']}_eps{s['epsilon']:g}", metric,
                    "rate" if metric == "success" else "share", s[metric])
        for m in res.masking:
            pct = "" if m["units"] == "none" else f"_{100 * m['fraction']:g}pct"
            label = m["units"].replace(" ", "_") + pct
            for metric in ("clean_accuracy", "adv_accuracy"):
                add(f"{name}/{key}/mask_{label}", metric, "accuracy", m[metric])
        print(f"{name} {key} seed {seed}: " + "; ".join(
            f"{s['attack']} ε {s['epsilon']:g} success {s['success']:.3f} S/B/P "
            + "/".join(f"{s[t]:.2f}" for t in TYPES) for s in res.summaries)
            + f" (train {train_s:.0f}s, analysis {secs:.1f}s)", flush=True)
        if name == "digits" and key == "clean" and seed == 0:
            t = time_thousand(w, spec, test, seed)
            out.append(report.row("digits/analysis_1000", "seconds", t, None, 1, "s"))
            print(f"analysis of 1,000 digits: {t:.1f} s", flush=True)
    for (row, metric, unit), xs in samples.items():
        out.append(report.row(row, metric, *mean_std(xs), len(xs), unit))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default="digits,mr")
    ap.add_argument("--n", default="digits=1000,mr=500,mediaeval=1000",
                    help="test examples analysed per run, per dataset (digits has 898)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default="pse_analysis", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more config overrides")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            data = build(name, tmp)
            _, regimes, attacks, eps = DATASETS[name]
            for key in regimes:
                rows += run_row(name, key, data, args)
            notes.append(f"- {name}: attacks {', '.join(attacks)} at ε {', '.join(f'{x:g}' for x in eps)}; "
                         f"masking under {attacks[-1]} ε {max(eps):g} (units ranked on val).")
            report.write(args.name, rows, "\n".join(notes + [NOTES]))  # after each dataset
    print(report.table(rows))


NOTES = """- Shares are over the successful adversarial examples (untargeted: prediction ≠ true class; the
  target a is the class reached). s = S⁺/(S⁺+P⁺) with S = z_t(x) − z_t(x'), P = z_a(x') − z_a(x);
  suppression-dominated s ≥ 2/3, promotion-dominated s ≤ 1/3 (trainers/pse.py). `none` is 0 for
  successful examples by construction and is omitted.
- mask rows: `most_sensitive_Kpct` zeroes round(K%·units) (at least 1) of the penultimate units with
  the largest attack sensitivity (mean |Δh| / clean std, on val), `random_Kpct` as many random units
  (mean of 3 draws); adv_accuracy is re-attacked white-box on the masked model; `none` is unmasked.
- digits units: 64 (image_cnn channels [32, 64], global average pooled); MR units: 140 (attention-pooled
  LSTM states). Figures: results/pse_digits_*.png (CAMs), results/pse_mr_*.png (attention), seed 0."""


if __name__ == "__main__":
    main()
