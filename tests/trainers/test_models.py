"""LSTM / LSTM-Attention (Jia et al. eq. 4-10) on tiny inputs."""

import torch

from advorch.config import ModelConfig
from advorch.trainers.models import PerturbableModel, build_model
from advorch.trainers.tasks.classification import Serving
from tests.trainers.specs import token_spec


def _batch(tokens):
    tokens = torch.tensor(tokens)
    return {"tokens": tokens, "mask": tokens != 0, "label": torch.zeros(len(tokens), dtype=torch.long)}


def test_attention_is_a_distribution_over_real_steps_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dim=8, embedding_dim=6), token_spec(20, 2)).eval()
    batch = _batch([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
    out = model(model.embed(batch), batch)
    assert out.scores.shape == (2, 2)
    assert out.attention.shape == (2, 5)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
    assert torch.all(out.attention[0, 3:] == 0)
    assert torch.all(out.attention[1] > 0)


def test_padding_does_not_change_the_output():
    torch.manual_seed(0)
    for name in ("lstm", "lstm_attention"):
        for bidirectional in (False, True):  # the backward pass must start on the last real step
            cfg = ModelConfig(name=name, hidden_dim=8, embedding_dim=6, bidirectional=bidirectional)
            model = build_model(cfg, token_spec(20, 3)).eval()
            short, padded = _batch([[3, 4, 5]]), _batch([[3, 4, 5, 0, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12]])
            a = model(model.embed(short), short).scores
            b = model(model.embed(padded), padded).scores[:1]
            torch.testing.assert_close(a, b)


def test_bidirectional_states_see_the_whole_sequence():
    """Step 0's state depends on the last token only when the LSTM also reads backwards."""
    torch.manual_seed(0)
    for bidirectional, width in ((False, 8), (True, 16)):
        cfg = ModelConfig(hidden_dim=8, embedding_dim=6, bidirectional=bidirectional)
        model = build_model(cfg, token_spec(20, 2)).eval()
        x, y = _batch([[3, 4, 5, 6]]), _batch([[3, 4, 5, 9]])
        hx, hy = (model(model.embed(b), b).hidden["lstm"] for b in (x, y))
        assert hx.shape == (1, 4, width)
        assert torch.equal(hx[0, 0], hy[0, 0]) != bidirectional


def test_plain_lstm_has_no_attention_and_models_expose_embed():
    model = build_model(ModelConfig(name="lstm", hidden_dim=8, embedding_dim=6), token_spec(20, 2))
    assert isinstance(model, PerturbableModel)
    batch = _batch([[1, 2, 0]])
    e = model.embed(batch)
    assert list(e) == ["tokens"] and e["tokens"].shape == (1, 3, 6)
    assert model.perturbable["tokens"].mask == "mask" and model.perturbable["tokens"].bounds is None
    assert model(e, batch).attention is None


def test_serving_wrapper_returns_probabilities():
    model = build_model(ModelConfig(hidden_dim=8, embedding_dim=6), token_spec(20, 2)).eval()
    p = Serving(model)(torch.tensor([[3, 4, 0], [5, 0, 0]]))
    torch.testing.assert_close(p.sum(1), torch.ones(2))


def test_pretrained_word_vectors_fill_known_tokens(tmp_path):
    """A small word2vec text file generated here (the real pretrained vectors are not available)."""
    import pytest

    from advorch.trainers.models.pretrained import load_word_vectors

    path = tmp_path / "vectors.txt"
    path.write_text("3 2\nGood 1.0 2.0\nbad -1.0 0.5\nunseen 9 9\n")
    vocab = ["<pad>", "<unk>", "good", "bad", "film"]
    init = torch.full((5, 2), 7.0)
    weights, found = load_word_vectors(str(path), vocab, 2, init=init)
    assert found == 2
    torch.testing.assert_close(weights[2], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(weights[3], torch.tensor([-1.0, 0.5]))
    torch.testing.assert_close(weights[4], torch.tensor([7.0, 7.0]))  # not in the file: kept
    assert torch.all(weights[0] == 0)
    with pytest.raises(ValueError, match="line 2: vector of 2 values.*embedding_dim is 3"):
        load_word_vectors(str(path), vocab, 3)
