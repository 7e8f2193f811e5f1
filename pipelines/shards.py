"""The shard contract every pipeline writes and every trainer reads (DESIGN.md).

A dataset directory (a local path or any fsspec URI) holds:

    manifest.json            the one thing readers trust; written last
    parts/*.parquet          data parts, listed in the manifest with their row counts
    side/*                   vocabulary, embeddings … listed under "side_files"
    quarantine/*.jsonl       rejected rows or files, one JSON record each, with the reason
    history.jsonl            one record per preprocess run; .advorch.lock: the run lock
                             (both from pipelines/history.py, never listed in the manifest)

A manifest is input, not truth (datasets live on shared storage others write to): every path it
lists must be a direct child of parts/, side/ or quarantine/ that resolves inside the dataset
(no "..", no absolute path or other URI, no symlink out), or `read_manifest` refuses it; and a
rebuild deletes only entries that carry advorch's build-id naming (`<...>-YYYYmmddTHHMMSS-xxxxxx…`).

A build stages every new file under `.staging-<build>/`, moves them to their final,
build-unique names, then replaces manifest.json in one atomic step (temp name +
rename), and only then deletes files the new manifest no longer lists. A crash at
any moment therefore leaves the previous manifest pointing at files that all still
exist: readers see the previous complete state, never a half-written one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from advorch import __version__
from advorch.config import HealthConfig
from advorch.pipelines import health
from advorch.pipelines.common import PipelineError

MANIFEST = "manifest.json"
FORMAT = "advorch-shards/1"
HASH = "blake3"  # the key of a source's content hash in the manifest


class ShardError(RuntimeError):
    """A dataset directory cannot be read or written; the message names the path and the fix."""


LISTED = re.compile(r"(parts|side|quarantine)/(?!\.\.?$)[^/\\]+")  # one level under its folder
BUILD_NAMED = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")  # DatasetWriter.build_id, in every file it writes


def check_listed(root: str, manifest: dict[str, Any]) -> None:
    """Refuse a manifest whose listed paths leave the dataset (see the module docstring).

    Raises:
        ShardError: naming the manifest, the entry and the fix.
    """
    fs, base = _fs(root)
    try:
        listed = listed_files(manifest)
    except (KeyError, TypeError, AttributeError) as e:
        raise ShardError(f"{root}/{MANIFEST}: malformed ({e!r} missing or of the wrong type); rebuild the "
                         "dataset with `advorch preprocess`") from None
    real_root = os.path.realpath(base) if isinstance(fs, LocalFileSystem) else None
    for rel in sorted(listed, key=str):
        inside = isinstance(rel, str) and LISTED.fullmatch(rel) is not None
        if inside and real_root is not None:  # a symlink must not lead out either
            inside = os.path.commonpath([os.path.realpath(os.path.join(base, rel)), real_root]) == real_root
        if not inside:
            raise ShardError(f"{root}/{MANIFEST} lists {rel!r}, which is not a file of this dataset (it must "
                             "be parts/NAME, side/NAME or quarantine/NAME inside the folder): the manifest "
                             "was edited or not written by advorch; nothing was read or deleted. Rebuild "
                             "the dataset with `advorch preprocess` into a new folder")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path.rstrip("/")


def file_fingerprint(path: str, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, mtime and BLAKE3 content hash of a source file.

    BLAKE3, not sha256: as collision-resistant, and ≈ 6 GB/s on one core here against
    sha256's 1.8 GB/s (with SHA-NI), which made hashing the MODIS granules cost as much as
    decoding them. The hash is reused from `known` (the manifest's record) when size and mtime
    are unchanged, so a scheduled re-run over many large sources does not re-read them; a
    record from before BLAKE3 (a "sha256" key) is hashed anew, and its dataset rebuilt once.
    """
    from blake3 import blake3

    fs, p = _fs(path)
    info = fs.info(p)
    size = int(info["size"])
    mtime = float(info.get("mtime") or info.get("LastModified", 0) or 0)
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    if known and known.get("size") == size and known.get("mtime") == mtime and known.get(HASH):
        digest = known[HASH]
    elif isinstance(fs, LocalFileSystem):
        # mapped and hashed in one call without the GIL: a thread hashing next to one that
        # decodes (MODIS) then waits for the GIL once per file, not once per buffer
        digest = blake3().update_mmap(p).hexdigest()
    else:
        with fs.open(p, "rb") as f:
            digest = hashlib.file_digest(f, blake3).hexdigest()  # one reused buffer
    return {"path": str(path), "size": size, "mtime": mtime, HASH: digest}


