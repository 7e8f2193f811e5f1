"""Robustness evaluation, transfer attacks and explanations of a finished training run,
logged back to it.

A run is found by its MLflow id: the model from the `advorch.model_uri` tag, the config
from its config.json artifact, the dataset from the `advorch.dataset` tag.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advorch.config import ExperimentConfig


@dataclass
class Run:
    """A trained run as analysis needs it."""

    run_id: str
    model: Any
    cfg: ExperimentConfig
    data: str
    uri: str
    spec: Any
    task: Any


def load_run(run_id: str, mlflow_uri: str | None = None) -> Run:
    """The run's classifier (eval mode), config, dataset spec and task.

    Raises:
        LookupError: the run has no logged model (trained with mlflow.log_model = false).
    """
    from advorch import tracking
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.tasks import build_task

    uri = tracking.resolve_uri(mlflow_uri)
    tags = tracking.run_tags(uri, run_id)
    if "advorch.model_uri" not in tags:
        raise LookupError(f"run {run_id} has no logged model (it was trained with mlflow.log_model = false)")
    cfg = ExperimentConfig.model_validate(tracking.load_artifact_dict(uri, run_id, "config.json"))
    model = tracking.load_model(uri, tags["advorch.model_uri"]).model
    spec = read_spec(tags["advorch.dataset"])
    return Run(run_id, model.eval(), cfg, tags["advorch.dataset"], uri, spec, build_task(cfg, spec))


def evaluate_run(run_id: str, attacks: list[str], epsilons: list[float], mlflow_uri: str | None = None,
                 steps: int = 10, step_size: float | None = None, split: str = "test",
                 transfer_from: list[str] | None = None) -> list[dict[str, Any]]:
    """Metrics under each attack × ε on the split, white-box and (transfer_from) crafted on each
    of the other runs' models; logged as metrics, a table and a plot per source."""
    from advorch import tracking
    from advorch.trainers.data import load_slice
    from advorch.trainers.robustness import plot, robustness

    run = load_run(run_id, mlflow_uri)
    data = load_slice(run.spec, split, 0, 1, run.cfg.model.max_length)
    if run.spec.task == "ranking":
        return _ranking_robustness(run, data, epsilons)
    sources = [("white-box", None)] + [(s, load_run(s, mlflow_uri).model) for s in transfer_from or []]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, source in sources:
            part = robustness(run.model, run.task, data, attacks, epsilons, steps=steps, step_size=step_size,
                              source=source, neighbours=run.cfg.regime.neighbours,
                              threshold=run.cfg.regime.threshold)
            prefix = "robust" if source is None else f"transfer_{label[:8]}"
            tracking.log_metrics(run.uri, run_id, {
                f"{prefix}_{r['attack']}_eps{r['epsilon']:g}_{k}": r[k]
                for r in part if r["attack"] != "clean" for k in ("accuracy", "auc") if k in r})
            name = "robustness" if source is None else f"transfer-from-{label}"
            plot(part, f"{tmp}/{name}.png", xlabel=f"ε ({label if source is None else 'from ' + label})")
            tracking.log_file(run.uri, run_id, f"{tmp}/{name}.png", "robustness")
            rows += [{"source": label, **r} for r in part]
    tracking.log_dict(run.uri, run_id, rows, "robustness/robustness.json")
    return rows


