"""Property tests of the interactions pipeline (pipelines/interactions.py): user–item pairs and
RecBole .inter files.

Inputs: GENERATED pairs (random tokens, negative and zero-padded ids, repeats, empty fields, random
timestamps) and MUTATED real data (lines of the real Pinterest pos.txt and Amazon Scientific .inter
files in ../shared/data/recsys, their RecBole header broken: a column renamed, its type dropped,
fields missing). Properties:

- the cleaning steps in this process (`clean_pairs`, `drop_duplicates`, `drop_short_users`,
  `leave_one_out`) keep or quarantine every row, once; what they keep holds what they promise
  (finite timestamps, no repeated pair, no short user, one test and one val item per user);
- `sequence_pairs` (recbole_seq) quarantines a row or places its history and its item at their
  positions in the user's sequence;
- a whole run (in-process Dask cluster) publishes every data line as a pair or a quarantine record
  (pairs, recbole), or stops with a PipelineError naming a file or the key to fix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from advorch.config import load_config
from advorch.pipelines import interactions
from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import Quarantine
from tests.property.support import FAST_SETTINGS, RUN_SETTINGS, SHARED_DATA, threads_cluster, toml_str

RECSYS = SHARED_DATA / "recsys"
PATHS = ["pairs.tsv"]


def _real(path: Path, n: int) -> list[str]:
    if not path.is_file():
        return ["0\t1 2 3\t4"]
    return (
        path.read_text().splitlines()[1 : n + 1]
        if path.suffix == ".inter"
        else path.read_text().splitlines()[:n]
    )


PIN = _real(RECSYS / "pinterest" / "pos.txt", 200)  # "user item"
SEQ = _real(RECSYS / "amazon_scientific" / "Scientific.train.inter", 200)  # "user<TAB>history<TAB>item"

ids = st.one_of(
    st.text(alphabet="abc0123456789-", min_size=1, max_size=4),
    st.integers(-5, 50).map(str),
    st.sampled_from(["", " ", "007", "-0", "NaN", "None"]),
)
times = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12).map(str),
    st.floats().map(repr),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["", "soon", "2020-13-01", "9" * 40, "inf", "-inf", "nan", "1e308"]),
)


@st.composite
def pair_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, bool]:
    """(rows as read_interactions gives them: user, item, timestamp, source, line; timed or not)."""
    users = draw(st.lists(ids, min_size=1, max_size=4))
    n = draw(st.integers(0, 16))
    timed = draw(st.booleans())
    d = pd.DataFrame(
        {"user": [draw(st.sampled_from(users)) for _ in range(n)], "item": [draw(ids) for _ in range(n)]},
        dtype=object,
    )
    d = pd.concat([d, d.sample(frac=0.3, random_state=draw(st.integers(0, 9)))]) if n else d  # repeats
    d = d.reset_index(drop=True)
    d = d.mask(d == "", None).mask(d == " ", "")
    if timed:
        d["timestamp"] = pd.Series([draw(times) for _ in range(len(d))], dtype=object)
    return d.assign(source=0, line=np.arange(2, len(d) + 2)), timed


def check_cleaning(case: tuple[pd.DataFrame, bool], minimum: int, seed: int) -> None:
    d, timed = case
    q = Quarantine()
    clean = interactions.clean_pairs(d, timed, PATHS, q)
    assert len(clean) + len(q) == len(d)
    assert (clean["user"].fillna("") != "").all() and (clean["item"].fillna("") != "").all()
    stamps = clean["timestamp"].to_numpy(np.float64)
    assert np.isfinite(stamps).all() if timed else np.isnan(stamps).all()
    before = len(q)
    unique, dups = interactions.drop_duplicates(clean, PATHS, q)
    assert len(unique) + dups == len(clean) and len(q) - before == dups
    assert not unique.duplicated(["user", "item"]).any()
    before = len(q)
    kept, dropped = interactions.drop_short_users(unique, minimum, PATHS, q)
    assert len(kept) + len(q) - before == len(unique)
    assert (kept.groupby("user")["item"].size() >= minimum).all()
    assert dropped == unique["user"].nunique() - kept["user"].nunique()
    # every input line once: kept, or quarantined with its line
    lines = sorted(kept["line"].tolist() + [r["line"] for r in q.records])
    assert lines == sorted(d["line"].tolist())
    if kept.empty:
        return
    user, _ = pd.factorize(kept["user"].to_numpy(object))
    idx, split = interactions.leave_one_out(
        user, kept["timestamp"].to_numpy(np.float64), "timestamp" if timed else "random", seed
    )
    assert sorted(idx) == list(range(len(kept)))
    per_user = pd.DataFrame({"user": user, "split": split}).groupby("user")["split"]
    assert (per_user.apply(lambda s: (s == 2).sum()) == 1).all()  # one test item per user
    assert (per_user.apply(lambda s: (s == 1).sum() == min(1, len(s) - 1))).all()


def _frame(**columns: list) -> pd.DataFrame:
    """A frame as read_interactions gives it (source 0, lines from 2), for the regression examples."""
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, dtype=object).assign(source=0, line=np.arange(2, n + 2))


@FAST_SETTINGS
@given(case=pair_frames(), minimum=st.integers(1, 4), seed=st.integers(0, 3))
@example(case=(_frame(user=["0"], item=["0"], timestamp=["2263-01-01T00:00:00"]), True), minimum=1, seed=0)
# a date past 2262: pandas' OutOfBoundsDatetime stopped the run
def test_cleaning_keeps_or_quarantines_every_row_once(
    case: tuple[pd.DataFrame, bool], minimum: int, seed: int
) -> None:
    check_cleaning(case, minimum, seed)


@st.composite
def seq_rows(draw: st.DrawFn) -> pd.DataFrame:
    """recbole_seq rows (user, history, item): MUTATED real rows of Scientific.train.inter and
    GENERATED ones (short histories of a few items, repeats, empty fields)."""
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        if draw(st.booleans()):
            user, history, item = (draw(st.sampled_from(SEQ)).split("\t") + ["", ""])[:3]
            if draw(st.booleans()):
                history = " ".join(draw(st.permutations(history.split())))  # a reordered history
        else:
            user = draw(st.sampled_from(["u1", "u2", "7", ""]))
            history = " ".join(draw(st.lists(st.sampled_from("abcd"), max_size=4)))
            item = draw(st.sampled_from(["a", "b", "c", "d", ""]))
        rows.append((user or None, history, item or None))
    rows += draw(st.lists(st.sampled_from(rows), max_size=2)) if rows else []
    d = pd.DataFrame(rows, columns=["user", "history", "item"], dtype=object)
    return d.assign(source=0, line=np.arange(2, len(d) + 2))


def check_sequences(d: pd.DataFrame) -> None:
    q = Quarantine()
    out = interactions.sequence_pairs(d, PATHS, q)
    bad = {r["line"] for r in q.records}
    assert len(bad) == len(q)  # a row is quarantined once
    assert not out.duplicated(["user", "timestamp"]).any()  # one item per position
    at = {(u, t): i for u, t, i in zip(out["user"], out["timestamp"], out["item"], strict=True)}
    longest = d["history"].fillna("").str.split().str.len().max() if len(d) else 0
    for r in d.itertuples(index=False):
        if r.line in bad:
            continue
        history = (r.history or "").split()
        assert r.user in set(out["user"]), r
        if len(history) < longest:  # not a cut window: its items sit at positions 0..n
            assert [at.get((r.user, float(k))) for k in range(len(history) + 1)] == history + [r.item], r


@FAST_SETTINGS
@given(d=seq_rows())
@example(
    d=pd.DataFrame(
        {
            "user": ["u1", "u1"],
            "history": ["a b", "b a"],
            "item": ["c", "c"],
            "source": [0, 0],
            "line": [2, 3],
        }
    )
)  # rows that disagree: quarantined both
@example(d=_frame(user=["u1", "0"], history=["", "0 1"], item=["a", "2"]))  # an empty history: an item ""
@example(d=_frame(user=[None], history=["a"], item=["b"]))  # no row left: a bare KeyError
@example(d=_frame(user=["u1"], history=[""], item=["a"]))  # no history at all: the same KeyError
def test_sequence_rows_are_placed_or_quarantined(d: pd.DataFrame) -> None:
    check_sequences(d)


# ---------------------------------------------------------------- whole runs


@st.composite
def interaction_files(draw: st.DrawFn) -> dict:
    """A pairs file (MUTATED real Pinterest lines and GENERATED ones) or a RecBole atomic file with
    a header that may be broken."""
    fmt = draw(st.sampled_from(["pairs", "recbole"]))
    sep = draw(st.sampled_from([" ", "\t", ","])) if fmt == "pairs" else "\t"
    timed = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.booleans()):
            user, item = (draw(st.sampled_from(PIN)).split() + [""])[:2]
        else:
            user, item = draw(ids), draw(ids)
        fields = [user, item] + ([draw(times) or ""] if timed else [])
        if draw(st.integers(0, 9)) == 0:
            fields = fields[: draw(st.integers(0, len(fields)))] if draw(st.booleans()) else fields + ["x"]
        lines.append(sep.join(fields))
    lines += draw(st.lists(st.sampled_from(lines), max_size=3))
    header = None
    if fmt == "recbole":
        header = ["user_id:token", "item_id:token"] + (["timestamp:float"] if timed else [])
        broken = draw(st.sampled_from(["none", "none", "untyped", "renamed", "short", "extra"]))
        if broken == "untyped":
            header = [h.split(":")[0] for h in header]
        elif broken == "renamed":
            header[draw(st.integers(0, len(header) - 1))] = "uid:token"
        elif broken == "short":
            header = header[:-1]
        elif broken == "extra":
            header = header + ["rating:float"]
    return {"format": fmt, "sep": sep, "lines": lines, "header": header, "minimum": draw(st.integers(1, 3))}


def check_run(case: dict, dask_address: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.inter" if case["format"] == "recbole" else "pairs.txt")
        head = [case["sep"].join(case["header"])] if case["header"] else []
        path.write_text("\n".join(head + case["lines"]) + "\n")
        cfg = load_config(
            None,
            [
                'data.kind="interactions"',
                f'data.output="{tmp}/out"',
                f"data.interactions.files=[{toml_str(str(path))}]",
                f'data.interactions.format="{case["format"]}"',
                f"data.interactions.separator={toml_str(case['sep'])}",
                f"data.interactions.min_interactions={case['minimum']}",
                'data.health.on_problem="warn"',
            ],
        )
        try:
            summary = interactions.run(cfg.data, dask_address=dask_address)
        except PipelineError as e:
            assert str(path) in str(e) or "data.interactions" in str(e), e
            return
        m = summary.manifest
        [src] = [s for s in m["sources"] if s["path"] == str(path)]
        assert src["rows"] + m["quarantine"]["count"] == len(case["lines"]), m["quarantine"]
        assert summary.rows == src["rows"] == m["interactions"]["pairs"]
        assert sum(sp["rows"] for sp in m["splits"].values()) == summary.rows
        assert m["splits"]["test"]["rows"] == m["interactions"]["users"]


@pytest.fixture(scope="module")
def cluster():
    with threads_cluster() as address:
        yield address


@RUN_SETTINGS
@given(case=interaction_files())
def test_a_run_publishes_every_line_or_names_the_file(case: dict, cluster: str) -> None:
    check_run(case, cluster)


FUZZ = {  # name → (strategies, the property, needs the cluster): benchmarks/fuzz_parsers.py
    "interactions.cleaning": (
        dict(case=pair_frames(), minimum=st.integers(1, 4), seed=st.integers(0, 3)),
        check_cleaning,
        False,
    ),
    "interactions.sequence_pairs": (dict(d=seq_rows()), check_sequences, False),
    "interactions.run": (dict(case=interaction_files()), check_run, True),
}
