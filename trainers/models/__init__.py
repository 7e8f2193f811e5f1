"""Models; each exposes `embed` (the perturbable input) and `forward` (see base.py)."""

from __future__ import annotations

from torch import Tensor, nn

from advorch.config import ModelConfig
from advorch.trainers.models.base import Batch, Output, PerturbableModel
from advorch.trainers.models.lstm_attention import LSTMAttention, Serving

__all__ = ["Batch", "Output", "PerturbableModel", "LSTMAttention", "Serving", "build_model"]


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int,
                pretrained: Tensor | None = None, input_dim: int | None = None,
                input_stats: tuple[Tensor, Tensor] | None = None) -> nn.Module:
    """The model named in the config; `input_dim` F (and `input_stats`, mean and std) for
    feature sequences instead of tokens."""
    if cfg.name in ("lstm", "lstm_attention"):
        return LSTMAttention(vocab_size, num_classes, cfg.embedding_dim, cfg.hidden_dim,
                             attention=cfg.name == "lstm_attention", dropout=cfg.dropout,
                             bidirectional=cfg.bidirectional,
                             pretrained=pretrained, input_dim=input_dim, input_stats=input_stats)
    raise ValueError(f"unknown model.name {cfg.name!r}")
