"""Events → labelled sessions, vectorised (no Python loop over events or sessions).

The rules, in order:
1. A row without a session (or user), item or parseable time is quarantined.
2. Conversions come from a purchases table (session, time), from events whose type is
   `conversion_event`, or from events a label rule marks (`marks`: the session reached a
   given item or category); such events leave the sequence. A purchase that names a
   session the events do not have is quarantined.
3. An exact duplicate (same session, item, time and event type) is quarantined; the first
   one stays.
4. Events are ordered by time (ties by file and line). With `gap_minutes` a session is cut
   where the user was idle longer than that.
5. Leakage guard: a converted session keeps only the events strictly before its first
   purchase (or conversion event, or marked event); that event and everything after it
   would tell the model the answer.
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
from advorch.pipelines.events import Layout
from advorch.pipelines.shards import Quarantine

NEVER = np.iinfo(np.int64).max
# |ms| beyond this is not a time: floats stop holding whole milliseconds (≈ 285,000 years), and
# larger values overflowed int64 (1e300 s became a time in 1677) or the sort key of sessionise
TIME_LIMIT = 2**53


@dataclass
class Sessions:
    """n sessions in CSR form: the events of session i are offsets[i]:offsets[i+1], in time order.

    Pages are integer codes into `item_names` (strings are touched once per distinct page,
    never once per event).
    """

    ids: pa.Array  # (n,) string: session id (with ":k" for the k-th gap-split piece)
    labels: np.ndarray  # (n,) int32: 1 = converted
    offsets: np.ndarray  # (n + 1,) int64
    item_codes: np.ndarray  # (events,) int32 into item_names
    item_names: pa.Array  # (distinct pages,) string
    times: np.ndarray  # (events,) int64 milliseconds
    stats: dict[str, Any] = field(default_factory=dict)
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) file of 1st event

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def session_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), self.lengths)


def codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(int32 codes, -1 for null; the distinct values) of a string or dictionary column."""
    if isinstance(column, pa.ChunkedArray):
        column = pa.table({"c": column}).unify_dictionaries().column("c").combine_chunks() \
            if pa.types.is_dictionary(column.type) else column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    return pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32), column.dictionary


