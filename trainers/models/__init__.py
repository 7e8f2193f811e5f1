"""Models, one module each; every model exposes `embed` (its named perturbable inputs) and
`forward` (see base.py) and is built from (config, dataset spec).

    lstm, lstm_attention   lstm_attention.py (Jia et al. KDD'19 eq. 4-10), tokens or features
    image_cnn              image_cnn.py (two conv blocks + global average pooling), pixels
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from advorch.config import ModelConfig
from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable, PerturbableModel
from advorch.trainers.models.image_cnn import ImageCNN
from advorch.trainers.models.lstm_attention import LSTMAttention

__all__ = ["Batch", "Inputs", "Output", "Perturbable", "PerturbableModel", "LSTMAttention", "ImageCNN",
           "MODELS", "build_model", "model_problems"]


def _lstm(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    features = spec.inputs.get("features")
    stats = spec.feature_stats
    model = LSTMAttention(spec.vocab_size, spec.num_classes, cfg.embedding_dim, cfg.hidden_dim,
                          attention=cfg.name == "lstm_attention", dropout=cfg.dropout,
                          bidirectional=cfg.bidirectional,
                          input_dim=features.shape[1] if features else None,
                          input_stats=(torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if stats
                          else None)
    if init_weights and not features:
        _initial_embeddings(cfg, spec, model)
    return model


def _initial_embeddings(cfg: ModelConfig, spec: DatasetSpec, model: LSTMAttention) -> None:
    """From model.pretrained_vectors (a word2vec/GloVe file, mapped by the vocabulary side file),
    else the dataset's own vectors (embeddings.npy) unless model.init_embeddings = "random"."""
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.models.pretrained import load_dataset_vectors, load_word_vectors

    if cfg.pretrained_vectors:
        vocab = json.loads(read_side_file(spec.uri, "vocab.json", spec.manifest))
        weights, _ = load_word_vectors(cfg.pretrained_vectors, vocab, cfg.embedding_dim,
                                       init=model.embedding.weight.data)
        model.embedding.weight.data.copy_(weights)
    elif cfg.init_embeddings == "dataset" and "embeddings.npy" in spec.side_files:
        model.embedding.weight.data.copy_(load_dataset_vectors(spec.uri, spec.manifest, cfg.embedding_dim))


def _image_cnn(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    return ImageCNN(spec.input("pixels").shape[0], spec.num_classes, tuple(cfg.channels), cfg.dropout,
                    cfg.activation)


@dataclass(frozen=True)
class ModelEntry:
    """How to build a model, which dataset inputs it reads (one of), whether it has attention."""

    build: Callable[[ModelConfig, DatasetSpec, bool], nn.Module]
    reads: tuple[str, ...]
    attention: bool


SHAPES = {"tokens": "[length]", "features": "[steps, features]", "pixels": "[channels, height, width]"}
RANKS = {name: shape.count(",") + 1 for name, shape in SHAPES.items()}

MODELS: dict[str, ModelEntry] = {
    "lstm": ModelEntry(_lstm, ("tokens", "features"), attention=False),
    "lstm_attention": ModelEntry(_lstm, ("tokens", "features"), attention=True),
    "image_cnn": ModelEntry(_image_cnn, ("pixels",), attention=False),
}


def model_problems(cfg: ModelConfig, spec: DatasetSpec) -> list[str]:
    """Why this model cannot train on this dataset (empty when it can)."""
    entry = MODELS[cfg.name]
    if not set(entry.reads) & set(spec.inputs):
        suited = [n for n, e in MODELS.items() if set(e.reads) & set(spec.inputs)]
        return [f"model.name = {cfg.name!r} reads {' or '.join(entry.reads)}, the dataset {spec.uri} has "
                f"{', '.join(spec.inputs) or 'no inputs'}; use model.name = "
                f"{' or '.join(repr(n) for n in suited) or '(none fits)'}"]
    return [f"{spec.uri}: input {name!r} has shape {list(spec.inputs[name].shape)}, model.name = "
            f"{cfg.name!r} reads {name} as {RANKS[name]}-d {SHAPES[name]}: rebuild the dataset with "
            "`advorch preprocess`"
            for name in entry.reads if name in spec.inputs and len(spec.inputs[name].shape) != RANKS[name]]


def build_model(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool = True) -> nn.Module:
    """The model named in the config, shaped by the dataset spec; `init_weights` loads initial
    embeddings (pretrained vectors, the dataset's own) where the config asks for them.

    Raises:
        ValueError: the model cannot read the dataset's inputs (the message names the fix).
    """
    problems = model_problems(cfg, spec)
    if problems:
        raise ValueError(problems[0])
    return MODELS[cfg.name].build(cfg, spec, init_weights)
