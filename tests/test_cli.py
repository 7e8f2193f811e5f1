"""The real `advorch` console script, run as a subprocess."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from advorch import __version__
from tests.conftest import ROOT, run_cli

MR_TOML = ROOT / "configs" / "mr.toml"
# rich wraps stderr at 80 columns when it is not a terminal, which could cut a long
# path in two; a wide console keeps each message on one line
WIDE = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}


def test_version() -> None:
    result = run_cli("--version", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"advorch {__version__}"


def test_help_lists_the_commands() -> None:
    result = run_cli("--help", timeout=60, env=WIDE)
    assert result.returncode == 0, result.stderr
    for command in ("preprocess", "train", "tune", "submit", "jobs", "schedule", "history", "demo",
                    "analyze"):
        assert command in result.stdout, f"{command!r} missing from --help:\n{result.stdout}"


def test_train_with_unknown_key_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text(MR_TOML.read_text(encoding="utf-8").replace(
        "[model]\n", "[model]\nhiden_dim = 64\n", 1), encoding="utf-8")
    result = run_cli("train", str(config), timeout=60, cwd=tmp_path,
                     env=WIDE)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "model.hiden_dim" in result.stderr
    assert str(config) in result.stderr


def test_train_with_unknown_regime_fails_fast_listing_known(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_cli("train", str(MR_TOML), "--set", 'regime.name="fgsm_typo"', timeout=120,
                     cwd=tmp_path, env=WIDE)
    elapsed = time.monotonic() - start
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "fgsm_typo" in result.stderr
    assert "clean" in result.stderr and "at" in result.stderr.split("known")[-1]
    assert elapsed < 15, f"took {elapsed:.1f}s: the regime must be checked before Ray starts"
    # nothing of a training run was started or written
    assert list(tmp_path.iterdir()) == []


def test_error_names_a_long_path_on_one_line_when_not_a_terminal(tmp_path: Path) -> None:
    """CI logs and `2>err.log` are not terminals: the path in an error must stay greppable."""
    folder = tmp_path / "experiments-of-the-movie-review-corpus-with-adversarial-training"
    folder.mkdir()
    config = folder / "config-with-a-typo.toml"
    config.write_text("[model]\nhiden_dim = 64\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = run_cli("train", str(config), timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "model.hiden_dim" in result.stderr
    assert str(config) in result.stderr, result.stderr


def test_error_keeps_square_brackets_in_paths(tmp_path: Path) -> None:
    folder = tmp_path / "mr[neg]"
    folder.mkdir()
    config = folder / "typo.toml"
    config.write_text("[model]\nhiden_dim = 64\n", encoding="utf-8")
    result = run_cli("train", str(config), timeout=60, cwd=tmp_path, env=WIDE)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(config) in result.stderr, result.stderr


def test_job_entrypoints_are_commands_the_cli_accepts(tmp_path, monkeypatch):
    """`advorch submit` builds `advorch train|tune config.toml …` with the dataset, storage and
    sqlite store made absolute (the job runs elsewhere); each parses with the real CLI."""
    import typer.main

    from advorch.cli import app
    from advorch.config import load_config
    from advorch.jobs import JobError, entrypoint_args

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "mr.toml", ["train.workers=4"])
    cli = typer.main.get_command(app)
    for command in ("train", "tune"):
        args, notes = entrypoint_args(cfg, command, mlflow_uri="sqlite:///mlruns/x.db",
                                      overrides=["train.workers=4"])
        assert args[:3] == ["advorch", command, "config.toml"]
        assert args[args.index("--data") + 1] == str(tmp_path / "data" / "mr")
        assert args[args.index("--mlflow-uri") + 1] == f"sqlite:///{tmp_path}/mlruns/x.db"
        assert f'train.storage="{tmp_path / "runs"}"' in args and "train.workers=4" in args
        assert len(notes) == 3 and all("every node must see it" in n for n in notes)
        sub = cli.commands[command]
        ctx = sub.make_context(command, args[2:])
        assert ctx.params["data"] == str(tmp_path / "data" / "mr")
    uris, notes = entrypoint_args(cfg, "train", data="s3://b/mr", mlflow_uri="http://mlflow:5000",
                                  overrides=['train.storage="s3://b/runs"'])
    assert "s3://b/mr" in uris and notes == [f"checkpoint storage {tmp_path / 'runs'} is on this "
                                             "machine's filesystem: every node must see it (shared "
                                             "filesystem), else use a URI (s3://…, gs://…, "
                                             "http://mlflow:5000)"]
    with pytest.raises(JobError, match="choose train or tune"):
        entrypoint_args(cfg, "evaluate")
