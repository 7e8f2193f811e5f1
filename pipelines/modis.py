"""MODIS tiles → QA-masked time cubes in Zarr, and labelled samples → window sequences
(Jia et al. KDD'19 §4.3: MOD09A1, 32-day windows sliding by 8 days, 43 steps × 28 features).

    granules (HDF4) ─ read + scale + QA masks ─► per tile: stack by date, fill date
    gaps with empty composites, mask fill/cloud/shadow, gap-fill linearly along time
    ─► side/cube-<tile>.zarr          (time, band, y, x), CRS + transform as attributes
    GeoTIFFs (one per date/band, or multi-band stacks whose band descriptions name each
    band's date and channel) ─ read every band ─► side/cube-geotiff.zarr: value (time,
    band, y, x), and static (static_band, y, x) for undated layers (elevation, slope)
    labels: a class raster (nearest neighbour onto each cube's grid) and / or labelled
    points (nearest pixel), on granule and GeoTIFF cubes alike ─► series
    sample table (point, date, bands) ─► series
    series ─► windows (+ static features on every step) ─► parts/*.parquet (features (T·F), label)

Reading runs on the `--dask-address` cluster's workers; in a local run, in a pool of worker
processes that decode into a shared memory-mapped stack per tile when the pixels are many
(`process_min_mb`), else in this thread (pyhdf holds the GIL: threads would take turns).
Tiles are built one after another, so one tile's arrays are in memory at a time.

Gap filling: a masked observation (fill, cloud or shadow) is replaced by linear
interpolation in time between the pixel's nearest valid observations, and by the nearest
valid one before the first / after the last. The cube holds `filled` and `valid` (which
values were observed): the masked observations are `filled.where(valid)`, exactly, so they
are not stored a second time (a tile-year of 2400 x 2400 pixels: 7.4 GB of float32 each).

Incremental: the manifest records, per tile, the granules (path, BLAKE3 hash) its cube holds. A
re-run keeps a tile's cube as it is when its granules are unchanged, and extends it when
granules were only added (new dates): the old ones are read back from the cube, not decoded
again, and the time series is gap-filled anew. Any other change to a tile rebuilds it; a
change of parameters rebuilds everything.

Quarantined, with the file and the reason: unreadable or truncated HDF, a granule whose
grid differs from its tile's, a missing band, a duplicate date; recorded as gaps: a
composite missing from a tile's time series (the cube holds it as all-NaN, then filled);
and pixels with no valid observation at all (left NaN in `filled`; one record per image row);
a GeoTIFF whose bands nothing maps (no date in its name, no matching band description), and
labelled points on no cube's grid.

Nothing is left without a word: the HDF layers, GeoTIFF bands and table columns a reader did
not use are the manifest's `unused` records (one per distinct set, with a file count), declared
when data.modis.unused (or the table's `unused`) names them, else shown in the run summary.
"""

from __future__ import annotations

import datetime as _dt
import functools
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from advorch import __version__
from advorch.config import DataConfig, ModisConfig
from advorch.pipelines.common import PipelineError, Summary, unused
from advorch.pipelines.events import expand
from advorch.pipelines.rasters import (
    FLAGS,
    Grid,
    RasterError,
    SharedStack,
    band_layout,
    decode_granule,
    geotiff_labels,
    granule_date,
    hdf_layers,
    read_geotiff,
    read_hdf_grid,
    scale_into,
    unobserved,
)
from advorch.pipelines.shards import (
    HASH,
    DatasetWriter,
    Quarantine,
    fingerprints,
    read_manifest,
    sources_unchanged,
)
from advorch.progress import track

CHUNK_BYTES = 32 << 20  # Zarr chunks of tens of MB: few files, each big enough to stream
FILL_BLOCK_BYTES = 4 << 20  # gap filling's index temporaries, per block of series


def _each(items: list[tuple], fn: Any, **kwargs: Any) -> list[Any]:
    return [fn(*x, **kwargs) for x in items]


class _Deferred:
    """`fn(*args, **kwargs)`, run in this thread when its `result()` is asked for: a task of
    `_map_batched` when there are no workers."""

    def __init__(self, call: Any, *args: Any, **kwargs: Any) -> None:
        self.call = functools.partial(call, *args, **kwargs)

    def result(self) -> Any:
        return self.call()


