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
    """The column names on a CSV/TSV file's first line."""
    with fsspec.open(path, "rb", compression="infer") as f:
        first = f.readline().rstrip(b"\r\n").decode("utf-8-sig")
    return [c.strip().strip('"') for c in first.split(delimiter)]


def parse_csv_block(block: bytes, names: list[str], wanted: list[str], delimiter: str,
                    skip_header: bool, null_values: list[str], categorical: list[str],
                    named_by: str = "the header") -> dict[str, Any]:
    """One block of a delimited file → {"table", "lines", "bad": [(line, reason, raw)]}.

    Line numbers are block-local and 1-based (with `skip_header`, the first block's line 1 is
    the header and is skipped). `categorical` columns come dictionary-encoded (ids repeat:
    smaller to ship, cheaper to group). `named_by` says where `names` came from, for the
    malformed-row reason.
    """
    bad: list[tuple[int, str, str]] = []

    def invalid(row: Any) -> str:
        bad.append((row.number, f"malformed row: {row.actual_columns} fields, {named_by} has "
                                f"{row.expected_columns}", row.text))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if skip_header else 0,
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid,
                                         ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.dictionary(pa.int32(), pa.string())
                                                           if c in categorical else pa.string()
                                                           for c in wanted},
                                             include_columns=wanted, null_values=null_values,
                                             strings_can_be_null=True))
    lines = block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)
    first = 2 if skip_header else 1
    keep = np.ones(lines + 1, bool)  # keep[n]: line n holds a parsed row
    keep[:first] = False
    keep[[b[0] for b in bad]] = False
    kept = np.flatnonzero(keep)
    if len(kept) != table.num_rows:  # quoted newlines inside values: count records instead
        kept = np.arange(first, first + table.num_rows)
    return {"table": table.append_column("line", pa.array(kept, pa.int64())), "lines": lines, "bad": bad}


def json_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """One JSON line as an object, or (None, why not): the JSON error's first part, or "not a
    JSON object" (a list, a number). The JSON-lines readers of events and tweets share it."""
    try:
        record = json.loads(raw)
    except ValueError as e:
        return None, str(e).split(":")[0]
    return (record, "") if isinstance(record, dict) else (None, "not a JSON object")


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
            table = pajson.read_json(io.BytesIO(block))
            cols = {c: (table.column(c).cast(pa.string()) if c in table.column_names
                        else pa.nulls(table.num_rows, pa.string())) for c in wanted}
            cols["line"] = pa.array(np.arange(1, table.num_rows + 1), pa.int64())
            return {"table": pa.table(cols), "lines": len(lines), "bad": [], "keys": table.column_names}
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
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
                                                  layout.null_values, categorical, named_by))
                 for i, b in enumerate(blocks)]
    futures = client.compute([j for _, j in jobs])
    tables, offsets = [], [0] * len(paths)
    for (index, _), fut in track(zip(jobs, futures, strict=True), f"parsing {what}", total=len(jobs)):
        part = fut.result()
        first = offsets[index]
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
