"""MODIS tiles → Zarr cube throughput against bare decoding of the same files.

The input is built here from the one real MOD09A1 granule: N byte-for-byte copies named
for the N 8-day composites of 2017 (the date is in the file name), so the cube has N
dates. Bare decoding: pyhdf opens each file and reads its 7 reflectance bands and the
state layer, one file after another, in one process. Pipeline: one whole
`advorch.pipelines.modis.run` as a user runs it locally (BLAKE3 of every file on a thread
beside the decoding; decoding, scaling, fill and QA masks in this thread for the small
copies, in a pool of one process per core writing into a shared memory-mapped stack for the
full-size granules (`data.modis.process_min_mb`); stacking on the calendar, gap fill, NDVI,
Zarr write, manifest). Both in the same run, alternating, MB of HDF per second.
Then the pipeline's stages one by one on the larger input, in ms per granule: where the time
goes. The real granule is a 66x73 px subset, where per-file costs dominate; `--full-size N`
(default 8) also compares on N granules generated at the real 2400x2400 size from it
(`build_full_size`), where the pixels do.

    .venv/bin/python benchmarks/modis_throughput.py --granules 46 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def build_full_size(folder: Path, n: int, size: int = 2400, seed: int = 0) -> list[Path]:
    """n granules at the real MOD09A1 size (size x size pixels), which ../shared/data lacks: every
    dataset of the real granule tiled to size x size (same types, attributes, grid name and
    corner, deflate level 5 as the original), ±20 DN of noise on the valid reflectances so that
    deflate meets real-looking entropy (tiles alone would compress to nothing); StructMetadata.0
    with the new XDim/YDim and lower-right corner. ≈ 61 MB a file (real ones: 50-90 MB)."""
    from pyhdf.SD import SD, SDC

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    src = SD(str(GRANULE), SDC.READ)
    meta = src.attributes()["StructMetadata.0"]
    pair = r"\(([-\d.]+),([-\d.]+)\)"
    corners = re.search(rf"UpperLeftPointMtrs={pair}(\s*)LowerRightMtrs={pair}", meta)
    ulx, uly, space, lrx, lry = corners.groups()
    dx = (float(lrx) - float(ulx)) / int(re.search(r"XDim=(\d+)", meta)[1])
    dy = (float(uly) - float(lry)) / int(re.search(r"YDim=(\d+)", meta)[1])
    meta = re.sub(r"YDim=\d+", f"YDim={size}", re.sub(r"XDim=\d+", f"XDim={size}", meta))
    meta = meta.replace(corners[0], f"UpperLeftPointMtrs=({ulx},{uly}){space}LowerRightMtrs="
                                    f"({float(ulx) + size * dx:.6f},{float(uly) - size * dy:.6f})")
    layers = {}
    for name, (_, _, kind, _) in src.datasets().items():
        sds = src.select(name)
        raw = sds.get()
        tiled = np.tile(raw, (-(-size // raw.shape[0]), -(-size // raw.shape[1])))[:size, :size]
        layers[name] = (kind, tiled, sds.attributes(full=1))
    src.end()
    files = []
    for k in range(n):
        files.append(folder / f"MOD09A1.A2017{1 + 8 * k:03d}.h18v04.006.fullsize.hdf")
        out = SD(str(files[-1]), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
        out.attr("StructMetadata.0").set(SDC.CHAR8, meta)
        for name, (kind, data, attrs) in layers.items():
            if name in READ[:-1]:
                noise = rng.integers(-20, 21, data.shape, dtype=np.int16)
                data = np.where(data == attrs["_FillValue"][0], data, data + noise).astype(data.dtype)
            sds = out.create(name, kind, data.shape)
            sds.setcompress(SDC.COMP_DEFLATE, 5)
            for key, (value, _, kind_, _) in attrs.items():
                sds.attr(key).set(kind_, value)
            sds[:] = data
            sds.endaccess()
        out.end()
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
    granules = [{"path": p, **read_hdf_granule(p, m.bands, m.state_layer, scaled=False)} for p in paths]
    secs["decode: bands, attributes, grid, fill + QA masks"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = modis.tile_cube(granules, m, Quarantine())
    secs["cube: calendar stack, scaling, masking, gap fill, NDVI"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    modis.write_zarr(ds, str(out))
    secs["Zarr write"] = time.perf_counter() - t0
    shutil.rmtree(out)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--granules", type=int, default=46)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-size", type=int, default=8,
                    help="also compare on N granules at the real 2400x2400 size (0: skip)")
    args = ap.parse_args()

    from advorch.config import load_config
    from advorch.pipelines import modis

    sizes = [args.granules, 4 * args.granules]  # the difference removes the fixed costs
    full = f"{args.full_size} full-size"
    times: dict[tuple[str, int | str], list[float]] = {}
    parts: dict[str, list[float]] = {}
    mb = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in [*sizes, full] if args.full_size else sizes:
            folder = Path(tmp) / f"in{n}".replace(" ", "")
            files = build_full_size(folder, args.full_size) if n == full else build_input(folder, n)
            mb[n] = sum(f.stat().st_size for f in files) / 1e6
            out = Path(tmp) / f"out{n}".replace(" ", "")
            cfg = load_config(None, ['data.kind="modis"', f'data.output="{out}"',
                                     f'data.modis.granules=["{folder}/*.hdf"]'])
            modis.run(cfg.data)  # warm-up: imports, first process pool
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
                assert summary.manifest["cubes"]["h18v04"]["dims"]["time"] == len(files)
            if n == full:  # ≈ 0.5 GB of input and 1 GB of cube
                shutil.rmtree(folder)
                shutil.rmtree(out, ignore_errors=True)
        big_files = sorted((Path(tmp) / f"in{sizes[1]}").glob("*.hdf"))
        for _ in range(args.repeats):  # after the comparison, not to disturb it
            for name, secs in stages(big_files, cfg.data, Path(tmp) / "stage.zarr").items():
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
    if args.full_size:
        at_size = med[("bare pyhdf decoding", full)] / med[("granules → Zarr cube (pipeline)", full)]
        rows.append(report.row(f"pipeline / bare, whole run, {full} granules", "throughput_ratio_median",
                               at_size, None, args.repeats, "x"))
    per = {name: 1e3 * statistics.median(v) / big for name, v in parts.items()}
    per_bare = 1e3 * med[("bare pyhdf decoding", big)] / big
    per_pipe = 1e3 * med[("granules → Zarr cube (pipeline)", big)] / big
    for name, ms in per.items():
        rows.append(report.row(f"stage: {name}, {big} granules", "ms_per_granule_median", ms, None,
                               args.repeats, "ms"))
    rest = per_pipe - sum(per.values())
    stage_lines = [f"| {name} | {ms:.2f} | {ms / per_bare:.2f} |" for name, ms in per.items()]
    stage_lines.append(f"| rest: whole run − stages (quarantine, manifest, …; less the hashing "
                       f"hidden behind decoding) | {rest:.2f} | "
                       f"{rest / per_bare:.2f} |")
    notes = "\n".join([
        "| step | granules | MB | seconds (median) | MB/s (median) |", "|---|---|---|---|---|", *lines, "",
        f"Where the pipeline's time goes at {big} granules (each stage run on its own; the "
        f"whole run: {per_pipe:.2f} ms per granule, bare decoding {per_bare:.2f}):", "",
        "| stage | ms per granule (median) | × bare decoding |", "|---|---|---|", *stage_lines, "",
        f"- Whole run at {big} granules: pipeline = {whole:.3f}x bare decoding. Marginal (the extra "
        f"{big - small} granules, fixed costs removed): bare {marginal['bare pyhdf decoding']:.0f} MB/s, "
        f"pipeline {marginal['granules → Zarr cube (pipeline)']:.0f} MB/s = {ratio:.3f}x. Target ≥ 0.5x.",
        f"- Input: copies of the one real MOD09A1 h18v04 granule (a 66x73 px subset in a 2.3 MB file) "
        "named for consecutive 8-day composites from 2017 on. Per granule, bare decoding reads only "
        "≈ 0.1 MB of pixels, while the pipeline also hashes all 2.3 MB of the file (BLAKE3, the manifest's "
        "source fingerprint, which decides what an incremental re-run may reuse), reads the bands' "
        "scale/fill attributes and the grid, and builds and writes the cube. Copies make every pixel "
        "valid on all dates or on none, so gap filling has nothing to do here (it skips such series); "
        "real cloudy series cost more. "
        f"{args.repeats} runs each, alternating, after one warm-up run per size.",
        *([f"- At the real size ({full} granules, 2400x2400 px, generated from the real granule: "
           "its datasets tiled, ±20 DN noise on the reflectances, deflate 5; see `build_full_size`): "
           f"pipeline = {at_size:.3f}x bare decoding. Here the pixels dominate: decoding "
           "decompresses 8 datasets of 5.8 M pixels, and the pipeline also scales and masks them, "
           "gap-fills and writes two float32 cubes (`filled`, `ndvi`) and the masks. The pipeline "
           f"decodes in {os.cpu_count()} processes here (one per core, this machine's all), bare "
           "decoding in one: pyhdf holds the GIL, so one process is all a plain read loop gets."]
          if args.full_size else []),
    ])
    print(notes)
    report.write("modis_throughput", rows, notes)

if __name__ == "__main__":
    main()
