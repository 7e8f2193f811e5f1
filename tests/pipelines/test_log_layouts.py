"""Log layouts of the clickstream pipeline (pipelines/clickstream.py, events.py, sessions.py) on a
real Dask cluster: headerless files, per-source formats and time units, a source's own splits,
labels from a rule over the events, and the audit of unused columns.

The real DIGINETICA sample is used wherever it has the case: its views rewritten as a headerless
TSV (derived, in tmp), its views split into day files (derived, in tmp) for own splits, its
categories for the label rule, its unused columns. The cases it lacks (unix seconds next to ISO
times with a zone, malformed headerless rows, a split pattern over file names) are generated
in the tests that need them, and their docstrings say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from advorch.config import load_config
from advorch.pipelines import clickstream
from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import read_manifest
from tests.conftest import DIGI, VIEWS, digi_config
from tests.pipelines.test_clickstream import category, quarantine_records, rows

FAST = "data.clickstream.embedding_dim=0"  # Word2Vec is not what these tests are about


def views() -> pd.DataFrame:
    """The real sample's views, read independently of the pipeline."""
    return pd.read_csv(VIEWS, sep=";", dtype=str)


def sessions(root: Path) -> dict[str, tuple[list[str], int, str]]:
    """Session id → (its pages, label, split)."""
    df = rows(root)
    return {i: (list(items), int(lab), sp) for i, items, lab, sp in
            zip(df["id"], df["items"], df["label"], df["split"], strict=True)}


def real(output: Path, *more: str):
    """configs/diginetica.toml on the real sample (its data section), without embeddings."""
    return digi_config(output, FAST, *more).data


def generated(tmp_path: Path, *more: str):
    """A config for the generated logs of this file: sessions `s`, pages `p`, times `t`."""
    return load_config(None, [
        'data.kind="clickstream"', f'data.output="{tmp_path / "out"}"', "data.val_fraction=0.0",
        'data.clickstream.columns={session="s", time="t", item="p"}',
        'data.clickstream.purchase_columns={session="s", time="t"}', "data.clickstream.min_length=1",
        FAST, 'data.health.on_problem="warn"', *more]).data


# ---------------------------------------------------------------- headerless files


def test_headerless_tsv_builds_the_same_sessions_as_the_real_csv(tmp_path: Path, digi_shards: Path,
                                                                 dask_address: str) -> None:
    """The real views rewritten as a headerless TSV (derived, in tmp) with `names` giving the
    columns by position build the very sessions, labels and splits of the real CSV."""
    tsv = tmp_path / "views.tsv"
    views().to_csv(tsv, sep="\t", header=False, index=False, na_rep="NA")
    names = json.dumps(["sid", "user", "page", "ms", "day"])
    cfg = real(tmp_path / "out", f'data.clickstream.events=["{tsv}"]',
               "data.clickstream.header=false", f"data.clickstream.names={names}",
               'data.clickstream.columns={session="sid", time="ms", item="page"}',
               "data.clickstream.purchase_layout.header=true",  # the purchases keep their header
               'data.clickstream.unused=["user"]')
    summary = clickstream.run(cfg, dask_address=dask_address)
    assert sessions(tmp_path / "out") == sessions(digi_shards)
    assert summary.manifest["clickstream"]["events_read"] == 12391  # no header line lost as data
    unused = {(Path(u["source"]).name, u["declared"]): u["names"] for u in summary.manifest["unused"]}
    assert unused[("views.tsv", False)] == ["day"] and unused[("views.tsv", True)] == ["user"]


def test_headerless_rows_are_numbered_from_line_1(tmp_path: Path, dask_address: str) -> None:
    """Generated (the real sample has no malformed rows): in a headerless file line 1 is data, and
    a row with the wrong field count is quarantined naming `names`."""
    events = tmp_path / "log.tsv"
    events.write_text("a\t1\t10\na\t2\t11\nb\t1\nb\t3\t12\nb\t4\t13\n")
    purchases = tmp_path / "buy.tsv"
    purchases.write_text("s\tt\nb\t4\n")
    cfg = generated(tmp_path, f'data.clickstream.events=["{events}"]', 'data.clickstream.time_unit="ms"',
                    f'data.clickstream.purchases=["{purchases}"]', "data.clickstream.header=false",
                    'data.clickstream.names=["s", "t", "p"]', "data.clickstream.purchase_layout.header=true")
    clickstream.run(cfg, dask_address=dask_address)
    [bad] = quarantine_records(tmp_path / "out")
    assert (bad["line"], bad["raw"]) == (3, "b\t1")
    assert bad["reason"] == "malformed row: 2 fields, data.clickstream.names has 3"
    got = sessions(tmp_path / "out")
    assert {k: v[:2] for k, v in got.items()} == {"a": (["10", "11"], 0), "b": (["12"], 1)}


