"""Clickstream pipeline throughput: events per second from raw CSV to shards + manifest.

The input is built here by replaying the real DIGINETICA sample (12,391 views) R times with
shifted session ids (replica k adds k·10,000,000), so sessions, lengths, pages and the
purchase join keep the sample's shape; the purchases file holds the 256 matched purchase
rows, replayed the same way. Timed: one whole `advorch.pipelines.clickstream.run`
(the Dask LocalCluster's start, parsing on 2 worker processes, sessionising, split,
vocabulary, parts, manifest), with page embeddings off, and with Word2Vec on as a
separate row. Reference: pyarrow's multi-threaded CSV read of the same file alone.

    .venv/bin/python benchmarks/clickstream_throughput.py --replicas 400 --repeats 3
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

ROOT = Path(__file__).resolve().parents[1]
DIGI = ROOT.parent / "shared" / "data" / "clickstream" / "diginetica"
SHIFT = 10_000_000


def build_input(folder: Path, replicas: int) -> tuple[Path, Path, int]:
    """(views.csv, purchases.csv, events): the sample replayed `replicas` times."""
    import pandas as pd

    views = pd.read_csv(DIGI / "sample_train-item-views.csv", sep=";", dtype={"user_id": str})
    buys = pd.read_csv(DIGI / "train-purchases.csv", sep=";", dtype={"userId": str})
    buys = buys[buys["sessionId"].isin(views["session_id"])]
    out_v, out_p = folder / "views.csv", folder / "purchases.csv"
    for k in range(replicas):
        views.assign(session_id=views["session_id"] + k * SHIFT).to_csv(
            out_v, sep=";", index=False, header=k == 0, mode="a", na_rep="NA")
        buys.assign(sessionId=buys["sessionId"] + k * SHIFT).to_csv(
            out_p, sep=";", index=False, header=k == 0, mode="a", na_rep="NA")
    return out_v, out_p, len(views) * replicas


def config(views: Path, purchases: Path, output: Path, embedding_dim: int):
    from advorch.config import load_config

    return load_config(ROOT / "configs" / "diginetica.toml", [
        f'data.output="{output}"', f'data.clickstream.events=["{views}"]',
        f'data.clickstream.purchases=["{purchases}"]', f"data.clickstream.embedding_dim={embedding_dim}",
        "data.part_rows=65536"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=400)
    ap.add_argument("--embedding-replicas", type=int, default=40,
                    help="a smaller input for the row with Word2Vec on")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import pyarrow.csv as pacsv

    from advorch.pipelines import clickstream

    rows, lines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        views, buys, n = build_input(Path(tmp), args.replicas)
        size = views.stat().st_size / 2**20
        print(f"input: {n:,} events, {size:.0f} MiB", flush=True)

        def measure(name: str, fn, events: int) -> None:
            secs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                secs.append(time.perf_counter() - t0)
            rates = [events / s for s in secs]
            rows.extend(report.summary_rows(name, "events_per_second", rates, "events/s"))
            rows.extend(report.summary_rows(name, "seconds", secs, "s"))
            lines.append(f"| {name} | {events:,} | {statistics.median(secs):.2f} | "
                         f"{statistics.median(rates) / 1e6:.2f} M | {args.repeats} |")
            print(lines[-1], flush=True)

        measure("pyarrow read_csv alone (reference)", lambda: pacsv.read_csv(
            views, parse_options=pacsv.ParseOptions(delimiter=";")), n)
        out = Path(tmp) / "shards"

        def full(cfg) -> None:
            import shutil

            shutil.rmtree(cfg.data.output, ignore_errors=True)  # a full build each time
            summary = clickstream.run(cfg.data)
            assert summary.manifest["clickstream"]["events_read"] > 0

        measure("raw CSV → shards (embeddings off)", lambda: full(config(views, buys, out, 0)), n)
        emb = Path(tmp) / "emb"
        emb.mkdir()
        small_v, small_b, n_small = build_input(emb, args.embedding_replicas)
        measure("raw CSV → shards + Word2Vec 120-d", lambda: full(config(small_v, small_b, out, 120)),
                n_small)

    notes = "\n".join([
        "| step | events | seconds (median) | events/s (median) | runs |", "|---|---|---|---|---|",
        *lines, "",
        f"- Input: the DIGINETICA sample replayed {args.replicas}× with shifted session ids "
        f"({n:,} events, {size:.0f} MiB of `;`-separated CSV); the Word2Vec row uses "
        f"{args.embedding_replicas}× ({n_small:,} events). Settings of configs/diginetica.toml, "
        "part_rows 65,536. Each run is a full build (output removed), Dask LocalCluster start included.",
        "- Target (issue 6): ≥ 1M events/s on 2 cores, raw CSV to shards.",
    ])
    print(notes)
    report.write("clickstream_throughput", rows, notes)


if __name__ == "__main__":
    main()
