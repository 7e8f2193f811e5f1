"""Crisis tweets (text + images) → token and pixel Parquet shards (Chen et al., multi-modal
adversarial training for crisis tweets, §IV-A dataset and labels, §IV-B inputs).

    tweet files ─ Dask: parse ─► one row per (tweet, image) ─ Dask: clean + tokenise (tweet_text.py)
    ─► resolve images under image_root ─ Dask: decode + resize (images.py) ─► split, vocabulary,
    word vectors ─► Parquet parts + manifest (shards.py)

Layouts (data.tweets.format), several files per config (globs):

- **crisismmd**: the CrisisMMD annotation TSVs (tweet_id, image_id, text_info, image_info,
  tweet_text, image_path …), one row per image already; `image_path` is relative to image_root.
  The event is the file name without `_final_data` (california_wildfires_final_data.tsv →
  california_wildfires).
- **mediaeval**: MediaEval 2016 posts.txt (post_id, post_text, image_id(s), label …); a tweet
  lists its images by id, comma-separated: one row per id, the file found under image_root by
  its name without suffix (<event>/{fakes,reals}/<id>.jpg). The event is the image's top folder
  (a tweet whose image is absent takes the folder of images whose id starts alike, e.g.
  sandy_real_10 → Hurricane Sandy; else the file name).
- **jsonl**: one Twitter API object per line, v1.1 (id_str, full_text or text,
  extended_entities.media or entities.media) or v2 ({"data": {id, text, attachments.media_keys},
  "includes": {"media": [...]}}). A medium's file is found by the file name of its URL, else by its
  id (v1.1 id_str, v2 media_key) as the file name without suffix. The label is the key
  data.tweets.label_key (dots for nested keys), on the object or its `data`.

Labels (§IV-A): CrisisMMD's text and image are annotated separately; label "either" (the paper's)
makes a row informative when its text or its image is, "text" / "image" take one annotation (the
image's is in the TSV even when the image file is absent), "agreed" keeps the rows whose two agree
(others quarantined: "labels disagree"). MediaEval and JSONL take their label column / key.
Classes are the sorted label names.

Inputs (§IV-B): the first `max_tokens` (15) words, ids into a vocabulary counted on the train split
(0 pad, 1 OOV) with 100-d word vectors (a GloVe / word2vec file, else Word2Vec trained on the train
split's tweets) as side files; images RGB, 64 x 64, uint8 CHW (the model scales to [0, 1]). A row
whose image is missing or unusable keeps its text, with has_image false and zero pixels; if no row
has an image the dataset is text-only (no pixel column, no pixel input). Every image problem is
counted in the manifest (tweets.rows_without_image); those of a bad file or path are quarantined.

Splits: "random" (stratified by row), or grouped so that nothing leaks between splits: "image"
(no image and no tweet in two splits: groups are the connected tweet–image components), "tweet"
(a tweet's images together), "event"; grouped splits are greedily stratified and the fractions
they reach are in the manifest (tweets.split).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from advorch import __version__
from advorch.config import DataConfig, TweetsConfig
from advorch.pipelines.common import (
    OOV,
    SPLITS,
    TOKENS,
    PipelineError,
    Summary,
    build_vocab,
    stratified_codes,
    unused,
    word2vec,
)
from advorch.pipelines.events import Layout, expand, json_object, read_files
from advorch.pipelines.images import Candidate, _fingerprints, decode_on, pixel_lists, scan_folder
from advorch.pipelines.shards import (
    DatasetWriter,
    Quarantine,
    fingerprints,
    read_manifest,
    sources_unchanged,
    write_part,
)
from advorch.pipelines.tweet_text import clean_batch
from advorch.progress import track

CRISISMMD = ["tweet_id", "image_id", "text_info", "image_info", "tweet_text", "image_path"]
MEDIAEVAL = {"id": "post_id", "text": "post_text", "images": "image_id(s)"}
INFORMATIVE = ("informative", "not_informative")
ROWS = ["source", "line", "tweet_id", "k", "image_id", "image_ref", "event", "raw_text", "label"]
TEXT_BATCH = 2000  # distinct texts per cleaning task
NO_IMAGE = "no image in the tweet"
NOT_FOUND = "image file not found under data.tweets.image_root"
NO_ROOT = "data.tweets.image_root not set"

FIELDS = [("id", pa.string()), ("label", pa.int32()), ("tokens", pa.list_(pa.int32())),
          ("has_image", pa.bool_()), ("event", pa.string()), ("tweet_id", pa.string()),
          ("image_id", pa.string()), ("text", pa.string()), ("raw_text", pa.string())]
PIXELS = ("pixels", pa.list_(pa.uint8()))


# ---------------------------------------------------------------- reading the three layouts


def _event_of(path: str) -> str:
    """A file's event, from its name: california_wildfires_final_data.tsv → california_wildfires."""
    stem = PurePosixPath(path).name.split(".")[0]
    return stem.removesuffix("_final_data")


