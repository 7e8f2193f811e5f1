"""Worker slices of the real MR shards, read through the typed dataset spec."""

import pytest
import torch

from advorch.pipelines.shards import read_manifest
from advorch.pipelines.spec import read_spec
from advorch.trainers.data import batches, load_slice, slice_bounds, steps_per_epoch


def test_slices_cover_the_split_once():
    for n, w in [(10, 3), (4798, 2), (5, 5), (7, 1)]:
        bounds = [slice_bounds(n, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_worker_slices_of_real_shards_are_disjoint_and_complete(mr_shards):
    manifest = read_manifest(str(mr_shards))
    spec = read_spec(str(mr_shards))
    whole = load_slice(spec, "train", 0, 1, 100)
    parts = [load_slice(spec, "train", r, 3, 100) for r in range(3)]
    ids = [i for p in parts for i in p.ids]
    assert ids == whole.ids and len(set(ids)) == manifest["splits"]["train"]["rows"]
    # both classes in every worker's slice (parts are shuffled at write time)
    assert all(set(p.labels.tolist()) == {0, 1} for p in parts)


def test_batches_are_trimmed_padded_and_equal_in_count(mr_shards):
    data = load_slice(read_spec(str(mr_shards)), "val", 0, 1, 100)
    assert data.inputs["tokens"].shape[1] <= 100
    got = list(batches(data, 64, torch.device("cpu")))
    assert sum(len(b["label"]) for b in got) == len(data)
    for b in got:
        assert b["mask"][:, -1].any()  # trimmed to the longest sequence in the batch
        assert torch.all((b["tokens"] != 0) == b["mask"])
    steps = steps_per_epoch(len(data), 2, 32)
    assert len(list(batches(data, 32, torch.device("cpu"), steps=steps, shuffle=True))) == steps


def test_old_manifests_without_inputs_are_read_by_their_kind(mr_shards, tmp_path):
    """A manifest as advorch wrote it before the typed spec (no task, no inputs) still loads."""
    import json

    from advorch.pipelines.shards import ShardError
    from advorch.pipelines.spec import spec_from_manifest

    old = {k: v for k, v in read_manifest(str(mr_shards)).items() if k not in ("task", "inputs")}
    spec = spec_from_manifest(old, str(mr_shards))
    assert spec.task == "classification" and spec.inputs["tokens"].shape == (None,)
    assert load_slice(spec, "val").inputs["tokens"].dtype == torch.int64
    with pytest.raises(ShardError, match="rebuild it with `advorch preprocess`"):
        spec_from_manifest({**old, "kind": "tweets"}, "somewhere")
    assert json.dumps(spec.split_rows)  # plain numbers
