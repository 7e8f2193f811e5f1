"""The [tune] section: search spaces validated against the config, Tune spaces, reports."""

import csv
import io

import pytest

from advorch.config import ConfigError, load_config
from advorch.tuning import plots
from advorch.tuning.sweep import mode_of, search_space


def test_space_keys_and_specs_are_validated():
    cfg = load_config(None, ['tune.space."regime.epsilon".grid=[1.0, 8]',
                             'tune.space."regime.gamma".uniform=[0.0, 1.0]'])
    assert cfg.tune.space["regime.epsilon"].kind == "grid"
    with pytest.raises(ConfigError, match="'regime.nope' is not a config key"):
        load_config(None, ['tune.space."regime.nope".grid=[1]'])
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(None, ['tune.space."regime.lam".grid=[1.0]', 'tune.space."regime.lam".uniform=[1, 2]'])
    with pytest.raises(ConfigError, match="tune.space.regime.lam"):
        load_config(None, ['tune.space."regime.lam".uniform=[1.0]'])  # needs [low, high]
    with pytest.raises(ConfigError, match="quote dotted names"):
        load_config(None, ["tune space=1"])


def test_a_trial_draw_is_validated_like_the_file():
    cfg = load_config(None, ['regime.name="at"'])
    drawn = cfg.with_values({"regime.epsilon": 4, "regime.filter": "cat"})
    assert (drawn.regime.epsilon, drawn.regime.filter, drawn.regime.name) == (4.0, "cat", "at")
    assert cfg.regime.epsilon == 1.0  # the base is untouched
    with pytest.raises(ValueError, match="filter"):
        cfg.with_values({"regime.filter": "nope"})


def test_search_space_maps_each_kind_to_tune():
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = load_config(None, ['tune.space."regime.epsilon".grid=[1.0, 8.0]',
                             'tune.space."regime.filter".choice=["sf", "cat"]',
                             'tune.space."regime.gamma".uniform=[0.0, 1.0]',
                             'tune.space."regime.lam".loguniform=[0.1, 10.0]',
                             'tune.space."regime.pgd_steps".randint=[1, 5]'])
    space = search_space(cfg.tune.space)
    assert space["regime.epsilon"] == {"grid_search": [1.0, 8.0]}
    assert isinstance(space["regime.filter"], Categorical)
    assert isinstance(space["regime.gamma"], Float) and (space["regime.gamma"].lower,
                                                        space["regime.gamma"].upper) == (0.0, 1.0)
    assert isinstance(space["regime.lam"].sampler, Float._LogUniform)
    assert isinstance(space["regime.gamma"].sampler, Float._Uniform)
    assert isinstance(space["regime.pgd_steps"], Integer)
    assert (mode_of("val_loss"), mode_of("val_accuracy"), mode_of("val_auc")) == ("min", "max", "max")


def test_trial_table_and_sensitivity_plot(tmp_path):
    trials = [{"trial_id": f"t{i}", "status": "FINISHED", "run_id": f"r{i}", "regime.keep_ratio": k,
               "best_val_accuracy": acc} for i, (k, acc) in enumerate([(0.4, 0.7), (0.8, 0.75), (0.8, 0.73)])]
    trials.append({"trial_id": "t3", "status": "KILLED", "run_id": "r3", "regime.keep_ratio": 0.6})
    rows = list(csv.DictReader(io.StringIO(plots.trial_table(trials, ["regime.keep_ratio"]))))
    assert [r["status"] for r in rows] == ["FINISHED"] * 3 + ["KILLED"]
    assert rows[3]["best_val_accuracy"] == "" and rows[1]["regime.keep_ratio"] == "0.8"
    png = plots.sensitivity(trials, "regime.keep_ratio", "best_val_accuracy", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one distinct value (the killed trial has no metric): nothing to plot
    one_value = trials[:1] + trials[3:]
    assert plots.sensitivity(one_value, "regime.keep_ratio", "best_val_accuracy", tmp_path) is None
