"""Adversarial regimes: a sum of terms over one shared clean pass (base.py), chosen by
`regime.name` — one term, or several joined by "+" (e.g. "fgsm+input_gradient").

    clean           no term: the task's loss only
    at              AT on all steps, ‖r‖₂ = ε per sample, eq. 1-2 (at.py)
    attention_at    attention-aware AT, ‖r^t‖ = α^t·ε per step, eq. 11 (at.py)
    fgsm            FGSM-AT, ε·sign(∇_x L), inputs kept in range (at.py)
    vat             VAT, eq. 3 (vat.py)
    pgd             k-step projected attack as training, L2 or L∞ (pgd.py)
    input_gradient  λ_ig·‖∇_x ℓ‖², double backprop or finite differences (input_gradient.py)
    mmat            multi-modal AT (Chen et al.): FGSM images + eq. 2 word replacement, fresh every
                    batch, crafted in eval mode (word_replace.py)
    at_vat          = attention_at+vat

`regime.filter = "sf"` refines AT / VAT by Selective Filtering (eq. 12), `"cat"` AT by
Conservative AT (eq. 13). `check` rejects every combination that cannot run, before Ray
starts, naming the keys and the fix. Adding a term is one module and one entry in TERMS.
"""

from __future__ import annotations

from typing import Any

from advorch.config import ExperimentConfig, RegimeConfig
from advorch.trainers.adversarial.at import AdversarialLoss
from advorch.trainers.adversarial.base import CleanPass, Regime, Term, clean_pass
from advorch.trainers.adversarial.input_gradient import InputGradientPenalty
from advorch.trainers.adversarial.pgd import PGDLoss
from advorch.trainers.adversarial.vat import VirtualAdversarialLoss
from advorch.trainers.adversarial.word_replace import MultiModalAdversarialLoss

__all__ = ["Regime", "Term", "CleanPass", "clean_pass", "TERMS", "build_regime", "term_names", "regime_keys",
           "check"]

TERMS: dict[str, Any] = {
    "at": AdversarialLoss,
    "attention_at": AdversarialLoss,
    "fgsm": AdversarialLoss,
    "vat": VirtualAdversarialLoss,
    "pgd": PGDLoss,
    "input_gradient": InputGradientPenalty,
    "mmat": MultiModalAdversarialLoss,
}
ALIASES = {"at_vat": "attention_at+vat"}
SHARED = {"name", "inputs", "warm_start"}  # read by the regime itself / the launcher


def term_names(name: str) -> list[str]:
    """The terms of a regime name ("clean" has none).

    Raises:
        ValueError: an unknown or repeated term; the message lists the known ones.
    """
    name = ALIASES.get(name, name)
    if name == "clean":
        return []
    parts = [p.strip() for p in name.split("+")]
    for p in parts:
        if p not in TERMS:
            raise ValueError(f"unknown regime.name {name!r} (term {p!r}); known: clean, "
                             f"{', '.join([*TERMS, *ALIASES])}, or terms joined by '+'")
    if len(set(parts)) < len(parts):
        raise ValueError(f"regime.name {name!r} names a term twice")
    return parts


def build_regime(cfg: RegimeConfig) -> Regime:
    """The regime named by cfg.name, each term built from its own keys of cfg."""
    return Regime(cfg.name, [TERMS[t].from_config(t, cfg) for t in term_names(cfg.name)])


def regime_keys(name: str) -> set[str]:
    """The regime.* keys the terms of `name` read."""
    return set(SHARED).union(*(TERMS[t].FIELDS for t in term_names(name)))


def check(cfg: ExperimentConfig, spec: Any | None = None) -> list[str]:
    """Why this experiment cannot run (empty when it can): unknown terms, keys no term reads,
    refinements without their term, attention the model does not have, a model that cannot
    read the dataset. Each message names the keys and the fix."""
    from advorch.trainers.models import MODELS, model_problems

    r = cfg.regime
    try:
        names = term_names(r.name)
        regime = build_regime(r)
    except ValueError as e:
        return [str(e)]
    problems = [f"tune.space sweeps {key!r}, which regime {r.name!r} does not read"
                for key in cfg.tune.space if key.startswith("regime.")
                and key.removeprefix("regime.") not in regime_keys(r.name) | {"name"}]
    read = regime_keys(r.name)
    defaults = RegimeConfig()
    for key in RegimeConfig.model_fields:
        if key not in read and getattr(r, key) != getattr(defaults, key):
            users = sorted(t for t in TERMS if key in TERMS[t].FIELDS)
            problems.append(f"regime.{key} = {getattr(r, key)!r} is not used by regime {r.name!r}: "
                            f"remove it, or add a term that reads it ({', '.join(users)})")
    if r.filter == "cat" and not set(names) & {"at", "attention_at", "fgsm"}:
        problems.append(f"regime.filter = \"cat\" (Conservative AT, eq. 13) turns an AT perturbation; "
                        f"regime {r.name!r} has none: use regime.name = \"attention_at\" (or \"at\"), "
                        "or filter = \"sf\"")
    if r.norm == "linf" and "attention_at" in names:
        problems.append("regime.norm = \"linf\" with attention_at: eq. 11 is an L2 radius per step; use "
                        "regime.name = \"fgsm\" for L∞, or norm = \"l2\"")
    if "attention" in regime.needs and not MODELS[cfg.model.name].attention:
        why = [t for t in regime.terms if "attention" in t.needs]
        problems.append(f"regime {r.name!r} ({', '.join(t.name for t in why)}) needs attention, model.name = "
                        f"{cfg.model.name!r} has none: use model.name = \"lstm_attention\""
                        + (", or regime.attention_aware = false" if "vat" in names or "pgd" in names else "")
                        + (", or regime.filter = \"none\"" if r.filter != "none" else ""))
    if spec is not None:
        problems += model_problems(cfg.model, spec)
        known = set(spec.inputs) | set(MODELS[cfg.model.name].perturbs)
        for k in r.inputs:
            if k not in known:
                problems.append(f"regime.inputs names {k!r}; model {cfg.model.name!r} on this dataset "
                                f"perturbs {', '.join(sorted(known))}")
    return problems
