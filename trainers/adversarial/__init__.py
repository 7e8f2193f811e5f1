"""Adversarial regimes, chosen by `regime.name` in the config.

    clean         cross-entropy only (clean.py)
    at            AT on all steps, eq. 1-2 (at.py, sequence.py)
    attention_at  attention-aware AT, eq. 11 (perturb.py, sequence.py)
    vat           VAT, eq. 3 (vat.py, sequence.py)
    at_vat        attention-aware AT + VAT (sequence.py)
    pgd           k-step projected attack (pgd.py)

`regime.filter = "sf"` adds Selective Filtering (eq. 12, selective_filtering.py),
`"cat"` Conservative AT (eq. 13, conservative.py). Adding a regime is adding a module
and one entry in REGIMES.
"""

from __future__ import annotations

from collections.abc import Callable

from advorch.config import RegimeConfig
from advorch.trainers.adversarial.base import Regime
from advorch.trainers.adversarial.clean import Clean
from advorch.trainers.adversarial.pgd import PGDTraining
from advorch.trainers.adversarial.sequence import SequenceAdversarial


def _sequence(name: str, **terms: bool) -> Callable[[RegimeConfig], Regime]:
    def make(cfg: RegimeConfig) -> Regime:
        return SequenceAdversarial(
            name, epsilon=cfg.epsilon, lam=cfg.lam, lam_vat=cfg.lam_vat,
            vat_attention=cfg.attention_aware, xi=cfg.xi, power_iterations=cfg.power_iterations,
            filter=cfg.filter, keep_ratio=cfg.keep_ratio, gamma=cfg.gamma, **terms)

    return make


REGIMES: dict[str, Callable[[RegimeConfig], Regime]] = {
    "clean": lambda cfg: Clean(),
    "at": _sequence("at", use_at=True, at_attention=False),
    "attention_at": _sequence("attention_at", use_at=True, at_attention=True),
    "vat": _sequence("vat", use_at=False, use_vat=True),
    "at_vat": _sequence("at_vat", use_at=True, at_attention=True, use_vat=True),
    "pgd": lambda cfg: PGDTraining(cfg.epsilon, cfg.lam, cfg.pgd_steps, cfg.pgd_step_size,
                                   cfg.attention_aware),
}


def build_regime(cfg: RegimeConfig) -> Regime:
    """The regime named by cfg.name.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return REGIMES[cfg.name](cfg)
    except KeyError:
        raise ValueError(f"unknown regime.name {cfg.name!r}; known: {', '.join(REGIMES)}") from None
