"""Initial word (or page) embeddings: a dataset's own side file, or a word2vec / GloVe text file.

The paper pretrained its MR embeddings on Amazon reviews; users who have such vectors
point `model.pretrained_vectors` at them. Format: one `token v1 … vD` line per word;
word2vec's optional `N D` header line is skipped. Tokens missing from the file keep
their random initialisation; padding stays zero.
"""

from __future__ import annotations

import io
from typing import Any

import fsspec
import numpy as np
import torch
from torch import Tensor


def load_dataset_vectors(data: str, manifest: dict[str, Any], dim: int) -> Tensor:
    """The (vocab_size, D) matrix a pipeline stored as side file embeddings.npy.

    Raises:
        ValueError: D is not the model's embedding_dim (the fix is named).
    """
    from advorch.pipelines.shards import read_side_file

    weights = np.load(io.BytesIO(read_side_file(data, "embeddings.npy", manifest)))
    if weights.shape != (manifest["vocab_size"], dim):
        raise ValueError(f"{data}: the dataset's embeddings are {weights.shape[0]} x {weights.shape[1]}, "
                         f"the model wants {manifest['vocab_size']} x {dim}; set model.embedding_dim = "
                         f"{weights.shape[1]} or model.init_embeddings = \"random\"")
    return torch.from_numpy(weights)


def load_word_vectors(uri: str, vocab: list[str], dim: int, init: Tensor | None = None,
                      lowercase: bool = True) -> tuple[Tensor, int]:
    """(vocab_size, dim) matrix with the file's vectors for the tokens it has; (matrix, found).

    Raises:
        ValueError: a vector's length is not `dim` (the line number is named).
    """
    index = {t: i for i, t in enumerate(vocab)}
    weights = init.clone() if init is not None else torch.randn(len(vocab), dim)
    found = 0
    with fsspec.open(uri, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header: "<count> <dim>"
            token = parts[0].lower() if lowercase else parts[0]
            if token not in index:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(f"{uri} line {n}: vector of {len(parts) - 1} values, the model's "
                                 f"embedding_dim is {dim}; set model.embedding_dim = {len(parts) - 1}")
            weights[index[token]] = torch.tensor([float(x) for x in parts[1:]])
            found += 1
    weights[0] = 0  # padding
    return weights, found