def _frame(rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({c: rows[c] for c in ROWS})


def read_crisismmd(paths: list[str], t: TweetsConfig, client: Any,
                   quarantine: Quarantine) -> tuple[pd.DataFrame, list[dict]]:
    """CrisisMMD annotation TSVs → rows (see ROWS) with the §IV-A label `t.label`; and the unused
    columns. Rows with an unknown annotation, or (label "agreed") disagreeing ones, are quarantined."""
    table, columns = read_files(paths, CRISISMMD, layout=_layout(), client=client, quarantine=quarantine,
                                what="data.tweets.files (CrisisMMD columns)", categorical=[])
    d = table.to_pandas()
    text_info, image_info = d["text_info"].str.strip(), d["image_info"].str.strip()
    informative = (text_info == INFORMATIVE[0]) | (image_info == INFORMATIVE[0])
    label = {"either": np.where(informative, INFORMATIVE[0], INFORMATIVE[1]), "text": text_info,
             "image": image_info, "agreed": text_info}[t.label]
    used = {"either": [text_info, image_info], "text": [text_info], "image": [image_info],
            "agreed": [text_info, image_info]}[t.label]
    known = np.logical_and.reduce([u.isin(INFORMATIVE).to_numpy() for u in used])
    _reject(d, ~known, paths, quarantine,
            lambda r: f"unknown label: text_info {r.text_info!r}, image_info {r.image_info!r} (expected "
                      f"{' or '.join(INFORMATIVE)}); fix the row or choose data.tweets.label")
    disagree = known & (t.label == "agreed") & (text_info != image_info).to_numpy()
    _reject(d, disagree, paths, quarantine,
            lambda r: f"labels disagree: text_info {r.text_info}, image_info {r.image_info}; "
                      "data.tweets.label = \"agreed\" keeps rows whose annotations agree")
    keep = known & ~disagree
    d = d[keep].assign(label=np.asarray(label)[keep])
    d["k"] = d.groupby(["source", "tweet_id"]).cumcount()
    events = np.array([_event_of(p) for p in paths], dtype=object)
    rows = _frame({**d, "image_ref": d["image_path"], "event": events[d["source"]],
                   "raw_text": d["tweet_text"]})
    return rows, _unused(columns, CRISISMMD)


def read_mediaeval(paths: list[str], t: TweetsConfig, client: Any,
                   quarantine: Quarantine) -> tuple[pd.DataFrame, list[dict]]:
    """MediaEval posts files → rows, one per listed image id (k: its position in the list); and the
    unused columns. A tweet with no image id gives one row with image_id ""."""
    wanted = [MEDIAEVAL["id"], MEDIAEVAL["text"], MEDIAEVAL["images"], t.label_key]
    table, columns = read_files(paths, wanted, layout=_layout(), client=client, quarantine=quarantine,
                                what="data.tweets.files (MediaEval columns; data.tweets.label_key)",
                                categorical=[])
    d = table.to_pandas()
    d["image_id"] = d[MEDIAEVAL["images"]].fillna("").str.split(",")
    d = d.explode("image_id", ignore_index=True)
    d["image_id"] = d["image_id"].str.strip()
    d["k"] = d.groupby(["source", "line"]).cumcount()
    events = np.array([_event_of(p) for p in paths], dtype=object)
    rows = _frame({**d, "tweet_id": d[MEDIAEVAL["id"]], "image_ref": "", "event": events[d["source"]],
                   "raw_text": d[MEDIAEVAL["text"]], "label": d[t.label_key].fillna("").str.strip()})
    return rows, _unused(columns, wanted)


def _layout() -> Layout:
    # the dumps are not quoted: a tweet may open with '"' (79 real CrisisMMD ones do), which CSV
    # quoting would strip, or swallow the lines after it when the tweet never closes it
    return Layout(format="tsv", null_values=[], quoting=False, origin={"format": "data.tweets.format"})


def _unused(columns: dict[str, list[str]], wanted: list[str]) -> list[dict]:
    return [unused(path, "columns", left) for path, cols in columns.items()
            if (left := [c for c in cols if c not in wanted])]


def _reject(d: pd.DataFrame, mask: np.ndarray, paths: list[str], quarantine: Quarantine, why: Any) -> None:
    """Quarantine the rows of `d` under `mask`, each with why(row) as its reason."""
    for r in d[mask].itertuples(index=False):
        quarantine.add(paths[r.source], why(r), line=int(r.line), raw=r._asdict().get("tweet_text"))


def _get(record: Any, key: str) -> Any:
    for part in key.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record


def _list(value: Any) -> list:
    """`value` if it is a JSON array, else []: a dump's media field of another type (a number, a
    string, an object) names no medium."""
    return value if isinstance(value, list) else []


def _media_v1(tweet: dict) -> list[tuple[str, str]]:
    """(media id, file name from its URL) of a v1.1 tweet's media (extended_entities has them all)."""
    media = (_list(_get(tweet, "extended_entities.media"))
             or _list(_get(tweet, "extended_tweet.extended_entities.media"))
             or _list(_get(tweet, "entities.media")))
    return [(str(m.get("id_str") or m.get("id") or ""),
             PurePosixPath(str(m.get("media_url_https") or m.get("media_url") or "")).name)
            for m in media if isinstance(m, dict)]


def _media_v2(record: dict) -> list[tuple[str, str]]:
    """(media key, file name from its URL) of a v2 tweet's attachments, looked up in includes.media."""
    urls = {str(m.get("media_key")): m.get("url") or m.get("preview_image_url") or ""
            for m in _list(_get(record, "includes.media")) if isinstance(m, dict)}
    return [(str(key), PurePosixPath(str(urls.get(str(key), ""))).name)
            for key in _list(_get(record, "data.attachments.media_keys"))]


def parse_tweet(record: dict, label_key: str) -> tuple[str, str, str | None, list[tuple[str, str]]]:
    """(tweet id, text, label or None, [(media id, file name)]) of a v1.1 or v2 tweet object."""
    if isinstance(record.get("data"), dict):  # v2
        data = record["data"]
        label = _get(record, label_key)
        label = _get(data, label_key) if label is None else label
        return str(data.get("id") or ""), str(data.get("text") or ""), label, _media_v2(record)
    text = (_get(record, "extended_tweet.full_text") or record.get("full_text") or record.get("text") or "")
    return (str(record.get("id_str") or record.get("id") or ""), str(text), _get(record, label_key),
            _media_v1(record))


V1_KEYS = {"id", "id_str", "text", "full_text", "extended_tweet", "entities", "extended_entities"}
V2_KEYS = {"data", "includes"}


def parse_jsonl_tweets(block: bytes, label_key: str) -> dict[str, Any]:
    """One block of a JSON-lines file (one Dask task) → {"rows": [(line, tweet id, k, media id,
    file name, text, label)], "bad": [(line, reason, raw)], "lines": n, "keys": top-level keys}.
    Lines are block-local and 1-based; a tweet without media gives one row with media id ""."""
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows, bad, keys = [], [], {}
    for n, raw in enumerate(lines, 1):
        record, why = json_object(raw)
        if record is None:
            bad.append((n, f"malformed JSON line: {why}; fix or remove the line", raw.decode("latin-1")))
            continue
        keys.update(dict.fromkeys(record))
        tweet_id, text, label, media = parse_tweet(record, label_key)
        if label is None or str(label).strip() == "":
            bad.append((n, f"no label: key {label_key!r} is missing or empty; set data.tweets.label_key "
                           "to the key that holds the class", raw.decode("latin-1")))
            continue
        rows += [(n, tweet_id, k, mid, name, text, str(label).strip())
                 for k, (mid, name) in enumerate(media or [("", "")])]
    return {"rows": rows, "bad": bad, "lines": len(lines), "keys": list(keys)}


def read_jsonl(paths: list[str], t: TweetsConfig, client: Any,
               quarantine: Quarantine) -> tuple[pd.DataFrame, list[dict]]:
    """JSON-lines tweet dumps → rows, one per medium; and the unused top-level keys. Malformed
    lines and tweets without a label are quarantined."""
    from dask.bytes import read_bytes
    from dask.delayed import delayed

    jobs = []
    for index, path in enumerate(paths):
        _, [blocks] = read_bytes(path, delimiter=b"\n", blocksize=8 * 2**20, sample=False,
                                 compression="gzip" if path.endswith(".gz") else None)
        jobs += [(index, delayed(parse_jsonl_tweets)(b, t.label_key)) for b in blocks]
    futures = client.compute([j for _, j in jobs])
    parts, first = [], [0] * len(paths)
    keys: dict[str, dict] = {p: {} for p in paths}
    for (index, _), fut in track(zip(jobs, futures, strict=True), "parsing tweets", total=len(jobs)):
        part = fut.result()
        for line, reason, raw in part["bad"]:
            quarantine.add(paths[index], reason, line=first[index] + line, raw=raw)
        frame = pd.DataFrame(part["rows"], columns=["line", "tweet_id", "k", "image_id", "image_ref",
                                                    "raw_text", "label"])
        parts.append(frame.assign(source=index, line=frame["line"] + first[index]))
        keys[paths[index]].update(dict.fromkeys(part["keys"]))
        first[index] += part["lines"]
    d = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ROWS)
    events = np.array([_event_of(p) for p in paths], dtype=object)
    rows = _frame({**d, "event": events[d["source"].to_numpy(int)]})
    read = V1_KEYS | V2_KEYS | {t.label_key.split(".")[0]}
    return rows, [unused(p, "keys", left) for p, k in keys.items()
                  if (left := [x for x in k if x not in read])]


