"""The crisis-tweet paper's Fig. 4-5 (Chen et al. §IV-D): per class, a test tweet the model gets
right, beside its multimodal adversarial version (FGSM image, eq. 1; word replacement, eq. 2)
crafted against that model in eval mode, with the replaced words marked and both predictions.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advorch.trainers.tasks.base import Task


@dataclass
class TweetExample:
    """One tweet, original and adversarial: words, images (C, H, W) in [0, 1] or None, the
    replaced positions, and the predicted class and its probability for each."""

    label: int
    words: list[str]
    adversarial_words: list[str]
    changed: list[bool]
    image: Tensor | None
    adversarial_image: Tensor | None
    prediction: tuple[int, float]
    adversarial_prediction: tuple[int, float]


def _predict(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        p = torch.softmax(model(model.embed(batch), batch).scores, -1)
    return p.argmax(1), p.max(1).values


def tweet_examples(model: nn.Module, task: Task, batch: dict[str, Tensor], words: list[str],
                   epsilon: float, neighbours: int, threshold: float) -> list[TweetExample]:
    """Per class, the first row of `batch` the model classifies right (else the first of the
    class), original and adversarial; `words` maps token ids to words (the vocabulary)."""
    from advorch.trainers.robustness import adversarial_examples

    model.eval()
    adv = adversarial_examples(model, task, batch, epsilon, neighbours, threshold)
    crafted = {**batch, **{k: v for k, v in adv.items() if k in batch}}
    if "tokens" in adv:
        crafted["mask"] = adv["tokens"] != 0
    pred, conf = _predict(model, batch)
    adv_pred, adv_conf = _predict(model, crafted)
    out = []
    for c in sorted(set(batch["label"].tolist())):
        rows = (batch["label"] == c).nonzero().flatten().tolist()
        i = next((r for r in rows if pred[r] == c), rows[0])
        tokens = batch["tokens"][i] if "tokens" in batch else torch.zeros(0, dtype=torch.long)
        keep = tokens != 0
        new = adv["tokens"][i][: len(tokens)] if "tokens" in adv else tokens
        changed = adv["changed"][i][: len(tokens)] if "changed" in adv else torch.zeros_like(keep)
        out.append(TweetExample(
            c, [words[t] for t in tokens[keep].tolist()], [words[t] for t in new[keep].tolist()],
            changed[keep].tolist(), batch["pixels"][i].cpu() if "pixels" in batch else None,
            adv["pixels"][i].cpu() if "pixels" in adv else None,
            (int(pred[i]), float(conf[i])), (int(adv_pred[i]), float(adv_conf[i]))))
    return out


def examples_html(items: list[TweetExample], classes: list[str]) -> str:
    """The examples as an HTML table, replaced words marked."""
    def text(ws: list[str], marks: list[bool]) -> str:
        return " ".join(f"<mark>{html.escape(w)}</mark>" if m else html.escape(w)
                        for w, m in zip(ws, marks, strict=True))

    rows = "".join(
        f"<tr><td>{html.escape(classes[x.label])}</td>"
        f"<td>{text(x.words, [False] * len(x.words))}<br><small>{classes[x.prediction[0]]} "
        f"{x.prediction[1]:.1%}</small></td>"
        f"<td>{text(x.adversarial_words, x.changed)}<br><small>{classes[x.adversarial_prediction[0]]} "
        f"{x.adversarial_prediction[1]:.1%}</small></td></tr>" for x in items)
    return ("<table><tr><th>class</th><th>original</th><th>adversarial (replaced words marked)</th></tr>"
            f"{rows}</table>")


def examples_plot(items: list[TweetExample], classes: list[str], path: str) -> None:
    """Fig. 4-5: per class, original and adversarial image (when the model reads one) and text,
    the replaced words in red, each titled with the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = any(x.image is not None for x in items)
    cols = 2 if images else 1
    fig, axes = plt.subplots(2 * len(items), cols, figsize=(4 * cols, 2.6 * len(items)), squeeze=False)
    for k, x in enumerate(items):
        for j, (img, ws, marks, (p, conf), what) in enumerate([
                (x.image, x.words, [False] * len(x.words), x.prediction, "original"),
                (x.adversarial_image, x.adversarial_words, x.changed, x.adversarial_prediction,
                 "adversarial")]):
            row = axes[2 * k + j]
            title = f"{classes[x.label]}, {what}: predicted {classes[p]} {conf:.0%}"
            if images:
                row[0].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy() if img is not None else [[0]])
                row[0].set_title(title, fontsize=8)
                row[0].axis("off")
            _words(row[-1], ws, marks, None if images else title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _words(ax, words: list[str], marks: list[bool], title: str | None) -> None:
    """The words left to right, wrapping, replaced ones red and bold."""
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    x, y = 0.0, 0.8
    for w, m in zip(words, marks, strict=True):
        t = ax.text(x, y, w + " ", transform=ax.transAxes, fontsize=9, color="red" if m else "black",
                    fontweight="bold" if m else "normal", va="top")
        width = t.get_window_extent(renderer).transformed(ax.transAxes.inverted()).width
        if x > 0 and x + width > 1.0:  # wrap: move this word to the next line
            x, y = 0.0, y - 0.18
            t.set_position((x, y))
        x += width
