"""Tweet text → the words a model reads (Chen et al. §IV-B: "the first 15 words in each tweet").

Cleaning, in order (`clean`):

1. mojibake repaired with ftfy (CrisisMMD holds UTF-8 read as cp1252: `Weâ€™re` → `We're`; ftfy
   also turns curly quotes straight and unescapes `&amp;`). Only the texts that need it go
   through ftfy (non-ASCII, or holding `&`): it is pure Python, the rest is vectorised.
2. URLs (`http://…`, `https://…`, `www.…`) and @mentions (with a following colon) removed, a
   leading retweet marker `RT` removed, `#` dropped from hashtags (the word is kept),
   whitespace collapsed. This is the `text` column.

Tokens (`words`): text.tokenize (lowercased when data.lowercase), punctuation-only tokens left
out (they are not words), the first `max_tokens` kept.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from advorch.pipelines.text import tokenize

# RE2 patterns (pyarrow.compute), applied in this order
STRIP = (r"(?:https?://|www\.)\S+", r"@\w+:?", r"^\s*RT\b", "#")
WORD = re.compile(r"\w")


def clean(raw: pa.Array) -> pa.Array:
    """Raw tweet texts → cleaned texts (see the module docstring, steps 1-2)."""
    import ftfy

    raw = pc.fill_null(raw.cast(pa.string()), "")
    todo = pc.invert(pc.string_is_ascii(raw))
    todo = pc.or_(todo, pc.match_substring(raw, "&"))
    where = np.flatnonzero(todo.to_numpy(zero_copy_only=False))
    fixed = raw.to_numpy(zero_copy_only=False).astype(object)
    fixed[where] = [ftfy.fix_text(t) for t in fixed[where]]
    text = pa.array(fixed, pa.string())
    for pattern in STRIP:
        text = pc.replace_substring_regex(text, pattern, " ") if pattern != "#" else \
            pc.replace_substring(text, "#", "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))


def words(texts: list[str], max_tokens: int, lowercase: bool = True) -> tuple[list[list[str]], np.ndarray]:
    """Per text: its first `max_tokens` word tokens; and how many word tokens it had in all."""
    out, lengths = [], np.zeros(len(texts), np.int64)
    for i, text in enumerate(texts):
        tokens = [t for t in tokenize(text, lowercase) if WORD.search(t)]
        lengths[i] = len(tokens)
        out.append(tokens[:max_tokens])
    return out, lengths


def clean_batch(raw: list[str], max_tokens: int, lowercase: bool) -> dict[str, Any]:
    """One Dask task: {"text": cleaned texts, "tokens": their first words, "words": word counts}."""
    text = clean(pa.array(raw, pa.string())).to_pylist()
    tokens, lengths = words(text, max_tokens, lowercase)
    return {"text": text, "tokens": tokens, "words": lengths}
