"""MODIS tiles → Zarr cube throughput against bare decoding of the same files.

The input is built here from the one real MOD09A1 granule: N byte-for-byte copies named
for the N 8-day composites of 2017 (the date is in the file name), so the cube has N
dates. Bare decoding: pyhdf opens each file and reads its 7 reflectance bands and the
state layer, one file after another. Pipeline: one whole `advorch.pipelines.modis.run`
(BLAKE3 of every file on a thread beside the decoding, a Dask LocalCluster of threads
reading the granules in batches, scaling, fill and QA masks, stacking on the calendar, gap
fill, NDVI, Zarr write, manifest). Both in the same run, alternating, MB of HDF per second.
Then the pipeline's stages one by one on the larger input, in ms per granule: where the time
goes.

    .venv/bin/python benchmarks/modis_throughput.py --granules 46 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRANULE = ROOT.parent / "shared" / "data" / "modis" / "hdf" / "MOD09A1.A2017193.h18v04.006.2017202035302.hdf"
READ = [f"sur_refl_b0{i}" for i in range(1, 8)] + ["sur_refl_state_500m"]


def build_input(folder: Path, n: int) -> list[Path]:
    """n copies named for consecutive 8-day composites from 2017 on (46 a year)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        year, doy = 2017 + k // 46, 1 + 8 * (k % 46)
        files.append(folder / f"MOD09A1.A{year}{doy:03d}.h18v04.006.copy.hdf")
        shutil.copyfile(GRANULE, files[-1])
    return files


def bare(files: list[Path]) -> None:
    from pyhdf.SD import SD, SDC

    for f in files:
        sd = SD(str(f), SDC.READ)
        for name in READ:
            sd.select(name).get()
        sd.end()


