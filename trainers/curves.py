"""The training-curve figure every tracked run logs (plots/training_curves.png): its losses
per epoch on the left, its validation metrics per epoch on the right, read back from MLflow
(so a resumed or two-stage run draws all its epochs)."""

from __future__ import annotations

from pathlib import Path


def histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """(epoch, value) per per-epoch metric of the run: train_* and val_* (the loop logs them
    each epoch, step = epoch; the final test_* and best_* are single values)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics if key.startswith(("train_", "val_"))}


def curves_figure(history: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    """Losses (left) and validation metrics (right) vs epoch; None if there is no curve."""
    losses = sorted(k for k in history if k.endswith("loss"))
    scores = sorted(k for k in history if k.startswith("val_") and not k.endswith("loss"))
    if not losses and not scores:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, keys, ylabel in ((axes[0], losses, "loss (mean per example)"),
                             (axes[1], scores, "validation metric (fraction)")):
        for key in keys:
            steps, values = zip(*history[key], strict=True)
            ax.plot([s + 1 for s in steps], values, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if keys:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
