"""Models, one module each; every model exposes `embed` (its named perturbable inputs) and
`forward` (see base.py) and is built from (config, dataset spec).

    lstm, lstm_attention   lstm_attention.py (Jia et al. KDD'19 eq. 4-10), tokens or features
    encoder_attention      encoder.py: pretrained MiniLM under LSTM-Attention pooling, word pieces
    image_cnn              image_cnn.py (two conv blocks + global average pooling), pixels
    visual_cnn, text_cnn   crisis.py (Chen et al. §III-A), pixels / tokens
    mmn                    crisis.py, the multi-modal network: pixels and tokens (both)
    mf_bpr, vbpr           recommenders.py (AMR eq. 1, 5): a user's items; vbpr also reads the
                           items' content features (side file item_features.npy)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from advorch.config import ModelConfig
from advorch.pipelines.spec import DatasetSpec
from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable, PerturbableModel
from advorch.trainers.models.crisis import MMN, TextCNN, VisualCNN
from advorch.trainers.models.image_cnn import ImageCNN
from advorch.trainers.models.lstm_attention import LSTMAttention
from advorch.trainers.models.recommenders import MFBPR, VBPR, Popularity

__all__ = ["Batch", "Inputs", "Output", "Perturbable", "PerturbableModel", "LSTMAttention", "ImageCNN",
           "VisualCNN", "TextCNN", "MMN", "MFBPR", "VBPR", "Popularity", "MODELS", "build_model",
           "model_problems", "item_features"]


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


def _initial_embeddings(cfg: ModelConfig, spec: DatasetSpec, model: nn.Module) -> None:
    """model.embedding from model.pretrained_vectors (a word2vec/GloVe file, mapped by the vocabulary
    side file), else the dataset's own vectors (embeddings.npy) unless model.init_embeddings = "random"."""
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.models.pretrained import load_dataset_vectors, load_word_vectors

    if cfg.pretrained_vectors:
        vocab = json.loads(read_side_file(spec.uri, "vocab.json", spec.manifest))
        weights, _ = load_word_vectors(cfg.pretrained_vectors, vocab, cfg.embedding_dim,
                                       init=model.embedding.weight.data)
        model.embedding.weight.data.copy_(weights)
    elif cfg.init_embeddings == "dataset" and "embeddings.npy" in spec.side_files:
        model.embedding.weight.data.copy_(load_dataset_vectors(spec.uri, spec.manifest, cfg.embedding_dim))


