"""The MODIS pipeline (pipelines/rasters.py, modis.py, samples.py) on the real data in
../shared/data/modis: the MOD09A1 HDF4 granule, the 23-date MOD13A1 NDVI GeoTIFF stack and
the sits Mato Grosso samples; bad input on granules this test writes itself with pyhdf
(copies of the real granule under other dates, with a band dropped, another grid, pixels
set to fill; and truncated or corrupt files), because the real data has no such cases.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from blake3 import blake3

from advorch.config import load_config
from advorch.pipelines import modis
from advorch.pipelines.rasters import read_hdf_granule
from advorch.pipelines.shards import read_manifest, read_split
from tests.conftest import ROOT, SHARED_DATA

MODIS = SHARED_DATA / "modis"
GRANULE = MODIS / "hdf" / "MOD09A1.A2017193.h18v04.006.2017202035302.hdf"
NDVI = MODIS / "mod13a1_ndvi_2016"
SITS = MODIS / "sits" / "samples_mt_9classes_long.csv"
BANDS = ["mir", "blue", "nir", "red", "evi", "ndvi"]


@pytest.fixture(scope="module")
def real() -> Path:
    if not GRANULE.is_file():
        pytest.skip(f"real MODIS data not found at {MODIS}")
    return MODIS


def config(output: Path, *overrides: str):
    return load_config(ROOT / "configs" / "modis_sits.toml", [
        f'data.output="{output}"', f'data.modis.granules=["{GRANULE}"]',
        f'data.modis.geotiffs=["{NDVI}/*.tif"]', f'data.modis.samples.path="{SITS}"', *overrides])


@pytest.fixture(scope="module")
def built(tmp_path_factory, real, dask_address) -> Path:
    out = tmp_path_factory.mktemp("modis") / "shards"
    modis.run(config(out).data, dask_address=dask_address)
    return out


def open_cube(root: Path, name: str):
    import xarray as xr

    m = read_manifest(str(root))
    return xr.open_zarr(root / m["side_files"][f"cube-{name}.zarr"], consolidated=False)


# ---------------------------------------------------------------- the real granule


def test_granule_bands_scale_fill_and_grid_corners(real) -> None:
    from pyhdf.SD import SD, SDC

    g = read_hdf_granule(str(GRANULE))
    assert g["reflectance"].shape == (7, 73, 66)
    assert g["date"] == dt.date(2017, 7, 12) and g["tile"] == "h18v04"
    sd = SD(str(GRANULE), SDC.READ)
    raw = sd.select("sur_refl_b02").get()
    meta = sd.attributes()["StructMetadata.0"]
    sd.end()
    np.testing.assert_allclose(g["reflectance"][1], raw * 1e-4, rtol=1e-6)  # scale 1e-4, offset 0
    assert (np.isnan(g["reflectance"][1]) == (raw == -28672)).all()
    # corners: the outer edges of the corner pixels are the metadata's UL / LR points
    ul = [float(v) for v in re.search(r"UpperLeftPointMtrs=\(([^)]*)\)", meta).group(1).split(",")]
    lr = [float(v) for v in re.search(r"LowerRightMtrs=\(([^)]*)\)", meta).group(1).split(",")]
    x, y = g["grid"].coords()
    dx, dy = x[1] - x[0], y[1] - y[0]
    assert dx == pytest.approx((lr[0] - ul[0]) / 66) and dy == pytest.approx((lr[1] - ul[1]) / 73)
    assert x[0] - dx / 2 == pytest.approx(ul[0]) and y[0] - dy / 2 == pytest.approx(ul[1])
    assert x[-1] + dx / 2 == pytest.approx(lr[0]) and y[-1] + dy / 2 == pytest.approx(lr[1])
    assert dx == pytest.approx(463.3127, abs=1e-3)  # the MODIS 500 m sinusoidal pixel
    assert "+proj=sinu" in g["grid"].crs and "+R=6371007.181" in g["grid"].crs


def test_granule_cube_in_zarr_keeps_the_grid(built: Path) -> None:
    cube = open_cube(built, "h18v04")
    assert dict(cube.sizes) == {"time": 1, "band": 7, "y": 73, "x": 66}
    assert list(cube.band.values) == [f"sur_refl_b0{i}" for i in range(1, 8)]
    assert "+proj=sinu" in cube.attrs["crs"]
    g = read_hdf_granule(str(GRANULE))
    refl = cube["filled"].where(cube["valid"]).values[0]  # the masked observations
    valid = ~g["fill"] & ~g["cloud"] & ~g["shadow"]
    np.testing.assert_array_equal(cube["valid"].values[0], valid)  # fill, cloud and shadow masked
    np.testing.assert_array_equal(np.isnan(refl).any(0), ~valid)
    np.testing.assert_allclose(refl[:, valid], g["reflectance"][:, valid])
    assert "reflectance" not in cube  # not stored twice: filled.where(valid) is exactly it


def test_unscaled_read_scales_into_the_same_cube(real) -> None:
    """The pipeline decodes unscaled (raw int16 + each band's scale/offset) and scales into the
    cube's own memory: the same cube as from the scaled read, to the bit."""
    from advorch.pipelines.rasters import scale_into
    from advorch.pipelines.shards import Quarantine

    g = read_hdf_granule(str(GRANULE))
    r = read_hdf_granule(str(GRANULE), scaled=False)
    assert "reflectance" not in r and [a.dtype for a in r["raw"]] == [np.dtype(np.int16)] * 7
    assert r["scale"] == [1e-4] * 7 and r["offset"] == [0.0] * 7
    out = np.empty_like(g["reflectance"])
    scale_into(out, r["raw"], r["scale"], r["offset"])
    seen = ~np.isnan(g["reflectance"])
    np.testing.assert_array_equal(out[seen], g["reflectance"][seen])
    m = load_config(None, ['data.kind="modis"']).data.modis
    scaled = modis.tile_cube([{"path": str(GRANULE), **g}], m, Quarantine())
    assert modis.tile_cube([{"path": str(GRANULE), **r}], m, Quarantine()).identical(scaled)


def test_struct_metadata_read_in_one_go_is_pyhdfs_text(real) -> None:
    from pyhdf.SD import SD, SDC

    from advorch.pipelines.rasters import _text_attr

    sd = SD(str(GRANULE), SDC.READ)
    try:
        assert _text_attr(sd, "StructMetadata.0") == sd.attributes()["StructMetadata.0"]
        assert _text_attr(sd, "NoSuchAttribute") is None
    finally:
        sd.end()


def test_gap_fill_is_per_series_linear_interpolation() -> None:
    """Against np.interp pixel by pixel: linear inside, nearest valid value at the ends."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (30, 3, 4, 5)).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = np.nan
    values[:, 0, 0, 0] = np.nan  # never observed
    values[:-1, 0, 0, 1] = np.nan  # observed once, on the last date
    filled = modis.gap_fill(values)
    t = np.arange(30)
    for series, out in zip(np.moveaxis(values, 0, -1).reshape(-1, 30),
                           np.moveaxis(filled, 0, -1).reshape(-1, 30), strict=True):
        ok = ~np.isnan(series)
        if not ok.any():
            assert np.isnan(out).all()
            continue
        np.testing.assert_array_equal(out[ok], series[ok])
        np.testing.assert_allclose(out, np.interp(t, t[ok], series[ok]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(modis.gap_fill(np.moveaxis(values, 0, 2), axis=2),
                                  np.moveaxis(filled, 0, 2))


def test_never_observed_pixels_are_one_record_per_row_as_column_runs() -> None:
    """A generated validity mask (the real granule has one such pixel): row 1 holds runs 0-2, 5 and
    9-29 (every other column), row 3 nothing; every never-valid pixel is in exactly one run."""
    import xarray as xr

    from advorch.pipelines.shards import Quarantine

    valid = np.ones((2, 4, 30), bool)
    valid[:, 1, [0, 1, 2, 5, *range(9, 30, 2)]] = False
    valid[0, 2, 4] = False  # invalid on one date only: not a hole
    ds = xr.Dataset({"valid": (("time", "y", "x"), valid)},
                    coords={"time": np.array(["2017-01-01", "2017-01-09"], dtype="datetime64[ns]"),
                            "y": np.arange(4.0), "x": np.arange(30.0)},
                    attrs={"tile": "h18v04", "granules": {"2017-01-01": "a", "2017-01-09": "b"}})
    q = Quarantine()
    modis.record_holes(ds, q)
    assert len(q) == 1
    rec = q.records[0]
    runs = [[0, 2], [5, 5], *[[c, c] for c in range(9, 30, 2)]]
    assert rec["raw"] == {"row": 1, "y": 1.0, "pixels": 15, "col_runs": runs}
    assert rec["reason"].startswith("no valid observation: row 1, 15 pixel(s) at col 0-2, 5, 9, 11, 13, 15, "
                                    "17, 19 …: ")
    covered = {c for a, b in rec["raw"]["col_runs"] for c in range(a, b + 1)}
    assert covered == set(np.flatnonzero(~valid.any(0)[1]))


def test_gap_fill_in_blocks_matches_one_pass(monkeypatch) -> None:
    """Series are filled a block at a time (bounded temporaries): 5 blocks of 256, one of them
    with nothing missing (skipped), give exactly the one-block result; the input is untouched."""
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1, (30, 3, 20, 20)).astype(np.float32)  # 1,200 series
    values[rng.random(values.shape) < 0.3] = np.nan
    flat = values.reshape(30, -1)
    flat[:, 256:512] = rng.uniform(0, 1, (30, 256))  # the second block: nothing to fill
    flat[:, 700] = np.nan  # never observed
    before = values.copy()
    whole = modis.gap_fill(values)
    monkeypatch.setattr(modis, "FILL_BLOCK_BYTES", 1)  # → the 256-series floor per block
    blocked = modis.gap_fill(values)
    np.testing.assert_array_equal(blocked, whole)
    np.testing.assert_array_equal(values, before)
    assert np.isnan(blocked.reshape(30, -1)[:, 700]).all()
    assert not np.isnan(np.delete(blocked.reshape(30, -1), 700, axis=1)).any()


# ---------------------------------------------------------------- the real GeoTIFF stack


def test_ndvi_stack_becomes_a_23_date_cube_with_nodata_masked(built: Path) -> None:
    cube = open_cube(built, "geotiff")
    # (time, band, y, x): 122 rows and 65 columns per file
    assert dict(cube.sizes) == {"time": 23, "band": 1, "y": 122, "x": 65}
    files = sorted(NDVI.glob("*.tif"))
    expected = [np.datetime64(dt.date(2016, 1, 1) + dt.timedelta(int(f.stem[-3:]) - 1), "ns") for f in files]
    assert list(cube.time.values) == expected  # days 1, 17, …, 353
    values = cube["value"].values[:, 0]
    for k, f in enumerate(files):
        with rasterio.open(f) as r:
            raw = r.read(1)
            nodata = raw == r.nodata
            scale = 1e-4 if raw.dtype.kind == "i" else 1.0  # the last two files are float, scaled
        assert (np.isnan(values[k]) == nodata).all()
        np.testing.assert_allclose(values[k][~nodata], raw[~nodata] * scale, rtol=1e-6)
    assert np.nanmax(values) <= 1.0 and np.nanmin(values) >= -0.2  # one NDVI scale across dtypes


# ---------------------------------------------------------------- the real sits samples


def test_sits_samples_become_window_sequences(built: Path) -> None:
    m = read_manifest(str(built))
    assert m["rows"] == 2115 and len(m["classes"]) == 9 and m["shapes"]["features"] == [22, 12]
    assert m["splits"]["test"]["rows"] == 1058  # 50/50, stratified
    raw = pd.read_csv(SITS, dtype={"sample_id": str}).sort_values(["sample_id", "date"])
    rows = read_split(str(built), "train", manifest=m).to_pandas().set_index("id")
    sid = rows.index[0]
    mine = raw[raw["sample_id"] == sid][BANDS].to_numpy(np.float32)  # (23, 6)
    expected = np.concatenate([mine[:-1], mine[1:]], axis=1)  # step t: composites t and t+1
    np.testing.assert_allclose(np.asarray(rows.loc[sid, "features"]).reshape(22, 12), expected, rtol=1e-6)
    assert m["classes"][rows.loc[sid, "label"]] == raw[raw["sample_id"] == sid]["label"].iloc[0]


# ---------------------------------------------------------------- bad input (generated granules)


def write_granule(dst: Path, *, drop: tuple[str, ...] = (), shift: float = 0.0,
                  fill_pixel: tuple[int, int] | None = None) -> Path:
    """A copy of the real granule under another name, minus bands, on a shifted grid, or with one
    pixel set to fill in every band."""
    from pyhdf.SD import SD, SDC

    src = SD(str(GRANULE), SDC.READ)
    out = SD(str(dst), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    for name, (_, shape, typ, _) in src.datasets().items():
        if name in drop:
            continue
        s = src.select(name)
        a = s.get()
        attrs = s.attributes(full=1)
        if fill_pixel and name.startswith("sur_refl_b0"):
            a[fill_pixel] = attrs["_FillValue"][0]
        d = out.create(name, typ, shape)
        d[:] = a
        for k, (v, _, t, _) in attrs.items():
            d.attr(k).set(t, v)
        d.endaccess()
    meta = src.attributes()["StructMetadata.0"]
    if shift:
        meta = re.sub(r"UpperLeftPointMtrs=\(([\d.]+)",
                      lambda m: f"UpperLeftPointMtrs=({float(m[1]) + shift:f}", meta)
    out.attr("StructMetadata.0").set(SDC.CHAR8, meta)
    out.end()
    src.end()
    return dst


@pytest.mark.parametrize("shared", [False, True], ids=["cluster", "local-processes-shared-stack"])
def test_bad_granules_are_quarantined_and_the_run_goes_on(tmp_path: Path, real, dask_address,
                                                          shared: bool) -> None:
    """On a cluster (arrays come back from the workers) and locally in worker processes that
    decode into a shared stack (a date gap and an off-grid granule: its slots are copied into the
    cube, the off-grid one comes back whole and is rejected by the tile's grid vote)."""
    name = "MOD09A1.A2017{doy}.h18v04.006.test.hdf"
    for doy in ("193", "201", "217"):  # 209 is missing: a date gap
        write_granule(tmp_path / name.format(doy=doy), fill_pixel=(5, 7))
    other_grid = write_granule(tmp_path / name.format(doy="225"), shift=5000.0)
    no_b07 = write_granule(tmp_path / name.format(doy="233"), drop=("sur_refl_b07",))
    truncated = tmp_path / name.format(doy="241")
    truncated.write_bytes(GRANULE.read_bytes()[: GRANULE.stat().st_size // 3])
    corrupt = tmp_path / name.format(doy="249")
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    cfg = config(tmp_path / "out", f'data.modis.granules=["{tmp_path}/*.hdf"]', "data.modis.geotiffs=[]",
                 "data.modis.mask_clouds=false", f"data.modis.process_min_mb={0 if shared else 1e9}")
    cfg.data.modis.samples = None
    summary = modis.run(cfg.data, dask_address=None if shared else dask_address)
    assert summary.manifest["incremental"]["decoded_in_processes"] is shared
    records = [json.loads(x) for x in
               (tmp_path / "out" / summary.manifest["quarantine"]["file"]).read_text().splitlines()]
    reasons = {(Path(r["source"]).name, r["reason"].split(":")[0]) for r in records}
    assert (other_grid.name, "grid differs") in reasons
    assert (no_b07.name, "missing band") in reasons
    assert {(truncated.name, "not a readable HDF4 file"), (truncated.name, "HDF4 read failed")} & reasons
    assert {(corrupt.name, "not a readable HDF4 file"), (corrupt.name, "HDF4 read failed")} & reasons
    gap = [r for r in records if r["reason"].startswith("date gap")]
    assert [r["reason"].split(":")[1].split("(")[0].strip() for r in gap] == ["no composite for 2017-07-28"]
    pixel = [r for r in records if r["reason"].startswith("no valid observation")]
    assert [r["reason"] for r in pixel] == [
        "no valid observation: row 5, 1 pixel(s) at col 7: fill, cloud or shadow on every date; left NaN"]
    cube = open_cube(tmp_path / "out", "h18v04")
    assert pixel[0]["raw"] == {"row": 5, "y": float(cube.y[5]), "pixels": 1, "col_runs": [[7, 7]]}
    assert [str(t)[:10] for t in cube.time.values] == ["2017-07-12", "2017-07-20", "2017-07-28", "2017-08-05"]
    filled, refl = cube["filled"].values, cube["filled"].where(cube["valid"]).values
    assert np.isnan(refl[2]).all()  # the missing composite …
    np.testing.assert_allclose(filled[2], (filled[1] + filled[3]) / 2, rtol=1e-5)  # … gap-filled linearly
    assert np.isnan(filled[:, :, 5, 7]).all()  # a pixel never observed stays NaN
    assert cube["valid"].dtype == bool  # also without cloud masking


def test_processes_decoding_into_a_shared_stack_build_the_same_cube(tmp_path: Path, real) -> None:
    """A local run with enough pixels decodes in worker processes, into a memory-mapped stack per
    tile that becomes the cube itself when it holds every date in order (else its slots are
    copied in); the cubes are the ones a single thread builds, to the bit (here forced with
    process_min_mb=0 on copies of the real granule, two tiles)."""
    (tmp_path / "in").mkdir()
    for name in ("A2017185.h18v04", "A2017193.h18v04", "A2017201.h18v04",  # every date
                 "A2017193.h19v04", "A2017209.h19v04"):  # 2017-07-20 missing
        write_granule(tmp_path / "in" / f"MOD09A1.{name}.006.test.hdf", fill_pixel=(5, 7))
    cubes = []
    for mb in (0, 1e9):
        cfg = load_config(None, ['data.kind="modis"', f'data.output="{tmp_path}/out{mb:g}"',
                                 f'data.modis.granules=["{tmp_path}/in/*.hdf"]',
                                 f"data.modis.process_min_mb={mb}"])
        summary = modis.run(cfg.data)
        assert summary.manifest["incremental"]["decoded_in_processes"] is (mb == 0)
        cubes.append([open_cube(tmp_path / f"out{mb:g}", tile).load() for tile in ("h18v04", "h19v04")])
    (a18, a19), (b18, b19) = cubes
    assert a18.sizes["time"] == 3 and a18.identical(b18)  # every date: the stack is the cube
    assert a19.sizes["time"] == 3 and a19.identical(b19)  # a date gap: the slots copied into it
    assert np.isnan(a19["filled"].where(a19["valid"]).values[1]).all()
    assert not list(Path("/dev/shm").glob("advorch-modis-*"))  # the stacks are gone with the run


# ---------------------------------------------------------------- training on the sequences


@pytest.mark.parametrize("regime", [[], ['regime.name="attention_at"', 'regime.filter="sf"'],
                                    ['regime.name="attention_at"', 'regime.filter="cat"'],
                                    ['regime.name="at_vat"', 'regime.filter="sf"']])
def test_sequence_regimes_train_on_feature_windows(built: Path, regime: list[str]) -> None:
    import torch

    from advorch.trainers.loop import setup_worker, train_epoch
    from advorch.trainers.tasks.classification import Serving

    cfg = config(built, "model.hidden_dim=16", "train.batch_size=128", *regime)
    w = setup_worker(cfg, str(built))
    features = w.train.inputs["features"]
    assert features.shape[1:] == (22, 12) and w.model.embedding is None
    assert w.model.perturbable["features"].mask is None  # fixed-length windows: no padding, no mask
    # the model standardises its input with the train split's statistics
    stats = read_manifest(str(built))["feature_stats"]
    batch = {"features": features[:4]}
    z = w.model.embed(batch)["features"]
    np.testing.assert_allclose(z[0, 0].numpy(), (features[0, 0].numpy() - stats["mean"])
                               / np.array(stats["std"]), rtol=1e-4, atol=1e-5)
    before = [p.detach().clone() for p in w.model.parameters()]
    metrics = train_epoch(w, 0)
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, w.model.parameters(), strict=True))
    probs = Serving(w.model).eval()(features[:3])  # the logged model takes raw features
    assert probs.shape == (3, 9) and torch.allclose(probs.sum(1), torch.ones(3))


def test_label_raster_labels_the_tile_pixels_by_nearest_neighbour(tmp_path: Path, real, dask_address) -> None:
    """A class raster in lon/lat (generated: the real data has no CDL) over the real granule:
    west half class 1 (corn), east half 5 (soybean), a nodata border; 9 = unmapped."""
    from rasterio.transform import from_bounds
    from rasterio.warp import transform

    g = read_hdf_granule(str(GRANULE))
    x, y = g["grid"].coords()
    lon, lat = transform(g["grid"].crs, "EPSG:4326", [x[0], x[-1], x[0], x[-1]], [y[0], y[0], y[-1], y[-1]])
    w, s, e, n = min(lon) - 0.01, min(lat) - 0.01, max(lon) + 0.01, max(lat) + 0.01
    raster = np.full((200, 200), 1, np.uint8)
    raster[:, 100:] = 5
    raster[:5] = 255  # nodata
    raster[190:] = 9  # a class the config does not map
    path = tmp_path / "cdl.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:4326", transform=from_bounds(w, s, e, n, 200, 200)) as dst:
        dst.write(raster, 1)
    cfg = config(tmp_path / "out", "data.modis.geotiffs=[]", "data.modis.window=1",
                 f'data.modis.labels={{path="{path}", classes={{"1" = "corn", "5" = "soybean"}}}}',
                 "data.modis.mask_clouds=false")
    cfg.data.modis.samples = None
    summary = modis.run(cfg.data, dask_address=dask_address)
    df = pd.concat([read_split(str(tmp_path / "out"), s).to_pandas() for s in ("train", "val", "test")])
    classes = summary.manifest["classes"]
    assert classes == ["corn", "soybean"]
    assert summary.manifest["shapes"]["features"] == [1, 8]  # 7 bands + NDVI
    # each pixel's class is the raster's class at its centre (nearest neighbour)
    with rasterio.open(path) as src:
        for _, r in df.sample(50, random_state=0).iterrows():
            row, col = src.index(r["lon"], r["lat"])
            assert {1: "corn", 5: "soybean"}[int(raster[row, col])] == classes[r["label"]]
    assert len(df) < 73 * 66 and set(df["label"]) == {0, 1}  # border pixels unlabelled
    tile, row, col = df["id"].iloc[0].split(":")
    cube = open_cube(tmp_path / "out", "h18v04")
    np.testing.assert_allclose(np.asarray(df["features"].iloc[0])[:7],
                               cube["filled"].values[0, :, int(row), int(col)], rtol=1e-6)


def test_series_explanation_fig4(built: Path, tmp_path: Path) -> None:
    """NDVI vs class mean and attention clean vs perturbed (paper Fig. 4) on trained weights."""
    import torch

    from advorch.trainers.data import make_batch
    from advorch.trainers.explain_series import class_mean_ndvi, explain_series, series_plot
    from advorch.trainers.loop import setup_worker, train_epoch

    cfg = config(built, "model.hidden_dim=16", "train.batch_size=64", 'regime.name="attention_at"')
    w = setup_worker(cfg, str(built))
    for epoch in range(2):
        train_epoch(w, epoch)
    m = read_manifest(str(built))
    col = m["feature_names"].index("ndvi@0")
    features = w.train.inputs["features"]
    means = class_mean_ndvi(features, w.train.labels, col, len(m["classes"]))
    batch = make_batch(w.train, torch.arange(3), torch.device("cpu"))
    items = explain_series(w.model, w.task, batch, 1.0, col, means)
    for i, x in enumerate(items):
        assert x.ndvi == features[i, :, col].tolist()  # the raw NDVI of the sample
        same_class = features[w.train.labels == x.label]
        assert x.class_mean == pytest.approx(same_class[:, :, col].mean(0).tolist())
        assert sum(x.attention) == pytest.approx(1.0, abs=1e-5)
        assert set(x.perturbed_attention) == {"at", "attention_at"}
        assert all(sum(a) == pytest.approx(1.0, abs=1e-5) for a in x.perturbed_attention.values())
        assert 0.0 <= x.shift("at") <= 1.0 and x.shift("at") > 0  # ε = 1 sd moves the attention
    series_plot(items, m["classes"], 1.0, str(tmp_path / "series.png"))
    assert (tmp_path / "series.png").stat().st_size > 10_000


def test_new_dates_and_tiles_extend_without_decoding_old_granules(tmp_path: Path, real, dask_address) -> None:
    """Copies of the real granule named for other dates and another tile (the date and tile come
    from the file name)."""
    import shutil

    def add(tile: str, doy: int) -> None:
        shutil.copyfile(GRANULE, tmp_path / "in" / f"MOD09A1.A2017{doy:03d}.{tile}.006.copy.hdf")

    (tmp_path / "in").mkdir()
    for doy in (193, 201, 217):  # 209 missing: a date gap
        add("h18v04", doy)
    cfg = config(tmp_path / "out", f'data.modis.granules=["{tmp_path}/in/*.hdf"]', "data.modis.geotiffs=[]",
                 "data.modis.mask_clouds=false")
    cfg.data.modis.samples = None
    first = modis.run(cfg.data, dask_address=dask_address)
    assert first.manifest["incremental"]["granules_decoded"] == 3
    held = first.manifest["cubes"]["h18v04"]["granules"]  # hashed beside the decoding, then joined
    assert len(held) == 3 and held == {p: blake3(Path(p).read_bytes()).hexdigest() for p in held}
    assert held == {s["path"]: s["blake3"] for s in first.manifest["sources"]}
    old = open_cube(tmp_path / "out", "h18v04").load()
    old_side = first.manifest["side_files"]["cube-h18v04.zarr"]

    add("h18v04", 225)  # a new date for the tile …
    second = modis.run(cfg.data, dask_address=dask_address)
    st = second.manifest["incremental"]
    assert st["granules_decoded"] == 1 and st["tiles_extended"] == 1  # … decodes only itself
    cube = open_cube(tmp_path / "out", "h18v04")
    assert [str(t)[:10] for t in cube.time.values] == ["2017-07-12", "2017-07-20", "2017-07-28",
                                                     "2017-08-05", "2017-08-13"]
    for k in (0, 1, 3):  # the old dates hold the same values, read back from the old cube
        np.testing.assert_array_equal(cube["filled"].where(cube["valid"]).values[k],
                                      old["filled"].where(old["valid"]).values[k])
    gaps = [r for r in quarantine(tmp_path / "out") if r["reason"].startswith("date gap")]
    assert len(gaps) == 1 and "2017-07-28" in gaps[0]["reason"]  # still recorded

    assert modis.run(cfg.data, dask_address=dask_address).up_to_date
    add("h19v04", 193)  # a new tile: the old tile's cube is kept as it is
    third = modis.run(cfg.data, dask_address=dask_address)
    st = third.manifest["incremental"]
    assert st["granules_decoded"] == 1 and st["tiles_kept"] == 1
    kept = third.manifest["side_files"]["cube-h18v04.zarr"]
    assert kept == second.manifest["side_files"]["cube-h18v04.zarr"] != old_side
    assert set(third.manifest["cubes"]) == {"h18v04", "h19v04"}
    assert (tmp_path / "out" / kept).is_dir()
    assert not (tmp_path / "out" / old_side).exists()  # the replaced cube is gone
    # the one from scratch equals the incremental one
    scratch = config(tmp_path / "scratch", f'data.modis.granules=["{tmp_path}/in/*.hdf"]',
                     "data.modis.geotiffs=[]", "data.modis.mask_clouds=false")
    scratch.data.modis.samples = None
    modis.run(scratch.data, dask_address=dask_address)
    for tile in ("h18v04", "h19v04"):
        a, b = open_cube(tmp_path / "out", tile), open_cube(tmp_path / "scratch", tile)
        np.testing.assert_array_equal(a["filled"].values, b["filled"].values)


def quarantine(root: Path) -> list[dict]:
    m = read_manifest(str(root))
    return [json.loads(x) for x in (root / m["quarantine"]["file"]).read_text().splitlines()]


def test_granule_layers_left_unused_are_one_manifest_record(built: Path, tmp_path: Path,
                                                            dask_address: str) -> None:
    """The MOD09A1 granule's QC, angle and day-of-year layers are not data.modis.bands nor the state
    layer: the manifest says so, declared (configs/modis_sits.toml lists them in data.modis.unused);
    without the declaration the same record is undeclared, which the run summary shows."""
    names = ["sur_refl_day_of_year", "sur_refl_qc_500m", "sur_refl_raz", "sur_refl_szen", "sur_refl_vzen"]
    m = read_manifest(str(built))
    layers = [u for u in m["unused"] if u["what"] == "layers"]
    assert layers == [{"source": str(GRANULE), "what": "layers", "count": 5, "declared": True, "files": 1,
                       "names": names}]
    assert [u for u in m["unused"] if u["what"] != "layers"] == []  # the NDVI stack and sits: all used
    summary = modis.run(config(tmp_path / "out", "data.modis.unused=[]", "data.modis.geotiffs=[]").data,
                        dask_address=dask_address)
    assert [(u["names"], u["declared"]) for u in summary.unused] == [(names, False)]


def test_points_label_the_granule_pixels_that_hold_them(tmp_path: Path, real) -> None:
    """Labelled points (generated: the real data has no point table over the granule) in lon/lat at
    pixel centres of the real granule's tile, west half one class, east half the other; one off
    the tile is quarantined. Each point's series is the cube's pixel that holds it."""
    from rasterio.warp import transform

    g = read_hdf_granule(str(GRANULE))
    x, y = g["grid"].coords()
    rows, cols = np.meshgrid(np.arange(2, 73, 5), np.arange(2, 66, 5), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    lon, lat = transform(g["grid"].crs, "EPSG:4326", x[cols].tolist(), y[rows].tolist())
    points = pd.DataFrame({"id": [f"pt{r}_{c}" for r, c in zip(rows, cols, strict=True)], "longitude": lon,
                           "latitude": lat, "label": np.where(cols < 33, "west", "east")})
    points.loc[len(points)] = ["far", -60.0, -10.0, "west"]
    points.to_csv(tmp_path / "points.csv", index=False)
    cfg = config(tmp_path / "out", "data.modis.geotiffs=[]", "data.modis.window=1",
                 "data.modis.mask_clouds=false",
                 f'data.modis.points={{path="{tmp_path / "points.csv"}", id="id"}}')
    cfg.data.modis.samples = None
    summary = modis.run(cfg.data)
    df = pd.concat([read_split(str(tmp_path / "out"), s).to_pandas() for s in ("train", "val", "test")])
    assert summary.manifest["classes"] == ["east", "west"]
    assert summary.manifest["shapes"]["features"] == [1, 8]
    cube = open_cube(tmp_path / "out", "h18v04")
    for _, r in df.iterrows():
        row, col = map(int, r["id"][2:].split("_"))
        np.testing.assert_allclose(np.asarray(r["features"])[:7], cube["filled"].values[0, :, row, col],
                                   rtol=1e-6)
    off = [r for r in quarantine(tmp_path / "out") if r["source"] == str(tmp_path / "points.csv")]
    assert [(r["line"], r["reason"].split(":")[0]) for r in off] == [(len(points) + 1,
                                                                      "off every cube's grid")]
    records = quarantine(tmp_path / "out")
    fill = {r["reason"].split()[3] for r in records if r["reason"].startswith("all fill")}
    assert set(df["id"]) | fill == set(points["id"]) - {"far"}  # every other point: a row, or all fill
