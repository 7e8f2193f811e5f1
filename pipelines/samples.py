"""Labelled series → window sequences for the sequence models (Jia et al. KDD'19 §4.3). The
series come from point samples (one row per sample and date, one column per band), or from
the pixels of a cube (a granule tile's or the GeoTIFF cube's) that a label raster (resampled
onto the cube's grid by nearest neighbour) or a table of labelled points (each at the pixel
that holds it) labels.

Per sample, the dates are sorted and missing values gap-filled in time (modis.gap_fill);
NDVI = (nir − red) / (nir + red) is added when asked and not given. Step t of a sequence
concatenates the values of `window` consecutive composites starting at composite
t·`stride`: with 8-day composites, window 4 and stride 1 this is the paper's 32-day
window sliding by 8 days (46 composites → 43 steps × 28 features from 7 bands); with the
16-day sits samples, window 2 and stride 1 give 22 steps of 32 days.

Rows: `id`, `label`, `features` (T·F float32, row-major: step, then window position,
then band), `lon`, `lat`, `start` (first date); the manifest's `shapes.features` is [T, F]
and `feature_stats` the train split's mean and std per feature (the model standardises
with them, so a perturbation's ε is in standard deviations).

Static features (a GeoTIFF cube's undated layers: elevation, slope) do not change in time:
they are appended once to every step, after its window (F = window·B + S), so an LSTM sees
them at each step without a second input; their names close `feature_names`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from advorch.config import DataConfig, LabelRaster, ModisConfig, PointLabels
from advorch.pipelines.common import SPLITS, PipelineError, stratified_codes
from advorch.pipelines.modis import audit, gap_fill
from advorch.pipelines.shards import DatasetWriter, Quarantine, write_part

SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int32()), ("features", pa.list_(pa.float32())),
                    ("lon", pa.float64()), ("lat", pa.float64()), ("start", pa.string())])


def windows(values: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(n, D, B) → (n, T, window·B) with T = (D − window) // stride + 1."""
    n, d, b = values.shape
    if d < window:
        raise PipelineError(f"samples have {d} dates, fewer than data.modis.window = {window}")
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=1)[:, ::stride]  # (n, T, B, w)
    return np.ascontiguousarray(view.transpose(0, 1, 3, 2)).reshape(n, view.shape[1], window * b)


@dataclass
class Series:
    """n labelled series: values (n, D, B) over D composites of bands B, in date order."""

    ids: np.ndarray
    labels: np.ndarray  # class names
    values: np.ndarray
    bands: list[str]
    lon: np.ndarray
    lat: np.ndarray
    start: np.ndarray  # first date, "YYYY-MM-DD"
    static: np.ndarray | None = None  # (n, S) undated features (elevation), or None
    static_names: list[str] = field(default_factory=list)


def concat(parts: list[Series]) -> Series:
    """Series from several sources as one (same dates count, bands and static features); a source
    with no series (a tile no label covers) is left out.

    Raises:
        PipelineError: the sources disagree on dates or bands.
    """
    parts = [p for p in parts if len(p.ids)] or parts[:1]
    if len({(p.values.shape[1], tuple(p.bands), tuple(p.static_names)) for p in parts}) > 1:
        raise PipelineError("the labelled pixels, points and samples have different dates or bands: "
                            "build them as two datasets")

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return Series(joined("ids"), joined("labels"), joined("values"), parts[0].bands, joined("lon"),
                  joined("lat"), joined("start"), joined("static") if parts[0].static_names else None,
                  parts[0].static_names)


