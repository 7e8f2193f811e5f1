"""The MR corpus for benchmarks: a config (like tests/conftest.mr_config) and its shards.

The raw files stay in ../shared/data/mr (or $ADVORCH_SHARED_DATA/mr); shards are
written to a folder the caller owns (a temporary one by default), never the repo.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from advorch.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
MR = Path(os.environ.get("ADVORCH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mr"


def config(output: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The MR experiment config (cp1252, both class files) with `section.key=value` overrides."""
    if not (MR / "rt-polarity.neg").is_file():
        raise SystemExit(f"MR data not found at {MR}: put ../shared/data/mr beside the repository "
                         "or set ADVORCH_SHARED_DATA")
    sources = [{"path": str(MR / f"rt-polarity.{c}"), "label": c} for c in ("neg", "pos")]
    base = ['name="mr-bench"', 'data.encoding="cp1252"',
            f"data.output={json.dumps(str(output))}",
            "data.sources=[" + ", ".join(f"{{path = {json.dumps(s['path'])}, label = "
                                          f"{json.dumps(s['label'])}}}" for s in sources) + "]"]
    return load_config(None, base + list(overrides or []))


def prepare(output: str | Path, overrides: list[str] | None = None,
            keep_env: bool = False) -> tuple[ExperimentConfig, float, dict[str, str | None]]:
    """Preprocess MR into `output` (a no-op when it is already up to date).

    Returns (config, seconds, leaked): `leaked` are the environment variables the run
    changed in THIS process, {name: new value}. Dask's Nanny writes its
    `distributed.nanny.pre-spawn-environ` (MALLOC_TRIM_THRESHOLD_=65536, OMP_NUM_THREADS=1,
    ...) into the parent's os.environ and leaves it there, so every process started
    afterwards (Ray's raylet and workers) inherits it. They are restored unless `keep_env`.
    """
    from advorch.pipelines import text

    cfg = config(output, overrides)
    before = dict(os.environ)
    t0 = time.perf_counter()
    summary = text.run(cfg.data)
    seconds = time.perf_counter() - t0
    leaked = {k: os.environ.get(k) for k in set(before) | set(os.environ)
              if before.get(k) != os.environ.get(k)}
    if not keep_env:
        os.environ.clear()
        os.environ.update(before)
    print(f"MR shards at {output}: {summary.splits} "
          f"({'up to date' if summary.up_to_date else f'built in {seconds:.1f} s'})", flush=True)
    if leaked:
        print(f"note: the pipeline's Dask cluster changed this process's environment: "
              f"{dict(sorted(leaked.items()))} ({'kept' if keep_env else 'restored'})", flush=True)
    return cfg, seconds, leaked


def regime_overrides(spec: str, known: list[str]) -> list[str] | None:
    """Config overrides for a regime spec "NAME" or "NAME+FILTER" (e.g. "attention_at+sf");
    None, after a message, when NAME is not a regime (yet)."""
    name, _, filt = spec.partition("+")
    if name not in known:
        print(f"skipping {spec!r}: {name!r} is not a regime (yet); known: {', '.join(known)}; "
              "a filter is written NAME+FILTER, e.g. attention_at+sf")
        return None
    return [f'regime.name="{name}"', *([f'regime.filter="{filt}"'] if filt else [])]
