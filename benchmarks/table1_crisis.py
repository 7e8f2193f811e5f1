"""Table I of Chen et al. (multimodal adversarial training for crisis tweets): per dataset and
model, test accuracy on the original test set and on its adversarial version, crafted against
the model being evaluated (eq. 1 FGSM on images, θ 0.1; eq. 2 word replacement, threshold 0.5,
10 candidates), with the model in eval mode.

    Visual-CNN / Text-CNN / MMN          regime clean
    Visual-CNN_adv / Text-CNN_adv / MMAT  regime mmat, schedule offline (Algorithm 1: train, craft
                                          the train split's adversarial copy once, retrain on both)
    … (online)                            regime mmat, schedule online: fresh adversarial examples
                                          of every batch (the paper's online variant)

Sources (real): the CrisisMMD events (text only: their images are not offline, so only the
text columns of Table I), from configs/crisismmd.toml with the event's file; MediaEval 2016
(fake / real, the 410 real images, image-disjoint split) from configs/mediaeval_tweets.toml.
Training is in-process (benchmarks/inprocess.py: the loop Ray Train runs, one worker).

    .venv/bin/python benchmarks/table1_crisis.py --source crisismmd --seeds 5
    .venv/bin/python benchmarks/table1_crisis.py --source mediaeval --seeds 1 --set train.epochs=6
    .venv/bin/python benchmarks/table1_crisis.py --source mediaeval --first-seed 1 --seeds 2 \
        --models mmn,mmat_online --name table1_mediaeval_mmat --set train.epochs=6
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
ANNOTATIONS = ROOT.parent / "shared" / "data" / "crisismmd" / "annotations"
EVENTS = {"california_wildfires": "California Wildfire", "hurricane_harvey": "Harvey Hurricane",
          "srilanka_floods": "Srilanka Floods"}
MODELS = [  # (key, Table I column, model, regime.schedule of the adversarial training or None)
    ("visual_cnn", "Visual-CNN", "visual_cnn", None),
    ("visual_cnn_adv", "Visual-CNN_adv", "visual_cnn", "offline"),
    ("visual_cnn_adv_online", "Visual-CNN_adv (online)", "visual_cnn", "online"),
    ("text_cnn", "Text-CNN", "text_cnn", None), ("text_cnn_adv", "Text-CNN_adv", "text_cnn", "offline"),
    ("mmn", "MMN", "mmn", None), ("mmat", "MMAT", "mmn", "offline"),
    ("mmat_online", "MMAT (online)", "mmn", "online")]
MMAT = {"name": "mmat", "schedule": "offline", "epsilon": 0.1, "neighbours": 10, "threshold": 0.5}
# Table I (original, adversarial) in %, per dataset and column
PAPER = {
    "California Wildfire": {"Visual-CNN": (86.16, 45.91), "Visual-CNN_adv": (85.53, 82.39),
                            "Text-CNN": (86.79, 76.73), "Text-CNN_adv": (87.42, 84.28),
                            "MMN": (88.68, 67.30), "MMAT": (88.05, 88.05)},
    "Harvey Hurricane": {"Visual-CNN": (80.67, 35.51), "Visual-CNN_adv": (80.22, 78.43),
                         "Text-CNN": (88.09, 73.26), "Text-CNN_adv": (88.09, 86.07),
                         "MMN": (89.21, 73.26), "MMAT": (87.42, 84.04)},
    "Srilanka Floods": {"Visual-CNN": (67.96, 36.89), "Visual-CNN_adv": (66.02, 66.02),
                        "Text-CNN": (92.23, 80.85), "Text-CNN_adv": (92.23, 89.32),
                        "MMN": (93.20, 79.61), "MMAT": (93.20, 89.32)},
}


def evaluate(w, data: str) -> tuple[float, float]:
    """(original, adversarial) test accuracy, the attack crafted against this model."""
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice
    from advorch.trainers.robustness import robustness

    test = load_slice(read_spec(data), "test", 0, 1, w.cfg.model.max_length)
    rows = robustness(w.model, w.task, test, ["fgsm_words"], [MMAT["epsilon"]],
                      neighbours=MMAT["neighbours"], threshold=MMAT["threshold"])
    return rows[0]["accuracy"], rows[1]["accuracy"]


def datasets(source: str, tmp: str, extra: list[str]) -> list[tuple[str, Path, str, list[str]]]:
    """(Table I dataset name, config, built dataset, the models it has inputs for)."""
    from advorch.config import load_config
    from advorch.pipelines import tweets

    out = []
    if source == "crisismmd":
        for event, title in EVENTS.items():
            data = f"{tmp}/{event}"
            files = f'data.tweets.files=["{ANNOTATIONS}/{event}_final_data.tsv"]'
            cfg = load_config(ROOT / "configs" / "crisismmd.toml", [f'data.output="{data}"', files, *extra])
            s = tweets.run(cfg.data)
            print(f"{event}: {s.splits}", flush=True)
            out.append((title, ROOT / "configs" / "crisismmd.toml", data, ["text_cnn", "text_cnn_adv"]))
    else:
        data = f"{tmp}/mediaeval"
        cfg = load_config(ROOT / "configs" / "mediaeval_tweets.toml", [f'data.output="{data}"', *extra])
        s = tweets.run(cfg.data)
        print(f"mediaeval: {s.splits}", flush=True)
        out.append(("MediaEval 2016", ROOT / "configs" / "mediaeval_tweets.toml", data,
                    [k for k, *_ in MODELS]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["crisismmd", "mediaeval"], default="crisismmd")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds - 1")
    ap.add_argument("--models", default=None, help="comma-separated keys (default: all the data has)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None, help="results name (default: table1_<source>)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="config overrides")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    columns = {k: (col, model, schedule) for k, col, model, schedule in MODELS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sources = datasets(args.source, tmp, args.extra)
        got: dict[tuple[str, str], dict[str, list[float]]] = {}
        # seeds outermost: a run cut short still has every column, with fewer seeds
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for title, config, data, keys in sources:
                for key in (args.models.split(",") if args.models else keys):
                    col, model, schedule = columns[key]
                    regime = {**MMAT, "schedule": schedule} if schedule else {"name": "clean"}
                    cfg = experiment(config, data, regime, seed, [f'model.name="{model}"', *args.extra])
                    w, secs = fit(cfg, data)
                    orig, adv_acc = evaluate(w, data)
                    cell = got.setdefault((title, col), {"original": [], "adversarial": []})
                    cell["original"].append(100 * orig)
                    cell["adversarial"].append(100 * adv_acc)
                    print(f"{title} {col} seed {seed}: original {100 * orig:.2f}, adversarial "
                          f"{100 * adv_acc:.2f} ({secs:.0f}s)", flush=True)
            write(args, got, seed + 1 - args.first_seed, time.perf_counter() - t0)


def write(args: argparse.Namespace, got: dict[tuple[str, str], dict[str, list[float]]], seeds: int,
          seconds: float) -> None:
    """The results file and table of the seeds run so far (written after every seed)."""
    rows, lines = [], []
    for (title, col), cell in got.items():
        cells = []
        for what, xs in cell.items():
            mean, std = statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0
            rows.append(report.row(f"{title} {col} {what}", "test_accuracy_mean", mean, std, len(xs), "%"))
            cells.append(f"{mean:.2f} ± {std:.2f}")
        paper = PAPER.get(title, {}).get(col)
        lines.append(f"| {title} | {col} | {cells[0]} | {cells[1]} | "
                     + (f"{paper[0]:.2f} | {paper[1]:.2f} |" if paper else "– | – |"))
    notes = "\n".join([
        "| dataset | model | original (ours) | adversarial (ours) | original (paper) | adversarial (paper) |",
        "|---|---|---|---|---|---|", *lines, "",
        f"- {seeds} seed(s) per cell, mean ± std, test accuracy in %; the attack (FGSM θ 0.1 on "
        "images, word replacement threshold 0.5 over 10 candidates) is crafted against the model "
        "evaluated, in eval mode.",
        f"- Overrides: {args.extra or 'none'}; wall time {seconds:.0f} s."])
    print(notes, flush=True)
    report.write(args.name or f"table1_{args.source}", rows, notes)


if __name__ == "__main__":
    main()
