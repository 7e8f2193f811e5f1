"""The clickstream pipeline (pipelines/clickstream.py) on the real DIGINETICA sample, on a
real Dask cluster: sessions, labels, the leakage guard, page embeddings, incremental
re-runs, and bad input.

The day-by-day test splits the real views file by its eventdate column into two files in
tmp (derived data: the sample comes as one file). The bad-input tests write small event
logs of their own, because the real sample has no malformed rows.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from advorch.config import load_config
from advorch.pipelines import clickstream
from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import read_manifest, read_side_file, read_split
from tests.conftest import DIGI, PURCHASES, VIEWS, digi_config

SPLITS = ("train", "val", "test")


def category() -> dict[str, str]:
    """Page → product category, as configs/diginetica.toml maps them (read independently)."""
    cats = pd.read_csv(DIGI / "product-categories.csv", sep=";", dtype=str)
    return cats.drop_duplicates("itemId").set_index("itemId")["categoryId"].to_dict()


def rows(root: Path) -> pd.DataFrame:
    """Every session of every split, with its split."""
    m = read_manifest(str(root))
    return pd.concat([read_split(str(root), s, manifest=m).to_pandas().assign(split=s) for s in SPLITS
                      if m["splits"][s]["rows"]], ignore_index=True)


# ---------------------------------------------------------------- the real sample


def test_real_sample_sessions_labels_and_split(digi_shards: Path) -> None:
    m = read_manifest(str(digi_shards))
    st = m["clickstream"]
    assert m["kind"] == "clickstream" and m["classes"] == ["no_purchase", "purchase"]
    assert (st["events_read"], st["sessions"], st["converted"]) == (12391, 2986, 138)
    # the join as found: 256 of 18,025 purchase rows name a sample session (138 sessions);
    # the other 17,769 are quarantined, one record each
    assert (st["purchase_rows"], st["purchase_rows_matched"], st["purchase_rows_unknown_session"]) == (
        18025, 256, 17769)
    assert m["quarantine"]["count"] == 17769
    assert m["quarantine"]["by_reason"] == {"purchase of an unknown session": 17769}
    # 50/50 stratified: test holds half of each class
    assert m["splits"]["test"]["rows"] == 1493 and m["splits"]["test"]["classes"]["purchase"] == 69
    assert sum(m["splits"][s]["classes"]["purchase"] for s in SPLITS) == 138
    df = rows(digi_shards)
    assert df["id"].is_unique and len(df) == 2986
    assert (df["length"] == df["tokens"].map(len)).all() and (df["length"] >= 1).all()


def test_leakage_guard_matches_an_independent_pandas_join(digi_shards: Path) -> None:
    """Every session holds exactly its views strictly before its first purchase, in time order."""
    views = pd.read_csv(VIEWS, sep=";", dtype={"session_id": str, "item_id": str})
    buys = pd.read_csv(PURCHASES, sep=";", dtype={"sessionId": str})
    first_buy = buys.groupby("sessionId")["timeframe"].min()
    views["bought"] = views["session_id"].map(first_buy)
    kept = views[views["bought"].isna() | (views["timeframe"] < views["bought"])]
    assert len(views) - len(kept) == 20  # views at or after the purchase, cut
    expected = kept.sort_values(["session_id", "timeframe"], kind="stable").groupby("session_id")["item_id"]
    got = rows(digi_shards).set_index("id")
    assert got["items"].map(list).to_dict() == expected.apply(list).to_dict()
    converted = set(views.loc[views["bought"].notna(), "session_id"])
    assert set(got.index[got["label"] == 1]) == converted


def test_vocabulary_and_page_embeddings(digi_shards: Path) -> None:
    m = read_manifest(str(digi_shards))
    vocab = json.loads(read_side_file(str(digi_shards), "vocab.json", m))
    emb = np.load(io.BytesIO(read_side_file(str(digi_shards), "embeddings.npy", m)))
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == m["vocab_size"]
    assert emb.shape == (len(vocab), 120) and emb.dtype == np.float32
    assert not emb[0].any()  # padding
    df = rows(digi_shards)
    cat = category()
    df["cats"] = df["items"].map(lambda items: [cat.get(i, i) for i in items])
    train_cats = {c for cats in df.loc[df["split"] == "train", "cats"] for c in cats}
    assert set(vocab[2:]) == train_cats  # min_count 1: the category of every train page, nothing else
    index = {t: i for i, t in enumerate(vocab)}
    for cats, tokens in zip(df["cats"], df["tokens"], strict=True):
        assert list(tokens) == [index.get(c, 1) for c in cats]
    # Word2Vec learnt something: tokens that follow each other in train sessions are closer than
    # random pairs
    unit = emb[2:] / np.linalg.norm(emb[2:], axis=1, keepdims=True)
    pairs = [(index[a] - 2, index[b] - 2) for cats in df.loc[df["split"] == "train", "cats"]
             for a, b in zip(cats[:-1], cats[1:], strict=True) if a != b]
    together = np.mean([unit[a] @ unit[b] for a, b in pairs])
    rng = np.random.default_rng(0)
    random = np.mean([unit[a] @ unit[b] for a, b in rng.integers(0, len(unit), (2000, 2))])
    assert together > random + 0.03  # 2000 random pairs: the mean has std ≈ 0.002


def test_same_sources_are_up_to_date(digi_shards: Path, dask_address: str) -> None:
    before = (digi_shards / "manifest.json").read_bytes()
    summary = clickstream.run(digi_config(digi_shards).data, dask_address=dask_address)
    assert summary.up_to_date and (digi_shards / "manifest.json").read_bytes() == before


def test_a_new_day_writes_only_what_is_new(tmp_path: Path, digi, dask_address: str) -> None:
    views = pd.read_csv(VIEWS, sep=";", dtype=str)
    last_day = views["eventdate"].max()
    day1, day2 = tmp_path / "views-until.csv", tmp_path / "views-last-day.csv"
    views[views["eventdate"] < last_day].to_csv(day1, sep=";", index=False)
    views[views["eventdate"] == last_day].to_csv(day2, sep=";", index=False)
    out = tmp_path / "shards"
    # small parts, so that a vocabulary gain rewrites a few parts, not a whole split
    first = clickstream.run(digi_config(out, f'data.clickstream.events=["{day1}"]',
                                        "data.part_rows=64").data, dask_address=dask_address)
    before = rows(out)
    vocab0 = json.loads(read_side_file(str(out), "vocab.json"))
    old_parts = {p["path"]: (out / p["path"]).stat().st_mtime_ns
                 for s in first.manifest["splits"].values() for p in s["parts"]}

    second = clickstream.run(digi_config(out, f'data.clickstream.events=["{day1}", "{day2}"]',
                                         "data.part_rows=64").data, dask_address=dask_address)
    st = second.manifest["clickstream"]
    after = rows(out)
    new_ids = set(after["id"]) - set(before["id"])
    assert new_ids and st["sessions_new"] == len(new_ids)
    on_last_day = set(views.loc[views["eventdate"] == last_day, "session_id"])
    assert new_ids == on_last_day - set(views.loc[views["eventdate"] < last_day, "session_id"])
    # a session spanning midnight (the sample has one) changed: it is rewritten with both days
    spanning = (on_last_day - new_ids).pop()
    assert len(after.set_index("id").loc[spanning, "items"]) == (views["session_id"] == spanning).sum()
    # kept parts are the very same files; only new sessions and the sessions sharing a part
    # with a page that just got an id were written
    listed = [p["path"] for s in second.manifest["splits"].values() for p in s["parts"]]
    kept = [p for p in listed if p in old_parts]
    assert len(kept) == st["parts_kept"] > 0
    assert all((out / p).stat().st_mtime_ns == old_parts[p] for p in kept)
    assert st["sessions_written"] < len(after) / 2
    # sessions keep their split; the result equals a from-scratch build's sessions and labels
    merged = before.merge(after, on="id", suffixes=("_0", "_1"))
    assert (merged["split_0"] == merged["split_1"]).all()
    both = f'data.clickstream.events=["{day1}", "{day2}"]'
    scratch = clickstream.run(digi_config(tmp_path / "scratch", both).data, dask_address=dask_address)
    fresh = rows(tmp_path / "scratch").set_index("id").sort_index()
    inc = after.set_index("id").sort_index()
    assert fresh.index.equals(inc.index) and (fresh["label"] == inc["label"]).all()
    assert fresh["items"].map(list).equals(inc["items"].map(list))
    assert scratch.manifest["rows"] == second.manifest["rows"]
    # the vocabulary grew (old ids kept) to every train page; tokens agree with it in every
    # part, kept or written
    vocab = json.loads(read_side_file(str(out), "vocab.json"))
    assert vocab[:len(vocab0)] == vocab0
    cat = category()
    assert set(vocab[2:]) == {cat[i] for items in inc.loc[inc["split"] == "train", "items"] for i in items}
    index = {t: i for i, t in enumerate(vocab)}
    assert all(list(t) == [index.get(cat[i], 1) for i in items]
               for t, items in zip(inc["tokens"], inc["items"], strict=True))


# ---------------------------------------------------------------- bad input (generated)

HEADER = "session_id;user_id;item_id;timeframe;eventdate\n"


def small_config(tmp_path: Path, events: list[Path], purchases: list[Path] | None = None, *more: str):
    return load_config(None, [
        'data.kind="clickstream"', f'data.output="{tmp_path / "out"}"', "data.test_fraction=0.5",
        "data.val_fraction=0.0",
        f"data.clickstream.events={json.dumps([str(e) for e in events])}",
        f"data.clickstream.purchases={json.dumps([str(p) for p in purchases or []])}",
        'data.clickstream.delimiter=";"', 'data.clickstream.time_unit="ms"',
        'data.clickstream.columns={session="session_id", time="timeframe", item="item_id"}',
        'data.clickstream.purchase_columns={session="sessionId", time="timeframe"}',
        "data.clickstream.embedding_dim=8", "data.clickstream.min_length=2", *more])


def quarantine_records(root: Path) -> list[dict]:
    m = read_manifest(str(root))
    return [json.loads(x) for x in (root / m["quarantine"]["file"]).read_text().splitlines()]


def test_bad_rows_and_sessions_are_quarantined_and_the_run_goes_on(tmp_path: Path, dask_address: str) -> None:
    """Generated: the real sample has no malformed rows. Three sessions survive (one converted),
    too few for every class in every split: built with data.health.on_problem = "warn"."""
    events = tmp_path / "views.csv"
    events.write_text(HEADER + "\n".join([
        "1;NA;10;100;2016-05-01",       # line 2  ok
        "1;NA;11;200;2016-05-01",       # line 3  ok
        "1;NA;11;200;2016-05-01",       # line 4  duplicate of line 3
        "2;NA;12;soon;2016-05-01",      # line 5  unparseable time
        "2;NA;13",                      # line 6  malformed: 3 fields
        "",                             # line 7  empty
        "3;NA;14;100;2016-05-01",       # line 8  session 3 has one event: too short
        "4;NA;15;500;2016-05-01",       # line 9  session 4: bought at 50, before any view
        "4;NA;16;600;2016-05-01",       # line 10
        "5;NA;;100;2016-05-01",         # line 11 missing item
        "6;NA;17;300;2016-05-01",       # line 12 session 6: bought at 350, keeps 2 views
        "6;NA;18;100;2016-05-01",       # line 13 (earlier than line 12: reordered)
        "6;NA;19;400;2016-05-01",       # line 14 after the purchase: cut
        "7;NA;10;100;2016-05-01",       # line 15
        "7;NA;12;150;2016-05-01",       # line 16
    ]) + "\n")
    purchases = tmp_path / "purchases.csv"
    purchases.write_text("sessionId;timeframe\n4;50\n6;350\n99;10\n6;never\n")
    empty = tmp_path / "views-empty.csv"
    empty.write_text("")
    summary = clickstream.run(small_config(tmp_path, [events, empty], [purchases],
                                           'data.health.on_problem="warn"').data,
                              dask_address=dask_address)
    reasons = {(r["source"].rsplit("/", 1)[-1], r["line"], r["reason"].split(":")[0])
               for r in quarantine_records(tmp_path / "out")}
    assert reasons == {
        ("views.csv", 4, "duplicate event"), ("views.csv", 5, "unparseable timestamp"),
        ("views.csv", 6, "malformed row"), ("views.csv", 7, "empty line"),
        ("views.csv", 8, "session too short"), ("views.csv", 9, "no events before the purchase"),
        ("views.csv", 11, "missing item_id"), ("purchases.csv", 4, "purchase of an unknown session"),
        ("purchases.csv", 5, "unparseable purchase timestamp"), ("views-empty.csv", None, "empty file"),
    }
    df = rows(tmp_path / "out").set_index("id")
    assert sorted(df.index) == ["1", "6", "7"]
    assert list(df.loc["6", "items"]) == ["18", "17"] and df.loc["6", "label"] == 1
    assert summary.manifest["clickstream"]["events_after_purchase"] == 3  # 2 of session 4, 1 of 6
    assert summary.quarantined == 10
    assert any("class" in w and w.startswith("unhealthy dataset built") for w in summary.manifest["warnings"])


def test_unknown_column_is_a_clear_error(tmp_path: Path, dask_address: str) -> None:
    events = tmp_path / "views.csv"
    events.write_text(HEADER + "1;NA;10;100;2016-05-01\n")
    purchases = tmp_path / "purchases.csv"  # a label source: without one the run stops before reading
    purchases.write_text("sessionId;timeframe\n1;200\n")
    cfg = small_config(tmp_path, [events], [purchases], 'data.clickstream.columns.item="page"')
    with pytest.raises(PipelineError, match=r"views.csv: no column 'page' in its header \(it has "
                                            r"'session_id', 'user_id', 'item_id'"):
        clickstream.run(cfg.data, dask_address=dask_address)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_jsonl_gzip_user_gap_sessions_and_conversion_events(tmp_path: Path, dask_address: str) -> None:
    """JSONL (gzip) with a broken line; sessions cut per user after 30 idle minutes; a
    conversion given as an event type. Generated (the real sample is CSV without event types);
    its 3 sessions cannot fill every class of every split: built with on_problem = "warn"."""
    minute = 60_000
    lines = [
        {"user": "u1", "ts": 0, "page": "home", "type": "view"},
        {"user": "u1", "ts": 5 * minute, "page": "shoe", "type": "view"},
        {"user": "u1", "ts": 6 * minute, "page": "cart", "type": "buy"},
        {"user": "u1", "ts": 7 * minute, "page": "thanks", "type": "view"},  # after the buy: cut
        {"user": "u1", "ts": 120 * minute, "page": "home", "type": "view"},  # new session (gap)
        {"user": "u1", "ts": 121 * minute, "page": "hat", "type": "view"},
        {"user": "u2", "ts": 0, "page": "home", "type": "view"},
        {"user": "u2", "ts": 1 * minute, "page": "hat", "type": "view"},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:4]) + "\n{not json\n" + "\n".join(
        json.dumps(x) for x in lines[4:]) + "\n"
    events = tmp_path / "events.jsonl.gz"
    events.write_bytes(gzip.compress(text.encode()))
    cfg = load_config(None, [
        'data.kind="clickstream"', f'data.output="{tmp_path / "out"}"', "data.val_fraction=0.0",
        f'data.clickstream.events=["{events}"]', 'data.clickstream.time_unit="ms"',
        'data.clickstream.columns={session="", user="user", time="ts", item="page", event="type"}',
        "data.clickstream.gap_minutes=30", 'data.clickstream.conversion_event="buy"',
        "data.clickstream.embedding_dim=0", 'data.health.on_problem="warn"'])
    summary = clickstream.run(cfg.data, dask_address=dask_address)
    df = rows(tmp_path / "out").set_index("id")
    assert {k: (list(v), lab) for k, v, lab in zip(df.index, df["items"], df["label"], strict=True)} == {
        "u1": (["home", "shoe"], 1), "u1:1": (["home", "hat"], 0), "u2": (["home", "hat"], 0)}
    [bad] = quarantine_records(tmp_path / "out")
    assert bad["line"] == 5 and bad["reason"].startswith("malformed row: not a JSON object")
    assert "embeddings.npy" not in summary.manifest["side_files"]
    assert any(w.startswith("unhealthy dataset built") for w in summary.manifest["warnings"])


def test_without_item_map_the_tokens_are_the_pages(tmp_path: Path, digi, dask_address: str) -> None:
    cfg = digi_config(tmp_path / "out", "data.clickstream.embedding_dim=0")
    cfg.data.clickstream.item_map = None
    summary = clickstream.run(cfg.data, dask_address=dask_address)
    vocab = json.loads(read_side_file(str(tmp_path / "out"), "vocab.json"))
    df = rows(tmp_path / "out")
    assert set(vocab[2:]) == {i for items in df.loc[df["split"] == "train", "items"] for i in items}
    assert summary.manifest["vocab_size"] > 3000  # pages, not the 380 categories
    index = {t: i for i, t in enumerate(vocab)}
    assert all(list(t) == [index.get(i, 1) for i in items]
               for t, items in zip(df["tokens"], df["items"], strict=True))


def test_parts_are_parquet_with_the_shard_schema(digi_shards: Path) -> None:
    m = read_manifest(str(digi_shards))
    part = pq.read_table(digi_shards / m["splits"]["train"]["parts"][0]["path"])
    assert part.schema.equals(clickstream.SCHEMA)
