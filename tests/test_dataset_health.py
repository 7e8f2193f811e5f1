"""Degenerate datasets fail early (issue 17): at preprocess time, and in `advorch train` before any
Ray process starts; an error raised inside a Ray worker reaches the CLI as one clean line and
ends the MLflow run FAILED with the reason.

The one-class, zero-row and missing-class datasets are generated here (a few lines of text in
the MR layout): the real corpora are healthy, and these are the cases they lack.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from advorch.pipelines.health import problems
from advorch.pipelines.shards import MANIFEST, read_manifest
from tests.conftest import mr_config, run_cli

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}


def _lines(path: Path, n: int, word: str) -> Path:
    path.write_text("".join(f"{word} film number {i} .\n" for i in range(n)))
    return path


def _config(tmp_path: Path, sources: list[tuple[Path, str]], *extra: str) -> Path:
    """A text config over generated line files (one per class) and a tiny model."""
    entries = ", ".join(f'{{path = "{p}", label = "{label}"}}' for p, label in sources)
    cfg = tmp_path / "gen.toml"
    cfg.write_text("\n".join([
        'name = "health"', "[data]", f'output = "{tmp_path / "out"}"', f"sources = [{entries}]", *extra,
        "[model]", "hidden_dim = 8", "embedding_dim = 8",
        "[train]", "epochs = 1", f'storage = "{tmp_path / "runs"}"']) + "\n")
    return cfg


def _preprocess(cfg: Path, tmp_path: Path):
    return run_cli("preprocess", "text", str(cfg), cwd=tmp_path, env=ENV, timeout=120)


def _train_refused(cfg: Path, tmp_path: Path, *sets: str):
    """`advorch train` that must refuse: exit 2, no Ray session folder, no run storage, quickly."""
    ray_tmp = tmp_path / "ray-tmp"
    t0 = time.perf_counter()
    proc = run_cli("train", str(cfg), *[a for s in sets for a in ("--set", s)], cwd=tmp_path,
                   env={**ENV, "RAY_TMPDIR": str(ray_tmp)}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot run" in proc.stderr
    assert not ray_tmp.exists() and not (tmp_path / "runs").exists()  # no Ray instance was started
    assert time.perf_counter() - t0 < 30
    return proc.stderr


def test_one_class_dataset_is_refused_at_preprocess_and_by_train(tmp_path: Path) -> None:
    only = _lines(tmp_path / "neg.txt", 40, "dull")
    proc = _preprocess(_config(tmp_path, [(only, "neg")]), tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "not fit to train" in proc.stderr and "1 class with rows (neg)" in proc.stderr
    assert 'data.health.on_problem = "warn"' in proc.stderr
    assert not (tmp_path / "out" / MANIFEST).exists()  # nothing published

    # built anyway on request: loud in the summary and the manifest, and train refuses it
    cfg = _config(tmp_path, [(only, "neg")], "[data.health]", 'on_problem = "warn"')
    proc = _preprocess(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stdout and "1 class with rows" in proc.stdout
    assert any("1 class with rows" in w for w in read_manifest(str(tmp_path / "out"))["warnings"])
    assert "a classifier needs two or more" in _train_refused(cfg, tmp_path)


def test_zero_row_dataset_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "neg.txt"
    blank.write_text("\n \n\n")
    other = _lines(tmp_path / "pos.txt", 5, "fine")
    proc = _preprocess(_config(tmp_path, [(blank, "neg"), (other, "pos")]), tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert f"{blank} (class 'neg') holds no usable line" in proc.stderr  # the file and the class
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_health_problems_name_the_counts() -> None:
    """Every pipeline's commit goes through these rules (pipelines/health.py)."""
    split = lambda rows, **classes: {"rows": rows, "classes": classes}  # noqa: E731
    assert problems({"train": split(0), "test": split(0)}, ["a", "b"])[0].startswith("the dataset has 0 rows")
    assert "1 class with rows (a) of 2" in problems({"train": split(3, a=3, b=0)}, ["a", "b"])[0]
    [short] = problems({"train": split(4, a=2, b=2), "val": split(0), "test": split(3, a=3, b=0)}, ["a", "b"])
    assert short.startswith("split test (3 rows) has too few rows of class b 0")
    assert problems({"train": split(4, a=2, b=2), "test": split(3, a=2, b=1)}, ["a", "b"],
                    min_class_rows=2)[0].startswith("split test (3 rows) has too few rows of class b 1")
    assert problems({"train": split(4, a=2, b=2), "test": split(2, a=1, b=1)}, ["a", "b"]) == []
    assert problems({"train": split(0)}, [], task="ranking") == []  # ranking has its own rules