READERS = {"crisismmd": read_crisismmd, "mediaeval": read_mediaeval, "jsonl": read_jsonl}


# ---------------------------------------------------------------- text


def clean_rows(rows: pd.DataFrame, cfg: DataConfig, client: Any) -> tuple[pd.Series, list, np.ndarray]:
    """(cleaned text, first max_tokens words, word count) per row; each distinct text is cleaned
    once, on Dask (CrisisMMD repeats a tweet per image, MediaEval repeats retweets)."""
    code, uniques = pd.factorize(rows["raw_text"].fillna(""))
    uniques = list(uniques)
    batches = [uniques[i:i + TEXT_BATCH] for i in range(0, len(uniques), TEXT_BATCH)]
    futures = [client.submit(clean_batch, b, cfg.tweets.max_tokens, cfg.lowercase, pure=False)
               for b in batches]
    text, tokens, lengths = [], [], []
    for fut in track(futures, "cleaning + tokenising", total=len(futures)):
        part = fut.result()
        text += part["text"]
        tokens += part["tokens"]
        lengths.append(part["words"])
    counts = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return (pd.Series(np.array(text, dtype=object)[code], index=rows.index),
            [tokens[c] for c in code], counts[code])


def drop_rows(rows: pd.DataFrame, bad: np.ndarray, reason: str, paths: list[str],
              quarantine: Quarantine) -> pd.DataFrame:
    """`rows` without those under `bad`, each quarantined with `reason` (file, line, raw text)."""
    for r in rows[bad].itertuples(index=False):
        quarantine.add(paths[r.source], reason, line=int(r.line), raw=r.raw_text)
    return rows[~bad]


