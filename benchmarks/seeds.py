"""One benchmark row over seeds: train a config per seed through Ray Train, collect a test metric."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import report


def run_seeds(key: str, label: str, seeds: int, make_cfg: Callable[[int], Any], metric: str,
              unit: str) -> tuple[list[float], list[dict[str, Any]], str]:
    """(values, result rows for report.write, a markdown cell "mean ± std") of `metric` over
    `seeds` trainings of `make_cfg(seed)` with `advorch.trainers.launch.train`."""
    from advorch.trainers.launch import train

    values, secs = [], []
    for seed in range(seeds):
        t0 = time.perf_counter()
        values.append(train(make_cfg(seed)).metrics[metric])
        secs.append(time.perf_counter() - t0)
        print(f"{label:32s} seed {seed}: {metric} {values[-1]:.4f} ({secs[-1]:.0f}s)", flush=True)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    rows = [report.row(key, f"{metric}_mean", statistics.fmean(values), std, len(values), unit),
            report.row(key, f"{metric}_min", min(values), None, len(values), unit),
            report.row(key, f"{metric}_max", max(values), None, len(values), unit),
            report.row(key, "train_seconds_mean", statistics.fmean(secs), None, len(secs), "s")]
    return values, rows, f"{statistics.fmean(values):.4f} ± {std:.4f}"


def run_rows(table: list[tuple[str, str, list[str]]], seeds: int,
             cfg_for: Callable[[str, list[str], int], Any], metric: str, unit: str,
             write: Callable[[list[dict[str, Any]], list[str]], None],
             rows: list[dict[str, Any]] | None = None, lines: list[str] | None = None) -> None:
    """`run_seeds` for every (key, label, overrides) of `table`; after each, `write(rows, lines)`
    with the result rows and markdown lines "| label | mean ± std | min – max | n |" so far."""
    rows, lines = rows or [], lines or []
    for key, label, overrides in table:
        values, new, cell = run_seeds(key, label, seeds, lambda s, k=key, o=overrides: cfg_for(k, o, s),
                                      metric, unit)
        rows += new
        lines.append(f"| {label} | {cell} | {min(values):.4f} – {max(values):.4f} | {len(values)} |")
        write(rows, lines)  # after every row: a cut-off run keeps what it measured


def configs(path: Any, base: list[str], workers: int, storage: str,
            prefix: str) -> Callable[[str, list[str], int], Any]:
    """cfg_for(key, overrides, seed): the config file with `base` + the row's overrides, seeded."""
    from advorch.config import load_config

    def cfg_for(key: str, overrides: list[str], seed: int) -> Any:
        return load_config(path, base + overrides + [f"train.seed={seed}", f"train.workers={workers}",
                                                     f'name="{prefix}-{key}"', f'train.storage="{storage}"'])

    return cfg_for
