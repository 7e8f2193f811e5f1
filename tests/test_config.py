"""The experiment config: validation names the key and the file, overrides are typed,
and the demo's embedded config stays equal to configs/mr.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from advorch.config import ConfigError, ExperimentConfig, load_config
from advorch.demo import demo_overrides

ROOT = Path(__file__).resolve().parents[1]
MR_TOML = ROOT / "configs" / "mr.toml"


def _with_lines(tmp_path: Path, extra: dict[str, list[str]]) -> Path:
    """configs/mr.toml with extra lines appended to the given [section]s."""
    text = MR_TOML.read_text(encoding="utf-8")
    for section, lines in extra.items():
        header = f"[{section}]\n"
        assert header in text, f"configs/mr.toml has no {header!r}"
        text = text.replace(header, header + "".join(f"{line}\n" for line in lines), 1)
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_mr_config_validates() -> None:
    cfg = load_config(MR_TOML)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "mr"
    assert cfg.data.encoding == "cp1252"
    assert [(s.path, s.label) for s in cfg.data.sources] == [
        ("../shared/data/mr/rt-polarity.neg", "neg"), ("../shared/data/mr/rt-polarity.pos", "pos")]
    assert cfg.data.test_fraction == 0.5
    assert cfg.model.name == "lstm_attention" and cfg.model.hidden_dim == 140
    assert cfg.regime.name == "at"
    assert cfg.train.workers == 2
    assert cfg.mlflow.experiment == "mr"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _with_lines(tmp_path, {"model": ["hiden_dim = 64"]})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "model.hiden_dim" in message
    assert str(path) in message


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    text, n = re.subn(r"^epochs = .*$", 'epochs = "ten"', MR_TOML.read_text(encoding="utf-8"),
                      count=1, flags=re.M)
    assert n == 1, "configs/mr.toml sets no train.epochs"
    path = tmp_path / "wrong_type.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.epochs" in message
    assert str(path) in message
    assert "ten" in message


def test_overrides_apply_with_their_types() -> None:
    cfg = load_config(MR_TOML, ["train.epochs=3", 'regime.name="clean"', "data.lowercase=false",
                                "regime.epsilon=0.25", "model.name=lstm"])
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.regime.name == "clean"
    assert cfg.data.lowercase is False
    assert cfg.regime.epsilon == 0.25
    assert cfg.model.name == "lstm"  # not TOML: falls back to the plain string
    # untouched values keep the file's
    plain = load_config(MR_TOML)
    assert plain.train.epochs != 3 and plain.regime.name != "clean"
    assert cfg.train.batch_size == plain.train.batch_size and cfg.regime.lam == plain.regime.lam
    assert cfg.data == plain.data.model_copy(update={"lowercase": False})


def test_override_with_wrong_type_names_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(MR_TOML, ["train.epochs=many"])
    assert "train.epochs" in str(info.value)
    assert str(MR_TOML) in str(info.value)


@pytest.mark.parametrize(("bad", "named"), [
    ("train.epochs", "'train.epochs'"),     # no '='
    ("=3", "'=3'"),                         # no key
    ("name.sub=1", "'name' is not a section"),
])
def test_bad_override_errors(bad: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(MR_TOML, [bad])
    message = str(info.value)
    assert named in message
    assert f"{MR_TOML} (--set)" in message


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(missing)


def test_demo_overrides_equal_mr_toml() -> None:
    """The demo's embedded config and configs/mr.toml must not drift apart."""
    demo = load_config(None, demo_overrides(Path("../shared/data/mr"), "data/mr", 2))
    toml = load_config(MR_TOML)
    assert demo.name != toml.name  # the only intended difference besides tracking names
    for section in ("data", "model", "regime", "train"):
        assert getattr(demo, section).model_dump() == getattr(toml, section).model_dump(), section
    assert demo.mlflow.model_dump(exclude={"experiment"}) == toml.mlflow.model_dump(exclude={"experiment"})
