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

Layouts (events.py): CSV / TSV / JSONL, with or without a header (`header = false` names the
columns by position with `names`). The purchase files read as the event files except where
`purchase_layout` says otherwise (their own format, separator, time unit or zone), since real
logs mix unix seconds and ISO times between files.

Splits: `splits = "random"` (the default) as above; `splits = "files"` keeps a source's own
split files (events as a table split → files, or `split_pattern` reading the split from each
file name). A session with events in two splits' files is quarantined (once, naming the files),
and a session follows its file: moved to another split's file, it is rewritten there.

Labels: a purchases file, a `conversion_event` type, or a `label_rule` for click-only logs (the
session reaches a listed item, or an item whose item_map category is listed). The rule's first
matching event is treated as a purchase: it and every later event leave the session (sessions.py
rule 5), so the page that defines the label is never one of its tokens. Without any label source
the build is refused (or, with data.health.on_problem = "warn", built with a warning).

Audit: the columns (JSONL keys) of the event and purchase files that nothing reads are listed in
the manifest's `unused` records; those in `unused` as declared.
"""

from __future__ import annotations

import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from advorch import __version__
from advorch.config import ClickstreamConfig, DataConfig, HealthConfig, ItemMap, LabelRule
from advorch.pipelines.common import (
    OOV,
    PAD,
    SPLITS,
    TOKENS,
    PipelineError,
    Summary,
    stratified_codes,
    unused,
    word2vec,
)
from advorch.pipelines.events import Layout, expand, read_files
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


def _params(cfg: DataConfig, split_of: dict[str, str] | None) -> dict[str, Any]:
    """What the build depends on besides its source files (a change rebuilds everything);
    `split_of`: each event file's split (splits = "files")."""
    c = cfg.clickstream
    return {"advorch": __version__, **c.model_dump(exclude={"events", "purchases"}),
            "min_count": cfg.min_count, "max_vocab": cfg.max_vocab, "test_fraction": cfg.test_fraction,
            "val_fraction": cfg.val_fraction, "seed": cfg.seed, "part_rows": cfg.part_rows,
            **({"file_splits": split_of} if split_of is not None else {})}


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


def read_item_map(spec: ItemMap) -> pd.DataFrame:
    """The map's (key, value) pairs, one per key (its first line wins).

    Raises:
        PipelineError: the map file lacks the key or value column.
    """
    try:
        table = pacsv.read_csv(spec.path, parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
                               convert_options=pacsv.ConvertOptions(
                                   include_columns=[spec.key, spec.value],
                                   column_types={spec.key: pa.string(), spec.value: pa.string()}))
    except (pa.ArrowInvalid, KeyError) as e:
        raise PipelineError(f"{spec.path}: cannot read columns {spec.key!r} and {spec.value!r} "
                            f"({e}); fix data.clickstream.item_map") from None
    return table.drop_null().to_pandas().drop_duplicates(spec.key)  # the first line of a key wins


