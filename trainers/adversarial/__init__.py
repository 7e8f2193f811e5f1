"""Adversarial regimes, one module each; chosen by `regime.name` in the config.

Adding a regime is adding a module and one line in REGIMES.
"""

from __future__ import annotations

from advorch.trainers.adversarial.at import AllStepAT
from advorch.trainers.adversarial.base import Regime
from advorch.trainers.adversarial.clean import Clean

from advorch.config import RegimeConfig

REGIMES = {
    "clean": lambda cfg: Clean(),
    "at": lambda cfg: AllStepAT(epsilon=cfg.epsilon, lam=cfg.lam),
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
