"""Chen et al.'s crisis-tweet models and multi-modal adversarial examples (§III, eq. 1-2): FGSM on the
pixels, word replacement among the n nearest words, the Visual-CNN / Text-CNN / MMN, the mmat term.

Every input here is generated in the test (seeded random tensors, a hand-built 3-word embedding).
"""

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from advorch.config import ModelConfig, RegimeConfig, load_config
from advorch.pipelines.spec import InputSpec
from advorch.trainers.adversarial import build_regime, check
from advorch.trainers.adversarial.word_replace import craft, neighbour_table, replace_words
from advorch.trainers.data import TensorData, column_tensor, make_batch
from advorch.trainers.loop import train_step
from advorch.trainers.models import MMN, TextCNN, VisualCNN, build_model, model_problems
from advorch.trainers.robustness import adversarial_examples, attack
from advorch.trainers.tasks import Classification
from tests.trainers.specs import token_spec, tweet_spec

TASK = Classification(2)
SMALL = dict(embedding_dim=8, hidden_dim=16, channels=[4, 6], text_filters=10)


def _model(name: str, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, dropout=dropout, **SMALL)
    return build_model(cfg, tweet_spec(vocab_size=40, channels=3, size=16))


def _batch(n: int = 6, t: int = 7, seed: int = 1, vocab: int = 40) -> dict[str, torch.Tensor]:
    """n tweets of 1..t random words (ids 2..vocab-1, 0-padded) with random 16x16 RGB images."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = torch.arange(t) < lengths.unsqueeze(1)
    tokens = torch.randint(2, vocab, (n, t), generator=g) * mask
    return {"tokens": tokens, "mask": mask, "pixels": torch.rand(n, 3, 16, 16, generator=g),
            "label": torch.randint(0, 2, (n,), generator=g)}


# ---------------------------------------------------------------- FGSM on the pixels (eq. 1)


def test_fgsm_moves_every_pixel_with_a_gradient_by_theta_and_keeps_pixels_in_range():
    model, batch = _model("mmn").eval(), _batch()
    r = attack(model, TASK, batch, "fgsm_words", 0.1)["pixels"]
    x = batch["pixels"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(TASK.loss(model({**model.embed(batch), "pixels": x}, batch), batch), x)
    adv = x.detach() + r
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    inside = (x > 0.1) & (x < 0.9) & (g != 0)  # where the range does not cut the step
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(r[inside], 0.1 * g[inside].sign())
    assert float(r.abs().max()) == pytest.approx(0.1)  # ‖δ‖∞ = θ
    assert (r[g == 0] == 0).all()
    with torch.no_grad():
        clean = TASK.loss(model(model.embed(batch), batch), batch)
        moved = TASK.loss(model({**model.embed(batch), "pixels": adv}, batch), batch)
    assert moved > clean


def test_a_tweet_without_an_image_ignores_its_pixels_and_fgsm_leaves_them_alone():
    model, batch = _model("mmn").eval(), _batch()
    batch["has_image"] = torch.tensor([True, False, True, False, True, True])
    other = {**batch, "pixels": torch.rand_like(batch["pixels"])}
    with torch.no_grad():
        a, b = (model(model.embed(x), x).scores for x in (batch, other))
    torch.testing.assert_close(a[~batch["has_image"]], b[~batch["has_image"]])
    assert not torch.allclose(a[batch["has_image"]], b[batch["has_image"]])
    r = adversarial_examples(model, TASK, batch, 0.1)["pixels"] - batch["pixels"]
    assert (r[~batch["has_image"]] == 0).all() and (r[batch["has_image"]] != 0).any()


# ---------------------------------------------------------------- word replacement (eq. 2)


def test_the_neighbour_table_holds_the_n_most_similar_words_never_the_word_pad_or_oov():
    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    table = neighbour_table(weight, 5)
    assert table.shape == (50, 5)
    unit = F.normalize(weight, dim=1)
    sim = unit @ unit.T
    allowed = torch.ones(50, 50, dtype=torch.bool)
    allowed[:, :2] = False
    allowed.fill_diagonal_(False)
    picked = torch.zeros(50, 50, dtype=torch.bool).scatter_(1, table, True)
    words = torch.arange(2, 50)
    assert not (picked & ~allowed)[words].any()  # never itself, 0 or 1
    worst_picked = sim.masked_fill(~picked, float("inf")).amin(1)
    best_other = sim.masked_fill(picked | ~allowed, float("-inf")).amax(1)
    assert (worst_picked[words] >= best_other[words]).all()
    torch.testing.assert_close(table[:2], torch.tensor([[0] * 5, [1] * 5]))
    l2 = neighbour_table(weight, 5, "l2")  # by distance: the smallest ‖a − b‖ instead
    dist = torch.cdist(weight, weight)
    assert (dist.masked_fill(~torch.zeros_like(picked).scatter_(1, l2, True), float("-inf")).amax(1)[words]
            <= dist.masked_fill(torch.zeros_like(picked).scatter_(1, l2, True) | ~allowed,
                                float("inf")).amin(1)[words]).all()


def test_words_are_replaced_only_by_a_candidate_only_above_the_threshold_and_never_at_padding():
    torch.manual_seed(0)
    vocab, n, threshold = 60, 4, 0.3
    weight = torch.randn(vocab, 6)
    table = neighbour_table(weight, n)
    batch = _batch(n=32, t=9, vocab=vocab)
    tokens, mask = batch["tokens"], batch["mask"]
    grad = torch.randn(32, 9, 6)
    new, changed = replace_words(tokens, grad, weight, table, threshold, 0.2, mask)
    # by brute force over the whole vocabulary: the gain of every word, restricted to C(w)
    eta = 0.2 * grad.sign()
    gain = torch.einsum("vd,btd->btv", weight, eta) - (weight[tokens] * eta).sum(-1, keepdim=True)
    in_c = torch.zeros(32, 9, vocab, dtype=torch.bool).scatter_(2, table[tokens], True)
    best, pick = gain.masked_fill(~in_c, float("-inf")).max(-1)
    assert (changed == ((best > threshold) & mask)).all()
    assert 0 < changed.sum() < mask.sum()  # some but not all words change
    torch.testing.assert_close(new[changed], pick[changed])
    assert in_c[changed].gather(1, new[changed].unsqueeze(1)).all()  # only ever a candidate
    assert (new[~changed] == tokens[~changed]).all() and (new[~mask] == 0).all()
    assert (new[changed] != tokens[changed]).all()


def test_a_hand_built_three_word_embedding_gives_the_replacements_worked_out_by_hand():
    """Words a = 2, b = 3, c = 4 at (1, 0), (0, 1), (0.8, 0.6); OOV (id 1) at (1, 0.01) would be a's
    nearest by cosine but is never a candidate. With n = 1: C(a) = {c} (cos 0.8 > 0), C(b) = {c}
    (0.6 > 0), C(c) = {a} (0.8 > 0.6). With ε = 1 and η = sign(g):
        a, g = (-3, 2):   (c − a)·η = (-0.2, 0.6)·(-1, 1) = 0.8 > 0.5  → c
        b, g = (1, 1):    (c − b)·η = (0.8, -0.4)·(1, 1)  = 0.4 ≤ 0.5  → b stays
        c, g = (2, -7):   (a − c)·η = (0.2, -0.6)·(1, -1) = 0.8 > 0.5  → a
        padding, g = (5, 5): never.
    With ε = 0.5 every gain halves (0.4, 0.2, 0.4): nothing changes."""
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.01], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    table = neighbour_table(weight, 1)
    assert table.tolist() == [[0], [1], [4], [4], [2]]
    tokens = torch.tensor([[2, 3, 4, 0]])
    grad = torch.tensor([[[-3.0, 2.0], [1.0, 1.0], [2.0, -7.0], [5.0, 5.0]]])
    new, changed = replace_words(tokens, grad, weight, table, 0.5, 1.0, tokens != 0)
    assert new.tolist() == [[4, 3, 2, 0]] and changed.tolist() == [[True, False, True, False]]
    new, changed = replace_words(tokens, grad, weight, table, 0.5, 0.5, tokens != 0)
    assert new.tolist() == [[2, 3, 4, 0]] and not changed.any()


def test_the_word_attack_perturbation_is_exactly_the_replaced_words_vectors():
    model, batch = _model("text_cnn").eval(), _batch()
    with torch.no_grad():
        model.embedding.weight.mul_(20.0)  # large vectors: gains over the threshold
    adv = adversarial_examples(model, TASK, batch, 0.1, neighbours=3, threshold=0.5)
    assert set(adv) == {"tokens", "changed"} and adv["changed"].any()
    r = attack(model, TASK, batch, "word_replace", 0.1, neighbours=3, threshold=0.5)
    assert set(r) == {"tokens"}
    torch.testing.assert_close(model.embed(batch)["tokens"] + r["tokens"],
                               model.embed({**batch, "tokens": adv["tokens"]})["tokens"])
    assert (r["tokens"][~adv["changed"]] == 0).all()
    assert attack(_model("visual_cnn").eval(), TASK, batch, "word_replace", 0.1) == {}
    both = adversarial_examples(_model("mmn").eval(), TASK, batch, 0.1)
    assert set(both) == {"pixels", "tokens", "changed"} and both["pixels"].shape == batch["pixels"].shape


def test_crafting_runs_in_eval_mode_so_dropout_never_changes_the_examples():
    model, batch = _model("mmn", dropout=0.5).train(), _batch(n=16)
    with torch.no_grad():
        model.embedding.weight.mul_(20.0)
    first, second = (craft(model, TASK, batch, 0.1, 3, 0.5) for _ in range(2))
    assert model.training  # the mode is restored
    assert first.changed.any()
    assert torch.equal(first.batch["tokens"], second.batch["tokens"])
    assert torch.equal(first.r["pixels"], second.r["pixels"])
    # train-mode gradients (the failure this guards against) differ from one dropout draw to the next
    x = {k: v.detach().requires_grad_(True) for k, v in model.embed(batch).items()}
    g1, g2 = (torch.autograd.grad(TASK.loss(model(x, batch), batch), x["pixels"])[0] for _ in range(2))
    assert not torch.equal(g1.sign(), g2.sign())


# ---------------------------------------------------------------- the models (§III-A)


@pytest.mark.parametrize("name,cls,reads", [("visual_cnn", VisualCNN, {"pixels"}),
                                            ("text_cnn", TextCNN, {"tokens"}),
                                            ("mmn", MMN, {"pixels", "tokens"})])
def test_models_score_every_class_and_every_parameter_learns(name, cls, reads):
    model, batch = _model(name), _batch()
    assert isinstance(model, cls) and set(model.perturbable) == reads
    inputs = model.embed(batch)
    assert set(inputs) == reads
    out = model(inputs, batch)
    assert out.scores.shape == (6, 2) and torch.isfinite(out.scores).all()
    TASK.loss(out, batch).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_text_cnn_ignores_padding_reads_one_word_tweets_and_masks_windows():
    model, batch = _model("text_cnn").eval(), _batch()
    padded = {**batch, "tokens": F.pad(batch["tokens"], (0, 3)), "mask": F.pad(batch["mask"], (0, 3))}
    with torch.no_grad():
        a, b = (model(model.embed(x), x).scores for x in (batch, padded))
        one = {"tokens": torch.tensor([[5]]), "mask": torch.tensor([[True]])}
        short = model(model.embed(one), one).scores
        again = {"tokens": torch.tensor([[5, 0, 0]]), "mask": torch.tensor([[True, False, False]])}
        torch.testing.assert_close(short, model(model.embed(again), again).scores)
    torch.testing.assert_close(a, b)
    assert torch.isfinite(short).all()


def test_multi_input_models_need_every_input_and_the_others_need_one():
    spec = tweet_spec(has_image=True)
    for name in ("visual_cnn", "text_cnn", "mmn", "lstm_attention"):
        assert model_problems(ModelConfig(name=name), spec) == [], name
    assert model_problems(ModelConfig(name="mmn"), token_spec()) == [
        "model.name = 'mmn' reads pixels and tokens, the dataset memory://tokens has tokens; "
        "use model.name = 'lstm' or 'lstm_attention' or 'text_cnn'"]


def test_a_per_row_has_image_column_becomes_a_bool_vector_in_the_batch():
    table = pa.table({"has_image": [True, False, True]})
    flag = column_tensor(table, InputSpec("has_image", "has_image", (), "bool"), 10)
    assert flag.dtype == torch.bool and flag.tolist() == [True, False, True]
    data = TensorData({"tokens": torch.tensor([[2, 3, 0], [4, 0, 0], [5, 6, 7]]),
                       "pixels": torch.zeros(3, 3, 4, 4, dtype=torch.uint8), "has_image": flag},
                      torch.tensor([0, 1, 0]), ["a", "b", "c"])
    batch = make_batch(data, torch.tensor([1, 2]), torch.device("cpu"))
    assert batch["has_image"].tolist() == [False, True] and batch["pixels"].dtype == torch.float32


# ---------------------------------------------------------------- the mmat term (online Algorithm 1)


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (100x slower when loaded)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mmat_trains_the_mmn_on_a_generated_problem_and_replaces_words_as_it_goes(one_thread):
    """Label 1 when the tweet has a word among ids 2-9 and the image is bright (generated)."""
    cfg = load_config(None, ['model.name="mmn"', 'regime.name="mmat"', "regime.epsilon=0.1",
                             "regime.neighbours=3", "regime.threshold=0.05", "model.dropout=0.5"])
    spec = tweet_spec(vocab_size=40)
    assert check(cfg, spec) == []
    torch.manual_seed(0)
    model = build_model(cfg.model.model_copy(update=SMALL), spec)
    regime = build_regime(cfg.regime)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch(n=48, t=6)
    key = ((batch["tokens"] >= 2) & (batch["tokens"] < 10)).any(1)
    batch["pixels"] = batch["pixels"] * 0.5 + 0.5 * key.float().view(-1, 1, 1, 1)
    batch["label"] = key.long()
    logs = [train_step(model, TASK, regime, opt, batch, grad_clip=5.0) for _ in range(40)]
    assert logs[-1]["clean_loss"] < 0.5 * logs[0]["clean_loss"]
    assert logs[-1]["adv_loss"] < logs[0]["adv_loss"]
    assert logs[0]["replaced"] > 0
    torch.testing.assert_close(torch.tensor(logs[-1]["loss"]),
                               torch.tensor(logs[-1]["clean_loss"] + logs[-1]["adv_loss"]))


def test_mmat_reads_its_keys_and_refuses_keys_it_does_not():
    assert check(load_config(None, ['regime.name="mmat"', "regime.neighbours=5"]), tweet_spec()) == []
    problems = check(load_config(None, ['regime.name="at"', "regime.threshold=0.3"]))
    assert any("regime.threshold = 0.3 is not used by regime 'at'" in p and "mmat" in p for p in problems)
    term = build_regime(RegimeConfig(name="mmat", epsilon=0.2, lam=0.5, neighbours=7, threshold=0.1)).terms[0]
    assert (term.epsilon, term.lam, term.neighbours, term.threshold) == (0.2, 0.5, 7, 0.1)
