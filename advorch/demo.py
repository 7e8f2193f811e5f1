"""The demo's embedded config: configs/mr.toml as overrides on the defaults (a test
keeps the two equal)."""

from __future__ import annotations

from pathlib import Path


def demo_overrides(data: Path, output: str, workers: int) -> list[str]:
    return [
        'name="mr-demo"',
        'data.kind="text"',
        'data.encoding="cp1252"',
        f'data.sources=[{{path="{data}/rt-polarity.neg", label="neg"}}, '
        f'{{path="{data}/rt-polarity.pos", label="pos"}}]',
        f'data.output="{output}"',
        "model.dropout=0.3",
        'regime.name="at"',
        "regime.epsilon=8.0",
        "train.epochs=15",
        "train.lr=0.004",
        "train.patience=4",
        f"train.workers={workers}",
        'mlflow.experiment="mr"',
    ]