def duplicates(rows: pd.DataFrame) -> np.ndarray:
    """Rows whose id (tweet id + image index) an earlier row already has."""
    return rows.duplicated(["tweet_id", "k"]).to_numpy()


# ---------------------------------------------------------------- images


def scan_images(t: TweetsConfig) -> tuple[list[Candidate], list[str]]:
    """The image files under image_root (symlinks out of it, broken links and non-regular files
    carry their reason; see images.scan_folder); and the files skipped for their suffix."""
    if not t.image_root:
        return [], []
    return scan_folder(t.image_root, None, t.extensions, what="data.tweets.image_root")


def refused_paths(refs: pd.Series) -> pd.Series:
    """Per CrisisMMD image path: why it is refused before any lookup ("" if it is not)."""
    refs = refs.fillna("")
    absolute = refs.str.match(r"^(?:/|\\|[A-Za-z]:[\\/])")
    escapes = refs.str.contains(r"(?:^|[\\/])\.\.(?:[\\/]|$)")
    out = pd.Series("", index=refs.index, dtype=object)
    out[escapes] = "outside root: the path goes up with '..' and may leave data.tweets.image_root; not read"
    out[absolute] = ("outside root: an absolute path; image paths are relative to data.tweets.image_root, "
                     "not read")
    return out


def _first(keys: list[str], wanted: pd.Series) -> np.ndarray:
    """Per wanted value: the index of the first of `keys` equal to it, or -1."""
    if not keys:
        return np.full(len(wanted), -1)
    codes, unique = pd.factorize(np.asarray(keys, dtype=object))
    first = np.empty(len(unique), np.int64)
    first[codes[::-1]] = np.arange(len(keys))[::-1]  # written last: the first occurrence
    hit = pd.Index(unique).get_indexer(wanted.fillna(""))
    return np.where(hit >= 0, first[np.maximum(hit, 0)], -1)


def locate(rows: pd.DataFrame, found: list[Candidate], fmt: str) -> np.ndarray:
    """Per row: the index of its image in `found`, or -1. CrisisMMD rows name a path relative to
    image_root; the others a file name (image_ref, from the medium's URL), tried as it is and
    without its suffix, then an id (image_id) as a file name without suffix."""
    if fmt == "crisismmd":
        return _first([c.rel for c in found], rows["image_ref"].fillna("").str.removeprefix("./"))
    files = [PurePosixPath(c.rel) for c in found]
    names, stems = [f.name for f in files], [f.stem for f in files]
    at = _first(names, rows["image_ref"])
    for keys, wanted in ((stems, rows["image_ref"].fillna("").map(lambda n: PurePosixPath(n).stem)),
                         (stems, rows["image_id"])):
        at = np.where(at >= 0, at, _first(keys, wanted))
    return at


