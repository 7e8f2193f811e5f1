"""Property tests of the tweets pipeline (pipelines/tweets.py, tweet_text.py): tweet TSV and JSON
lines.

Inputs: MUTATED real data only: lines of the real MediaEval 2016 posts.txt and CrisisMMD annotation
TSVs (../shared/data/tweets, ../shared/data/crisismmd) with fields dropped, added, emptied, quoted,
swapped or their bytes flipped; and those posts wrapped (GENERATED wrapper, real text) as Twitter
API v1.1 / v2 JSON objects whose keys are then dropped, retyped (media as a number, a string, a
dict) or whose bytes are flipped. Properties:

- `parse_jsonl_tweets` ends with its result: every line is one quarantine record or the rows of its
  tweet (one per medium, at least one), in order;
- `clean_batch` gives one cleaned text per text, at most `max_tokens` words each, no hashtag sign,
  no mention, no URL left;
- a whole run (in-process Dask cluster, no image root) publishes every line of a CrisisMMD TSV as a
  row or a quarantine record, and every MediaEval line as its rows (one per image id) or one record;
  or stops with a PipelineError.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from advorch.config import load_config
from advorch.pipelines import tweets
from advorch.pipelines.common import PipelineError
from advorch.pipelines.tweet_text import clean_batch
from tests.property.support import FAST_SETTINGS, RUN_SETTINGS, SHARED_DATA, threads_cluster, toml_str

POSTS = SHARED_DATA / "tweets/mediaeval2016/mediaeval2016/devset/posts.txt"
CRISIS = SHARED_DATA / "crisismmd/annotations/srilanka_floods_final_data.tsv"

pytestmark = pytest.mark.skipif(
    not (POSTS.is_file() and CRISIS.is_file()),
    reason=f"real MediaEval / CrisisMMD files not found under {SHARED_DATA}",
)


def _lines(path: Path, n: int) -> tuple[str, list[str]]:
    if not path.is_file():
        return "", [""]
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    step = max(len(rows) // n, 1)
    return header, rows[::step][:n]  # spread over the file: both labels, several events


POSTS_HEADER, POST_LINES = _lines(POSTS, 300)
CRISIS_HEADER, CRISIS_LINES = _lines(CRISIS, 200)


# any character but the TSV's separators; "\udcff" is written as the byte 0xff (not UTF-8)
CHARS = st.one_of(st.characters(exclude_characters="\t\n\r", exclude_categories=["Cs"]), st.just("\udcff"))


@st.composite
def mutated_tsv_line(draw: st.DrawFn, lines: list[str]) -> str:
    """A real TSV line with a few of its fields mutated (MUTATED real data)."""
    fields = draw(st.sampled_from(lines)).split("\t")
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(0, len(fields) - 1))
        op = draw(st.sampled_from(["drop", "add", "empty", "quote", "swap", "flip", "text", "ids"]))
        if op == "drop" and len(fields) > 1:
            del fields[k]
        elif op == "add":
            fields.insert(k, draw(st.text(alphabet=CHARS, max_size=8)))
        elif op == "empty":
            fields[k] = ""
        elif op == "quote":  # a field that opens a quote and never closes it, or one that is quoted
            fields[k] = draw(st.sampled_from(['"', '"x" y'])) + fields[k]
        elif op == "swap":
            j = draw(st.integers(0, len(fields) - 1))
            fields[k], fields[j] = fields[j], fields[k]
        elif op == "flip" and fields[k]:
            at = draw(st.integers(0, len(fields[k]) - 1))
            fields[k] = fields[k][:at] + draw(CHARS) + fields[k][at + 1 :]
        elif op == "text":
            fields[k] = draw(
                st.sampled_from(
                    [
                        "informative",
                        "not_informative",
                        "fake",
                        "real",
                        "humor",
                        "@a #b https://t.co/x",
                        "RT",
                        "",
                        " ",
                    ]
                )
            )
        elif op == "ids":
            fields[k] = draw(st.sampled_from(["a,b", ",", "sandy_real_1,", "x" * 40]))
    return "\t".join(fields)


def _post(line: str) -> dict:
    names = POSTS_HEADER.split("\t")
    return dict(zip(names, line.split("\t") + [""] * len(names), strict=False))


junk = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@st.composite
def tweet_object(draw: st.DrawFn) -> dict:
    """A real post as a Twitter API v1.1 or v2 object (GENERATED wrapper, real text), mutated."""
    post = _post(draw(st.sampled_from(POST_LINES)))
    media = post["image_id(s)"].split(",") if post["image_id(s)"] else []
    if draw(st.booleans()):
        obj: dict = {
            "id_str": post["post_id"],
            "full_text": post["post_text"],
            "label": post["label"],
            "extended_entities": {
                "media": [{"id_str": m, "media_url_https": f"https://x/{m}.jpg"} for m in media]
            },
        }
        spots = [("extended_entities", "media"), ("full_text",), ("id_str",), ("label",)]
    else:
        obj = {
            "data": {
                "id": post["post_id"],
                "text": post["post_text"],
                "attachments": {"media_keys": [f"3_{m}" for m in media]},
            },
            "includes": {"media": [{"media_key": f"3_{m}", "url": f"https://x/{m}.jpg"} for m in media]},
            "label": post["label"],
        }
        spots = [
            ("data", "attachments", "media_keys"),
            ("includes", "media"),
            ("data", "text"),
            ("data",),
            ("label",),
            ("data", "id"),
        ]
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(spots))
        node = obj
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if draw(st.booleans()):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = draw(junk)
    return obj


@st.composite
def jsonl_block(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        raw = json.dumps(draw(tweet_object())).encode()
        if draw(st.integers(0, 5)) == 0:  # flipped bytes
            raw = bytearray(raw)
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            raw = bytes(raw).replace(b"\n", b" ")
        lines.append(raw)
    return b"\n".join(lines) + (b"\n" if lines and draw(st.booleans()) else b"")


def check_jsonl_tweets(block: bytes) -> None:
    out = tweets.parse_jsonl_tweets(block, "label")
    physical = block.split(b"\n")
    if physical[-1] == b"":
        physical.pop()
    assert out["lines"] == len(physical)
    rows_per_line: dict[int, int] = {}
    for row in out["rows"]:
        rows_per_line[row[0]] = rows_per_line.get(row[0], 0) + 1
        line, tweet_id, k, media_id, name, text, label = row
        assert (
            all(isinstance(x, str) for x in (tweet_id, media_id, name, text, label))
            and label.strip() == label
        )
        assert label
    bad = [b[0] for b in out["bad"]]
    assert len(set(bad)) == len(bad) and not set(bad) & set(rows_per_line)
    assert sorted(bad + list(rows_per_line)) == list(range(1, len(physical) + 1))
    for n, count in rows_per_line.items():
        media = tweets.parse_tweet(json.loads(physical[n - 1]), "label")[3]
        assert count == max(1, len(media))
    for _, reason, _ in out["bad"]:
        assert reason.startswith(("malformed JSON line", "no label")), reason


@FAST_SETTINGS
@given(block=jsonl_block())
@example(block=b'{"id_str": "1", "full_text": "x", "label": "fake", "extended_entities": {"media": 3}}\n')
@example(block=b'{"data": {"id": "1", "text": "x", "attachments": {"media_keys": 7}}, "label": "real"}\n')
@example(block=b'{"data": {"id": "1", "text": "x"}, "includes": {"media": 5}, "label": "real"}\n')
@example(block=b'{"id_str": "1", "full_text": "\\ud83d", "label": "fake"}\n')  # a lone surrogate
def test_every_json_line_is_its_rows_or_one_record(block: bytes) -> None:
    check_jsonl_tweets(block)


texts = st.one_of(
    st.sampled_from([_post(x)["post_text"] for x in POST_LINES]),
    st.sampled_from([x.split("\t")[12] if x.count("\t") > 12 else x for x in CRISIS_LINES]),
    st.text(max_size=30),
)


@st.composite
def mutated_texts(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        t = draw(texts)
        if t and draw(st.booleans()):
            at = draw(st.integers(0, len(t)))
            t = t[:at] + draw(st.text(max_size=3)) + t[at:]
        out.append(t)
    return out


def check_clean(raw: list[str], max_tokens: int, lowercase: bool) -> None:
    out = clean_batch(raw, max_tokens, lowercase)
    assert len(out["text"]) == len(out["tokens"]) == len(out["words"]) == len(raw)
    for text, tokens, n in zip(out["text"], out["tokens"], out["words"], strict=True):
        assert len(tokens) == min(n, max_tokens)
        assert (
            "#" not in text and not re.search(r"@[0-9A-Za-z_]", text) and not re.search(r"https?://\S", text)
        )
        assert text == text.strip() and "  " not in text


@FAST_SETTINGS
@given(raw=mutated_texts(), max_tokens=st.integers(1, 20), lowercase=st.booleans())
def test_cleaning_gives_one_text_per_tweet(raw: list[str], max_tokens: int, lowercase: bool) -> None:
    check_clean(raw, max_tokens, lowercase)


# ---------------------------------------------------------------- whole runs


@st.composite
def tweet_files(draw: st.DrawFn) -> dict:
    fmt = draw(st.sampled_from(["crisismmd", "mediaeval"]))
    lines = draw(
        st.lists(
            mutated_tsv_line(CRISIS_LINES if fmt == "crisismmd" else POST_LINES), min_size=1, max_size=10
        )
    )
    return {"format": fmt, "lines": lines, "label": draw(st.sampled_from(["either", "text", "agreed"]))}


def check_run(case: dict, dask_address: str) -> None:
    fmt, lines = case["format"], case["lines"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("srilanka_floods_final_data.tsv" if fmt == "crisismmd" else "posts.txt")
        path.write_text(
            "\n".join([CRISIS_HEADER if fmt == "crisismmd" else POSTS_HEADER, *lines]) + "\n",
            encoding="utf-8",
            errors="surrogateescape",
        )
        cfg = load_config(
            None,
            [
                'data.kind="tweets"',
                f'data.output="{tmp}/out"',
                f'data.tweets.format="{fmt}"',
                f"data.tweets.files=[{toml_str(str(path))}]",
                f'data.tweets.label="{case["label"]}"',
                'data.tweets.split="random"',
                "data.tweets.embedding_epochs=1",
                "data.tweets.embedding_dim=4",
                'data.health.on_problem="warn"',
            ],
        )
        try:
            summary = tweets.run(cfg.data, dask_address=dask_address)
        except PipelineError as e:
            assert str(path) in str(e), e
            return
        got = summary.rows + summary.quarantined
        if fmt == "crisismmd":  # a row per line
            assert got == len(lines), summary.manifest["quarantine"]
        else:  # a row per image id of a line, or one record for the line
            n_ids = [
                len(x.split("\t")[3].split(",")) if x.count("\t") == 6 and "\udcff" not in x else 1
                for x in lines
            ]  # a line that is not UTF-8 is one record
            assert got == sum(n_ids), (got, n_ids, summary.manifest["quarantine"])
        assert summary.rows == sum(sp["rows"] for sp in summary.manifest["splits"].values())


@pytest.fixture(scope="module")
def cluster():
    with threads_cluster() as address:
        yield address


@RUN_SETTINGS
@given(case=tweet_files())
@example(
    case={
        "format": "crisismmd",
        "label": "either",
        "lines": ['"' + CRISIS_LINES[0], CRISIS_LINES[1], CRISIS_LINES[2]],
    }
)  # an open quote ate lines
def test_a_run_publishes_every_line_or_names_the_file(case: dict, cluster: str) -> None:
    check_run(case, cluster)


FUZZ = {  # name → (strategies, the property, needs the cluster): benchmarks/fuzz_parsers.py
    "tweets.parse_jsonl_tweets": (dict(block=jsonl_block()), check_jsonl_tweets, False),
    "tweet_text.clean_batch": (
        dict(raw=mutated_texts(), max_tokens=st.integers(1, 20), lowercase=st.booleans()),
        check_clean,
        False,
    ),
    "tweets.run": (dict(case=tweet_files()), check_run, True),
}
