"""Shared output of the benchmarks: results/NAME.json and the NAME section of RESULTS.md.

    import report
    report.write("step_cost", rows, notes="...")

`rows` are dicts {"name", "metric", "mean", "std", "n", "unit"} (build them with
`row(...)`). The JSON is {"benchmark", "command", "date", "machine", "rows"};
RESULTS.md holds one "## NAME" section per benchmark, replaced in place when that
benchmark is re-run, every other section kept as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
TITLE = "# Benchmark results\n\nWritten by `benchmarks/report.py`; one section per benchmark, " \
        "replaced when that benchmark is re-run.\n"
FIELDS = ("name", "metric", "mean", "std", "n", "unit")


def row(name: str, metric: str, mean: float, std: float | None, n: int,
        unit: str) -> dict[str, Any]:
    """One result row. `mean` holds the statistic named by `metric` (e.g. a median)."""
    return {"name": name, "metric": metric, "mean": float(mean),
            "std": None if std is None else float(std), "n": int(n), "unit": unit}


def summary_rows(name: str, metric: str, samples: Sequence[float], unit: str,
                 median: bool = True) -> list[dict[str, Any]]:
    """Rows `metric_median` (if asked) and `metric_mean` of samples, each with the sample std."""
    xs = list(samples)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    out = []
    if median:
        out.append(row(name, f"{metric}_median", statistics.median(xs), std, len(xs), unit))
    out.append(row(name, f"{metric}_mean", statistics.fmean(xs), std, len(xs), unit))
    return out


def pool(earlier: dict[str, Any] | None, values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of an earlier row's n values together with `values`, exactly
    (Chan et al.'s parallel variance: within-part sums of squares plus between-part spread)."""
    xs = list(values)
    n2, m2 = len(xs), statistics.fmean(xs)
    ss2 = sum((x - m2) ** 2 for x in xs)
    if not earlier:
        return m2, statistics.stdev(xs) if n2 > 1 else 0.0, n2
    n1, m1 = earlier["n"], earlier["mean"]
    ss1 = (earlier["std"] or 0.0) ** 2 * (n1 - 1)
    n = n1 + n2
    mean = (n1 * m1 + n2 * m2) / n
    ss = ss1 + ss2 + (m1 - m2) ** 2 * n1 * n2 / n
    return mean, (ss / (n - 1)) ** 0.5 if n > 1 else 0.0, n


def machine() -> dict[str, Any]:
    """Where the numbers came from; load_avg tells a quiet machine from a busy one."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def command() -> str:
    """The command line that ran this process, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(HERE.parent)
    except ValueError:
        pass
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(HERE.parent)  # .venv/bin/python, not an absolute path
    except ValueError:
        pass
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a markdown table."""
    lines = ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(_fmt(r.get(f)) for f in FIELDS) + " |" for r in rows]
    return "\n".join(lines)


def section(name: str, doc: dict[str, Any], notes: str = "") -> str:
    m = doc["machine"]
    load = f", load avg {m['load_avg']}" if "load_avg" in m else ""
    parts = [f"## {name}", "", f"Command (from the repository root): `{doc['command']}`", "",
             f"Date: {doc['date']}  ",
             f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch_version']}, "
             f"torch threads {m['torch_threads']}{load}", "", table(doc["rows"]), ""]
    if notes.strip():
        parts += [notes.strip(), ""]
    return "\n".join(parts)


def replace_section(text: str, name: str, new: str) -> str:
    """`text` with its "## name" section replaced by `new` (appended if absent)."""
    if not text.strip():
        text = TITLE
    pattern = re.compile(rf"^## {re.escape(name)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    new = new.rstrip("\n") + "\n\n"
    if pattern.search(text):
        return pattern.sub(lambda _: new, text, count=1).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"


def write(name: str, rows: Sequence[dict[str, Any]], notes: str = "",
          cmd: str | None = None) -> Path:
    """Write results/NAME.json and the NAME section of RESULTS.md; returns the JSON path."""
    for r in rows:
        missing = set(FIELDS) - set(r)
        if missing:
            raise ValueError(f"row {r} lacks {sorted(missing)}")
    doc = {
        "benchmark": name,
        "command": cmd or command(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": [{f: r[f] for f in FIELDS} for r in rows],
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    old = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else ""
    RESULTS_MD.write_text(replace_section(old, name, section(name, doc, notes)), encoding="utf-8")
    return path