def resolve(rows: pd.DataFrame, found: list[Candidate], t: TweetsConfig, paths: list[str],
            quarantine: Quarantine) -> tuple[np.ndarray, pd.Series]:
    """Per row: the index in `found` of its image (-1: none), and why it has none so far. A path
    that escapes image_root is quarantined with its row; a file the scan refused (a symlink out of
    the root, a broken link, a FIFO) once, by its path."""
    has_ref = (rows["image_id"].fillna("") != "") | (rows["image_ref"].fillna("") != "")
    why = pd.Series(np.where(has_ref, NOT_FOUND if t.image_root else NO_ROOT, NO_IMAGE), index=rows.index,
                    dtype=object)
    if not t.image_root or not has_ref.any():
        return np.full(len(rows), -1), why
    refused = refused_paths(rows["image_ref"]) if t.format == "crisismmd" else pd.Series("", index=rows.index)
    out = (refused != "").to_numpy()
    why[out] = refused[out]
    for r, reason in zip(rows[out].itertuples(index=False), refused[out], strict=True):
        quarantine.add(paths[r.source], reason, line=int(r.line), raw=r.image_ref)
    at = np.where(out, -1, locate(rows, found, t.format))
    for i in np.unique(at[at >= 0]):
        if found[i].reason is not None:
            quarantine.add(found[i].shown, found[i].reason)
    return at, why


def attach_images(rows: pd.DataFrame, found: list[Candidate], t: TweetsConfig, client: Any,
                  paths: list[str], quarantine: Quarantine) -> tuple[np.ndarray, np.ndarray, pd.Series, dict]:
    """Resolve (`resolve`) and decode on Dask every row's image, each file once. Returns (per row:
    its row in the pixel matrix or -1, the pixel matrix (n images, 3*S*S) uint8, per row why it has
    no image ("" if it has one), the image stats); a file that fails to decode is quarantined."""
    at, why = resolve(rows, found, t, paths, quarantine)
    used = np.unique(at[at >= 0])
    before = len(quarantine)
    todo = [found[i] for i in used if found[i].reason is None]
    good, pixels, resized = decode_on(client, todo, t.image_size, 3, t.max_pixels, quarantine)
    failed = {r["source"]: r["reason"] for r in quarantine.records[before:]}
    index_of = {found[i].shown: int(i) for i in used}
    pixel_row = np.full(len(found) + 1, -1)  # at = -1 reads the last: no image
    pixel_row[[index_of[c.shown] for c in good]] = np.arange(len(good))
    where = pixel_row[at]
    bad = (at >= 0) & (where < 0)
    why[bad] = [found[i].reason or failed.get(found[i].shown, "unusable image") for i in at[bad]]
    why[where >= 0] = ""
    return where, pixels, why, {"referenced": len(used), "decoded": len(good), "resized": resized}


def _folder_of(prefix: str, by_stem: dict[str, str], folders: list[str]) -> str:
    """The event folder of an image id prefix: that of the images whose ids start alike, else the
    folder whose name starts with it (syrianboy → Syrian_boy), else ""."""
    def norm(name: str) -> str:
        return "".join(ch for ch in name.lower() if ch.isalnum())

    alike = (f for f in folders if prefix and norm(f).startswith(norm(prefix)))
    return by_stem.get(prefix) or next(alike, "")


def image_events(rows: pd.DataFrame, at: np.ndarray, found: list[Candidate], root: str | None) -> pd.Series:
    """MediaEval: each row's event is its image's top folder under image_root; a row whose image is
    absent takes the folder of the images whose id starts alike (sandy_real_10 → Hurricane Sandy)
    or whose name starts with the id's prefix (syrianboy_1 → Syrian_boy), else keeps its file's."""
    if not found:
        return rows["event"]
    folders = np.array([c.rel.split("/")[0] if "/" in c.rel else "" for c in found], dtype=object)
    by_stem = pd.Series(folders).groupby([PurePosixPath(c.rel).stem.split("_")[0] for c in found]).first()
    prefixes = rows["image_id"].fillna("").str.split("_").str[0]
    # every top folder, also those that hold no image (MediaEval's video-only events)
    named = sorted(d.name for d in os.scandir(root) if d.is_dir(follow_symlinks=False))
    mapping = {p: _folder_of(p, by_stem.to_dict(), named) for p in prefixes.unique()}  # a few dozen
    by_prefix = prefixes.map(mapping)
    event = np.where(at >= 0, folders[np.maximum(at, 0)], by_prefix.fillna("").to_numpy())
    return pd.Series(np.where(event == "", rows["event"], event), index=rows.index, dtype=object)