def _ranking_robustness(run: Run, data: Any, epsilons: list[float]) -> list[dict[str, Any]]:
    """AMR Table 3 for a run: NDCG@10 / HR@10 and the relative NDCG@10 drop under adversarial and
    random item-feature perturbations of each ε, logged to the run."""
    from advorch import tracking
    from advorch.trainers.data import load_slice
    from advorch.trainers.robustness import plot
    from advorch.trainers.tasks.ranking import feature_robustness

    if "features" not in run.model.perturbable:
        raise ValueError(f"run {run.run_id}: {run.cfg.model.name} has no item content features to perturb; "
                         "ranking robustness (AMR Table 3) needs model.name = \"vbpr\"")
    rows = feature_robustness(run.model, run.task, load_slice(run.spec, "train"), data, tuple(epsilons))
    tracking.log_metrics(run.uri, run.run_id, {
        f"robust_{r['attack']}_eps{r['epsilon']:g}_{k}": r[k]
        for r in rows if r["attack"] != "clean" for k in ("ndcg_10", "hr_10", "ndcg_10_drop")})
    with tempfile.TemporaryDirectory() as tmp:
        plot(rows, f"{tmp}/robustness.png", metric="ndcg_10", xlabel="ε (per item, unit-length features)")
        tracking.log_file(run.uri, run.run_id, f"{tmp}/robustness.png", "robustness")
    rows = [{"source": "white-box", **r} for r in rows]
    tracking.log_dict(run.uri, run.run_id, rows, "robustness/robustness.json")
    return rows


