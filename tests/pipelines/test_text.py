"""The text pipeline (pipelines/text.py) on the real MR corpus, run through the real
`advorch` CLI on real Dask (the CLI's own LocalCluster, or a shared one reached with
`--dask-address`): manifest, split protocol, idempotence, rebuilds, crash safety under
SIGKILL, and bad input.

MR is preprocessed once per session (`mr_shards`); tests that change a dataset work on
a copy of those shards (derived data in tmp, never the raw corpus).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from blake3 import blake3

from advorch.pipelines.history import HISTORY, HOLDER, LOCK
from advorch.pipelines.shards import MANIFEST, listed_files, read_manifest, read_side_file, read_split
from advorch.pipelines.text import encode_part, tokenize
from tests.conftest import ADVORCH, MR, mr_config, run_cli

CLASSES = ("neg", "pos")
LINES_PER_CLASS = 5331
SPLITS = ("train", "val", "test")
OPS = {HISTORY, LOCK}  # the run history and lock of every preprocess run (pipelines/history.py)
DATASET_ENTRIES = {MANIFEST, "parts", "side", "quarantine", *OPS}
# rich wraps stdout/stderr at 80 columns when they are not a terminal; a wide console
# keeps each message (and the paths in it) on one line
WIDE = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}


# ---------------------------------------------------------------- helpers


def _raw_lines(label: str) -> list[bytes]:
    """The class file's lines as the pipeline must see them: split on the \\n byte only."""
    lines = (MR / f"rt-polarity.{label}").read_bytes().split(b"\n")
    assert lines[-1] == b""
    return lines[:-1]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under root (root included) with inode, size and mtime."""
    out = {}
    for p in [root, *root.rglob("*")]:
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _assert_complete(root: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and reads, with the manifest's row counts."""
    for rel in listed_files(manifest):
        assert (root / rel).is_file(), f"{rel} is listed in the manifest but missing"
    for split, meta in manifest["splits"].items():
        assert read_split(str(root), split, manifest=manifest).num_rows == meta["rows"], split
    vocab = json.loads(read_side_file(str(root), "vocab.json", manifest))
    assert len(vocab) == manifest["vocab_size"]
    assert manifest["rows"] == sum(s["rows"] for s in manifest["splits"].values())


