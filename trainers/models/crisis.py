"""Chen et al.'s crisis-tweet models (§III-A, Fig. 2-3): Visual-CNN, Text-CNN and the multi-modal MMN.

    Visual-CNN  two (conv3x3 → ReLU → max-pool 2) blocks → flatten → dense H (Fig. 2, left)
    Text-CNN    word vectors → conv over `window` consecutive words (Kim 2014) → ReLU → max-pool
                over time (real windows only) → dense H (Fig. 3)
    MMN         [visual H ; text H] → dense H → output (Fig. 2)

Each ends in dropout → linear logits over the classes; the classification task applies softmax
cross-entropy, which for two classes is the paper's sigmoid output with binary cross-entropy.
Perturbable inputs: "pixels" (B, C, H, W), the raw image in [0, 1] (FGSM, eq. 1) and "tokens"
(B, T, D), the word vectors of the token ids, masked by batch["mask"] (word replacement, eq. 2,
acts on the ids: trainers/adversarial/word_replace.py).

Tweets without an image: when the batch has "has_image" (B,) bool, the MMN multiplies the visual
features of the rows without one by 0, so a missing image (stored as a blank picture) contributes
nothing to the prediction, and no gradient reaches those pixels (FGSM leaves them as they are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable

PIXELS = Perturbable(bounds=(0.0, 1.0), raw=True)
TOKENS = Perturbable(mask="mask")


class VisualFeatures(nn.Module):
    """Image (B, C, H, W) → (B, hidden): two conv + max-pool blocks, flatten, dense, ReLU (§III-A)."""

    def __init__(self, image_shape: tuple[int, int, int], widths: tuple[int, int] = (32, 64),
                 hidden: int = 64) -> None:
        super().__init__()
        c, h, w = image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.dense = nn.Linear(widths[1] * (h // 4) * (w // 4), hidden)

    def forward(self, pixels: Tensor) -> Tensor:
        # channels-last input: oneDNN's convolutions run it 1.1-1.3x faster on CPU (measured at
        # batch 32, 64 x 64); the weights stay contiguous, as the gradient all-reduce expects
        return F.relu(self.dense(self.conv(pixels.contiguous(memory_format=torch.channels_last))))


class TextFeatures(nn.Module):
    """Token ids → word vectors; vectors (B, T, D) + mask → (B, hidden) (Kim 2014; Chen et al. Fig. 3).

    c_j = ReLU(W · [e_j; …; e_{j+k-1}] + b) for every window j of k words, max over the real windows
    (those inside the tweet; a tweet shorter than k has one window, padded with zero vectors),
    then dense → ReLU. Padding vectors are zeroed first, so padding never changes the output.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 100, window: int = 2, filters: int = 100,
                 hidden: int = 64) -> None:
        super().__init__()
        self.window = window
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.conv = nn.Conv1d(embedding_dim, filters, window)
        self.dense = nn.Linear(filters, hidden)

    def forward(self, e: Tensor, mask: Tensor) -> Tensor:
        short = self.window - e.size(1)
        if short > 0:  # fewer steps than one window: pad with zero vectors
            e, mask = F.pad(e, (0, 0, 0, short)), F.pad(mask, (0, short))
        e = e * mask.unsqueeze(-1).to(e.dtype)
        c = F.relu(self.conv(e.transpose(1, 2)))  # (B, filters, T - k + 1)
        first = torch.arange(c.size(-1), device=c.device) == 0
        real = mask[:, :c.size(-1)] & (mask[:, self.window - 1:] | first)  # (B, T - k + 1)
        pooled = c.masked_fill(~real.unsqueeze(1), float("-inf")).amax(-1)
        pooled = torch.where(real.any(1, keepdim=True), pooled, torch.zeros_like(pooled))  # empty tweets
        return F.relu(self.dense(pooled))


class VisualCNN(nn.Module):
    """Visual-CNN baseline (§IV-B 1): VisualFeatures → dropout → linear logits; reads "pixels"."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int,
                 widths: tuple[int, int] = (32, 64), hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.visual = VisualFeatures(image_shape, widths, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)
        self.perturbable = {"pixels": PIXELS}

    def embed(self, batch: Batch) -> Inputs:
        """{"pixels": (B, C, H, W)}: the image itself."""
        return {"pixels": batch["pixels"]}

    def serving_batch(self, inputs: Tensor) -> Batch:
        return {"pixels": inputs}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        v = self.visual(inputs["pixels"])
        return Output(self.out(self.drop(v)), hidden={"visual": v, "pooled": v})


class TextCNN(nn.Module):
    """Text-CNN baseline (§IV-B 1): TextFeatures → dropout → linear logits; reads "tokens"."""

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 100, window: int = 2,
                 filters: int = 100, hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.text = TextFeatures(vocab_size, embedding_dim, window, filters, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)
        self.perturbable = {"tokens": TOKENS}

    @property
    def embedding(self) -> nn.Embedding:
        """The word vectors (initial embeddings and word replacement read them here)."""
        return self.text.embedding

    def embed(self, batch: Batch) -> Inputs:
        """Token ids (B, T) → {"tokens": word vectors (B, T, D)}."""
        return {"tokens": self.embedding(batch["tokens"])}

    def serving_batch(self, inputs: Tensor) -> Batch:
        return {"tokens": inputs, "mask": inputs != 0}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        t = self.text(inputs["tokens"], batch["mask"])
        return Output(self.out(self.drop(t)), hidden={"text": t, "pooled": t})


class MMN(nn.Module):
    """Multi-modal network (§III-A, Fig. 2): [VisualFeatures ; TextFeatures] → dropout → dense H → ReLU
    → dropout → linear logits; reads "pixels" and "tokens", and "has_image" when the batch has it
    (visual features of rows without an image are zeroed, see the module docstring)."""

    def __init__(self, image_shape: tuple[int, int, int], vocab_size: int, num_classes: int,
                 widths: tuple[int, int] = (32, 64), embedding_dim: int = 100, window: int = 2,
                 filters: int = 100, hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.visual = VisualFeatures(image_shape, widths, hidden)
        self.text = TextFeatures(vocab_size, embedding_dim, window, filters, hidden)
        self.fuse = nn.Linear(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)
        self.perturbable = {"pixels": PIXELS, "tokens": TOKENS}

    @property
    def embedding(self) -> nn.Embedding:
        """The word vectors (initial embeddings and word replacement read them here)."""
        return self.text.embedding

    def embed(self, batch: Batch) -> Inputs:
        """{"pixels": (B, C, H, W), "tokens": word vectors (B, T, D)}."""
        return {"pixels": batch["pixels"], "tokens": self.embedding(batch["tokens"])}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        v = self.visual(inputs["pixels"])
        if "has_image" in batch:  # a tweet without an image: its visual features are 0
            v = v * batch["has_image"].to(v.dtype).unsqueeze(-1)
        t = self.text(inputs["tokens"], batch["mask"])
        fused = F.relu(self.fuse(self.drop(torch.cat([v, t], dim=-1))))
        return Output(self.out(self.drop(fused)), hidden={"visual": v, "text": t, "pooled": fused})
