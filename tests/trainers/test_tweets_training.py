"""Crisis tweets end to end: Algorithm 1's offline augmentation (trainers/augment.py), several
inputs served through one packed array, and `advorch train` → `evaluate` → `explain` on the real
CrisisMMD California wildfires tweets (text only: their images are not offline) with offline
MMAT on Ray. The in-memory batches are generated (random words and images), as in test_crisis.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from advorch.config import ModelConfig
from advorch.trainers.augment import adversarial_copy, augmented
from advorch.trainers.data import TensorData
from advorch.trainers.models import build_model
from advorch.trainers.tasks import Classification
from tests.conftest import ROOT, SHARED_DATA, run_cli
from tests.trainers.specs import tweet_spec

TASK = Classification(2)
SMALL = dict(embedding_dim=8, hidden_dim=16, channels=[4, 6], text_filters=10, dropout=0.5)
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}


def _data(n: int = 12, t: int = 6, seed: int = 0) -> TensorData:
    """n tweets of 1..t random words (0-padded to t), random 16x16 uint8 images, every other one
    without an image."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    tokens = torch.randint(2, 40, (n, t), generator=g) * (torch.arange(t) < lengths.unsqueeze(1))
    pixels = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return TensorData({"tokens": tokens, "pixels": pixels, "has_image": torch.arange(n) % 2 == 0},
                      torch.randint(0, 2, (n,), generator=g), [f"t{i}" for i in range(n)])


def _mmn():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="mmn", **SMALL), tweet_spec(vocab_size=40, size=16, has_image=True))


def test_the_adversarial_copy_is_crafted_in_eval_mode_and_stored_as_the_shards_store_it() -> None:
    data, model = _data(), _mmn()
    model.train()
    craft = {"epsilon": 0.1, "neighbours": 5, "threshold": 0.0}
    copy = adversarial_copy(model, TASK, data, 5, torch.device("cpu"), craft)
    assert model.training  # put back as it was found
    again = adversarial_copy(model, TASK, data, 7, torch.device("cpu"), craft)  # other batches, no dropout
    assert all(torch.equal(copy.inputs[k], again.inputs[k]) for k in data.inputs)
    assert copy.inputs["pixels"].dtype == torch.uint8 and torch.equal(copy.labels, data.labels)
    moved = (copy.inputs["pixels"].int() - data.inputs["pixels"].int()).abs()
    with_image = data.inputs["has_image"]
    assert moved[with_image].max() <= 26 and moved[with_image].float().mean() > 20  # θ 0.1 = 25.5/255
    assert moved[~with_image].max() == 0  # no image: no gradient reaches its pixels
    pad = data.inputs["tokens"] == 0
    assert torch.equal(copy.inputs["tokens"][pad], data.inputs["tokens"][pad])  # padding untouched
    assert (copy.inputs["tokens"] != data.inputs["tokens"]).any()  # threshold 0: words replaced
    assert torch.equal(copy.inputs["has_image"], data.inputs["has_image"])
    both = augmented(data, copy)
    assert len(both) == 2 * len(data) and both.ids[len(data)] == "t0#adv"


def test_several_inputs_are_served_through_one_packed_array() -> None:
    from advorch.trainers.data import batches

    data, model = _data(), _mmn().eval()
    layout = data.serving_layout()
    assert [name for name, _ in layout] == ["has_image", "pixels", "tokens"]
    packed = data.serving_inputs(5)
    assert packed.shape == (5, 1 + 3 * 16 * 16 + 6) and packed.dtype == torch.float32
    served = TASK.serving(model, layout)(packed)
    batch = next(batches(data, 5, torch.device("cpu")))
    with torch.no_grad():
        direct = torch.softmax(model(model.embed(batch), batch).scores, -1)
    torch.testing.assert_close(served, direct)


@pytest.mark.ray
def test_offline_mmat_trains_evaluates_and_explains_through_the_cli(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tsv = SHARED_DATA / "crisismmd" / "annotations" / "california_wildfires_final_data.tsv"
    if not tsv.is_file():
        pytest.skip(f"real CrisisMMD annotations not found at {tsv}")
    data = tmp_path / "cw"
    sets = [f'data.output="{data}"', f'data.tweets.files=["{tsv}"]', 'regime.name="mmat"',
            'regime.schedule="offline"', "train.epochs=2", "train.patience=2",
            f'train.storage="{tmp_path}/runs"',
            'mlflow.experiment="tweets"', "model.hidden_dim=16", "data.tweets.embedding_epochs=2"]
    args = [a for s in sets for a in ("--set", s)]
    config = str(ROOT / "configs" / "crisismmd.toml")
    assert run_cli("preprocess", "tweets", config, *args, cwd=tmp_path, env=ENV, timeout=120).returncode == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("train", config, "--mlflow-uri", uri, *args, cwd=tmp_path, env=ENV, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = re.search(r"MLflow run: (\w+)", proc.stdout).group(1)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["regime.schedule"] == "offline"
    steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    assert steps == list(range(len(steps))) and len(steps) >= 2  # stage 2's epochs follow stage 1's
    stages = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "runs").iterdir())
    assert stages == ["stage1", "stage2"]
    assert float(run.data.metrics["train_rows"]) == 2 * json.loads(
        (data / "manifest.json").read_text())["splits"]["train"]["rows"]  # stage 2: train ∪ adversarial

    # the analysis commands load the logged model from MLflow (no Ray): called in this process
    from advorch.trainers.analysis import evaluate_run, explain_run

    rows = evaluate_run(run_id, ["fgsm_words"], [0.1], uri)
    clean, adv = (r["accuracy"] for r in rows)
    assert adv <= clean + 1e-9
    assert client.get_run(run_id).data.metrics["robust_fgsm_words_eps0.1_accuracy"] == adv
    items, _, classes = explain_run(run_id, 5, None, uri)
    assert sorted(classes[x.label] for x in items) == ["informative", "not_informative"]
    for x in items:  # changed words are where the replaced text differs, nowhere else
        assert [a != b for a, b in zip(x.words, x.adversarial_words, strict=True)] == x.changed
    logged = {a.path for a in client.list_artifacts(run_id, "explain")}
    assert {"explain/examples.png", "explain/examples.html"} <= logged


def test_theta_threshold_and_candidates_are_sweepable_and_other_keys_refused() -> None:
    """`advorch tune` over the mmat keys passes the config check; a key mmat does not read is
    refused with the terms that read it (config only: no dataset needed)."""
    from advorch.config import load_config
    from advorch.trainers.adversarial import check

    base = ['model.name="mmn"', 'regime.name="mmat"', 'regime.schedule="offline"']
    space = ['tune.space."regime.epsilon".grid=[0.05, 0.1]', 'tune.space."regime.threshold".grid=[0.3, 0.5]',
             'tune.space."regime.neighbours".choice=[5, 10]']
    assert check(load_config(ROOT / "configs" / "mediaeval_tweets.toml", base + space)) == []
    [problem] = check(load_config(ROOT / "configs" / "mediaeval_tweets.toml",
                                  base + ['tune.space."regime.gamma".grid=[0.1, 0.2]']))
    assert "tune.space sweeps 'regime.gamma'" in problem
    [problem] = check(load_config(ROOT / "configs" / "crisismmd.toml", ['regime.schedule="offline"']))
    assert "regime.schedule = 'offline' is not used by regime 'clean'" in problem and "mmat" in problem
