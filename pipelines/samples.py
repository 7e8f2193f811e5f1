"""Labelled point samples (one row per sample and date, one column per band) → window
sequences for the sequence models (Jia et al. KDD'19 §4.3).

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from advorch.config import DataConfig
from advorch.pipelines.common import SPLITS, PipelineError, stratified_codes
from advorch.pipelines.modis import gap_fill
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


def concat(parts: list[Series]) -> Series:
    """Series from several sources as one (same dates count and bands).

    Raises:
        PipelineError: the sources disagree on dates or bands.
    """
    if len({(p.values.shape[1], tuple(p.bands)) for p in parts}) > 1:
        raise PipelineError("the label raster's pixels and the samples have different dates or bands: "
                            "build them as two datasets")
    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return Series(joined("ids"), joined("labels"), joined("values"), parts[0].bands, joined("lon"),
                  joined("lat"), joined("start"))


def read_samples(cfg: DataConfig, quarantine: Quarantine) -> Series:
    """The sample table as series; rows and samples that cannot be used are quarantined.

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
                  first["_date"].dt.strftime("%Y-%m-%d").to_numpy().astype(str))


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
    empty = np.isnan(values).all(axis=1).any(axis=1)  # some band never observed
    for sid in series.ids[empty]:
        quarantine.add(source, f"all fill: series {sid} has a band with no value")
    keep = ~empty
    if not keep.any():
        raise PipelineError(f"{source}: no usable series ({quarantine.by_reason()})")
    x = windows(values[keep], m.window, m.stride)
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
    extra = {"feature_names": [f"{b}@{w}" for w in range(m.window) for b in bands], "feature_stats": stats,
             "steps": t, "dates_per_series": values.shape[1],
             "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)}}
    return splits, SCHEMA, classes, {"features": [t, f], "label": []}, extra
