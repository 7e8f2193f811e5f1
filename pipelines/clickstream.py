"""Clickstream event logs → session shards for purchase prediction (Jia et al. KDD'19 §4.1).

    events (+ purchases) ─ Dask: parse blocks ─► sessionise (sessions.py) ─► split,
    vocabulary, Word2Vec page embeddings ─► Parquet parts + manifest (shards.py)

Rows are sessions: `tokens` (page ids, 0 = padding, 1 = OOV), `label` (1 = converted),
`items` (the raw page ids), so the sequence trainers run on them unchanged. With
`item_map` the tokens are what the map gives each page (its category, say; ids the map
lacks stay themselves) and the vocabulary and embeddings are over those.

Incremental: `side/sessions.parquet` records each session's digest (its events and label),
split and part. A re-run with new events (a new day's file, say) keeps every part whose
sessions are all unchanged and writes only new or changed sessions (and the rest of a part
that held a changed one). Known sessions keep their split; new ones are split among
themselves, stratified. The vocabulary only grows: known pages keep their ids, and a part
is rewritten if a page of it that was OOV gets an id. Page embeddings are retrained on the
whole train split each run. Any change of parameters rebuilds everything.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from advorch import __version__
from advorch.config import DataConfig, ItemMap
from advorch.pipelines.common import OOV, PAD, SPLITS, TOKENS, PipelineError, Summary, stratified_codes
from advorch.pipelines.events import expand, read_files
from advorch.pipelines.sessions import Sessions, codes, sessionise
from advorch.pipelines.shards import (
    DatasetWriter,
    Quarantine,
    fingerprints,
    read_manifest,
    read_side_file,
    sources_unchanged,
    write_part,
)
from advorch.progress import track

CLASSES = ["no_purchase", "purchase"]
SCHEMA = pa.schema([
    ("id", pa.string()), ("label", pa.int32()), ("tokens", pa.list_(pa.int32())),
    ("length", pa.int32()), ("items", pa.list_(pa.string())), ("start_ms", pa.int64()),
])


def _params(cfg: DataConfig) -> dict[str, Any]:
    c = cfg.clickstream
    return {"advorch": __version__, **c.model_dump(exclude={"events", "purchases"}),
            "min_count": cfg.min_count, "max_vocab": cfg.max_vocab, "test_fraction": cfg.test_fraction,
            "val_fraction": cfg.val_fraction, "seed": cfg.seed, "part_rows": cfg.part_rows}


def digests(s: Sessions) -> np.ndarray:
    """Per session: a uint64 hash of its (item, time) sequence and its label."""
    name_hash = pd.util.hash_array(s.item_names.to_numpy(zero_copy_only=False))
    h = name_hash[s.item_codes] ^ pd.util.hash_array(s.times)
    position = np.arange(len(h), dtype=np.uint64) - np.repeat(s.offsets[:-1], s.lengths).astype(np.uint64)
    h = h * (np.uint64(2) * position + np.uint64(0x9E3779B97F4A7C15))  # order matters
    total = np.add.reduceat(h, s.offsets[:-1]) if len(h) else np.zeros(len(s), np.uint64)
    total[s.lengths == 0] = 0
    return total ^ s.labels.astype(np.uint64)


def grow_vocab(previous: list[str], names: np.ndarray, counts: np.ndarray, min_count: int,
               max_size: int) -> list[str]:
    """`previous` (or [PAD, OOV]) plus the tokens `names` counted (`counts`) ≥ min_count that it
    lacks, by descending count, ties by name; at most `max_size` entries."""
    vocab = previous or [PAD, OOV]
    names = names.astype(str)
    new = (counts >= min_count) & (pd.Index(vocab).get_indexer(names) < 0)
    order = np.lexsort((names[new], -counts[new]))
    return vocab + names[new][order][:max(max_size - len(vocab), 0)].tolist()


def gather(s: Sessions, rows: np.ndarray) -> np.ndarray:
    """Event indices of sessions `rows`, concatenated in that order (vectorised)."""
    lengths = s.lengths[rows]
    starts = np.repeat(s.offsets[:-1][rows] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    return starts + np.arange(lengths.sum())


def map_items(names: pa.Array, spec: ItemMap | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per distinct page: its token code; the token names; how many pages the map lacks
    (those stay themselves).

    Raises:
        PipelineError: the map file lacks the key or value column.
    """
    pages = names.to_numpy(zero_copy_only=False).astype(object)
    if spec is None:
        return np.arange(len(pages)), pages, 0
    try:
        table = pacsv.read_csv(spec.path, parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
                               convert_options=pacsv.ConvertOptions(
                                   include_columns=[spec.key, spec.value],
                                   column_types={spec.key: pa.string(), spec.value: pa.string()}))
    except (pa.ArrowInvalid, KeyError) as e:
        raise PipelineError(f"{spec.path}: cannot read columns {spec.key!r} and {spec.value!r} "
                            f"({e}); fix data.clickstream.item_map") from None
    pairs = table.drop_null().to_pandas().drop_duplicates(spec.key)  # the first line of a key wins
    at = pd.Index(pairs[spec.key]).get_indexer(pages)
    tokens = np.where(at >= 0, pairs[spec.value].to_numpy(dtype=object)[np.maximum(at, 0)], pages)
    code, token_names = pd.factorize(tokens)
    return code, np.asarray(token_names, dtype=object), int((at < 0).sum())


