"""Offline adversarial augmentation: Algorithm 1 of Chen et al. (multimodal adversarial
training, MMAT), steps 3-7.

    1-2  train the classifier f on (x_i, x_t, y)                 (stage 1: a clean fit)
    3-5  craft x_i' = x_i + θ·sign(∇) (eq. 1) and x_t' by word replacement (eq. 2), once,
         with the trained f in eval mode (no dropout: the attack sees the deployed model)
    6    augment: train ∪ {(x_i', x_t', y)}
    7    retrain f on the augmented set                           (stage 2: from f's weights)

Each Ray worker crafts the adversarial copy of its own slice of the train split (no
crafted data crosses the network or the disk), so the ranks stay in lockstep: every slice
doubles. Pixels are stored as uint8, as the shards hold them: a crafted pixel is rounded
to the nearest 1/255 (|Δ| ≤ 0.002 against θ = 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advorch.config import RegimeConfig
from advorch.trainers.data import TensorData, batches
from advorch.trainers.tasks.base import Task


def settings(regime: RegimeConfig) -> dict[str, Any]:
    """What crafting reads of the regime: θ of FGSM (epsilon), the word replacement's candidates
    (neighbours) and threshold."""
    return {"epsilon": regime.epsilon, "neighbours": regime.neighbours, "threshold": regime.threshold}


def stored(name: str, adversarial: Tensor, like: Tensor) -> Tensor:
    """A crafted model input back in the stored form of `like` (the TensorData column): token
    ids right-padded to its width, pixels in [0, 1] to uint8."""
    if like.dtype == torch.uint8:
        return (adversarial.clamp(0, 1) * 255).round().to(torch.uint8)
    if name == "tokens":
        out = torch.zeros(adversarial.shape[0], like.shape[1], dtype=like.dtype)
        out[:, :adversarial.shape[1]] = adversarial
        return out
    return adversarial.to(like.dtype)


def adversarial_copy(model: nn.Module, task: Task, data: TensorData, batch_size: int,
                     device: torch.device, craft: dict[str, Any]) -> TensorData:
    """The adversarial version of every row of `data` (steps 3-5), crafted in eval mode;
    inputs no attack changes (e.g. has_image) are copied. `craft`: `settings(regime)`."""
    from advorch.trainers.robustness import adversarial_examples

    was_training = model.training
    model.eval()
    crafted: dict[str, list[Tensor]] = {name: [] for name in data.inputs}
    start = 0
    for batch in batches(data, batch_size, device):
        n = len(batch["label"])
        adv = adversarial_examples(model, task, batch, craft["epsilon"], craft["neighbours"],
                                   craft["threshold"])
        for name, column in data.inputs.items():
            like = column[start:start + n]
            crafted[name].append(stored(name, adv[name].cpu(), like) if name in adv else like)
        start += n
    model.train(was_training)
    return TensorData({k: torch.cat(v) for k, v in crafted.items()}, data.labels.clone(),
                      [f"{i}#adv" for i in data.ids])


def augmented(data: TensorData, adversarial: TensorData) -> TensorData:
    """Step 6: the rows of both, original first."""
    return TensorData({k: torch.cat([v, adversarial.inputs[k]]) for k, v in data.inputs.items()},
                      torch.cat([data.labels, adversarial.labels]), data.ids + adversarial.ids)
