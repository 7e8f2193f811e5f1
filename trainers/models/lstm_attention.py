"""LSTM and LSTM-Attention classifiers (Jia et al., KDD'19, eq. 4-10).

LSTM: hidden states h^t (eq. 4-7); the plain LSTM classifies from the last real step.
LSTM-Attention: α^t = softmax_t(v · h^t) with v ∈ R^H learned jointly (eq. 8),
ŷ = softmax(W_y Σ_t α^t h^t) (eq. 9), trained with cross-entropy (eq. 10).
Padding is masked out of the softmax, so α sums to 1 over real steps only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable, native_rnn


class LSTMAttention(nn.Module):
    """Embedding → dropout → LSTM → attention pooling (or last state) → linear.

    One perturbable input: "tokens" (the (B, T, D) embeddings of the token ids, masked by
    batch["mask"]) or, for feature sequences, "features" (the standardised (B, T, F) values;
    fixed-length windows have no mask).

    Args:
        vocab_size: number of token ids (0 = padding, 1 = OOV).
        num_classes: C.
        embedding_dim: D; `embed` returns (B, T, D).
        hidden_dim: H.
        attention: False gives the plain LSTM baseline (last real hidden state).
        dropout: on the (possibly perturbed) embeddings and on the pooled state.
        pretrained: optional (vocab_size, D) initial embedding matrix.
        bidirectional: h^t = [→h^t; ←h^t] (2H); the plain LSTM then classifies from the last
            real step of the forward pass and the first step of the backward one.
        input_dim: F for feature sequences (MODIS windows): no embedding, `embed` returns the
            features standardised by `input_stats` (mean, std per feature), so perturbations
            act on the input values, ε in standard deviations.
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 128,
                 hidden_dim: int = 140, attention: bool = True, dropout: float = 0.5,
                 pretrained: Tensor | None = None, bidirectional: bool = False, input_dim: int | None = None,
                 input_stats: tuple[Tensor, Tensor] | None = None) -> None:
        super().__init__()
        if input_dim:  # feature sequences only: token models keep their state dict as it was
            mean, std = input_stats or (torch.zeros(input_dim), torch.ones(input_dim))
            self.register_buffer("input_mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("input_std", torch.as_tensor(std, dtype=torch.float32))
        self.embedding = None if input_dim else nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        if pretrained is not None:
            self.embedding.weight.data.copy_(pretrained)
        self.lstm = nn.LSTM(input_dim or embedding_dim, hidden_dim, batch_first=True,
                            bidirectional=bidirectional)
        width = hidden_dim * (2 if bidirectional else 1)
        self.attention = attention
        self.v = nn.Parameter(torch.randn(width) / width**0.5) if attention else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_classes)  # W_y
        self.input_name = "features" if input_dim else "tokens"
        self.perturbable = {self.input_name: Perturbable(mask=None if input_dim else "mask",
                                                         raw=bool(input_dim))}

    def embed(self, batch: Batch) -> Inputs:
        """Token ids (B, T) → {"tokens": embeddings (B, T, D)}, or {"features": standardised (B, T, F)}."""
        if self.embedding is None:
            return {"features": (batch["features"] - self.input_mean) / self.input_std}
        return {"tokens": self.embedding(batch["tokens"])}

    def serving_batch(self, inputs: Tensor) -> Batch:
        """The batch of a serving call: token ids (B, T) 0-padded, or features (B, T, F)."""
        if self.embedding is None:
            return {"features": inputs}
        return {"tokens": inputs, "mask": inputs != 0}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        e = inputs[self.input_name]
        mask = batch.get("mask")  # (B, T); feature windows have none: every step is real
        if mask is None:
            mask = torch.ones(e.shape[:2], dtype=torch.bool, device=e.device)
        h = self._hidden(self.drop(e), mask)  # (B, T, H)
        if self.attention:
            scores = (h @ self.v).masked_fill(~mask, float("-inf"))  # (B, T), eq. 8
            alpha = torch.softmax(scores, dim=1)
            pooled = torch.einsum("bt,bth->bh", alpha, h)  # Σ_t α^t h^t, eq. 9
        else:
            alpha = None
            last = mask.sum(1).clamp(min=1) - 1  # (B,)
            pooled = h[torch.arange(h.size(0), device=h.device), last]  # (B, H)
            if self.lstm.bidirectional:  # the backward direction has read everything at step 0
                half = h.size(-1) // 2
                pooled = torch.cat([pooled[:, :half], h[:, 0, half:]], dim=-1)
        return Output(self.out(self.drop(pooled)), attention=alpha, hidden={"lstm": h, "pooled": pooled})

    def _hidden(self, e: Tensor, mask: Tensor) -> Tensor:
        """LSTM states; one-way, steps after the end never reach earlier ones. A backward pass
        would start on the padding, so a bidirectional LSTM reads packed real steps only."""
        with native_rnn(e):
            if not self.lstm.bidirectional:
                return self.lstm(e)[0]
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                    total_length=e.size(1))[0]
