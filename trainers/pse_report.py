"""Figures and the HTML report of the PSE analysis (trainers/pse.py): the S-vs-P scatter, class
activation maps of clean vs adversarial images, attention clean vs adversarial for sequences,
the masking experiment.

Class activation maps (Zhou et al. 2016): exact CAM_c = Σ_k W[c, k]·A_k where the model pools its
last conv maps globally (image_cnn's `class_activation_maps`); for the crisis CNNs, whose conv maps
are flattened into a dense layer, Grad-CAM (Selvaraju et al. 2017: ReLU(Σ_k α_k A_k), α_k the
spatial mean of ∂z_c/∂A_k at the last conv layer), which equals CAM up to a scale for a pooled CNN.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advorch.trainers.models.base import Batch, Inputs
from advorch.trainers.pse import TYPES, Effects


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grad_cam(model: nn.Module, inputs: Inputs, batch: Batch, classes: Tensor) -> Tensor:
    """Grad-CAM (B, h, w) of class `classes[i]` per image at the last conv layer's resolution:
    ReLU(Σ_k α_k A_k), α_k = mean_ij ∂z_c/∂A_k(i, j), A the maps after the last conv's activation."""
    layers = list(model.modules())
    last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d))
    after = layers[last + 1] if last + 1 < len(layers) else None
    layer = after if isinstance(after, (nn.ReLU, nn.Softplus)) else layers[last]
    grabbed = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: grabbed.setdefault("A", out))
    try:
        z = model(inputs, batch).scores
    finally:
        handle.remove()
    A = grabbed["A"]  # (B, K, h, w)
    grad, = torch.autograd.grad(z[torch.arange(len(classes)), classes].sum(), A)
    return F.relu((grad.mean((2, 3), keepdim=True) * A).sum(1)).detach()


