"""The tweets pipeline (pipelines/tweets.py) on real tweets, on a real Dask cluster: the four
CrisisMMD events (text only: their images are not offline), the MediaEval 2016 dev-set posts
with their real images (image-disjoint split), and JSON-lines dumps in the Twitter API v1.1 and
v2 shapes.

Generated inputs (each marked where it is made): the real data holds no JSON-lines dump, no
truncated, bomb or non-image file, no escaping path and no symlink, so those tests write them,
from real MediaEval posts, real CrisisMMD rows and copies of the real crisis images. Everything
is built in tmp_path; the shared data is only read.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from advorch.config import load_config
from advorch.pipelines import tweet_text, tweets
from advorch.pipelines.common import TOKENS, PipelineError
from advorch.pipelines.history import locked_run, read_history
from advorch.pipelines.images import decode_file
from advorch.pipelines.shards import MANIFEST, read_manifest, read_side_file, read_split
from advorch.pipelines.spec import read_spec
from tests.conftest import ROOT, SHARED_DATA, run_cli
from tests.pipelines.test_images import png_header

ANNOTATIONS = SHARED_DATA / "crisismmd" / "annotations"
DEVSET = SHARED_DATA / "tweets/mediaeval2016/mediaeval2016/devset"
POSTS = DEVSET / "posts.txt"
IMAGES = DEVSET / "Medieval2016_DevSet_Images"
CRISIS = SHARED_DATA / "crisis_images"
SPLITS = ("train", "val", "test")
FAST = ["data.tweets.embedding_epochs=1"]  # Word2Vec epochs: the vectors' quality is not under test

pytestmark = pytest.mark.skipif(
    not (ANNOTATIONS.is_dir() and POSTS.is_file() and CRISIS.is_dir()),
    reason=f"real CrisisMMD / MediaEval / crisis images not found under {SHARED_DATA}")


def all_rows(out: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every row of every split (or its `columns`), with its split."""
    m = read_manifest(str(out))
    return pd.concat([read_split(str(out), s, columns, manifest=m).to_pandas().assign(split=s)
                      for s in SPLITS if m["splits"][s]["rows"]], ignore_index=True)


def quarantined(out: Path) -> list[dict]:
    m = read_manifest(str(out))
    if not m["quarantine"]["file"]:
        return []
    return [json.loads(x) for x in (out / m["quarantine"]["file"]).read_text().splitlines()]


def config(tmp: Path, out: Path, overrides: list[str], base: str = "crisismmd.toml"):
    return load_config(ROOT / "configs" / base, [f'data.output="{out}"', *FAST, *overrides]).data


# ---------------------------------------------------------------- CrisisMMD (real, text only)


@pytest.fixture(scope="module")
def crisismmd_out(tmp_path_factory, dask_address) -> tuple[Path, str]:
    """configs/crisismmd.toml over the four real events, built once by the real CLI."""
    out = tmp_path_factory.mktemp("crisismmd") / "shards"
    r = run_cli("preprocess", "tweets", str(ROOT / "configs" / "crisismmd.toml"), "--output", str(out),
                "--dask-address", dask_address, "--set", f'data.tweets.files=["{ANNOTATIONS}/*.tsv"]',
                *[x for o in FAST for x in ("--set", o)])
    assert r.returncode == 0, r.stderr + r.stdout
    return out, r.stdout


def test_crisismmd_four_events_text_only(crisismmd_out):
    out, stdout = crisismmd_out
    m = read_manifest(str(out))
    tsv = pd.concat([pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False).assign(event=p.stem)
                     for p in sorted(ANNOTATIONS.glob("*.tsv"))])
    assert m["rows"] == len(tsv) == 11549 and m["quarantine"]["count"] == 0
    tw = m["tweets"]
    assert tw["events"] == {"california_wildfires": 1589, "hurricane_harvey": 4434, "hurricane_irma": 4504,
                            "srilanka_floods": 1022}
    # the images are not offline: a text-only dataset, said in the manifest and the summary line
    assert tw["text_only"] and tw["rows_with_image"] == 0
    assert tw["rows_without_image"] == {"count": 11549,
                                        "by_reason": {"data.tweets.image_root not set": 11549}}
    assert m["inputs"] == TOKENS and "pixels" not in m["schema"] and "has_image" in m["schema"]
    assert "11549 rows" in stdout and "0 with an image, 11549 without" in stdout and "text-only" in stdout
    assert "unused: 9 columns" in stdout  # text_info_conf … image_url, per file, in the manifest too
    # §IV-A: informative when the text or the image is
    either = (tsv.text_info == "informative") | (tsv.image_info == "informative")
    assert m["classes"] == ["informative", "not_informative"]
    assert m["class_counts"] == {"informative": int(either.sum()), "not_informative": int((~either).sum())}
    rows = all_rows(out)
    assert rows["id"].is_unique and set(rows["event"]) == set(tw["events"])
    # split = "tweet": a tweet's image rows (the same text) in one split; fractions as configured
    assert rows.groupby("tweet_id")["split"].nunique().max() == 1
    assert tw["split"]["fractions"] == pytest.approx(tw["split"]["target"], abs=0.01)
    for s in SPLITS:
        assert all(m["splits"][s]["classes"].values())


