"""Satellite rasters → georeferenced xarray: MODIS HDF4-EOS granules and GeoTIFF stacks.

HDF4: the common rasterio/GDAL and netCDF4 wheels have no HDF4 driver, so granules are
read with pyhdf. pyhdf does not georeference HDF-EOS: the grid (size, upper-left and
lower-right corners in metres, projection) is parsed from the granule's
`StructMetadata.0` attribute. MODIS land grids are sinusoidal on a sphere of radius
6,371,007.181 m; the corners are the outer edges of the corner pixels (as GDAL reads
them), so pixel centres sit half a pixel inside.

GeoTIFF: every band of a file is read. One file per date (and band), the date and band
from a regular expression on the file name; or multi-band stacks, each band's date and
channel from its description or tags (see modis.band_layout). Integer bands are scaled by
`scale` (MOD13 NDVI: 1e-4), static ones (elevation) not; float files are taken as already
scaled (the MOD13A1 2016 stack switches from int16 to float32 for its last two dates).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

MODIS_SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
BANDS_500M = [f"sur_refl_b0{i}" for i in range(1, 8)]
STATE = "sur_refl_state_500m"
FLAGS = ("fill", "cloud", "shadow")  # per pixel and date: no data, cloudy, cloud shadow
GRANULE_RE = re.compile(r"\.A(?P<year>\d{4})(?P<doy>\d{3})\.(?P<tile>h\d{2}v\d{2})\.")


class RasterError(ValueError):
    """A raster cannot be used; the message names the file and why (it is quarantined)."""


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: size and the outer corners of its corner pixels."""

    name: str
    width: int
    height: int
    upper_left: tuple[float, float]
    lower_right: tuple[float, float]
    crs: str

    @property
    def key(self) -> tuple:
        """Size and corners to the millimetre: files written by different tools differ in the
        last float digits of the same grid (the MOD13A1 stack does, at 1e-10 m)."""
        return (self.width, self.height, *(round(v, 3) for v in (*self.upper_left, *self.lower_right)))

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL/affine order: (dx, 0, x0, 0, dy, y0)."""
        dx = (self.lower_right[0] - self.upper_left[0]) / self.width
        dy = (self.lower_right[1] - self.upper_left[1]) / self.height
        return (dx, 0.0, self.upper_left[0], 0.0, dy, self.upper_left[1])

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre x (width,) and y (height,) in the grid's CRS."""
        dx, _, x0, _, dy, y0 = self.transform
        return x0 + dx * (np.arange(self.width) + 0.5), y0 + dy * (np.arange(self.height) + 0.5)


@functools.lru_cache(maxsize=64)
def parse_struct_metadata(text: str, data_field: str | None = None) -> Grid:
    """The grid of an HDF-EOS `StructMetadata.0` block that holds `data_field` (else the first).

    A granule can carry several grids (MOD09GA: 1 km and 500 m); each band belongs to one.
    Cached by the whole text: the granules of a tile carry the same block, parsed once.

    Raises:
        RasterError: the block has no grid, no grid with that field, or lacks a grid field.
    """
    blocks = re.findall(r"GROUP=GRID_\d+(.*?)END_GROUP=GRID_\d+", text, flags=re.S)
    if not blocks:
        raise RasterError("StructMetadata.0 describes no grid: not an HDF-EOS grid file")
    chosen = [b for b in blocks if data_field is None or f'DataFieldName="{data_field}"' in b]
    if not chosen:
        raise RasterError(f"no grid of the granule holds {data_field}")
    text = chosen[0]

    def field(name: str) -> str:
        m = re.search(rf"\b{name}=(\S+)", text)
        if not m:
            raise RasterError(f"StructMetadata.0 has no {name}")
        return m.group(1).strip('"')

    def pair(name: str) -> tuple[float, float]:
        a, b = field(name).strip("()").split(",")
        return float(a), float(b)

    projection = field("Projection")
    if projection != "GCTP_SNSOID":
        raise RasterError(f"grid projection {projection} is not MODIS sinusoidal (GCTP_SNSOID)")
    radius = float(field("ProjParams").strip("()").split(",")[0])
    crs = MODIS_SINUSOIDAL.replace("6371007.181", f"{radius:.3f}")
    return Grid(field("GridName"), int(field("XDim")), int(field("YDim")), pair("UpperLeftPointMtrs"),
                pair("LowerRightMtrs"), crs)


