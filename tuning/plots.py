"""Sweep reports: the trial table and sensitivity plots (metric vs one swept key).

The plots are those of the papers: sequence-AT (Jia et al.) Fig. 5, accuracy vs K% and
vs γ; AMR (Tang et al.) Fig. 6-7, vs ε and λ. One point per finished trial, the mean
per value joined by a line.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = ("trial_id", "status", "run_id")


def trial_table(trials: list[dict[str, Any]], keys: list[str]) -> str:
    """CSV: one row per trial, its swept values then its metrics."""
    metrics = sorted({k for t in trials for k in t} - set(COLUMNS) - set(keys))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, [*COLUMNS, *keys, *metrics], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(trials)
    return buf.getvalue()


def sensitivity(trials: list[dict[str, Any]], key: str, metric: str, folder: Path) -> Path | None:
    """PNG of `metric` vs `key` over the trials that have both; None if there is nothing to plot."""
    points = [(t[key], t[metric]) for t in trials if key in t and metric in t]
    if len({x for x, _ in points}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
    values = sorted({x for x, _ in points}, key=lambda v: v if numeric else str(v))
    pos = {v: (v if numeric else i) for i, v in enumerate(values)}
    by_value: dict[Any, list[float]] = defaultdict(list)
    for x, y in points:
        by_value[x].append(y)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([pos[x] for x, _ in points], [y for _, y in points], alpha=0.5, label="trial")
    ax.plot([pos[v] for v in values], [sum(by_value[v]) / len(by_value[v]) for v in values],
            marker="o", label="mean")
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{metric}_vs_{key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
