"""Speed of Chen et al.'s adversarial examples (§III-B): word replacement (eq. 2) and FGSM (eq. 1).

Three groups, each timed in one process, rows interleaved round by round (the order alternating),
every row on THE SAME batch:

    text_cnn    word replacement on B tweets of 15 words, vocabulary V × 100-d, n = 10 candidates:
                `word_replace` = the whole attack (one eval-mode forward/backward to the word vectors
                + eq. 2), `replace_words_only` = eq. 2 given that gradient; beside `clean_fwd_bwd`,
                one training forward/backward of the same model and batch. The candidate table
                (computed once per embedding matrix, then cached) is timed once: `neighbour_table`.
    visual_cnn  FGSM (θ = 0.1) on B 64×64 RGB images: `fgsm` = one eval-mode forward/backward to the
                pixels + the sign step, beside `clean_fwd_bwd`.
    mmn         one `train_step` of the MMN (B = 32, the paper's batch; 64×64 images, 15 words) with
                regime `clean`, `fgsm` (AT on the clean pass's own gradient: 2 forward/backward pairs)
                and `mmat` (crafting in eval mode costs a third pair): the price of eval-mode crafting.

The tensors are synthetic (seeded random word vectors, ids, pixels, labels): the speed of these
operations does not depend on the values (no data-dependent branch; word replacement does the same
gathers and products whether or not a word is replaced).

    .venv/bin/python benchmarks/crisis_attack_speed.py
    .venv/bin/python benchmarks/crisis_attack_speed.py --tweets 1024 --images 128 --rounds 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402

TARGETS = {"text_cnn/word_replace": (10_000.0, "tweets/s"), "visual_cnn/fgsm": (2_000.0, "images/s")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tweets", type=int, default=512, help="tweets per batch (text_cnn group)")
    p.add_argument("--images", type=int, default=64, help="images per batch (visual_cnn group)")
    p.add_argument("--vocab", type=int, default=20_000)
    p.add_argument("--neighbours", type=int, default=10)
    p.add_argument("--length", type=int, default=15, help="words per tweet")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--step-rounds", type=int, default=10, help="mmn train_step rounds")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default="crisis_attack_speed", help="results/NAME.json and RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results")
    return p.parse_args(argv)


def spec(vocab: int, length: int):
    """A tweets dataset spec: 15-word token lists, 64×64 RGB images, two classes."""
    from advorch.pipelines.spec import DatasetSpec, InputSpec

    return DatasetSpec("memory://crisis-bench", "tweets", "classification",
                       {"tokens": InputSpec("tokens", "tokens", (None,), "int64"),
                        "pixels": InputSpec("pixels", "pixels", (3, 64, 64), "uint8", (0.0, 1.0))},
                       ["not_informative", "informative"], {}, {}, vocab_size=vocab)


def synthetic_batch(n: int, length: int, vocab: int, device: str) -> dict:
    """Seeded random full-length tweets (ids 2..V-1), pixels in [0, 1] and labels."""
    import torch

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, vocab, (n, length), generator=g)
    return {"tokens": tokens.to(device), "mask": torch.ones(n, length, dtype=torch.bool, device=device),
            "pixels": torch.rand(n, 3, 64, 64, generator=g).to(device),
            "label": torch.randint(0, 2, (n,), generator=g).to(device)}


def model(name: str, data_spec, device: str):
    import torch

    from advorch.config import ModelConfig
    from advorch.trainers.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(name=name, embedding_dim=100, hidden_dim=64, dropout=0.5, init_embeddings="random")
    return build_model(cfg, data_spec).to(device)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleave(rows: dict[str, Callable[[], object]], warmup: int, rounds: int, device: str
               ) -> dict[str, list[float]]:
    """ms per call of every row, the rows alternating order round by round."""
    names = list(rows)
    for _ in range(warmup):
        for n in names:
            rows[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in names if i % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            rows[n]()
            sync(device)
            times[n].append((time.perf_counter() - t0) * 1e3)
    return times


def text_rows(args, data_spec) -> tuple[dict[str, Callable], float, str]:
    from advorch.trainers.adversarial.word_replace import candidates, craft, eval_gradients, replace_words
    from advorch.trainers.tasks import Classification

    task = Classification(2)
    m = model("text_cnn", data_spec, args.device).train()
    batch = synthetic_batch(args.tweets, args.length, args.vocab, args.device)
    t0 = time.perf_counter()
    table = candidates(m, args.neighbours)
    sync(args.device)
    table_s = time.perf_counter() - t0
    _, g = eval_gradients(m, task, batch)
    weight = m.embedding.weight.detach()

    def clean() -> None:
        m.zero_grad(set_to_none=True)
        task.loss(m(m.embed(batch), batch), batch).backward()

    rows = {"text_cnn/clean_fwd_bwd": clean,
            "text_cnn/word_replace": lambda: craft(m, task, batch, 0.1, args.neighbours, 0.5, ("tokens",)),
            "text_cnn/replace_words_only": lambda: replace_words(batch["tokens"], g["tokens"], weight, table,
                                                                 0.5, 0.1, batch["mask"])}
    replaced = craft(m, task, batch, 0.1, args.neighbours, 0.5, ("tokens",)).changed.float().mean()
    note = (f"text_cnn: B = {args.tweets} tweets × {args.length} words, V = {args.vocab} × 100-d, n = "
            f"{args.neighbours}, ε = 0.1, threshold 0.5 ({float(replaced):.1%} of the synthetic words "
            f"replaced); neighbour table (V × n, cosine, chunks of 4096 rows) built once in {table_s:.2f} s")
    return rows, table_s, note


def image_rows(args, data_spec) -> dict[str, Callable]:
    from advorch.trainers.robustness import attack
    from advorch.trainers.tasks import Classification

    task = Classification(2)
    m = model("visual_cnn", data_spec, args.device).train()
    batch = synthetic_batch(args.images, args.length, args.vocab, args.device)
    batch = {"pixels": batch["pixels"], "label": batch["label"]}

    def clean() -> None:
        m.zero_grad(set_to_none=True)
        task.loss(m(m.embed(batch), batch), batch).backward()

    return {"visual_cnn/clean_fwd_bwd": clean,
            "visual_cnn/fgsm": lambda: attack(m, task, batch, "fgsm", 0.1)}


def step_rows(args, data_spec) -> dict[str, Callable]:
    """One MMN train_step per regime, each regime on its own copy of the same initial weights."""
    import torch

    from advorch.config import RegimeConfig
    from advorch.trainers.adversarial import build_regime
    from advorch.trainers.loop import train_step
    from advorch.trainers.tasks import Classification

    task = Classification(2)
    batch = synthetic_batch(32, args.length, args.vocab, args.device)
    rows = {}
    for name in ("clean", "fgsm", "mmat"):
        m = model("mmn", data_spec, args.device)
        regime = build_regime(RegimeConfig(name=name, epsilon=0.1, neighbours=args.neighbours, threshold=0.5))
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        rows[f"mmn/step_{name}"] = (lambda m=m, regime=regime, opt=opt:
                                    train_step(m, task, regime, opt, batch, grad_clip=5.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}", flush=True)
    data_spec = spec(args.vocab, args.length)
    start = time.perf_counter()
    text, table_s, text_note = text_rows(args, data_spec)
    groups = [(text, args.tweets, "tweets/s", args.rounds),
              (image_rows(args, data_spec), args.images, "images/s", args.rounds),
              (step_rows(args, data_spec), 32, "tweets/s", args.step_rounds)]
    rows = [report.row("text_cnn/neighbour_table", "build_time", table_s, None, 1, "s")]
    medians: dict[str, float] = {}
    for fns, per_call, unit, rounds in groups:
        times = interleave(fns, args.warmup, rounds, args.device)
        for n, ts in times.items():
            medians[n] = statistics.median(ts)
            rate = per_call / medians[n] * 1e3
            rows += report.summary_rows(n, "time", ts, "ms")
            rows.append(report.row(n, "throughput_of_median", rate, None, len(ts), unit))
            print(f"{n:<30}{medians[n]:>10.2f} ms{rate:>12.0f} {unit}", flush=True)
    wall = time.perf_counter() - start
    for n in medians:
        group = n.split("/")[0]
        base = f"{group}/clean_fwd_bwd" if group != "mmn" else "mmn/step_clean"
        if n != base and base in medians:
            rows.append(report.row(n, "ratio_to_clean_of_medians", medians[n] / medians[base], None, 1, "x"))
    verdicts = []
    for n, (target, unit) in TARGETS.items():
        per_call = args.tweets if n.startswith("text") else args.images
        got = per_call / medians[n] * 1e3
        verdict = "met" if got >= target else "NOT MET"
        verdicts.append(f"`{n}`: {got:,.0f} {unit} (target >= {target:,.0f}): {verdict}")
    extra = medians["mmn/step_mmat"] / medians["mmn/step_fgsm"]
    notes = [
        f"- {text_note}.",
        f"- visual_cnn: B = {args.images} RGB 64×64 images, channels (32, 64) (model.channels default), "
        "dense 64; FGSM θ = 0.1.",
        "- mmn: B = 32, 64×64 RGB + 15 words, V = {0}; `step_fgsm` reuses the clean pass's (train-mode) "
        "gradient: 2 forward/backward pairs; `step_mmat` takes a third, eval-mode pair to craft "
        f"(no dropout): measured {extra:.2f}x `step_fgsm`.".format(args.vocab),
        *(f"- target: {v}" for v in verdicts),
        f"- Synthetic tensors (seeded random vectors, ids, pixels): speed does not depend on the values. "
        f"{args.warmup} warm-up + {args.rounds} timed rounds per group ({args.step_rounds} for mmn), rows "
        f"alternating order; `throughput_of_median` = batch / median time. Wall {wall:.0f} s; 1-min load "
        f"average {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs).",
    ]
    for v in verdicts:
        print(v)
    print(f"wall {wall:.1f} s")
    if not args.no_write:
        path = report.write(args.name, rows, notes="\n".join(notes))
        print(f"wrote {path} and the {args.name!r} section of {report.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
