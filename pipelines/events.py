"""Event-log files (CSV / TSV / JSONL, gzip allowed) → Arrow tables of the mapped columns.

Each file is cut into blocks that end on a `\\n` byte (a gzip file is one block) and
every block is parsed by one Dask task with pyarrow's C++ readers, so the heavy
decoding runs on the cluster. Only the columns the config maps are read, all as
strings: a malformed value then never fails a whole block; it is parsed (and, if bad,
quarantined) row by row later. Rows with the wrong number of fields and lines that
are not JSON are quarantined here with their file, line and text.

Every kept row carries `line`, its 1-based line in its file (the header, if the file
has one, is line 1), so later quarantine records can name it. A headerless CSV/TSV
(`header = false`) takes its column names from the layout's `names`, in order.

`read_files` also returns each file's columns (a JSONL file's keys), so the pipeline can
report the ones it did not use.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import Quarantine
from advorch.progress import track

BLOCK_SIZE = 8 * 2**20  # small blocks keep both workers busy and results flowing


@dataclass(frozen=True)
class Layout:
    """How one kind of log file reads (resolved from the config: see clickstream.layouts).

    `origin` maps each setting to the config key it came from, for error messages.
    """

    format: str = "auto"
    delimiter: str | None = None
    header: bool = True
    names: list[str] = field(default_factory=list)
    null_values: list[str] = field(default_factory=lambda: ["", "NA", "null"])
    time_unit: str = "iso"
    time_zone: str | None = None
    # '"' opens a quoted value (CSV's rule); False: quotes are text (tweet dumps: a tweet that opens
    # a quote and never closes it would swallow the lines after it)
    quoting: bool = True
    origin: dict[str, str] = field(default_factory=dict)

    def key(self, setting: str) -> str:
        """The config key a setting came from (`data.clickstream.<setting>` unless overridden)."""
        return self.origin.get(setting, f"data.clickstream.{setting}")


def expand(patterns: list[str], what: str) -> list[str]:
    """Files matching each path or glob pattern, in a stable order.

    Raises:
        PipelineError: a pattern matches no file (`what` names the config key).
    """
    files: list[str] = []
    for pattern in patterns:
        fs, _ = fsspec.core.url_to_fs(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        found = sorted(fs.glob(fsspec.core.strip_protocol(pattern)))
        if not found:
            raise PipelineError(f"{what}: {pattern} matches no file; fix the path or the pattern")
        files += [p if protocol == "file" else f"{protocol}://{p}" for p in found]
    return list(dict.fromkeys(files))


def file_format(path: str, declared: str, what: str = "data.clickstream.format") -> str:
    """`declared`, or (for "auto") the format the file name ends with.

    Raises:
        PipelineError: "auto" and the name ends with no known suffix (`what`: the config key).
    """
    if declared != "auto":
        return declared
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise PipelineError(f"{path}: cannot tell the format from the name; "
                        f"set {what} to csv, tsv or jsonl")


def header(path: str, delimiter: str) -> list[str]:
    """The column names on a CSV/TSV file's first line (bytes that are not UTF-8 read as U+FFFD:
    such a name matches no mapped column, and the caller's error lists the names as read)."""
    with fsspec.open(path, "rb", compression="infer") as f:
        first = f.readline().rstrip(b"\r\n").decode("utf-8-sig", errors="replace")
    return [c.strip().strip('"') for c in first.split(delimiter)]


def parse_csv_block(block: bytes, names: list[str], wanted: list[str], delimiter: str,
                    skip_header: bool, null_values: list[str], categorical: list[str],
                    named_by: str = "the header", quoting: bool = True) -> dict[str, Any]:
    """One block of a delimited file → {"table", "lines", "bad": [(line, reason, raw)]}.

    Line numbers are block-local and 1-based (with `skip_header`, the first block's line 1 is
    the header and is skipped); a line ends at \\n, \\r\\n or a lone \\r, as pyarrow reads it.
    `categorical` columns come dictionary-encoded (ids repeat: smaller to ship, cheaper to group).
    `named_by` says where `names` came from, for the malformed-row reason; `quoting` as
    Layout.quoting. A line that is not UTF-8 text is quarantined as undecodable (pyarrow fails the
    whole block on one such byte).
    """
    bad: list[tuple[int, str, str]] = []
    lines = block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
    lines += 0 if block.endswith((b"\n", b"\r")) or not block else 1
    first = 2 if skip_header else 1
    origin = np.arange(lines + 1)  # origin[n]: the block's line of line n of what pyarrow reads
    try:
        block.decode("utf-8")  # ≈ 1 ms for 8 MiB of ASCII: cheap next to the parse
    except UnicodeDecodeError:
        block, origin, undecodable = _without_undecodable(block, first)
        bad += [(n, "undecodable: the line is not UTF-8 text; fix its bytes or convert the file to UTF-8",
                 raw.decode("latin-1")) for n, raw in undecodable]
    read_lines = len(origin) - 1
    if read_lines < first:  # no line after the header (a header-only file): pyarrow's error
        empty = pa.schema([(c, pa.dictionary(pa.int32(), pa.string()) if c in categorical else pa.string())
                           for c in wanted]).empty_table()
        return {"table": empty.append_column("line", pa.array([], pa.int64())), "lines": lines, "bad": bad}
    malformed: list[tuple[int, str, str]] = []

    def invalid(row: Any) -> str:
        malformed.append((row.number, f"malformed row: {row.actual_columns} fields, {named_by} has "
                                      f"{row.expected_columns}", row.text))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(block),
        # one pyarrow block for the whole block: with its default 1 MiB a longer line failed the block
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if skip_header else 0,
                                       use_threads=False, block_size=min(max(len(block) + 1, 1 << 20),
                                                                         2**31 - 1)),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid,
                                         ignore_empty_lines=False, quote_char='"' if quoting else False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.dictionary(pa.int32(), pa.string())
                                                           if c in categorical else pa.string()
                                                           for c in wanted},
                                             include_columns=wanted, null_values=null_values,
                                             strings_can_be_null=True))
    keep = np.ones(read_lines + 1, bool)  # keep[n]: line n holds a parsed row
    keep[:first] = False
    keep[[b[0] for b in malformed]] = False
    kept = np.flatnonzero(keep)
    if len(kept) != table.num_rows:  # quoted newlines inside values: count records instead
        kept = np.arange(first, first + table.num_rows)
    bad += [(int(origin[n]), reason, text) for n, reason, text in malformed]
    table = table.append_column("line", pa.array(origin[kept], pa.int64()))
    return {"table": table, "lines": lines, "bad": sorted(bad)}