def session_table(s: Sessions, rows: np.ndarray, token_ids: np.ndarray) -> pa.Table:
    """The Parquet rows of sessions `rows`; `token_ids` holds every event's vocabulary id."""
    ev = gather(s, rows)
    offsets = pa.array(np.r_[0, np.cumsum(s.lengths[rows])].astype(np.int32))
    return pa.table({
        "id": s.ids.take(pa.array(rows)),
        "label": pa.array(s.labels[rows]),
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(token_ids[ev].astype(np.int32))),
        "length": pa.array(s.lengths[rows].astype(np.int32)),
        "items": pa.ListArray.from_arrays(offsets, s.item_names.take(pa.array(s.item_codes[ev]))),
        "start_ms": pa.array(s.times[s.offsets[:-1][rows]]),
    }, schema=SCHEMA)


def page_embeddings(s: Sessions, token_code: np.ndarray, token_names: np.ndarray, train: np.ndarray,
                    vocab: list[str], cfg: DataConfig) -> np.ndarray:
    """Word2Vec (skip-gram) on the train sessions' token sequences → (vocab, dim) float32.

    Jia et al. initialise the page embedding from Word2Vec and fine-tune it in training.
    Padding is 0, OOV the mean vector, a vocabulary token Word2Vec did not see a small
    random vector. `token_code` holds every event's token (index into `token_names`).
    """
    from gensim.models import Word2Vec

    c = cfg.clickstream
    ev = gather(s, train)
    seqs = np.split(token_names.astype(str)[token_code[ev]], np.cumsum(s.lengths[train])[:-1])
    model = Word2Vec([q.tolist() for q in seqs], vector_size=c.embedding_dim, window=c.embedding_window,
                     min_count=1, sg=1, epochs=c.embedding_epochs, workers=c.embedding_workers,
                     seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = rng.normal(0, 0.1, (len(vocab), c.embedding_dim)).astype(np.float32)
    where = np.array([model.wv.key_to_index.get(v, -1) for v in vocab])
    out[where >= 0] = model.wv.vectors[where[where >= 0]]
    out[1] = model.wv.vectors.mean(0) if len(model.wv) else 0
    out[0] = 0
    return out


def _previous_state(output: str, manifest: dict[str, Any] | None,
                    params: dict[str, Any]) -> tuple[pa.Table | None, list[str]]:
    """(sessions state table, vocabulary) of the previous build, if it was built with these params."""
    if manifest is None or manifest.get("params") != params or "sessions.parquet" not in manifest.get(
            "side_files", {}):
        return None, []
    state = pq.read_table(io.BytesIO(read_side_file(output, "sessions.parquet", manifest)))
    return state, json.loads(read_side_file(output, "vocab.json", manifest))


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build, extend or confirm up to date the clickstream dataset at `output`.

    Raises:
        PipelineError: no event files, a file lacks a mapped column, no session survives.
        ShardError: the output folder cannot be written.
    """
    from advorch.pipelines.cluster import dask_client

    c, output = cfg.clickstream, output or cfg.output
    if not c.events:
        raise PipelineError("data.clickstream.events is empty: list the event files or patterns")
    if c.columns.session is None and (c.columns.user is None or c.gap_minutes <= 0):
        raise PipelineError("data.clickstream.columns.session is unset: then set columns.user and "
                            "gap_minutes > 0 to cut each user's events into sessions")
    if c.conversion_event and not c.columns.event:
        raise PipelineError("data.clickstream.conversion_event needs columns.event (the event type column)")
    if c.conversion_event and c.purchases:
        raise PipelineError("set data.clickstream.purchases or conversion_event, not both")
    event_files = expand(c.events, "data.clickstream.events")
    purchase_files = expand(c.purchases, "data.clickstream.purchases") if c.purchases else []
    previous = read_manifest(output)
    map_file = [c.item_map.path] if c.item_map else []
    sources = fingerprints(event_files + purchase_files + map_file, previous)
    params = _params(cfg)
    if sources_unchanged(previous, sources, params):
        return Summary.of(output, previous, up_to_date=True)
    quarantine = Quarantine()
    files = []
    for src in sources[:len(event_files) + len(purchase_files)]:
        if src["size"] == 0:
            quarantine.add(src["path"], "empty file")
        else:
            files.append(src["path"])

    cols = c.columns
    wanted = [x for x in dict.fromkeys([cols.session or cols.user, cols.time, cols.item, cols.event]) if x]
    read = dict(declared_format=c.format, delimiter=c.delimiter, null_values=c.null_values)
    ev_paths = [p for p in event_files if p in files]
    pu_paths = [p for p in purchase_files if p in files]
    if not ev_paths:
        raise PipelineError(f"every event file is empty: {', '.join(event_files)}")
    writer = DatasetWriter(output, kind="clickstream", health=cfg.health)
    try:
        # a local cluster of threads: parsing runs in pyarrow's C++ (GIL released)
        with dask_client(dask_address, processes=False) as client:
            events = read_files(ev_paths, wanted, client=client, quarantine=quarantine,
                                what="data.clickstream.columns", categorical=[cols.session or cols.user,
                                                                              cols.item, cols.event], **read)
            purchases = None
            if pu_paths:
                pcols = c.purchase_columns
                p = read_files(pu_paths, list(dict.fromkeys([pcols.session, pcols.time])), client=client,
                               quarantine=quarantine, what="data.clickstream.purchase_columns",
                               categorical=[], **read)
                purchases = pa.table({"session": p.column(pcols.session), "time": p.column(pcols.time),
                                      "line": p.column("line"),
                                      "source": pc.add(p.column("source"), len(ev_paths))})
        s = sessionise(events, purchases, c, ev_paths + pu_paths, quarantine)
        if len(s) == 0:
            first = quarantine.records[0] if len(quarantine) else {}
            raise PipelineError(f"no session survived: {len(quarantine)} rows or sessions rejected "
                                f"{quarantine.by_reason()}, the first {first.get('source')} line "
                                f"{first.get('line')}: {first.get('reason')}")
        manifest = _write(s, cfg, output, writer, params, sources, quarantine, previous)
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)


def _write(s: Sessions, cfg: DataConfig, output: str, writer: DatasetWriter, params: dict[str, Any],
           sources: list[dict[str, Any]], quarantine: Quarantine,
           previous: dict[str, Any] | None) -> dict[str, Any]:
    """Split, vocabulary, embeddings, parts (reusing unchanged ones), state and manifest."""
    state, old_vocab = _previous_state(output, previous, params)
    digest = digests(s)
    ids = s.ids.to_numpy(zero_copy_only=False)
    split = np.full(len(s), -1, np.int64)  # index into SPLITS
    at = np.full(len(s), -1)  # row in the previous state
    if state is not None:
        at = pd.Index(state.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids)
        old_split = pd.Index(SPLITS).get_indexer(state.column("split").to_numpy(zero_copy_only=False))
        split[at >= 0] = old_split[at[at >= 0]]
    new = split < 0
    if new.any():  # new sessions are split among themselves, stratified; known ones keep theirs
        split[new] = stratified_codes(s.labels[new], cfg.test_fraction, cfg.val_fraction,
                                      cfg.seed + (0 if state is None else state.num_rows))
    session_of = s.session_of_event()
    token_of_item, token_names, unmapped = map_items(s.item_names, cfg.clickstream.item_map)
    token_code = token_of_item[s.item_codes]
    counts = np.bincount(token_code[split[session_of] == 0], minlength=len(token_names))
    vocab = grow_vocab(old_vocab, token_names, counts, cfg.min_count, cfg.max_vocab)
    id_of_token = pd.Index(vocab).get_indexer(token_names.astype(str))
    token_ids = np.where(id_of_token < 0, 1, id_of_token)[token_code]

    # old parts stay when all their sessions are present, unchanged, with no page that just got an id
    old_part = np.full(len(s), -1)
    paths = np.empty(0, dtype=object)
    clean = np.zeros(0, bool)
    if state is not None:
        part_code, part_names = codes(state.column("part"))
        paths = part_names.to_numpy(zero_copy_only=False)
        old_part[at >= 0] = part_code[at[at >= 0]]
        gained = np.bincount(session_of, weights=(id_of_token >= len(old_vocab))[token_code],
                             minlength=len(s)) > 0
        now = pd.Index(ids).get_indexer(state.column("id").to_numpy(zero_copy_only=False))  # -1: gone
        here = np.maximum(now, 0)
        bad = (now < 0) | (digest[here] != state.column("digest").to_numpy()) | gained[here]
        clean = np.ones(len(paths), bool)
        clean[part_code[bad]] = False
    written = (old_part < 0) | ~np.r_[clean, False][old_part]
    rows_of = {p["path"]: p["rows"] for sp in (previous or {}).get("splits", {}).values()
               for p in sp["parts"]}

    rng = np.random.default_rng(cfg.seed + 1)
    part_of = np.where(written, None, np.r_[paths, None][old_part]).astype(object)
    splits: dict[str, dict[str, Any]] = {}
    jobs = []
    for k, name in enumerate(SPLITS):
        members = np.flatnonzero(split == k)
        kept = sorted(set(part_of[members[~written[members]]]))
        splits[name] = {"parts": [{"keep": p, "rows": rows_of[p]} for p in kept],
                        "classes": {c: int((s.labels[members] == i).sum()) for i, c in enumerate(CLASSES)}}
        todo = rng.permutation(members[written[members]])  # shuffled: a worker's slice mixes classes
        for index, start in enumerate(range(0, len(todo), cfg.part_rows)):
            chunk = todo[start:start + cfg.part_rows]
            part_of[chunk] = f"parts/{writer.part_name(name, index)}"
            jobs.append((name, index, chunk))
    # written by the driver's threads (pyarrow releases the GIL): the sessions are here already,
    # shipping them to Dask workers would cost more than the write
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        done = pool.map(lambda j: write_part(writer.part_uri(j[0], j[1]), session_table(s, j[2], token_ids)),
                        jobs)
        for (name, index, _), n in track(zip(jobs, done, strict=True), "writing parts", total=len(jobs)):
            splits[name]["parts"].append({"index": index, "rows": n})

    writer.write_side_file("vocab.json", json.dumps(vocab).encode())
    if cfg.clickstream.embedding_dim:
        buf = io.BytesIO()
        np.save(buf, page_embeddings(s, token_code, token_names, np.flatnonzero(split == 0), vocab, cfg))
        writer.write_side_file("embeddings.npy", buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": s.ids, "digest": digest, "label": s.labels,
                             "split": pa.DictionaryArray.from_arrays(split.astype(np.int8), list(SPLITS)),
                             "part": pa.array(part_of, pa.string()).dictionary_encode()}), buf)
    writer.write_side_file("sessions.parquet", buf.getvalue())

    stats = {**s.stats, "sessions_new": int(new.sum()), "sessions_written": int(written.sum()),
             "events_per_session_mean": float(s.lengths.mean()), "events_unmapped": unmapped,
             "parts_kept": int(sum(len(sp["parts"]) for sp in splits.values()) - len(jobs)),
             "parts_written": len(jobs)}
    return writer.commit(
        splits=splits, schema=SCHEMA, sources=sources, quarantine=quarantine, params=params,
        classes=CLASSES, shapes={"tokens": [None], "label": []}, inputs=TOKENS,
        extra={"vocab_size": len(vocab), "embedding_dim": cfg.clickstream.embedding_dim,
               "class_counts": {c: int((s.labels == i).sum()) for i, c in enumerate(CLASSES)},
               "clickstream": stats})