def test_crisismmd_text_tokens_and_vectors(crisismmd_out):
    out, _ = crisismmd_out
    m = read_manifest(str(out))
    rows = all_rows(out)
    # ftfy repairs the real mojibake; URLs and mentions are gone, hashtag words kept
    [row] = rows[rows["id"] == "917791291823591425_0"].to_dict("records")
    assert all(x in row["raw_text"] for x in ("Weâ€™re", "@Cal_OES", "https://t.co"))
    assert row["text"] == "PLS SHARE: We're capturing wildfire response, recovery info here:"
    assert not rows["text"].str.contains("â€|https?://|@\\w|#", regex=True).any()
    assert rows["raw_text"].str.contains("â€").sum() > 400
    # tokens: the first 15 words (§IV-B), ids into the train vocabulary (0 pad, 1 OOV)
    vocab = json.loads(read_side_file(str(out), "vocab.json", m))
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == m["vocab_size"]
    lengths = rows["tokens"].map(len)
    _, words = tweet_text.words(rows["text"].tolist(), 15)
    assert lengths.max() == 15 and lengths.min() >= 1 and (lengths == np.minimum(words, 15)).all()
    assert m["tweets"]["tokens_cut"] == (words > 15).sum() > 1000
    long = rows[words > 15].iloc[0]
    [first] = tweet_text.words([long["text"]], 15)[0]
    assert [vocab[i] for i in long["tokens"]] == [w if w in vocab else "<unk>" for w in first]
    train = rows[rows["split"] == "train"]
    assert {vocab[i] for t in train["tokens"] for i in t} == set(vocab[2:])  # counted on train only
    vectors = np.load(io.BytesIO(read_side_file(str(out), "embeddings.npy", m)))
    assert vectors.shape == (m["vocab_size"], 100) and vectors.dtype == np.float32
    assert not vectors[0].any() and np.isfinite(vectors).all()


def test_crisismmd_agreed_labels_quarantine_disagreement(tmp_path, dask_address):
    """label = "agreed" on the real Sri Lanka floods TSV: disagreeing rows quarantined, each named."""
    src = ANNOTATIONS / "srilanka_floods_final_data.tsv"
    out = tmp_path / "agreed"
    summary = tweets.run(config(tmp_path, out, [f'data.tweets.files=["{src}"]', 'data.tweets.label="agreed"',
                                                'data.tweets.split="random"']), dask_address=dask_address)
    tsv = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False)
    disagree = tsv.text_info != tsv.image_info
    assert summary.rows == (~disagree).sum() and summary.quarantined == disagree.sum() > 0
    q = quarantined(out)
    assert {r["reason"].split(":")[0] for r in q} == {"labels disagree"}
    assert sorted(r["line"] for r in q) == sorted((np.flatnonzero(disagree) + 2).tolist())  # line 1: header
    assert all(r["source"] == str(src) for r in q)


# ---------------------------------------------------------------- MediaEval 2016 (real, with images)


@pytest.fixture(scope="module")
def mediaeval_out(tmp_path_factory, dask_address) -> Path:
    """configs/mediaeval_tweets.toml on the real dev set, built once through locked_run."""
    out = tmp_path_factory.mktemp("mediaeval") / "shards"
    cfg = load_config(ROOT / "configs" / "mediaeval_tweets.toml",
                      [f'data.output="{out}"', f'data.tweets.files=["{POSTS}"]',
                       f'data.tweets.image_root="{IMAGES}"', *FAST]).data
    summary = locked_run(cfg, dask_address=dask_address)
    assert not summary.up_to_date
    return out