def read_samples(cfg: DataConfig, quarantine: Quarantine) -> tuple[Series, list[dict[str, Any]]]:
    """The sample table as series, and the `unused` records of its columns not used; rows and
    samples that cannot be used are quarantined.

    Raises:
        PipelineError: a configured column is missing.
    """
    spec = cfg.modis.samples
    table = pd.read_csv(spec.path, dtype={spec.id: str, spec.label: str, spec.date: str})
    needed = [spec.id, spec.label, spec.date, spec.lon, spec.lat, *spec.bands]
    missing = [c for c in needed if c not in table.columns]
    if missing or not spec.bands:
        raise PipelineError(f"{spec.path}: no column {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(map(repr, table.columns))}); fix data.modis.samples"
                            if missing else "data.modis.samples.bands is empty: name the band columns")
    left = audit(spec.path, "columns", [c for c in table.columns if c not in needed], spec.unused)
    table["_line"] = np.arange(len(table)) + 2  # the header is line 1
    table["_date"] = pd.to_datetime(table[spec.date], errors="coerce", format="ISO8601")
    for _, r in table[table["_date"].isna()].iterrows():
        quarantine.add(spec.path, f"unparseable date: {r[spec.date]!r}", line=int(r["_line"]))
    table = table[table["_date"].notna()].sort_values([spec.id, "_date"], kind="stable")
    counts = table.groupby(spec.id, sort=False).size()
    d = int(counts.mode().iloc[0])
    for sid in counts.index[counts != d]:
        line = int(table.loc[table[spec.id] == sid, "_line"].iloc[0])
        quarantine.add(spec.path, f"date count differs: sample {sid} has {counts[sid]} dates, the "
                                  f"samples have {d}", line=line)
    table = table[table[spec.id].map(counts) == d]
    values = table[spec.bands].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    first = table.groupby(spec.id, sort=False).head(1)
    return Series(first[spec.id].to_numpy().astype(str), first[spec.label].to_numpy().astype(str),
                  values.reshape(-1, d, len(spec.bands)), list(spec.bands),
                  first[spec.lon].to_numpy(np.float64), first[spec.lat].to_numpy(np.float64),
                  first["_date"].dt.strftime("%Y-%m-%d").to_numpy().astype(str)), left