def explain_run(run_id: str, n: int = 5, epsilon: float | None = None, mlflow_uri: str | None = None,
                split: str = "test") -> tuple[list, float, list[str]]:
    """Explanations of the first n rows of the split, logged to the run: images get input-gradient
    saliency maps; token sequences nearest-token perturbations, attention and saliency; feature
    sequences Fig. 4."""
    import torch

    from advorch import tracking
    from advorch.trainers.data import load_slice, make_batch

    run = load_run(run_id, mlflow_uri)
    eps = run.cfg.regime.epsilon if epsilon is None else epsilon
    rows = load_slice(run.spec, split, 0, 1, run.cfg.model.max_length)
    batch = make_batch(rows, torch.arange(min(n, len(rows))), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        if run.cfg.model.name in CRISIS_MODELS:
            batch = make_batch(rows, torch.arange(min(max(n, 256), len(rows))), torch.device("cpu"))
            items = _tweets(run, batch, eps, tmp)
        elif "pixels" in run.spec.inputs:
            items = _image_saliency(run, batch, tmp)
        elif "features" in run.spec.inputs:
            items = _series(run, batch, eps, tmp)
        else:
            items = _sequences(run, batch, eps, tmp)
        for f in sorted(Path(tmp).iterdir()):
            tracking.log_file(run.uri, run_id, str(f), "explain")
    return items, eps, run.spec.classes


CRISIS_MODELS = ("visual_cnn", "text_cnn", "mmn")


def _tweets(run: Run, batch: dict, eps: float, tmp: str) -> list:
    """Fig. 4-5 of the crisis-tweet paper: per class, a tweet and its multimodal adversarial
    version (among the first rows of the split), replaced words marked."""
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.explain_tweets import examples_html, examples_plot, tweet_examples

    words = json.loads(read_side_file(run.data, "vocab.json", run.spec.manifest))  # id → word
    r = run.cfg.regime
    items = tweet_examples(run.model, run.task, batch, words, eps, r.neighbours, r.threshold)
    Path(tmp, "examples.html").write_text(examples_html(items, run.spec.classes))
    examples_plot(items, run.spec.classes, f"{tmp}/examples.png")
    return items


def _image_saliency(run: Run, batch: dict, tmp: str) -> list:
    import torch

    from advorch.trainers.saliency import image_plot, input_gradients

    grads, _ = input_gradients(run.model, run.task, batch)
    with torch.no_grad():
        pred = run.model(run.model.embed(batch), batch).scores.argmax(1)
    classes = run.spec.classes
    titles = [f"{classes[int(y)]}→{classes[int(p)]}" for y, p in zip(batch["label"], pred, strict=True)]
    image_plot(batch["pixels"], grads["pixels"], titles, f"{tmp}/saliency.png")
    return [{"label": int(y), "prediction": int(p), "gradient_l1": float(g.abs().sum())}
            for y, p, g in zip(batch["label"], pred, grads["pixels"], strict=True)]


def _sequences(run: Run, batch: dict, eps: float, tmp: str) -> list:
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers.explain import as_html, attention_plot, explain
    from advorch.trainers.saliency import input_gradients, sequence_plot

    vocab = json.loads(read_side_file(run.data, "vocab.json", run.spec.manifest))
    items = explain(run.model, run.task, batch, vocab, eps)
    Path(tmp, "explanations.html").write_text(as_html(items, run.spec.classes, eps))
    attention_plot(items, f"{tmp}/attention.png")
    grads, attention = input_gradients(run.model, run.task, batch)
    sequence_plot([x.tokens for x in items], grads["tokens"], attention, f"{tmp}/saliency.png")
    return items


def _series(run: Run, batch: dict, eps: float, tmp: str) -> list:
    """Fig. 4 for a feature-sequence run: NDVI vs class mean and attention clean vs perturbed."""
    from advorch.trainers.data import load_slice
    from advorch.trainers.explain_series import class_mean_ndvi, explain_series, series_plot

    names = run.spec.feature_names
    if "ndvi@0" not in names:
        raise LookupError("the dataset has no ndvi feature (data.modis.ndvi, or an ndvi band)")
    col = names.index("ndvi@0")
    train = load_slice(run.spec, "train", 0, 1)
    means = class_mean_ndvi(train.inputs["features"], train.labels, col, run.spec.num_classes)
    items = explain_series(run.model, run.task, batch, eps, col, means)
    series_plot(items, run.spec.classes, eps, f"{tmp}/series.png")
    return items


@dataclass
class PSEResult:
    """What the PSE analysis measured: type shares per attack × ε, top units per class pair, unit
    sensitivities, masking; `found` keeps every attack × ε's Effects for the figures."""

    summaries: list[dict[str, Any]]
    units: list[dict[str, Any]]
    sensitivity: Any
    masking: list[dict[str, Any]]
    mask_attack: tuple[str, float]
    found: list[tuple[str, float, Any]]
    targets: Any  # (N,) the seeded targets of `data` when targeted, else None


def pse_analysis(model: Any, task: Any, data: Any, val: Any, classes: list[str], attacks: list[str],
                 epsilons: list[float], targeted: bool = False, steps: int = 10,
                 fractions: tuple[float, ...] = (0.01, 0.05, 0.1), low: float = 1 / 3, high: float = 2 / 3,
                 seed: int = 0) -> PSEResult:
    """The PSE (trainers/pse.py) of `data` under each attack × ε (targeted: seeded random targets), and
    the masking experiment on `data`: units ranked by their attack sensitivity on `val`, under the
    last attack at the largest ε, the masked model re-attacked.

    Raises:
        ValueError: the model has no linear head over pooled units, or the thresholds are invalid.
    """
    import torch

    from advorch.trainers import pse

    pse.head(model)
    pse.types(torch.zeros(0), low, high)  # refuse bad thresholds before any attack runs

    def targets(d: Any) -> Any:
        return pse.random_targets(d.labels, len(classes), seed) if targeted else None

    aimed = targets(data)
    found, summaries, units = [], [], []
    for attack in attacks:
        for eps in epsilons:
            e = pse.measure(model, task, data, attack, eps, aimed, steps, low=low, high=high)
            found.append((attack, eps, e))
            summaries.append({"attack": attack, "epsilon": eps, "targeted": targeted, **pse.summary(e)})
            units += [{"attack": attack, "epsilon": eps, **u} for u in pse.top_units(e, classes)]
    mask_attack = (attacks[-1], max(epsilons))
    ranked = pse.sensitivity(pse.measure(model, task, val, *mask_attack, targets(val), steps))
    mask = pse.masking(model, task, data, ranked, fractions, *mask_attack, steps=steps, seed=seed)
    return PSEResult(summaries, units, ranked, mask, mask_attack, found, aimed)


def pse_run(run_id: str, attacks: list[str], epsilons: list[float], mlflow_uri: str | None = None,
            targeted: bool = False, n: int = 1000, split: str = "test", steps: int = 10,
            fractions: tuple[float, ...] = (0.01, 0.05, 0.1), low: float = 1 / 3, high: float = 2 / 3,
            seed: int = 0) -> PSEResult:
    """`pse_analysis` of the run's model on the first n rows of the split (units ranked on the first
    n of val), logged to the run under pse/: report.html, the S-vs-P scatter, CAMs (images) or
    attention (LSTM-Attention) clean vs adversarial, the masking figure, pse.json, and metrics.

    Raises:
        ValueError: the run is not a classifier, or the thresholds are invalid.
    """
    from advorch import tracking
    from advorch.pipelines.shards import read_side_file
    from advorch.trainers import pse, pse_report
    from advorch.trainers.data import load_slice

    run = load_run(run_id, mlflow_uri)
    if run.spec.task != "classification":
        raise ValueError(f"run {run_id} trains a {run.spec.task} model; PSE analyses classifiers")
    data, val = (first_rows(load_slice(run.spec, s, 0, 1, run.cfg.model.max_length), n)
                 for s in (split, "val"))
    res = pse_analysis(run.model, run.task, data, val, run.spec.classes, attacks, epsilons, targeted, steps,
                       fractions, low, high, seed)
    with tempfile.TemporaryDirectory() as tmp:
        figures = ["scatter.png", "masking.png"]
        pse_report.scatter(res.found, f"{tmp}/scatter.png")
        pse_report.masking_figure(res.masking, *res.mask_attack, f"{tmp}/masking.png")
        vocab = (json.loads(read_side_file(run.data, "vocab.json", run.spec.manifest))
                 if "vocab.json" in run.spec.side_files else None)
        figures += pse_examples(run.model, run.task, data, res, run.spec.classes, vocab, tmp, steps=steps)
        Path(tmp, "report.html").write_text(pse_report.report_html(
            run_id, res.summaries, res.units, res.masking, figures, pse.__doc__ or ""))
        Path(tmp, "pse.json").write_text(json.dumps(
            {"summaries": res.summaries, "units": res.units, "masking": res.masking,
             "sensitivity": res.sensitivity.tolist()}, indent=1))
        for f in sorted(Path(tmp).iterdir()):
            tracking.log_file(run.uri, run_id, str(f), "pse")
    tracking.log_metrics(run.uri, run_id, {
        f"pse_{s['attack']}_eps{s['epsilon']:g}_{k}": s[k]
        for s in res.summaries for k in ("success", "suppression", "balanced", "promotion")})
    return res


def first_rows(data: Any, n: int) -> Any:
    """The first n rows of a TensorData."""
    from advorch.trainers.data import TensorData

    return TensorData({k: v[:n] for k, v in data.inputs.items()}, data.labels[:n], data.ids[:n])


def pse_examples(model: Any, task: Any, data: Any, res: PSEResult, classes: list[str],
                 vocab: list[str] | None, folder: str, name: str | None = None, steps: int = 10) -> list[str]:
    """Up to 3 successful examples of the last attack × ε (distinct true classes first), written to
    folder/NAME.png: CAMs for image models (NAME "cam"), attention clean vs adversarial for attention
    models over tokens (NAME "attention", words from `vocab`); the names of the figures written."""
    import torch

    from advorch.trainers import pse, pse_report
    from advorch.trainers.data import make_batch

    attack, eps, e = res.found[-1]
    ok = e.success.nonzero().flatten().tolist()
    first_of_class = {int(e.true[i]): i for i in reversed(ok)}
    rows = torch.tensor(sorted(first_of_class.values())[:3], dtype=torch.long)
    if not len(rows):
        return []
    batch = make_batch(data, rows, torch.device("cpu"))
    target = res.targets[rows] if res.targets is not None else None
    r = pse.perturb(model, task, batch, attack, eps, target, steps)
    if "pixels" in batch:
        file = f"{name or 'cam'}.png"
        pse_report.cam_figure(model, batch, r, e.true[rows], e.target[rows], e.s[rows], classes,
                              f"{folder}/{file}")
        return [file]
    if "tokens" in batch and vocab is not None and getattr(model, "attention", False):
        file = f"{name or 'attention'}.png"
        words = [[vocab[int(t)] for t in seq[m]]
                 for seq, m in zip(batch["tokens"], batch["mask"], strict=True)]
        pse_report.attention_figure(model, batch, r, words, f"{folder}/{file}")
        return [file]
    return []
