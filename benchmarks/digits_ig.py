"""Input-gradient regularisation vs clean and FGSM training on the real sklearn digits, in the
layout of Ross & Doshi-Velez (AAAI'18): clean test accuracy and FGSM test accuracy over ε,
white-box and transferred from the clean model of the same seed.

The shards come from configs/digits.toml (1,797 real 8 x 8 digits, seeded stratified 50/50
split, val = 10% of train, pixels in [0, 1]); model and training settings are that file's
[model] and [train]; each row replaces [regime] with its own:

    clean       cross-entropy only
    fgsm        FGSM-AT, ε 0.1, λ 1 (Goodfellow et al. 2015)
    ig_db       input gradient λ_ig·mean_i ‖∇_x ℓ_i‖², double backpropagation (exact)
    ig_fd       the same λ_ig, finite differences along the normalised gradient (step h)

λ_ig is chosen first on VALIDATION (seed 0, double backprop, each of --lams): the largest
white-box FGSM val accuracy at ε 0.1 among the λ whose clean val accuracy is within
--val-slack of the clean model's (--lam-ig skips the selection). Training is in-process
(`trainers.loop.setup_worker` / `train_epoch`, the loop Ray Train runs, one worker):
for 1,797 tiny images Ray's start-up would cost more than the training. The best
validation epoch (train.metric) is evaluated on the test split.

    .venv/bin/python benchmarks/digits_ig.py                # λ selection, then 5 seeds × 4 rows
    .venv/bin/python benchmarks/digits_ig.py --seeds 1 --lam-ig 0.3 --rows clean,ig_db
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from inprocess import experiment, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits.toml"
EPSILONS = (0.05, 0.1, 0.2, 0.3)
TARGET_EPS = 0.1
ROWS = [  # (key, label, regime); λ_ig / fd_step filled in at run time
    ("clean", "clean", {"name": "clean"}),
    ("fgsm", "FGSM-AT (ε 0.1, λ 1)", {"name": "fgsm", "epsilon": 0.1, "lam": 1.0}),
    ("ig_db", "input gradient, double backprop",
     {"name": "input_gradient", "ig_method": "double_backprop"}),
    ("ig_fd", "input gradient, finite difference",
     {"name": "input_gradient", "ig_method": "finite_difference"}),
]


def accuracies(model, task, split, source=None) -> dict[str, float]:
    """{"clean": acc, 0.05: acc, …} under FGSM on `split` (white-box, or crafted on `source`)."""
    from advorch.trainers.robustness import robustness

    rows = robustness(model, task, split, ["fgsm"], EPSILONS, source=source)
    return {("clean" if r["attack"] == "clean" else r["epsilon"]): r["accuracy"] for r in rows}


def select_lam(data: str, lams: list[float], extra: list[str], slack: float,
               log: list[str]) -> float:
    """λ_ig on validation (seed 0, double backprop): max FGSM val accuracy at ε 0.1 among the λ
    whose clean val accuracy is ≥ the clean model's − slack (the smallest λ if none is)."""
    w, _ = fit(experiment(CONFIG, data, ROWS[0][2], 0, extra), data)
    base, task = w.model, w.task
    ref = accuracies(base, task, w.val)
    log.append(f"| clean | {ref['clean']:.4f} | {ref[TARGET_EPS]:.4f} | – |")
    best, best_score = min(lams), None
    for lam in lams:
        w, secs = fit(experiment(CONFIG, data, {**ROWS[2][2], "lam_ig": lam}, 0, extra), data)
        m, task = w.model, w.task
        acc = accuracies(m, task, w.val)
        ok = acc["clean"] >= ref["clean"] - slack - 1e-9
        log.append(f"| λ_ig {lam:g} | {acc['clean']:.4f} | {acc[TARGET_EPS]:.4f} | {'yes' if ok else 'no'} |")
        print(f"select λ_ig {lam:g}: val clean {acc['clean']:.4f}, val FGSM ε {TARGET_EPS} "
              f"{acc[TARGET_EPS]:.4f} ({secs:.0f}s){'' if ok else ' (clean val below the slack)'}",
              flush=True)
        if ok and (best_score is None or acc[TARGET_EPS] > best_score):
            best, best_score = lam, acc[TARGET_EPS]
    return best


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", default=",".join(k for k, *_ in ROWS))
    ap.add_argument("--lam-ig", type=float, default=None, help="skip the λ selection, use this λ_ig")
    ap.add_argument("--lams", default="0.1,0.3,1.0", help="λ_ig candidates for the selection on val")
    ap.add_argument("--val-slack", type=float, default=0.02,
                    help="λ candidates must keep clean val accuracy within this of clean training")
    ap.add_argument("--fd-step", type=float, default=None, help="ig_fd step h (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default="digits_ig", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--dry-run", action="store_true", help="print the tables, write no results")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more config overrides")
    args = ap.parse_args()
    wanted = args.rows.split(",")
    unknown = set(wanted) - {k for k, *_ in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {[k for k, *_ in ROWS]}")

    import torch

    from advorch.config import load_config
    from advorch.pipelines import images

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/digits"
        cfg0 = load_config(CONFIG, [f'data.output="{data}"', *args.extra])
        summary = images.run(cfg0.data)
        print(f"digits shards: {summary.splits}", flush=True)
        fd_step = args.fd_step or cfg0.regime.fd_step
        selection: list[str] = []
        if args.lam_ig is None:
            lams = [float(x) for x in args.lams.split(",")]
            lam = select_lam(data, lams, args.extra, args.val_slack, selection)
            how = (f"chosen on validation (seed 0, double backprop) from {lams}: the best white-box FGSM "
                   f"val accuracy at ε {TARGET_EPS} among λ whose clean val accuracy is within "
                   f"{args.val_slack:g} of clean training's (val = {summary.splits['val']} images)")
        else:
            lam, how = args.lam_ig, "given (--lam-ig)"
        print(f"λ_ig = {lam:g} ({how})", flush=True)
        regimes = {k: ({**r, "lam_ig": lam} if k.startswith("ig") else r) for k, _, r in ROWS}
        regimes["ig_fd"]["fd_step"] = fd_step

        # results[key][column] = [per seed], column "clean" | ("white"|"transfer", ε)
        results: dict[str, dict] = {k: {} for k in wanted}
        secs: dict[str, list[float]] = {k: [] for k in wanted}
        epochs: dict[str, list[int]] = {k: [] for k in wanted}
        for seed in range(args.seeds):
            clean_model = None
            order = ["clean", *[k for k in wanted if k != "clean"]]  # the transfer source first
            for key in order:
                w, s = fit(experiment(CONFIG, data, regimes[key], seed, args.extra), data)
                model, task = w.model, w.task
                if key == "clean":
                    clean_model = model
                if key not in wanted:
                    continue
                test = _test(data)
                white = accuracies(model, task, test)
                transfer = accuracies(model, task, test, source=clean_model)
                cols = results[key]
                cols.setdefault("clean", []).append(white["clean"])
                for e in EPSILONS:
                    cols.setdefault(("white", e), []).append(white[e])
                    cols.setdefault(("transfer", e), []).append(transfer[e])
                secs[key].append(s)
                epochs[key].append(w.state["best_epoch"])
                print(f"seed {seed} {key:6s} clean {white['clean']:.4f} white "
                      f"{[round(white[e], 4) for e in EPSILONS]} transfer "
                      f"{[round(transfer[e], 4) for e in EPSILONS]} (best epoch {w.state['best_epoch']}, "
                      f"{s:.0f}s)", flush=True)
            write(args, results, secs, epochs, lam, how, fd_step, selection, cfg0,
                  time.perf_counter() - t_start, seed + 1)


_TEST: dict[str, object] = {}


def _test(data: str):
    """The whole test split (read once)."""
    if data not in _TEST:
        from advorch.pipelines.spec import read_spec
        from advorch.trainers.data import load_slice

        _TEST[data] = load_slice(read_spec(data), "test")
    return _TEST[data]


def write(args, results, secs, epochs, lam, how, fd_step, selection, cfg0, wall: float,
          seeds_done: int) -> None:
    rows, table = [], []
    labels = {k: label for k, label, _ in ROWS}
    header = ("| model | clean | " + " | ".join(f"white ε={e:g}" for e in EPSILONS) + " | "
              + " | ".join(f"transfer ε={e:g}" for e in EPSILONS) + " |")
    table += [header, "|---" * (2 + 2 * len(EPSILONS)) + "|"]
    summary = {}
    for key, cols in results.items():
        if not cols:
            continue
        cells = []
        for col in ["clean", *[("white", e) for e in EPSILONS], *[("transfer", e) for e in EPSILONS]]:
            m, s = mean_std(cols[col])
            summary[(key, col)] = m
            name = f"{key}/clean_accuracy" if col == "clean" else f"{key}/fgsm_{col[0]}_eps{col[1]:g}"
            rows.append(report.row(name, "test_accuracy_mean", m, s, len(cols[col]), "accuracy"))
            cells.append(f"{m:.3f} ± {s:.3f}")
        rows.append(report.row(f"{key}/train", "seconds_mean", statistics.fmean(secs[key]), None,
                               len(secs[key]), "s"))
        rows.append(report.row(f"{key}/train", "best_epoch_mean", statistics.fmean(epochs[key]), None,
                               len(epochs[key]), "epoch"))
        table.append(f"| {labels[key]} | " + " | ".join(cells) + " |")

    targets = []
    c = "clean"
    if (c, "clean") in summary:
        for key in [k for k in ("ig_db", "ig_fd") if (k, "clean") in summary]:
            mine, ref = summary[(key, ("white", TARGET_EPS))], summary[(c, ("white", TARGET_EPS))]
            gain = mine - ref
            targets.append(f"- {labels[key]}: white-box FGSM ε {TARGET_EPS}: {mine:.4f} vs clean {ref:.4f}, "
                           f"gain {gain:+.4f} (target ≥ +0.10): "
                           f"**{'met' if gain >= 0.10 else f'not met (short by {0.10 - gain:.4f})'}**")
            diffs = [summary[(key, ("transfer", e))] - summary[(c, ("white", e))] for e in EPSILONS]
            targets.append(f"- {labels[key]}: transferred from the clean model, minus clean's own accuracy "
                           f"under that attack, per ε {list(EPSILONS)}: {[round(d, 4) for d in diffs]} "
                           "(target > 0 at every ε): "
                           f"**{'met' if all(d > 0 for d in diffs) else 'not met'}**")
            gap = summary[(key, "clean")] - summary[(c, "clean")]
            targets.append(f"- {labels[key]}: clean accuracy {summary[(key, 'clean')]:.4f} vs clean training "
                           f"{summary[(c, 'clean')]:.4f}, difference {gap:+.4f} (target ≥ −0.01): "
                           f"**{'met' if gap >= -0.01 else f'not met (short by {-0.01 - gap:.4f})'}**")
    m, t = cfg0.model, cfg0.train
    notes = "\n".join([
        "Test accuracy, mean ± std over seeds (Ross & Doshi-Velez AAAI'18 layout: FGSM ε·sign(∇ₓL), "
        "pixels clipped to [0, 1]; white-box = crafted on the model itself, transfer = crafted on the "
        "clean model of the same seed; for the clean row both are the same).", "",
        *table, "",
        *(["λ_ig selection on validation (seed 0):", "",
           "| model | val clean | val FGSM ε 0.1 | within slack |", "|---|---|---|---|", *selection, ""]
          if selection else []),
        "Targets:", *targets, "",
        f"- Data: configs/digits.toml, sklearn digits (1,797 real 8 x 8 images), seeded stratified 50/50 "
        f"split (data.seed {cfg0.data.seed}, the same split for every seed), val = "
        f"{cfg0.data.val_fraction:.0%} of train, uint8 pixels read as [0, 1].",
        f"- Model: image_cnn channels {m.channels}, dropout {m.dropout}, activation {m.activation}; Adam lr "
        f"{t.lr}, batch {t.batch_size}, ≤ {t.epochs} epochs, patience {t.patience}, grad clip {t.grad_clip}, "
        f"best epoch by {t.metric}; seeds 0–{seeds_done - 1} (train.seed: init, batch order, dropout).",
        f"- Regimes: FGSM-AT ε 0.1 λ 1; input gradient λ_ig = {lam:g} ({how}); finite difference "
        f"step h = {fd_step:g} (pixels in [0, 1]).",
        "- How the settings were chosen (probes on the val split, seeds 0–1, not in this run): clean "
        "training lr 0.01 beat 0.003 on val loss (0.006 vs 0.029), channels [64, 128] was no better "
        "(val acc 0.989 vs 1.000) at twice the time, dropout 0.3 ≈ 0.1, batch 64 worse; val accuracy "
        "saturates at 1.0 on 90 images, so the best epoch is chosen by val loss. Finite-difference step "
        "h: 0.05 vs 0.01 at λ_ig 0.3 gave val FGSM ε 0.1 accuracy 0.800 vs 0.783 (2 seeds; within "
        "noise, both meet the targets). ReLU was kept: softplus was not needed (and its clean model "
        "was weaker in a single probe).",
        "- The double-backprop model's best epoch is (nearly) the last (`ig_db/train` best_epoch_mean): "
        "it is still improving at 60 epochs, capped to keep the script short. FGSM-AT (trained at the "
        "attack's own ε 0.1) is more robust than input-gradient regularisation here, white-box and "
        "transferred; the paper found the gradient-regularised models at least as robust to transferred "
        "FGSM as FGSM-AT, which this λ_ig does not reproduce. A larger λ_ig (1) costs ~11 points of "
        "clean val accuracy (selection table), so it is ruled out by the clean-accuracy target.",
        "- Training in-process (`trainers.loop.setup_worker` + `train_epoch`, one worker, no Ray): the "
        "same step and validation as a Ray Train worker; Ray's start-up would dominate at this size. "
        f"Whole script {wall / 60:.1f} min wall on this machine.",
    ])
    print(notes, flush=True)
    if not args.dry_run:
        report.write(args.name, rows, notes)


if __name__ == "__main__":
    main()
