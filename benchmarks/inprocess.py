"""In-process training for benchmarks that train many small models (no Ray start per run):
a config with a whole [regime] of the row's own, checked as `advorch train` checks it, and a fit
that keeps the best validation epoch's weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def experiment(config: Path, data: str, regime: dict[str, Any], seed: int, extra: list[str]):
    """`config` with `extra` overrides, this seed, and `regime` as its whole [regime]."""
    from advorch.config import ExperimentConfig, RegimeConfig, load_config
    from advorch.trainers.launch import check_experiment

    cfg = load_config(config, [f'data.output="{data}"', f"train.seed={seed}", *extra])
    cfg = ExperimentConfig.model_validate({**cfg.model_dump(), "regime": RegimeConfig(**regime).model_dump()})
    check_experiment(cfg, data)
    return cfg


def fit(cfg, data: str, verbose: bool = False):
    """(worker with its best validation epoch's weights loaded, in eval mode; seconds). Two stages
    as `trainers.launch.fit` runs them on Ray: with regime.schedule = "offline" (MMAT's Algorithm
    1) a clean fit, then a fit from its best weights on train ∪ its adversarial copy; with
    regime.warm_start a clean fit, then the regime from its best weights."""
    from advorch.config import RegimeConfig
    from advorch.trainers.augment import settings
    from advorch.trainers.loop import setup_worker, start_augmented

    t0 = time.perf_counter()
    clean = cfg.model_copy(update={"regime": RegimeConfig()})
    offline = cfg.regime.schedule == "offline"
    w = setup_worker(clean if offline or cfg.regime.warm_start else cfg, data)
    _epochs(w, verbose)
    if offline or cfg.regime.warm_start:
        first = w.state["best_model"]
        w = setup_worker(clean if offline else cfg, data)
        if offline:
            start_augmented(w, first, settings(cfg.regime))
        else:
            w.model.load_state_dict(first)
        _epochs(w, verbose)
    w.model.load_state_dict(w.state["best_model"])
    w.model.eval()
    return w, time.perf_counter() - t0


def _epochs(w, verbose: bool) -> None:
    """Train `w` until its config's last epoch or early stop."""
    from advorch.trainers.loop import train_epoch

    for epoch in range(w.cfg.train.epochs):
        m = train_epoch(w, epoch)
        if verbose:
            terms = ", ".join(f"{k} {v:.4g}" for k, v in m.items()
                              if k.startswith("train_") and ("loss" in k or k == "train_ig_penalty"))
            print(f"  epoch {epoch}: {w.cfg.train.metric} {m[w.cfg.train.metric]:.4f}, {terms} "
                  f"({m['epoch_seconds']:.0f}s)", flush=True)
        if m["final_epoch"]:
            break
