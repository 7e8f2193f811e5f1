"""`advorch` command line: parse, load the config, call one function. Nothing else here.

Heavy libraries (torch, ray, dask, mlflow) are imported inside the commands so that
`advorch --help` is instant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from advorch import __version__
from advorch.config import ConfigError, ExperimentConfig, load_config

app = typer.Typer(help="advorch: data pipelines and adversarial training on Dask, Ray and MLflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
preprocess_app = typer.Typer(help="Turn raw sources into shards + manifest.", no_args_is_help=True)
app.add_typer(preprocess_app, name="preprocess")
registry_app = typer.Typer(help="MLflow model registry: register, list, promote, predict.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")
jobs_app = typer.Typer(help="Jobs on a Ray cluster (Ray Jobs API): list, status, logs, stop.",
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
analyze_app = typer.Typer(help="Analyses of a trained run, logged back to it.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
datasets_app = typer.Typer(help="The public datasets the configs use: list, info, fetch (checksummed).",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
vectors_app = typer.Typer(help="Word vectors from a pretrained encoder (extra `pretrained`).",
                          no_args_is_help=True)
app.add_typer(vectors_app, name="vectors")
out = Console()
err = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (TOML), e.g. configs/mr.toml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")]
DaskOpt = Annotated[str | None, typer.Option("--dask-address", envvar="DASK_SCHEDULER_ADDRESS",
                                             help="Dask scheduler, e.g. tcp://host:8786 (default: local).")]
RayOpt = Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS",
                                            help="Existing Ray cluster (default: a local instance).")]
WaitLockOpt = Annotated[float, typer.Option(
    "--wait-lock", help="If another run is writing the output, wait up to this many seconds "
                        "(default: exit at once with code 75).")]
OutputOpt = Annotated[str | None, typer.Option(help="Dataset folder or URI (default: data.output).")]
JobAddressOpt = Annotated[str, typer.Option(
    "--address", envvar="RAY_API_SERVER_ADDRESS",
    help="The Ray cluster's job server: the head's dashboard, http://HEAD:8265.")]
MlflowOpt = Annotated[str | None, typer.Option("--mlflow-uri", envvar="MLFLOW_TRACKING_URI",
                                               help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db).")]


def fail(message: str, code: int = 2) -> None:
    # escaped: a path like data/[neg]/x.txt is text, not markup; soft-wrapped: long paths
    # stay whole in logs
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _mlflow_access(uri: str | None, resource: str | None = None) -> Iterator[None]:
    """The MLflow server's 401 / 403 inside the block as one line naming the server and the
    fix (credentials, or permission on `resource`), exit 1; not a traceback."""
    from advorch.tracking import AccessDenied, server_access

    try:
        with server_access(uri, resource):
            yield
    except AccessDenied as e:
        fail(str(e), code=1)


def _load(config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        fail(str(e))


def _version(value: bool) -> None:
    if value:
        out.print(f"advorch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """advorch: data pipelines and adversarial training on Dask, Ray and MLflow."""


def run_pipeline(cfg: ExperimentConfig, output: str | None, dask_address: str | None,
                 wait_lock: float = 0):
    """Run the config's pipeline (data.kind) under the output's lock, recorded in its history;
    print the summary. Errors become messages and exit codes (75: another run holds the lock)."""
    from advorch.pipelines.common import PipelineError
    from advorch.pipelines.history import LockBusy, locked_run
    from advorch.pipelines.shards import ShardError

    try:
        summary = locked_run(cfg.data, output=output, dask_address=dask_address, wait=wait_lock)
    except LockBusy as e:
        fail(str(e), code=75)  # EX_TEMPFAIL: a scheduler may retry later
    except (PipelineError, ShardError) as e:
        fail(str(e), code=1)
    if summary.up_to_date:
        out.print(f"[green]up to date:[/] {escape(summary.output)} already holds these sources "
                  f"({summary.rows} rows); nothing written", soft_wrap=True)
    else:
        q, vocab = summary.manifest["quarantine"], summary.manifest.get("vocab_size")
        out.print(f"[green]wrote[/] {escape(summary.output)}: {summary.rows} rows "
                  f"({', '.join(f'{k} {v}' for k, v in summary.splits.items())}), "
                  + (f"vocabulary {vocab}, " if vocab else "")
                  + f"quarantined {q['count']}"
                  + (f" {q['by_reason']} → {escape(summary.output)}/{q['file']}" if q["count"] else ""),
                  soft_wrap=True)
    for u in summary.unused:
        shown = ", ".join(u["names"][:8]) + (" …" if u["count"] > 8 else "")
        out.print(f"[yellow]unused:[/] {u['count']} {u['what']} of {escape(u['source'])}: {escape(shown)}",
                  soft_wrap=True)
    for w in summary.warnings:
        out.print(f"[bold yellow]warning:[/] {escape(w)}", soft_wrap=True)
    return summary


@preprocess_app.command("text")
def preprocess_text(config: ConfigArg, output: OutputOpt = None,
                    dask_address: DaskOpt = None, wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """Labelled line files (one per class) → tokenised Parquet shards + manifest."""
    run_pipeline(_load_kind(config, set_, "text"), output, dask_address, wait_lock)


@preprocess_app.command("images")
def preprocess_images(config: ConfigArg, output: OutputOpt = None,
                      dask_address: DaskOpt = None, wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """An image-folder tree (one sub-folder per class) or sklearn's digits → pixel Parquet shards."""
    summary = run_pipeline(_load_kind(config, set_, "images"), output, dask_address, wait_lock)
    im = summary.manifest.get("images", {})
    if not summary.up_to_date:
        out.print(f"images: {im.get('decoded', 0)} decoded, {im.get('resized', 0)} resized to "
                  f"{summary.manifest['shapes']['pixels']}", soft_wrap=True)


