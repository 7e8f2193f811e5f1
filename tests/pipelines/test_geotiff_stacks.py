"""Multi-band GeoTIFF stacks → (time, band) cubes plus static layers, and GeoTIFF cubes labelled
by points and by a label raster → window sequences that train (pipelines/rasters.py band_layout,
modis.geotiff_cube, samples.Labeller).

Generated inputs, written here with rasterio: the real data in ../shared/data/modis has
single-band GeoTIFFs only (the MOD13A1 NDVI stack, covered in test_modis.py) and no multi-band
stack, no band descriptions, no label raster and no point table.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from advorch.config import load_config
from advorch.pipelines import modis
from advorch.pipelines.common import PipelineError
from advorch.pipelines.shards import read_manifest, read_split

CRS = "EPSG:32721"  # UTM 21S: Mato Grosso, where the sits samples are
DATES = ["2016-01-01", "2016-01-17", "2016-02-02"]
CHANNELS = ["blue", "nir", "red", "swir"]  # sorted, as the cube's band coordinate
H, W, PIXEL, X0, Y0 = 24, 30, 500.0, 500_000.0, 8_800_000.0
NODATA = -3000
DESCRIPTIONS = [f"{d} {c}" for d in DATES for c in CHANNELS] + ["elevation"]  # 13 bands, date-major
PATTERN = r"(?P<date>\d{4}-\d{2}-\d{2}) (?P<channel>\w+)"


def stack_values() -> tuple[np.ndarray, np.ndarray]:
    """int16 reflectance (date, channel, y, x) ×1e4, west half a crop (high nir), east half forest
    (low red), noisy; one nodata value; and an int16 elevation in metres."""
    rng = np.random.default_rng(0)
    base = np.array([500, 3500, 800, 2000], np.int16)[None, :, None, None]
    refl = base + rng.integers(-300, 300, (len(DATES), len(CHANNELS), H, W)).astype(np.int16)
    refl[:, 1, :, : W // 2] += 2500  # crop: brighter nir
    refl[:, 2, :, W // 2:] -= 400  # forest: darker red
    refl[0, 2, 0, 0] = NODATA
    elevation = (300 + np.arange(H)[:, None] * 3 + np.arange(W)[None, :]).astype(np.int16)
    return refl, elevation


def write_stack(path: Path, labels: str = "descriptions", extra: str | None = None) -> Path:
    """The 13-band stack (3 dates x 4 channels, then elevation); its bands named by their
    descriptions, by tags (CHANNEL=…, DATE=…) or not at all (`labels` "none"); `extra`: one more
    band with that description."""
    refl, elevation = stack_values()
    bands = [*refl.reshape(-1, H, W), elevation] + ([np.zeros((H, W), np.int16)] if extra else [])
    names = DESCRIPTIONS + ([extra] if extra else [])
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=len(bands), dtype="int16",
                       nodata=NODATA, crs=CRS, transform=from_origin(X0, Y0, PIXEL, PIXEL)) as dst:
        for k, (band, name) in enumerate(zip(bands, names, strict=True), start=1):
            dst.write(band, k)
            if labels == "descriptions":
                dst.set_band_description(k, name)
            elif labels == "tags":
                date, _, channel = name.rpartition(" ")
                dst.update_tags(k, CHANNEL=channel, **({"DATE": date} if date else {}))
    return path


def config(out: Path, tiffs: list[Path], *overrides: str):
    listed = ", ".join(f'"{p}"' for p in tiffs)
    return load_config(None, ['name="stack"', 'data.kind="modis"', f'data.output="{out}"',
                              f"data.modis.geotiffs=[{listed}]", f"data.modis.band_pattern='{PATTERN}'",
                              'data.modis.static_bands=["elevation"]', "data.modis.composite_days=16",
                              "data.modis.window=2", *overrides])


def open_cube(root: Path):
    import xarray as xr

    m = read_manifest(str(root))
    return xr.open_zarr(root / m["side_files"]["cube-geotiff.zarr"], consolidated=False).load()


def quarantine(root: Path) -> list[dict]:
    m = read_manifest(str(root))
    return [json.loads(x) for x in (root / m["quarantine"]["file"]).read_text().splitlines()]


def scaled(raw: np.ndarray) -> np.ndarray:
    """What the reader makes of an int16 band: ×1e-4 in float32, NaN at nodata."""
    return np.where(raw == NODATA, np.nan, raw.astype(np.float32) * np.float32(1e-4))


# ---------------------------------------------------------------- reading every band


def test_described_stack_becomes_a_time_band_cube_and_a_static_layer(tmp_path: Path, dask_address) -> None:
    """13 bands (3 dates x 4 channels + elevation), read on a Dask cluster: every band lands in
    its (date, channel) cell, scaled; elevation is a static layer, unscaled, not a time step."""
    tif = write_stack(tmp_path / "stack.tif")
    summary = modis.run(config(tmp_path / "out", [tif]).data, dask_address=dask_address)
    cube = open_cube(tmp_path / "out")
    assert dict(cube["value"].sizes) == {"time": 3, "band": 4, "y": H, "x": W}
    assert [str(t)[:10] for t in cube.time.values] == DATES
    assert list(cube.band.values) == CHANNELS
    assert dict(cube["static"].sizes) == {"static_band": 1, "y": H, "x": W}
    assert list(cube.static_band.values) == ["elevation"]
    refl, elevation = stack_values()
    for d in range(len(DATES)):
        for c in range(len(CHANNELS)):
            np.testing.assert_array_equal(cube["value"].values[d, c], scaled(refl[d, c]))
    assert np.isnan(cube["value"].values[0, 2, 0, 0])  # the nodata value
    np.testing.assert_array_equal(cube["static"].values[0], elevation.astype(np.float32))
    x, y = cube.x.values, cube.y.values
    assert (x[0], y[0]) == (X0 + PIXEL / 2, Y0 - PIXEL / 2) and "32721" in rasterio.crs.CRS.from_wkt(
        cube.attrs["crs"]).to_string()
    assert summary.manifest["unused"] == [] and summary.quarantined == 0


def test_stack_without_descriptions_is_quarantined_with_the_reason(tmp_path: Path) -> None:
    """A stack whose bands have no descriptions (nor tags) is quarantined, not read as its band 1;
    the run goes on with the described one."""
    good, bare = write_stack(tmp_path / "good.tif"), write_stack(tmp_path / "bare.tif", labels="none")
    modis.run(config(tmp_path / "out", [good, bare]).data)
    records = quarantine(tmp_path / "out")
    assert [(r["source"], r["reason"]) for r in records] == [
        (str(bare), "13 bands without descriptions or tags: nothing names their dates and channels; write "
                    "band descriptions (e.g. '2016-01-01 ndvi') and set data.modis.band_pattern, or split "
                    "it into one file per date and band named by data.modis.name_pattern")]
    assert open_cube(tmp_path / "out").sizes["time"] == 3  # the described stack, whole


def test_stack_without_a_band_pattern_is_quarantined_naming_its_descriptions(tmp_path: Path) -> None:
    """The issue's case: a described multi-band stack and no data.modis.band_pattern built a cube
    of band 1 with exit 0; now it is refused, the reason showing the descriptions and the key."""
    tif = write_stack(tmp_path / "stack.tif")
    cfg = load_config(None, ['data.kind="modis"', f'data.output="{tmp_path / "out"}"',
                             f'data.modis.geotiffs=["{tif}"]'])
    with pytest.raises(PipelineError) as err:
        modis.run(cfg.data)
    assert f"the first: {tif}: 13 bands but data.modis.band_pattern is not set (descriptions: " \
           "'2016-01-01 blue', '2016-01-01 nir', '2016-01-01 red' …); set data.modis.band_pattern to a " \
           "regex with (?P<channel>…)" in str(err.value)


@pytest.mark.parametrize("labels,overrides", [
    ("none", [f"data.modis.band_names={json.dumps(DESCRIPTIONS)}"]),
    ("tags", [r"data.modis.band_pattern='CHANNEL=(?P<channel>\w+)( DATE=(?P<date>[\d-]+))?'",
              "data.modis.static_bands=[]"]),  # CHANNEL without DATE: static
], ids=["band_names", "tags"])
def test_stack_without_descriptions_reads_through_band_names_or_tags(tmp_path: Path, labels: str,
                                                                     overrides: list[str]) -> None:
    """The same stack without descriptions, mapped by data.modis.band_names (one name per band) or
    by its tags: the same cube, value for value, as from its descriptions."""
    described = config(tmp_path / "described", [write_stack(tmp_path / "described.tif")]).data
    modis.run(described)
    other = config(tmp_path / "other", [write_stack(tmp_path / "other.tif", labels=labels)], *overrides).data
    summary = modis.run(other)
    assert summary.quarantined == 0
    a, b = open_cube(tmp_path / "described"), open_cube(tmp_path / "other")
    assert a.identical(b)


def test_unmapped_bands_are_reported_unless_declared(tmp_path: Path) -> None:
    """A band no key maps (a QA layer) is not dropped silently: the manifest's `unused` names it,
    the run summary shows it; data.modis.unused declares it."""
    tif = write_stack(tmp_path / "stack.tif", extra="pixel_reliability")
    summary = modis.run(config(tmp_path / "out", [tif]).data)
    assert summary.manifest["unused"] == [{"source": str(tif), "what": "bands",
                                           "names": ["pixel_reliability"], "count": 1, "declared": False,
                                           "files": 1}]
    assert summary.unused == summary.manifest["unused"]
    assert open_cube(tmp_path / "out").sizes["band"] == 4
    declared = modis.run(config(tmp_path / "out2", [tif], 'data.modis.unused=["pixel_.*"]').data)
    assert [u["declared"] for u in declared.manifest["unused"]] == [True] and declared.unused == []


def test_a_name_the_pattern_does_not_match_names_the_file_and_the_pattern_as_written(tmp_path: Path) -> None:
    """Single-band files, one per date (today's layout): a name the default pattern does not match
    is quarantined with its name and the pattern exactly as in the config (no doubled
    backslashes); when no file is usable the run's error shows the first such record."""
    good, bad = tmp_path / "NDVI_2016_001.tif", tmp_path / "NDVI-2016-017.tif"
    refl, _ = stack_values()
    for path in (good, bad):
        with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=1, dtype="int16",
                           nodata=NODATA, crs=CRS, transform=from_origin(X0, Y0, PIXEL, PIXEL)) as dst:
            dst.write(refl[0, 1], 1)
    cfg = load_config(None, ['data.kind="modis"', f'data.output="{tmp_path / "out"}"',
                             f'data.modis.geotiffs=["{tmp_path}/*.tif"]'])
    reason = (r"file name does not match data.modis.name_pattern: 'NDVI-2016-017.tif' against "
              r"'(?P<year>\d{4})_(?P<doy>\d{3})'; fix the pattern or rename the file")
    modis.run(cfg.data)
    assert [(r["source"], r["reason"]) for r in quarantine(tmp_path / "out")] == [(str(bad), reason)]
    assert "\\\\" not in reason
    cube = open_cube(tmp_path / "out")
    assert dict(cube.sizes) == {"time": 1, "band": 1, "y": H, "x": W} and "static" not in cube
    np.testing.assert_array_equal(cube["value"].values[0, 0], scaled(refl[0, 1]))
    good.unlink()
    with pytest.raises(PipelineError) as err:
        modis.run(cfg.data)
    assert f"the first: {bad}: {reason}" in str(err.value)


