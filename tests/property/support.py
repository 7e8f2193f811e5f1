"""What the property tests (and benchmarks/fuzz_parsers.py) share: an in-process Dask cluster for
the pipeline runs, the hypothesis settings, and a reader process for rasters.

The pipeline runs reach the cluster through `dask_address`, as the existing pipeline tests do; a
threads cluster in this process costs ≈ 0.1 s to start and ≈ 0.05 s a run (a LocalCluster of
processes per run would cost seconds), so a property can try dozens of inputs in seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ADVORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))

# the examples each property tries in the test suite (the fuzz benchmark raises them): the parsers
# called in this process are cheap, the pipeline runs and raster reads are not
FAST = 100
RUNS = 20
# database=None: no .hypothesis/ folder in the repository; failures print their @example
FAST_SETTINGS = settings(
    max_examples=FAST, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
RUN_SETTINGS = settings(
    max_examples=RUNS,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)


@contextmanager
def threads_cluster() -> Iterator[str]:
    """The address of a Dask cluster of 2 threads in this process (see the module docstring)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=40
    ) as cluster:
        yield cluster.scheduler_address


# ---------------------------------------------------------------- rasters, in a process of their own

# the reader process's program: one JSON job per stdin line, one JSON answer per line on the
# protocol pipe (fd 1 is pointed at stderr first, so what a C library prints cannot garble it)
_WORKER = r"""
import json, os, sys, traceback
out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
from advorch.pipelines import rasters
readers = {
    "hdf_layers": lambda p: {"layers": len(rasters.hdf_layers(p))},
    "hdf_grid": lambda p: {"grid": list(rasters.read_hdf_grid(p, rasters.BANDS_500M[0]).key)},
    "hdf_granule": lambda p: {"shape": list(rasters.read_hdf_granule(p)["reflectance"].shape)},
    "tiff_labels": lambda p: {"bands": len(rasters.geotiff_labels(p))},
    "tiff_read": lambda p: {"shape": list(rasters.read_geotiff(p, 1e-4)["values"].shape)},
}
out.write("ready\n")
for line in sys.stdin:
    kind, path = json.loads(line)
    try:
        answer = ["ok", readers[kind](path)]
    except Exception as e:
        answer = ["raised", type(e).__module__, type(e).__name__, str(e),
                  "".join(traceback.format_exception(e))[-1500:]]
    out.write(json.dumps(answer) + "\n")
"""


class RasterReader:
    """The raster readers in a long-lived process of their own: pyhdf and GDAL are C libraries, a
    corrupt file could crash them, and a crash must not take pytest with it. `read` restarts the
    process when a read killed it or ran past `timeout`, and says so in its answer."""

    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        assert self._line(120) == "ready", "the raster reader process did not start"

    def _line(self, timeout: float) -> str | None:
        """The process's next line, or None after `timeout` seconds (or at its end: "")."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def read(self, kind: str, path: str) -> tuple:
        """("ok", summary), ("raised", module, type, message, traceback), ("crashed", exit code) or
        ("hung", seconds)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps([kind, path]) + "\n")
        self.proc.stdin.flush()
        line = self._line(self.timeout)
        if line is None:
            self.close()
            return ("hung", self.timeout)
        if not line:
            code = self.proc.wait()
            self.proc = None
            return ("crashed", code)
        return tuple(json.loads(line))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def toml_str(value: str) -> str:
    """`value` as a TOML basic string (JSON's escapes, plus DEL, which TOML wants escaped)."""
    return json.dumps(value).replace("\x7f", "\\u007f")
