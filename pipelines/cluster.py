"""Where pipeline work runs: an existing Dask scheduler, or a local one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None,
                processes: bool = True) -> Iterator[Client]:
    """A Dask client on `address` (or $DASK_SCHEDULER_ADDRESS), else on a local cluster.

    The local cluster uses processes, one thread each, by default: tokenising and decoding
    are pure Python and would serialise on the GIL in threads. `processes=False` (threads in
    this process) suits work that runs in C++ and releases the GIL, such as pyarrow's CSV
    reader: its results then need no copy back to the driver.
    """
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    n = workers or min(os.cpu_count() or 1, 4)
    # Dask's worker launcher writes MALLOC_TRIM_THRESHOLD_, *_NUM_THREADS and PYTHONHASHSEED
    # into this process's environment and leaves them there; Ray workers started later in
    # the same process (`advorch demo`) would inherit them and train ~1.9x slower.
    saved = dict(os.environ)
    try:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                          dashboard_address=":0", silence_logs=40) as cluster, Client(cluster) as client:
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)