NEWLINE = re.compile(rb"\r\n|\r|\n")


def _without_undecodable(block: bytes, first: int) -> tuple[bytes, np.ndarray, list[tuple[int, bytes]]]:
    """(the block without its data lines that are not UTF-8, each kept line's number in the block
    (index 0 unused), [(number, bytes)] of the lines left out). The header line stays: it is skipped
    unread."""
    pieces = NEWLINE.split(block)
    if pieces and pieces[-1] == b"":
        pieces.pop()
    kept, origin, out = [], [0], []
    for n, raw in enumerate(pieces, 1):
        try:
            if n >= first:
                raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append((n, raw))
            continue
        kept.append(raw)
        origin.append(n)
    return b"".join(x + b"\n" for x in kept), np.array(origin), out


def json_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """One JSON line as an object, or (None, why not): the JSON error's first part, or "not a
    JSON object" (a list, a number). The JSON-lines readers of events and tweets share it."""
    try:
        record = json.loads(raw)
    except ValueError as e:
        return None, str(e).split(":")[0]
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if b"\\u" in raw:  # an escaped lone surrogate ("\ud800") loads, but is no text to store
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "a \\u escape is a lone surrogate, not a character"
    return record, ""


def parse_jsonl_block(block: bytes, wanted: list[str], categorical: list[str]) -> dict[str, Any]:
    """One block of a JSON-lines file → {"table", "lines", "bad", "keys"}; the fast reader first,
    line by line only when a line is broken (to name it). `keys`: every key the block holds."""
    part = _parse_jsonl(block, wanted)
    t = part["table"]
    for c in categorical:
        if c in wanted:
            t = t.set_column(t.column_names.index(c), c, t.column(c).dictionary_encode())
    return {**part, "table": t}


def _parse_jsonl(block: bytes, wanted: list[str]) -> dict[str, Any]:
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if b"\n\n" not in block and not block.startswith(b"\n"):
        try:
            table = _read_json_exact(block, wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = None
        if table is not None and table.num_rows == len(lines):  # else a line held 0 or 2 objects
            cols = {c: (table.column(c).cast(pa.string()) if c in table.column_names
                        else pa.nulls(table.num_rows, pa.string())) for c in wanted}
            cols["line"] = pa.array(np.arange(1, table.num_rows + 1), pa.int64())
            return {"table": pa.table(cols), "lines": len(lines), "bad": [], "keys": table.column_names}
    rows, kept, bad, keys = [], [], [], {}
    for i, raw in enumerate(lines, 1):
        record, why = json_object(raw)
        if record is None:
            bad.append((i, f"malformed row: not a JSON object ({why})", raw.decode("latin-1")))
            continue
        rows.append({c: None if record.get(c) is None else str(record[c]) for c in wanted})
        kept.append(i)
        keys.update(dict.fromkeys(record))
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in wanted]))
    return {"table": table.append_column("line", pa.array(kept, pa.int64())), "lines": len(lines),
            "bad": bad, "keys": list(keys)}


# the types pyarrow infers whose values cast to the text `str()` gives the JSON value (the
# line-by-line reader's): a float (1.0 → "1"), a bool ("true" / "True") or a list would not
EXACT = (pa.string(), pa.large_string(), pa.int64(), pa.null())