def test_headerless_layout_errors_name_the_file_and_the_key(tmp_path: Path, dask_address: str) -> None:
    """Generated: a headerless file without `names`, or with too few, stops the run before any
    parsing, naming the file, its field count and the key to fix."""
    events = tmp_path / "log.csv"
    events.write_text("a,1,10\n")
    base = [f'data.clickstream.events=["{events}"]', "data.clickstream.header=false",
            'data.clickstream.label_rule={item=["10"]}']
    with pytest.raises(PipelineError, match=r"log.csv: data.clickstream.header is false but "
                                            r"data.clickstream.names is empty: list the file's 3 columns"):
        clickstream.run(generated(tmp_path, *base), dask_address=dask_address)
    with pytest.raises(PipelineError, match=r"log.csv: line 1 has 3 fields \(read with ','\) but "
                                            r"data.clickstream.names lists 2 \(s, t\)"):
        clickstream.run(generated(tmp_path, *base, 'data.clickstream.names=["s", "t"]'),
                        dask_address=dask_address)
    with pytest.raises(PipelineError, match=r"log.csv: no column 'p' in data.clickstream.names \(it has "
                                            r"'s', 't', 'page'\)"):
        clickstream.run(generated(tmp_path, *base, 'data.clickstream.names=["s", "t", "page"]'),
                        dask_address=dask_address)


# ---------------------------------------------------------------- per-source time units


def test_events_in_unix_seconds_and_purchases_in_zoned_iso(tmp_path: Path, dask_address: str) -> None:
    """Generated (DIGINETICA's two files share one unit): events in unix seconds (CSV), purchases
    as ISO text (JSONL), naive ones in Europe/Berlin, others with their own offset. A naive time
    read as UTC would cut session a two hours late and keep its third page."""
    t0 = 1462096800  # 2016-05-01T10:00:00Z = 12:00 in Berlin (CEST, +02:00)
    events = tmp_path / "clicks.csv"
    events.write_text("s,t,p\n" + "".join(f"{s},{t0 + dt},{p}\n" for s, dt, p in [
        ("a", 0, "home"), ("a", 60, "shoe"), ("a", 120, "cart"),
        ("b", 0, "home"), ("b", 60, "hat"), ("c", 0, "home"), ("c", 60, "sock")]))
    purchases = tmp_path / "orders.jsonl"
    purchases.write_text("\n".join(json.dumps(x) for x in [
        {"s": "a", "t": "2016-05-01 12:01:30"},           # naive: Berlin → 10:01:30Z, after shoe
        {"s": "b", "t": "2016-05-01T10:00:30Z"},          # its own zone: after home
        {"s": "c", "t": "yesterday", "order": 7}]) + "\n")
    cfg = generated(tmp_path, f'data.clickstream.events=["{events}"]', 'data.clickstream.time_unit="s"',
                    f'data.clickstream.purchases=["{purchases}"]',
                    'data.clickstream.purchase_layout={time_unit="iso", time_zone="Europe/Berlin"}')
    summary = clickstream.run(cfg, dask_address=dask_address)
    got = {k: v[:2] for k, v in sessions(tmp_path / "out").items()}
    assert got == {"a": (["home", "shoe"], 1), "b": (["home"], 1), "c": (["home", "sock"], 0)}
    [bad] = quarantine_records(tmp_path / "out")
    assert bad["source"].endswith("orders.jsonl") and bad["line"] == 3
    assert bad["reason"] == ("unparseable purchase timestamp: 'yesterday' with data.clickstream."
                             "purchase_layout.time_unit 'iso', data.clickstream.purchase_layout.time_zone "
                             "'Europe/Berlin'")
    # the JSONL keys are audited too: `order` is read by nothing
    assert [(Path(u["source"]).name, u["names"]) for u in summary.manifest["unused"]] == [
        ("orders.jsonl", ["order"])]


def test_an_unknown_time_zone_is_a_clear_error(tmp_path: Path, dask_address: str) -> None:
    """Generated: a zone that is not an IANA name stops the run naming the key as written."""
    events = tmp_path / "clicks.csv"
    events.write_text("s,t,p\na,2016-05-01 12:00,home\n")
    cfg = generated(tmp_path, f'data.clickstream.events=["{events}"]',
                    'data.clickstream.time_zone="Mars/Olympus"', 'data.clickstream.label_rule={item=["x"]}')
    with pytest.raises(PipelineError, match=r"data.clickstream.time_zone = 'Mars/Olympus' is not an IANA"):
        clickstream.run(cfg, dask_address=dask_address)