def cube_series(ds, rows: np.ndarray, cols: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> Series:
    """Series of a cube's pixels (rows, cols): a granule cube's gap-filled bands and NDVI, a
    GeoTIFF cube's values (gap-filled in `write_sequences`), and its static layers if any;
    lon / lat of the pixel centres."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    var = "filled" if "filled" in ds else "value"
    values = ds[var].values[:, :, rows, cols].transpose(2, 0, 1)  # (n, time, band)
    bands = [str(b) for b in ds.band.values]
    if "ndvi" in ds:
        values = np.concatenate([values, ds["ndvi"].values[:, rows, cols].T[..., None]], axis=2)
        bands.append("ndvi")
    static, names = None, []
    if "static" in ds:
        static = ds["static"].values[:, rows, cols].T.astype(np.float32)  # (n, S)
        names = [str(s) for s in ds.static_band.values]
    x, y = ds.x.values[cols], ds.y.values[rows]
    lon, lat = transform(CRS.from_string(ds.attrs["crs"]), "EPSG:4326", x.tolist(), y.tolist())
    return Series(ids, labels, values.astype(np.float32), bands, np.asarray(lon), np.asarray(lat),
                  np.full(len(rows), str(ds.time.values[0])[:10]), static, names)


def pixel_series(ds, name: str, spec: LabelRaster, quarantine: Quarantine) -> Series:
    """The pixels of cube `name` that the label raster labels, as series: the raster resampled
    onto the cube's grid (its crs and transform attributes) by nearest neighbour."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import Resampling, reproject

    with rasterio.open(spec.path) as src:
        raw = src.read(1)
        on_grid = np.full((ds.sizes["y"], ds.sizes["x"]), -1, np.int64)
        reproject(raw.astype(np.int64), on_grid, src_transform=src.transform, src_crs=src.crs,
                  src_nodata=src.nodata, dst_transform=Affine(*ds.attrs["transform"]),
                  dst_crs=CRS.from_string(ds.attrs["crs"]), dst_nodata=-1, resampling=Resampling.nearest)
    names = np.array([spec.classes.get(str(v), "") for v in range(int(on_grid.max()) + 2)], dtype=object)
    label = np.where(on_grid >= 0, names[np.maximum(on_grid, 0)], "")
    rows, cols = np.nonzero(label != "")
    if not len(rows):
        # one record per cube: a raster wider than the cubes (CDL is national) is normal, its
        # pixels off the cubes are not quarantined one by one
        quarantine.add(spec.path, f"no labelled pixel: no value of data.modis.labels.classes on cube {name}")
    ids = np.array([f"{name}:{r}:{c}" for r, c in zip(rows, cols, strict=True)], dtype=object)
    return cube_series(ds, rows, cols, ids, label[rows, cols].astype(str))


@dataclass
class Points:
    """The usable rows of a point table: ids, class names, x / y (in the table's CRS), dates
    (NaT: undated) and their lines in the file."""

    ids: np.ndarray
    labels: np.ndarray
    x: np.ndarray
    y: np.ndarray
    dates: np.ndarray
    lines: np.ndarray


def read_points(spec: PointLabels, quarantine: Quarantine) -> tuple[Points, list[dict[str, Any]]]:
    """The point table's usable rows, and the `unused` records of its columns not used; a row
    without a label, with coordinates that are not numbers or with an unparseable date is
    quarantined with its line.

    Raises:
        PipelineError: a configured column is missing (the message lists the file's columns).
    """
    table = pd.read_csv(spec.path, dtype=str, keep_default_na=False)
    used = [c for c in (spec.id, spec.label, spec.x, spec.y, spec.date) if c]
    missing = [c for c in used if c not in table.columns]
    if missing:
        raise PipelineError(f"{spec.path}: no column {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(map(repr, table.columns))}); fix data.modis.points")
    left = audit(spec.path, "columns", [c for c in table.columns if c not in used], spec.unused)
    lines = np.arange(len(table)) + 2  # the header is line 1
    x = pd.to_numeric(table[spec.x], errors="coerce").to_numpy(np.float64)
    y = pd.to_numeric(table[spec.y], errors="coerce").to_numpy(np.float64)
    dates = pd.to_datetime(table[spec.date] if spec.date else pd.Series([None] * len(table), dtype=object),
                           errors="coerce", format="ISO8601").to_numpy("datetime64[D]")
    labels = table[spec.label].str.strip().to_numpy(str)
    checks = {f"no label: column {spec.label} is empty": labels == "",
              f"not a number: columns {spec.x} / {spec.y} hold the point's coordinates":
                  ~(np.isfinite(x) & np.isfinite(y))}
    if spec.date:
        checks[f"unparseable date in column {spec.date}: write YYYY-MM-DD"] = np.isnat(dates)
    bad = np.zeros(len(table), bool)
    for reason, mask in checks.items():
        for k in np.flatnonzero(mask & ~bad):
            quarantine.add(spec.path, reason, line=int(lines[k]), raw=table.iloc[k].to_dict())
        bad |= mask
    ids = table[spec.id].to_numpy(str) if spec.id else lines.astype(str)
    ok = ~bad
    return Points(ids[ok], labels[ok], x[ok], y[ok], dates[ok], lines[ok]), left


def locate(ds, x: np.ndarray, y: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel (row, col) of a cube that holds each point (x, y in `crs`; "cube": the cube's
    own) and whether the point is on the cube's grid at all (row and col are 0 where not)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    if crs != "cube" and len(x):
        x, y = (np.asarray(v, np.float64) for v in transform(CRS.from_string(crs), CRS.from_string(
            ds.attrs["crs"]), x.tolist(), y.tolist()))
    dx, _, x0, _, dy, y0 = ds.attrs["transform"]
    with np.errstate(invalid="ignore"):  # a point the projection cannot map is inf / NaN: off the grid
        col, row = np.floor((x - x0) / dx), np.floor((y - y0) / dy)
    on = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < ds.sizes["x"]) & (row >= 0) \
        & (row < ds.sizes["y"])
    return np.where(on, row, 0).astype(np.int64), np.where(on, col, 0).astype(np.int64), on


def cube_period(ds) -> tuple[np.datetime64, np.datetime64]:
    """The days a cube's composites cover: [first date, last date + its last step) (one composite:
    8 days)."""
    t = ds.time.values.astype("datetime64[D]")
    step = t[-1] - t[-2] if len(t) > 1 else np.timedelta64(8, "D")
    return t[0], t[-1] + step


class Labeller:
    """The labelled series of every cube a run builds: its pixels that data.modis.labels (a class
    raster) names and the pixels that hold data.modis.points. A point is taken by the first cube
    that holds it on its grid and in its period; `finish` quarantines the rest with the reason."""

    def __init__(self, cfg: ModisConfig, quarantine: Quarantine) -> None:
        self.cfg, self.quarantine = cfg, quarantine
        self.points, self.unused = read_points(cfg.points, quarantine) if cfg.points else (None, [])
        n = len(self.points.ids) if self.points else 0
        self.waiting = np.ones(n, bool)  # not yet taken by a cube
        self.why = np.full(n, "", dtype=object)  # why a cube did not take it, when one was near

    def label(self, ds, name: str) -> list[Series]:
        """The labelled series of cube `name` (a tile, or "geotiff")."""
        out = [pixel_series(ds, name, self.cfg.labels, self.quarantine)] if self.cfg.labels else []
        return out + ([self._points_on(ds, name)] if self.points else [])

    def _points_on(self, ds, name: str) -> Series:
        p = self.points
        rows, cols, on = locate(ds, p.x, p.y, self.cfg.points.crs)
        first, end = cube_period(ds)
        dated = np.isnat(p.dates) | ((p.dates >= first) & (p.dates < end))
        self.why[on & ~dated] = f"dated outside cube {name}'s period ({first} to {end - 1})"
        take = np.flatnonzero(on & dated & self.waiting)
        self.waiting[take] = False
        return cube_series(ds, rows[take], cols[take], p.ids[take].astype(object), p.labels[take])

    def finish(self) -> list[dict[str, Any]]:
        """Quarantine the points no cube took; the `unused` records of the point table."""
        p, spec = self.points, self.cfg.points
        for k in np.flatnonzero(self.waiting):
            reason = self.why[k] or (f"off every cube's grid: ({p.x[k]}, {p.y[k]}) in {spec.crs} is on no "
                                     "cube's pixels; check data.modis.points.x / y / crs")
            self.quarantine.add(spec.path, reason, line=int(p.lines[k]))
        return self.unused


def write_sequences(series: Series, cfg: DataConfig, writer: DatasetWriter, quarantine: Quarantine,
                    source: str):
    """NDVI, gap fill, windows, split; write the parts. (splits, schema, classes, shapes, extra).

    Raises:
        PipelineError: no series is usable.
    """
    m, values, bands = cfg.modis, series.values, list(series.bands)
    if m.ndvi and "ndvi" not in bands and {"red", "nir"} <= set(bands):
        red, nir = values[..., bands.index("red")], values[..., bands.index("nir")]
        values = np.concatenate([values, ((nir - red) / (nir + red))[..., None]], axis=2)
        bands.append("ndvi")
    values = gap_fill(values, axis=1)
    keep = usable(series, values, quarantine, source)
    if not keep.any():
        raise PipelineError(f"{source}: no usable series ({quarantine.by_reason()})")
    x = windows(values[keep], m.window, m.stride)
    if series.static is not None:  # the same static values closing every step
        static = series.static[keep][:, None, :]
        x = np.concatenate([x, np.broadcast_to(static, (*x.shape[:2], static.shape[2]))], axis=2)
    names = series.labels[keep]
    classes = sorted(set(names.tolist()))
    labels = pd.Index(classes).get_indexer(names).astype(np.int32)
    ids, lon, lat, start = (a[keep] for a in (series.ids, series.lon, series.lat, series.start))
    split = stratified_codes(labels, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    order = np.random.default_rng(cfg.seed + 1).permutation(len(labels))  # parts mix the classes
    t, f = x.shape[1:]
    splits: dict[str, Any] = {}
    for k, name in enumerate(SPLITS):
        rows = order[split[order] == k]
        per_class = {c: int((labels[rows] == i).sum()) for i, c in enumerate(classes)}
        splits[name] = {"parts": [], "classes": per_class}
        for index, begin in enumerate(range(0, len(rows), cfg.part_rows)):
            r = rows[begin:begin + cfg.part_rows]
            flat = pa.array(x[r].reshape(-1), pa.float32())
            part = pa.table({
                "id": ids[r], "label": labels[r],
                "features": pa.FixedSizeListArray.from_arrays(flat, t * f).cast(pa.list_(pa.float32())),
                "lon": lon[r], "lat": lat[r], "start": start[r]}, schema=SCHEMA)
            n = write_part(writer.part_uri(name, index), part)
            splits[name]["parts"].append({"index": index, "rows": n})
    train = x[split == 0].reshape(-1, f)
    stats = {"mean": np.nanmean(train, 0).tolist(), "std": np.maximum(np.nanstd(train, 0), 1e-6).tolist()}
    names = [f"{b}@{w}" for w in range(m.window) for b in bands] + series.static_names
    extra = {"feature_names": names, "feature_stats": stats,
             "steps": t, "dates_per_series": values.shape[1],
             "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)}}
    return splits, SCHEMA, classes, {"features": [t, f], "label": []}, extra


def usable(series: Series, values: np.ndarray, quarantine: Quarantine, source: str) -> np.ndarray:
    """Which gap-filled series can become sequences: not those with a band never observed, nor
    those without a value of a static layer (both quarantined with the series id)."""
    empty = np.isnan(values).all(axis=1).any(axis=1)  # some band never observed
    for sid in series.ids[empty]:
        quarantine.add(source, f"all fill: series {sid} has a band with no value")
    if series.static is None:
        return ~empty
    holes = np.isnan(series.static) & ~empty[:, None]
    for k in np.flatnonzero(holes.any(axis=1)):
        missing = ", ".join(n for n, h in zip(series.static_names, holes[k], strict=True) if h)
        quarantine.add(source, f"no static value: series {series.ids[k]} has no {missing} (nodata there)")
    return ~empty & ~holes.any(axis=1)