def fingerprints(paths: list[str], manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """`file_fingerprint` of every path, reusing the hashes the previous manifest holds.

    On a thread per CPU: reads and BLAKE3 release the GIL, and many small sources (MODIS
    granules) hold more bytes than the pixels decoded from them.
    """
    known = {s["path"]: s for s in (manifest or {}).get("sources", [])}
    if len(paths) < 2:
        return [file_fingerprint(p, known.get(p)) for p in paths]
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: file_fingerprint(p, known.get(p)), paths))


def read_manifest(root: str) -> dict[str, Any] | None:
    """The dataset's manifest, or None when the directory holds no complete build."""
    fs, p = _fs(root)
    target = f"{p}/{MANIFEST}"
    if not fs.exists(target):
        return None
    with fs.open(target, "r") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardError(f"{target}: unknown format {got!r}, expected {FORMAT}")
    check_listed(root, manifest)
    return manifest


def sources_unchanged(manifest: dict[str, Any] | None, sources: list[dict[str, Any]],
                      params: dict[str, Any]) -> bool:
    """True when the manifest already holds exactly these sources built with these params."""
    if manifest is None or manifest.get("params") != params:
        return False
    held = {s["path"]: s.get(HASH) for s in manifest.get("sources", [])}
    return held == {s["path"]: s[HASH] for s in sources}


