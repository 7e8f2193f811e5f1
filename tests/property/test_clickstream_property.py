"""Property tests of the clickstream readers and pipeline (pipelines/events.py, sessions.py,
clickstream.py): event rows in CSV / TSV / JSON lines with random fields.

Inputs: all GENERATED (the real DIGINETICA sample has no malformed row): rows of random fields,
some missing or extra, ids and pages as short tokens, NaN / inf / huge numbers, bad and out-of-range
timestamps, bytes that are not UTF-8, JSON lines of any JSON value. Properties:

- `parse_csv_block` and `parse_jsonl_block` end with a table for every block; every line is one row
  or one quarantine record (CSV without quotes: the lines are the records), and a JSON line's
  values are the same whether the block took the fast reader or the line-by-line one;
- `parse_time` gives, for every value and unit, a time in range or the "unparseable" mark;
- a whole run (in-process Dask cluster) accounts for every event line: it is quarantined, in a
  session, or counted as cut (after the purchase, beyond max_length, a conversion event, in a session
  too short); or the run stops with a PipelineError.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from advorch.config import load_config
from advorch.pipelines import clickstream
from advorch.pipelines.common import PipelineError
from advorch.pipelines.events import parse_csv_block, parse_jsonl_block
from advorch.pipelines.sessions import NEVER, parse_time
from advorch.pipelines.shards import read_manifest
from tests.property.support import FAST_SETTINGS, RUN_SETTINGS, threads_cluster, toml_str

COLUMNS = ["session", "time", "item"]
NULLS = ["", "NA", "null"]
TIME_LIMIT = 2**53  # |ms| beyond this: not a time (sessions.parse_time)

tokens = st.text(alphabet="abcxyz0123456789", min_size=1, max_size=3)
weird = st.sampled_from(
    [
        "",
        "NA",
        "null",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e300",
        "-1e300",
        "9" * 30,
        "-" + "9" * 25,
        "2016-13-45",
        "2016-02-30T25:61:00",
        "9999-12-31T23:59:59",
        "0001-01-01",
        "+275760-09-13",
        "1_000",
        "0x1f",
        " 12 ",
        "12abc",
        "1e19",
    ]
)
stamps = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True).map(repr),
    st.datetimes().map(lambda d: d.isoformat()),
    weird,
)
plain = st.text(alphabet=st.characters(exclude_characters='"\r\n', exclude_categories=["Cs"]), max_size=6)


def field(strict: bool) -> st.SearchStrategy[bytes]:
    """One field's bytes: tokens, times, weird values, any text (strict: no quote or CR, which make
    a record span lines), or bytes that are not UTF-8."""
    texts = st.one_of(tokens, stamps, weird, plain if strict else st.text(max_size=6))
    return st.one_of(texts.map(str.encode), st.sampled_from([b"\xff", b"a\xc3", b"\xe9t\xe9"]))


@st.composite
def delimited(draw: st.DrawFn, strict: bool = True) -> tuple[bytes, list[str], str]:
    """(a CSV/TSV block with a header line, its column names, the separator)."""
    sep = draw(st.sampled_from([",", ";", "\t"]))
    extra = draw(st.lists(st.sampled_from(["user", "day", "x y", "é"]), max_size=2, unique=True))
    names = draw(st.permutations(COLUMNS + extra))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        n = len(names) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(names)]))
        rows.append(sep.encode().join(draw(field(strict)) for _ in range(max(n, 0))))
    block = "\n".join([sep.join(names)]).encode() + b"".join(b"\n" + r for r in rows)
    return block + (b"\n" if draw(st.booleans()) else b""), names, sep


def check_csv_block(case: tuple[bytes, list[str], str], strict: bool = True) -> None:
    block, names, sep = case
    out = parse_csv_block(block, names, COLUMNS, sep, True, NULLS, ["session", "item"])
    table, bad = out["table"], out["bad"]
    physical = re.split(rb"\r\n|\r|\n", block)  # the line ends pyarrow knows
    assert out["lines"] == len(physical) - (1 if physical[-1] == b"" else 0)
    assert table.column_names == [*COLUMNS, "line"]
    lines = table.column("line").to_pylist()
    assert all(2 <= n <= out["lines"] for n in lines + [b[0] for b in bad])
    if strict:  # no quotes, no CR: every line after the header is one row or one record
        assert sorted(lines + [b[0] for b in bad]) == list(range(2, out["lines"] + 1))
        raw = block.split(b"\n")
        for _, reason, text in bad:
            assert reason.startswith(("malformed row", "undecodable")) and isinstance(text, str), reason
        for n, values in zip(lines, table.select(COLUMNS).to_pylist(), strict=True):
            fields = raw[n - 1].split(sep.encode())
            want = [fields[names.index(c)].decode() for c in COLUMNS] if len(fields) == len(names) else None
            if want is not None:
                assert [values[c] for c in COLUMNS] == [None if w in NULLS else w for w in want]


@FAST_SETTINGS
@given(case=delimited())
@example(case=(b"session,time,item\n1,\xff,3\n", COLUMNS, ","))  # not UTF-8: ArrowInvalid killed the block
@example(case=(b"session,time,item\n0,0,0\n0,\xff", COLUMNS, ","))  # not UTF-8 and malformed: the same
@example(case=(b"session,time,item", COLUMNS, ","))  # a header-only file: ArrowInvalid too
@example(case=(b"session,time,item\n1,2," + b"x" * (2**20 + 9) + b"\n3,4,5\n", COLUMNS, ","))  # > 1 MiB line
def test_csv_block_every_line_is_a_row_or_a_record(case: tuple[bytes, list[str], str]) -> None:
    check_csv_block(case)


@FAST_SETTINGS
@given(case=delimited(strict=False))
@example(case=(b'"session,time,item\n1,2,3\n', COLUMNS, ","))  # a header quote that never closes
def test_csv_block_with_quotes_and_cr_ends_with_a_table(case: tuple[bytes, list[str], str]) -> None:
    check_csv_block(case, strict=False)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        tokens,
        stamps,
        st.text(max_size=5),
    ),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(tokens, inner, max_size=2),
    max_leaves=4,
)


@st.composite
def json_line(draw: st.DrawFn) -> bytes:
    """A JSON object with some of the mapped keys (and others), or a line that is no JSON object."""
    keys = draw(st.lists(st.sampled_from(COLUMNS + ["user", "type"]), unique=True, max_size=5))
    record = {k: draw(json_values) for k in keys}
    good = json.dumps(record, allow_nan=True).encode()
    return draw(
        st.one_of(
            st.just(good),
            st.just(good),
            st.sampled_from(
                [
                    b"",
                    b"   ",
                    b"[1, 2]",
                    b"3",
                    b'"text"',
                    b"{",
                    b"{not json",
                    b'{"session": 1}{"session": 2}',
                    b'{"session": "\\ud800"}',
                    b'{"item": "a", "item": "b"}',
                    b'{"time": 1e999}',
                    b"\xff\xfe",
                    b'{"time": "2016-01-01T00:00:00Z"}',
                    b'{"time": "2016-01-01 00:00:00"}',
                ]
            ),
        )
    )


def expected_json(raw: bytes) -> list[str | None] | None:
    """The mapped values a JSON line must give (the oracle, apart from events.py), None: not a row."""
    try:
        record = json.loads(raw)
        json.dumps(record, ensure_ascii=False).encode()  # a lone surrogate is no text
    except (ValueError, UnicodeError):
        return None
    if not isinstance(record, dict):
        return None
    return [None if record.get(c) is None else str(record[c]) for c in COLUMNS]


def check_jsonl_block(raw_lines: list[bytes], newline_at_end: bool) -> None:
    block = b"\n".join(raw_lines) + (b"\n" if newline_at_end and raw_lines else b"")
    out = parse_jsonl_block(block, COLUMNS, ["session", "item"])
    table, bad = out["table"], out["bad"]
    n_lines = len(block.split(b"\n")) - (1 if block.endswith(b"\n") or not block else 0)
    assert out["lines"] == n_lines
    lines = table.column("line").to_pylist()
    assert sorted(lines + [b[0] for b in bad]) == list(range(1, n_lines + 1))
    physical = block.split(b"\n")
    for n, values in zip(lines, table.select(COLUMNS).to_pylist(), strict=True):
        assert [values[c] for c in COLUMNS] == expected_json(physical[n - 1]), physical[n - 1]
    for n, reason, _ in bad:
        assert expected_json(physical[n - 1]) is None and reason.startswith("malformed row"), physical[n - 1]


@FAST_SETTINGS
@given(raw_lines=st.lists(json_line(), max_size=6), newline_at_end=st.booleans())
@example(raw_lines=[b'{"session": "\\ud800"}'], newline_at_end=True)  # a bare UnicodeEncodeError
@example(
    raw_lines=[b'{"session": 12345678901234567891}', b'{"session": 12345678901234567890}'],
    newline_at_end=True,
)  # the fast reader read both as the same float
@example(
    raw_lines=[b'{"session": 1}{"session": 2}', b'{"session": 3}'], newline_at_end=True
)  # 2 rows on line 1
@example(raw_lines=[b'{"time": "2016-01-01T00:00:00Z"}'], newline_at_end=True)  # a timestamp lost its zone
@example(raw_lines=[b'{"item": true}'], newline_at_end=False)  # "true" from one reader, "True" the other
def test_jsonl_block_rows_are_the_json_of_their_line(raw_lines: list[bytes], newline_at_end: bool) -> None:
    check_jsonl_block(raw_lines, newline_at_end)


def check_parse_time(values: list[str | None], unit: str, zone: str | None) -> None:
    ms = parse_time(pa.array(values, pa.string()), unit, zone)
    assert ms.dtype == np.int64 and len(ms) == len(values)
    ok = ms != NEVER
    assert (np.abs(ms[ok]) <= TIME_LIMIT).all(), list(zip(values, ms, strict=True))  # no overflowed garbage
    for v, t in zip(values, ms, strict=True):
        if v is None or v.strip() == "":
            assert t == NEVER
        elif unit != "iso":
            try:
                x = float(v)
            except ValueError:
                continue
            if not math.isfinite(x) or abs(x * (1000 if unit == "s" else 1)) > TIME_LIMIT:
                assert t == NEVER, (v, t)
            elif "_" not in v:  # float() reads "1_0"; a log's number does not
                assert t == math.floor(x * (1000.0 if unit == "s" else 1.0)), (v, t)


@FAST_SETTINGS
@given(
    values=st.lists(st.one_of(st.none(), stamps, weird, tokens), max_size=6),
    unit=st.sampled_from(["s", "ms", "iso"]),
    zone=st.sampled_from([None, None, "Europe/Berlin", "UTC"]),
)
@example(values=["1e300"], unit="s", zone=None)  # overflowed int64 into a time before 1677
@example(values=["12345678901234567890123"], unit="ms", zone=None)
def test_parse_time_is_a_time_in_range_or_unparseable(
    values: list[str | None], unit: str, zone: str | None
) -> None:
    check_parse_time(values, unit, zone)


# ---------------------------------------------------------------- whole runs


@st.composite
def event_logs(draw: st.DrawFn) -> dict:
    """Event rows of a few sessions (a CSV, TSV or JSONL file), a label source, and the layout."""
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    unit = draw(st.sampled_from(["s", "ms", "iso"]))
    sessions = draw(st.lists(tokens, min_size=1, max_size=4, unique=True))
    times = st.integers(0, 10**6).map(lambda t: str(t) if unit != "iso" else f"2016-05-01T00:{t % 60:02d}:00")
    rows = []
    for _ in range(draw(st.integers(1, 14))):
        row = {
            "session": draw(st.sampled_from(sessions)),
            "time": draw(st.one_of(times, times, stamps)),
            "item": draw(st.one_of(tokens, tokens, st.sampled_from(["", "NA"]))),
            "type": draw(st.sampled_from(["view", "view", "buy"])),
        }
        if draw(st.integers(0, 9)) == 0:
            row.pop(draw(st.sampled_from(list(row))))  # a missing field
        rows.append(row)
    rows += draw(st.lists(st.sampled_from(rows), max_size=2))  # exact duplicates
    label = draw(st.sampled_from(["purchases", "conversion_event"]))
    buys = (
        [
            {"session": draw(st.one_of(st.sampled_from(sessions), tokens)), "time": draw(times)}
            for _ in range(draw(st.integers(0, 3)))
        ]
        if label == "purchases"
        else []
    )
    return {
        "format": fmt,
        "unit": unit,
        "rows": rows,
        "label": label,
        "buys": buys,
        "min_length": draw(st.integers(1, 3)),
        "max_length": draw(st.integers(1, 5)),
    }


def _write(path: Path, fmt: str, rows: list[dict], columns: list[str]) -> int:
    """Write `rows` as `fmt`; a row that lacks a field loses it (JSONL) or is short (CSV/TSV)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return len(rows)
    sep = "\t" if fmt == "tsv" else ","
    lines = [sep.join(columns)] + [sep.join(r[c] for c in columns if c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return len(rows)


def check_run(case: dict, dask_address: str) -> None:
    fmt, columns = case["format"], ["session", "time", "item", "type"]
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / f"events.{fmt}"
        given_rows = _write(events, fmt, case["rows"], columns)
        overrides = [
            'data.kind="clickstream"',
            f'data.output="{tmp}/out"',
            f"data.clickstream.events=[{toml_str(str(events))}]",
            'data.clickstream.columns={session="session", time="time", item="item", event="type"}',
            'data.clickstream.purchase_columns={session="session", time="time"}',
            f'data.clickstream.time_unit="{case["unit"]}"',
            "data.clickstream.embedding_dim=0",
            f"data.clickstream.min_length={case['min_length']}",
            f"data.clickstream.max_length={case['max_length']}",
            'data.health.on_problem="warn"',
        ]
        purchases = None
        if case["label"] == "purchases":
            purchases = Path(tmp) / "buys.csv"
            purchases.write_text(
                "session,time\n" + "".join(f"{b['session']},{b['time']}\n" for b in case["buys"])
            )
            overrides.append(f"data.clickstream.purchases=[{toml_str(str(purchases))}]")
        else:
            overrides.append('data.clickstream.conversion_event="buy"')
        cfg = load_config(None, overrides)
        try:
            summary = clickstream.run(cfg.data, dask_address=dask_address)
        except PipelineError as e:
            assert str(e).startswith("no session survived"), e
            return
        m = read_manifest(f"{tmp}/out")
        st_ = m["clickstream"]
        records = (
            [json.loads(x) for x in (Path(tmp) / "out" / m["quarantine"]["file"]).read_text().splitlines()]
            if m["quarantine"]["file"]
            else []
        )
        per_row = [
            r
            for r in records
            if r["source"] == str(events)
            and not (isinstance(r["raw"], dict) and set(r["raw"]) == {"session"})
        ]
        first = 1 if fmt == "jsonl" else 2  # line 1 of a CSV/TSV is its header
        assert all(r["line"] is not None and first <= r["line"] < first + given_rows for r in per_row)
        assert len({r["line"] for r in per_row}) == len(per_row)  # one record per line
        # every event line: quarantined, in a session, or counted as cut
        assert (
            given_rows
            == len(per_row)
            + st_["events"]
            + st_["events_truncated"]
            + st_["events_after_purchase"]
            + st_["events_conversion"]
            + st_["events_too_short"]
        ), (st_, [r["reason"] for r in per_row])
        assert summary.rows == st_["sessions"] == sum(sp["rows"] for sp in m["splits"].values())
        if purchases is not None:
            bought = [r for r in records if r["source"] == str(purchases)]
            assert len(case["buys"]) == st_["purchase_rows"] == st_["purchase_rows_matched"] + len(bought)


@pytest.fixture(scope="module")
def cluster():
    with threads_cluster() as address:
        yield address


@RUN_SETTINGS
@given(case=event_logs())
def test_a_run_accounts_for_every_event_line(case: dict, cluster: str) -> None:
    check_run(case, cluster)


FUZZ = {  # name → (strategies, the property, needs the cluster): benchmarks/fuzz_parsers.py
    "events.parse_csv_block": (dict(case=delimited()), check_csv_block, False),
    "events.parse_csv_block (quotes, CR)": (
        dict(case=delimited(strict=False)),
        lambda case: check_csv_block(case, strict=False),
        False,
    ),
    "events.parse_jsonl_block": (
        dict(raw_lines=st.lists(json_line(), max_size=6), newline_at_end=st.booleans()),
        check_jsonl_block,
        False,
    ),
    "sessions.parse_time": (
        dict(
            values=st.lists(st.one_of(st.none(), stamps, weird, tokens), max_size=6),
            unit=st.sampled_from(["s", "ms", "iso"]),
            zone=st.sampled_from([None, "Europe/Berlin", "UTC"]),
        ),
        check_parse_time,
        False,
    ),
    "clickstream.run": (dict(case=event_logs()), check_run, True),
}
