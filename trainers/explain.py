"""Explanations (Jia et al. KDD'19 Fig. 1, Fig. 3, Table 2): what a perturbation does to a sequence.

Perturbed embeddings are mapped back to their nearest vocabulary entries (L2): a token
counts as replaced when e^t + r^t is nearer another token than its own. Shown side by
side for AT on all steps (eq. 2) and attention-aware AT (eq. 11), with the clean
attention's top positions marked, and the attention on each perturbed input.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advorch.trainers.adversarial.base import perturbed_forward
from advorch.trainers.adversarial.perturb import attention_radius, sequence_radius
from advorch.trainers.models.base import Batch, input_mask
from advorch.trainers.tasks.base import Task


@dataclass
class Explanation:
    """One sequence: its tokens, clean attention, and per method the nearest tokens and attention."""

    tokens: list[str]
    label: int
    attention: list[float]
    perturbed: dict[str, list[str]]
    perturbed_attention: dict[str, list[float]]


def nearest_tokens(points: Tensor, table: Tensor) -> Tensor:
    """Id of the nearest row of `table` (V, D) for each point (N, D), padding (row 0) excluded."""
    d = torch.cdist(points, table[1:])
    return d.argmin(-1) + 1


@torch.no_grad()
def _attention(model: nn.Module, batch: Batch, r: Tensor) -> Tensor:
    (name,) = model.perturbable
    return perturbed_forward(model, batch, {name: r}).attention


def perturbations(model: nn.Module, task: Task, batch: Batch,
                  epsilon: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(input e, clean attention α, {"at": r (eq. 2), "attention_at": r (eq. 11)}) at radius ε,
    for a model with one sequence input."""
    model.eval()
    (name,) = model.perturbable
    e = model.embed(batch)[name].detach().requires_grad_(True)
    out = model({name: e}, batch)
    (g,) = torch.autograd.grad(task.loss(out, batch), e)
    alpha = out.attention.detach()
    mask = input_mask(model, name, batch)
    return e, alpha, {"at": sequence_radius(g, mask, epsilon),
                      "attention_at": attention_radius(g, alpha, mask, epsilon)}


def perturbed_attention(model: nn.Module, batch: Batch, i: int, r: Tensor) -> Tensor:
    """Attention of sequence i of the batch under its perturbation r (B, T, D)."""
    return _attention(model, {k: v[i:i + 1] for k, v in batch.items() if k != "unlabelled"}, r[i:i + 1])[0]


def explain(model: nn.Module, task: Task, batch: Batch, vocab: list[str],
            epsilon: float) -> list[Explanation]:
    """Explanations for every sequence of `batch` at radius ε."""
    e, alpha, methods = perturbations(model, task, batch, epsilon)
    mask = batch["mask"]
    table = model.embedding.weight.detach()
    result = []
    for i in range(len(mask)):
        n = int(mask[i].sum())
        ids = batch["tokens"][i, :n]
        perturbed, att = {}, {}
        for name, r in methods.items():
            near = nearest_tokens(e[i, :n].detach() + r[i, :n], table)
            perturbed[name] = [vocab[j] for j in near.tolist()]
            att[name] = perturbed_attention(model, batch, i, r)[:n].tolist()
        result.append(Explanation([vocab[j] for j in ids.tolist()], int(batch["label"][i]),
                                  alpha[i, :n].tolist(), perturbed, att))
    return result


def top_positions(attention: list[float], k: int = 5) -> set[int]:
    return set(sorted(range(len(attention)), key=lambda t: -attention[t])[:k])


def as_text(x: Explanation, k: int = 5) -> list[str]:
    """Lines for a terminal: *word* marks a top-k attention position, [word] a replaced token."""
    top = top_positions(x.attention, k)
    lines = ["original     " + " ".join(f"*{w}*" if t in top else w for t, w in enumerate(x.tokens))]
    for name, words in x.perturbed.items():
        lines.append(f"{name:12s} " + " ".join(
            f"[{w}]" if w != x.tokens[t] else w for t, w in enumerate(words)))
    return lines


def as_html(items: list[Explanation], classes: list[str], epsilon: float) -> str:
    """A self-contained page: attention as background, replaced tokens struck through with the new one."""
    def row(words: list[str], att: list[float], original: list[str]) -> str:
        peak = max(att) or 1.0
        cells = []
        for w, a, o in zip(words, att, original, strict=True):
            shade = f"background: rgba(220, 40, 40, {a / peak:.2f})"
            text = html.escape(w) if w == o else f"<s>{html.escape(o)}</s> <b>{html.escape(w)}</b>"
            cells.append(f'<span style="{shade}; padding: 1px 2px">{text}</span>')
        return " ".join(cells)

    body = [f"<h2>Perturbations at ε = {epsilon}</h2>",
            "<p>Background: attention (darker is higher). Struck-through tokens were replaced by the "
            "nearest vocabulary entry of the perturbed embedding (bold).</p>"]
    for x in items:
        body.append(f"<h3>{html.escape(classes[x.label])}</h3><table>")
        body.append(f"<tr><td>original</td><td>{row(x.tokens, x.attention, x.tokens)}</td></tr>")
        for name, words in x.perturbed.items():
            body.append(f"<tr><td>{name}</td><td>{row(words, x.perturbed_attention[name], x.tokens)}"
                        "</td></tr>")
        body.append("</table>")
    return "<html><body style='font-family: sans-serif'>" + "\n".join(body) + "</body></html>"


def attention_plot(items: list[Explanation], path: str) -> None:
    """Heat rows of attention per sequence: clean, at-perturbed, attention-aware-perturbed (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(items), 1, figsize=(10, 1.3 * len(items) + 0.5), squeeze=False)
    for ax, x in zip(axes[:, 0], items, strict=True):
        rows = [x.attention] + [x.perturbed_attention[k] for k in x.perturbed]
        shown = ax.imshow(np.array(rows), aspect="auto", cmap="Reds", vmin=0)
        ax.set_yticks(range(len(rows)), ["clean", *x.perturbed])
        ax.set_xticks(range(len(x.tokens)), x.tokens, rotation=60, fontsize=7)
        fig.colorbar(shown, ax=ax, label="attention weight")
    axes[-1, 0].set_xlabel("token of the sentence (rows: clean input, then each perturbation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the colour bars' labels stay inside
    plt.close(fig)
