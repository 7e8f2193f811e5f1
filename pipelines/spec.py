"""The typed dataset spec: the one reader that turns a manifest into what trainers build from.

A manifest (shards.py) says which kind of data it holds, which task it serves and its named
inputs: per input the Parquet column, the per-row shape (None for a variable length), the
stored dtype and, where the values have one, their valid range. Trainers build models,
tasks and batches from this spec only; they never look for keys in the manifest.

    inputs = {"tokens":   {"column": "tokens",   "shape": [None],    "dtype": "int64"},
              "features": {"column": "features", "shape": [T, F],    "dtype": "float32"},
              "pixels":   {"column": "pixels",   "shape": [C, H, W], "dtype": "uint8", "range": [0, 1]}}

Manifests written before the spec existed (advorch 0.1 text, clickstream and modis builds)
have no `inputs`: they are read by their kind, here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advorch.pipelines.shards import ShardError, read_manifest

TASKS = ("classification", "ranking")


@dataclass(frozen=True)
class InputSpec:
    """One named input: its column, per-row shape (None: variable), stored dtype, value range.

    uint8 inputs (pixels) are stored as bytes and read as float32 in [0, 1].
    """

    name: str
    column: str
    shape: tuple[int | None, ...]
    dtype: str
    range: tuple[float, float] | None = None

    @property
    def variable_length(self) -> bool:
        return any(d is None for d in self.shape)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds, as trainers need it (see the module docstring)."""

    uri: str
    kind: str
    task: str
    inputs: dict[str, InputSpec]
    classes: list[str]
    split_rows: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    vocab_size: int = 0
    side_files: dict[str, str] = field(default_factory=dict)
    feature_stats: dict[str, list[float]] | None = None
    feature_names: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def input(self, name: str) -> InputSpec:
        try:
            return self.inputs[name]
        except KeyError:
            raise ShardError(f"{self.uri}: the dataset has no input {name!r} "
                             f"(it has: {', '.join(self.inputs) or 'none'})") from None


def _legacy_inputs(manifest: dict[str, Any], uri: str) -> dict[str, dict[str, Any]]:
    """The inputs of a manifest written before `inputs` existed, by its kind."""
    kind, shapes = manifest.get("kind"), manifest.get("shapes", {})
    if kind in ("text", "clickstream"):
        return {"tokens": {"column": "tokens", "shape": [None], "dtype": "int64"}}
    if kind == "modis" and "features" in shapes:
        return {"features": {"column": "features", "shape": shapes["features"], "dtype": "float32"}}
    if kind == "modis":
        return {}  # a cube-only build: nothing to train on
    raise ShardError(f"{uri}: manifest of kind {kind!r} without `inputs`, written by an older advorch; "
                     "rebuild it with `advorch preprocess` (the sources are listed in its manifest)")


def spec_from_manifest(manifest: dict[str, Any], uri: str) -> DatasetSpec:
    """The typed spec of a manifest (see the module docstring).

    Raises:
        ShardError: an unknown task, or an old manifest of a kind this reader cannot place.
    """
    task = manifest.get("task", "classification")
    if task not in TASKS:
        raise ShardError(f"{uri}: unknown task {task!r} in the manifest (known: {', '.join(TASKS)})")
    raw = manifest.get("inputs") or _legacy_inputs(manifest, uri)
    inputs = {name: InputSpec(name, d.get("column", name), tuple(d["shape"]), d["dtype"],
                              tuple(d["range"]) if d.get("range") is not None else None)
              for name, d in raw.items()}
    splits = manifest.get("splits", {})
    return DatasetSpec(
        uri=uri, kind=manifest.get("kind", "unknown"), task=task, inputs=inputs,
        classes=list(manifest.get("classes", [])),
        split_rows={k: int(v["rows"]) for k, v in splits.items()},
        class_counts={k: dict(v.get("classes", {})) for k, v in splits.items()},
        vocab_size=int(manifest.get("vocab_size", 0)),
        side_files=dict(manifest.get("side_files", {})),
        feature_stats=manifest.get("feature_stats"),
        feature_names=list(manifest.get("feature_names", [])),
        manifest=manifest,
    )


def read_spec(uri: str) -> DatasetSpec:
    """The spec of the dataset at `uri`.

    Raises:
        FileNotFoundError: no manifest there (the message says what to run).
    """
    manifest = read_manifest(uri)
    if manifest is None:
        raise FileNotFoundError(f"{uri} holds no manifest.json: run `advorch preprocess` first")
    return spec_from_manifest(manifest, uri)
