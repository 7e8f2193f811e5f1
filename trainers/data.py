"""Shards → tensors and batches, for one worker's slice, as the dataset spec describes them.

A worker reads only the Parquet parts that overlap its contiguous row range of the
split (rank r of w gets rows [r·N/w, (r+1)·N/w)), using the part row counts in the
manifest, so I/O scales down with the number of workers and every worker knows
every other worker's slice size without talking to it (equal step counts per epoch
keep the gradient all-reduce in lockstep). Parts are shuffled at write time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from advorch.pipelines.shards import _fs, split_parts
from advorch.pipelines.spec import DatasetSpec, InputSpec


@dataclass
class TensorData:
    """One slice of a split as tensors: inputs by name as stored (tokens (N, T) int64 0-padded,
    features (N, T, F) float32, pixels (N, C, H, W) uint8), labels (N,) int64, row ids."""

    inputs: dict[str, Tensor]
    labels: Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def serving_inputs(self, n: int | None = None) -> Tensor:
        """The first n rows as the serving wrapper takes them: the one input (token ids, features,
        or pixels as float32 in [0, 1]), or several packed into one float32 (N, W) array
        (`serving_layout`): MLflow's torch models serve one array, not a dict."""
        rows = {k: as_model_input(k, x[:n] if n is not None else x) for k, x in self.inputs.items()}
        if len(rows) == 1:
            return next(iter(rows.values()))
        return torch.cat([rows[k].reshape(len(rows[k]), -1).float() for k, _ in self.serving_layout()], dim=1)

    def serving_layout(self) -> list[tuple[str, tuple[int, ...]]] | None:
        """How `serving_inputs` packs several inputs: (name, per-row shape) in name order; None
        for one input (served as it is)."""
        if len(self.inputs) == 1:
            return None
        return [(k, tuple(x.shape[1:])) for k, x in sorted(self.inputs.items())]


def unpack(packed: Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """A packed serving array (`TensorData.serving_inputs`) back to the batch the model reads:
    token ids as int64 with their mask, a one-value column (has_image) as bool."""
    batch, at = {}, 0
    for name, shape in layout:
        width = int(np.prod(shape, dtype=np.int64))
        x = packed[:, at:at + width].reshape(len(packed), *shape)
        at += width
        if name == "tokens":
            x = x.round().long()
            batch["mask"] = x != 0
        elif not shape:
            x = x != 0
        batch[name] = x
    return batch


def as_model_input(name: str, x: Tensor) -> Tensor:
    """Stored values → what the model reads: uint8 pixels to float32 in [0, 1]."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Row range [start, stop) of `rank` in a split of n rows shared by `world` workers."""
    return n * rank // world, n * (rank + 1) // world


def read_rows(spec: DatasetSpec, split: str, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a split (id, label and the input columns), reading only the parts
    that overlap them."""
    columns = ["id", *(i.column for i in spec.inputs.values()), "label"]
    fs, base = _fs(spec.uri)
    tables, offset = [], 0
    for part in split_parts(spec.manifest, split):
        lo, hi = offset, offset + part["rows"]
        offset = hi
        if hi <= start or lo >= stop:
            continue
        t = pq.read_table(f"{base}/{part['path']}", columns=columns, filesystem=fs)
        tables.append(t.slice(max(start - lo, 0), min(stop, hi) - max(start, lo)))
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def column_tensor(table: pa.Table, spec: InputSpec, max_length: int) -> Tensor:
    """One input column as a tensor: token lists padded (or cut to their first `max_length`) into
    (N, T); fixed-shape lists reshaped into (N, *shape) in the stored dtype; one value per row
    (shape [], e.g. a bool `has_image`) as (N,)."""
    column = table.column(spec.column).combine_chunks()
    if spec.variable_length:
        return pad_tokens(column, max_length)
    if not spec.shape:
        values = column.to_numpy(zero_copy_only=False).astype(spec.dtype)
        return torch.from_numpy(np.ascontiguousarray(values))
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.ascontiguousarray(flat.astype(spec.dtype)).reshape(len(table), *spec.shape))


def pad_tokens(tokens: pa.ListArray, max_length: int) -> Tensor:
    """Token lists → one (N, T) int64 tensor, 0-padded, each cut to its first max_length."""
    lengths = np.minimum(np.diff(tokens.offsets.to_numpy()), max_length)
    flat = tokens.flatten().to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy()
    out = np.zeros((len(lengths), max(int(lengths.max(initial=1)), 1)), dtype=np.int64)
    # vectorised scatter: position of every kept token inside its row
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, col] = flat[offsets[:-1][row] - offsets[0] + col]
    return torch.from_numpy(out)


def to_tensors(table: pa.Table, spec: DatasetSpec, max_length: int) -> TensorData:
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    inputs = {name: column_tensor(table, i, max_length) for name, i in spec.inputs.items()}
    return TensorData(inputs, labels, table.column("id").to_pylist())


def load_slice(spec: DatasetSpec, split: str, rank: int = 0, world: int = 1,
               max_length: int = 10**9) -> TensorData:
    """This worker's slice of a split as tensors."""
    start, stop = slice_bounds(spec.split_rows[split], rank, world)
    return to_tensors(read_rows(spec, split, start, stop), spec, max_length)


def steps_per_epoch(n_rows: int, world: int, batch_size: int) -> int:
    """Batches per worker per epoch: the smallest slice decides, so all ranks agree."""
    smallest = min(slice_bounds(n_rows, r, world)[1] - slice_bounds(n_rows, r, world)[0]
                   for r in range(world))
    return max(1, -(-smallest // batch_size))


def make_batch(data: TensorData, idx: Tensor, device: torch.device) -> dict[str, Tensor]:
    """A batch dict: each input's rows (tokens trimmed to the longest sequence, with their
    mask (B, T); pixels as float32 in [0, 1]) and label (B,)."""
    batch = {}
    for name, x in data.inputs.items():
        x = x[idx]
        if name == "tokens":
            mask = x != 0
            t = max(int(mask.sum(1).max()), 1)
            x, batch["mask"] = x[:, :t], mask[:, :t].to(device)
        batch[name] = as_model_input(name, x).to(device)
    batch["label"] = data.labels[idx].to(device)
    return batch


def batches(data: TensorData, batch_size: int, device: torch.device, *, steps: int | None = None,
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