def _map_batched(workers: Any, fn: Any, items: list[tuple], **kwargs: Any) -> list[Any]:
    """Futures of `[fn(*x, **kwargs) for x in batch]` over batches of `items` on `workers` (a
    Dask client, a process pool, or None: this thread, as the results are asked for). A Dask
    task costs ≈ 1-2 ms of scheduling, more than decoding a small granule, so a task reads a
    batch (≈ 4 per worker, to balance them; at most 32 items, to bound a result's size)."""
    if workers is None:
        n = 1
    elif isinstance(workers, Executor):
        n = workers._max_workers  # the pool's size: it has no public accessor
    else:
        n = sum(workers.nthreads().values()) or 1
    size = max(1, min(32, -(-len(items) // (4 * n))))
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    submit = workers.submit if workers is not None else _Deferred  # a pool's and Dask's alike
    return [submit(_each, batch, fn=fn, **kwargs) for batch in batches]


@contextmanager
def _workers(dask_address: str | None, local: bool, processes: int) -> Iterator[Any]:
    """Where granules are read: unless `local`, the Dask cluster at `dask_address` (or
    $DASK_SCHEDULER_ADDRESS); else a pool of `processes` local processes (they decode into
    shared stacks: a pool starts and stops in ≈ 0.2 s, a Dask LocalCluster in ≈ 0.9 s, for the
    same work on one machine); else None, this thread."""
    from advorch.pipelines.cluster import dask_client

    if not local:
        with dask_client(dask_address) as client:
            yield client
    elif processes:
        # spawn, not fork: this process runs threads (hashing; Ray's, in `advorch demo`)
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    else:
        yield None


def composite_dates(first: _dt.date, last: _dt.date, days: int) -> list[_dt.date]:
    """The composite start dates between two dates: MODIS restarts each year on day 1
    (8-day: days 1, 9, …, 361; 16-day: 1, 17, …, 353)."""
    out = []
    for year in range(first.year, last.year + 1):
        start = _dt.date(year, 1, 1)
        out += [d for k in range(0, 366, days)
                if (d := start + _dt.timedelta(k)).year == year and first <= d <= last]
    return out


def gap_fill(values: np.ndarray, axis: int = 0, copy: bool = True) -> np.ndarray:
    """Linear interpolation of NaNs along `axis` (time), nearest valid value at the ends;
    all-NaN series stay NaN. Vectorised over every other axis, a block of series at a time:
    the index temporaries stay ≈ 4 MB whatever the cube's size (a whole tile-year at once
    would need two int32 copies of it), and are reused from block to block. Only the series
    with both a gap and a valid value are worked on: clear-sky and never-observed ones (sea,
    fill) need nothing. `copy=False` fills `values` itself when its layout allows (no
    cube-sized copy); use the returned array either way."""
    v = np.moveaxis(values, axis, 0)
    t, rest = v.shape[0], v.shape[1:]
    out = v.reshape(t, -1)
    out = out.copy() if copy and np.may_share_memory(out, values) else out  # filled in place
    width = min(out.shape[1], max(256, FILL_BLOCK_BYTES // (4 * t)))
    prev, nxt = np.empty((t, width), np.int32), np.empty((t, width), np.int32)
    ok, last = np.empty((t, width), bool), np.empty(width, np.int32)
    for c0 in range(0, out.shape[1], width):
        block = out[:, c0:c0 + width]  # a view into the result
        okb = np.isnan(block, out=ok[:, :block.shape[1]])
        np.logical_not(okb, out=okb)
        todo = np.flatnonzero(okb.any(0) & ~okb.all(0))
        if len(todo) == block.shape[1]:
            _fill_series(block, okb, prev, nxt, last)
        elif len(todo):
            part = block[:, todo]
            _fill_series(part, okb[:, todo], prev, nxt, last)
            block[:, todo] = part
    return np.moveaxis(out.reshape(t, *rest), 0, axis)


def _fill_series(block: np.ndarray, ok: np.ndarray, prev: np.ndarray, nxt: np.ndarray,
                 last: np.ndarray) -> None:
    """`gap_fill` of the (time, series) `block` in place, `ok` its valid values; prev / nxt /
    last are scratch buffers at least as wide."""
    t, w = block.shape
    # index of the previous / next valid step for every step (or -1 / t when none), one time
    # step at a time over whole rows: ≈ 2x faster than ufunc.accumulate along the first axis
    p, n, lw = prev[:, :w], nxt[:, :w], last[:w]
    lw.fill(-1)
    for k in range(t):
        np.copyto(lw, k, where=ok[k])
        p[k] = lw
    lw.fill(t)
    for k in range(t - 1, -1, -1):
        np.copyto(lw, k, where=ok[k])
        n[k] = lw
    # interpolate at the missing steps only, in float64 as one expression
    rows, cols = np.nonzero(~ok)
    pk, nk = p[rows, cols], n[rows, cols]
    has_p, has_n = pk >= 0, nk < t
    pv, nv = block[np.maximum(pk, 0), cols], block[np.minimum(nk, t - 1), cols]
    frac = (rows - pk) / np.maximum(nk - pk, 1)
    block[rows, cols] = np.where(has_p & has_n, pv + frac * (nv - pv), np.where(has_p, pv, nv))


def tile_cube(granules: list[dict[str, Any]], cfg: ModisConfig, quarantine: Quarantine,
              stack: SharedStack | None = None):
    """One tile's granules → xarray Dataset (time, band, y, x); rejects what does not fit.

    A granule is its arrays: unscaled ("raw", "scale", "offset"), scaled ("reflectance"), or
    a "slot" of the tile's `stack` that worker processes decoded into. When the stack holds
    every date in order, it becomes the cube itself (masked and gap-filled in place)."""
    import xarray as xr

    common = Counter(g["grid"].key for g in granules).most_common(1)[0][0]
    grid = next(g["grid"] for g in granules if g["grid"].key == common)
    kept: dict[_dt.date, dict[str, Any]] = {}
    for g in sorted(granules, key=lambda g: (g["date"], g["path"])):
        if g["grid"].key != grid.key:
            other = g["grid"]
            quarantine.add(g["path"], f"grid differs: {other.name} {other.width}x{other.height} at "
                                      f"{other.upper_left}, the tile's is {grid.name} {grid.width}x"
                                      f"{grid.height} at {grid.upper_left}")
        elif g["date"] in kept:
            quarantine.add(g["path"], f"duplicate date: {g['date']} is also {kept[g['date']]['path']}")
        else:
            kept[g["date"]] = g
    dates = composite_dates(min(kept), max(kept), cfg.composite_days)
    tile = granules[0]["tile"]
    values, stacked = stack.arrays() if stack else (None, None)
    whole = stack and [kept.get(d, {}).get("slot") for d in dates] == list(range(stack.granules))
    if whole:  # masked by the workers already
        masked, flags = values, dict(zip(FLAGS, stacked, strict=True))
    else:  # one array per variable, filled in place: a missing composite is NaN / all flags set
        masked = np.empty((len(dates), len(cfg.bands), grid.height, grid.width), np.float32)
        flags = {k: np.ones((len(dates), grid.height, grid.width), bool) for k in FLAGS}
        for k, d in enumerate(dates):
            g = kept.get(d)
            if g is None:
                masked[k] = np.nan
                continue
            if "slot" in g:  # decoded into the stack by a worker process
                masked[k] = values[g["slot"]]
                g = {f: stacked[i, g["slot"]] for i, f in enumerate(FLAGS)}
            elif "raw" in g:  # decoded unscaled: scaled straight into the cube
                scale_into(masked[k], g["raw"], g["scale"], g["offset"])
            else:  # from a previous cube (an incremental run) or read scaled
                masked[k] = g["reflectance"]
            for f, v in flags.items():
                v[k] = g[f]
    for k in ("cloud", "shadow"):  # a missing composite is fill, not cloud
        flags[k] &= ~flags["fill"]
    valid = ~unobserved(flags["fill"], flags["cloud"], flags["shadow"], cfg.mask_clouds)
    if not whole:
        np.copyto(masked, np.nan, where=~valid[:, None])
    # `masked` is not kept: filled.where(valid) gives it; asarray: a plain view of a stack's map
    filled = np.asarray(gap_fill(masked, copy=False))
    x, y = grid.coords()
    cube, plane = ("time", "band", "y", "x"), ("time", "y", "x")
    ds = xr.Dataset(
        {"filled": (cube, filled), "valid": (plane, valid),
         **{k: (plane, np.asarray(v)) for k, v in flags.items()}},
        coords={"time": np.array(dates, dtype="datetime64[ns]"), "band": np.array(cfg.bands, dtype=object),
                "y": y, "x": x},
        attrs={"crs": grid.crs, "transform": list(grid.transform), "tile": tile, "grid": grid.name,
               "corners": [*grid.upper_left, *grid.lower_right],
               "granules": {str(d): g["path"] for d, g in kept.items()},
               "gap_fill": "linear in time; nearest valid at the ends"})
    if "sur_refl_b01" in cfg.bands and "sur_refl_b02" in cfg.bands:
        red, nir = (filled[:, cfg.bands.index(b)] for b in ("sur_refl_b01", "sur_refl_b02"))
        ds["ndvi"] = (plane, ndvi(red, nir))
    return ds


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """(nir − red) / (nir + red), float32, in one result array and one temporary (xarray's
    arithmetic made three cube-sized ones); the same values as that gave."""
    out = np.subtract(nir, red, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        out /= nir + red
    return out


def record_holes(ds, quarantine: Quarantine) -> None:
    """Quarantine records of a tile cube's holes: composites no granule gave (held as missing,
    gap-filled) and pixels with no valid observation on any date (left NaN)."""
    tile, have = ds.attrs["tile"], set(ds.attrs["granules"])
    for t in ds.time.values:
        d = _dt.date.fromisoformat(str(t)[:10])
        if str(d) not in have:
            quarantine.add(tile, f"date gap: no composite for {d} (day {d.timetuple().tm_yday}); "
                                 "held as missing and gap-filled")
    # one record per image row, its pixels as runs of columns: a tile with sea or a lasting
    # cloud has millions of such pixels, which one record each would turn into a quarantine
    # file larger than the cube (the cube's `valid` holds the per-pixel mask as well)
    never = ~ds["valid"].values.any(0)
    y = ds.y.values
    for r in np.flatnonzero(never.any(1)):
        cols = np.flatnonzero(never[r])
        ends = np.flatnonzero(np.diff(cols) > 1)
        runs = np.stack([cols[np.r_[0, ends + 1]], cols[np.r_[ends, len(cols) - 1]]], axis=1).tolist()
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:8])
        shown += " …" if len(runs) > 8 else ""
        quarantine.add(tile, f"no valid observation: row {r}, {len(cols)} pixel(s) at col {shown}: fill, "
                             "cloud or shadow on every date; left NaN",
                       raw={"row": int(r), "y": float(y[r]), "pixels": len(cols), "col_runs": runs})


def cube_layers(uri: str) -> list[dict[str, Any]]:
    """The granule layers a previous tile cube holds, as `tile_cube` takes them (masked values,
    flags, grid): an incremental run extends a tile without decoding its old granules again."""
    ds = open_zarr(uri).load()  # every layer is returned: one read, not one per layer
    a = ds.attrs
    grid = Grid(a["grid"], ds.sizes["x"], ds.sizes["y"], tuple(a["corners"][:2]), tuple(a["corners"][2:]),
                a["crs"])
    times = [str(t)[:10] for t in ds.time.values]
    arrays = {"reflectance": ds["filled"].where(ds["valid"]).values,
              **{f: ds[f].values for f in FLAGS}}
    layers = []
    for date, path in a["granules"].items():
        k = times.index(date)
        layers.append({"path": path, "date": _dt.date.fromisoformat(date), "tile": a["tile"], "grid": grid,
                       **{name: v[k] for name, v in arrays.items()}})
    return layers


def audit(source: str, what: str, names: list[str], declared: list[str],
          files: int = 1) -> list[dict[str, Any]]:
    """The manifest `unused` records of the `names` a reader left in `source` (and in `files` − 1
    more files like it): the ones a `declared` regex fully matches as declared, the rest not;
    [] when nothing was left."""
    said = [n for n in names if any(re.fullmatch(p, n) for p in declared)]
    rest = [n for n in names if n not in said]
    return [{**unused(source, what, group, declared=flag), "files": files}
            for group, flag in ((rest, False), (said, True)) if group]


def audit_files(left: dict[str, list[str]], what: str, declared: list[str]) -> list[dict[str, Any]]:
    """`audit` records of what each file left, one per distinct set of names, its first file the
    source (with the count): 184 granules that leave the same layers are one record, not 184."""
    by: dict[tuple[str, ...], list[str]] = {}
    for path, names in sorted(left.items()):
        if names:
            by.setdefault(tuple(names), []).append(path)
    return [r for names, paths in by.items()
            for r in audit(paths[0], what, list(names), declared, len(paths))]


def hdf_unused(granules: list[str], cfg: ModisConfig) -> list[dict[str, Any]]:
    """The `unused` records of the granules' layers that are neither data.modis.bands nor
    state_layer. Each tile's layers are listed from its first readable granule only: a tile's
    granules are one product, with the same layers (a listing costs an open, ≈ 0.3 ms)."""
    tiles: dict[str, list[str]] = {}
    for path in granules:
        try:
            tiles.setdefault(granule_date(path)[1], []).append(path)
        except RasterError:
            continue  # the reader quarantines it by name
    used = {*cfg.bands, cfg.state_layer}
    left: dict[str, list[str]] = {}
    for paths in tiles.values():
        names = [n for n in _first_layers(sorted(paths)) if n not in used]
        left.update(dict.fromkeys(paths, names))
    return audit_files(left, "layers", cfg.unused)


def _first_layers(paths: list[str]) -> list[str]:
    for path in paths:
        try:
            return hdf_layers(path)
        except RasterError:
            continue  # unreadable: quarantined by the decoding
    return []


def geotiff_cube(paths: list[str], cfg: ModisConfig, workers: Any,
                 quarantine: Quarantine) -> tuple[Any, list[dict[str, Any]]]:
    """GeoTIFFs (one per date and band, or multi-band stacks; see rasters.band_layout) → (xarray
    Dataset or None, the `unused` records of the bands nothing mapped). The Dataset holds
    "value" (time, band, y, x) and, when some bands are static, "static" (static_band, y, x)."""
    import xarray as xr

    futures = _map_batched(workers, _read_tiff, [(p,) for p in paths], scale=cfg.scale,
                           name_pattern=cfg.name_pattern, band_pattern=cfg.band_pattern,
                           static_bands=cfg.static_bands, band_names=cfg.band_names)
    layers = {}
    for fut in track(futures, "reading GeoTIFFs", total=len(futures)):
        for r in fut.result():
            if "error" in r:
                quarantine.add(r["path"], r["error"])
            else:
                layers[r["path"]] = r
    left = audit_files({p: r["unmapped"] for p, r in layers.items()}, "bands", cfg.unused)
    if not layers:
        return None, left
    common = Counter(r["grid"].key for r in layers.values()).most_common(1)[0][0]
    ref = next(r["grid"] for r in layers.values() if r["grid"].key == common)
    cells: dict[tuple[_dt.date, str], np.ndarray] = {}
    statics: dict[str, np.ndarray] = {}
    for p, r in sorted(layers.items()):
        g = r["grid"]
        if g.key != ref.key:
            quarantine.add(p, f"grid differs: {g.width}x{g.height} at {g.upper_left}, the stack's is "
                              f"{ref.width}x{ref.height} at {ref.upper_left}")
            continue
        _place(p, r, cells, statics, quarantine)
    if not cells:
        for p in layers:
            quarantine.add(p, "no dated band: a cube needs bands with dates (see data.modis.band_pattern)")
        return None, left
    dates = sorted({d for d, _ in cells})
    bands = sorted({b for _, b in cells})
    empty = np.full((ref.height, ref.width), np.nan, np.float32)
    for d in dates:
        for b in bands:
            if (d, b) not in cells:
                quarantine.add(f"{d}/{b}", "date gap: no file for this date and band; held as missing")
    cube = np.stack([np.stack([cells.get((d, b), empty) for b in bands]) for d in dates])
    x, y = ref.coords()
    ds = xr.Dataset({"value": (("time", "band", "y", "x"), cube)},
                    coords={"time": np.array(dates, dtype="datetime64[ns]"),
                            "band": np.array(bands, dtype=object), "y": y, "x": x},
                    attrs={"crs": ref.crs, "transform": list(ref.transform)})
    if statics:
        names = sorted(statics)
        ds["static"] = (("static_band", "y", "x"), np.stack([statics[n] for n in names]))
        ds = ds.assign_coords(static_band=np.array(names, dtype=object))
    return ds, left


def _place(path: str, layer: dict[str, Any], cells: dict[tuple[_dt.date, str], np.ndarray],
           statics: dict[str, np.ndarray], quarantine: Quarantine) -> None:
    """A file's bands into the cube's cells ((date, channel) → array) and static layers (name →
    array); a band that repeats one already placed is quarantined."""
    for values, role in zip(layer["values"], layer["roles"], strict=True):
        if role.date is None:
            if role.channel in statics:
                quarantine.add(path, f"duplicate static band: {role.channel} came first from another band")
            else:
                statics[role.channel] = values
        elif (role.date, role.channel) in cells:
            quarantine.add(path, f"duplicate date: a band for {role.date} {role.channel} came first")
        else:
            cells[(role.date, role.channel)] = values


def _read_tiff(path: str, scale: float, name_pattern: str, band_pattern: str | None,
               static_bands: list[str], band_names: list[str]) -> dict[str, Any]:
    """A worker's task: the mapped bands of a GeoTIFF, {"path", "values" (band, y, x), "grid",
    "roles" (one per band read), "unmapped" (the labels of the bands not read)}, or {"path", "error"}."""
    try:
        labels = geotiff_labels(path, band_names)
        layout = band_layout(path, labels, name_pattern, band_pattern, static_bands)
        read = [k + 1 for k, role in enumerate(layout) if role]
        static = frozenset(k + 1 for k, role in enumerate(layout) if role and role.date is None)
        out = read_geotiff(path, scale, read, static)
    except RasterError as e:
        return {"path": path, "error": str(e)}
    unmapped = [label or f"band {k + 1}" for k, (label, role) in enumerate(zip(labels, layout, strict=True))
                if role is None]
    return {"path": path, **out, "roles": [role for role in layout if role], "unmapped": unmapped}


def write_zarr(ds, uri: str) -> None:
    """The cube as Zarr, chunked by a year of composites and as many whole rows as keep a chunk
    under ≈ 32 MB (the whole tile for small ones; not millions of tiny chunks, nor GB ones).
    Compressed with Blosc LZ4 + byte shuffle: on the real MOD09A1 and MOD13A1 rasters it
    encodes at ≈ 2.8 GB/s, zstd (Zarr's default) at ≈ 0.15 GB/s, which would cost more than
    decoding the granules, for files 20-40% smaller. Written from memory, not through Dask:
    the arrays are on the driver already, and a Dask graph would ship them to the workers and
    back."""
    from zarr.codecs import BloscCodec

    t = min(ds.sizes["time"], 46)
    row = max(v.nbytes // (ds.sizes["time"] * ds.sizes["y"]) for v in ds.data_vars.values())  # per date
    sizes = {"time": t, "y": max(1, min(ds.sizes["y"], CHUNK_BYTES // (t * row)))}
    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    encoding = {name: {"chunks": tuple(sizes.get(d, ds.sizes[d]) for d in var.dims), "compressors": [codec]}
                for name, var in ds.data_vars.items()}
    ds.to_zarr(uri, mode="w", consolidated=False, encoding=encoding)


def plan_tiles(granules: list[str], sources: list[dict[str, Any]] | None,
               previous: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per tile (from the file names): which granules to decode, and whether the previous cube is
    kept as it is ("keep": its side path) or extended ("layers": its side path).

    A tile whose granules are exactly the ones its cube was built from is kept; one that only
    gained granules (new dates, or files quarantined before) is extended: its old granules are
    not decoded again; any other change rebuilds it."""
    digest = {s["path"]: s[HASH] for s in sources or []}  # None: no previous build to compare
    tiles: dict[str, list[str]] = {}
    for path in granules:
        try:
            tiles.setdefault(granule_date(path)[1], []).append(path)
        except RasterError:
            tiles.setdefault("", []).append(path)  # read anyway: the reader quarantines it by name
    plan = {}
    for tile, paths in tiles.items():
        before = (previous or {}).get("cubes", {}).get(tile, {}).get("granules", {})
        side = (previous or {}).get("side_files", {}).get(f"cube-{tile}.zarr")
        same = {p for p in paths if p in digest and before.get(p) == digest[p]}
        if side and same == set(paths) == set(before):
            plan[tile] = {"decode": [], "keep": side, "layers": None}
        elif side and same == set(before):
            plan[tile] = {"decode": [p for p in paths if p not in same], "keep": None, "layers": side}
        else:
            plan[tile] = {"decode": paths, "keep": None, "layers": None}
    return plan


def _decode(workers: Any, tile: str, paths: list[str], stack: SharedStack | None, cfg: ModisConfig,
            quarantine: Quarantine) -> list[dict[str, Any]]:
    """A tile's granules decoded on `workers` (into its `stack`, if any); the unreadable ones
    quarantined with the reason.

    Raises:
        PipelineError: a worker process died (the run is aborted: nothing is published)."""
    items = [(p, stack, k) for k, p in enumerate(paths)]
    futures = _map_batched(workers, decode_granule, items, bands=cfg.bands, state=cfg.state_layer)
    decoded = []
    try:
        for fut in track(futures, f"reading granules {tile}", total=len(futures)):
            for g in fut.result():
                if "error" in g:
                    quarantine.add(g["path"], g["error"])
                else:
                    decoded.append(g)
    except BrokenProcessPool as e:  # a worker killed (the kernel's OOM killer, most likely)
        raise PipelineError(f"a decoding process died while reading the {len(paths)} granule(s) of tile "
                            f"{tile or '?'} ({e}): if it ran out of memory, free some or set "
                            "data.modis.process_min_mb above the run's size to decode in one thread; "
                            "nothing was published") from None
    return decoded


@contextmanager
def _shared_stacks(todo: dict[str, list[str]], cfg: ModisConfig,
                   local: bool) -> Iterator[dict[str, SharedStack]]:
    """Per tile, a `SharedStack` for worker processes to decode its granules into, when that
    pays: the workers are on this machine (a local run), it has two cores or more, and the
    decoded pixels come to `cfg.process_min_mb` at least (below that, starting the processes,
    ≈ 0.2-0.3 s, costs more than the second core saves). Else {}: one thread decodes. The
    stacks live in a temporary folder in /dev/shm (memory, not disk) while the context lasts;
    a file takes memory only as its slots are written (and the largest tile must fit)."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    grids: dict[str, Grid] = {}
    if local and (os.cpu_count() or 1) > 1:
        for tile, paths in todo.items():
            for path in paths if tile else []:  # "": names without a tile, quarantined by the reader
                try:
                    grids[tile] = read_hdf_grid(path, cfg.bands[0])
                    break
                except RasterError:
                    continue  # the decoding quarantines it
    pixels = {t: len(todo[t]) * g.height * g.width for t, g in grids.items()}
    need = max(pixels.values(), default=0) * (4 * len(cfg.bands) + len(FLAGS))  # tiles come one by one
    if not grids or sum(pixels.values()) * 2 * (len(cfg.bands) + 1) < cfg.process_min_mb * 1e6 \
            or shutil.disk_usage(folder or tempfile.gettempdir()).free < need:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="advorch-modis-", dir=folder) as tmp:
        yield {t: SharedStack.create(f"{tmp}/{t}", len(todo[t]), len(cfg.bands), g, cfg.mask_clouds)
               for t, g in grids.items()}


def open_zarr(uri: str):
    import xarray as xr

    return xr.open_zarr(uri, consolidated=False)


def describe(ds, granules: list[str] | None = None) -> dict[str, Any]:
    """A cube's manifest entry: sizes, dates, CRS, transform, and the granules it was built from
    (`run` maps each to its hash once the background hashing is done)."""
    return {"dims": dict(ds.sizes), "dates": [str(d)[:10] for d in ds.time.values],
            "crs": ds.attrs["crs"], "transform": ds.attrs["transform"], "granules": granules or []}


def _params(cfg: DataConfig) -> dict[str, Any]:
    # what the cube and shards depend on: not where the sources are nor how they are decoded
    inputs = {"granules", "geotiffs", "process_min_mb"}
    return {"advorch": __version__, **cfg.modis.model_dump(exclude=inputs),
            "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction, "seed": cfg.seed,
            "part_rows": cfg.part_rows}


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build (or confirm up to date) the MODIS dataset at `output`: cubes and sequence shards.

    Raises:
        PipelineError: nothing to read, or no granule / GeoTIFF / sample usable.
        ShardError: the output folder cannot be written.
    """
    m, output = cfg.modis, output or cfg.output
    if not (m.granules or m.geotiffs or m.samples):
        raise PipelineError("data.modis names no granules, geotiffs or samples: nothing to build")
    if (m.labels or m.points) and not (m.granules or m.geotiffs):
        raise PipelineError("data.modis.labels / data.modis.points label the pixels of cubes: list "
                            "data.modis.granules or data.modis.geotiffs")
    granules = expand(m.granules, "data.modis.granules") if m.granules else []
    tiffs = expand(m.geotiffs, "data.modis.geotiffs") if m.geotiffs else []
    sample_files = [s.path for s in (m.samples, m.labels, m.points) if s]
    previous = read_manifest(output)
    params = _params(cfg)
    reusable = previous if previous and previous.get("params") == params else None
    # The sources' hashes are needed up front only when a build with these params may be reused;
    # otherwise they are computed while the granules are decoded (BLAKE3 on mapped files runs
    # without the GIL: the hashing hides behind decoding on another core) and joined before the
    # manifest is written.
    hashing = ThreadPoolExecutor(1)
    pending = hashing.submit(fingerprints, granules + tiffs + sample_files, previous)
    hashing.shutdown(wait=False)
    if reusable and sources_unchanged(previous, pending.result(), params):
        return Summary.of(output, previous, up_to_date=True)

    from advorch.pipelines.samples import Labeller, concat, read_samples, write_sequences

    quarantine = Quarantine()
    writer = DatasetWriter(output, kind="modis", health=cfg.health)
    cubes: dict[str, dict[str, Any]] = {}
    series = []
    # The hashing thread needs the GIL for a moment per file, and pyhdf's decoding thread holds
    # it but for Python's switch interval (5 ms): at 0.1 ms, hashing 184 small granules hides
    # behind their decoding (measured: decode + hash 380 → 245 ms; decoding alone 235 ms).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        left = hdf_unused(granules, m)  # the manifest's `unused` records: what the readers did not use
        labeller = Labeller(m, quarantine) if m.labels or m.points else None
        plan = plan_tiles(granules, pending.result() if reusable else None, reusable)
        todo = {tile: t["decode"] for tile, t in plan.items() if t["decode"]}
        local = not (dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS"))
        # pyhdf holds the GIL throughout (its wrappers never release it), so threads only take
        # turns at decoding: a local run with enough pixels decodes in a pool of processes, into
        # shared stacks; a smaller one in this thread (no Dask: its in-process scheduler cost
        # ≈ 15% more time on 184 small granules, for no parallelism)
        with _shared_stacks(todo, m, local) as stacks, \
                _workers(dask_address, local, min(os.cpu_count() or 1, 4) if stacks else 0) as workers:
            for tile, t in sorted(plan.items()):
                if t["keep"]:  # nothing new for this tile: its cube stays as it is
                    writer.keep_side(f"cube-{tile}.zarr", t["keep"])
                    ds = open_zarr(f"{output}/{t['keep']}")
                else:
                    new = _decode(workers, tile, t["decode"], stacks.get(tile), m, quarantine)
                    if not (new or t["layers"]):
                        continue
                    old = cube_layers(f"{output}/{t['layers']}") if t["layers"] else []
                    ds = tile_cube(old + new, m, quarantine, stacks.get(tile))
                    write_zarr(ds, writer.side_dir_uri(f"cube-{tile}.zarr"))
                record_holes(ds, quarantine)
                if labeller:
                    series += labeller.label(ds, tile)
                cubes[tile] = describe(ds, list(ds.attrs["granules"].values()))
                # one tile in memory at a time: its granules, stack and cube go before the next
                # tile is decoded (a tile-year at 2400 x 2400 px is ≈ 8 GB)
                ds = new = old = None
                if tile in stacks:
                    os.unlink(stacks[tile].path)
            stats = {"granules_decoded": sum(map(len, todo.values())), "decoded_in_processes": bool(stacks),
                     "tiles_kept": sum(bool(t["keep"]) for t in plan.values()),
                     "tiles_extended": sum(bool(t["layers"]) for t in plan.values())}
            if tiffs:
                ds, bands_left = geotiff_cube(tiffs, m, workers, quarantine)
                left += bands_left
                if ds is not None:
                    write_zarr(ds, writer.side_dir_uri("cube-geotiff.zarr"))
                    cubes["geotiff"] = describe(ds)
                    series += labeller.label(ds, "geotiff") if labeller else []
        if (granules or tiffs) and not cubes and not m.samples:
            first = quarantine.records[0] if quarantine.records else {"source": "-", "reason": "-"}
            raise PipelineError(f"no granule or GeoTIFF was usable: {quarantine.by_reason()}; the first: "
                                f"{first['source']}: {first['reason']}")
        if labeller:
            left += labeller.finish()
        if m.samples:
            samples, columns_left = read_samples(cfg, quarantine)
            series.append(samples)
            left += columns_left
        sources = pending.result()
        digest = {src["path"]: src[HASH] for src in sources}
        for cube in cubes.values():
            cube["granules"] = {p: digest[p] for p in cube["granules"]}
        splits, schema, classes, shapes, extra = ({}, pa.schema([]), [], {}, {}) if not series else \
            write_sequences(concat(series), cfg, writer, quarantine, "data.modis")
        manifest = writer.commit(splits=splits, schema=schema, sources=sources,
                                 quarantine=quarantine, params=params, classes=classes, shapes=shapes,
                                 inputs={"features": {"column": "features", "shape": shapes["features"],
                                                      "dtype": "float32"}} if series else {},
                                 extra={"cubes": cubes, "incremental": stats, "unused": left, **extra})
    except BaseException:
        writer.abort()
        raise
    finally:
        sys.setswitchinterval(switch)
    return Summary.of(output, manifest)
