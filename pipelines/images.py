"""Labelled images → pixel Parquet shards: an image-folder tree, or the UCI handwritten digits.

Two sources (data.images.source):

- **folder**: every file under `root` whose lowercased suffix is in `extensions`. Its class is
  the first folder under root (class_level "top": root/CLASS/…/img.jpg) or the folder that
  holds it (class_level "parent": root/GROUP/CLASS/img.jpg, the MediaEval 2016 layout
  root/<event>/{fakes,reals}/img.jpg). Files are decoded with Pillow on Dask, a batch of
  files per task, converted to mode RGB (channels 3) or L (channels 1) and resized to
  size x size (the aspect ratio is not kept: a classifier wants one shape).
- **digits**: `sklearn.datasets.load_digits()`, 1,797 real 8 x 8 greyscale images (values
  0..16) that ship inside scikit-learn; kept at 1 x 8 x 8, scaled to 0..255.

Rows: `id` (the path relative to root, or "digits/<index>"), `label` (int64 index into the
sorted class names) and `pixels` (uint8, C*H*W values in CHW order). The manifest declares
the input {"pixels": shape [C, H, W], dtype uint8, range [0, 1]}: readers divide by 255.

A file that cannot be used is quarantined with its reason and the run goes on: a symlink
that resolves outside root (never read), a broken symlink, something that is not a regular
file (a FIFO would block the reader), a file with no class folder, an unreadable file, one
Pillow cannot identify, a decompression bomb (width x height > max_pixels, checked on the
header before any pixel is decoded), a truncated or corrupt file.
"""

from __future__ import annotations

import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from advorch import __version__
from advorch.config import DataConfig, ImagesConfig
from advorch.pipelines.common import SPLITS, PipelineError, Summary, stratified_split, unused
from advorch.pipelines.shards import (
    HASH,
    DatasetWriter,
    Quarantine,
    file_fingerprint,
    read_manifest,
    sources_unchanged,
    write_part,
)
from advorch.progress import track

SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int64()), ("pixels", pa.list_(pa.uint8()))])
DIGITS_SOURCE = "sklearn.datasets.load_digits"
DIGITS_SHAPE = (1, 8, 8)
MAX_BATCH = 64  # files per decode task at most: a task per file would drown Dask in overhead
WHITE = (255, 255, 255, 255)


class Rejected(Exception):
    """A file the pipeline will not use; the message is its quarantine reason."""


@dataclass(frozen=True)
class Candidate:
    """One file found under root: its row id, the path shown to users, what is read, its class."""

    rel: str  # path relative to root, POSIX separators: the row id
    shown: str  # root as configured + rel: the quarantine and manifest source path
    real: str  # absolute, symlinks resolved: what workers open (their cwd may differ)
    cls: str | None  # None: rejected at scan time
    reason: str | None = None  # why it was rejected at scan time


# ---------------------------------------------------------------- decoding (runs on workers)