def _encoder(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    """A pretrained encoder (model.encoder) under LSTM-Attention pooling of H = model.hidden_dim."""
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.models.encoder import EncoderAttention

    vocab = json.loads(read_side_file(spec.uri, "vocab.json", spec.manifest))
    return EncoderAttention(cfg.encoder, vocab, spec.num_classes, cfg.hidden_dim, cfg.dropout, cfg.finetune)


def _image_cnn(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    return ImageCNN(spec.input("pixels").shape[0], spec.num_classes, tuple(cfg.channels), cfg.dropout,
                    cfg.activation)


def _crisis(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    """Chen et al.'s Visual-CNN, Text-CNN or MMN (§III-A); H = model.hidden_dim (the paper: 64)."""
    image = tuple(spec.input("pixels").shape) if cfg.name != "text_cnn" else None
    text = dict(embedding_dim=cfg.embedding_dim, window=cfg.text_window, filters=cfg.text_filters)
    common = dict(hidden=cfg.hidden_dim, dropout=cfg.dropout)
    if cfg.name == "visual_cnn":
        return VisualCNN(image, spec.num_classes, tuple(cfg.channels), **common)
    model = (TextCNN(spec.vocab_size, spec.num_classes, **text, **common) if cfg.name == "text_cnn" else
             MMN(image, spec.vocab_size, spec.num_classes, tuple(cfg.channels), **text, **common))
    if init_weights:
        _initial_embeddings(cfg, spec, model)
    return model


def _recommender(cfg: ModelConfig, spec: DatasetSpec, init_weights: bool) -> nn.Module:
    """MF-BPR or VBPR of dimension K = model.embedding_dim (the AMR paper: 64)."""
    from advorch.trainers.data import load_slice

    info = spec.manifest["interactions"]
    warm = torch.zeros(int(info["items"]), dtype=torch.bool)
    warm[load_slice(spec, "train").labels] = True
    if cfg.name == "mf_bpr":
        return MFBPR(int(info["users"]), int(info["items"]), warm, cfg.embedding_dim, cfg.l2)
    return VBPR(int(info["users"]), int(info["items"]), item_features(spec, cfg.feature_scale), warm,
                cfg.embedding_dim, cfg.l2)


def item_features(spec: DatasetSpec, scale: str = "standard") -> torch.Tensor:
    """The items' content features (I, D) from the dataset's side files, scaled by model.feature_scale
    over the items that have features; items without features get zeros."""
    import io

    import numpy as np

    from advorch.pipelines.shards import read_side_file

    def side(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(io.BytesIO(read_side_file(spec.uri, name, spec.manifest))))

    x = side("item_features.npy")
    has = (side("item_feature_mask.npy") if "item_feature_mask.npy" in spec.side_files
           else torch.ones(len(x), dtype=torch.bool))
    x = x.float()
    if scale == "standard":
        x = (x - x[has].mean(0)) / x[has].std(0).clamp_min(1e-6)
    elif scale == "l2":
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x * has[:, None]


@dataclass(frozen=True)
class ModelEntry:
    """How to build a model, which dataset inputs it reads (one of them; all of them with
    `all_inputs`), whether it has attention, which inputs of its own it perturbs."""

    build: Callable[[ModelConfig, DatasetSpec, bool], nn.Module]
    reads: tuple[str, ...]
    attention: bool
    all_inputs: bool = False
    perturbs: tuple[str, ...] = ()  # perturbable inputs of its own, beyond the dataset's (regime.inputs)
    tokenizer: str | None = None  # the data.tokenizer its token datasets must be built with; None: any

    def suits(self, spec: DatasetSpec) -> bool:
        """Whether it reads this dataset: its inputs, and tokens from the tokenizer it needs."""
        built = spec.manifest.get("params", {}).get("tokenizer", "words")
        return self.fits(spec.inputs) and (self.tokenizer is None or built == self.tokenizer)

    def fits(self, inputs: Iterable[str]) -> bool:
        """Whether a dataset with these inputs has what the model reads."""
        have = set(inputs)
        return set(self.reads) <= have if self.all_inputs else bool(set(self.reads) & have)


SHAPES = {"tokens": "[length]", "features": "[steps, features]", "pixels": "[channels, height, width]",
          "user": "[] (one index)"}
RANKS = {name: shape.count(",") + 1 if shape.startswith("[") and shape[1] != "]" else 0
         for name, shape in SHAPES.items()}

MODELS: dict[str, ModelEntry] = {
    "lstm": ModelEntry(_lstm, ("tokens", "features"), attention=False),
    "lstm_attention": ModelEntry(_lstm, ("tokens", "features"), attention=True),
    "encoder_attention": ModelEntry(_encoder, ("tokens",), attention=True, tokenizer="minilm"),
    "image_cnn": ModelEntry(_image_cnn, ("pixels",), attention=False),
    "visual_cnn": ModelEntry(_crisis, ("pixels",), attention=False),
    "text_cnn": ModelEntry(_crisis, ("tokens",), attention=False),
    "mmn": ModelEntry(_crisis, ("pixels", "tokens"), attention=False, all_inputs=True),
    "mf_bpr": ModelEntry(_recommender, ("user",), attention=False, perturbs=("users", "items")),
    "vbpr": ModelEntry(_recommender, ("user",), attention=False, perturbs=("features",)),
}


def model_problems(cfg: ModelConfig, spec: DatasetSpec) -> list[str]:
    """Why this model cannot train on this dataset (empty when it can)."""
    entry = MODELS[cfg.name]
    if not entry.fits(spec.inputs):
        suited = [n for n, e in MODELS.items() if e.suits(spec)]
        reads = (" and " if entry.all_inputs else " or ").join(entry.reads)
        return [f"model.name = {cfg.name!r} reads {reads}, the dataset {spec.uri} has "
                f"{', '.join(spec.inputs) or 'no inputs'}; use model.name = "
                f"{' or '.join(repr(n) for n in suited) or '(none fits)'}"]
    if not entry.suits(spec):
        built = spec.manifest.get("params", {}).get("tokenizer", "words")
        return [f"model.name = {cfg.name!r} reads tokens of data.tokenizer = {entry.tokenizer!r}; {spec.uri} "
                f"was built with {built!r}: rebuild it with data.tokenizer = \"{entry.tokenizer}\""]
    if cfg.name == "vbpr" and "item_features.npy" not in spec.side_files:
        return [f"model.name = \"vbpr\" scores items by their content features; {spec.uri} has none: use "
                "model.name = \"mf_bpr\", or rebuild it with data.interactions.features"]
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
