"""Settings of benchmarks/recsys_amr.py chosen on VALIDATION: a grid over Adam's learning rate and
β (model.l2) for MF-BPR and VBPR on amazon_scientific (image features), one seed, val HR@10 and
NDCG@10 of the best validation epoch (train.metric = val_ndcg_10). Test is not looked at.

    .venv/bin/python benchmarks/recsys_select.py --threads 2
    .venv/bin/python benchmarks/recsys_select.py --models vbpr --lrs 0.001 --l2s 0.003,0.01
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from inprocess import experiment, fit  # noqa: E402
from recsys_amr import COMMON, build  # noqa: E402

HEADER = ["| model | lr | β | val HR@10 | val NDCG@10 | best epoch |", "|---|---|---|---|---|---|"]


def trial(config: Path, data: str, model: str, lr: float, l2: float, args: argparse.Namespace
          ) -> tuple[dict[str, float], int]:
    """(val metrics of the best validation epoch, that epoch) of one setting, seed 0."""
    cfg = experiment(config, data, {"name": "clean"}, 0, [
        f'model.name="{model}"', *COMMON, f"train.lr={lr}", f"model.l2={l2}", f"train.epochs={args.epochs}",
        *args.extra])
    w, _ = fit(cfg, data)
    return w.task.evaluate(w.model, w.val, 1024, w.device), w.state["best_epoch"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mf_bpr,vbpr")
    ap.add_argument("--lrs", default="0.001,0.003")
    ap.add_argument("--l2s", default="0.001,0.003,0.01,0.03")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="recsys_select")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="config overrides")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows, lines = [], []
    grid = [(m, float(lr), float(l2)) for m in args.models.split(",") for lr in args.lrs.split(",")
            for l2 in args.l2s.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        config, data = build("image", tmp)
        for model, lr, l2 in grid:
            t0 = time.perf_counter()
            val, best = trial(config, data, model, lr, l2, args)
            key = f"{model} lr{lr:g} l2{l2:g}"
            rows += [report.row(key, f"val_{k}", val[k], None, 1, "fraction") for k in ("hr_10", "ndcg_10")]
            rows.append(report.row(key, "best_epoch", best, None, 1, "epoch"))
            lines.append(f"| {model} | {lr:g} | {l2:g} | {val['hr_10']:.4f} | {val['ndcg_10']:.4f} | "
                         f"{best} |")
            print(f"{key}: val HR@10 {val['hr_10']:.4f} NDCG@10 {val['ndcg_10']:.4f} best epoch {best} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            notes = [*HEADER, *lines, "", f"Other settings: {' '.join(COMMON)}, epochs {args.epochs}; "
                     "seed 0."]
            report.write(args.name, rows, "\n".join(notes))


if __name__ == "__main__":
    main()