# ---------------------------------------------------------------- a source's own splits


def day_files(tmp_path: Path) -> dict[str, Path]:
    """The real views cut by eventdate into train (to 03-20), val (03-21..05-31), test (06-01)
    files: derived, in tmp (the sample comes as one file; two of its sessions span those cuts)."""
    v = views()
    cut = {"train": v["eventdate"] < "2016-03-21", "test": v["eventdate"] >= "2016-06-01"}
    cut["val"] = ~cut["train"] & ~cut["test"]
    out = {}
    for name, where in cut.items():
        out[name] = tmp_path / f"views-{name}.csv"
        v[where].to_csv(out[name], sep=";", index=False)
    return out


def test_own_split_files_are_the_splits(tmp_path: Path, digi, dask_address: str) -> None:
    """splits = "files": every session lands in its file's split; a session with views in two
    split files (it spans a cut day) is quarantined once, naming both files."""
    files = day_files(tmp_path)
    table = "{" + ", ".join(f'{k} = ["{p}"]' for k, p in files.items()) + "}"
    cfg = real(tmp_path / "out", f"data.clickstream.events={table}",
               'data.clickstream.splits="files"')
    summary = clickstream.run(cfg, dask_address=dask_address)
    v = views()
    v["split"] = "val"
    v.loc[v["eventdate"] < "2016-03-21", "split"] = "train"
    v.loc[v["eventdate"] >= "2016-06-01", "split"] = "test"
    per = v.groupby("session_id")["split"].agg(set)
    crossing = set(per.index[per.map(len) > 1])
    assert crossing == {"629", "2205"}  # the real sessions that span a cut day
    got = sessions(tmp_path / "out")
    assert set(got) == set(per.index) - crossing
    assert all(sp == next(iter(per[i])) for i, (_, _, sp) in got.items())
    conflicts = [r for r in quarantine_records(tmp_path / "out")
                 if r["reason"].startswith("session in the files of two splits")]
    assert sorted(r["raw"]["session"] for r in conflicts) == sorted(crossing)
    assert summary.manifest["clickstream"]["sessions_split_conflict"] == len(crossing)
    assert all("views-" in r["reason"] and r["reason"].count("views-") == 2 for r in conflicts)
    # the same files again: up to date; a file moved to another split: rebuilt with it there
    assert clickstream.run(cfg, dask_address=dask_address).up_to_date
    swapped = "{" + ", ".join(f'{k} = ["{files[f]}"]' for k, f in
                              (("train", "train"), ("val", "test"), ("test", "val"))) + "}"
    clickstream.run(real(tmp_path / "out", f"data.clickstream.events={swapped}",
                         'data.clickstream.splits="files"'), dask_address=dask_address)
    moved = sessions(tmp_path / "out")
    assert {i: sp for i, (_, _, sp) in moved.items() if sp == "val"} == {
        i: "val" for i, (_, _, sp) in got.items() if sp == "test"}


def test_split_pattern_reads_the_split_from_the_file_name(tmp_path: Path, dask_address: str) -> None:
    """Generated (file names of a published train/valid/test layout): split_pattern's group reads
    each file's split; a file it cannot read stops the run naming the pattern and the file."""
    for name, session in (("train", "a"), ("valid", "b"), ("test", "c")):
        (tmp_path / f"clicks_{name}.csv").write_text(f"s,t,p\n{session},1,home\n{session},2,shoe\n")
    pattern = "_(?P<split>[a-z]+)\\\\.csv$"
    base = [f'data.clickstream.events=["{tmp_path}/clicks_*.csv"]', 'data.clickstream.splits="files"',
            'data.clickstream.time_unit="ms"', 'data.clickstream.label_rule={item=["shoe"]}']
    clickstream.run(generated(tmp_path, *base, f'data.clickstream.split_pattern="{pattern}"'),
                    dask_address=dask_address)
    assert {i: sp for i, (_, _, sp) in sessions(tmp_path / "out").items()} == {
        "a": "train", "b": "val", "c": "test"}
    (tmp_path / "clicks_extra.csv").write_text("s,t,p\nd,1,home\n")
    with pytest.raises(PipelineError, match=r"clicks_extra.csv: data.clickstream.split_pattern "
                                            r"'_\(\?P<split>\[a-z\]\+\)\\\\.csv\$' reads 'extra' from it"):
        clickstream.run(generated(tmp_path, *base, f'data.clickstream.split_pattern="{pattern}"'),
                        dask_address=dask_address)