@dataclass
class Quarantine:
    """Rows or files a pipeline rejected, each with its source, position and reason."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, source: str, reason: str, line: int | None = None, raw: Any = None) -> None:
        if isinstance(raw, bytes):
            raw = raw.decode("latin-1")  # lossless: every byte maps to one character
        self.records.append({"source": source, "line": line, "reason": reason, "raw": raw})

    def extend(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)

    def __len__(self) -> int:
        return len(self.records)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"].split(":")[0] for r in self.records))


class DatasetWriter:
    """Stages one complete build of a dataset directory and commits it atomically.

    Parts may be written by any process (Dask workers) to `part_uri(...)`; the
    driver then calls `commit(...)`, which publishes them and writes the manifest.
    """

    def __init__(self, root: str, kind: str, health: HealthConfig | None = None) -> None:
        self.root = str(root).rstrip("/")
        self.kind = kind
        self.health = health or HealthConfig()
        self.build_id = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.fs, self._root = _fs(self.root)
        self._staging = f"{self._root}/.staging-{self.build_id}"
        try:
            self.fs.makedirs(self._staging, exist_ok=True)
            probe = f"{self._staging}/.write-probe"
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except OSError as e:
            raise ShardError(
                f"cannot write to output folder {self.root}: {e.strerror or e}. "
                "Choose a folder you can write to (data.output or --output)."
            ) from e
        self._side: dict[str, str] = {}
        self._kept_side: set[str] = set()

    def _write_quarantine(self, quarantine: Quarantine) -> str | None:
        """The build's quarantine records, published as quarantine/<build>.jsonl (or None)."""
        if not len(quarantine):
            return None
        name = f"quarantine/{self.build_id}.jsonl"
        with self.fs.open(f"{self._staging}/quarantine.jsonl", "w") as f:
            for rec in quarantine.records:
                f.write(json.dumps(rec) + "\n")  # ASCII: raw U+0085 would split lines
        self.fs.mv(f"{self._staging}/quarantine.jsonl", f"{self._root}/{name}")
        return name

    @property
    def staging_uri(self) -> str:
        return self._staging

    def part_name(self, split: str, index: int) -> str:
        return f"{split}-{self.build_id}-{index:05d}.parquet"

    def part_uri(self, split: str, index: int) -> str:
        """Where a worker writes part `index` of `split` (inside the staging folder)."""
        return f"{self._staging}/{self.part_name(split, index)}"

    def write_side_file(self, name: str, data: bytes) -> None:
        """Stage a side file (vocabulary, embeddings); published under a build-unique name."""
        stem, dot, ext = name.rpartition(".")
        final = f"{stem}-{self.build_id}.{ext}" if dot else f"{name}-{self.build_id}"
        with self.fs.open(f"{self._staging}/{final}", "wb") as f:
            f.write(data)
        self._side[name] = f"side/{final}"

    def side_dir_uri(self, name: str) -> str:
        """Stage a side folder (a Zarr store): write it at the returned URI; it is published,
        like a side file, under a build-unique name."""
        stem, dot, ext = name.rpartition(".")
        final = f"{stem}-{self.build_id}.{ext}" if dot else f"{name}-{self.build_id}"
        self._side[name] = f"side/{final}"
        return f"{self._staging}/{final}"

    def keep_side(self, name: str, previous: str) -> None:
        """List a side entry of the previous build ("side/…") again as it is (an incremental build)."""
        self._side[name] = previous
        self._kept_side.add(previous)

    def commit(self, *, splits: dict[str, dict[str, Any]], schema: pa.Schema,
               sources: list[dict[str, Any]], quarantine: Quarantine, params: dict[str, Any],
               classes: list[str] | None = None, shapes: dict[str, Any] | None = None,
               inputs: dict[str, dict[str, Any]] | None = None, task: str = "classification",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the staged build and write the manifest; return the manifest.

        `splits` maps a split name to {"parts": [{"index", "rows"}], "classes": {name: n}};
        a part {"keep": "parts/…", "rows"} is one of the previous build's, listed again as it is
        (an incremental build). `inputs` names the model inputs and `task` what is learned
        (read back by spec.read_spec).
        """
        fs, root = self.fs, self._root
        fs.makedirs(f"{root}/parts", exist_ok=True)
        fs.makedirs(f"{root}/quarantine", exist_ok=True)
        quarantine_file = self._write_quarantine(quarantine)
        found = health.problems({k: {"rows": sum(int(p["rows"]) for p in m["parts"]), **m}
                                 for k, m in splits.items()}, classes or [], task,
                                self.health.min_class_rows) if inputs else []
        if found and self.health.on_problem == "fail":
            # nothing of the build is published; its quarantine is, to show what went
            where = f" (quarantined rows: {self.root}/{quarantine_file})" if quarantine_file else ""
            raise PipelineError(f"{self.root}: {health.report(found)}{where}")

        split_meta: dict[str, Any] = {}
        for split, meta in splits.items():
            parts = []
            for part in meta["parts"]:
                if "keep" in part:
                    parts.append({"path": part["keep"], "rows": int(part["rows"])})
                    continue
                name = self.part_name(split, part["index"])
                fs.mv(f"{self._staging}/{name}", f"{root}/parts/{name}")
                parts.append({"path": f"parts/{name}", "rows": int(part["rows"])})
            split_meta[split] = {
                "rows": sum(p["rows"] for p in parts),
                "classes": meta.get("classes", {}),
                "parts": parts,
            }
        if self._side:
            fs.makedirs(f"{root}/side", exist_ok=True)
        for final in set(self._side.values()) - self._kept_side:
            fs.mv(f"{self._staging}/{Path(final).name}", f"{root}/{final}", recursive=True)

        manifest = {
            "format": FORMAT,
            "kind": self.kind,
            "task": task,
            "inputs": inputs or {},
            "build_id": self.build_id,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "producer": {"name": "advorch", "version": __version__},
            "schema": {f.name: str(f.type) for f in schema},
            "rows": sum(s["rows"] for s in split_meta.values()),
            "splits": split_meta,
            "classes": classes or [],
            "shapes": shapes or {},
            "sources": sources,
            "side_files": dict(self._side),
            "quarantine": {"count": len(quarantine), "by_reason": quarantine.by_reason(),
                           "file": quarantine_file},
            "params": params,
            **(extra or {}),
            "warnings": [*(extra or {}).get("warnings", []),
                         *(f'unhealthy dataset built (data.health.on_problem = "warn"): {p}' for p in found)],
        }
        tmp = f"{root}/.{MANIFEST}.{self.build_id}.tmp"
        with fs.open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.flush()
            if hasattr(f, "fileno"):
                os.fsync(f.fileno())
        previous = read_manifest(self.root)
        fs.mv(tmp, f"{root}/{MANIFEST}")  # the commit point: one atomic rename
        self._remove_unlisted(manifest, previous)
        return manifest

    def abort(self) -> None:
        """Drop the staged build (after an error); the previous state stays as it was."""
        if self.fs.exists(self._staging):
            self.fs.rm(self._staging, recursive=True)

    def _remove_unlisted(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Delete what the new manifest no longer lists: the previous build's files,
        parts and quarantine files of crashed builds, and stale staging folders; only entries
        named by a build (BUILD_NAMED), and a symlink itself, never what it points at."""
        fs, root = self.fs, self._root
        keep = listed_files(manifest)
        stale = listed_files(previous) - keep if previous else set()
        for entry in fs.ls(root, detail=False):
            name = Path(entry).name
            if name.startswith(".staging-") or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")):
                fs.rm(entry, recursive=True)
            elif name in ("parts", "quarantine", "side"):
                stale |= {f"{name}/{Path(sub).name}" for sub in fs.ls(entry, detail=False)} - keep
        for rel in stale:
            path = f"{root}/{rel}"
            if not (LISTED.fullmatch(rel) and BUILD_NAMED.search(rel)):
                continue  # not a file a build wrote: someone else's, left alone
            if isinstance(fs, LocalFileSystem) and os.path.islink(path):
                os.unlink(path)
            elif fs.exists(path):
                fs.rm(path, recursive=True)  # a side entry can be a folder (Zarr)


def listed_files(manifest: dict[str, Any]) -> set[str]:
    """Every file a manifest points at, relative to the dataset root."""
    files = {p["path"] for s in manifest["splits"].values() for p in s["parts"]}
    files |= set(manifest.get("side_files", {}).values())
    if manifest.get("quarantine", {}).get("file"):
        files.add(manifest["quarantine"]["file"])
    return files


def write_part(uri: str, table: pa.Table) -> int:
    """Write one Parquet part (a staged path from `DatasetWriter.part_uri`); return its rows."""
    fs, p = _fs(uri)
    pq.write_table(table, p, filesystem=fs, compression="zstd")
    return table.num_rows


def split_parts(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The parts of `split` as the manifest lists them."""
    try:
        return manifest["splits"][split]["parts"]
    except KeyError:
        have = ", ".join(manifest.get("splits", {})) or "none"
        raise ShardError(f"split {split!r} is not in the dataset (it has: {have})") from None


def read_split(root: str, split: str, columns: list[str] | None = None,
               manifest: dict[str, Any] | None = None) -> pa.Table:
    """Read one split, exactly the parts the manifest lists (never a directory listing)."""
    manifest = manifest or read_manifest(root)
    if manifest is None:
        raise ShardError(f"{root} holds no {MANIFEST}: run `advorch preprocess` first")
    fs, base = _fs(root)
    tables = [pq.read_table(f"{base}/{p['path']}", columns=columns, filesystem=fs)
              for p in split_parts(manifest, split)]
    if not tables:
        raise ShardError(f"split {split!r} of {root} has no rows")
    return pa.concat_tables(tables)


def read_side_file(root: str, name: str, manifest: dict[str, Any] | None = None) -> bytes:
    """The bytes of a side file (e.g. "vocab.json") of the current build."""
    manifest = manifest or read_manifest(root)
    if manifest is None or name not in manifest.get("side_files", {}):
        raise ShardError(f"{root}: no side file {name!r} in the manifest")
    fs, base = _fs(root)
    with fs.open(f"{base}/{manifest['side_files'][name]}", "rb") as f:
        return f.read()