def map_items(names: pa.Array, spec: ItemMap | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per distinct page: its token code; the token names; how many pages the map lacks
    (those stay themselves).

    Raises:
        PipelineError: the map file lacks the key or value column.
    """
    pages = names.to_numpy(zero_copy_only=False).astype(object)
    if spec is None:
        return np.arange(len(pages)), pages, 0
    pairs = read_item_map(spec)
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
    c = cfg.clickstream
    ev = gather(s, train)
    seqs = np.split(token_names.astype(str)[token_code[ev]], np.cumsum(s.lengths[train])[:-1])
    return word2vec([q.tolist() for q in seqs], vocab, c.embedding_dim, c.embedding_window,
                    c.embedding_epochs, cfg.seed, c.embedding_workers)


def _previous_state(output: str, manifest: dict[str, Any] | None,
                    params: dict[str, Any]) -> tuple[pa.Table | None, list[str]]:
    """(sessions state table, vocabulary) of the previous build, if it was built with these params."""
    if manifest is None or manifest.get("params") != params or "sessions.parquet" not in manifest.get(
            "side_files", {}):
        return None, []
    state = pq.read_table(io.BytesIO(read_side_file(output, "sessions.parquet", manifest)))
    return state, json.loads(read_side_file(output, "vocab.json", manifest))


NO_LABEL_SOURCE = ("no label source: set data.clickstream.purchases (files of converted sessions), "
                   "conversion_event (an event type, with columns.event) or label_rule (items or "
                   "categories whose reach is a conversion)")
# a split_pattern's (?P<split>) text → split
SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test"}


def check(c: ClickstreamConfig, health: HealthConfig) -> None:
    """The settings that cannot work together, before any file is read.

    Raises:
        PipelineError: the message names the keys and the fix.
    """
    if not c.events:
        raise PipelineError("data.clickstream.events is empty: list the event files or patterns")
    if c.columns.session is None and (c.columns.user is None or c.gap_minutes <= 0):
        raise PipelineError("data.clickstream.columns.session is unset: then set columns.user and "
                            "gap_minutes > 0 to cut each user's events into sessions")
    if c.conversion_event and not c.columns.event:
        raise PipelineError("data.clickstream.conversion_event needs columns.event (the event type column)")
    given = [k for k, v in (("purchases", c.purchases), ("conversion_event", c.conversion_event),
                            ("label_rule", c.label_rule)) if v]
    if len(given) > 1:
        raise PipelineError(f"set one label source of data.clickstream.purchases, conversion_event and "
                            f"label_rule, not {' and '.join(given)}")
    if not given and health.on_problem == "fail":
        raise PipelineError(f"{NO_LABEL_SOURCE}; or build a one-class dataset anyway with "
                            "data.health.on_problem = \"warn\"")
    rule = c.label_rule
    if rule is not None and not (rule.item or rule.category):
        raise PipelineError("data.clickstream.label_rule is empty: give item = [...] or category = [...]")
    if rule is not None and rule.category and c.item_map is None:
        raise PipelineError("data.clickstream.label_rule.category needs data.clickstream.item_map "
                            "(the item → category table)")
    if isinstance(c.events, dict) and c.splits != "files":
        raise PipelineError('data.clickstream.events is a table of splits: set data.clickstream.splits '
                            '= "files" (or give events as a list)')
    if c.splits == "files" and isinstance(c.events, list) and not c.split_pattern:
        raise PipelineError('data.clickstream.splits = "files" needs events as a table split → files '
                            "({train = [...], test = [...]}) or data.clickstream.split_pattern")
    for layout in layouts(c):
        if layout.time_zone:
            try:
                ZoneInfo(layout.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise PipelineError(f"{layout.key('time_zone')} = {layout.time_zone!r} is not an IANA "
                                    "time zone name (e.g. \"Europe/Berlin\", \"UTC\")") from None


def layouts(c: ClickstreamConfig) -> tuple[Layout, Layout]:
    """How the event files and the purchase files read: the purchases take the events' settings
    except where data.clickstream.purchase_layout sets one."""
    fields = ("format", "delimiter", "header", "names", "null_values", "time_unit", "time_zone")
    events = Layout(**{f: getattr(c, f) for f in fields})
    override = c.purchase_layout.model_dump(exclude_none=True)
    return events, replace(events, **override,
                           origin={f: f"data.clickstream.purchase_layout.{f}" for f in override})


def event_files(c: ClickstreamConfig) -> tuple[list[str], dict[str, str] | None]:
    """The event files, and with splits = "files" each file's split.

    Raises:
        PipelineError: a pattern matches no file, a file is in two splits, or split_pattern does
            not compile or does not read a split from a file's name (the pattern as written and
            the file are named).
    """
    if isinstance(c.events, dict):
        split_of: dict[str, str] = {}
        for name, patterns in c.events.items():
            for path in expand(patterns, f"data.clickstream.events.{name}"):
                if split_of.setdefault(path, name) != name:
                    raise PipelineError(f"{path}: listed in data.clickstream.events.{split_of[path]} and "
                                        f".{name}: a file belongs to one split")
        return list(split_of), split_of
    files = expand(c.events, "data.clickstream.events")
    if c.splits != "files":
        return files, None
    try:
        pattern = re.compile(c.split_pattern or "")
    except re.error as e:
        raise PipelineError(f"data.clickstream.split_pattern {c.split_pattern!r} is not a regular "
                            f"expression ({e}); fix it") from None
    if "split" not in pattern.groupindex:
        raise PipelineError(f"data.clickstream.split_pattern {c.split_pattern!r} has no group "
                            "(?P<split>...): name the part of the file name that reads train, val or test")
    return files, {path: _split_of_name(path, pattern) for path in files}


def _split_of_name(path: str, pattern: re.Pattern[str]) -> str:
    """The split that `pattern` reads from the file name of `path`.

    Raises:
        PipelineError: no match, or the group's text is not a split word (pattern and file named).
    """
    name = path.rsplit("/", 1)[-1]
    found = pattern.search(name)
    word = (found.group("split") or "").lower() if found else None
    if word not in SPLIT_WORDS:
        got = "does not match it" if found is None else f"reads {found.group('split')!r} from it"
        raise PipelineError(f"{path}: data.clickstream.split_pattern {pattern.pattern!r} {got}; the "
                            f"(?P<split>) group must read one of {', '.join(SPLIT_WORDS)}: fix the "
                            "pattern or the file name")
    return SPLIT_WORDS[word]


def unused_columns(columns: dict[str, list[str]], used: list[str | None],
                   ignore: list[str]) -> list[dict[str, Any]]:
    """Manifest `unused` records of the files' columns the pipeline does not read: one record per
    file for those data.clickstream.unused declares, one for the rest."""
    out = []
    for path, names in columns.items():
        left = [n for n in names if n not in used]
        declared = [n for n in left if n in ignore]
        out += [unused(path, "columns", group, declared=flag)
                for group, flag in ((declared, True), ([n for n in left if n not in ignore], False)) if group]
    return out


def split_conflicts(events: pa.Table, key_col: str, split_codes: np.ndarray, paths: list[str],
                    quarantine: Quarantine) -> pa.Table:
    """`events` without the sessions whose events lie in the files of two splits; each such
    session is quarantined once (its first line), naming its files. `split_codes`: per file."""
    key, keys = codes(events.column(key_col))
    source = events.column("source").to_numpy()
    split = split_codes[source]
    ok = key >= 0
    low, high = np.full(len(keys), len(SPLITS)), np.full(len(keys), -1)
    np.minimum.at(low, key[ok], split[ok])
    np.maximum.at(high, key[ok], split[ok])
    bad = ok & np.r_[(high >= 0) & (low != high), False][key]  # key -1 (none) reads the False
    if not bad.any():
        return events
    frame = pd.DataFrame({"key": key[bad], "source": source[bad],
                          "line": events.column("line").to_numpy()[bad]})
    per_key = frame.groupby("key", sort=True).agg(source=("source", "first"), line=("line", "first"),
                                                  files=("source", "unique"))
    names = keys.take(pa.array(per_key.index.to_numpy())).cast(pa.string()).to_pylist()
    for sid, (first, line, files) in zip(names, per_key.itertuples(index=False), strict=True):
        shown = [f"{paths[f]} ({SPLITS[split_codes[f]]})" for f in files]
        quarantine.add(paths[first], "session in the files of two splits: " + ", ".join(shown) +
                       "; a session's events must all be in one split's files", line=int(line),
                       raw={"session": sid})
    return events.filter(pa.array(~bad))


def rule_marks(events: pa.Table, item_col: str, rule: LabelRule, spec: ItemMap | None) -> np.ndarray:
    """Per event row: does its item reach the label rule (a listed item, or an item whose
    item_map value is a listed category)?"""
    targets = set(rule.item)
    if rule.category and spec is not None:
        pairs = read_item_map(spec)
        targets |= set(pairs.loc[pairs[spec.value].isin(rule.category), spec.key])
    code, names = codes(events.column(item_col))
    hit = pc.is_in(names.cast(pa.string()), value_set=pa.array(sorted(targets), pa.string()))
    return np.r_[hit.to_numpy(zero_copy_only=False), False][code]  # code -1 (no item) reads the False


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build, extend or confirm up to date the clickstream dataset at `output`.

    Raises:
        PipelineError: settings that do not fit (see `check`), no event files, a file lacks a
            mapped column, no session survives, no session is labelled.
        ShardError: the output folder cannot be written.
    """
    c, output = cfg.clickstream, output or cfg.output
    check(c, cfg.health)
    ev_files, split_of = event_files(c)
    purchase_files = expand(c.purchases, "data.clickstream.purchases") if c.purchases else []
    previous = read_manifest(output)
    map_file = [c.item_map.path] if c.item_map else []
    sources = fingerprints(ev_files + purchase_files + map_file, previous)
    params = _params(cfg, split_of)
    if sources_unchanged(previous, sources, params):
        return Summary.of(output, previous, up_to_date=True)
    quarantine = Quarantine()
    files = []
    for src in sources[:len(ev_files) + len(purchase_files)]:
        if src["size"] == 0:
            quarantine.add(src["path"], "empty file")
        else:
            files.append(src["path"])
    ev_paths = [p for p in ev_files if p in files]
    pu_paths = [p for p in purchase_files if p in files]
    if not ev_paths:
        raise PipelineError(f"every event file is empty: {', '.join(ev_files)}")
    writer = DatasetWriter(output, kind="clickstream", health=cfg.health)
    try:
        events, purchases, notes = _read(c, ev_paths, pu_paths, quarantine, dask_address)
        file_split = None
        if split_of is not None:
            file_split = pd.Index(SPLITS).get_indexer([split_of[p] for p in ev_paths])
            before = len(quarantine)
            events = split_conflicts(events, c.columns.session or c.columns.user, file_split, ev_paths,
                                     quarantine)
            conflicts = len(quarantine) - before
        marks = rule_marks(events, c.columns.item, c.label_rule, c.item_map) if c.label_rule else None
        s = sessionise(events, purchases, c, ev_paths + pu_paths, quarantine, layouts(c), marks)
        if split_of is not None:
            s.stats["sessions_split_conflict"] = conflicts
        if len(s) == 0:
            first = quarantine.records[0] if len(quarantine) else {}
            raise PipelineError(f"no session survived: {len(quarantine)} rows or sessions rejected "
                                f"{quarantine.by_reason()}, the first {first.get('source')} line "
                                f"{first.get('line')}: {first.get('reason')}")
        notes["warnings"] = _label_warnings(s, cfg, output)
        given = None if file_split is None else file_split[s.sources]
        manifest = _write(s, cfg, output, writer, params, sources, quarantine, previous, given, notes)
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)


