"""Labelled line files → tokenised Parquet shards (the movie-review corpus of Jia et al.).

One file per class; every line is one example. The file is split on the `\n` byte
only and each line is then decoded with the declared encoding: MR is cp1252 and
holds byte 0x85 (cp1252 "…", a Unicode line break) inside lines, so decoding
first and then splitting on universal newlines would cut sentences in two.

Protocol (the paper's): a seeded, stratified split with `test_fraction` of every
class held out as test (0.5 → 50/50), and `val_fraction` of the remaining train
rows carved out as validation. The vocabulary is counted on the train split only,
so validation and test words the model never trains on map to the OOV id.

No line is dropped without a record: every line of a source is a row or a quarantine
record (undecodable, or no tokens), and each manifest source carries `lines` (lines read),
`rows` and `quarantined`, with lines = rows + quarantined.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from advorch import __version__
from advorch.config import DataConfig
from advorch.pipelines.common import OOV, TOKENS, PipelineError, Summary, build_vocab, stratified_split
from advorch.pipelines.shards import (
    DatasetWriter,
    Quarantine,
    fingerprints,
    read_manifest,
    sources_unchanged,
    write_part,
)
from advorch.progress import track

TOKEN_RE = re.compile(r"[\w']+|[^\w\s]")
BLOCK_SIZE = 64 * 2**20  # bytes of one file read per task; blocks end on a \n byte

SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("line", pa.int32()), ("text", pa.string()),
    ("label", pa.int32()), ("tokens", pa.list_(pa.int32())), ("length", pa.int32()),
])


def tokenize(text: str, lowercase: bool = True, tokenizer: str = "words") -> list[str]:
    """Words (with inner apostrophes) and single punctuation marks; or, with a pretrained
    encoder's tokenizer (data.tokenizer = "minilm"), its word pieces in [CLS] … [SEP]."""
    if tokenizer != "words":
        from advorch.encoders import TOKENIZERS, wordpiece

        pieces = wordpiece(TOKENIZERS[tokenizer]).encode(text).tokens
        return pieces if len(pieces) > 2 else []  # [CLS] [SEP] alone: no token
    return TOKEN_RE.findall(text.lower() if lowercase else text)


def parse_block(block: bytes, source: str, encoding: str, lowercase: bool,
                tokenizer: str = "words") -> dict[str, Any]:
    """Decode and tokenise one block of whole lines; line numbers are block-local (0-based).

    Returns {"lines": n, "rows": [(line, text, tokens)], "bad": [(line, reason, raw)]}.
    """
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the block's final \n ends a line, it does not start one
    rows, bad = [], []
    for i, raw in enumerate(lines):
        try:
            text = raw.decode(encoding).strip()
        except UnicodeError as e:
            # most codecs name the bad byte (UnicodeDecodeError); idna, punycode and "undefined"
            # raise a bare UnicodeError about the whole line
            where = (f"byte 0x{raw[e.start]:02x} at column {e.start + 1}"
                     if isinstance(e, UnicodeDecodeError) and e.start < len(raw) else f"the line ({e})")
            bad.append((i, f"undecodable: {where} is not valid {encoding}; fix the byte or declare the "
                           "right data.encoding", raw))
            continue
        tokens = tokenize(text, lowercase, tokenizer)
        if not tokens:
            bad.append((i, "empty line: no tokens", raw))
            continue
        rows.append((i, text, tokens))
    return {"lines": len(lines), "rows": rows, "bad": bad}


def encode_part(uri: str, rows: list[tuple], vocab: dict[str, int]) -> int:
    """Map tokens to ids (OOV → 1) and write one Parquet part; return its row count.

    `rows` are (source, line, text, label, tokens) tuples.
    """
    oov = vocab[OOV]
    ids = [[vocab.get(t, oov) for t in r[4]] for r in rows]
    table = pa.table({
        "id": [f"{r[0]}:{r[1]}" for r in rows],  # the configured path: base names can repeat
        "source": [r[0] for r in rows],
        "line": [r[1] for r in rows],
        "text": [r[2] for r in rows],
        "label": [r[3] for r in rows],
        "tokens": ids,
        "length": [len(x) for x in ids],
    }, schema=SCHEMA)
    return write_part(uri, table)


