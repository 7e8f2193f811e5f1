"""Sequence shards → padded tensors and batches, for one worker's slice.

A worker reads only the Parquet parts that overlap its contiguous row range of the
split (rank r of w gets rows [r·N/w, (r+1)·N/w)), using the part row counts in the
manifest, so I/O scales down with the number of workers and every worker knows
every other worker's slice size without talking to it (equal step counts per epoch
keep the gradient all-reduce in lockstep). Parts are shuffled at write time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from advorch.pipelines.shards import _fs, read_manifest, split_parts


@dataclass
class SequenceData:
    """tokens (N, T) int64 0-padded, or features (N, T, F) float32 (MODIS windows); labels (N,)
    int64; ids (N,) row ids."""

    tokens: Tensor | None
    labels: Tensor
    ids: list[str]
    features: Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> Tensor:
        """What the model reads: the token ids or the feature sequences."""
        return self.tokens if self.features is None else self.features


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Row range [start, stop) of `rank` in a split of n rows shared by `world` workers."""
    return n * rank // world, n * (rank + 1) // world


def input_column(manifest: dict[str, Any]) -> str:
    """"features" for datasets of feature sequences (shapes.features = [T, F]), else "tokens"."""
    return "features" if "features" in manifest.get("shapes", {}) else "tokens"


def read_rows(root: str, split: str, start: int, stop: int,
              manifest: dict[str, Any] | None = None) -> pa.Table:
    """Rows [start, stop) of a split, reading only the parts that overlap them."""
    manifest = manifest or read_manifest(root)
    column = input_column(manifest)
    fs, base = _fs(root)
    tables, offset = [], 0
    for part in split_parts(manifest, split):
        lo, hi = offset, offset + part["rows"]
        offset = hi
        if hi <= start or lo >= stop:
            continue
        t = pq.read_table(f"{base}/{part['path']}", columns=["id", column, "label"], filesystem=fs)
        tables.append(t.slice(max(start - lo, 0), min(stop, hi) - max(start, lo)))
    return pa.concat_tables(tables) if tables else pa.table({"id": [], column: [], "label": []})


def to_tensors(table: pa.Table, max_length: int, shape: list[int] | None = None) -> SequenceData:
    """Pad (or cut to the first `max_length`) token lists into one (N, T) tensor; or, with
    `shape` [T, F], reshape the flat feature lists into (N, T, F)."""
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    if shape is not None:
        flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        features = torch.from_numpy(flat.astype(np.float32).reshape(len(labels), *shape))
        return SequenceData(None, labels, table.column("id").to_pylist(), features)
    tokens = table.column("tokens").combine_chunks()
    lengths = np.minimum(np.diff(tokens.offsets.to_numpy()), max_length)
    flat = tokens.flatten().to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy()
    out = np.zeros((len(lengths), max(int(lengths.max(initial=1)), 1)), dtype=np.int64)
    # vectorised scatter: position of every kept token inside its row
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, col] = flat[offsets[:-1][row] - offsets[0] + col]
    return SequenceData(torch.from_numpy(out), labels, table.column("id").to_pylist())


def load_slice(root: str, split: str, rank: int, world: int, max_length: int,
               manifest: dict[str, Any] | None = None) -> SequenceData:
    """This worker's slice of a split as tensors."""
    manifest = manifest or read_manifest(root)
    start, stop = slice_bounds(manifest["splits"][split]["rows"], rank, world)
    return to_tensors(read_rows(root, split, start, stop, manifest), max_length,
                      manifest["shapes"]["features"] if input_column(manifest) == "features" else None)


def steps_per_epoch(n_rows: int, world: int, batch_size: int) -> int:
    """Batches per worker per epoch: the smallest slice decides, so all ranks agree."""
    smallest = min(slice_bounds(n_rows, r, world)[1] - slice_bounds(n_rows, r, world)[0]
                   for r in range(world))
    return max(1, -(-smallest // batch_size))


def make_batch(data: SequenceData, idx: Tensor, device: torch.device) -> dict[str, Tensor]:
    """A batch dict trimmed to its longest sequence: tokens (B, T) (or features (B, T, F)),
    mask (B, T), label (B,)."""
    if data.features is not None:  # fixed-length windows: every step is real
        features = data.features[idx]
        return {"features": features.to(device), "mask": torch.ones(features.shape[:2], dtype=torch.bool,
                                                                       device=device),
                "label": data.labels[idx].to(device)}
    tokens = data.tokens[idx]
    mask = tokens != 0
    t = max(int(mask.sum(1).max()), 1)
    tokens, mask = tokens[:, :t], mask[:, :t]
    return {"tokens": tokens.to(device), "mask": mask.to(device), "label": data.labels[idx].to(device)}


def batches(data: SequenceData, batch_size: int, device: torch.device, *, steps: int | None = None,
            shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, Tensor]]:
    """Batches over the data once, or, when shuffling for training, exactly `steps` full
    batches of a seeded permutation (wrapping around) so every rank takes as many steps."""
    n = len(data)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield make_batch(data, torch.arange(start, min(start + batch_size, n)), device)
        return
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for s in range(steps if steps is not None else -(-n // batch_size)):
        yield make_batch(data, order[torch.arange(s * batch_size, (s + 1) * batch_size) % n], device)
