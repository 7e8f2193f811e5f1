"""Property tests of the config loader (advorch/config.py): TOML files and `--set` overrides.

Inputs: GENERATED TOML documents (keys drawn from the config's own schema, some misspelt or made
up, values of every TOML type: strings, huge integers, NaN / inf, dates, arrays, inline tables),
GENERATED `--set` assignments (keys with dots, quotes, brackets and newlines; values of any text),
and MUTATED real configs (the files in configs/ with bytes flipped, cut or not UTF-8). Property:
`load_config` ends with an ExperimentConfig or a ConfigError, never another exception; the error
names the file (or `--set`) and a key that was given; a value that loads is the value given.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import tempfile
import tomllib
import typing
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from advorch.config import ConfigError, ExperimentConfig, load_config
from tests.property.support import FAST_SETTINGS, ROOT, toml_str

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the schema as section.key (a section's own name too)."""
    out = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        for arg in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _leaves(arg, key + ".")
    return out


KEYS = _leaves(ExperimentConfig)
BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(parts: list[str]) -> str:
    return ".".join(p if BARE.fullmatch(p) else toml_str(p) for p in parts)


def toml_value(v: object) -> str:
    """`v` as TOML (inline arrays and tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{toml_key([k])} = {toml_value(x)}" for k, x in v.items()) + "}"


scalars = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 60),
    st.floats(),
    st.booleans(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([_dt.UTC, None])).map(lambda d: d.replace(microsecond=0)),
    st.sampled_from(["utf-8", "cp1252", "rot_13", "lstm", "at", "fifo", "csv", "(", "(?P<year>"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["path", "label", "grid", "x", "session"]), inner, max_size=2)
    ),
    max_leaves=4,
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).map(lambda k: k + "x"),
    st.sampled_from(KEYS).map(lambda k: k.rsplit(".", 1)[0] + ".nope"),
    st.lists(st.text(alphabet="abcé. ", min_size=1, max_size=4), min_size=1, max_size=3).map(".".join),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """dotted key → value, no key a prefix of another (so the TOML is valid)."""
    doc: dict[str, object] = {}
    for _ in range(draw(st.integers(0, 6))):
        key, value = draw(keys), draw(values)
        parts = key.split(".")
        if all(parts) and not any(
            k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in doc
        ):
            doc[key] = value
    return doc


def _given_key(message: str, given_keys: list[str]) -> bool:
    """Does every key the error names belong to a key that was given (it, under it, or above it)?"""

    def near(n: str, g: str) -> bool:
        # a required key of a section the document opened (data.modis.samples.path) counts too
        parent = n.rpartition(".")[0]
        return (
            n == g
            or n.startswith(g + ".")
            or g.startswith(n + ".")
            or bool(parent)
            and g.startswith(parent + ".")
        )

    named = re.findall(r"key '([^']*)'", message)
    return bool(named) and all(any(near(n, g) for g in given_keys) for n in named)


def check_document(doc: dict[str, object]) -> None:
    text = "".join(f"{toml_key(k.split('.'))} = {toml_value(v)}\n" for k, v in doc.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.toml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except ConfigError as e:
            message = str(e)
            assert str(path) in message, message
            assert _given_key(message, list(doc)) or "not valid TOML" in message, (message, doc)
            return
    flat = cfg.flat()
    for key, value in doc.items():
        if (
            key in flat
            and isinstance(value, (str, int, float, bool))
            and not (isinstance(value, float) and math.isnan(value))
        ):
            assert flat[key] == value and type(flat[key]) in (type(value), float), (key, value, flat[key])


@FAST_SETTINGS
@given(doc=documents())
@example(doc={"data.encoding": "rot_13"})  # accepted, then LookupError in every decoding task
@example(doc={"data.seed": 2**70})
def test_a_toml_document_is_a_config_or_an_error_naming_its_key(doc: dict[str, object]) -> None:
    check_document(doc)


assignments = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.one_of(values.map(toml_value), st.text(max_size=8))).map("=".join),
    st.tuples(keys, values.map(toml_value)).map("=".join),
    st.text(alphabet="ab.=\"[]\n #'{}", max_size=14),
)


def _toml_path(key: str) -> str:
    """An override's key as the dotted path TOML reads from it (`a . "b.c"` → a.b.c), "" if none."""
    try:
        node = tomllib.loads(f"{key} = 0")
    except (tomllib.TOMLDecodeError, RecursionError):
        return ""
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        ((part, node),) = node.items()
        parts.append(part)
    return ".".join(parts)


def check_overrides(base: Path | None, overrides: list[str]) -> None:
    try:
        load_config(base, overrides)
    except ConfigError as e:
        message = str(e)
        assert (str(base) if base else "<defaults>") in message, message
        if "(--set)" not in message:  # a value the schema refused: named by its key
            given_keys = [_toml_path(a.partition("=")[0]) for a in overrides]
            assert re.search(r"key '[^']+'", message), message
            assert _given_key(message, [k for k in given_keys if k]), (message, overrides)


@FAST_SETTINGS
@given(base=st.sampled_from([None, *CONFIGS]), overrides=st.lists(assignments, max_size=3))
@example(base=None, overrides=["[a]\n[b]\nc=1"])  # a key holding table headers: bare ValueError
@example(base=None, overrides=["[a]\n#=1"])
@example(base=None, overrides=["data.seed=" + "[" * 600])  # RecursionError in tomllib
def test_overrides_give_a_config_or_an_error_naming_the_key(base: Path | None, overrides: list[str]) -> None:
    check_overrides(base, overrides)


@st.composite
def mutated_config(draw: st.DrawFn) -> bytes:
    """A real config from configs/ with bytes flipped, inserted or the file cut (MUTATED real data)."""
    data = bytearray(draw(st.sampled_from(CONFIGS)).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "cut", "nest"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"\xff", b"=", b"[", b"\n[x]\n", b'"', b"\n", b"\xc3"]))
        elif op == "cut":
            del data[at:]
        else:
            data += b"\nextra = " + b"[" * draw(st.integers(1, 1200)) + b"\n"
    return bytes(data)


def check_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as e:
            assert str(path) in str(e), e


@FAST_SETTINGS
@given(data=mutated_config())
@example(data=b'name = "caf\xe9"\n')  # cp1252 bytes: a bare UnicodeDecodeError
@example(data=b"x = " + b"[" * 1000 + b"]" * 1000 + b"\n")  # RecursionError
def test_a_mutated_real_config_is_a_config_or_an_error_naming_the_file(data: bytes) -> None:
    check_file(data)


FUZZ = {  # name → (strategies, the property, needs the cluster): benchmarks/fuzz_parsers.py
    "config.documents": (dict(doc=documents()), check_document, False),
    "config.overrides": (
        dict(base=st.sampled_from([None, *CONFIGS]), overrides=st.lists(assignments, max_size=3)),
        check_overrides,
        False,
    ),
    "config.mutated_files": (dict(data=mutated_config()), check_file, False),
}
