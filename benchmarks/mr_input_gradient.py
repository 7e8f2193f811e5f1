"""Input-gradient regularisation on Movie Review (LSTM-Attention, embeddings as the input) vs
clean training and all-step AT: clean test accuracy and test accuracy under the all-step
attack "at" (one L2 step of radius ε per sentence along ∇_e L, white-box) over an ε grid.

The shards are configs/mr.toml's (`advorch preprocess text configs/mr.toml --output DIR`,
then --data DIR; without --data they are built in a temporary folder). Rows:

    clean           cross-entropy only
    at              all-step AT, ε = configs/mr.toml's (8), λ 1 (Jia et al. KDD'19 eq. 1-2)
    ig_fd_lamX      input gradient λ_ig·mean_i ‖∇_e ℓ_i‖² on the embeddings, finite differences
                    (Finlay & Oberman: one extra forward/backward; double backprop through the
                    LSTM costs ~5x a clean step on CPU, benchmarks/step_cost.py), one row per λ
                    of --lams; the λ with the best val accuracy under "at" at the config's ε is
                    marked as chosen (on validation, never test)

Training is in-process (`trainers.loop.setup_worker` / `train_epoch`, one worker, batch
--batch = the 2 × 32 global batch of configs/mr.toml's two Ray workers), fewer epochs than
the config's 15 to stay within the time budget; the best validation epoch is tested.

    .venv/bin/advorch preprocess text configs/mr.toml --output /tmp/mr_ig
    .venv/bin/python benchmarks/mr_input_gradient.py --data /tmp/mr_ig --seeds 1
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
CONFIG = ROOT / "configs" / "mr.toml"
EPSILONS = (2.0, 4.0, 8.0)


def accuracies(w, split) -> dict:
    """{"clean": acc, ε: acc under "at"} on `split`, white-box."""
    from advorch.trainers.robustness import robustness

    rows = robustness(w.model, w.task, split, ["at"], EPSILONS, batch_size=256)
    return {("clean" if r["attack"] == "clean" else r["epsilon"]): r["accuracy"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="MR shards (default: built in a temporary folder)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lams", default="1,10", help="λ_ig values, one ig_fd row each")
    ap.add_argument("--fd-step", type=float, default=0.1,
                    help="finite-difference L2 step on a sentence's embeddings (N(0, 1) entries)")
    ap.add_argument("--rows", default="clean,at,ig_fd")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the tables, write no results")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more config overrides")
    args = ap.parse_args()

    import torch

    from advorch.config import load_config
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    extra = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", "train.workers=1", *args.extra]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            import mrdata

            data = f"{tmp}/mr"
            mrdata.prepare(data)
        base = load_config(CONFIG, [f'data.output="{data}"', *extra])
        at_eps = base.regime.epsilon
        lams = [float(x) for x in args.lams.split(",")]
        rows_wanted = args.rows.split(",")
        table = [("clean", "LSTM-Attention, clean", {"name": "clean"}),
                 ("at", f"+ all-step AT (ε {at_eps:g}, λ {base.regime.lam:g})",
                  {"name": "at", "epsilon": at_eps, "lam": base.regime.lam})]
        table += [(f"ig_fd_lam{lam:g}",
                   f"+ input gradient, finite difference (λ_ig {lam:g}, h {args.fd_step:g})",
                   {"name": "input_gradient", "lam_ig": lam, "ig_method": "finite_difference",
                    "fd_step": args.fd_step}) for lam in lams]
        table = [t for t in table if t[0].split("_lam")[0] in rows_wanted]
        test = load_slice(read_spec(data), "test", max_length=base.model.max_length)
        results: dict[str, dict] = {}
        for seed in range(args.seeds):
            for key, _, regime in table:
                print(f"seed {seed} {key}", flush=True)
                w, secs = fit(experiment(CONFIG, data, regime, seed, extra), data, verbose=True)
                te, va = accuracies(w, test), accuracies(w, w.val)
                r = results.setdefault(key, {"test": [], "val": [], "secs": [], "epoch": []})
                r["test"].append(te)
                r["val"].append(va)
                r["secs"].append(secs)
                r["epoch"].append(w.state["best_epoch"])
                print(f"seed {seed} {key}: test {te} val {va} (best epoch {w.state['best_epoch']}, "
                      f"{secs:.0f}s)", flush=True)
            write(args, table, results, at_eps, base, time.perf_counter() - t_start)


def write(args, table, results, at_eps, base, wall) -> None:
    mean = statistics.fmean
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    cols = ["clean", *EPSILONS]
    rows, lines = [], []
    ig_keys = [k for k, *_ in table if k.startswith("ig_fd") and k in results]
    chosen = max(ig_keys, key=lambda k: mean(v[at_eps] for v in results[k]["val"])) if ig_keys else None
    for key, label, _ in table:
        if key not in results:
            continue
        r = results[key]
        cells = []
        for c in cols:
            xs = [t[c] for t in r["test"]]
            name = f"{key}/clean_accuracy" if c == "clean" else f"{key}/at_eps{c:g}"
            rows.append(report.row(name, "test_accuracy_mean", mean(xs), sd(xs), len(xs), "accuracy"))
            cells.append(f"{mean(xs):.4f} ± {sd(xs):.4f}")
        va = [v[at_eps] for v in r["val"]]
        rows.append(report.row(f"{key}/val_at_eps{at_eps:g}", "val_accuracy_mean", mean(va), sd(va), len(va),
                               "accuracy"))
        rows.append(report.row(f"{key}/train", "seconds_mean", mean(r["secs"]), None, len(r["secs"]), "s"))
        mark = " (chosen on val)" if key == chosen else ""
        lines.append(f"| {label}{mark} | " + " | ".join(cells)
                     + f" | {mean(v['clean'] for v in r['val']):.4f} / {mean(va):.4f} |")
    header = ("| model | clean | " + " | ".join(f"at ε={e:g}" for e in EPSILONS)
              + f" | val clean / val at ε={at_eps:g} |")
    m, t = base.model, base.train
    notes = "\n".join([
        "Test accuracy (mean ± std over seeds) clean and under the all-step attack `at` (one L2 step of "
        "radius ε per sentence on the embeddings along ∇_e L, white-box; embeddings ~ N(0, 1), so ε is "
        "in those units).", "",
        header, "|---" * (3 + len(EPSILONS)) + "|", *lines, "",
        f"- configs/mr.toml: LSTM-Attention D {m.embedding_dim}, H {m.hidden_dim}, dropout {m.dropout}, "
        f"Adam lr {t.lr}; here in-process, one worker, batch {t.batch_size} (the config's 2 Ray workers × "
        f"32), ≤ {t.epochs} epochs (the config: 15; cut for time), patience {t.patience}, best epoch by "
        f"{t.metric}; seeds 0–{args.seeds - 1}; 50/50 split, val = 10% of train.",
        "- Input gradient: finite differences (one extra forward/backward; double backprop through the "
        f"CPU LSTM is ~5x a clean step), step h = {args.fd_step:g} along ∇ℓ_i/‖∇ℓ_i‖ in embedding "
        f"space; λ_ig per row, the chosen one by val accuracy under `at` ε {at_eps:g}.",
        f"- Whole script {wall / 60:.1f} min wall on this machine.",
    ])
    print(notes, flush=True)
    if not args.dry_run:
        report.write("mr_input_gradient", rows, notes)


if __name__ == "__main__":
    main()