def parse_time(values: pa.ChunkedArray | pa.Array, unit: str, zone: str | None = None) -> np.ndarray:
    """Milliseconds as int64; NEVER where a value is missing or unparseable.

    `unit`: "ms" / "s" for numbers (since the epoch, or whatever origin the log uses), "iso"
    for ISO-8601 text: an offset in the text is honoured, a naive time is in `zone` (an IANA
    name; none: UTC). A naive time that `zone` skips or repeats (a DST change) is unparseable.
    """
    if unit == "iso" and zone:
        return _in_range(_parse_zoned(values, zone))
    try:  # pyarrow's C++ casts when every value is clean; pandas' coercion only when not
        if unit == "iso":
            ms = pc.cast(values, pa.timestamp("ms")).cast(pa.int64())
        else:
            ms = pc.floor(pc.multiply(pc.cast(values, pa.float64()), 1000.0 if unit == "s" else 1.0))
            ms = ms.cast(pa.int64())
        return _in_range(pc.fill_null(ms, NEVER).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    if unit == "iso":
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        ok = parsed.notna().to_numpy()
        ms = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    else:
        num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        num = num * (1000.0 if unit == "s" else 1.0)
        ok = np.isfinite(num) & (np.abs(num) <= TIME_LIMIT)  # checked before the cast can overflow
        ms = np.floor(np.where(ok, num, 0)).astype(np.int64)
    return _in_range(np.where(ok, ms, NEVER))


def _in_range(ms: np.ndarray) -> np.ndarray:
    """`ms` with NEVER where a time is beyond ±TIME_LIMIT (see there)."""
    return np.where((ms >= -TIME_LIMIT) & (ms <= TIME_LIMIT), ms, NEVER)


def _parse_zoned(values: pa.ChunkedArray | pa.Array, zone: str) -> np.ndarray:
    """ISO times → UTC milliseconds (NEVER if unparseable): naive ones are wall-clock times in
    `zone`, ones with an offset (or Z) keep it."""
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    aware = text.str.contains(r"(?:[zZ]|[+-]\d\d:?\d\d)\s*$", na=False).to_numpy()
    with_offset = pd.to_datetime(text.where(aware), format="ISO8601", errors="coerce", utc=True)
    naive = pd.to_datetime(text.where(~aware), format="ISO8601", errors="coerce")
    local = naive.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    parsed = with_offset.where(aware, local)
    ok = parsed.notna().to_numpy()
    ms = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    return np.where(ok, ms, NEVER)


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
               sources: list[str], quarantine: Quarantine, layouts: tuple[Layout, Layout],
               marks: np.ndarray | None = None) -> Sessions:
    """Apply rules 1-6 of this module's docstring; `sources` names the files behind `source`;
    `layouts` say how the events' and the purchases' times read; `marks` (per event row, from
    a label rule) flags the events that make their session convert."""
    col = cfg.columns
    ev_layout, pu_layout = layouts
    key_col = col.session or col.user
    stats: dict[str, Any] = {"events_read": events.num_rows}
    key, keys = codes(events.column(key_col))
    item, item_names = codes(events.column(col.item))
    event, event_names = codes(events.column(col.event)) if col.event else (None, None)

    # 1. rows without a key, item or time
    times = parse_time(events.column(col.time), ev_layout.time_unit, ev_layout.time_zone)
    all_null = (key < 0) & (item < 0) & events.column(col.time).is_null().to_numpy(zero_copy_only=False)
    missing_key = (key < 0) & ~all_null
    missing_item = (item < 0) & ~all_null & ~missing_key
    bad_time = (times == NEVER) & ~all_null & ~missing_key & ~missing_item
    shown = [c for c in dict.fromkeys([key_col, col.item, col.time]) if c]
    _reject(quarantine, sources, events, all_null, "empty line", shown)
    _reject(quarantine, sources, events, missing_key, f"missing {key_col}: every event needs one", shown)
    _reject(quarantine, sources, events, missing_item, f"missing {col.item}: every event needs one", shown)
    _reject(quarantine, sources, events, bad_time,
            lambda r: f"unparseable timestamp: {r[col.time]!r} with {ev_layout.key('time_unit')} "
                      f"{ev_layout.time_unit!r}{_zone(ev_layout)}", shown)
    keep = ~(all_null | missing_key | missing_item | bad_time)

    # 2. conversions given as events (a type, or marked by a rule) leave the sequence and
    # become purchases
    is_conv = np.zeros(events.num_rows, bool)
    if cfg.conversion_event is not None:
        is_conv = keep & (event == pc.index(event_names, cfg.conversion_event).as_py())
    if marks is not None:
        is_conv = keep & marks
    keep &= ~is_conv
    conversion = "the first event the label rule marks" if marks is not None else "the purchase"

    # 4. order by (key, time); rows are in file order already, so a stable sort keeps ties so
    idx = np.flatnonzero(keep)
    k, t = key[idx].astype(np.int64), times[idx]
    span = int(t.max() - t.min()) + 1 if len(t) else 1
    if len(keys) * span < 2**62:  # one int64 sort key: much faster than lexsort
        order = np.argsort(k * span + (t - (t.min() if len(t) else 0)), kind="stable")
    else:
        order = np.lexsort((t, k))
    idx, k, t = idx[order], k[order], t[order]

    # 3. exact duplicates: same key and time (adjacent now), same item and type
    same = np.zeros(len(idx), bool)
    same[1:] = (k[1:] == k[:-1]) & (t[1:] == t[:-1])
    dup = np.zeros(len(idx), bool)
    if same.any():  # few rows share a key and a time: compare those with pandas
        tied = np.flatnonzero(same | np.r_[same[1:], False])
        frame = pd.DataFrame({"k": k[tied], "t": t[tied], "i": item[idx[tied]],
                              "e": event[idx[tied]] if event is not None else 0})
        dup[tied] = frame.duplicated(keep="first").to_numpy()
    bad = np.zeros(events.num_rows, bool)
    bad[idx[dup]] = True
    _reject(quarantine, sources, events, bad, "duplicate event: same session, item, time and type "
            "as an earlier line", shown)
    stats["events_duplicate"] = int(dup.sum())
    idx, k, t = idx[~dup], k[~dup], t[~dup]

    # 4. (cont.) sessions: runs of one key, cut at idle gaps
    start = np.ones(len(idx), bool)
    start[1:] = k[1:] != k[:-1]
    if cfg.gap_minutes > 0:
        start[1:] |= (t[1:] - t[:-1]) > cfg.gap_minutes * 60_000
    session = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    key_of = k[first]
    new_key = np.r_[True, key_of[1:] != key_of[:-1]]
    piece = np.arange(len(first)) - np.maximum.accumulate(np.where(new_key, np.arange(len(first)), 0))
    ids = keys.take(pa.array(key_of))
    if (piece > 0).any():
        ids = pc.if_else(pa.array(piece > 0), pc.binary_join_element_wise(
            ids.cast(pa.string()), pa.array(piece.astype(str)), ":"), ids.cast(pa.string()))
    ids = ids.cast(pa.string())

    # 2. (cont.) first purchase time per session; a key with no event left has no session
    has_piece = np.zeros(len(keys), bool)
    has_piece[key_of] = True
    if purchases is None:
        conv_code, conv_t = key[is_conv].astype(np.int64), times[is_conv]
        lost = np.zeros(events.num_rows, bool)
        lost[is_conv] = ~has_piece[conv_code]
        _reject(quarantine, sources, events, lost, f"no events before {conversion}", shown)
        conv_code, conv_t = conv_code[has_piece[conv_code]], conv_t[has_piece[conv_code]]
        stats["events_conversion"] = len(conv_code)  # each labels its session, none is a token
    else:
        pt = parse_time(purchases.column("time"), pu_layout.time_unit, pu_layout.time_zone)
        known = pc.fill_null(pc.index_in(purchases.column("session").cast(keys.type), value_set=keys), -1)
        known = known.to_numpy(zero_copy_only=False).astype(np.int64)
        known[known >= 0] = np.where(has_piece[known[known >= 0]], known[known >= 0], -1)
        _reject(quarantine, sources, purchases, pt == NEVER,
                lambda r: f"unparseable purchase timestamp: {r['time']!r} with "
                          f"{pu_layout.key('time_unit')} {pu_layout.time_unit!r}{_zone(pu_layout)}",
                ["session", "time"])
        unknown = (known < 0) & (pt != NEVER)
        _reject(quarantine, sources, purchases, unknown,
                lambda r: f"purchase of an unknown session: {r['session']!r} has no (usable) events",
                ["session", "time"])
        ok = (known >= 0) & (pt != NEVER)
        stats |= {"purchase_rows": purchases.num_rows, "purchase_rows_matched": int(ok.sum()),
                  "purchase_rows_unknown_session": int(unknown.sum())}
        conv_code, conv_t = known[ok], pt[ok]
        stats["events_conversion"] = 0
    bought = np.full(len(first), NEVER, np.int64)
    if len(conv_code):
        target = (_piece_at(key_of, t[first], conv_code, conv_t) if cfg.gap_minutes > 0
                  else np.searchsorted(key_of, conv_code))  # one piece per key
        np.minimum.at(bought, target, conv_t)

    # 5. leakage guard (events are time-ordered, so the kept ones are a prefix), 6. lengths
    before = t < bought[session]
    stats["events_after_purchase"] = int((~before).sum())
    n_before = np.bincount(session[before], minlength=len(first))
    too_short = n_before < cfg.min_length
    src, line = events.column("source").to_numpy(), events.column("line").to_numpy()
    short_ids = ids.filter(pa.array(too_short)).to_pylist()
    for i, sid in zip(np.flatnonzero(too_short), short_ids, strict=True):
        reason = (f"no events before {conversion}" if n_before[i] == 0 else
                  f"session too short: {n_before[i]} event(s), data.clickstream.min_length is "
                  f"{cfg.min_length}")
        e = idx[first[i]]
        quarantine.add(sources[src[e]], reason, line=int(line[e]), raw={"session": sid})
    stats["sessions_too_short"] = int(too_short.sum())
    # their events (one quarantine record per session): so every event read is counted somewhere
    stats["events_too_short"] = int(n_before[too_short].sum())
    pos = np.arange(len(session)) - first[session]
    n = np.where(too_short, 0, n_before)[session]
    kept = (pos < n) & (pos >= n - cfg.max_length)  # the last max_length before the purchase
    stats["events_truncated"] = int(((pos < n) & ~kept).sum())
    sessions = np.flatnonzero(~too_short)
    lengths = np.bincount(session[kept], minlength=len(first))[sessions]
    stats |= {"sessions": int(len(sessions)), "converted": int((bought[sessions] != NEVER).sum()),
              "events": int(kept.sum())}
    return Sessions(ids.take(pa.array(sessions)), (bought[sessions] != NEVER).astype(np.int32),
                    np.r_[0, np.cumsum(lengths)].astype(np.int64), item[idx[kept]], item_names,
                    t[kept], stats, src[idx[first[sessions]]].astype(np.int32))


def _zone(layout: Layout) -> str:
    """", time_zone 'X'" for a reason text, when the layout's ISO times have a zone."""
    return f", {layout.key('time_zone')} {layout.time_zone!r}" if layout.time_unit == "iso" and \
        layout.time_zone else ""


def _piece_at(key_of: np.ndarray, starts: np.ndarray, key: np.ndarray, when: np.ndarray) -> np.ndarray:
    """Per purchase (key, when): the key's last piece started at or before `when` (its first
    piece if none had). Pieces are numbered in (key, start) order."""
    pieces = pd.DataFrame({"t": starts, "k": key_of, "piece": np.arange(len(key_of))})
    buys = pd.DataFrame({"t": when, "k": key, "row": np.arange(len(key))})
    m = pd.merge_asof(buys.sort_values("t", kind="stable"), pieces.sort_values("t", kind="stable"),
                      on="t", by="k", direction="backward").sort_values("row")
    first_piece = np.searchsorted(key_of, key)
    return np.where(m["piece"].isna(), first_piece, m["piece"].fillna(0)).astype(np.int64)