# ---------------------------------------------------------------- labelling a GeoTIFF cube


def pixel_lonlat(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.warp import transform

    x, y = X0 + (cols + 0.5) * PIXEL, Y0 - (rows + 0.5) * PIXEL
    lon, lat = transform(CRS, "EPSG:4326", x.tolist(), y.tolist())
    return np.asarray(lon), np.asarray(lat)


def write_label_raster(path: Path) -> Path:
    """A class raster in lon/lat over the stack: 1 (crop) on the west half, 2 (forest) on the east
    half, a nodata strip along the north edge."""
    from rasterio.transform import from_bounds

    lon, lat = pixel_lonlat(np.array([0, 0, H - 1, H - 1]), np.array([0, W - 1, 0, W - 1]))
    w, e = lon.min() - 0.01, lon.max() + 0.01
    s, n = lat.min() - 0.01, lat.max() + 0.01
    mid = (lon[0] + lon[1]) / 2  # the stack's middle column, in longitude
    raster = np.where(np.linspace(w, e, 400)[None, :] < mid, 1, 2).repeat(400, 0).astype(np.uint8)
    raster[:20] = 255
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=1, dtype="uint8",
                       nodata=255, crs="EPSG:4326", transform=from_bounds(w, s, e, n, 400, 400)) as dst:
        dst.write(raster, 1)
    return path


