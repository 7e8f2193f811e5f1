"""Property tests of the raster readers (pipelines/rasters.py): MODIS HDF4 granules and GeoTIFFs
with broken bytes.

Inputs: MUTATED real data only: copies (in a temporary folder) of the real MOD09A1 / MOD09GA granules
in ../shared/data/modis/hdf and of real MOD13A1 NDVI and sits GeoTIFFs, with bytes flipped (in the
header, where the HDF4 data descriptors and TIFF tags are, or anywhere), a range zeroed, or the file
cut short. Property: every reader the pipelines call (`hdf_layers`, `read_hdf_grid`,
`read_hdf_granule`, `geotiff_labels`, `read_geotiff`) ends with a result or a RasterError, the
error the pipelines quarantine a file by; never another exception, a crash of the C library, or a
hang. The readers run in a process of their own (tests/property/support.RasterReader), so a crash
is reported, not suffered.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.property.support import RUN_SETTINGS, SHARED_DATA, RasterReader

MODIS = SHARED_DATA / "modis"
HDF = sorted((MODIS / "hdf").glob("*.hdf"))
TIFF = sorted((MODIS / "mod13a1_ndvi_2016").glob("*.tif"))[:2] + sorted((MODIS / "sits").rglob("*.tif"))[:1]
READERS = {"hdf": ["hdf_layers", "hdf_grid", "hdf_granule"], "tif": ["tiff_labels", "tiff_read"]}

pytestmark = pytest.mark.skipif(not (HDF and TIFF), reason=f"real MODIS files not found under {MODIS}")


def real(name: str) -> str:
    """The path of the real file `name` (for the regression examples)."""
    return next((str(p) for p in [*HDF, *TIFF] if p.name.startswith(name)), "")


A1, GA, EVI = "MOD09A1.A2017193", "MOD09GA.A2008296", "MODIS_Sinop_EVI_2013-09-14"


@st.composite
def mutations(draw: st.DrawFn, kind: str, only: str = "") -> tuple[str, list[tuple]]:
    """(a real file (whose name starts with `only`), the edits to make to a copy of it): flips, a
    zeroed range, a cut."""
    files = [p for p in (HDF if kind == "hdf" else TIFF) if p.name.startswith(only)]
    source = draw(st.sampled_from([str(p) for p in files])) if files else ""
    size = Path(source).stat().st_size if source else 1
    header = min(size, 4096 if kind == "hdf" else 1024)
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "flip_anywhere", "zero", "cut"]))
        if op == "flip":
            edits.append(("flip", draw(st.integers(0, header - 1)), draw(st.integers(1, 255))))
        elif op == "flip_anywhere":
            edits.append(("flip", draw(st.integers(0, size - 1)), draw(st.integers(1, 255))))
        elif op == "zero":
            at = draw(st.integers(0, size - 1))
            edits.append(("zero", at, draw(st.integers(1, 512))))
        else:
            edits.append(("cut", draw(st.integers(0, size - 1))))
    return source, edits


def mutate(source: str, edits: list[tuple], folder: Path) -> Path:
    """A copy of `source` under `folder` (same name: the MODIS name carries the date) with `edits`."""
    data = bytearray(Path(source).read_bytes())
    for edit in edits:
        if edit[0] == "flip" and edit[1] < len(data):
            data[edit[1]] ^= edit[2]
        elif edit[0] == "zero":
            data[edit[1] : edit[1] + edit[2]] = bytes(len(data[edit[1] : edit[1] + edit[2]]))
        elif edit[0] == "cut":
            del data[edit[1] :]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(source).name
    path.write_bytes(bytes(data))
    return path


_COUNTER = itertools.count()


def check_readers(case: tuple[str, list[tuple]], kind: str, reader: RasterReader, folder: Path) -> None:
    source, edits = case
    path = mutate(source, edits, folder / str(next(_COUNTER)))
    try:
        for name in READERS[kind]:
            answer = reader.read(name, str(path))
            assert answer[0] in ("ok", "raised"), f"{name} {answer} on {Path(source).name} {edits}"
            if answer[0] == "raised":
                _, module, exc, message, trace = answer
                assert (module, exc) == ("advorch.pipelines.rasters", "RasterError"), (
                    f"{name} raised {module}.{exc}: {message} on {Path(source).name} {edits}\n{trace}"
                )
                assert message
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def reader():
    r = RasterReader()
    yield r
    r.close()


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# derandomized: the suite checks the same inputs on every run, since some flipped bytes still
# crash the HDF4 C library (test_known_crash_inside_an_hdf4_object); benchmarks/fuzz_parsers.py draws
# new ones and counts those crashes
@settings(RUN_SETTINGS, derandomize=True)
@given(case=mutations("hdf"))
@example(case=(real(A1), [("cut", 1000)]))  # truncated inside the descriptors
@example(case=(real(A1), [("flip", 186, 146)]))  # a negative length: the C library aborted (heap)
@example(case=(real(A1), [("flip", 19, 1)]))  # a version longer than its buffer: aborted too
@example(case=(real(A1), [("flip", 183, 1)]))  # 73 x 538976288 pixels: MemoryError (73 GiB)
@example(case=(real(A1), [("flip", 717, 1)]))  # a block pyhdf cannot read: bare ValueError
@example(case=(real(A1), [("flip", 397, 1)]))  # a chunked layer of 16,777,218 dimensions: SIGFPE
@example(case=(real(GA), [("flip", 555, 1)]))  # the same in MOD09GA
@example(case=(real(GA), [("flip", 428, 72)]))  # chunks larger than the layer: SIGSEGV
@example(case=(real(GA), [("flip", 353, 1)]))  # a fill value of 16 MB for 2-byte values: SIGSEGV
def test_a_broken_granule_is_read_or_a_raster_error(
    case: tuple[str, list[tuple]], reader: RasterReader, folder: Path
) -> None:
    check_readers(case, "hdf", reader, folder)


@pytest.mark.xfail(  # not strict: whether the corrupted heap aborts depends on the allocator's state
    strict=False,
    reason="open bug: a flipped byte in a vdata header (tag 1962) makes the HDF4 C library abort "
    "(SIGABRT) while pyhdf opens the file; the header checks (rasters.check_hdf4_header) cannot cover "
    "every object, only opening granules in a child process would make it a quarantine record",
)
def test_known_crash_inside_an_hdf4_object(reader: RasterReader, folder: Path) -> None:
    check_readers((real(A1), [("flip", 495, 1)]), "hdf", reader, folder)


@RUN_SETTINGS
@given(case=mutations("tif"))
@example(case=(real("MOD13A1_NDVI_2016_001"), [("cut", 200)]))
@example(case=(real(EVI), [("flip", 838, 128)]))  # a tag that is not UTF-8: bare UnicodeDecodeError
def test_a_broken_geotiff_is_read_or_a_raster_error(
    case: tuple[str, list[tuple]], reader: RasterReader, folder: Path
) -> None:
    check_readers(case, "tif", reader, folder)


def fuzz_readers(kind: str):
    """(the property of `kind` with its own reader process and folder, cleanup) for the benchmark."""
    reader, tmp = RasterReader(), tempfile.TemporaryDirectory()

    def run(case: tuple[str, list[tuple]]) -> None:
        check_readers(case, kind, reader, Path(tmp.name))

    def close() -> None:
        reader.close()
        tmp.cleanup()

    return run, close


FUZZ = {  # name → (strategies, the property or a factory of (property, cleanup), needs the cluster)
    "rasters.hdf4 (MOD09A1)": (dict(case=mutations("hdf", only=A1)), lambda: fuzz_readers("hdf"), "factory"),
    "rasters.hdf4 (MOD09GA)": (dict(case=mutations("hdf", only=GA)), lambda: fuzz_readers("hdf"), "factory"),
    "rasters.geotiff": (dict(case=mutations("tif")), lambda: fuzz_readers("tif"), "factory"),
}