# ---------------------------------------------------------------- splits


def group_codes(rows: pd.DataFrame, by: str) -> np.ndarray:
    """Per row its group for a grouped split: "tweet" a tweet, "event" an event, "image" a connected
    component of the tweet–image graph (tweets sharing an image, images sharing a tweet)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tweet, _ = pd.factorize(rows["tweet_id"])
    if by == "tweet":
        return tweet
    if by == "event":
        return pd.factorize(rows["event"])[0]
    image, images = pd.factorize(rows["image_id"].replace("", np.nan))
    n = tweet.max(initial=-1) + 1 + len(images)
    edge = image >= 0
    graph = coo_matrix((np.ones(edge.sum()), (tweet[edge], tweet.max(initial=-1) + 1 + image[edge])),
                       shape=(n, n))
    return connected_components(graph, directed=False)[1][tweet]


def grouped_split(labels: np.ndarray, groups: np.ndarray, test_fraction: float, val_fraction: float,
                  seed: int) -> np.ndarray:
    """Split per row (index into SPLITS) with each group whole in one split, roughly stratified.

    Targets as stratified_codes: per class `test_fraction` of the rows in test, `val_fraction` of
    the rest in val. Groups go largest first (ties in seeded random order) to the split whose
    per-class shortfall, weighted by the group's class counts, is largest.
    """
    n_classes = labels.max(initial=0) + 1
    counts = np.zeros((groups.max(initial=-1) + 1, n_classes))
    np.add.at(counts, (groups, labels), 1)
    total = counts.sum(0)
    target = np.stack([total * (1 - test_fraction) * (1 - val_fraction),
                       total * (1 - test_fraction) * val_fraction, total * test_fraction])
    shuffled = np.random.default_rng(seed).permutation(len(counts))
    order = shuffled[np.argsort(-counts.sum(1)[shuffled], kind="stable")]
    have = np.zeros_like(target)
    split_of = np.zeros(len(counts), np.int8)
    for g in order:
        shortfall = (target - have) / np.maximum(target, 1)
        s = int(np.argmax(shortfall @ counts[g] + 1e-9 * (target - have).sum(1)))
        split_of[g] = s
        have[s] += counts[g]
    return split_of[groups]


def split_rows(rows: pd.DataFrame, labels: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, dict]:
    """Split per row (index into SPLITS) by data.tweets.split; and what it reached."""
    by = cfg.tweets.split
    if by == "random":
        split, n_groups = stratified_codes(labels, cfg.test_fraction, cfg.val_fraction, cfg.seed), len(rows)
    else:
        groups = group_codes(rows, by)
        split = grouped_split(labels, groups, cfg.test_fraction, cfg.val_fraction, cfg.seed)
        n_groups = int(groups.max(initial=-1) + 1)
    rows_per = np.bincount(split, minlength=3)
    target = [(1 - cfg.test_fraction) * (1 - cfg.val_fraction), (1 - cfg.test_fraction) * cfg.val_fraction,
              cfg.test_fraction]
    return split, {"by": by, "groups": n_groups,
                   "fractions": {s: round(float(n / max(len(rows), 1)), 4) for s, n in zip(SPLITS, rows_per,
                                                                                         strict=True)},
                   "target": {s: round(f, 4) for s, f in zip(SPLITS, target, strict=True)}}


# ---------------------------------------------------------------- vocabulary and word vectors


def encode(tokens: list[list[str]], vocab: dict[str, int]) -> pa.ListArray:
    """Token lists → a list<int32> column of vocabulary ids (OOV → 1), vectorised over all tokens."""
    lengths = np.fromiter((len(x) for x in tokens), np.int64, len(tokens))
    flat = np.array([w for x in tokens for w in x], dtype=object)
    ids = pd.Index(list(vocab)).get_indexer(flat) if len(flat) else np.zeros(0, np.int64)
    ids = np.where(ids < 0, vocab[OOV], ids).astype(np.int32)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int32()))


def word_vectors(train_tokens: list[list[str]], vocab: list[str], cfg: DataConfig) -> tuple[np.ndarray, dict]:
    """The (vocab, embedding_dim) float32 matrix (§IV-B: GloVe vectors, here a GloVe / word2vec file
    when data.tweets.word_vectors names one, else Word2Vec on the train split); and its record."""
    t = cfg.tweets
    if not t.word_vectors:
        return (word2vec(train_tokens, vocab, t.embedding_dim, t.embedding_window, t.embedding_epochs,
                         cfg.seed), {"source": "word2vec (train split)"})
    import torch

    from advorch.trainers.models.pretrained import load_word_vectors

    init = torch.from_numpy(np.random.default_rng(cfg.seed).normal(0, 0.1, (len(vocab), t.embedding_dim))
                            .astype(np.float32))
    try:
        weights, found = load_word_vectors(t.word_vectors, vocab, t.embedding_dim, init=init)
    except ValueError as e:
        raise PipelineError(f"{e} (here: data.tweets.embedding_dim)") from None
    return weights.numpy().astype(np.float32), {"source": t.word_vectors, "found": found}


# ---------------------------------------------------------------- writing


def base_table(rows: pd.DataFrame, labels: np.ndarray, tokens: pa.ListArray,
               has_image: np.ndarray) -> pa.Table:
    """Every row's columns but the pixels."""
    ids = rows["tweet_id"].astype(str) + "_" + rows["k"].astype(str)
    return pa.table({
        "id": pa.array(ids.to_numpy(object), pa.string()), "label": pa.array(labels.astype(np.int32)),
        "tokens": tokens, "has_image": pa.array(has_image),
        **{c: pa.array(rows[c].fillna("").astype(str).to_numpy(object), pa.string())
           for c in ("event", "tweet_id", "image_id", "text", "raw_text")}}, schema=pa.schema(FIELDS))


