"""Events → labelled sessions, vectorised (no Python loop over events or sessions).

The rules, in order:
1. A row without a session (or user), item or parseable time is quarantined.
2. Conversions come from a purchases table (session, time) or from events whose type is
   `conversion_event` (those events then leave the sequence). A purchase that names a
   session the events do not have is quarantined.
3. An exact duplicate (same session, item, time and event type) is quarantined; the first
   one stays.
4. Events are ordered by time (ties by file and line). With `gap_minutes` a session is cut
   where the user was idle longer than that.
5. Leakage guard: a converted session keeps only the events strictly before its first
   purchase; the purchase and everything after it would tell the model the answer.
6. Sessions left with fewer than `min_length` events (0 when the purchase came first) are
   quarantined; the rest keep their last `max_length` events (Jia et al.: max 732).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from advorch.config import ClickstreamConfig
from advorch.pipelines.shards import Quarantine

NEVER = np.iinfo(np.int64).max


@dataclass
class Sessions:
    """n sessions in CSR form: events of session i are items[offsets[i]:offsets[i+1]], in time order."""

    ids: np.ndarray  # (n,) object: session id (with ":k" for the k-th gap-split piece)
    labels: np.ndarray  # (n,) int32: 1 = converted
    offsets: np.ndarray  # (n + 1,) int64
    items: np.ndarray  # (events,) object: page / item ids
    times: np.ndarray  # (events,) int64 milliseconds
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def session_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), self.lengths)


def parse_time(values: pa.ChunkedArray | pa.Array, unit: str) -> np.ndarray:
    """Milliseconds as int64; NEVER where a value is missing or unparseable.

    `unit`: "ms" / "s" for numbers, "iso" for ISO-8601 text (a zone is honoured, naive is UTC).
    """
    try:  # pyarrow's C++ casts when every value is clean; pandas' coercion only when not
        if unit == "iso":
            ms = pc.cast(values, pa.timestamp("ms")).cast(pa.int64())
        else:
            ms = pc.floor(pc.multiply(pc.cast(values, pa.float64()), 1000.0 if unit == "s" else 1.0))
            ms = ms.cast(pa.int64())
        return pc.fill_null(ms, NEVER).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    if unit == "iso":
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        ok = parsed.notna().to_numpy()
        ms = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    else:
        num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(num)
        ms = np.floor(np.where(ok, num * (1000.0 if unit == "s" else 1.0), 0)).astype(np.int64)
    return np.where(ok, ms, NEVER)


def _strings(table: pa.Table, column: str | None) -> np.ndarray | None:
    return None if column is None else table.column(column).to_numpy(zero_copy_only=False)


def _reject(quarantine: Quarantine, sources: list[str], table: pa.Table, bad: np.ndarray,
            reason: str | Callable[[dict[str, Any]], str], columns: list[str]) -> None:
    """Quarantine the rows of `table` where `bad` holds, each with its file, line and values."""
    if not bad.any():
        return
    rows = table.filter(pa.array(bad)).select([*columns, "source", "line"]).to_pylist()
    for r in rows:
        raw = {c: r[c] for c in columns}
        quarantine.add(sources[r["source"]], reason(raw) if callable(reason) else reason,
                       line=r["line"], raw=raw)


def sessionise(events: pa.Table, purchases: pa.Table | None, cfg: ClickstreamConfig,
               sources: list[str], quarantine: Quarantine) -> Sessions:
    """Apply rules 1-6 of this module's docstring; `sources` names the files behind `source`."""
    col = cfg.columns
    key_col = col.session or col.user
    stats: dict[str, Any] = {"events_read": events.num_rows}

    # 1. rows without a key, item or time
    times = parse_time(events.column(col.time), cfg.time_unit)
    all_null = np.ones(events.num_rows, bool)
    for c in {key_col, col.item, col.time, col.event} - {None}:
        all_null &= events.column(c).is_null().to_numpy(zero_copy_only=False)
    missing_key = events.column(key_col).is_null().to_numpy(zero_copy_only=False) & ~all_null
    missing_item = events.column(col.item).is_null().to_numpy(zero_copy_only=False) & ~all_null & ~missing_key
    bad_time = (times == NEVER) & ~all_null & ~missing_key & ~missing_item
    shown = [c for c in dict.fromkeys([key_col, col.item, col.time]) if c]
    _reject(quarantine, sources, events, all_null, "empty line", shown)
    _reject(quarantine, sources, events, missing_key, f"missing {key_col}: every event needs one", shown)
    _reject(quarantine, sources, events, missing_item, f"missing {col.item}: every event needs one", shown)
    _reject(quarantine, sources, events, bad_time,
            lambda r: f"unparseable timestamp: {r[col.time]!r} with data.clickstream.time_unit "
                      f"{cfg.time_unit!r}", shown)
    keep = ~(all_null | missing_key | missing_item | bad_time)

    # 2. conversions given as events leave the sequence and become purchases
    conv_key = conv_time = None
    if cfg.conversion_event is not None:
        is_conv = keep & (_strings(events, col.event) == cfg.conversion_event)
        conv_key, conv_time = _strings(events, key_col)[is_conv], times[is_conv]
        keep &= ~is_conv

    # 3. exact duplicates
    frame = pd.DataFrame({"k": _strings(events, key_col), "i": _strings(events, col.item), "t": times})
    if col.event:
        frame["e"] = _strings(events, col.event)
    dup = keep & frame.duplicated(keep="first").to_numpy() if len(frame) else keep & False
    _reject(quarantine, sources, events, dup, "duplicate event: same session, item, time and type "
            "as an earlier line", shown)
    keep &= ~dup
    stats["events_duplicate"] = int(dup.sum())

    idx = np.flatnonzero(keep)
    codes, keys = pd.factorize(frame["k"].to_numpy()[idx])
    t = times[idx]
    order = np.lexsort((events.column("line").to_numpy()[idx], events.column("source").to_numpy()[idx],
                        t, codes))
    idx, codes, t = idx[order], codes[order], t[order]
    items = frame["i"].to_numpy()[idx]

    # 4. sessions: runs of one key, cut at idle gaps
    start = np.ones(len(idx), bool)
    start[1:] = codes[1:] != codes[:-1]
    if cfg.gap_minutes > 0:
        start[1:] |= (t[1:] - t[:-1]) > cfg.gap_minutes * 60_000
    session = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    key_of = codes[first]
    piece = np.arange(len(first)) - np.maximum.accumulate(
        np.where(np.r_[True, key_of[1:] != key_of[:-1]], np.arange(len(first)), 0))
    ids = np.asarray(keys, dtype=object)[key_of]
    if (piece > 0).any():
        ids = np.where(piece > 0, ids.astype(str) + ":" + piece.astype(str), ids).astype(object)

    # 2. (cont.) first purchase time per session
    if purchases is not None:
        pt = parse_time(purchases.column("time"), cfg.time_unit)
        pk = purchases.column("session").to_numpy(zero_copy_only=False)
        _reject(quarantine, sources, purchases, pt == NEVER,
                lambda r: f"unparseable purchase timestamp: {r['time']!r} with "
                          f"data.clickstream.time_unit {cfg.time_unit!r}", ["session", "time"])
        known = pd.Index(keys).get_indexer(pk)
        unknown = (known < 0) & (pt != NEVER)
        _reject(quarantine, sources, purchases, unknown,
                lambda r: f"purchase of an unknown session: {r['session']!r} has no events",
                ["session", "time"])
        stats |= {"purchase_rows": purchases.num_rows, "purchase_rows_matched": int(((known >= 0)
                  & (pt != NEVER)).sum()), "purchase_rows_unknown_session": int(unknown.sum())}
        ok = (known >= 0) & (pt != NEVER)
        conv_code, conv_t = known[ok], pt[ok]
    elif conv_key is not None:
        conv_code = pd.Index(keys).get_indexer(conv_key)
        conv_t = conv_time[conv_code >= 0]
        conv_code = conv_code[conv_code >= 0]
    else:
        conv_code, conv_t = np.empty(0, np.int64), np.empty(0, np.int64)
    bought = np.full(len(first), NEVER, np.int64)
    if len(conv_code):
        target = (_piece_at(key_of, t[first], conv_code, conv_t) if cfg.gap_minutes > 0
                  else conv_code)  # one piece per key, numbered as the keys
        np.minimum.at(bought, target, conv_t)

    # 5. leakage guard (events are time-ordered, so the kept ones are a prefix), 6. lengths
    before = t < bought[session]
    stats["events_after_purchase"] = int((~before).sum())
    n_before = np.bincount(session[before], minlength=len(first))
    too_short = n_before < cfg.min_length
    src, line = events.column("source").to_numpy(), events.column("line").to_numpy()
    for i in np.flatnonzero(too_short):
        reason = ("no events before the purchase" if n_before[i] == 0 else
                  f"session too short: {n_before[i]} event(s), data.clickstream.min_length is "
                  f"{cfg.min_length}")
        e = idx[first[i]]
        quarantine.add(sources[src[e]], reason, line=int(line[e]), raw={"session": str(ids[i])})
    stats["sessions_too_short"] = int(too_short.sum())
    pos = np.arange(len(session)) - first[session]
    n = np.where(too_short, 0, n_before)[session]
    kept = (pos < n) & (pos >= n - cfg.max_length)  # the last max_length before the purchase
    stats["events_truncated"] = int(((pos < n) & ~kept).sum())
    sessions = np.flatnonzero(~too_short)
    lengths = np.bincount(session[kept], minlength=len(first))[sessions]
    stats |= {"sessions": int(len(sessions)), "converted": int((bought[sessions] != NEVER).sum()),
              "events": int(kept.sum())}
    return Sessions(ids[sessions], (bought[sessions] != NEVER).astype(np.int32),
                    np.r_[0, np.cumsum(lengths)].astype(np.int64), items[kept], t[kept], stats)


def _piece_at(key_of: np.ndarray, starts: np.ndarray, key: np.ndarray, when: np.ndarray) -> np.ndarray:
    """Per purchase (key, when): the key's last piece started at or before `when` (its first
    piece if none had). Pieces are numbered in (key, start) order."""
    pieces = pd.DataFrame({"t": starts, "k": key_of, "piece": np.arange(len(key_of))})
    buys = pd.DataFrame({"t": when, "k": key, "row": np.arange(len(key))})
    m = pd.merge_asof(buys.sort_values("t", kind="stable"), pieces.sort_values("t", kind="stable"),
                      on="t", by="k", direction="backward").sort_values("row")
    first_piece = np.searchsorted(key_of, key)
    return np.where(m["piece"].isna(), first_piece, m["piece"].fillna(0)).astype(np.int64)