def _read(c: ClickstreamConfig, ev_paths: list[str], pu_paths: list[str], quarantine: Quarantine,
          dask_address: str | None) -> tuple[pa.Table, pa.Table | None, dict[str, Any]]:
    """(events, purchases as (session, time, line, source) or None, {"unused": records}); the
    purchases' `source` counts on after the event files."""
    from advorch.pipelines.cluster import dask_client

    cols, pcols = c.columns, c.purchase_columns
    key = cols.session or cols.user
    wanted = [x for x in dict.fromkeys([key, cols.time, cols.item, cols.event]) if x]
    ev_layout, pu_layout = layouts(c)
    # a local cluster of threads: parsing runs in pyarrow's C++ (GIL released)
    with dask_client(dask_address, processes=False) as client:
        events, ev_columns = read_files(ev_paths, wanted, layout=ev_layout, client=client,
                                        quarantine=quarantine, what="data.clickstream.columns",
                                        categorical=[key, cols.item, cols.event])
        notes = {"unused": unused_columns(ev_columns, wanted, c.unused)}
        if not pu_paths:
            return events, None, notes
        pwanted = list(dict.fromkeys([pcols.session, pcols.time]))
        p, pu_columns = read_files(pu_paths, pwanted, layout=pu_layout, client=client,
                                   quarantine=quarantine, what="data.clickstream.purchase_columns",
                                   categorical=[])
    notes["unused"] += unused_columns(pu_columns, pwanted, c.unused)
    purchases = pa.table({"session": p.column(pcols.session), "time": p.column(pcols.time),
                          "line": p.column("line"), "source": pc.add(p.column("source"), len(ev_paths))})
    return events, purchases, notes