def test_mediaeval_image_disjoint_with_real_images(mediaeval_out):
    m = read_manifest(str(mediaeval_out))
    posts = pd.read_csv(POSTS, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    pairs = posts.assign(image=posts["image_id(s)"].str.split(",")).explode("image")
    tw = m["tweets"]
    # one row per (tweet, image); a post with no word left is quarantined (named), never dropped
    assert m["rows"] + m["quarantine"]["count"] == len(pairs) == 15872
    assert m["quarantine"]["by_reason"] == {"no text": 1}
    assert m["classes"] == ["fake", "real"] and tw["images"]["decoded"] == 378
    assert m["inputs"]["pixels"] == {"column": "pixels", "shape": [3, 64, 64], "dtype": "uint8",
                                     "range": [0.0, 1.0]}
    assert m["inputs"]["has_image"] == {"column": "has_image", "shape": [], "dtype": "bool"}
    assert tw["rows_with_image"] == 13566 and tw["rows_without_image"]["count"] == 2305
    rows = all_rows(mediaeval_out, ["id", "tweet_id", "image_id", "has_image"])
    # image-disjoint: no image and no tweet in two splits; every class in every split
    with_id = rows[rows["image_id"] != ""]
    assert with_id.groupby("image_id")["split"].nunique().max() == 1
    assert rows.groupby("tweet_id")["split"].nunique().max() == 1
    assert all(n > 0 for s in SPLITS for n in m["splits"][s]["classes"].values())
    assert tw["split"]["by"] == "image"
    assert tw["split"]["fractions"] == pytest.approx(tw["split"]["target"], abs=0.03)
    assert "posts" not in tw["events"] and tw["events"]["Hurricane Sandy"] > 10_000  # events from the folders
    # rows with images decode to [3, 64, 64]: the real file, decoded and resized, row for row
    files = {p.stem: p for p in IMAGES.rglob("*") if p.is_file()}
    test = read_split(str(mediaeval_out), "test", ["image_id", "has_image", "pixels"]).to_pandas()
    for r in test[test["has_image"]].drop_duplicates("image_id").head(5).itertuples():
        expected, _ = decode_file(str(files[r.image_id]), 64, "RGB", 40_000_000)
        assert np.array_equal(np.asarray(r.pixels, np.uint8), expected)
    assert not np.concatenate(test.loc[~test["has_image"], "pixels"].to_numpy()).any()  # zeros
    spec = read_spec(str(mediaeval_out))
    assert spec.input("pixels").shape == (3, 64, 64) and spec.input("has_image").shape == ()


# ---------------------------------------------------------------- JSON lines, v1.1 and v2 (generated)


def v1(post: dict, media: list[tuple[str, bool]]) -> dict:
    """GENERATED: a Twitter API v1.1 object around a real post; media (id, with a URL or not)."""
    return {"id": int(post["post_id"]), "id_str": post["post_id"], "full_text": post["post_text"],
            "created_at": post["timestamp"], "user": {"screen_name": post["username"]},
            "label": post["label"],
            **({"extended_entities": {"media": [
                {"id_str": mid, "type": "photo",
                 **({"media_url_https": f"https://pbs.twimg.com/media/{mid}.jpg"} if url else {})}
                for mid, url in media]}} if media else {})}


def v2(post: dict, media: list[str], label_in_data: bool) -> dict:
    """GENERATED: a Twitter API v2 response line around a real post (media by key, URL in includes)."""
    data = {"id": post["post_id"], "text": post["post_text"], "author_id": post["user_id"],
            **({"attachments": {"media_keys": [f"3_{m}" for m in media]}} if media else {}),
            **({"label": post["label"]} if label_in_data else {})}
    return {"data": data, **({} if label_in_data else {"label": post["label"]}),
            "includes": {"media": [{"media_key": f"3_{m}", "type": "photo",
                                    "url": f"https://pbs.twimg.com/media/{m}.jpg"} for m in media]}}


@pytest.fixture
def image_root(tmp_path) -> Path:
    """Copies of the 12 real crisis images, plus GENERATED bad files: a truncated JPEG, a PNG
    header claiming 20000 x 20000, a text file named .jpg and a symlink out of the root."""
    root = tmp_path / "media"
    shutil.copytree(CRISIS, root)
    real = sorted(root.glob("*.jpg"))
    (root / "truncated.jpg").write_bytes(real[0].read_bytes()[:3000])
    (root / "bomb.png").write_bytes(png_header(20_000, 20_000))
    (root / "notimage.jpg").write_text("this is not an image\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(real[1], outside / "secret.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    return root


def jsonl_config(tmp: Path, out: Path, files: list[Path], root: Path, *extra: str):
    return config(tmp, out, [f"data.tweets.files={json.dumps([str(f) for f in files])}",
                             'data.tweets.format="jsonl"', f'data.tweets.image_root="{root}"',
                             'data.tweets.split="random"', "data.test_fraction=0.3", "data.val_fraction=0.0",
                             *extra])


def test_jsonl_v1_and_v2_row_for_row_with_bad_input(tmp_path, image_root, dask_address):
    posts = pd.read_csv(POSTS, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    posts = posts.drop_duplicates("post_text").groupby("label").head(6).to_dict("records")  # 6 fake, 6 real
    stems = sorted(p.stem for p in CRISIS.glob("*.jpg"))
    v1_lines = [v1(posts[0], [(stems[0], True), (stems[1], False)]),  # two images: two rows
                v1(posts[1], [(stems[2], True)]), v1(posts[2], []), v1(posts[6], [(stems[3], False)]),
                v1(posts[7], [(stems[4], True)]), v1(posts[8], [("truncated", True)])]
    v2_lines = [v2(posts[3], [stems[5]], True), v2(posts[4], [stems[6], stems[7]], False),
                v2(posts[9], [stems[8]], True), v2(posts[10], ["bomb"], False),
                v2(posts[11], ["notimage", "escape"], True), v2(posts[5], ["never_downloaded"], False)]
    empty = {**posts[6], "post_id": "1", "post_text": "@someone https://t.co/abc #"}  # no word left
    dump1, dump2 = tmp_path / "stream_v1.jsonl", tmp_path / "search_v2.jsonl"
    dump1.write_text("\n".join([*map(json.dumps, v1_lines[:3]), "{not json", json.dumps(v1(empty, [])),
                                *map(json.dumps, v1_lines[3:])]) + "\n")
    dump2.write_text("\n".join([*map(json.dumps, v2_lines), "[1, 2]"]) + "\n")
    out = tmp_path / "jsonl"
    summary = tweets.run(jsonl_config(tmp_path, out, [dump1, dump2], image_root), dask_address=dask_address)
    m = summary.manifest

    # bad input: quarantined with its reason, the run went on
    reasons = {(Path(r["source"]).name, r["line"]): r["reason"] for r in quarantined(out)}
    assert reasons.pop(("stream_v1.jsonl", 4)).startswith("malformed JSON line")
    assert reasons.pop(("stream_v1.jsonl", 5)).startswith("no text")
    assert reasons.pop(("search_v2.jsonl", 7)).startswith("malformed JSON line: not a JSON object")
    assert reasons.pop(("truncated.jpg", None)).startswith("truncated")
    assert reasons.pop(("bomb.png", None)).startswith("decompression bomb")
    assert reasons.pop(("notimage.jpg", None)).startswith("not an image")
    assert reasons.pop(("escape.jpg", None)).startswith("outside root")
    assert reasons == {} and summary.quarantined == 7
    assert m["tweets"]["rows_without_image"]["by_reason"] == {
        "no image in the tweet": 1, "image file not found under data.tweets.image_root": 1, "truncated": 1,
        "decompression bomb": 1, "not an image": 1, "outside root": 1}
    assert {u["source"]: u["what"] for u in m["unused"]}[str(dump1)] == "keys"  # created_at, user …

    # row for row: one row per medium, the cleaned text, the label, the real image decoded
    expected = {}
    for line in [*v1_lines, *v2_lines]:
        post_id, text, label, media = tweets.parse_tweet(line, "label")
        for k, (mid, _) in enumerate(media or [("", "")]):
            stem = mid.removeprefix("3_")
            image = CRISIS / f"{stem}.jpg" if stem in stems else None
            expected[f"{post_id}_{k}"] = (label, tweet_text.clean(pa.array([text]))[0].as_py(), image)
    rows = all_rows(out).set_index("id")
    assert sorted(rows.index) == sorted(expected) and len(rows) == 15
    classes = m["classes"]
    for rid, (label, text, image) in expected.items():
        r = rows.loc[rid]
        assert (classes[r["label"]], r["text"], bool(r["has_image"])) == (label, text, image is not None)
        want = decode_file(str(image), 64, "RGB", 40_000_000)[0] if image else np.zeros(3 * 64 * 64, np.uint8)
        assert np.array_equal(np.asarray(r["pixels"], np.uint8), want), rid

    # unchanged sources and settings: nothing rebuilt
    again = tweets.run(jsonl_config(tmp_path, out, [dump1, dump2], image_root), dask_address=dask_address)
    assert again.up_to_date and again.manifest["build_id"] == m["build_id"]


def test_crisismmd_image_paths_escaping_the_root_are_refused(tmp_path, image_root, dask_address):
    """Real CrisisMMD rows whose GENERATED image_path leaves the root: '..', absolute, a symlink out."""
    src = ANNOTATIONS / "california_wildfires_final_data.tsv"
    tsv = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False).drop_duplicates("tweet_id").head(8)
    good = sorted(image_root.glob("58*.jpg"))[0].name
    tsv["image_path"] = ["../../etc/passwd", "/etc/passwd", "escape.jpg", good, f"./{good}",
                         "sub/../../outside/secret.jpg", "data_image/not_here.jpg", good]
    dump = tmp_path / "california_wildfires_final_data.tsv"
    tsv.to_csv(dump, sep="\t", index=False)
    out = tmp_path / "paths"
    # GENERATED: a word2vec-format text file (header "N D") with vectors for some of the words
    words = sorted({w for ws in tweet_text.words(tweet_text.clean(pa.array(tsv["tweet_text"])).to_pylist(),
                                                 15)[0] for w in ws})[:6] + ["notawordhere"]
    vecs = np.random.default_rng(1).normal(size=(len(words), 100)).round(4).astype(np.float32)
    glove = tmp_path / "vectors.txt"
    glove.write_text(f"{len(words)} 100\n" + "".join(f"{w} {' '.join(map(str, v))}\n"
                                                      for w, v in zip(words, vecs, strict=True)))
    cfg = config(tmp_path, out, [f'data.tweets.files=["{dump}"]', f'data.tweets.image_root="{image_root}"',
                                 'data.health.on_problem="warn"', f'data.tweets.word_vectors="{glove}"'])
    summary = tweets.run(cfg, dask_address=dask_address)
    q = quarantined(out)
    by_line = {r["line"]: r for r in q if r["line"] is not None}
    assert sorted(by_line) == [2, 3, 7]  # each escaping path named with its file and row
    assert all(r["reason"].startswith("outside root") and r["source"] == str(dump) for r in by_line.values())
    assert by_line[2]["raw"] == "../../etc/passwd" and "absolute path" in by_line[3]["reason"]
    [link] = [r for r in q if r["line"] is None]
    assert link["source"].endswith("escape.jpg") and link["reason"].startswith("outside root: symlink")
    rows = all_rows(out)
    assert summary.rows == 8 and rows["has_image"].sum() == 3  # the text rows stay
    assert summary.manifest["tweets"]["rows_without_image"]["by_reason"] == {
        "outside root": 4, "image file not found under data.tweets.image_root": 1}
    # the word vectors come from the file for the vocabulary words it has
    m = summary.manifest
    vocab = json.loads(read_side_file(str(out), "vocab.json", m))
    vectors = np.load(io.BytesIO(read_side_file(str(out), "embeddings.npy", m)))
    have = [i for i, w in enumerate(words) if w in vocab]
    assert m["tweets"]["word_vectors"] == {"source": str(glove), "found": len(have)} and have
    for i in have:
        assert np.allclose(vectors[vocab.index(words[i])], vecs[i])


def test_failing_run_leaves_nothing_half_written(tmp_path, image_root, dask_address):
    """GENERATED: three real posts, all of one class: the health check refuses the build after its
    parts were staged; no manifest, no part, no staging folder is left, the history says failed."""
    posts = pd.read_csv(POSTS, sep="\t", dtype=str, keep_default_na=False, quoting=3, nrows=3)
    posts = posts.to_dict("records")
    dump = tmp_path / "fakes_only.jsonl"
    dump.write_text("".join(json.dumps(v1(p, [])) + "\n" for p in posts))
    out = tmp_path / "failing"
    with pytest.raises(PipelineError, match="not fit to train"):
        locked_run(jsonl_config(tmp_path, out, [dump], image_root), dask_address=dask_address)
    assert not (out / MANIFEST).exists()
    assert not list(out.glob("parts/*")) and not list(out.glob(".staging-*"))
    assert [r["status"] for r in read_history(str(out))] == ["failed"]
    with pytest.raises(PipelineError, match="data.tweets.files: .* matches no file"):
        tweets.run(jsonl_config(tmp_path, out, [tmp_path / "nothing*.jsonl"], image_root))
    assert not (out / MANIFEST).exists() and os.listdir(out)  # the lock and history only