def _copy_shards(mr_shards: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the session's MR shards and a config that points at it."""
    root = tmp_path / "shards"
    shutil.copytree(mr_shards, root)
    return root, mr_config(tmp_path / "mr.toml", root)


def _text_config(path: Path, output: Path, sources: list[tuple[Path, str]], tiny: bool = False) -> Path:
    """`tiny`: a dataset too small for every class in every split, built anyway (with warnings)."""
    entries = ", ".join(f'{{path = "{p}", label = "{label}"}}' for p, label in sources)
    health = '[data.health]\non_problem = "warn"\n' if tiny else ""
    path.write_text(f'name = "gen"\n[data]\nencoding = "cp1252"\noutput = "{output}"\n'
                    f"sources = [{entries}]\n{health}", encoding="utf-8")
    return path


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _good_lines(word: str, n: int = 8) -> list[bytes]:
    return [f"{word} film number {i} is {word} .".encode() for i in range(n)]


# ---------------------------------------------------------------- the real MR build


def test_manifest_of_real_mr(mr_shards: Path) -> None:
    m = read_manifest(str(mr_shards))
    assert m is not None and m["kind"] == "text"
    assert m["rows"] == 2 * LINES_PER_CLASS == 10_662
    assert m["classes"] == list(CLASSES)
    assert m["class_counts"] == {"neg": LINES_PER_CLASS, "pos": LINES_PER_CLASS}

    splits = m["splits"]
    assert set(splits) == set(SPLITS)
    assert sum(s["rows"] for s in splits.values()) == 10_662
    # the paper's 50/50 protocol, stratified
    assert splits["test"]["rows"] == 5_331
    assert splits["train"]["rows"] + splits["val"]["rows"] == 5_331
    for c in CLASSES:
        test_c = splits["test"]["classes"][c]
        side_c = splits["train"]["classes"][c] + splits["val"]["classes"][c]
        assert test_c + side_c == LINES_PER_CLASS
        assert abs(test_c - side_c) <= 1, (c, test_c, side_c)
        # validation is val_fraction (0.1) of each class's train side
        assert abs(splits["val"]["classes"][c] - 0.1 * side_c) <= 1
    assert abs(splits["val"]["rows"] - 0.1 * 5_331) <= 1
    for s in splits.values():
        assert s["rows"] == sum(p["rows"] for p in s["parts"]) == sum(s["classes"].values())

    # the vocabulary side file
    assert set(m["side_files"]) == {"vocab.json"}
    assert (mr_shards / m["side_files"]["vocab.json"]).is_file()
    vocab = json.loads(read_side_file(str(mr_shards), "vocab.json"))
    assert len(vocab) == m["vocab_size"] and vocab[:2] == ["<pad>", "<unk>"]
    assert len(set(vocab)) == len(vocab)

    # every source, fingerprinted from the real files
    assert [s["path"] for s in m["sources"]] == [str(MR / f"rt-polarity.{c}") for c in CLASSES]
    for s in m["sources"]:
        st = os.stat(s["path"])
        assert s["size"] == st.st_size
        assert s["mtime"] == st.st_mtime
        assert s["blake3"] == blake3(Path(s["path"]).read_bytes()).hexdigest()
        assert s["rows"] == LINES_PER_CLASS and s["quarantined"] == 0

    # MR has no bad line
    assert m["quarantine"] == {"count": 0, "by_reason": {}, "file": None}
    assert list((mr_shards / "quarantine").iterdir()) == []
    assert m["params"]["encoding"] == "cp1252" and m["params"]["test_fraction"] == 0.5


def test_no_row_is_lost_and_every_row_is_its_line(mr_shards: Path) -> None:
    m = read_manifest(str(mr_shards))
    tables = {s: read_split(str(mr_shards), s).to_pydict() for s in SPLITS}
    ids = [i for t in tables.values() for i in t["id"]]
    assert len(ids) == 10_662
    assert len(set(ids)) == len(ids), "duplicate row ids"
    assert set(ids) == {f"{MR}/rt-polarity.{c}:{n}" for c in CLASSES for n in range(1, LINES_PER_CLASS + 1)}

    raw = {c: _raw_lines(c) for c in CLASSES}
    vocab = json.loads(read_side_file(str(mr_shards), "vocab.json"))
    index = {w: i for i, w in enumerate(vocab)}
    for split, t in tables.items():
        counts = Counter(CLASSES[label] for label in t["label"])
        assert counts == Counter(m["splits"][split]["classes"]), split
        for source, line, text, label, tokens, length in zip(
                t["source"], t["line"], t["text"], t["label"], t["tokens"], t["length"], strict=True):
            c = CLASSES[label]
            assert source == str(MR / f"rt-polarity.{c}")
            assert text == raw[c][line - 1].decode("cp1252").strip()
            assert length == len(tokens) > 0
            # token ids are the side file's vocabulary positions, 1 (OOV) for unknown words
            assert tokens == [index.get(w, 1) for w in tokenize(text)]

    # the vocabulary is counted on train only: every train token is in it, and it holds
    # nothing else (min_count 1, max_vocab far above MR's size)
    train_words = {w for text in tables["train"]["text"] for w in tokenize(text)}
    assert set(vocab[2:]) == train_words
    assert all(1 not in tokens for tokens in tables["train"]["tokens"])
    assert any(1 in tokens for tokens in tables["test"]["tokens"]), "test words unseen in train map to OOV"


def test_byte_0x85_does_not_split_sentences(mr_shards: Path) -> None:
    """cp1252 0x85 is "…", which Python's universal newlines treat as a line break."""
    rows = {}
    for s in SPLITS:
        t = read_split(str(mr_shards), s, columns=["id", "text"]).to_pydict()
        rows.update(zip(t["id"], t["text"], strict=True))
    found = 0
    for c in CLASSES:
        for n, line in enumerate(_raw_lines(c), start=1):
            if b"\x85" in line:
                found += 1
                text = line.decode("cp1252").strip()
                assert "\u2026" in text
                assert rows[f"{MR}/rt-polarity.{c}:{n}"] == text
                assert sum(1 for v in rows.values() if v == text) == 1
    assert found >= 2, "MR should hold lines with byte 0x85"


def test_second_run_is_up_to_date_and_writes_nothing(mr_shards: Path, tmp_path: Path) -> None:
    """Only the run's history record (and its lock file) are written; no data file changes."""
    root, config = _copy_shards(mr_shards, tmp_path)
    ops = {".", ".advorch.lock", "history.jsonl"}
    before = _snapshot(root)
    result = run_cli("preprocess", "text", str(config), cwd=tmp_path, env=WIDE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    data = lambda snap: {k: v for k, v in snap.items() if k not in ops}  # noqa: E731
    assert data(_snapshot(root)) == data(before)
    records = (root / "history.jsonl").read_text().splitlines()
    assert len(records) == 1 and '"status": "up_to_date"' in records[0]


def test_changed_param_rebuilds_and_removes_the_old_build(mr_shards: Path, tmp_path: Path,
                                                          dask_address: str) -> None:
    root, config = _copy_shards(mr_shards, tmp_path)
    old = read_manifest(str(root))
    result = run_cli("preprocess", "text", str(config), "--set", "data.min_count=2",
                     "--dask-address", dask_address, cwd=tmp_path, env=WIDE, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "up to date" not in result.stdout
    new = read_manifest(str(root))
    assert new["build_id"] != old["build_id"]
    assert new["params"]["min_count"] == 2
    assert new["vocab_size"] < old["vocab_size"]
    _assert_complete(root, new)
    for rel in listed_files(old):
        assert not (root / rel).exists(), f"{rel} of the old build is still there"
    assert _files(root) == listed_files(new) | {MANIFEST, *OPS}
    assert {p.name for p in root.iterdir()} == DATASET_ENTRIES
    # the split does not depend on min_count: same rows in the same splits
    for s in SPLITS:
        assert (sorted(read_split(str(root), s, ["id"]).column("id").to_pylist())
                == sorted(read_split(str(mr_shards), s, ["id"]).column("id").to_pylist())), s


def test_a_hand_edited_manifest_pointing_outside_makes_the_rebuild_refuse_and_delete_nothing(
        mr_shards: Path, tmp_path: Path, dask_address: str) -> None:
    """Issue 22's report, on the real MR build: a train part and a side file `../victim.txt` must not
    make `advorch preprocess text` with a changed setting delete the victim beside the dataset."""
    root, config = _copy_shards(mr_shards, tmp_path)
    victim = root.parent / "victim.txt"
    victim.write_text("someone else's")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["splits"]["train"]["parts"].append({"path": "../victim.txt", "rows": 1})
    manifest["side_files"]["vocab.json"] = "../victim.txt"
    (root / MANIFEST).write_text(json.dumps(manifest))
    before = _files(root)
    result = run_cli("preprocess", "text", str(config), "--set", "data.min_count=2",
                     "--dask-address", dask_address, cwd=tmp_path, env=WIDE, timeout=180)
    assert result.returncode == 1
    assert "'../victim.txt'" in result.stderr and "not a file of this dataset" in result.stderr
    assert victim.read_text() == "someone else's"
    assert before <= _files(root) <= before | set(OPS)  # nothing deleted; the run's lock / history only


def test_row_ids_are_unique_across_sources_with_the_same_file_name(tmp_path: Path) -> None:
    # generated rows (not data): one class per folder, the same file name in both
    vocab = {"<pad>": 0, "<unk>": 1, "good": 2, "bad": 3}
    rows = [("corpus/neg/reviews.txt", 1, "bad", 0, ["bad"]),
            ("corpus/pos/reviews.txt", 1, "good", 1, ["good"])]
    part = tmp_path / "part.parquet"
    assert encode_part(str(part), rows, vocab) == 2
    ids = pq.read_table(part).column("id").to_pylist()
    assert len(set(ids)) == 2, ids


# ---------------------------------------------------------------- crash safety


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_members(proc.pid), "processes of the killed run survived"


def _staged_parts(root: Path) -> bool:
    return any(root.glob(".staging-*/*.parquet"))


def _assert_consistent_after_crash(root: Path, old: dict) -> str:
    """The old complete state or a complete new one, nothing else visible; which one."""
    manifest = read_manifest(str(root))
    assert manifest is not None
    if manifest["build_id"] == old["build_id"]:
        assert manifest == old
        state = "old"
    else:
        assert manifest["params"]["min_count"] == 2 and manifest["rows"] == 10_662
        state = "new"
    _assert_complete(root, manifest)
    for entry in root.iterdir():
        # `.manifest.json.<build>.tmp` is the commit's own temp name (written, fsynced,
        # then renamed); a kill between the two can leave it, and the next commit removes it;
        # HOLDER names the killed run (the next run records it as interrupted)
        assert (entry.name in DATASET_ENTRIES | {HOLDER} or entry.name.startswith(".staging-")
                or (entry.name.startswith(f".{MANIFEST}.") and entry.name.endswith(".tmp"))), entry
    return state


def test_sigkill_during_rebuild_leaves_a_complete_state(mr_shards: Path, tmp_path: Path) -> None:
    root, config = _copy_shards(mr_shards, tmp_path)  # complete state A
    old = read_manifest(str(root))
    cmd = [ADVORCH, "preprocess", "text", str(config), "--set", "data.min_count=2"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, env=WIDE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # first the interesting moment: the rebuild has staged Parquet parts, not committed
    proc = start()
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _staged_parts(root) and time.monotonic() < deadline:
        time.sleep(0.005)
    hit = proc.poll() is None
    _kill_group(proc)
    assert hit, "the run ended before a staged part was seen: no kill landed mid-build"
    assert _assert_consistent_after_crash(root, old) == "old", \
        "killed before its commit, the old build must still be the current one"
    assert any(root.glob(".staging-*/*.parquet")), "the killed build's staged parts are left over"

    # then at fixed moments (start-up, staging, cluster start, …; on a fast machine a
    # later one may find the rebuild complete, which is also a valid state)
    for delay in (0.5, 1.5, 2.5, 3.5):
        proc = start()
        time.sleep(delay)
        _kill_group(proc)
        _assert_consistent_after_crash(root, old)

    # a normal run completes and cleans every crash leftover
    result = run_cli(*cmd[1:], cwd=tmp_path, env=WIDE, timeout=180)
    assert result.returncode == 0, result.stderr
    new = read_manifest(str(root))
    assert new["build_id"] != old["build_id"] and new["params"]["min_count"] == 2
    _assert_complete(root, new)
    assert {p.name for p in root.iterdir()} == DATASET_ENTRIES
    assert _files(root) == listed_files(new) | {MANIFEST, *OPS}


# ---------------------------------------------------------------- bad input
# The input files below are tiny and generated to hit each failure case; they are
# not data.


def test_undecodable_line_is_quarantined(tmp_path: Path, dask_address: str) -> None:
    neg = _write_lines(tmp_path / "neg.txt", [b"a dull film .", b"too long and slow .",
                                              b"caf\x81 noir , bad coffee .", *_good_lines("bad")])
    pos = _write_lines(tmp_path / "pos.txt", _good_lines("good"))
    out = tmp_path / "out"
    config = _text_config(tmp_path / "gen.toml", out, [(neg, "neg"), (pos, "pos")], tiny=True)
    result = run_cli("preprocess", "text", str(config), "--dask-address", dask_address,
                     cwd=tmp_path, env=WIDE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "quarantined 1" in result.stdout

    m = read_manifest(str(out))
    assert m["quarantine"]["count"] == 1
    assert m["quarantine"]["by_reason"] == {"undecodable": 1}
    assert m["rows"] == 11 + 8 - 1
    [qfile] = (out / "quarantine").glob("*.jsonl")
    assert m["quarantine"]["file"] == f"quarantine/{qfile.name}"
    [record] = [json.loads(x) for x in qfile.read_text(encoding="utf-8").split("\n") if x]
    assert record["source"] == str(neg)
    assert record["line"] == 3
    assert "undecodable" in record["reason"] and "0x81" in record["reason"]
    assert record["raw"].encode("latin-1") == b"caf\x81 noir , bad coffee ."
    ids = [i for s in SPLITS for i in read_split(str(out), s, ["id"]).column("id").to_pylist()]
    assert f"{neg}:3" not in ids and f"{neg}:4" in ids and len(ids) == m["rows"]
    src = {s["path"]: s for s in m["sources"]}
    assert src[str(neg)]["quarantined"] == 1 and src[str(neg)]["rows"] == 10


def test_empty_lines_are_quarantined_and_counted(tmp_path: Path, dask_address: str) -> None:
    neg = _write_lines(tmp_path / "neg.txt", [b"a dull film .", b"", b"   \t ", b"slow .", b"\r",
                                              *_good_lines("bad")])
    pos = _write_lines(tmp_path / "pos.txt", [*_good_lines("good"), b""])
    out = tmp_path / "out"
    config = _text_config(tmp_path / "gen.toml", out, [(neg, "neg"), (pos, "pos")], tiny=True)
    result = run_cli("preprocess", "text", str(config), "--dask-address", dask_address,
                     cwd=tmp_path, env=WIDE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "quarantined 4" in result.stdout

    m = read_manifest(str(out))
    assert m["quarantine"]["count"] == 4
    assert m["quarantine"]["by_reason"] == {"empty line": 4}
    assert m["rows"] == (13 - 3) + (9 - 1)
    text = (out / m["quarantine"]["file"]).read_text(encoding="utf-8")
    records = [json.loads(x) for x in text.split("\n") if x]
    assert sorted((Path(r["source"]).name, r["line"]) for r in records) == [
        ("neg.txt", 2), ("neg.txt", 3), ("neg.txt", 5), ("pos.txt", 9)]
    assert all(r["reason"].startswith("empty line") for r in records)


def _assert_nothing_published(out: Path) -> None:
    assert not (out / MANIFEST).exists()
    if out.exists():
        assert not list(out.glob(".staging-*")), "a failed run must not leave its staging folder"
        assert not list(out.rglob("*.parquet"))


def test_empty_class_file_fails_naming_it(tmp_path: Path, dask_address: str) -> None:
    neg = _write_lines(tmp_path / "neg.txt", _good_lines("bad"))
    pos = tmp_path / "pos.txt"
    pos.write_bytes(b"")
    out = tmp_path / "out"
    config = _text_config(tmp_path / "gen.toml", out, [(neg, "neg"), (pos, "pos")])
    result = run_cli("preprocess", "text", str(config), "--dask-address", dask_address,
                     cwd=tmp_path, env=WIDE, timeout=120)
    assert result.returncode != 0
    assert str(pos) in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_published(out)


def test_missing_class_file_fails_naming_it(tmp_path: Path) -> None:
    neg = _write_lines(tmp_path / "neg.txt", _good_lines("bad"))
    missing = tmp_path / "no-such-dir" / "pos.txt"
    out = tmp_path / "out"
    config = _text_config(tmp_path / "gen.toml", out, [(neg, "neg"), (missing, "pos")])
    result = run_cli("preprocess", "text", str(config), cwd=tmp_path, env=WIDE, timeout=120)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_published(out)


# ---------------------------------------------------------------- unwritable output


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _drop_dac_capabilities() -> None:
    """Stay root but lose the capabilities that bypass file permissions (bounding set:
    the exec'd program never regains them): CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged(probe_dir: Path):
    """A preexec_fn under which the child cannot write into `probe_dir` (mode 0555).

    As root, chmod does not stop writes, so the child runs as uid 65534 when the venv
    is usable by that user, else as root without the DAC capabilities."""
    if os.geteuid() != 0:
        return None
    reasons = []
    for name, fn in (("uid 65534", _drop_to_nobody), ("root without CAP_DAC_*", _drop_dac_capabilities)):
        try:
            check = subprocess.run([ADVORCH, "--version"], preexec_fn=fn, cwd="/",
                                   capture_output=True, text=True, timeout=60)
        except OSError as e:
            reasons.append(f"{name}: cannot run {ADVORCH}: {e}")
            continue
        if check.returncode != 0:
            reasons.append(f"{name}: {ADVORCH} --version failed: {check.stderr.strip()[-300:]}")
            continue
        probe = subprocess.run(["sh", "-c", f"touch '{probe_dir}/probe'"], preexec_fn=fn,
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            os.unlink(probe_dir / "probe")
            reasons.append(f"{name}: can still write into a 0555 folder")
            continue
        return fn
    pytest.skip("cannot run the CLI without the power to bypass file permissions: " + "; ".join(reasons))


def test_unwritable_output_folder_fails_naming_it(mr_dir: Path) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="advorch-ro-"))
    try:
        base.chmod(0o755)  # the unprivileged child must reach the config and the output
        out = base / "out"
        out.mkdir()
        out.chmod(0o555)
        config = mr_config(base / "mr.toml", out)
        config.chmod(0o644)
        preexec = _unprivileged(out)
        result = subprocess.run([ADVORCH, "preprocess", "text", str(config)], preexec_fn=preexec,
                                cwd=base, env=WIDE, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0, result.stdout
        assert str(out) in result.stderr
        assert "Traceback" not in result.stderr
        assert list(out.iterdir()) == [], "nothing may be written into the folder"
    finally:
        (base / "out").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- no line dropped unseen (audit)


def test_every_real_line_is_a_row_or_a_quarantine_record(mr_shards: Path) -> None:
    """Each manifest source says how many lines it read; on real MR every one became a row or
    a quarantine record (lines = rows + quarantined), and the count is the file's \\n lines."""
    for s in read_manifest(str(mr_shards))["sources"]:
        assert s["lines"] == len(_raw_lines(Path(s["path"]).name.rsplit(".", 1)[1]))
        assert s["lines"] == s["rows"] + s["quarantined"]


def test_odd_lines_are_counted_not_lost(tmp_path: Path, dask_address: str) -> None:
    """Generated (MR has none of these): CRLF endings, a whitespace-only line, an undecodable
    line and a last line without its \\n. Each line is a row or a quarantine record."""
    from advorch.config import load_config
    from advorch.pipelines import text

    neg = tmp_path / "neg.txt"
    neg.write_bytes(b"a dull film .\r\n \t \r\ncaf\x81 bad .\r\n" + b"\n".join(_good_lines("bad"))
                    + b"\nno newline at the end .")
    pos = _write_lines(tmp_path / "pos.txt", _good_lines("good"))
    cfg = load_config(None, [f'data.output="{tmp_path / "out"}"', 'data.encoding="utf-8"',
                             f'data.sources=[{{path="{neg}", label="neg"}}, {{path="{pos}", label="pos"}}]',
                             'data.health.on_problem="warn"'])
    summary = text.run(cfg.data, dask_address=dask_address)
    src = {Path(s["path"]).name: s for s in summary.manifest["sources"]}
    assert (src["neg.txt"]["lines"], src["neg.txt"]["rows"], src["neg.txt"]["quarantined"]) == (12, 10, 2)
    assert src["pos.txt"]["lines"] == src["pos.txt"]["rows"] == 8
    assert summary.rows == 18 and summary.quarantined == 2