def class_maps(model: nn.Module, inputs: Inputs, batch: Batch, classes: Tensor) -> Tensor:
    """The class activation map (B, H, W) of class `classes[i]` for each image, at the image's size:
    exact CAM for a globally pooled CNN, else Grad-CAM."""
    if hasattr(model, "class_activation_maps"):
        with torch.no_grad():
            maps = model(inputs, batch).hidden["conv"]
            cam = model.class_activation_maps(maps)[torch.arange(len(classes)), classes]
    else:
        cam = grad_cam(model, inputs, batch, classes)
    size = inputs["pixels"].shape[-2:]
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cam_figure(model: nn.Module, batch: Batch, r: Inputs, true: Tensor, target: Tensor, s: Tensor,
               names: Sequence[str], path: str) -> None:
    """Per example of the batch (a row each): clean image, CAM of t and of a on it, the adversarial
    image (x + r), CAM of t and of a on it; s is the example's suppression share."""
    from advorch.trainers.adversarial.base import add

    plt = _plt()
    model.eval()
    xs = model.embed(batch)
    xas = add(xs, r)
    t, a = true, target
    maps = [class_maps(model, inp, batch, c).detach() for inp in (xs, xas) for c in (t, a)]
    low, high = min(0.0, float(torch.stack(maps).amin())), float(torch.stack(maps).amax()) or 1.0
    fig, axes = plt.subplots(len(t), 6, figsize=(9, 1.6 * len(t) + 0.4), squeeze=False)
    for i in range(len(t)):
        tn, an = names[int(t[i])], names[int(a[i])]
        panels = [(xs["pixels"][i].detach(), "clean"), (maps[0][i], f"CAM {tn}"), (maps[1][i], f"CAM {an}"),
                  (xas["pixels"][i].detach(), f"adv. s={float(s[i]):.2f}"), (maps[2][i], f"CAM {tn}"),
                  (maps[3][i], f"CAM {an}")]
        for j, (img, title) in enumerate(panels):
            ax = axes[i][j]
            if img.dim() == 3:  # an image (C, H, W)
                ax.imshow(img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.numpy(), cmap="jet", vmin=low, vmax=high)  # one scale: maps compare
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("class activation maps: true class t and target a, clean (left) vs adversarial (right)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def attention_figure(model: nn.Module, batch: Batch, r: Inputs, words: list[list[str]], path: str) -> None:
    """Per sequence of the batch: attention over its words, clean vs adversarial (x + r)."""
    from advorch.trainers.adversarial.base import add

    plt = _plt()
    with torch.no_grad():
        x = model.embed(batch)
        clean, adv = model(x, batch).attention, model(add(x, r), batch).attention
    fig, axes = plt.subplots(len(words), 1, figsize=(9, 1.8 * len(words)), squeeze=False)
    for i, (ax, ws) in enumerate(zip(axes[:, 0], words, strict=True)):
        n = len(ws)
        pos = torch.arange(n).float()
        ax.bar(pos - 0.2, clean[i, :n].numpy(), 0.4, label="clean")
        ax.bar(pos + 0.2, adv[i, :n].numpy(), 0.4, label="adversarial")
        ax.set_xticks(pos.tolist(), ws, rotation=60, fontsize=6)
        ax.set_ylabel("attention", fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scatter(results: list[tuple[str, float, Effects]], path: str) -> None:
    """S vs P per example, one panel per attack × ε, successful examples coloured by type."""
    plt = _plt()
    colours = dict(zip(TYPES, ("tab:blue", "tab:grey", "tab:red", "black"), strict=True))
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
    for ax, (attack, eps, e) in zip(axes[0], results, strict=True):
        ok = e.success
        ax.scatter(e.S[~ok].numpy(), e.P[~ok].numpy(), s=4, c="lightgrey", label="attack failed")
        for i, name in enumerate(TYPES):
            sel = ok & (e.kind == i)
            if sel.any():
                ax.scatter(e.S[sel].numpy(), e.P[sel].numpy(), s=4, c=colours[name], label=name)
        ax.axhline(0, lw=0.5, c="k")
        ax.axvline(0, lw=0.5, c="k")
        ax.set_title(f"{attack} ε={eps:g}", fontsize=8)
        ax.set_xlabel("S = z_t(x) − z_t(x')", fontsize=7)
        ax.set_ylabel("P = z_a(x') − z_a(x)", fontsize=7)
    axes[0, 0].legend(fontsize=6, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def masking_figure(rows: list[dict], attack: str, eps: float, path: str) -> None:
    """Clean and adversarial accuracy vs % of units masked: most sensitive vs random."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    base = rows[0]
    for units, style in (("most sensitive", "-"), ("random", "--")):
        pts = [base] + [r for r in rows if r["units"] == units]
        pct = [100 * r["fraction"] for r in pts]
        ax.plot(pct, [r["clean_accuracy"] for r in pts], style, marker="o", c="tab:blue",
                label=f"clean, {units}")
        ax.plot(pct, [r["adv_accuracy"] for r in pts], style, marker="s", c="tab:red",
                label=f"{attack} ε={eps:g}, {units}")
    ax.set_xlabel("% of penultimate units zeroed")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(header: Sequence[str], rows: list[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border=1 cellpadding=3 style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def _fmt(c) -> str:
    return f"{c:.3f}" if isinstance(c, float) else str(c)


def report_html(run_id: str, summaries: list[dict], units: list[dict], mask: list[dict], figures: list[str],
                definitions: str) -> str:
    """The report: definitions, type shares per attack × ε, top units per class pair, masking, figures."""
    shares = _table(("attack", "ε", "targeted", "n", "success", *TYPES, "mean s"),
                    [(s["attack"], s["epsilon"], s["targeted"], int(s["n"]), s["success"],
                      *(s[t] for t in TYPES), s["mean_share"]) for s in summaries])
    top = _table(("attack", "ε", "true → target", "n", "most suppressed units (mean σ)",
                  "most promoted units (mean π)"),
                 [(u["attack"], u["epsilon"], f"{u['true']} → {u['target']}", u["n"],
                   ", ".join(f"{k}: {v:.3f}" for k, v in u["suppressed"]),
                   ", ".join(f"{k}: {v:.3f}" for k, v in u["promoted"])) for u in units])
    masks = _table(("units", "% masked", "units masked", "clean accuracy", "adversarial accuracy"),
                   [(m["units"], 100 * m["fraction"], int(m["masked"]), m["clean_accuracy"],
                     m["adv_accuracy"]) for m in mask])
    imgs = "".join(f"<p><img src='{html.escape(f)}'></p>" for f in figures)
    return (f"<html><head><meta charset='utf-8'><title>PSE {run_id}</title></head><body>"
            f"<h1>Promotion / suppression effect, run {html.escape(run_id)}</h1>"
            f"<pre>{html.escape(definitions)}</pre>"
            f"<h2>Types of the successful adversarial examples</h2>{shares}"
            f"<h2>Units per class pair</h2>{top}<h2>Masking the most attack-sensitive units</h2>{masks}"
            f"<h2>Figures</h2>{imgs}</body></html>")