def write_parts(writer: DatasetWriter, table: pa.Table, split: np.ndarray, labels: np.ndarray,
                pixel_row: np.ndarray | None, pixels: np.ndarray, classes: list[str],
                cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """Shuffle within each split, write parts of cfg.part_rows rows (pixels gathered per part, zeros
    for rows without an image) on the driver's threads; return commit's `splits`."""
    order = np.random.default_rng(cfg.seed + 1).permutation(len(split))
    jobs, splits = [], {}
    for k, name in enumerate(SPLITS):
        members = order[split[order] == k]
        per_class = np.bincount(labels[members], minlength=len(classes))
        splits[name] = {"parts": [], "classes": {c: int(per_class[i]) for i, c in enumerate(classes)}}
        jobs += [(name, index, members[s:s + cfg.part_rows])
                 for index, s in enumerate(range(0, len(members), cfg.part_rows))]

    def one(job: tuple[str, int, np.ndarray]) -> int:
        name, index, idx = job
        part = table.take(pa.array(idx))
        if pixel_row is not None:
            values = np.zeros((len(idx), pixels.shape[1]), np.uint8)
            here = pixel_row[idx] >= 0
            values[here] = pixels[pixel_row[idx][here]]
            part = part.append_column(pa.field(*PIXELS), pixel_lists(values))
        return write_part(writer.part_uri(name, index), part)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for (name, index, _), n in track(zip(jobs, pool.map(one, jobs), strict=True), "writing parts",
                                         total=len(jobs)):
            splits[name]["parts"].append({"index": index, "rows": n})
    return splits


def _inputs(size: int, with_images: bool) -> dict[str, dict[str, Any]]:
    if not with_images:
        return dict(TOKENS)
    return {**TOKENS, "pixels": {"column": "pixels", "shape": [3, size, size], "dtype": "uint8",
                                 "range": [0.0, 1.0]},
            "has_image": {"column": "has_image", "shape": [], "dtype": "bool"}}


# ---------------------------------------------------------------- the run


def _params(cfg: DataConfig) -> dict[str, Any]:
    # the producing version too: a release that cleans, tokenises or decodes differently must rebuild
    return {"advorch": __version__, **cfg.tweets.model_dump(exclude={"files"}), "min_count": cfg.min_count,
            "max_vocab": cfg.max_vocab, "lowercase": cfg.lowercase, "test_fraction": cfg.test_fraction,
            "val_fraction": cfg.val_fraction, "seed": cfg.seed, "part_rows": cfg.part_rows}


def _sources(paths: list[str], found: list[Candidate], t: TweetsConfig,
             previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    extra = [t.word_vectors] if t.word_vectors else []
    return fingerprints(paths + extra, previous) + (_fingerprints(found, previous) if found else [])


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build (or confirm up to date) the tweets dataset at `output` (default cfg.output).

    Raises:
        PipelineError: no files, a file lacks a column the layout reads, image_root missing,
            no usable row, or an unhealthy split (pipelines/health.py).
        ShardError: the output folder cannot be written.
    """
    output, t = output or cfg.output, cfg.tweets
    if not t.files:
        raise PipelineError(f"data.tweets.files is empty: list the {t.format} files (paths or globs)")
    paths = expand(t.files, "data.tweets.files")
    found, skipped = scan_images(t)
    previous = read_manifest(output)
    sources, params = _sources(paths, found, t, previous), _params(cfg)
    if sources_unchanged(previous, sources, params):
        return Summary.of(output, previous, up_to_date=True)
    writer = DatasetWriter(output, kind="tweets", health=cfg.health)
    try:
        manifest = _build(cfg, paths, found, skipped, sources, params, writer, dask_address)
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)


def _build(cfg: DataConfig, paths: list[str], found: list[Candidate], skipped: list[str],
           sources: list[dict[str, Any]], params: dict[str, Any], writer: DatasetWriter,
           dask_address: str | None) -> dict[str, Any]:
    from advorch.pipelines.cluster import dask_client

    t, quarantine = cfg.tweets, Quarantine()
    with dask_client(dask_address) as client:
        rows, unused_records = READERS[t.format](paths, t, client, quarantine)
        rows = drop_rows(rows, (rows["tweet_id"].fillna("") == "").to_numpy(),
                         "no tweet id: the row names no tweet; fix the row", paths, quarantine)
        rows = drop_rows(rows, (rows["label"].fillna("") == "").to_numpy(),
                         f"no label: column {t.label_key!r} is empty; fix the row", paths, quarantine)
        rows = drop_rows(rows, duplicates(rows), "duplicate row: the same tweet id and image index as an "
                         "earlier row; remove one", paths, quarantine)
        rows["text"], tokens, n_words = clean_rows(rows, cfg, client)
        empty = n_words == 0
        rows = drop_rows(rows, empty, "no text: no word left after removing URLs and @mentions", paths,
                         quarantine).reset_index(drop=True)
        tokens = [x for x, e in zip(tokens, empty, strict=True) if not e]
        if rows.empty:
            raise PipelineError(f"no usable tweet in {', '.join(paths)}: {len(quarantine)} rows quarantined "
                                f"{quarantine.by_reason()}; check data.tweets.format and the files")
        pixel_row, pixels, why, image_stats = attach_images(rows, found, t, client, paths, quarantine)
    if t.format == "mediaeval":
        rows["event"] = image_events(rows, locate(rows, found, t.format), found, t.image_root)
    classes = sorted(rows["label"].unique())
    labels = pd.Index(classes).get_indexer(rows["label"]).astype(np.int64)
    split, split_stats = split_rows(rows, labels, cfg)
    train = np.flatnonzero(split == 0)
    vocab = build_vocab([tokens[i] for i in train], cfg.min_count, cfg.max_vocab)
    vectors, vector_stats = word_vectors([tokens[i] for i in train], list(vocab), cfg)
    writer.write_side_file("vocab.json", json.dumps(list(vocab)).encode())
    buf = io.BytesIO()
    np.save(buf, vectors)
    writer.write_side_file("embeddings.npy", buf.getvalue())

    has_image = pixel_row >= 0
    with_images = bool(has_image.any())
    table = base_table(rows, labels, encode(tokens, vocab), has_image)
    splits = write_parts(writer, table, split, labels, pixel_row if with_images else None, pixels,
                         classes, cfg)
    quarantine.records.sort(key=lambda r: (r["source"], r["line"] or 0))
    size = t.image_size
    stats = {"format": t.format, "rows": len(rows), "tweets": int(rows["tweet_id"].nunique()),
             "rows_with_image": int(has_image.sum()),
             "rows_without_image": {"count": int((~has_image).sum()),
                                    "by_reason": {k: int(v) for k, v in why[~has_image].str.split(":").str[0]
                                                  .value_counts().items()}},
             "text_only": not with_images, "images": image_stats,
             "tokens_cut": int((n_words[~empty] > t.max_tokens).sum()),
             "events": {k: int(v) for k, v in rows["event"].value_counts().sort_index().items()},
             "split": split_stats, "word_vectors": vector_stats}
    per_file = np.bincount(rows["source"].to_numpy(int), minlength=len(paths))
    for s in sources[:len(paths)]:
        s["rows"] = int(per_file[paths.index(s["path"])])
    counts = np.bincount(labels, minlength=len(classes))
    unused_records += [unused(t.image_root, "files", skipped)] if skipped else []
    shapes = {"tokens": [None], "label": [], **({"pixels": [3, size, size], "has_image": []}
                                                 if with_images else {})}
    return writer.commit(
        splits=splits, schema=pa.schema(FIELDS + ([PIXELS] if with_images else [])), sources=sources,
        quarantine=quarantine, params=params, classes=classes, shapes=shapes,
        inputs=_inputs(size, with_images), task="classification",
        extra={"vocab_size": len(vocab), "embedding_dim": t.embedding_dim,
               "class_counts": {c: int(counts[i]) for i, c in enumerate(classes)}, "tweets": stats,
               "unused": unused_records})
