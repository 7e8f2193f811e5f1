"""What every pipeline shares: its error, its summary, the split and the vocabulary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD, OOV = "<pad>", "<unk>"
SPLITS = ("train", "val", "test")
UNUSED_NAMES = 100
# the manifest `inputs` of a dataset of token sequences (spec.py)
TOKENS = {"tokens": {"column": "tokens", "shape": [None], "dtype": "int64"}}


class PipelineError(RuntimeError):
    """The run cannot go on; the message names the file (and line) and the fix."""


def unused(source: str, what: str, names: Iterable[str], declared: bool = False) -> dict[str, Any]:
    """A manifest `unused` record: parts of a source a reader did not use (`what`: "columns",
    "bands", "layers", "rows", "files"), so nothing is dropped without a word. `declared`: the
    config says to leave them (not shown as a warning in the run summary)."""
    names = [str(n) for n in names]
    # the first UNUSED_NAMES names: a tree with 10^5 stray files must not make the manifest huge
    return {"source": source, "what": what, "names": names[:UNUSED_NAMES], "count": len(names),
            "declared": declared}


@dataclass
class Summary:
    """What one pipeline run did."""

    output: str
    up_to_date: bool
    rows: int
    quarantined: int
    splits: dict[str, int]
    manifest: dict[str, Any]

    @property
    def unused(self) -> list[dict[str, Any]]:
        """What the readers left (see `unused`) and the config did not say to leave."""
        return [u for u in self.manifest.get("unused", []) if not u.get("declared")]

    @property
    def warnings(self) -> list[str]:
        """Loud notes of the build (dataset health the user allowed, see health.py)."""
        return list(self.manifest.get("warnings", []))

    @classmethod
    def of(cls, output: str, manifest: dict[str, Any], up_to_date: bool = False) -> Summary:
        """The summary of the build a manifest describes."""
        return cls(output, up_to_date, manifest["rows"], manifest["quarantine"]["count"],
                   {k: v["rows"] for k, v in manifest["splits"].items()}, manifest)


def build_vocab(token_lists: Iterable[list[str]], min_count: int, max_size: int) -> dict[str, int]:
    """Token → id: 0 is padding, 1 is OOV, then by descending count (ties by token)."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {t: i for i, t in enumerate([PAD, OOV, *kept[: max_size - 2]])}


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float,
                     seed: int) -> np.ndarray:
    """Split name per row, stratified by class and seeded (see `stratified_codes`)."""
    return np.array(SPLITS, dtype=object)[stratified_codes(labels, test_fraction, val_fraction, seed)]


def stratified_codes(labels: np.ndarray, test_fraction: float, val_fraction: float,
                     seed: int) -> np.ndarray:
    """Split per row as an index into SPLITS (0 train, 1 val, 2 test), stratified by class, seeded.

    Each class gives `test_fraction` of its rows to test and `val_fraction` of the rest
    to val. Per-class counts are floored and the leftover rows go to the classes with
    the largest remainders, so the totals match the fractions exactly (10,662 MR rows
    at 0.5 → 5,331 test, though each class has an odd 5,331).
    """
    classes, sizes = np.unique(labels, return_counts=True)

    def allocate(n: np.ndarray, fraction: float) -> np.ndarray:
        exact = n * fraction
        out = np.floor(exact).astype(int)
        extra = int(round(exact.sum())) - out.sum()
        out[np.argsort(-(exact - out), kind="stable")[:extra]] += 1
        return out

    n_test = allocate(sizes, test_fraction)
    n_val = allocate(sizes - n_test, val_fraction)
    split = np.zeros(len(labels), np.int8)
    rng = np.random.default_rng(seed)
    for c, t, v in zip(classes, n_test, n_val, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        split[idx[:t]] = 2
        split[idx[t:t + v]] = 1
    return split


def word2vec(sentences: list[list[str]], vocab: list[str], dim: int, window: int, epochs: int, seed: int,
             workers: int = 1) -> np.ndarray:
    """Word2Vec (skip-gram; 1 worker is deterministic) on `sentences` → (vocab, dim) float32 rows
    for the vocabulary: padding 0, OOV the mean vector, a token Word2Vec did not see a small
    random vector. The starting embeddings of the clickstream pages and the tweets' words."""
    from gensim.models import Word2Vec

    model = Word2Vec([s for s in sentences if len(s)], vector_size=dim, window=window, min_count=1, sg=1,
                     epochs=epochs, workers=workers, seed=seed)
    out = np.random.default_rng(seed).normal(0, 0.1, (len(vocab), dim)).astype(np.float32)
    where = np.array([model.wv.key_to_index.get(v, -1) for v in vocab])
    out[where >= 0] = model.wv.vectors[where[where >= 0]]
    out[1] = model.wv.vectors.mean(0) if len(model.wv) else 0
    out[0] = 0
    return out