def _label_warnings(s: Sessions, cfg: DataConfig, output: str) -> list[str]:
    """[] when some session converted; else why not, raised (on_problem "fail") or returned as a
    manifest warning ("warn"): the health check would only say "one class".

    Raises:
        PipelineError: no session is labelled purchase and data.health.on_problem is "fail".
    """
    if s.labels.any():
        return []
    c, st = cfg.clickstream, s.stats
    if c.purchases:
        why = (f"data.clickstream.purchases matched {st.get('purchase_rows_matched', 0)} of "
               f"{st.get('purchase_rows', 0)} purchase rows to a session with events before it "
               "(check purchase_columns and that both files name sessions alike)")
    elif c.conversion_event:
        why = (f"no usable event has type {c.conversion_event!r} in column {c.columns.event!r} "
               "(data.clickstream.conversion_event)")
    elif c.label_rule:
        why = (f"data.clickstream.label_rule (item {c.label_rule.item}, category {c.label_rule.category}) "
               "marks no event that follows another event of its session")
    else:
        why = NO_LABEL_SOURCE
    message = f"no session is labelled purchase: {why}"
    if cfg.health.on_problem == "fail":
        raise PipelineError(f"{output}: {message}; or build anyway with data.health.on_problem = \"warn\"")
    return [message]


