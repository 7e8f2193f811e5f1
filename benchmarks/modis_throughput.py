"""MODIS tiles → Zarr cube throughput against bare decoding of the same files.

The input is built here from the one real MOD09A1 granule: N byte-for-byte copies named
for the N 8-day composites of 2017 (the date is in the file name), so the cube has N
dates. Bare decoding: pyhdf opens each file and reads its 7 reflectance bands and the
state layer, one file after another. Pipeline: one whole `advorch.pipelines.modis.run`
(Dask LocalCluster start, parallel reads on 2 worker processes, QA masks, gap fill,
NDVI, Zarr write, manifest). Both in the same run, alternating, MB of HDF per second.

    .venv/bin/python benchmarks/modis_throughput.py --granules 46 --repeats 3
"""

from __future__ import annotations

import argparse
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
    files = []
    for k in range(n):
        doy = 1 + 8 * k
        files.append(folder / f"MOD09A1.A2017{doy:03d}.h18v04.006.copy.hdf")
        shutil.copyfile(GRANULE, files[-1])
    return files


def bare(files: list[Path]) -> None:
    from pyhdf.SD import SD, SDC

    for f in files:
        sd = SD(str(f), SDC.READ)
        for name in READ:
            sd.select(name).get()
        sd.end()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--granules", type=int, default=46)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from advorch.config import load_config
    from advorch.pipelines import modis

    with tempfile.TemporaryDirectory() as tmp:
        files = build_input(Path(tmp), args.granules)
        mb = sum(f.stat().st_size for f in files) / 1e6
        out = Path(tmp) / "out"
        cfg = load_config(None, ['data.kind="modis"', f'data.output="{out}"',
                                 f'data.modis.granules=["{tmp}/*.hdf"]'])
        times: dict[str, list[float]] = {"bare pyhdf decoding": [], "granules → Zarr cube (pipeline)": []}
        for _ in range(args.repeats):  # alternating, so drift hits both
            t0 = time.perf_counter()
            bare(files)
            times["bare pyhdf decoding"].append(time.perf_counter() - t0)
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            summary = modis.run(cfg.data)
            times["granules → Zarr cube (pipeline)"].append(time.perf_counter() - t0)
            assert summary.manifest["cubes"]["h18v04"]["dims"]["time"] == args.granules
    rows, lines = [], []
    for name, secs in times.items():
        rates = [mb / s for s in secs]
        rows += report.summary_rows(name, "mb_per_second", rates, "MB/s")
        lines.append(f"| {name} | {statistics.median(secs):.2f} | {statistics.median(rates):.1f} |")
    ratio = statistics.median(times["bare pyhdf decoding"]) / statistics.median(
        times["granules → Zarr cube (pipeline)"])
    rows.append(report.row("pipeline / bare", "throughput_ratio_median", ratio, None, args.repeats, "x"))
    notes = "\n".join([
        "| step | seconds (median) | MB/s (median) |", "|---|---|---|", *lines, "",
        f"- Pipeline throughput = {ratio:.2f}x bare decoding (target ≥ 0.5x).",
        f"- Input: {args.granules} copies of the real MOD09A1 h18v04 granule (66x73 px subset, "
        f"{mb:.0f} MB of HDF4) named for the 8-day composites of 2017; {args.repeats} runs each, "
        "alternating. The pipeline run includes its Dask LocalCluster start.",
    ])
    print(notes)
    report.write("modis_throughput", rows, notes)


if __name__ == "__main__":
    main()