@preprocess_app.command("modis")
def preprocess_modis(config: ConfigArg, output: OutputOpt = None,
                     dask_address: DaskOpt = None, wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """MODIS HDF4 granules / GeoTIFF stacks → QA-masked Zarr cubes; labelled samples → window
    sequence shards."""
    summary = run_pipeline(_load_kind(config, set_, "modis"), output, dask_address, wait_lock)
    for name, cube in summary.manifest.get("cubes", {}).items():
        out.print(f"cube {name}: {cube['dims']}, {cube['dates'][0]} … {cube['dates'][-1]}")


def _load_kind(config: Path, overrides: list[str] | None, kind: str) -> ExperimentConfig:
    cfg = _load(config, overrides)
    if cfg.data.kind != kind:
        fail(f"{config}: data.kind is {cfg.data.kind!r}; this command needs data.kind = {kind!r} "
             f"(use `advorch preprocess {cfg.data.kind}`)")
    return cfg


@preprocess_app.command("clickstream")
def preprocess_clickstream(config: ConfigArg, output: OutputOpt = None, dask_address: DaskOpt = None,
                           wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """Event logs (+ purchases) → sessions → Parquet shards, vocabulary, page embeddings.

    Re-running after new events arrive writes only new or changed sessions.
    """
    summary = run_pipeline(_load_kind(config, set_, "clickstream"), output, dask_address, wait_lock)
    st = summary.manifest.get("clickstream", {})
    if not summary.up_to_date:
        out.print(f"sessions {st['sessions']} ({st['converted']} converted), events {st['events']}; "
                  f"written {st['sessions_written']} sessions in {st['parts_written']} parts, "
                  f"kept {st['parts_kept']} parts; events cut after a purchase {st['events_after_purchase']}",
                  soft_wrap=True)


@preprocess_app.command("tweets")
def preprocess_tweets(config: ConfigArg, output: OutputOpt = None, dask_address: DaskOpt = None,
                      wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """Tweet dumps (CrisisMMD TSVs, MediaEval posts, Twitter API JSON lines) + their images →
    token and pixel Parquet shards, vocabulary, word vectors."""
    summary = run_pipeline(_load_kind(config, set_, "tweets"), output, dask_address, wait_lock)
    tw = summary.manifest.get("tweets", {})
    if not summary.up_to_date:
        without = tw["rows_without_image"]
        reasons = ", ".join(f"{k} {v}" for k, v in without["by_reason"].items())
        out.print(f"tweets: {tw['rows']} rows ({tw['tweets']} tweets), {tw['rows_with_image']} with an "
                  f"image, {without['count']} without" + (f" ({escape(reasons)})" if reasons else "")
                  + f"; vocabulary {summary.manifest['vocab_size']}; quarantined {summary.quarantined}"
                  + ("; text-only dataset: no row has an image, no pixels written" if tw["text_only"] else
                     f"; images {tw['images']['decoded']} decoded to {summary.manifest['shapes']['pixels']}"),
                  soft_wrap=True)


@preprocess_app.command("interactions")
def preprocess_interactions(config: ConfigArg, output: OutputOpt = None, dask_address: DaskOpt = None,
                            wait_lock: WaitLockOpt = 0, set_: SetOpt = None) -> None:
    """User–item interactions (user item [timestamp] pairs, RecBole atomic or sequential files) +
    item content features → leave-one-out ranking shards, users, items, feature matrix."""
    summary = run_pipeline(_load_kind(config, set_, "interactions"), output, dask_address, wait_lock)
    st = summary.manifest.get("interactions", {})
    if not summary.up_to_date:
        features = (f"{st['feature_dim']}-d features from {escape(st['feature_source'])}, "
                    f"items without features {st['items_without_features']}" if st["feature_dim"]
                    else "no item features")
        out.print(f"interactions: users {st['users']}, items {st['items']}, pairs {st['pairs']}; dropped "
                  f"users {st['dropped_users']} (fewer than data.interactions.min_interactions), "
                  f"duplicates {st['duplicates']}; {features}; cold items {st['cold_items']} (no train "
                  f"pair); split {st['split']} by {st['order']}", soft_wrap=True)


def _print_result(result) -> None:
    table = Table(title="test metrics (best validation epoch)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in sorted(result.metrics.items()):
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)
    if result.run_id:
        out.print(f"MLflow run: [bold]{result.run_id}[/] ({result.tracking_uri})")
        if result.model_uri:
            out.print(f"model: {result.model_uri}")
        if result.tracking_uri.startswith("sqlite:"):
            out.print(f"open it with: mlflow ui --backend-store-uri {result.tracking_uri}")


def run_training(cfg: ExperimentConfig, data: str | None, ray_address: str | None,
                 mlflow_uri: str | None):
    from advorch.tracking import AccessDenied, check_access, check_uri, server_access
    from advorch.trainers.launch import check_experiment, dataset_uri

    try:  # every impossible combination fails here, before Ray starts
        check_experiment(cfg, dataset_uri(data or cfg.data.output))
    except (ConfigError, FileNotFoundError) as e:
        fail(str(e))
    uri = mlflow_uri or cfg.mlflow.tracking_uri
    try:
        check_uri(uri)  # no credentials in the URI
    except ValueError as e:
        fail(str(e))
    with _mlflow_access(uri, f"experiment {cfg.mlflow.experiment!r}"):
        check_access(uri, cfg.mlflow.experiment)  # nor refused ones: before Ray starts too
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from advorch.trainers.launch import TrainingError
    from advorch.trainers.launch import train as train_run

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out) as bar:
        task = bar.add_task("epochs (starting Ray workers)", total=cfg.train.epochs)

        def on_epoch(m: dict) -> None:
            bar.update(task, completed=m["epoch"] + 1, description=(
                f"epoch {m['epoch'] + 1}: train_loss {m['train_loss']:.3f} "
                f"{cfg.train.metric} {m[cfg.train.metric]:.4f} (best {m['best_metric']:.4f})"))
            if m["final_epoch"]:
                bar.update(task, total=m["epoch"] + 1)

        try:
            with server_access(uri, f"experiment {cfg.mlflow.experiment!r}"):
                result = train_run(cfg, data, ray_address=ray_address, mlflow_uri=mlflow_uri,
                                   on_epoch=on_epoch)
        except AccessDenied as e:  # the MLflow server's 401 / 403: credentials or permission
            bar.stop()
            fail(str(e), code=1)
        except FileNotFoundError as e:
            if e.errno is not None:
                raise  # an OS error mid-run: the traceback says where
            fail(str(e), code=1)  # no dataset at the given place: the message says what to run
        except TrainingError as e:  # a worker's error, without Ray's traceback around it
            bar.stop()
            fail(f"{e}; the MLflow run is marked FAILED with this reason (tag advorch.error)", code=1)
    _print_result(result)
    return result


def _scaling(overrides: list[str] | None, workers: int | None, gpus: bool) -> list[str]:
    """--set overrides plus --workers / --gpus as train.* overrides."""
    out_ = list(overrides or [])
    if workers is not None:
        out_.append(f"train.workers={workers}")
    if gpus:
        out_.append("train.gpus=true")
    return out_


@app.command()
def train(config: ConfigArg,
          data: Annotated[str | None, typer.Option(
              help="Dataset folder or URI (default: data.output).")] = None,
          workers: Annotated[int | None, typer.Option(
              help="Ray Train workers (default: the CPUs available).")] = None,
          gpus: Annotated[bool, typer.Option("--gpus", help="One GPU per worker, NCCL.")] = False,
          ray_address: RayOpt = None, mlflow_uri: MlflowOpt = None, set_: SetOpt = None) -> None:
    """Train the config's model under its adversarial regime on Ray Train, tracked in MLflow."""
    cfg = _load(config, _scaling(set_, workers, gpus))
    run_training(cfg, data, ray_address, mlflow_uri)


@app.command()
def evaluate(run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
             attack: Annotated[str, typer.Option(
                 help="Attacks, comma-separated: at, fgsm, pgd, pgd_linf; word_replace, fgsm_words "
                      "(tweets: words by eq. 2 with the run's regime.neighbours / threshold, images "
                      "by FGSM). A recommender's item features get AMR Table 3's adversarial and random "
                      "perturbations, whatever is named here.")] = "at,pgd",
             eps: Annotated[str, typer.Option(help="Radii, comma-separated (L2; L∞ for fgsm, pgd_linf).")
                            ] = "0.5,1,2",
             steps: Annotated[int, typer.Option(help="PGD steps.")] = 10,
             transfer_from: Annotated[str | None, typer.Option(
                 help="Run ids, comma-separated: also craft the attacks on their models and evaluate "
                      "this run's model on them (transfer; pixel and feature inputs).")] = None,
             mlflow_uri: MlflowOpt = None) -> None:
    """Test metrics under attack over an ε grid, white-box and transferred; printed, and logged to
    the run (table + plots)."""
    from advorch.trainers.analysis import evaluate_run

    try:
        epsilons = [float(x) for x in eps.split(",") if x.strip()]
    except ValueError:
        fail(f"--eps {eps!r}: give numbers separated by commas, e.g. 0.5,1,2")
    attacks = [a.strip() for a in attack.split(",") if a.strip()]
    try:
        sources = [r.strip() for r in (transfer_from or "").split(",") if r.strip()]
        rows = evaluate_run(run_id, attacks, epsilons, mlflow_uri, steps=steps, transfer_from=sources)
    except (LookupError, ValueError) as e:
        fail(str(e), code=1)
    table = Table(title=f"robustness of run {run_id} (test split)")
    ranking = bool(rows) and "ndcg_10" in rows[0]  # AMR Table 3: item-feature perturbations
    metrics = ("hr_10", "ndcg_10", "ndcg_10_drop") if ranking else ("accuracy", "auc")
    for col in ("source", "attack", "epsilon", *metrics):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["source"][:12], r["attack"], f"{r['epsilon']:g}",
                      *(f"{r[k]:.4f}" if k in r else "-" for k in metrics))
    out.print(table)


@app.command()
def explain(run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
            n: Annotated[int, typer.Option(help="How many test sequences.")] = 5,
            eps: Annotated[float | None, typer.Option(help="Radius (default: the run's epsilon).")] = None,
            mlflow_uri: MlflowOpt = None) -> None:
    """Original vs perturbed sequences (nearest tokens) for AT and attention-aware AT; input-gradient
    saliency maps (images: heat maps; sequences: per-step gradient norm beside attention)."""
    from advorch.trainers.analysis import explain_run
    from advorch.trainers.explain import as_text

    try:
        items, used, classes = explain_run(run_id, n, eps, mlflow_uri)
    except LookupError as e:
        fail(str(e), code=1)
    if items and hasattr(items[0], "adversarial_words"):  # crisis tweets: the paper's Fig. 4-5
        for x in items:
            marked = " ".join(f"[{w}]" if m else w
                              for w, m in zip(x.adversarial_words, x.changed, strict=True))
            (p, conf), (q, adv_conf) = x.prediction, x.adversarial_prediction
            out.print(f"{classes[x.label]}: {' '.join(x.words)!r} → {classes[p]} {conf:.0%}; "
                      f"adversarial {marked!r} → {classes[q]} {adv_conf:.0%}", soft_wrap=True,
                      highlight=False)
        out.print(f"[word]: replaced (eq. 2); images FGSM at θ = {used:g}. Logged as explain/examples.png "
                  "and explain/examples.html")
        return
    if items and isinstance(items[0], dict):  # images: saliency maps
        for x in items:
            out.print(f"{classes[x['label']]} → predicted {classes[x['prediction']]}: "
                      f"‖∇ₓℓ‖₁ {x['gradient_l1']:.4g}")
        out.print("images and their input-gradient heat maps: logged as explain/saliency.png")
        return
    if items and not hasattr(items[0], "tokens"):  # feature sequences (MODIS): Fig. 4
        for x in items:
            out.print(f"{classes[x.label]}: attention shift at ε = {used:g}: "
                      + ", ".join(f"{k} {x.shift(k):.3f}" for k in x.perturbed_attention))
        out.print("NDVI vs class mean and attention clean vs perturbed: logged as explain/series.png")
        return
    changed = 0
    for x in items:
        out.rule(f"{classes[x.label]}")
        for line in as_text(x):
            out.print(escape(line), soft_wrap=True, highlight=False)
        changed += sum(w != o for ws in x.perturbed.values() for w, o in zip(ws, x.tokens, strict=True))
    out.print(escape(f"*word*: top-5 attention; [word]: replaced by the nearest token of the perturbed "
                     f"embedding (ε = {used:g}); {changed} replacements. Logged to the run under explain/."),
              soft_wrap=True)
    if not changed:
        out.print("No token changed at this radius: try a larger --eps.")


@analyze_app.command("pse")
def analyze_pse(run_id: Annotated[str, typer.Argument(help="MLflow run id of a classifier's training run.")],
                attack: Annotated[str, typer.Option(
                    help="Attacks, comma-separated: fgsm, pgd_linf (L∞), at, pgd (L2), word_replace.")
                                  ] = "fgsm,pgd_linf",
                eps: Annotated[str, typer.Option(help="Radii, comma-separated.")] = "0.05,0.1",
                targeted: Annotated[bool, typer.Option(
                    help="Aim each attack at a seeded random class ≠ the true one (default: untargeted, "
                         "the target is the class the attack reaches).")] = False,
                n: Annotated[int, typer.Option(help="How many examples of the split.")] = 1000,
                steps: Annotated[int, typer.Option(help="PGD steps.")] = 10,
                mask: Annotated[str, typer.Option(
                    help="Fractions of units to mask, comma-separated (masking experiment).")
                                ] = "0.01,0.05,0.1",
                low: Annotated[float, typer.Option(help="Promotion-dominated at share s <= low.")] = 1 / 3,
                high: Annotated[float, typer.Option(help="Suppression-dominated at share s >= high.")
                                ] = 2 / 3,
                mlflow_uri: MlflowOpt = None) -> None:
    """Promotion vs suppression (Xu et al. 2019): how each attack moves the penultimate units'
    contributions to the true and the target class, per example and unit; CAMs of clean vs
    adversarial images; masking the most attack-sensitive units. Logged to the run under pse/."""
    from advorch.trainers.analysis import pse_run
    from advorch.trainers.pse import TYPES

    try:
        epsilons = [float(x) for x in eps.split(",") if x.strip()]
        fractions = tuple(float(x) for x in mask.split(",") if x.strip())
    except ValueError:
        fail(f"--eps {eps!r} / --mask {mask!r}: give numbers separated by commas, e.g. 0.05,0.1")
    attacks = [a.strip() for a in attack.split(",") if a.strip()]
    try:
        res = pse_run(run_id, attacks, epsilons, mlflow_uri, targeted=targeted, n=n, steps=steps,
                      fractions=fractions, low=low, high=high)
    except (LookupError, ValueError) as e:
        fail(str(e), code=1)
    table = Table(title=f"promotion / suppression, run {run_id} (successful adversarial examples)")
    for col in ("attack", "ε", "n", "success", *TYPES, "mean s"):
        table.add_column(col, justify="right")
    for s in res.summaries:
        table.add_row(s["attack"], f"{s['epsilon']:g}", str(int(s["n"])), f"{s['success']:.3f}",
                      *(f"{s[t]:.3f}" for t in TYPES), f"{s['mean_share']:.3f}")
    out.print(table)
    masks = Table(title=f"masking the most attack-sensitive units ({res.mask_attack[0]} "
                        f"ε = {res.mask_attack[1]:g}, re-attacked)")
    for col in ("units", "% masked", "clean accuracy", "adversarial accuracy"):
        masks.add_column(col, justify="right")
    for m in res.masking:
        masks.add_row(m["units"], f"{100 * m['fraction']:g}", f"{m['clean_accuracy']:.4f}",
                      f"{m['adv_accuracy']:.4f}")
    out.print(masks)
    out.print("logged to the run under pse/: report.html, scatter.png, masking.png, cam.png or "
              "attention.png, pse.json")


@app.command()
def tune(config: ConfigArg,
         data: Annotated[str | None, typer.Option(
             help="Dataset folder or URI (default: data.output).")] = None,
         num_samples: Annotated[int | None, typer.Option(
             help="Samples of the space (tune.num_samples).")] = None,
         max_concurrent: Annotated[int | None, typer.Option(
             help="Trials at once (default: as many as the CPUs hold).")] = None,
         scheduler: Annotated[str | None, typer.Option(help="asha (default) or fifo.")] = None,
         resume: Annotated[bool, typer.Option(
             "--resume", help="Continue the newest unfinished sweep of this config; finished "
                              "trials are kept.")] = False,
         ray_address: RayOpt = None, mlflow_uri: MlflowOpt = None, set_: SetOpt = None) -> None:
    """Ray Tune sweep over the config's tune.space: nested MLflow runs, best model registered as candidate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from advorch.tuning.sweep import SweepError, sweep

    overrides = list(set_ or [])
    for key, value in (("num_samples", num_samples), ("max_concurrent", max_concurrent),
                       ("scheduler", f'"{scheduler}"' if scheduler else None)):
        if value is not None:
            overrides.append(f"tune.{key}={value}")
    cfg = _load(config, overrides)
    total = cfg.tune.num_samples * math.prod(len(s.grid) for s in cfg.tune.space.values() if s.grid)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out) as bar:
        task = bar.add_task("trials", total=None if resume else total)

        def on_trial(r: dict) -> None:
            bar.advance(task)
            value = r.get(cfg.train.metric)
            bar.update(task, description=f"trials (last: {r['trial_id']} {cfg.train.metric} "
                                         f"{value:.4f})" if value is not None else "trials")

        try:
            result = sweep(cfg, data, ray_address=ray_address, mlflow_uri=mlflow_uri, resume=resume,
                           on_trial=on_trial)
        except (SweepError, FileNotFoundError) as e:
            fail(str(e), code=1)
    keys = list(cfg.tune.space)
    metric = "best_" + cfg.train.metric
    table = Table(title=f"sweep {result.sweep_dir.rpartition('/')[2]} (parent run {result.parent_run_id})")
    for col in ("trial", *keys, "status", metric, "test_accuracy"):
        table.add_column(col)
    for t in result.trials:
        mark = "[bold green]*[/]" if result.best and t["run_id"] == result.best["run_id"] else ""
        table.add_row(f"{t['trial_id']}{mark}", *(str(t.get(k, "")) for k in keys), t["status"],
                      *(f"{t[m]:.4f}" if m in t else "-" for m in (metric, "test_accuracy")))
    out.print(table)
    if result.registered:
        name, version = result.registered
        out.print(f"best trial registered: {name} version {version}, models:/{name}@candidate "
                  f"(promote: advorch registry promote {name} {version} --alias champion)", soft_wrap=True)
    elif result.best is None:
        fail("no trial finished: see the child runs' advorch.end_reason tags", code=1)


def _registry_uri(mlflow_uri: str | None) -> str:
    from advorch.tracking import resolve_uri

    try:
        return resolve_uri(mlflow_uri)
    except ValueError as e:  # credentials in the URI
        fail(str(e))


@registry_app.command("register")
def registry_register(run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
                      name: Annotated[str, typer.Argument(help="Registered model name.")],
                      alias: Annotated[str, typer.Option(help="Alias for the new version.")] = "candidate",
                      mlflow_uri: MlflowOpt = None) -> None:
    """Register a run's model as a new version of NAME, with an alias."""
    from advorch.tuning.registry import register

    uri = _registry_uri(mlflow_uri)
    try:
        with _mlflow_access(uri, f"registered model {name!r}"):
            version = register(uri, run_id, name, alias)
    except LookupError as e:
        fail(str(e), code=1)
    out.print(f"registered {name} version {version} (alias {alias}): models:/{name}@{alias}")


@registry_app.command("list")
def registry_list(mlflow_uri: MlflowOpt = None) -> None:
    """Registered models, their versions and aliases."""
    from advorch.tuning.registry import list_models

    table = Table(title="registered models")
    for col in ("name", "version", "aliases", "run_id", "status"):
        table.add_column(col)
    uri = _registry_uri(mlflow_uri)
    with _mlflow_access(uri):
        rows = list_models(uri)
    for r in rows:
        table.add_row(r["name"], str(r["version"]), ", ".join(r["aliases"]), r["run_id"], r["status"])
    out.print(table)


@registry_app.command("promote")
def registry_promote(name: str, version: int,
                     alias: Annotated[str, typer.Option(help="Alias to move to VERSION.")] = "champion",
                     mlflow_uri: MlflowOpt = None) -> None:
    """Point an alias (default: champion) at a version."""
    from advorch.tuning.registry import promote

    uri = _registry_uri(mlflow_uri)
    with _mlflow_access(uri, f"registered model {name!r}"):
        promote(uri, name, version, alias)
    out.print(f"{name}@{alias} → version {version}")


@registry_app.command("predict")
def registry_predict(model: Annotated[str, typer.Argument(help="NAME@ALIAS or models:/NAME@ALIAS.")],
                     source: Annotated[str, typer.Argument(
                         help="Shard folder, or a text file of sentences (of user ids, for a recommender).")],
                     split: Annotated[str, typer.Option(help="Split, for a shard folder.")] = "test",
                     limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
                     top: Annotated[int, typer.Option(help="Recommenders: items per user.", min=1,
                                                      max=20)] = 10,
                     mlflow_uri: MlflowOpt = None) -> None:
    """Load a model by alias and print label and class probabilities per input; for a recommender
    (source: a file of user ids, or a ranking dataset) each user's top items, best first."""
    from advorch.tuning.registry import predict, recommend, task_of

    uri = _registry_uri(mlflow_uri)
    name = model.removeprefix("models:/").partition("@")[0]
    try:
        with _mlflow_access(uri, f"registered model {name!r}"):
            if task_of(uri, model) == "ranking":
                for r in recommend(uri, model, source, split, limit, top):
                    line = f"{escape(r.user)}\t{' '.join(map(escape, r.items))}"
                    out.print(line, soft_wrap=True, highlight=False)
                return
            preds = predict(uri, model, source, split, limit)
    except (LookupError, FileNotFoundError) as e:
        fail(str(e), code=1)
    for p in preds:
        probs = " ".join(f"{x:.3f}" for x in p.probabilities)
        out.print(f"{escape(p.label)}\t{probs}\t{escape(p.text)}", soft_wrap=True, highlight=False)


@app.command()
def submit(config: ConfigArg, address: JobAddressOpt,
           command: Annotated[str, typer.Option(help="What the job runs: train or tune.")] = "train",
           data: Annotated[str | None, typer.Option(
               help="Dataset folder or URI, as the cluster's nodes see it (default: data.output).")] = None,
           workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
           gpus: Annotated[bool, typer.Option("--gpus", help="One GPU per worker, NCCL.")] = False,
           working_dir: Annotated[Path | None, typer.Option(
               help="A folder to ship with the job (its code and files), beside the config.")] = None,
           env: Annotated[list[str] | None, typer.Option(
               help="KEY=VALUE set in the job's environment (repeatable).")] = None,
           wait: Annotated[bool, typer.Option(
               "--wait", help="Follow the job's logs until it ends; exit 1 unless it succeeded.")] = False,
           mlflow_uri: MlflowOpt = None, set_: SetOpt = None) -> None:
    """Run a training or tune run on an existing Ray cluster through the Ray Jobs API."""
    from advorch.jobs import submit as submit_job

    overrides = _scaling(set_, workers, gpus)
    cfg = _load(config, overrides)
    env_vars = {}
    for item in env or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            fail(f"--env {item!r}: give KEY=VALUE")
        env_vars[key] = value
    job = _job(submit_job, address, config, cfg, command, data=data, mlflow_uri=mlflow_uri,
               overrides=overrides, working_dir=working_dir, env=env_vars)
    for note in job.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    out.print(f"submitted [bold]{job.submission_id}[/]: {escape(job.entrypoint)}", soft_wrap=True)
    if not wait:
        out.print(f"follow it: advorch jobs logs {job.submission_id} --address {address} --follow",
                  soft_wrap=True)
    elif _follow(address, job.submission_id) != "SUCCEEDED":
        raise typer.Exit(1)


def _job(call, *args, **kwargs):
    """Call an advorch.jobs function; its JobError becomes a message and exit code 1."""
    from advorch.jobs import JobError

    try:
        return call(*args, **kwargs)
    except JobError as e:
        fail(str(e), code=1)


def _follow(address: str, job_id: str) -> str:
    from advorch.jobs import follow

    state = _job(follow, address, job_id, lambda text: out.out(text, end="", highlight=False))
    out.print(f"job {job_id}: {state}")
    return state


JobIdArg = Annotated[str, typer.Argument(help="Submission id, as `advorch submit` printed it.")]


@jobs_app.command("list")
def jobs_list(address: JobAddressOpt) -> None:
    """Every job on the cluster, newest first."""
    from advorch.jobs import list_jobs

    table = Table(title=f"jobs at {address}")
    for col in ("id", "status", "entrypoint"):
        table.add_column(col)
    for r in _job(list_jobs, address):
        table.add_row(r["id"], r["status"], escape(r["entrypoint"]))
    out.print(table)


@jobs_app.command("status")
def jobs_status(job_id: JobIdArg, address: JobAddressOpt) -> None:
    """A job's status and message; exit 1 if it failed or was stopped."""
    from advorch.jobs import status

    s = _job(status, address, job_id)
    out.print(f"{job_id}: [bold]{s['status']}[/] {escape(s['message'])}", soft_wrap=True)
    if s["status"] in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@jobs_app.command("logs")
def jobs_logs(job_id: JobIdArg, address: JobAddressOpt,
              follow_: Annotated[bool, typer.Option(
                  "--follow", "-f", help="Keep printing until the job ends.")] = False) -> None:
    """What the job has printed (its training progress and result table)."""
    from advorch.jobs import logs

    if follow_:
        _follow(address, job_id)
    else:
        out.out(_job(logs, address, job_id), end="", highlight=False)


@jobs_app.command("stop")
def jobs_stop(job_id: JobIdArg, address: JobAddressOpt) -> None:
    """Stop a running job."""
    from advorch.jobs import stop

    stopped = _job(stop, address, job_id)
    out.print(f"{job_id}: " + ("stop requested" if stopped else "already ended"))


@app.command()
def schedule(config: ConfigArg,
             every: Annotated[str, typer.Option(help='Cron expression, e.g. "0 2 * * *", or @daily.')],
             format_: Annotated[str, typer.Option(
                 "--format", help="cron, systemd (service + timer) or kubernetes (CronJob).")] = "cron",
             output: OutputOpt = None, dask_address: DaskOpt = None,
             wait_lock: WaitLockOpt = 0,
             image: Annotated[str | None, typer.Option(help="Container image (kubernetes).")] = None,
             install: Annotated[bool, typer.Option(
                 "--install", help="Install it on this host (crontab or systemd user timer).")] = False,
             set_: SetOpt = None) -> None:
    """Print (or install) the schedule of this config's incremental preprocessing run."""
    import sys

    from advorch import schedule as sched

    cfg = _load(config, set_)
    advorch_bin = str(Path(sys.argv[0]).absolute()) if Path(sys.argv[0]).name == "advorch" else "advorch"
    job = sched.Job(name=cfg.name, kind=cfg.data.kind, config=config.absolute(), every=every,
                    workdir=Path.cwd(), output=output, dask_address=dask_address,
                    overrides=list(set_ or []), wait_lock=wait_lock, advorch=advorch_bin)
    try:
        if install:
            out.print(sched.install(job, format_), soft_wrap=True)
        elif format_ == "cron":
            out.out(sched.cron_line(job), highlight=False)
        elif format_ == "systemd":
            for name, text in sched.systemd_units(job).items():
                out.out(f"# --- {name} ---\n{text}", highlight=False)
        elif format_ == "kubernetes":
            for key, value in sched.relative_paths(cfg.data.model_dump()):
                if not (key == "data.output" and output):
                    err.print(f"note: {key} = {value!r} is relative: in the CronJob it is "
                              f"/data/{value} (the container's working dir); pass an absolute path "
                              "or URI (--set / --output)", soft_wrap=True, highlight=False)
            out.out(sched.cronjob(job, image or sched.IMAGE), end="", highlight=False)
        else:
            fail(f"--format {format_!r}: choose cron, systemd or kubernetes")
    except sched.ScheduleError as e:
        fail(str(e))


@app.command()
def history(dataset: Annotated[str, typer.Argument(help="Dataset folder or URI.")],
            last: Annotated[int, typer.Option(help="Show the last N runs.")] = 20) -> None:
    """The dataset's preprocessing runs: status, sources added, rows, quarantined, duration."""
    from advorch.pipelines.history import read_history

    records = read_history(dataset)
    if not records:
        fail(f"{dataset} has no history.jsonl: no `advorch preprocess` run has written it", code=1)
    table = Table(title=f"runs of {dataset}")
    for col in ("started", "status", "sources +", "rows", "rows +", "quarantined", "seconds"):
        table.add_column(col, justify="right" if col not in ("started", "status") else "left")
    for r in records[-last:]:
        table.add_row(r.get("started", ""), r["status"], str(len(r.get("sources_added", []))),
                      str(r.get("rows", "")), str(r.get("rows_added", "")), str(r.get("quarantined", "")),
                      str(r.get("seconds", "")))
    out.print(table)


DatasetArg = Annotated[str, typer.Argument(help="Dataset name (advorch datasets list).")]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n else "-"


@datasets_app.command("list")
def datasets_list() -> None:
    """Every registered dataset: size, access, licence and where it is now."""
    from advorch import datasets

    table = Table(title="datasets", caption=f"here: shared = {datasets.SHARED}, "
                  f"cache = {datasets.data_root()} ($ADVORCH_DATA)")
    for col in ("name", "size", "access", "here", "licence"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=col != "licence")
    for name, ds in datasets.registry().items():
        where = datasets.locate(name) if ds.files else None
        here = "-" if where is None else "shared" if where.is_relative_to(datasets.SHARED) else "cache"
        table.add_row(name, _mib(ds.size), ds.access, here, ds.licence)
    out.print(table)


@datasets_app.command("info")
def datasets_info(name: DatasetArg) -> None:
    """One dataset: what it is, its sources, its files and the configs that read it."""
    from advorch import datasets

    try:
        ds = datasets.get(name)
    except datasets.DatasetError as e:
        fail(str(e))
    out.print(f"[bold]{ds.name}[/]: {escape(ds.title)}\nlicence: {escape(ds.licence)}\n"
              f"homepage: {ds.homepage}\naccess: {ds.access}\nsize: {_mib(ds.size)}, "
              f"{len(ds.files)} files, folder {ds.folder or '-'}\n"
              f"here: {datasets.locate(name) if ds.files else '-'}", highlight=False, soft_wrap=True)
    for source in ds.sources:
        out.print(f"source: {source.url}" + (f" ({source.archive})" if source.archive else ""),
                  highlight=False, soft_wrap=True)
    for i, step in enumerate(ds.steps, 1):
        out.print(f"step {i}: {escape(step.format(dest=datasets.data_root() / ds.folder))}",
                  highlight=False, soft_wrap=True)
    for config in ds.configs():
        out.print(f"read by: {config}", highlight=False)


@datasets_app.command("fetch")
def datasets_fetch(name: DatasetArg,
                   to: Annotated[Path | None, typer.Option(
                       "--to", help="Data root (default: $ADVORCH_DATA or the user's cache).")] = None,
                   mirror: Annotated[str | None, typer.Option(
                       envvar="ADVORCH_MIRROR", help="Base URL of a mirror of the data folder.")] = None,
                   ) -> None:
    """Download NAME, check every file's sha256, and place it under the data root."""
    from advorch import datasets

    try:
        with err.status(f"fetching {name}"):
            folder = datasets.fetch(name, to, mirror)
    except datasets.DatasetError as e:
        fail(str(e), code=1)
    out.print(f"{name}: {folder} (every file matches its sha256)", highlight=False, soft_wrap=True)


@vectors_app.command("export")
def vectors_export(dataset: Annotated[str, typer.Argument(help="A word-level dataset folder or URI.")],
                   out_file: Annotated[Path, typer.Argument(help="GloVe text file to write.")],
                   encoder: Annotated[str, typer.Option(
                       help="minilm (all-MiniLM-L6-v2), or a local model folder.")] = "minilm") -> None:
    """Static vectors for DATASET's vocabulary: each word's contextual encoder states averaged over
    its train occurrences, for `model.pretrained_vectors` (with model.embedding_dim = 384)."""
    from advorch.encoders import TOKENIZERS
    from advorch.progress import track
    from advorch.trainers.vectors import export

    try:
        written = export(dataset, out_file, TOKENIZERS.get(encoder, encoder),
                         progress=lambda xs: track(xs, "encoding the train split"))
    except (ImportError, ValueError, FileNotFoundError) as e:
        fail(str(e), code=1)
    out.print(f"{written} word vectors → {out_file}", highlight=False)


def _mr_folder(data: Path | None) -> Path:
    """--data, else ../shared/data/mr, else the fetched copy, else fetch it."""
    from advorch import datasets

    if data is not None:
        if not (data / "rt-polarity.neg").is_file():
            fail(f"{data}/rt-polarity.neg not found: pass --data with the MR folder, or leave it "
                 "out to use ../shared/data/mr or fetch MR (advorch datasets fetch mr)")
        return data
    if (found := datasets.locate("mr")) is not None:
        return found
    out.print(f"MR is not here: fetching it into {datasets.data_root()} (advorch datasets info mr)",
              highlight=False, soft_wrap=True)
    try:
        return datasets.fetch("mr")
    except datasets.DatasetError as e:
        fail(str(e), code=1)


@app.command()
def demo(data: Annotated[Path | None, typer.Option(
             help="Folder with rt-polarity.neg / rt-polarity.pos (default: ../shared/data/mr, "
                  "else the fetched copy, else fetched now).")] = None,
         output: Annotated[str, typer.Option(help="Where the shards go.")] = "data/mr",
         workers: Annotated[int, typer.Option(help="Ray Train workers.")] = 2,
         ray_address: RayOpt = None, mlflow_uri: MlflowOpt = None, set_: SetOpt = None) -> None:
    """MR sentences → shards → LSTM-Attention with AT on local Ray (2 workers) → MLflow."""
    from advorch.demo import demo_overrides

    data = _mr_folder(data)
    out.print(f"MR sentences from {data}", highlight=False, soft_wrap=True)
    cfg = _load(None, demo_overrides(data, output, workers) + list(set_ or []))
    out.rule("1/2 preprocess: MR sentences → Parquet shards")
    run_pipeline(cfg, None, None)
    out.rule(f"2/2 train: {cfg.model.name} + {cfg.regime.name} on Ray Train, {workers} workers")
    result = run_training(cfg, None, ray_address, mlflow_uri)
    out.print(f"[bold]test_accuracy = {result.metrics['test_accuracy']:.4f}[/] "
              "(Jia et al. 2019, Table 3, LSTM+AT: 0.742)")
    if result.run_id:  # what a user opens first: the curves, and where the model looks
        from advorch.trainers.analysis import explain_run

        explain_run(result.run_id, 3, None, result.tracking_uri)
        out.print("Logged to the run: plots/training_curves.png, and explain/attention.png "
                  "(the attention over 3 test sentences, clean and perturbed)", soft_wrap=True)


if __name__ == "__main__":
    app()
