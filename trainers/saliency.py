"""Input-gradient saliency (Ross & Doshi-Velez AAAI'18 §5; Simonyan et al. 2014): where the
loss is most sensitive to the input, per sample.

Images: |∇_x ℓ| per pixel (max over channels) as a heat map beside the image. Sequences:
‖∇_{e^t} ℓ‖₂ per step beside the attention α^t. Input-gradient regularised models are
expected to show sparser, more object-shaped maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.perturb import masked
from advorch.trainers.models.base import Batch, Inputs, input_mask
from advorch.trainers.tasks.base import Task


def input_gradients(model: nn.Module, task: Task, batch: Batch) -> tuple[Inputs, Tensor | None]:
    """(∇_{x_i} ℓ_i per input and example, clean attention or None), the model in eval mode."""
    model.eval()
    x = {k: v.detach().requires_grad_(True) for k, v in model.embed(batch).items()}
    out = model(x, batch)
    g = torch.autograd.grad(task.loss(out, batch, "none").sum(), list(x.values()))
    attention = out.attention.detach() if out.attention is not None else None
    return {k: masked(gk, input_mask(model, k, batch)) for k, gk in zip(x, g, strict=True)}, attention


def image_plot(pixels: Tensor, grads: Tensor, titles: list[str], path: str) -> None:
    """Per sample: the image (top) and |∇_x ℓ| (bottom, max over channels); pixels (N, C, H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pixels)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.4), squeeze=False)
    heat = grads.abs().amax(1)  # (N, H, W)
    for i in range(n):
        img = pixels[i].permute(1, 2, 0).squeeze(-1).cpu().numpy()
        axes[0, i].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[0, i].set_title(titles[i], fontsize=7)
        axes[1, i].imshow(heat[i].cpu().numpy(), cmap="inferno")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sequence_plot(words: list[list[str]], grads: Tensor, attention: Tensor | None, path: str) -> None:
    """Per sequence: ‖∇_{e^t} ℓ‖₂ per step (normalised to its maximum) and the attention α^t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    norms = grads.norm(dim=-1)  # (N, T)
    fig, axes = plt.subplots(len(words), 1, figsize=(10, 1.3 * len(words) + 0.5), squeeze=False)
    for i, (ax, w) in enumerate(zip(axes[:, 0], words, strict=True)):
        n = len(w)
        g = norms[i, :n] / norms[i, :n].max().clamp_min(1e-12)
        rows = [g.tolist()] + ([attention[i, :n].tolist()] if attention is not None else [])
        ax.imshow(np.array(rows), aspect="auto", cmap="Reds")
        ax.set_yticks(range(len(rows)), ["‖∇ℓ‖", "attention"][: len(rows)])
        ax.set_xticks(range(n), w, rotation=60, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