def assign_splits(s: Sessions, cfg: DataConfig, state: pa.Table | None,
                  given: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(split per session as an index into SPLITS, its row in the previous state or -1, is it new).

    `given` (splits = "files"): each session's split from its files. Else known sessions keep
    their split and new ones are split among themselves, stratified.
    """
    ids = s.ids.to_numpy(zero_copy_only=False)
    split = np.full(len(s), -1, np.int64)
    at = np.full(len(s), -1)
    if state is not None:
        at = pd.Index(state.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids)
        old_split = pd.Index(SPLITS).get_indexer(state.column("split").to_numpy(zero_copy_only=False))
        split[at >= 0] = old_split[at[at >= 0]]
    new = at < 0
    if given is not None:
        return given.astype(np.int64), at, new
    if new.any():
        split[new] = stratified_codes(s.labels[new], cfg.test_fraction, cfg.val_fraction,
                                      cfg.seed + (0 if state is None else state.num_rows))
    return split, at, new


def _write(s: Sessions, cfg: DataConfig, output: str, writer: DatasetWriter, params: dict[str, Any],
           sources: list[dict[str, Any]], quarantine: Quarantine, previous: dict[str, Any] | None,
           given: np.ndarray | None, notes: dict[str, Any]) -> dict[str, Any]:
    """Split, vocabulary, embeddings, parts (reusing unchanged ones), state and manifest.

    `given`: the sessions' splits from their files (splits = "files"); `notes`: the manifest's
    `unused` and `warnings`.
    """
    state, old_vocab = _previous_state(output, previous, params)
    split, at, new = assign_splits(s, cfg, state, given)
    ids = s.ids.to_numpy(zero_copy_only=False)
    digest = digests(s)
    if given is not None:  # a session whose file moved to another split must be rewritten there
        digest ^= (split.astype(np.uint64) + np.uint64(1)) * np.uint64(0xC2B2AE3D27D4EB4F)
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
               "clickstream": stats, **notes})