def _read_json_exact(block: bytes, wanted: list[str]) -> pa.Table | None:
    """The block by pyarrow's JSON reader when each wanted column reads as the line-by-line reader
    would read it; None when not (then the caller reads it line by line).

    Strings that look like times are inferred as timestamps, which would drop their form (the 'T',
    the zone): those columns are read again as text."""
    table = pajson.read_json(io.BytesIO(block))
    types = {c: table.schema.field(c).type for c in wanted if c in table.column_names}
    stamped = [c for c, t in types.items() if pa.types.is_timestamp(t)]
    if stamped:
        table = pajson.read_json(io.BytesIO(block), parse_options=pajson.ParseOptions(
            explicit_schema=pa.schema([(c, pa.string()) for c in stamped]),
            unexpected_field_behavior="infer"))
    if all(table.schema.field(c).type in EXACT for c in wanted if c in table.column_names):
        return table
    return None


def columns_of(path: str, layout: Layout, wanted: list[str], what: str) -> tuple[list[str], str]:
    """(the column names, the separator) of a CSV/TSV file under `layout`.

    Raises:
        PipelineError: a mapped column is not among them, or a headerless file's first line has
            another number of fields than `names` lists; the message names the file, the column
            as the config writes it and the key to fix.
    """
    tsv = file_format(path, layout.format, layout.key("format")) == "tsv"
    sep = "\t" if tsv else (layout.delimiter or ",")
    first = header(path, sep)
    if layout.header:
        names, given = first, "in its header"
    elif not layout.names:
        raise PipelineError(f"{path}: {layout.key('header')} is false but {layout.key('names')} is "
                            f"empty: list the file's {len(first)} columns in order, e.g. names = "
                            f"{json.dumps([f'col{i + 1}' for i in range(len(first))])}")
    elif len(layout.names) != len(first):
        raise PipelineError(f"{path}: line 1 has {len(first)} fields (read with {sep!r}) but "
                            f"{layout.key('names')} lists {len(layout.names)} ({', '.join(layout.names)}): "
                            "list every column of the file in order")
    else:
        names, given = layout.names, f"in {layout.key('names')}"
    missing = [c for c in wanted if c not in names]
    if missing:
        raise PipelineError(
            f"{path}: no column {', '.join(map(repr, missing))} {given} "
            f"(it has {', '.join(map(repr, names))}); map the right names in {what} "
            f"or set {layout.key('delimiter')} (read with {sep!r})")
    return names, sep


def read_files(paths: list[str], wanted: list[str], *, layout: Layout, client: Any, quarantine: Quarantine,
               what: str, categorical: list[str | None]) -> tuple[pa.Table, dict[str, list[str]]]:
    """Every file's mapped columns as one table with `source` (index into `paths`) and `line`;
    and per file the columns it has (a JSONL file's keys), used or not.

    Raises:
        PipelineError: a file lacks a mapped column (named, with the columns it has), or a
            headerless file does not match its `names`.
    """
    from dask.bytes import read_bytes
    from dask.delayed import delayed

    jobs: list[tuple[int, Any]] = []
    columns: dict[str, list[str]] = {}
    for index, path in enumerate(paths):
        fmt = file_format(path, layout.format, layout.key("format"))
        gz = path.endswith(".gz")
        _, [blocks] = read_bytes(path, delimiter=b"\n", blocksize=None if gz else BLOCK_SIZE,
                                 sample=False, compression="gzip" if gz else None)
        if fmt == "jsonl":
            jobs += [(index, delayed(parse_jsonl_block)(b, wanted, categorical)) for b in blocks]
            continue
        names, sep = columns_of(path, layout, wanted, what)
        columns[path] = names
        named_by = "the header" if layout.header else layout.key("names")
        jobs += [(index, delayed(parse_csv_block)(b, names, wanted, sep, i == 0 and layout.header,
                                                  layout.null_values, categorical, named_by, layout.quoting))
                 for i, b in enumerate(blocks)]
    futures = client.compute([j for _, j in jobs])
    tables, offsets = [], [0] * len(paths)
    for (index, _), fut in track(zip(jobs, futures, strict=True), f"parsing {what}", total=len(jobs)):
        first = offsets[index]
        try:
            part = fut.result()
        except pa.ArrowInvalid as e:  # pyarrow could not split the block into records at all
            fmt = file_format(paths[index], layout.format, layout.key("format"))
            raise PipelineError(f"{paths[index]}: cannot be read as {fmt} from line {first + 1} on "
                                f"({e}); fix the file, or {layout.key('format')} / "
                                f"{layout.key('delimiter')}") from None
        for line, reason, raw in part["bad"]:
            quarantine.add(paths[index], reason, line=first + line, raw=raw)
        if "keys" in part:  # JSONL: the keys of every block, in order of first sight
            columns[paths[index]] = list(dict.fromkeys([*columns.get(paths[index], []), *part["keys"]]))
        t = part["table"]
        t = t.set_column(t.column_names.index("line"), "line", pa.compute.add(t.column("line"), first))
        tables.append(t.append_column("source", pa.array(np.full(t.num_rows, index, np.int32))))
        offsets[index] += part["lines"]
    if not tables:
        empty = pa.schema([*((c, pa.dictionary(pa.int32(), pa.string()) if c in categorical else pa.string())
                             for c in wanted), ("line", pa.int64()), ("source", pa.int32())]).empty_table()
        return empty, columns
    return pa.concat_tables(tables), columns