def stages(files: list[Path], cfg, out: Path) -> dict[str, float]:
    """Seconds of each stage of the pipeline, run on its own on `files` (one tile)."""
    from advorch.pipelines import modis
    from advorch.pipelines.rasters import read_hdf_granule
    from advorch.pipelines.shards import Quarantine, fingerprints

    paths, m, secs = [str(f) for f in files], cfg.modis, {}
    t0 = time.perf_counter()
    fingerprints(paths, None)
    secs["BLAKE3 of each whole file (source fingerprints; in a first build it runs beside the decoding)"] = \
        time.perf_counter() - t0
    t0 = time.perf_counter()
    granules = [{"path": p, **read_hdf_granule(p, m.bands, m.state_layer)} for p in paths]
    secs["decode: bands, attributes, grid, scale, fill + QA masks"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = modis.tile_cube(granules, m, Quarantine())
    secs["cube: calendar stack, masking, gap fill, NDVI"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    modis.write_zarr(ds, str(out))
    secs["Zarr write"] = time.perf_counter() - t0
    shutil.rmtree(out)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--granules", type=int, default=46)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from advorch.config import load_config
    from advorch.pipelines import modis

    sizes = [args.granules, 4 * args.granules]  # the difference removes the fixed costs
    times: dict[tuple[str, int], list[float]] = {}
    parts: dict[str, list[float]] = {}
    mb = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            files = build_input(Path(tmp) / f"in{n}", n)
            mb[n] = sum(f.stat().st_size for f in files) / 1e6
            out = Path(tmp) / f"out{n}"
            cfg = load_config(None, ['data.kind="modis"', f'data.output="{out}"',
                                     f'data.modis.granules=["{tmp}/in{n}/*.hdf"]'])
            modis.run(cfg.data)  # warm-up: imports, first Dask start
            for _ in range(args.repeats):  # alternating, so drift hits both
                gc.collect()  # the previous run's garbage is collected before, not inside, a timing
                t0 = time.perf_counter()
                bare(files)
                times.setdefault(("bare pyhdf decoding", n), []).append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
                gc.collect()
                t0 = time.perf_counter()
                summary = modis.run(cfg.data)
                times.setdefault(("granules → Zarr cube (pipeline)", n), []).append(time.perf_counter() - t0)
                assert summary.manifest["cubes"]["h18v04"]["dims"]["time"] == n
        for _ in range(args.repeats):  # after the comparison, not to disturb it
            for name, secs in stages(files, cfg.data, Path(tmp) / "stage.zarr").items():
                parts.setdefault(name, []).append(secs)
    rows, lines = [], []
    med = {k: statistics.median(v) for k, v in times.items()}
    for (name, n), secs in times.items():
        rates = [mb[n] / s for s in secs]
        rows += report.summary_rows(f"{name}, {n} granules", "mb_per_second", rates, "MB/s")
        lines.append(f"| {name} | {n} | {mb[n]:.0f} | {med[(name, n)]:.2f} | "
                     f"{statistics.median(rates):.1f} |")
    small, big = sizes
    marginal = {name: (mb[big] - mb[small]) / (med[(name, big)] - med[(name, small)])
                for name in ("bare pyhdf decoding", "granules → Zarr cube (pipeline)")}
    whole = med[("bare pyhdf decoding", big)] / med[("granules → Zarr cube (pipeline)", big)]
    ratio = marginal["granules → Zarr cube (pipeline)"] / marginal["bare pyhdf decoding"]
    rows.append(report.row("pipeline / bare, whole run", "throughput_ratio_median", whole, None,
                           args.repeats, "x"))
    rows.append(report.row("pipeline / bare, marginal per granule", "throughput_ratio_median", ratio, None,
                           args.repeats, "x"))
    per = {name: 1e3 * statistics.median(v) / big for name, v in parts.items()}
    per_bare = 1e3 * med[("bare pyhdf decoding", big)] / big
    per_pipe = 1e3 * med[("granules → Zarr cube (pipeline)", big)] / big
    for name, ms in per.items():
        rows.append(report.row(f"stage: {name}, {big} granules", "ms_per_granule_median", ms, None,
                               args.repeats, "ms"))
    rest = per_pipe - sum(per.values())
    stage_lines = [f"| {name} | {ms:.2f} | {ms / per_bare:.2f} |" for name, ms in per.items()]
    stage_lines.append(f"| rest: whole run − stages (Dask, quarantine, manifest, …; less the hashing "
                       f"hidden behind decoding) | {rest:.2f} | "
                       f"{rest / per_bare:.2f} |")
    notes = "\n".join([
        "| step | granules | MB | seconds (median) | MB/s (median) |", "|---|---|---|---|---|", *lines, "",
        f"Where the pipeline's time goes at {big} granules (each stage run on its own, outside Dask; the "
        f"whole run: {per_pipe:.2f} ms per granule, bare decoding {per_bare:.2f}):", "",
        "| stage | ms per granule (median) | × bare decoding |", "|---|---|---|", *stage_lines, "",
        f"- Whole run at {big} granules: pipeline = {whole:.3f}x bare decoding. Marginal (the extra "
        f"{big - small} granules, fixed costs removed): bare {marginal['bare pyhdf decoding']:.0f} MB/s, "
        f"pipeline {marginal['granules → Zarr cube (pipeline)']:.0f} MB/s = {ratio:.3f}x. Target ≥ 0.5x.",
        f"- Input: copies of the one real MOD09A1 h18v04 granule (a 66x73 px subset in a 2.3 MB file) "
        "named for consecutive 8-day composites from 2017 on. Per granule, bare decoding reads only "
        "≈ 0.1 MB of pixels, while the pipeline also hashes all 2.3 MB of the file (BLAKE3, the manifest's "
        "source fingerprint, which decides what an incremental re-run may reuse), reads the bands' "
        "scale/fill attributes and the grid, and builds and writes the cube. "
        f"{args.repeats} runs each, alternating, after one warm-up run per size.",
    ])
    print(notes)
    report.write("modis_throughput", rows, notes)

if __name__ == "__main__":
    main()