def granule_date(path: str) -> tuple[_dt.date, str]:
    """(composite start date, tile) from a MODIS file name such as MOD09A1.A2017193.h18v04…"""
    m = GRANULE_RE.search(path.rsplit("/", 1)[-1])
    if not m:
        raise RasterError("file name lacks the MODIS .AYYYYDDD.hXXvYY. part")
    return _dt.date(int(m["year"]), 1, 1) + _dt.timedelta(int(m["doy"]) - 1), m["tile"]


def state_masks(state: np.ndarray) -> dict[str, np.ndarray]:
    """MOD09 500 m state QA bits: cloud state 0-1 (01 cloudy, 10 mixed), cloud shadow bit 2."""
    cloud_state = state & 0b11
    return {"cloud": (cloud_state == 1) | (cloud_state == 2), "shadow": (state >> 2 & 1) == 1}


def _attrs(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named attributes an HDF object has, read one by one by index: pyhdf's attributes()
    decodes every text attribute byte by byte in Python (ms per granule)."""
    from pyhdf.error import HDF4Error

    out = {}
    for name in names:
        try:
            out[name] = obj.attr(obj.attr(name).index()).get()  # by name, get() fails on SD objects
        except HDF4Error:
            continue
    return out


def _text_attr(obj: Any, name: str) -> str | None:
    """A text (CHAR8) attribute, or None when the object has none by that name (or it cannot
    be read).

    pyhdf's get() turns the value into a list of one-character strings, one Python call per
    byte: ≈ 13 ms for a granule's 32 KB StructMetadata.0, ten times the decoding of all its
    bands. The same SDreadattr call fills pyhdf's buffer here, copied out in one go (same text)."""
    from pyhdf import hdfext
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SDC

    try:
        attr = obj.attr(obj.attr(name).index())
        _, kind, n = attr.info()
        if kind != SDC.CHAR8:
            return attr.get()
        buf = hdfext.array_byte(n)
        if hdfext.SDreadattr(obj._id, attr.index(), buf) < 0:
            return None
    except HDF4Error:
        return None
    return ctypes.string_at(int(buf.this), n).decode("latin-1")  # chr() of each byte, as pyhdf


def _indices(sd: Any, names: list[str]) -> list[int]:
    """The indices of the named datasets in an open file.

    Raises:
        RasterError: a name is not in the file (the message lists what the file has).
    """
    from pyhdf.error import HDF4Error

    try:
        return [sd.nametoindex(name) for name in names]
    except HDF4Error:
        # only now list the file's datasets (≈ 0.15 ms): the common case needs no listing
        have = sd.datasets()
        missing = [b for b in names if b not in have]
        if missing:
            raise RasterError(f"missing band: {', '.join(missing)} (it has {', '.join(sorted(have))})") \
                from None
        raise


def _data(ds: Any, name: str) -> np.ndarray:
    """A dataset's array. Raises RasterError: pyhdf's C layer raises a bare ValueError
    ("SDreaddata failure") for a block it cannot read, not an HDF4Error."""
    try:
        return ds.get()
    except ValueError as e:
        raise RasterError(f"HDF4 read failed: {name}: {e}; truncated or corrupt, re-download it") from None


HDF4_MAGIC = b"\x0e\x03\x13\x01"
FIXED_SIZE = {30: 92, 106: 4}  # HDF4 tag → its object's size (DFTAG_VERSION, DFTAG_NT)
SPECIAL = 0x4000  # the bit of a special element's tag (chunked, compressed, linked blocks)
DD = np.dtype([("tag", ">u2"), ("ref", ">u2"), ("offset", ">i4"), ("length", ">i4")])  # a data descriptor


def check_hdf4_header(path: str) -> None:
    """Check the data descriptors of an HDF4 file and the headers of its chunked layers (the file
    mapped, not read: ≈ 0.1 ms for a granule's 400 descriptors). The HDF4 C library trusts them: a
    negative length (one flipped byte) corrupts its heap and aborts the process ("malloc(): corrupted
    top size"), a chunked layer of 16,777,218 dimensions or chunks larger than the layer kill it with
    SIGFPE / SIGSEGV, which no except clause can catch; so this runs before pyhdf opens the file.

    Raises:
        RasterError: no HDF4 magic number, or a descriptor or chunked-layer header that cannot be
            right (the message names it).
    """
    import mmap
    import struct

    bad = "not a readable HDF4 file: {}; truncated or corrupt, re-download it"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if head == HDF4_MAGIC else None
    except (OSError, ValueError) as e:
        raise RasterError(f"not a readable HDF4 file: {e}") from None
    if data is None:
        raise RasterError(bad.format("no HDF4 magic number (0e031301)"))
    with data:
        size, block, seen, tables = len(data), 4, set(), []
        while block:
            if block in seen or not 4 <= block <= size - 6:
                raise RasterError(bad.format(f"descriptor block at byte {block} is outside the file or "
                                             "a loop"))
            seen.add(block)
            ndds, following = struct.unpack_from(">hi", data, block)
            if ndds < 0 or block + 6 + 12 * ndds > size:
                raise RasterError(bad.format(f"descriptor block at byte {block} holds {ndds} descriptors "
                                             "past the end of the file"))
            tables.append(np.frombuffer(data, DD, ndds, block + 6).copy())  # a copy: the map closes
            block = following
        dd = np.concatenate(tables) if tables else np.zeros(0, DD)
        tag, offset, length = (dd[f].astype(np.int64) for f in ("tag", "offset", "length"))
        # -1 / -1: an object with no data yet (HDF4's INVALID_OFFSET / _LENGTH); tag 1: an unused slot
        wrong = (offset < -1) | (length < -1) | ((offset >= 0) & (length > 0) & (offset + length > size))
        for fixed, most in FIXED_SIZE.items():  # objects the library reads into buffers of a fixed size
            wrong |= (tag == fixed) & (length > most)
        wrong &= tag != 1
        if wrong.any():
            k = int(np.flatnonzero(wrong)[0])
            raise RasterError(bad.format(f"data descriptor {k + 1} (tag {tag[k]}, ref {dd['ref'][k]}) says "
                                         f"offset {offset[k]}, length {length[k]} in a file of {size} bytes"))
        for k in np.flatnonzero((tag & SPECIAL).astype(bool) & (offset >= 0) & (length >= 2)):
            why = _chunked_header(data[offset[k]:offset[k] + length[k]])
            if why:
                raise RasterError(bad.format(f"the chunked layer header (tag {tag[k]}, ref {dd['ref'][k]}) "
                                             f"at byte {offset[k]} {why}"))


def _chunked_header(head: bytes) -> str:
    """Why a special element's header (HDF4's hchunks.c layout) is not a chunked layer the library
    can read; "" if it can, or if it is another kind of special element (compressed, linked)."""
    import struct

    if struct.unpack(">h", head[:2])[0] != 5:  # SPECIAL_CHUNKED
        return ""
    if len(head) < 35:
        return f"is {len(head)} bytes, shorter than its fields"
    chunk_size, nt_size = struct.unpack(">ii", head[15:23])
    ndims = struct.unpack(">i", head[31:35])[0]
    if not 1 <= ndims <= 32 or len(head) < 35 + 12 * ndims:  # HDF4's MAX_VAR_DIMS is 32
        return f"says {ndims} dimensions"
    dims = [struct.unpack(">iii", head[35 + 12 * i:47 + 12 * i]) for i in range(ndims)]  # flag, length, chunk
    if (nt_size not in (1, 2, 4, 8) or any(c <= 0 or n < 0 or n and c > n for _, n, c in dims)
            or chunk_size != math.prod(c for *_, c in dims)):
        return f"says chunks of {chunk_size} values of {nt_size} bytes over (flag, length, chunk) {dims}"
    at = 35 + 12 * ndims  # then the fill value: its length, its bytes
    fill = struct.unpack(">i", head[at:at + 4])[0] if len(head) >= at + 4 else -1
    if fill not in (0, nt_size) or len(head) < at + 4 + fill:
        return f"says a fill value of {fill} bytes for {nt_size}-byte values"
    return ""


def _open(path: str) -> Any:
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    check_hdf4_header(path)
    try:
        return SD(path, SDC.READ)
    except HDF4Error as e:
        raise RasterError(f"not a readable HDF4 file: {e}; re-download it") from None


def _grid(sd: Any, band: str) -> Grid:
    struct = _text_attr(sd, "StructMetadata.0")
    if struct is None:
        raise RasterError("no StructMetadata.0 attribute: not an HDF-EOS grid file")
    return parse_struct_metadata(struct, band)


def hdf_layers(path: str) -> list[str]:
    """The names of a granule's datasets (for the manifest's record of the layers not used).

    Raises:
        RasterError: not a readable HDF4 file.
    """
    from pyhdf.error import HDF4Error

    sd = _open(path)
    try:
        return sorted(sd.datasets())
    except HDF4Error as e:
        raise RasterError(f"HDF4 read failed: {e}; truncated or corrupt, re-download it") from None
    finally:
        sd.end()


def read_hdf_grid(path: str, band: str) -> Grid:
    """The grid of `band` in a granule, from its metadata alone (no pixels read; ≈ 1 ms).

    Raises:
        RasterError: not a readable HDF4 file, or no usable grid.
    """
    from pyhdf.error import HDF4Error

    sd = _open(path)
    try:
        return _grid(sd, band)
    except HDF4Error as e:
        raise RasterError(f"HDF4 read failed: {e}; truncated or corrupt, re-download it") from None
    finally:
        sd.end()


def read_hdf_granule(path: str, bands: list[str] | None = None, state: str = STATE,
                     scaled: bool = True) -> dict[str, Any]:
    """One MOD09-style granule: {"grid", "date", "tile", "reflectance" (band, y, x) float32 with
    NaN at fill, "fill", "cloud", "shadow" (y, x) bool, "bands"}.

    Values are `raw · scale_factor + add_offset` from each band's own attributes. With
    `scaled=False`, "raw" (each band's array as stored) and "scale" / "offset" (per band) come
    instead of "reflectance": a cube then scales straight into its own memory, with no
    float32 copy of every granule on the way (at 2400 x 2400 px: 161 MB a granule).

    Raises:
        RasterError: not a readable HDF4 file, a band missing, or no usable grid.
    """
    from pyhdf.error import HDF4Error

    bands = bands or BANDS_500M
    date, tile = granule_date(path)
    sd = _open(path)
    try:
        *index, state_index = _indices(sd, [*bands, state])
        grid = _grid(sd, bands[0])
        fill = np.zeros((grid.height, grid.width), bool)
        raws, fills, scales, offsets = [], [], [], []
        for name, k in zip(bands, index, strict=True):
            ds = sd.select(k)
            attrs = _attrs(ds, ("_FillValue", "scale_factor", "add_offset"))
            dims = ds.info()[2]
            if list(np.atleast_1d(dims)) != [grid.height, grid.width]:  # before reading: a corrupt
                # header can claim 73 x 538976288 pixels (73 GiB to allocate)
                raise RasterError(f"{name} is {tuple(np.atleast_1d(dims))}, the grid "
                                  f"{grid.height}x{grid.width}")
            raw = _data(ds, name)
            np.logical_or(fill, raw == attrs.get("_FillValue"), out=fill)
            raws.append(raw)
            fills.append(attrs.get("_FillValue"))
            scales.append(float(attrs.get("scale_factor", 1.0)))
            offsets.append(float(attrs.get("add_offset", 0.0)))
        state_ds = sd.select(state_index)
        if list(np.atleast_1d(state_ds.info()[2])) != [grid.height, grid.width]:
            raise RasterError(f"{state} is {tuple(np.atleast_1d(state_ds.info()[2]))}, the grid "
                              f"{grid.height}x{grid.width}")
        masks = state_masks(_data(state_ds, state).astype(np.uint16))
    except HDF4Error as e:
        raise RasterError(f"HDF4 read failed: {e}; truncated or corrupt, re-download it") from None
    finally:
        sd.end()
    out = {"grid": grid, "date": date, "tile": tile, "fill": fill, "bands": bands, **masks}
    if not scaled:
        return {**out, "raw": raws, "scale": scales, "offset": offsets}
    reflectance = np.empty((len(bands), grid.height, grid.width), np.float32)
    scale_into(reflectance, raws, scales, offsets)
    for band, raw, fill_value in zip(reflectance, raws, fills, strict=True):
        np.copyto(band, np.nan, where=raw == fill_value)
    return {**out, "reflectance": reflectance}


@dataclass(frozen=True)
class SharedStack:
    """A tile's granules decoded into one memory-mapped file by worker processes on this
    machine, read in place by the driver: (granule, band, y, x) float32 values, then
    (flag, granule, y, x) bool fill / cloud / shadow. Decoded pixels then never cross a
    process boundary (a 2400 x 2400 granule is ≈ 110 MB of arrays, which Dask would pickle
    and copy back), and the driver's cube is this memory, not a copy of it. The values are
    NaN where not observed: fill, and cloud or shadow with `mask_clouds` (the cube's rule),
    so that work is done in the workers too."""

    path: str
    granules: int
    bands: int
    height: int
    width: int
    grid_key: tuple
    mask_clouds: bool = True

    @classmethod
    def create(cls, path: str, granules: int, bands: int, grid: Grid,
               mask_clouds: bool = True) -> SharedStack:
        """A zero-filled stack file at `path` (sparse: pages are allocated as they are written)."""
        stack = cls(path, granules, bands, grid.height, grid.width, grid.key, mask_clouds)
        with open(path, "wb") as f:
            f.truncate(stack.nbytes)
        return stack

    @property
    def nbytes(self) -> int:
        return self.granules * self.height * self.width * (4 * self.bands + len(FLAGS))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, flags) mapped from the file, writable."""
        shape = (self.granules, self.bands, self.height, self.width)
        values = np.memmap(self.path, np.float32, "r+", shape=shape)
        flags = np.memmap(self.path, np.bool_, "r+", offset=values.nbytes,
                          shape=(len(FLAGS), self.granules, self.height, self.width))
        return values, flags


def unobserved(fill: np.ndarray, cloud: np.ndarray, shadow: np.ndarray, mask_clouds: bool) -> np.ndarray:
    """Where a value is not an observation: fill, and cloud or shadow with `mask_clouds` (the
    cube's rule, for one granule or a whole stack; may be `fill` itself)."""
    return fill | cloud | shadow if mask_clouds else fill


def decode_granule(path: str, stack: SharedStack | None = None, slot: int = 0, *, bands: list[str],
                   state: str = STATE) -> dict[str, Any]:
    """A worker's task: `read_hdf_granule(scaled=False)` with the path, or {"path", "error"}.

    With a `stack`, a granule on the stack's grid is scaled and masked into `slot` and its flags
    written there; it comes back without arrays ("slot" in their place). One on another grid
    comes back whole, for its tile's grid vote to reject (or, if most granules share it, use)."""
    try:
        g = {"path": path, **read_hdf_granule(path, bands, state, scaled=False)}
    except RasterError as e:
        return {"path": path, "error": str(e)}
    if stack is None or g["grid"].key != stack.grid_key:
        return g
    values, flags = stack.arrays()
    scale_into(values[slot], g.pop("raw"), g.pop("scale"), g.pop("offset"))
    unseen = unobserved(g["fill"], g["cloud"], g["shadow"], stack.mask_clouds)
    for band in values[slot]:
        np.copyto(band, np.nan, where=unseen)
    for i, name in enumerate(FLAGS):
        flags[i, slot] = g.pop(name)
    return {**g, "slot": slot}


def scale_into(out: np.ndarray, raws: list[np.ndarray], scales: list[float], offsets: list[float]) -> None:
    """out[i] = raws[i] · scales[i] + offsets[i], in float32 and in place (no temporaries)."""
    for o, raw, scale, offset in zip(out, raws, scales, offsets, strict=True):
        np.multiply(raw, np.float32(scale), out=o)
        if offset:
            o += np.float32(offset)


def band_labels(descriptions: tuple[str | None, ...], tags: list[dict[str, str]]) -> list[str]:
    """Per band, the text its (date, channel) is parsed from: the band's description, or, without
    one, its tags as "KEY=value" joined by spaces (sorted by key); "" when it has neither."""
    return [d or " ".join(f"{k}={v}" for k, v in sorted(t.items())) for d, t in zip(descriptions, tags,
                                                                                     strict=True)]


def _tiff_errors() -> tuple[type[BaseException], ...]:
    """What rasterio raises for a file it cannot read: its own errors, a CRS it cannot parse, and
    UnicodeDecodeError for a band description or tag that is not UTF-8 (one flipped byte)."""
    from rasterio.errors import CRSError, RasterioError

    return (RasterioError, CRSError, UnicodeDecodeError)


def geotiff_labels(path: str, band_names: list[str] | None = None) -> list[str]:
    """The `band_labels` of a GeoTIFF (one per band), from its header alone (no pixels read); for
    a file whose bands have neither descriptions nor tags, `band_names` (data.modis.band_names)
    when given.

    Raises:
        RasterError: rasterio cannot open it, or `band_names` has another count than its bands.
    """
    import rasterio

    try:
        with rasterio.open(path) as r:
            labels = band_labels(r.descriptions, [r.tags(b) for b in r.indexes])
    except _tiff_errors() as e:
        raise RasterError(f"not a readable GeoTIFF: {e}") from None
    if not band_names or any(labels):
        return labels
    if len(band_names) != len(labels):
        raise RasterError(f"{len(labels)} bands without descriptions, but data.modis.band_names names "
                          f"{len(band_names)}: list one name per band (or write the band descriptions)")
    return list(band_names)


def read_geotiff(path: str, scale: float, bands: list[int] | None = None,
                 unscaled: frozenset[int] = frozenset()) -> dict[str, Any]:
    """The bands of a GeoTIFF: {"values" (band, y, x) float32 with NaN at nodata, "grid"}.

    `bands`: the 1-based band indexes to read, in that order (None: every band). Integer bands
    are multiplied by `scale`, except those whose index is in `unscaled` (static layers such as
    elevation are in their own units).

    Raises:
        RasterError: rasterio cannot open it, or it has no georeferencing.
    """
    import rasterio

    try:
        with rasterio.open(path) as r:
            bands = bands or list(r.indexes)
            raw = r.read(bands)
            nodata = r.nodata
            if r.crs is None:
                raise RasterError("no CRS: the GeoTIFF is not georeferenced")
            t = r.transform
            grid = Grid(path, r.width, r.height, (t.c, t.f), (t.c + t.a * r.width, t.f + t.e * r.height),
                        r.crs.to_wkt())
    except _tiff_errors() as e:
        raise RasterError(f"not a readable GeoTIFF: {e}") from None
    values = raw.astype(np.float32)
    if nodata is not None:
        values[raw == nodata] = np.nan
    values[~np.isfinite(values)] = np.nan
    if np.issubdtype(raw.dtype, np.integer):
        for k, band in enumerate(bands):
            if band not in unscaled:
                values[k] *= np.float32(scale)
    return {"values": values, "grid": grid}


def _date(groups: dict[str, str | None]) -> _dt.date | None:
    """The date a pattern's named groups give: date (ISO), year + doy, or year + month (its 1st).

    Raises:
        ValueError: the groups hold no valid date (month 13, day of year 400).
    """
    if groups.get("date"):
        return _dt.date.fromisoformat(groups["date"])
    if groups.get("year") and groups.get("doy"):
        year = int(groups["year"])
        day = _dt.date(year, 1, 1) + _dt.timedelta(int(groups["doy"]) - 1)
        if day.year != year:
            raise ValueError(f"day of year {groups['doy']} is not in {year}")
        return day
    if groups.get("year") and groups.get("month"):
        return _dt.date(int(groups["year"]), int(groups["month"]), 1)
    return None


def name_date(name: str, pattern: str) -> tuple[_dt.date, str | None]:
    """(date, band or None) from a file name by data.modis.name_pattern.

    Raises:
        RasterError: the name does not match or holds no date (the message shows the name and the
            pattern as written in the config).
    """
    m = re.search(pattern, name)
    if not m:
        # the pattern as written in the config, not its repr (which doubles every backslash)
        raise RasterError(f"file name does not match data.modis.name_pattern: '{name}' against "
                          f"'{pattern}'; fix the pattern or rename the file")
    try:
        date = _date(m.groupdict())
    except ValueError as e:
        raise RasterError(f"file name {name}: {e} (data.modis.name_pattern = {pattern})") from None
    if date is None:
        raise RasterError(f"data.modis.name_pattern = {pattern} matched {name} but gives no date: it needs "
                          "(?P<date>…) or (?P<year>…)(?P<doy>…)")
    return date, m.groupdict().get("band")


@dataclass(frozen=True)
class BandRole:
    """What one GeoTIFF band is: a time step of a channel (`date` set) or a static layer."""

    channel: str
    date: _dt.date | None = None


def band_role(label: str, named: tuple[_dt.date, str | None] | None, band_pattern: str | None,
              static_bands: list[str]) -> BandRole | None:
    """The role of a band with this `band_labels` text, or None when nothing maps it.

    A `static_bands` regex that fully matches the text or the pattern's channel makes it static;
    else `band_pattern` gives its channel and date (the date from the file name, `named`, when
    the description has none; neither: static).

    Raises:
        RasterError: the description matches but its date is not valid.
    """
    m = re.search(band_pattern, label) if band_pattern and label else None
    groups = m.groupdict() if m else {}
    channel = groups.get("channel") or label
    if any(re.fullmatch(p, label) or re.fullmatch(p, channel) for p in static_bands):
        return BandRole(channel)
    if not m:
        return None
    try:
        date = _date(groups) or (named[0] if named else None)
    except ValueError as e:
        raise RasterError(f"band description '{label}': {e} (data.modis.band_pattern = {band_pattern})") \
            from None
    return BandRole(groups.get("channel") or (named[1] if named else None) or "value", date)


def band_layout(path: str, labels: list[str], name_pattern: str, band_pattern: str | None = None,
                static_bands: list[str] | None = None) -> list[BandRole | None]:
    """Per band of a GeoTIFF (its `band_labels`), its role, or None for a band nothing maps (the
    manifest records those as unused).

    A single-band file that no band key maps takes its date and band from its name (one file per
    date and band); a multi-band one needs `band_pattern` or `static_bands`.

    Raises:
        RasterError: no band is mapped: the message names the keys to set, with the file's
            descriptions and the patterns as written.
    """
    name = path.rsplit("/", 1)[-1]
    try:
        named, why = name_date(name, name_pattern), None
    except RasterError as e:
        named, why = None, e
    roles = [band_role(label, named, band_pattern, static_bands or []) for label in labels]
    if any(roles):
        return roles
    if len(labels) == 1 and named:
        return [BandRole(named[1] or "value", named[0])]  # one file per date and band
    if len(labels) == 1:
        raise why
    raise unmapped(labels, band_pattern)


def unmapped(labels: list[str], band_pattern: str | None) -> RasterError:
    """The error of a multi-band file whose bands nothing maps, naming the fix."""
    described = [x for x in labels if x]
    if not described:
        return RasterError(f"{len(labels)} bands without descriptions or tags: nothing names their dates "
                           "and channels; write band descriptions (e.g. '2016-01-01 ndvi') and set "
                           "data.modis.band_pattern, or split it into one file per date and band named by "
                           "data.modis.name_pattern")
    shown = ", ".join(f"'{x}'" for x in described[:3]) + (" …" if len(described) > 3 else "")
    said = f"no band description matches data.modis.band_pattern = {band_pattern}" if band_pattern \
        else "data.modis.band_pattern is not set"
    return RasterError(f"{len(labels)} bands but {said} (descriptions: {shown}); set "
                       "data.modis.band_pattern to a regex with (?P<channel>…) and (?P<date>…), "
                       "(?P<year>…)(?P<doy>…) or (?P<year>…)(?P<month>…), and list undated layers in "
                       "data.modis.static_bands")