def _params(cfg: DataConfig) -> dict[str, Any]:
    # the producing version too: a release that tokenises differently must rebuild
    return {"advorch": __version__, "encoding": cfg.encoding, "min_count": cfg.min_count,
            "max_vocab": cfg.max_vocab,
            "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction,
            "lowercase": cfg.lowercase, "seed": cfg.seed, "part_rows": cfg.part_rows,
            "labels": {s.path: s.label for s in cfg.sources},
            # only when set: datasets built before the option existed stay up to date
            **({"tokenizer": cfg.tokenizer} if cfg.tokenizer != "words" else {})}


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build (or confirm up to date) the text dataset at `output` (default cfg.output).

    Raises:
        PipelineError: no sources, a missing source file, or a class with no usable line.
        ShardError: the output folder cannot be written.
    """
    from dask.bytes import read_bytes
    from dask.delayed import delayed

    from advorch.pipelines.cluster import dask_client

    output = output or cfg.output
    if not cfg.sources:
        raise PipelineError("data.sources is empty: list one {path, label} per class file")
    for s in cfg.sources:
        fs, p = fsspec.core.url_to_fs(s.path)
        if not fs.isfile(p):
            raise PipelineError(f"source file {s.path} (class {s.label!r}) does not exist; "
                                "fix data.sources[].path")
        if fs.size(p) == 0:
            raise PipelineError(f"source file {s.path} (class {s.label!r}) is empty; "
                                "every class needs examples")
    if cfg.tokenizer != "words":  # here, not in every task: a missing extra is one clear error
        from advorch.encoders import TOKENIZERS, wordpiece

        try:
            wordpiece(TOKENIZERS[cfg.tokenizer])
        except ImportError as e:
            raise PipelineError(f"data.tokenizer = {cfg.tokenizer!r}: {e}") from None
    previous = read_manifest(output)
    sources = fingerprints([s.path for s in cfg.sources], previous)
    params = _params(cfg)
    if sources_unchanged(previous, sources, params):
        return Summary.of(output, previous, up_to_date=True)

    classes = sorted({s.label for s in cfg.sources})
    writer = DatasetWriter(output, kind="text", health=cfg.health)
    quarantine = Quarantine()
    try:
        with dask_client(dask_address) as client:
            # 1. decode + tokenise, one task per 64 MiB block of each file
            _, blocks = read_bytes([s.path for s in cfg.sources], delimiter=b"\n",
                                   blocksize=BLOCK_SIZE, sample=False)
            tasks = [[delayed(parse_block)(b, s.path, cfg.encoding, cfg.lowercase, cfg.tokenizer)
                      for b in bs]
                     for s, bs in zip(cfg.sources, blocks, strict=True)]
            futures = client.compute([t for ts in tasks for t in ts])
            parsed = list(track((f.result() for f in futures), "decoding + tokenising",
                                total=len(futures)))
            rows: list[tuple] = []  # (source, line, text, label, tokens)
            lines_read: dict[str, int] = {}
            k = 0
            for s, ts in zip(cfg.sources, tasks, strict=True):
                first, n_good = 1, 0
                for _ in ts:
                    part = parsed[k]
                    k += 1
                    for i, text, tokens in part["rows"]:
                        rows.append((s.path, first + i, text, classes.index(s.label), tokens))
                    for i, reason, raw in part["bad"]:
                        quarantine.add(s.path, reason, line=first + i, raw=raw)
                    first += part["lines"]
                    n_good += len(part["rows"])
                lines_read[s.path] = first - 1
                if n_good == 0:
                    raise PipelineError(
                        f"source file {s.path} (class {s.label!r}) holds no usable line "
                        f"({first - 1} lines read, all quarantined or none at all); "
                        "every class needs examples")

            # 2. split and vocabulary (global, on the driver: small)
            labels = np.array([r[3] for r in rows])
            split = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.seed)
            vocab = build_vocab([r[4] for r, sp in zip(rows, split, strict=True) if sp == "train"],
                                cfg.min_count, cfg.max_vocab)
            writer.write_side_file("vocab.json", json.dumps(list(vocab)).encode())

            # 3. encode + write parts, one task per part
            [vocab_f] = client.scatter([vocab], broadcast=True)  # a list: a dict would scatter per key
            jobs, splits = [], {}
            order = np.random.default_rng(cfg.seed + 1).permutation(len(rows))
            for name in ("train", "val", "test"):
                # shuffled, so that any contiguous slice of a split (a worker's) mixes the classes
                members = [rows[i] for i in order if split[i] == name]
                per_class = Counter(r[3] for r in members)
                splits[name] = {"parts": [], "classes": {c: per_class[i] for i, c in enumerate(classes)}}
                for index, start in enumerate(range(0, len(members), cfg.part_rows)):
                    chunk = members[start:start + cfg.part_rows]
                    jobs.append((name, index, client.submit(
                        encode_part, writer.part_uri(name, index), chunk, vocab_f, pure=False)))
            for name, index, fut in track(jobs, "writing parts", total=len(jobs)):
                splits[name]["parts"].append({"index": index, "rows": fut.result()})

        counts = Counter(labels.tolist())
        for s in sources:
            s["lines"] = lines_read[s["path"]]
            s["rows"] = sum(1 for r in rows if r[0] == s["path"])
            s["quarantined"] = sum(1 for q in quarantine.records if q["source"] == s["path"])
        manifest = writer.commit(
            splits=splits, schema=SCHEMA, sources=sources, quarantine=quarantine, params=params,
            classes=classes, shapes={"tokens": [None], "label": []}, inputs=TOKENS,
            extra={"vocab_size": len(vocab),
                   "class_counts": {c: counts.get(i, 0) for i, c in enumerate(classes)}},
        )
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)