def test_class_missing_from_a_split_is_refused_and_train_checks_the_metric(tmp_path: Path) -> None:
    neg, pos = _lines(tmp_path / "neg.txt", 40, "dull"), _lines(tmp_path / "pos.txt", 2, "fine")
    sources = [(neg, "neg"), (pos, "pos")]
    proc = _preprocess(_config(tmp_path, sources, "val_fraction = 0.1"), tmp_path)
    assert proc.returncode == 1
    assert "split val" in proc.stderr and "class pos 0" in proc.stderr  # names the split and counts

    cfg = _config(tmp_path, sources, "val_fraction = 0.1", "[data.health]", 'on_problem = "warn"')
    assert _preprocess(cfg, tmp_path).returncode == 0
    assert 'needs both classes in val' in _train_refused(cfg, tmp_path, 'train.metric="val_auc"')


@pytest.mark.ray
def test_error_inside_a_ray_worker_is_one_clean_line_and_a_failed_mlflow_run(mr_shards: Path,
                                                                           tmp_path: Path) -> None:
    """A manifest that lies about the vocabulary (generated: a real MR build with its
    vocab_size cut to 10) passes every driver-side check and fails in the worker's
    embedding lookup."""
    from mlflow.tracking import MlflowClient

    data = tmp_path / "mr"
    shutil.copytree(mr_shards, data)
    manifest = json.loads((data / MANIFEST).read_text())
    (data / MANIFEST).write_text(json.dumps({**manifest, "vocab_size": 10}))
    cfg = mr_config(tmp_path / "mr.toml", data, model={"hidden_dim": 8, "embedding_dim": 8,
                                                      "init_embeddings": "random"},
                    train={"epochs": 1, "batch_size": 512, "workers": 1, "max_failures": 0,
                           "storage": str(tmp_path / "runs")},
                    mlflow={"experiment": "fails", "log_model": False})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("train", str(cfg), "--mlflow-uri", uri, cwd=tmp_path, env=ENV, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Ray worker rank 0: IndexError: index out of range" in errors[0]
    [run] = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("fails").experiment_id])
    assert run.info.status == "FAILED"
    assert "IndexError: index out of range" in run.data.tags["advorch.error"]


def test_train_check_compares_input_shapes_and_task_with_the_model() -> None:
    """Specs in memory: a pixel input stored flat (as an old or hand-made manifest may say),
    and a task no trainer knows."""
    from dataclasses import replace

    from advorch.config import load_config
    from advorch.pipelines.spec import InputSpec
    from advorch.trainers.models import model_problems
    from advorch.trainers.tasks import task_problems
    from tests.trainers.specs import pixel_spec

    cfg = load_config(None, ['model.name="image_cnn"'])
    spec = pixel_spec()
    assert model_problems(cfg.model, spec) == []
    flat = replace(spec, inputs={"pixels": InputSpec("pixels", "pixels", (64,), "uint8", (0.0, 1.0))})
    [problem] = model_problems(cfg.model, flat)
    assert "has shape [64]" in problem and "3-d [channels, height, width]" in problem
    assert "task 'regression' has no trainer yet" in task_problems(cfg, replace(spec, task="regression"))[0]
    ranking = task_problems(cfg, replace(spec, task="ranking"))  # a classification metric for a ranking
    assert any('train.metric = "val_accuracy" is a classification metric' in p for p in ranking)
    empty = task_problems(cfg, spec)  # no split rows in memory: every split is named
    assert [p.split(": ")[1].split(" has")[0] for p in empty] == ["split train", "split val", "split test"]
