"""The shard contract (pipelines/shards.py): atomic builds, the manifest, cleanup,
fingerprints and the up-to-date check.

The tables and files here are tiny and generated to hit the contract's cases; they
are not data. The pipeline over the real MR corpus is tested in test_text.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from blake3 import blake3

from advorch import __version__
from advorch.pipelines.shards import (
    FORMAT,
    MANIFEST,
    DatasetWriter,
    Quarantine,
    ShardError,
    file_fingerprint,
    listed_files,
    read_manifest,
    read_side_file,
    read_split,
    sources_unchanged,
    write_part,
)

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.int64())])


def _table(prefix: str, start: int, n: int) -> pa.Table:
    return pa.table({"id": [f"{prefix}{i}" for i in range(start, start + n)],
                     "x": list(range(start, start + n))}, schema=SCHEMA)


def _build(root: Path, tag: str, sizes: dict[str, list[int]], side: bytes | None = b"[]",
           quarantined: int = 0, commit: bool = True) -> tuple[DatasetWriter, dict | None]:
    """One build of generated parts: `sizes` maps split → rows of each part."""
    writer = DatasetWriter(str(root), kind="test")
    splits = {}
    for split, part_rows in sizes.items():
        parts, start = [], 0
        for index, n in enumerate(part_rows):
            rows = write_part(writer.part_uri(split, index), _table(f"{tag}-{split}-", start, n))
            parts.append({"index": index, "rows": rows})
            start += n
        splits[split] = {"parts": parts, "classes": {"a": sum(part_rows)}}
    if side is not None:
        writer.write_side_file("vocab.json", side)
    quarantine = Quarantine()
    for i in range(quarantined):
        quarantine.add("gen.txt", f"empty line: no tokens #{i}", line=i + 1, raw=b"\x85 ")
    if not commit:
        return writer, None
    manifest = writer.commit(splits=splits, schema=SCHEMA,
                             sources=[{"path": "gen.txt", "size": 1, "mtime": 0.0, "blake3": tag}],
                             quarantine=quarantine, params={"tag": tag}, classes=["a"],
                             shapes={"x": []}, extra={"note": tag})
    return writer, manifest


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_readable(root: Path, manifest: dict) -> None:
    assert read_manifest(str(root)) == manifest
    for split, meta in manifest["splits"].items():
        table = read_split(str(root), split)
        assert table.num_rows == meta["rows"]
        assert table.schema.names == ["id", "x"]
    for name in manifest["side_files"]:
        read_side_file(str(root), name)


def test_commit_writes_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _, manifest = _build(root, "one", {"train": [3, 2], "test": [4]}, side=b'["<pad>", "a"]',
                         quarantined=2)
    on_disk = json.loads((root / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["format"] == FORMAT and manifest["kind"] == "test"
    assert manifest["producer"] == {"name": "advorch", "version": __version__}
    assert manifest["schema"] == {"id": "string", "x": "int64"}
    assert manifest["rows"] == 9
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 5, "test": 4}
    assert [p["rows"] for p in manifest["splits"]["train"]["parts"]] == [3, 2]
    assert manifest["splits"]["train"]["classes"] == {"a": 5}
    assert manifest["sources"] == [{"path": "gen.txt", "size": 1, "mtime": 0.0, "blake3": "one"}]
    assert manifest["params"] == {"tag": "one"} and manifest["note"] == "one"
    assert manifest["quarantine"]["count"] == 2
    assert manifest["quarantine"]["by_reason"] == {"empty line": 2}
    # every listed file exists, and nothing else is left in the dataset directory
    for rel in listed_files(manifest):
        assert (root / rel).is_file(), rel
    assert _listing(root) == listed_files(manifest) | {MANIFEST, "parts", "side", "quarantine"}
    assert read_side_file(str(root), "vocab.json") == b'["<pad>", "a"]'
    # split on "\n" only: records are JSON Lines, and str.splitlines() would also cut
    # at the U+0085 a raw cp1252 line can hold
    text = (root / manifest["quarantine"]["file"]).read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.split("\n") if line]
    assert [(r["source"], r["line"]) for r in records] == [("gen.txt", 1), ("gen.txt", 2)]
    assert records[0]["raw"] == "\x85 "  # raw bytes kept losslessly (latin-1)


def test_read_split_reads_exactly_the_listed_parts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _, manifest = _build(root, "one", {"train": [3, 2], "test": [4]})
    # an unlisted part in parts/ (e.g. left by a crashed build) must never be read
    pq.write_table(_table("intruder-", 0, 7), root / "parts" / "train-intruder-00000.parquet")
    train = read_split(str(root), "train")
    assert train.column("id").to_pylist() == [f"one-train-{i}" for i in range(5)]
    assert read_split(str(root), "test", columns=["x"]).column_names == ["x"]
    with pytest.raises(ShardError, match="'val'.*train, test"):
        read_split(str(root), "val")


def test_read_without_manifest_says_so(tmp_path: Path) -> None:
    assert read_manifest(str(tmp_path)) is None
    with pytest.raises(ShardError, match="no manifest.json"):
        read_split(str(tmp_path), "train")


def test_unknown_manifest_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(ShardError, match="unknown format"):
        read_manifest(str(tmp_path))


def test_second_commit_replaces_the_first_and_removes_its_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _, first = _build(root, "one", {"train": [3, 2], "test": [4]}, side=b"[1]", quarantined=1)
    _, second = _build(root, "two", {"train": [6], "test": [1, 1]}, side=b"[2]", quarantined=0)
    assert second["build_id"] != first["build_id"]
    assert read_manifest(str(root)) == second
    _assert_readable(root, second)
    assert read_split(str(root), "train").column("id").to_pylist() == [f"two-train-{i}" for i in range(6)]
    assert read_side_file(str(root), "vocab.json") == b"[2]"
    for rel in listed_files(first):
        assert not (root / rel).exists(), f"old build's {rel} was not removed"
    assert _listing(root) == listed_files(second) | {MANIFEST, "parts", "side", "quarantine"}


@pytest.mark.parametrize("how", ["abort", "exception"])
def test_failed_build_leaves_the_previous_state(tmp_path: Path, how: str) -> None:
    root = tmp_path / "ds"
    _, first = _build(root, "one", {"train": [3, 2], "test": [4]}, side=b"[1]")
    before = _listing(root)
    writer, _ = _build(root, "two", {"train": [6], "test": [2]}, side=b"[2]", commit=False)
    if how == "abort":
        writer.abort()
        assert not Path(writer.staging_uri).exists()
        assert _listing(root) == before
    else:
        # the build dies before commit without cleaning up (like a crash): only its
        # staging folder is new, and it is invisible to readers
        assert _listing(root) - before == {Path(writer.staging_uri).name} | {
            f"{Path(writer.staging_uri).name}/{f.name}" for f in Path(writer.staging_uri).iterdir()}
    assert read_manifest(str(root)) == first
    _assert_readable(root, first)
    assert read_split(str(root), "train").column("id").to_pylist() == [f"one-train-{i}" for i in range(5)]
    assert read_side_file(str(root), "vocab.json") == b"[1]"


def test_next_commit_cleans_stale_staging_and_orphans(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _build(root, "one", {"train": [2]})
    crashed, _ = _build(root, "two", {"train": [5]}, commit=False)
    assert Path(crashed.staging_uri).is_dir()
    # what a crash in the middle of a commit can leave: a moved part, a temp manifest
    (root / "parts" / "train-20261202T101010-c0ffee-00000.parquet").write_bytes(b"half")
    (root / f".{MANIFEST}.crashed.tmp").write_text("{")
    _, third = _build(root, "three", {"train": [1]})
    assert not Path(crashed.staging_uri).exists()
    assert _listing(root) == listed_files(third) | {MANIFEST, "parts", "side", "quarantine"}
    _assert_readable(root, third)


def test_unwritable_output_is_a_shard_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ShardError, match=f"cannot write to output folder {blocker}/ds"):
        DatasetWriter(str(blocker / "ds"), kind="test")


def test_file_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "source.txt"
    path.write_bytes(b"hello\nworld\n")
    fp = file_fingerprint(str(path))
    st = path.stat()
    assert fp == {"path": str(path), "size": 12, "mtime": st.st_mtime,
                  "blake3": blake3(b"hello\nworld\n").hexdigest()}

    # unchanged size and mtime: the known hash is reused, the file is not read again
    known = {**fp, "blake3": "known-hash"}
    assert file_fingerprint(str(path), known)["blake3"] == "known-hash"
    # a manifest record that survived a JSON round trip still matches
    assert file_fingerprint(str(path), json.loads(json.dumps(known)))["blake3"] == "known-hash"

    # same size, other mtime: recomputed
    path.write_bytes(b"HELLO\nworld\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = file_fingerprint(str(path), known)
    assert again["blake3"] == blake3(b"HELLO\nworld\n").hexdigest()
    assert again["mtime"] != fp["mtime"]

    # other size, same mtime: recomputed
    path.write_bytes(b"hello\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime == fp["mtime"]
    third = file_fingerprint(str(path), known)
    assert third["size"] == 6
    assert third["blake3"] == blake3(b"hello\n").hexdigest()

    # a record from a manifest written before BLAKE3 (sha256) is hashed anew, not trusted
    old = {k: v for k, v in third.items() if k != "blake3"} | {"sha256": "an old sha256"}
    assert file_fingerprint(str(path), old) == third
    assert not sources_unchanged({"sources": [old], "params": {}}, [third], {})


def test_sources_unchanged() -> None:
    a = {"path": "a.txt", "size": 1, "mtime": 1.0, "blake3": "aa"}
    b = {"path": "b.txt", "size": 2, "mtime": 2.0, "blake3": "bb"}
    manifest = {"sources": [{**a, "rows": 3}, b], "params": {"min_count": 1, "labels": {"a.txt": "x"}}}
    params = {"min_count": 1, "labels": {"a.txt": "x"}}
    assert sources_unchanged(manifest, [a, b], params)
    assert sources_unchanged(manifest, [b, a], params)  # order does not matter
    assert sources_unchanged(json.loads(json.dumps(manifest)), [a, b], params)
    assert not sources_unchanged(None, [a, b], params)
    assert not sources_unchanged(manifest, [a, b], {**params, "min_count": 2})
    assert not sources_unchanged(manifest, [a, b], {**params, "labels": {"a.txt": "y"}})
    assert not sources_unchanged(manifest, [a, {**b, "blake3": "changed"}], params)
    assert not sources_unchanged(manifest, [a], params)
    assert not sources_unchanged(manifest, [a, b, {**b, "path": "c.txt"}], params)
    # size or mtime changes alone do not matter: the content hash decides
    assert sources_unchanged(manifest, [a, {**b, "mtime": 99.0}], params)


def _edit(root: Path, change) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("path", ["../victim.txt", "/tmp/victim.txt", "parts/../../victim.txt",
                                  "s3://bucket/victim.txt", "parts/sub/x.parquet", "parts/.."])
def test_a_manifest_pointing_outside_its_dataset_is_refused_and_nothing_is_deleted(tmp_path, path):
    """Issue 22's case: a train part `../victim.txt` (and a side file on the same) must not make the
    next rebuild delete the victim; the manifest is refused on read, naming the entry."""
    root, victim = tmp_path / "ds", tmp_path / "victim.txt"
    victim.write_text("not advorch's")
    _build(root, "one", {"train": [2]})

    def point_out(m: dict) -> None:
        m["splits"]["train"]["parts"].append({"path": path, "rows": 1})
        m["side_files"]["evil"] = path
    _edit(root, point_out)
    with pytest.raises(ShardError, match="not a file of this dataset") as e:
        read_manifest(str(root))
    assert repr(path) in str(e.value) and "nothing was read or deleted" in str(e.value)
    with pytest.raises(ShardError):
        read_split(str(root), "train")
    with pytest.raises(ShardError):  # a rebuild reads the previous manifest before it commits
        _build(root, "two", {"train": [3]})
    assert victim.read_text() == "not advorch's"


def test_a_symlink_out_of_the_dataset_is_refused_and_a_rebuild_never_follows_one(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.parquet").write_bytes(b"someone else's")
    _build(root, "one", {"train": [2]})
    link = root / "parts" / "train-20261202T101010-abcdef-00009.parquet"  # build-named, points out
    link.symlink_to(outside / "data.parquet")
    _edit(root, lambda m: m["splits"]["train"]["parts"].append({"path": f"parts/{link.name}", "rows": 1}))
    with pytest.raises(ShardError, match="not a file of this dataset"):
        read_manifest(str(root))
    _edit(root, lambda m: m["splits"]["train"]["parts"].pop())  # listed no more: an orphan link
    (root / "parts" / "notes.txt").write_text("a user's file, not build-named")
    _, second = _build(root, "two", {"train": [3]})
    assert not link.is_symlink()  # the link itself is removed ...
    assert (outside / "data.parquet").read_bytes() == b"someone else's"  # ... never its target
    assert (root / "parts" / "notes.txt").exists()  # and what no build wrote stays
    _assert_readable(root, second)
