"""Static word vectors from a pretrained encoder (`advorch vectors export`): for each word of a
word-level dataset's vocabulary, its contextual encoder states averaged over its occurrences in
the train split (the pieces of one occurrence averaged first), written in the GloVe text format
that `model.pretrained_vectors` loads. Only the train split is read, so no test sentence shapes
the vectors a model starts from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from advorch.encoders import load_encoder, wordpiece


def contextual_means(tokens: torch.Tensor, vocab: list[str], encoder: str, batch_size: int = 64,
                     progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums / counts (V, H) mean vectors, counts (V,)) of the word ids in `tokens` (N, T),
    0-padded, over all their occurrences."""
    model = load_encoder(encoder).eval()
    tokenizer = wordpiece(encoder)
    width = model.config.hidden_size
    sums, counts = torch.zeros(len(vocab), width), torch.zeros(len(vocab))
    starts = range(0, len(tokens), batch_size)
    for start in progress(starts) if progress else starts:
        rows = tokens[start:start + batch_size]
        words = [[vocab[i] for i in row.tolist() if i] or ["."] for row in rows]
        encodings = tokenizer.encode_batch(words, is_pretokenized=True)
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        word = torch.full((len(rows), length), -1)  # the occurrence each piece belongs to, -1: none
        for b, e in enumerate(encodings):
            ids[b, :len(e.ids)] = torch.tensor(e.ids)
            word[b, :len(e.ids)] = torch.tensor([-1 if w is None else w for w in e.word_ids])
        with torch.no_grad():
            states = model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        real = word >= 0
        # occurrence (b, w) → its dataset word id; pieces of one occurrence averaged first
        slot = (torch.arange(len(rows))[:, None] * rows.shape[1] + word.clamp(min=0))[real]
        occ_sum = torch.zeros(len(rows) * rows.shape[1], width).index_add_(0, slot, states[real])
        occ_n = torch.zeros(len(rows) * rows.shape[1]).index_add_(0, slot, torch.ones(len(slot)))
        kept = occ_n > 0
        word_ids = rows.reshape(-1)[kept]
        sums.index_add_(0, word_ids, occ_sum[kept] / occ_n[kept, None])
        counts.index_add_(0, word_ids, torch.ones(len(word_ids)))
    return sums / counts.clamp(min=1)[:, None], counts


def export(dataset: str, out: Path, encoder: str = "all-MiniLM-L6-v2", progress=None) -> int:
    """Write `out` (GloVe text: "word v1 … vH" per line) for `dataset`'s vocabulary; the number
    of words written (those that occur in the train split; padding and OOV never)."""
    from advorch.pipelines.shards import read_side_file
    from advorch.pipelines.spec import read_spec
    from advorch.trainers.data import load_slice

    spec = read_spec(dataset)
    if spec.manifest.get("params", {}).get("tokenizer", "words") != "words":
        raise ValueError(f"{dataset} holds word pieces: export reads a word-level dataset "
                         "(data.tokenizer = \"words\")")
    vocab = json.loads(read_side_file(dataset, "vocab.json", spec.manifest))
    means, counts = contextual_means(load_slice(spec, "train").inputs["tokens"], vocab, encoder,
                                     progress=progress)
    tmp = out.with_name(out.name + ".partial")
    written = 0
    with tmp.open("w", encoding="utf-8") as f:
        for i in torch.nonzero(counts[2:] > 0).flatten().add(2).tolist():  # 0: padding, 1: OOV
            f.write(vocab[i] + " " + " ".join(f"{v:.5f}" for v in means[i].tolist()) + "\n")
            written += 1
    tmp.replace(out)  # a crash never leaves half a file under the name a config points at
    return written