def decode_file(path: str, size: int, mode: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """One image file → (C*size*size uint8 values in CHW order, whether it was resized).

    The size check reads only the header (Image.open is lazy), so a decompression bomb is
    rejected before its pixels are decoded. Animated images give their first frame.

    Raises:
        Rejected: the file is unreadable, not an image, a bomb, truncated or corrupt.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        # O_NOFOLLOW: the scan resolved every symlink; a file swapped for a link since then is
        # refused, not followed out of root. O_NONBLOCK: a FIFO swapped in cannot hang the task.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise Rejected(f"unreadable: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise Rejected("not a regular file: it changed since the scan")
        try:
            with Image.open(f) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise Rejected(f"decompression bomb: {w} x {h} = {w * h:,} pixels > "
                                   f"data.images.max_pixels {max_pixels:,}; raise it if the image is genuine")
                # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, still >= size x size (faster)
                img.draft(mode, (size, size))
                img.load()  # frame 0; raises OSError on a truncated file (LOAD_TRUNCATED_IMAGES untouched)
                if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
                    # a transparent pixel's colour is arbitrary (often black): show it as on a white page
                    rgba = img.convert("RGBA")
                    img_out = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert(mode)
                else:
                    img_out = img.convert(mode)
        except Rejected:
            raise
        except Image.DecompressionBombError as e:
            # Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS), hit inside Image.open
            raise Rejected(f"decompression bomb: {e}") from None
        except UnidentifiedImageError:
            raise Rejected("not an image: Pillow recognises no image format in it") from None
        except OSError as e:
            kind = "truncated" if "truncated" in str(e) else "corrupt"
            raise Rejected(f"{kind}: {e}") from None
        except Exception as e:  # Pillow's plugins also raise ValueError, SyntaxError, struct.error …
            raise Rejected(f"corrupt: {type(e).__name__}: {e}") from None
    resized = (w, h) != (size, size)  # the stored size, not the draft's
    if img_out.size != (size, size):
        # reducing_gap: a cheap box reduction first on big downscales, then bilinear
        img_out = img_out.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    channels = len(img_out.getbands())
    hwc = np.asarray(img_out, dtype=np.uint8).reshape(size, size, channels)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)).ravel(), resized


def decode_batch(paths: list[str], size: int, channels: int, max_pixels: int) -> dict[str, Any]:
    """Decode a batch of files (one Dask task).

    Returns {"ok": [index in paths], "pixels": uint8 array (len(ok), C*size*size),
    "resized": n, "bad": [(index, reason)]}.
    """
    mode = "RGB" if channels == 3 else "L"
    pixels = np.empty((len(paths), channels * size * size), np.uint8)
    ok: list[int] = []
    bad: list[tuple[int, str]] = []
    resized = 0
    for i, path in enumerate(paths):
        try:
            values, was_resized = decode_file(path, size, mode, max_pixels)
        except Rejected as e:
            bad.append((i, str(e)))
            continue
        pixels[len(ok)] = values
        ok.append(i)
        resized += was_resized
    return {"ok": ok, "pixels": pixels[:len(ok)], "resized": resized, "bad": bad}


# ---------------------------------------------------------------- the folder scan (driver)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def scan_folder(root: str, class_level: str | None, extensions: list[str],
                what: str = "data.images.root") -> tuple[list[Candidate], list[str]]:
    """Every file under `root` with an allowed suffix, classed or rejected; and the files (paths
    under root) skipped for their suffix. Symlinked folders are never descended into.
    `class_level` None: files need no class folder (their `cls` is ""); `what`: the config key.

    Raises:
        PipelineError: root is missing or not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise PipelineError(f"{what} {root} does not exist or is not a folder; "
                            + ("point it at the folder that holds the images" if class_level is None
                               else "point it at the folder that holds one sub-folder per class"))
    real_root = os.path.realpath(base)
    exts = {e.lower() for e in extensions}
    shown_root = str(root).rstrip("/")
    found: list[Candidate] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()  # a deterministic walk: the same tree gives the same rows in the same order
        here = Path(dirpath)
        for d in dirnames:
            link = here / d
            if link.is_symlink():
                target = os.path.realpath(link)
                if not _inside(target, real_root):
                    rel = link.relative_to(base).as_posix()
                    found.append(Candidate(rel, f"{shown_root}/{rel}", target, None,
                                           f"outside root: symlinked folder → {target}, outside "
                                           f"{real_root}; not followed"))
                # one inside root is not followed either: its target is walked as itself
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() not in exts:
                skipped.append(path.relative_to(base).as_posix())
                continue
            rel = path.relative_to(base).as_posix()
            shown = f"{shown_root}/{rel}"
            real = os.path.realpath(path)
            if path.is_symlink() and not os.path.exists(real):
                found.append(Candidate(rel, shown, real, None, f"broken symlink: → {os.readlink(path)}"))
                continue
            if not _inside(real, real_root):
                found.append(Candidate(rel, shown, real, None,
                                       f"outside root: symlink → {real}, outside {real_root}; not read"))
                continue
            try:
                regular = stat.S_ISREG(os.stat(real).st_mode)
            except OSError as e:
                found.append(Candidate(rel, shown, real, None, f"unreadable: {e.strerror or e}"))
                continue
            if not regular:
                found.append(Candidate(rel, shown, real, None,
                                       "not a regular file: a FIFO, device or socket is never read"))
                continue
            parts = rel.split("/")
            if class_level is None:
                found.append(Candidate(rel, shown, real, ""))
            elif class_level == "top" and len(parts) >= 2:
                found.append(Candidate(rel, shown, real, parts[0]))
            elif class_level == "parent" and len(parts) >= 3:
                found.append(Candidate(rel, shown, real, parts[-2]))
            else:
                layout = "root/CLASS/file" if class_level == "top" else "root/GROUP/CLASS/file"
                found.append(Candidate(rel, shown, real, None,
                                       f"no class folder: class_level {class_level!r} expects {layout}"))
    return found, skipped


def _fingerprints(found: list[Candidate], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The manifest source record of every file found: path, size, mtime, BLAKE3.

    Files rejected by the scan are never read (a FIFO would block, a link outside root must
    not be followed): their record holds no hash, so fixing one changes the sources and
    rebuilds. The resolved path is hashed, so a symlink's record follows its target's content.
    """
    known = {s["path"]: s for s in (previous or {}).get("sources", [])}

    def one(c: Candidate) -> dict[str, Any]:
        if c.reason is not None:
            return {"path": c.shown, "size": None, "mtime": None, HASH: None}
        try:
            record = file_fingerprint(c.real, known.get(c.shown))
        except (OSError, ValueError):
            return {"path": c.shown, "size": None, "mtime": None, HASH: None}  # quarantined on decode
        return {**record, "path": c.shown}

    with ThreadPoolExecutor(min(max(len(found), 1), os.cpu_count() or 1)) as pool:
        return list(pool.map(one, found))  # reads and BLAKE3 release the GIL


# ---------------------------------------------------------------- writing (driver)


def pixel_lists(pixels: np.ndarray) -> pa.ListArray:
    """(n, C*H*W) uint8 → a list<uint8> column, without a copy per row (one offsets array over
    the flat values)."""
    n, width = pixels.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(pixels).ravel(), type=pa.uint8())
    return pa.ListArray.from_arrays(offsets, values, type=pa.list_(pa.uint8()))


def pixel_table(ids: np.ndarray, labels: np.ndarray, pixels: np.ndarray) -> pa.Table:
    """Rows as a table of SCHEMA; `pixels` is (n, C*H*W) uint8."""
    return pa.table({"id": pa.array(ids.tolist(), pa.string()),
                     "label": pa.array(labels, pa.int64()),
                     "pixels": pixel_lists(pixels)},
                    schema=SCHEMA)


def write_splits(writer: DatasetWriter, ids: np.ndarray, labels: np.ndarray, pixels: np.ndarray,
                 classes: list[str], cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """Split (seeded, stratified), shuffle within each split and write parts of cfg.part_rows rows;
    return the `splits` argument of DatasetWriter.commit."""
    split = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    # shuffled, so that any contiguous slice of a split (a worker's shard) mixes the classes
    order = np.random.default_rng(cfg.seed + 1).permutation(len(labels))
    plan = []
    splits: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        members = order[split[order] == name]
        per_class = np.bincount(labels[members], minlength=len(classes))
        splits[name] = {"parts": [], "classes": {c: int(per_class[i]) for i, c in enumerate(classes)}}
        plan += [(name, index, members[start:start + cfg.part_rows])
                 for index, start in enumerate(range(0, len(members), cfg.part_rows))]
    for name, index, idx in track(plan, "writing parts", total=len(plan)):
        rows = write_part(writer.part_uri(name, index), pixel_table(ids[idx], labels[idx], pixels[idx]))
        splits[name]["parts"].append({"index": index, "rows": rows})
    return splits


def _check_part_size(cfg: DataConfig, shape: tuple[int, int, int]) -> None:
    values = cfg.part_rows * math.prod(shape)
    if values >= 2**31:  # list<uint8> offsets are int32
        raise PipelineError(f"data.part_rows = {cfg.part_rows} rows of {shape} pixels is {values:,} values "
                            f"per part, over the 2^31 a Parquet list column holds; lower data.part_rows "
                            f"to at most {(2**31 - 1) // math.prod(shape)}")


# ---------------------------------------------------------------- the two sources


def _load_digits() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(pixels (1797, 64) uint8, labels int64, the source record).

    data.images.size and .channels do not apply: the digits stay 1 x 8 x 8, as the manifest's
    shape says. (They are not refused either: a config re-validated from a dump, as
    ExperimentConfig.override does, sets every default explicitly.)
    """
    import sklearn
    from blake3 import blake3
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw, target = np.ascontiguousarray(digits.images), np.ascontiguousarray(digits.target)
    # 0..16 → 0..255 (np.rint rounds half to even, as Python's round: 8 → 127.5 → 128)
    pixels = np.rint(raw * (255 / 16)).astype(np.uint8).reshape(len(raw), -1)
    digest = blake3(raw.tobytes()).update(target.tobytes()).hexdigest()  # the images and their labels
    source = {"path": DIGITS_SOURCE, "version": sklearn.__version__,
              "size": raw.nbytes + target.nbytes, HASH: digest, "rows": len(raw)}
    return pixels, target.astype(np.int64), source


def _params(cfg: DataConfig) -> dict[str, Any]:
    # the producing version too: a release that decodes or resizes differently must rebuild
    im = cfg.images
    params: dict[str, Any] = {"advorch": __version__, "source": im.source,
                              "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction,
                              "seed": cfg.seed, "part_rows": cfg.part_rows}
    if im.source == "folder":
        params |= {"root": im.root, "class_level": im.class_level,
                   "extensions": sorted({e.lower() for e in im.extensions}), "size": im.size,
                   "channels": im.channels, "max_pixels": im.max_pixels}
    return params


def _decode_folder(found: list[Candidate], im: ImagesConfig, quarantine: Quarantine,
                   dask_address: str | None) -> tuple[list[Candidate], np.ndarray, int]:
    """Decode every classed file on Dask; quarantine the failures. Returns the decoded files,
    their pixels (n, C*S*S) and how many were resized."""
    from advorch.pipelines.cluster import dask_client

    todo = [c for c in found if c.reason is None]
    if not todo:
        return [], np.empty((0, im.channels * im.size * im.size), np.uint8), 0
    with dask_client(dask_address) as client:
        return decode_on(client, todo, im.size, im.channels, im.max_pixels, quarantine)


def decode_on(client: Any, todo: list[Candidate], size: int, channels: int, max_pixels: int,
              quarantine: Quarantine) -> tuple[list[Candidate], np.ndarray, int]:
    """Decode files on the Dask `client`, a batch per task; quarantine the failures (by their
    shown path). Returns the decoded files, their pixels (n, C*S*S) and how many were resized."""
    good: list[Candidate] = []
    chunks: list[np.ndarray] = [np.empty((0, channels * size * size), np.uint8)]
    resized = 0
    workers = max(len(client.scheduler_info()["workers"]), 1)
    per_task = max(1, min(MAX_BATCH, math.ceil(len(todo) / (4 * workers))))  # ~4 tasks a worker
    batches = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
    futures = [client.submit(decode_batch, [c.real for c in b], size, channels, max_pixels, pure=False)
               for b in batches]
    for batch, fut in zip(batches, track(futures, "decoding images", total=len(futures)), strict=True):
        result = fut.result()
        good += [batch[i] for i in result["ok"]]
        chunks.append(result["pixels"])
        resized += result["resized"]
        for i, reason in result["bad"]:
            quarantine.add(batch[i].shown, reason)
    return good, np.concatenate(chunks), resized


def run(cfg: DataConfig, output: str | None = None, dask_address: str | None = None) -> Summary:
    """Build (or confirm up to date) the images dataset at `output` (default cfg.output).

    Raises:
        PipelineError: root missing or unset, no usable image, fewer than two classes with
            images, or parts that would overflow a Parquet list column.
        ShardError: the output folder cannot be written.
    """
    output = output or cfg.output
    im = cfg.images
    previous = read_manifest(output)
    params = _params(cfg)
    quarantine = Quarantine()
    extra_images: dict[str, Any]

    if im.source == "digits":
        shape = DIGITS_SHAPE
        _check_part_size(cfg, shape)
        pixels, labels, source = _load_digits()
        sources = [source]
        if sources_unchanged(previous, sources, params):
            return Summary.of(output, previous, up_to_date=True)
        classes = [str(d) for d in range(10)]
        ids = np.array([f"digits/{i}" for i in range(len(labels))], dtype=object)
        extra_images = {"decoded": len(labels), "resized": 0}
        extra_unused: list[dict] = []  # every image, every pixel of sklearn's digits
        empty: list[str] = []
        found: list[Candidate] | None = None
    else:
        if not im.root:
            raise PipelineError('data.images.root is not set: source = "folder" needs the folder that '
                                "holds the class sub-folders")
        shape = (im.channels, im.size, im.size)
        _check_part_size(cfg, shape)
        found, skipped = scan_folder(im.root, im.class_level, im.extensions)
        classed = {c.cls for c in found if c.cls is not None}
        if len(classed) < 2:
            raise PipelineError(
                f"data.images.root {im.root}: {len(found)} files with suffix {', '.join(im.extensions)} "
                f"({len(skipped)} others skipped), in {len(classed)} class folder(s) "
                f"{sorted(classed) or ''}; a classifier needs images in at least two class folders "
                f"(class_level {im.class_level!r}: "
                + ("root/CLASS/img" if im.class_level == "top" else "root/GROUP/CLASS/img")
                + "); fix the layout, data.images.class_level or data.images.extensions")
        sources = _fingerprints(found, previous)
        if sources_unchanged(previous, sources, params):
            return Summary.of(output, previous, up_to_date=True)

    writer = DatasetWriter(output, kind="images", health=cfg.health)
    try:
        if found is not None:
            for c in found:
                if c.reason is not None:
                    quarantine.add(c.shown, c.reason)
            good, pixels, n_resized = _decode_folder(found, im, quarantine, dask_address)
            classes = sorted({c.cls for c in good})
            empty = sorted({c.cls for c in found if c.cls is not None} - set(classes))
            if len(classes) < 2:
                raise PipelineError(
                    f"data.images.root {im.root}: {len(good)} usable images in {len(classes)} class(es) "
                    f"{classes}, {len(quarantine)} files quarantined ({quarantine.by_reason()}); a "
                    "classifier needs usable images in at least two classes: fix or replace the "
                    "quarantined files")
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[c.cls] for c in good], dtype=np.int64)
            ids = np.array([c.rel for c in good], dtype=object)
            extra_images = {"files": len(found), "decoded": len(good), "resized": n_resized,
                            "skipped_suffix": len(skipped)}
            extra_unused = [unused(im.root, "files", skipped)] if skipped else []
        quarantine.records.sort(key=lambda r: r["source"])  # the scan's and the workers' in one order
        splits = write_splits(writer, ids, labels, pixels, classes, cfg)
        counts = np.bincount(labels, minlength=len(classes))
        c, h, w = shape
        manifest = writer.commit(
            splits=splits, schema=SCHEMA, sources=sources, quarantine=quarantine, params=params,
            classes=classes, shapes={"pixels": [c, h, w], "label": []},
            inputs={"pixels": {"column": "pixels", "shape": [c, h, w], "dtype": "uint8",
                               "range": [0.0, 1.0]}},
            task="classification",
            extra={"class_counts": {name: int(counts[i]) for i, name in enumerate(classes)},
                   "empty_classes": empty, "images": extra_images, "unused": extra_unused},
        )
    except BaseException:
        writer.abort()
        raise
    return Summary.of(output, manifest)
