"""A small image CNN: two conv blocks, global average pooling, a linear classifier.

Global average pooling right before the classifier makes class activation maps exact
(Zhou et al. 2016): CAM_c = Σ_k W[c, k] · A_k over the last conv block's maps A (B, K, h, w),
whose spatial mean is the pooled vector the classifier reads. The perturbable input is
"pixels" (B, C, H, W) in [0, 1]: FGSM, PGD and input-gradient terms act on the image itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs, Output, Perturbable

ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus}


class ImageCNN(nn.Module):
    """conv3x3 → act → max-pool 2 → conv3x3 → act → global average pool → dropout → linear.

    Args:
        in_channels: C of the images (1 grey, 3 RGB).
        num_classes: number of classes.
        widths: output channels of the two conv blocks.
        dropout: on the pooled vector.
        activation: "relu", or "softplus" (smooth: a non-zero second derivative everywhere,
            for double backpropagation through the activation itself).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int] = (32, 64),
                 dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1), act(), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1), act())
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(widths[1], num_classes)  # W of the CAM
        self.perturbable = {"pixels": Perturbable(bounds=(0.0, 1.0), raw=True)}

    def embed(self, batch: Batch) -> Inputs:
        """{"pixels": (B, C, H, W)}: the image itself is the perturbable input."""
        return {"pixels": batch["pixels"]}

    def serving_batch(self, inputs: Tensor) -> Batch:
        return {"pixels": inputs}

    def forward(self, inputs: Inputs, batch: Batch) -> Output:
        maps = self.features(inputs["pixels"])  # (B, K, h, w)
        pooled = maps.mean((2, 3))  # global average pooling
        return Output(self.out(self.drop(pooled)), hidden={"conv": maps, "pooled": pooled})

    def class_activation_maps(self, maps: Tensor) -> Tensor:
        """CAM (B, C, h, w) from the last conv maps: Σ_k W[c, k] · A_k (Zhou et al. 2016, eq. 2)."""
        return torch.einsum("ck,bkhw->bchw", self.out.weight, maps)