# ---------------------------------------------------------------- labels from a rule


def test_label_rule_on_a_real_category_cuts_before_the_first_match(tmp_path: Path, digi,
                                                                   dask_address: str) -> None:
    """The real views as a click-only log (no purchases file): a session converts when it reaches
    category 1096. Like a purchase, the first matching view and everything from its time on leave
    the session, so no labelled session holds a page of that category; a session that starts
    there has nothing left and is quarantined. Checked against an independent pandas pass."""
    cfg = real(tmp_path / "out", "data.clickstream.purchases=[]",
               'data.clickstream.label_rule={category=["1096"]}')
    summary = clickstream.run(cfg, dask_address=dask_address)
    v = views()
    cat = category()
    v["t"] = v["timeframe"].astype(int)
    v = v.sort_values(["session_id", "t"], kind="stable")
    hit = v[v["item_id"].map(cat) == "1096"].groupby("session_id")["t"].min()
    v["cut"] = v["session_id"].map(hit)
    kept = v[v["cut"].isna() | (v["t"] < v["cut"])]
    expected = {s: (list(g["item_id"]), int(s in hit.index)) for s, g in kept.groupby("session_id")}
    got = {k: val[:2] for k, val in sessions(tmp_path / "out").items()}
    assert got == expected
    assert sum(lab for _, lab in got.values()) == len(hit) - len(set(hit.index) - set(kept["session_id"]))
    assert not any(cat[i] == "1096" for items, lab in got.values() if lab for i in items)
    starts_there = set(hit.index) - set(kept["session_id"])
    records = quarantine_records(tmp_path / "out")
    assert {r["reason"] for r in records} == {"no events before the first event the label rule marks"}
    # one record per session that has other pages after the match; per marked view when a
    # session has nothing else (as with conversion events)
    assert {r["raw"].get("session", r["raw"].get("session_id")) for r in records} == starts_there
    assert summary.manifest["quarantine"]["count"] == len(records)


def test_no_label_source_says_which_keys_to_set(tmp_path: Path, digi, dask_address: str) -> None:
    """The real views without a purchases file, event column or rule: refused up front with the
    keys to set; built anyway with on_problem = "warn", the manifest says why it has one class."""
    cfg = real(tmp_path / "out", "data.clickstream.purchases=[]")
    with pytest.raises(PipelineError, match=r"no label source: set data.clickstream.purchases .*"
                                            r"conversion_event .* or label_rule"):
        clickstream.run(cfg, dask_address=dask_address)
    cfg.health.on_problem = "warn"
    summary = clickstream.run(cfg, dask_address=dask_address)
    assert summary.warnings[0].startswith("no session is labelled purchase: no label source: set")
    assert any(w.startswith("unhealthy dataset built") for w in summary.warnings)


def test_a_label_source_that_marks_nothing_is_named(tmp_path: Path, digi, dask_address: str) -> None:
    """A rule over an item the real views never reach: the error names the rule, not just
    "one class"."""
    cfg = real(tmp_path / "out", "data.clickstream.purchases=[]",
               'data.clickstream.label_rule={item=["no-such-item"]}')
    with pytest.raises(PipelineError, match=r"no session is labelled purchase: data.clickstream.label_rule "
                                            r"\(item \['no-such-item'\]"):
        clickstream.run(cfg, dask_address=dask_address)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---------------------------------------------------------------- the audit of unused columns


def test_real_files_unused_columns_are_reported(tmp_path: Path, digi_shards: Path, digi,
                                                dask_address: str) -> None:
    """DIGINETICA's views carry user_id and eventdate, its purchases userId, eventdate,
    ordernumber and itemId, which the pipeline does not read: configs/diginetica.toml declares
    them (unused); without that they are reported as undeclared, shown by the CLI."""
    declared = read_manifest(str(digi_shards))["unused"]
    expected = {"sample_train-item-views.csv": ["user_id", "eventdate"],
                "train-purchases.csv": ["userId", "eventdate", "ordernumber", "itemId"]}
    assert {Path(u["source"]).name: u["names"] for u in declared} == expected
    assert all(u["declared"] and u["what"] == "columns" for u in declared)
    summary = clickstream.run(real(tmp_path / "out", "data.clickstream.unused=[]"),
                              dask_address=dask_address)
    assert {Path(u["source"]).name: u["names"] for u in summary.unused} == expected
    assert (DIGI / "product-categories.csv").is_file()  # the item map uses both its columns
