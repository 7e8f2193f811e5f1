"""Event-log files (CSV / TSV / JSONL, gzip allowed) → Arrow tables of the mapped columns.

Each file is cut into blocks that end on a `\\n` byte (a gzip file is one block) and
every block is parsed by one Dask task with pyarrow's C++ readers, so the heavy
decoding runs on the cluster. Only the columns the config maps are read, all as
strings: a malformed value then never fails a whole block; it is parsed (and, if bad,
quarantined) row by row later. Rows with the wrong number of fields and lines that
are not JSON are quarantined here with their file, line and text.

Every kept row carries `line`, its 1-based line in its file (the header is line 1),
so later quarantine records can name it.
"""

from __future__ import annotations

import io
import json
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


def file_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise PipelineError(f"{path}: cannot tell the format from the name; "
                        "set data.clickstream.format to csv, tsv or jsonl")


def header(path: str, delimiter: str) -> list[str]:
    """The column names on a CSV/TSV file's first line."""
    with fsspec.open(path, "rb", compression="infer") as f:
        first = f.readline().rstrip(b"\r\n").decode("utf-8-sig")
    return [c.strip().strip('"') for c in first.split(delimiter)]


def parse_csv_block(block: bytes, names: list[str], wanted: list[str], delimiter: str,
                    first_block: bool, null_values: list[str], categorical: list[str]) -> dict[str, Any]:
    """One block of a delimited file → {"table", "lines", "bad": [(line, reason, raw)]}.

    Line numbers are block-local and 1-based (the header, in the first block, is line 1).
    `categorical` columns come dictionary-encoded (ids repeat: smaller to ship, cheaper to group).
    """
    bad: list[tuple[int, str, str]] = []

    def invalid(row: Any) -> str:
        bad.append((row.number, f"malformed row: {row.actual_columns} fields, the header has "
                                f"{row.expected_columns}", row.text))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if first_block else 0,
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid,
                                         ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.dictionary(pa.int32(), pa.string())
                                                           if c in categorical else pa.string()
                                                           for c in wanted},
                                             include_columns=wanted, null_values=null_values,
                                             strings_can_be_null=True))
    lines = block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)
    first = 2 if first_block else 1
    keep = np.ones(lines + 1, bool)  # keep[n]: line n holds a parsed row
    keep[:first] = False
    keep[[b[0] for b in bad]] = False
    kept = np.flatnonzero(keep)
    if len(kept) != table.num_rows:  # quoted newlines inside values: count records instead
        kept = np.arange(first, first + table.num_rows)
    return {"table": table.append_column("line", pa.array(kept, pa.int64())), "lines": lines, "bad": bad}


def parse_jsonl_block(block: bytes, wanted: list[str], categorical: list[str]) -> dict[str, Any]:
    """One block of a JSON-lines file → {"table", "lines", "bad"}; the fast reader first, line
    by line only when a line is broken (to name it)."""
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
            return {"table": pa.table(cols), "lines": len(lines), "bad": []}
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    rows, kept, bad = [], [], []
    for i, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            bad.append((i, f"malformed row: not a JSON object ({str(e).split(':')[0]})",
                        raw.decode("latin-1")))
            continue
        rows.append({c: None if record.get(c) is None else str(record[c]) for c in wanted})
        kept.append(i)
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in wanted]))
    return {"table": table.append_column("line", pa.array(kept, pa.int64())), "lines": len(lines), "bad": bad}


def read_files(paths: list[str], wanted: list[str], *, declared_format: str, delimiter: str | None,
               null_values: list[str], client: Any, quarantine: Quarantine, what: str,
               categorical: list[str | None]) -> pa.Table:
    """Every file's mapped columns as one table with `source` (index into `paths`) and `line`.

    Raises:
        PipelineError: a file lacks a mapped column (named, with the columns it has).
    """
    from dask.bytes import read_bytes
    from dask.delayed import delayed

    jobs: list[tuple[int, Any]] = []
    for index, path in enumerate(paths):
        fmt = file_format(path, declared_format)
        gz = path.endswith(".gz")
        _, [blocks] = read_bytes(path, delimiter=b"\n", blocksize=None if gz else BLOCK_SIZE,
                                 sample=False, compression="gzip" if gz else None)
        if fmt == "jsonl":
            jobs += [(index, delayed(parse_jsonl_block)(b, wanted, categorical)) for b in blocks]
            continue
        sep = "\t" if fmt == "tsv" else (delimiter or ",")
        names = header(path, sep)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise PipelineError(
                f"{path}: no column {', '.join(map(repr, missing))} in its header "
                f"(it has {', '.join(map(repr, names))}); map the right names in {what} "
                f"or set data.clickstream.delimiter (read with {sep!r})")
        jobs += [(index, delayed(parse_csv_block)(b, names, wanted, sep, i == 0, null_values, categorical))
                 for i, b in enumerate(blocks)]
    futures = client.compute([j for _, j in jobs])
    tables, offsets = [], [0] * len(paths)
    for (index, _), fut in track(zip(jobs, futures, strict=True), f"parsing {what}", total=len(jobs)):
        part = fut.result()
        first = offsets[index]
        for line, reason, raw in part["bad"]:
            quarantine.add(paths[index], reason, line=first + line, raw=raw)
        t = part["table"]
        t = t.set_column(t.column_names.index("line"), "line", pa.compute.add(t.column("line"), first))
        tables.append(t.append_column("source", pa.array(np.full(t.num_rows, index, np.int32))))
        offsets[index] += part["lines"]
    if not tables:
        return pa.schema([*((c, pa.dictionary(pa.int32(), pa.string()) if c in categorical else pa.string())
                            for c in wanted), ("line", pa.int64()), ("source", pa.int32())]).empty_table()
    return pa.concat_tables(tables)