def write_points(path: Path) -> Path:
    """Labelled points at pixel centres (lon/lat), classes by half, dated in the stack's period;
    one dated a year before, one far off the grid, and a `note` column no key uses."""
    rows, cols = np.meshgrid(np.arange(2, H, 4), np.arange(1, W, 3), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    lon, lat = pixel_lonlat(rows, cols)
    table = pd.DataFrame({"point": [f"p{r}-{c}" for r, c in zip(rows, cols, strict=True)],
                          "longitude": lon, "latitude": lat,
                          "class": np.where(cols < W // 2, "crop", "forest"), "date": "2016-01-20",
                          "note": "field survey"})
    table.loc[0, "date"] = "2015-01-20"  # another season
    table.loc[1, ["longitude", "latitude"]] = [10.0, 45.0]  # in Europe: on no cube
    table.to_csv(path, index=False)
    return path


def labelled(tmp_path: Path, *overrides: str):
    """The config of the stack labelled both by the class raster and by the points (written here)."""
    tif, cdl, pts = (write_stack(tmp_path / "stack.tif"), write_label_raster(tmp_path / "cdl.tif"),
                     write_points(tmp_path / "points.csv"))
    return config(tmp_path / "out", [tif], f'data.modis.labels={{path="{cdl}", classes={{"1"="crop", '
                                           f'"2"="forest"}}}}', f'data.modis.points={{path="{pts}", '
                                           'id="point", label="class", date="date"}', *overrides)


def test_geotiff_cube_labelled_by_points_and_a_raster_becomes_sequences(tmp_path: Path) -> None:
    """Both labels on one GeoTIFF cube: each raster-labelled pixel's class is the raster's at its
    centre; each point's series is the pixel that holds it; its features are the cube's values
    (window 2, NDVI added) with elevation closing every step; stray points are quarantined."""
    cfg = labelled(tmp_path)
    cdl, pts = cfg.data.modis.labels.path, cfg.data.modis.points.path
    summary = modis.run(cfg.data)
    m = summary.manifest
    assert m["classes"] == ["crop", "forest"] and m["shapes"]["features"] == [2, 2 * 5 + 1]
    assert m["feature_names"][:5] == ["blue@0", "nir@0", "red@0", "swir@0", "ndvi@0"]
    assert m["feature_names"][-1] == "elevation"
    assert m["unused"] == [{"source": str(pts), "what": "columns", "names": ["note"], "count": 1,
                            "declared": False, "files": 1}]
    reasons = {(r["line"], r["reason"].split(":")[0]) for r in quarantine(tmp_path / "out")}
    assert reasons == {(2, "dated outside cube geotiff's period (2016-01-01 to 2016-02-17)"),
                       (3, "off every cube's grid")}
    df = pd.concat([read_split(str(tmp_path / "out"), s).to_pandas() for s in ("train", "val", "test")])
    points = df[df["id"].str.startswith("p")]
    pixels = df[df["id"].str.startswith("geotiff:")]
    assert len(points) == 6 * 10 - 2 and len(pixels) > 0.8 * H * W  # all but the nodata strip
    refl, elevation = stack_values()

    def expected(row: int, col: int) -> np.ndarray:
        v = np.stack([scaled(refl[d, :, row, col]) for d in range(3)])  # (date, channel)
        v = np.concatenate([v, ((v[:, 1] - v[:, 2]) / (v[:, 1] + v[:, 2]))[:, None]], axis=1)
        steps = np.concatenate([v[:-1], v[1:]], axis=1)  # composites t and t + 1
        return np.concatenate([steps, np.full((2, 1), elevation[row, col], np.float32)], axis=1)

    with rasterio.open(cdl) as src:
        for _, r in pixels.sample(40, random_state=0).iterrows():
            row, col = map(int, r["id"].split(":")[1:])
            np.testing.assert_allclose(np.asarray(r["features"]).reshape(2, 11), expected(row, col),
                                       rtol=1e-6)
            k = src.index(r["lon"], r["lat"])
            assert {1: "crop", 2: "forest"}[int(src.read(1)[k])] == m["classes"][r["label"]]
    for _, r in points.iterrows():
        row, col = map(int, r["id"][1:].split("-"))
        np.testing.assert_allclose(np.asarray(r["features"]).reshape(2, 11), expected(row, col), rtol=1e-6)
        assert m["classes"][r["label"]] == ("crop" if col < W // 2 else "forest")


@pytest.mark.ray
def test_sequences_of_a_labelled_geotiff_cube_train(tmp_path: Path, ray_local) -> None:
    """One short real Ray Train run (1 epoch, a 16-unit LSTM-attention) on the point- and
    raster-labelled sequences of the generated stack."""
    from advorch.trainers.launch import train

    cfg = labelled(tmp_path, 'model.name="lstm_attention"', "model.hidden_dim=16", "train.epochs=1",
                   "train.workers=1", "train.batch_size=64", f'train.storage="{tmp_path / "runs"}"')
    modis.run(cfg.data)
    result = train(cfg, cfg.data.output, track=False)
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0 and np.isfinite(result.metrics["test_loss"])
    assert result.metrics["test_accuracy"] > 0.6  # the classes differ in nir and red: learnable at once


def test_month_groups_date_a_monthly_stack(tmp_path: Path) -> None:
    """A monthly layout as in the issue (descriptions 'NDVI_2016-03'): (?P<year>)(?P<month>) dates
    each band on the first of its month."""
    from advorch.pipelines.rasters import band_layout

    roles = band_layout("stack.tif", ["NDVI_2016-03", "EVI_2016-04", "slope"],
                        r"(?P<year>\d{4})_(?P<doy>\d{3})",
                        r"(?P<channel>[A-Z]+)_(?P<year>\d{4})-(?P<month>\d{2})", ["slope"])
    assert [(r.channel, r.date) for r in roles] == [("NDVI", dt.date(2016, 3, 1)),
                                                    ("EVI", dt.date(2016, 4, 1)), ("slope", None)]
