"""Dataset health: a training dataset that cannot train is refused when it is built.

A classification dataset needs rows, at least two classes, and every class in every split
that has rows (validation AUC needs both classes; a test split without a class cannot
measure it). The problems name the counts and the config keys to change; with
`data.health.on_problem = "warn"` the dataset is built anyway, the problems kept as
`warnings` in its manifest and shown loudly in the run summary.
"""

from __future__ import annotations

from typing import Any

FIX = ("more data or another split (data.test_fraction, data.val_fraction, data.seed), or build "
       "anyway with data.health.on_problem = \"warn\"")


def problems(splits: dict[str, dict[str, Any]], classes: list[str], task: str = "classification",
             min_class_rows: int = 1) -> list[str]:
    """What makes a dataset unfit to train, one line each (empty: healthy).

    `splits` as the manifest holds them: {name: {"rows", "classes": {class: rows}}}."""
    if task != "classification":
        return []
    total = sum(s["rows"] for s in splits.values())
    if total == 0:
        return ["the dataset has 0 rows: every source row was quarantined or none was read "
                "(see the quarantine file and the sources in the config)"]
    out = []
    present = sorted({c for s in splits.values() for c, n in s.get("classes", {}).items() if n})
    if len(present) < 2:
        out.append(f"{len(present)} class{'es' if len(present) != 1 else ''} with rows "
                   f"({', '.join(present) or 'none'}) of {len(classes)} named: a classifier needs at "
                   "least two (check the label source: a purchases file, an event column, a label column)")
        return out
    for name, s in splits.items():
        if not s["rows"]:
            continue
        counts = {c: int(s.get("classes", {}).get(c, 0)) for c in classes}
        short = {c: n for c, n in counts.items() if n < min_class_rows}
        if short:
            shown = ", ".join(f"{c} {n}" for c, n in short.items())
            out.append(f"split {name} ({s['rows']} rows) has too few rows of class {shown} (needs "
                       f"{min_class_rows}; data.health.min_class_rows): its metrics cannot measure them")
    return out


def report(found: list[str]) -> str:
    """The error message of an unhealthy build."""
    return "the dataset is not fit to train:\n  " + "\n  ".join(found) + f"\n  fix: {FIX}"
