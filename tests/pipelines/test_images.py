"""The images pipeline (pipelines/images.py) on real images, on real Dask: the scikit-learn
digits (1,797 real 8 x 8 images), a class-folder tree assembled from copies of real crisis
and MediaEval 2016 images plus generated bad files, and the real MediaEval 2016 dev-set
folder in its <event>/{fakes,reals} layout.

Generated files: the real data holds no truncated, fake, bomb, FIFO or symlinked images, so
the tests write those themselves (each is marked where it is made). Everything is built in
tmp_path; the shared data is only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from PIL import Image

from advorch.config import DataConfig, load_config
from advorch.pipelines import images
from advorch.pipelines.common import PipelineError
from advorch.pipelines.history import locked_run, read_history
from advorch.pipelines.shards import MANIFEST, read_manifest, read_split
from advorch.pipelines.spec import InputSpec, read_spec
from tests.conftest import ROOT, SHARED_DATA

CRISIS = SHARED_DATA / "crisis_images"
MEDIAEVAL = SHARED_DATA / "tweets/mediaeval2016/mediaeval2016/devset/Medieval2016_DevSet_Images"
SPLITS = ("train", "val", "test")
EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif"]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def crisis() -> list[Path]:
    files = sorted(CRISIS.glob("*.jpg"))
    if len(files) < 8:
        pytest.skip(f"real crisis images not found at {CRISIS} (../shared/data beside the repository)")
    return files


@pytest.fixture(scope="module")
def mediaeval() -> Path:
    if not (MEDIAEVAL / "BostonMarathon" / "fakes").is_dir():
        pytest.skip(f"real MediaEval 2016 images not found at {MEDIAEVAL}")
    return MEDIAEVAL


def folder_config(root: Path, output: Path, **values) -> DataConfig:
    """A data config for source = "folder" (plus data.images.KEY values)."""
    sets = ['data.kind="images"', f'data.output="{output}"', 'data.images.source="folder"',
            f'data.images.root="{root}"']
    return load_config(None, sets + [f"data.images.{k}={json.dumps(v)}" for k, v in values.items()]).data


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under root (root included) with inode, size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def rows(out: Path) -> dict[str, tuple[int, np.ndarray, str]]:
    """id → (label, pixels, split) over every split the manifest lists."""
    found = {}
    for split in SPLITS:
        if not read_manifest(str(out))["splits"][split]["parts"]:
            continue
        table = read_split(str(out), split).to_pydict()
        for i, label, pixels in zip(table["id"], table["label"], table["pixels"], strict=True):
            found[i] = (label, np.array(pixels, np.uint8), split)
    return found


def quarantined(out: Path, manifest: dict) -> dict[str, str]:
    """source → reason, from the quarantine file the manifest lists."""
    lines = (out / manifest["quarantine"]["file"]).read_text().splitlines()
    return {r["source"]: r["reason"] for r in map(json.loads, lines)}


def png_header(width: int, height: int) -> bytes:
    """GENERATED: a PNG whose header claims width x height, with one tiny IDAT chunk. Image.open
    reads the size from it; decoding it would fail as truncated, so a "decompression bomb"
    verdict shows the size was checked before any pixel was decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_out(tmp_path_factory) -> Path:
    """configs/digits.toml built once into tmp (read-only for the tests that take it), the way
    `advorch preprocess` runs it: through locked_run, which dispatches on data.kind."""
    out = tmp_path_factory.mktemp("digits") / "shards"
    cfg = load_config(ROOT / "configs" / "digits.toml", [f'data.output="{out}"'])
    assert cfg.data.kind == "images" and cfg.data.images.source == "digits"
    summary = locked_run(cfg.data)
    assert not summary.up_to_date and summary.rows == 1797
    [record] = read_history(str(out))
    assert (record["status"], record["kind"], record["rows"]) == ("built", "images", 1797)
    return out


def test_digits_manifest_split_and_spec(digits_out):
    from sklearn.datasets import load_digits

    d = load_digits()
    m = read_manifest(str(digits_out))
    assert (m["kind"], m["task"], m["rows"]) == ("images", "classification", 1797)
    assert m["classes"] == [str(i) for i in range(10)]
    assert m["shapes"] == {"pixels": [1, 8, 8], "label": []}
    assert m["quarantine"]["count"] == 0 and m["quarantine"]["file"] is None
    [src] = m["sources"]
    import sklearn
    assert src["path"] == "sklearn.datasets.load_digits" and src["version"] == sklearn.__version__
    assert src["blake3"] == blake3(d.images.tobytes()).update(d.target.tobytes()).hexdigest()

    # the seeded, stratified 50/50 protocol: half of every class is test, 10 % of the rest val
    per_class = Counter(d.target.tolist())
    assert m["class_counts"] == {str(c): n for c, n in sorted(per_class.items())}
    split_classes = {s: m["splits"][s]["classes"] for s in SPLITS}
    for c, n in per_class.items():
        test, val, train = (split_classes[s][str(c)] for s in ("test", "val", "train"))
        assert train + val + test == n
        assert test in (n // 2, (n + 1) // 2), (c, n, test)
        assert abs(val - 0.1 * (n - test)) <= 1, (c, n, val)
    assert sum(split_classes["test"].values()) in (898, 899)  # 1797 / 2

    # the rows the parts hold match the manifest, and every image is there once
    got = rows(digits_out)
    assert set(got) == {f"digits/{i}" for i in range(1797)}
    for s in SPLITS:
        labels = Counter(str(label) for label, _, split in got.values() if split == s)
        assert dict(labels) == {k: v for k, v in split_classes[s].items() if v}, s
    # shuffled within the split (a slice a worker reads mixes the classes), not in id order
    first = read_split(str(digits_out), "train").column("id").to_pylist()[:50]
    assert first != sorted(first, key=lambda i: int(i.split("/")[1]))
    assert len({got[i][0] for i in first}) == 10

    # the pixels: 0..16 scaled to 0..255 with round(), labels are the digit, CHW of 1 x 8 x 8
    for i in (0, 1, 500, 1796):
        label, pixels, _ = got[f"digits/{i}"]
        assert label == d.target[i]
        assert pixels.tolist() == [round(v * 255 / 16) for v in d.images[i].ravel().tolist()]
    assert max(int(p.max()) for _, p, _ in got.values()) == 255
    assert min(int(p.min()) for _, p, _ in got.values()) == 0

    spec = read_spec(str(digits_out))
    assert spec.inputs == {"pixels": InputSpec("pixels", "pixels", (1, 8, 8), "uint8", (0.0, 1.0))}
    assert spec.num_classes == 10 and spec.split_rows == {s: m["splits"][s]["rows"] for s in SPLITS}


def test_digits_rerun_is_up_to_date_and_new_params_rebuild(digits_out, tmp_path):
    before = snapshot(digits_out)
    cfg = load_config(ROOT / "configs" / "digits.toml", [f'data.output="{digits_out}"'])
    summary = images.run(cfg.data)
    assert summary.up_to_date and summary.rows == 1797
    assert snapshot(digits_out) == before  # nothing written, not even touched

    # a new seed is a new build (on a copy: the module's build stays as it was)
    copy = tmp_path / "shards"
    shutil.copytree(digits_out, copy)
    old = read_manifest(str(copy))
    cfg = load_config(ROOT / "configs" / "digits.toml", [f'data.output="{copy}"', "data.seed=1"])
    new = images.run(cfg.data).manifest
    assert new["build_id"] != old["build_id"] and new["params"]["seed"] == 1
    assert sorted(p.name for p in (copy / "parts").iterdir()) == sorted(
        Path(p["path"]).name for s in new["splits"].values() for p in s["parts"])  # old parts gone


# ---------------------------------------------------------------- a folder tree with bad files


@pytest.fixture
def tree(tmp_path, crisis, mediaeval) -> tuple[Path, dict[str, str], set[str]]:
    """root/{crisis,mediaeval,broken}/… of copied real images and generated bad files.

    Returns (root, {bad file: expected reason prefix}, {ids of the good images}).
    """
    root = tmp_path / "tree"
    outside = tmp_path / "outside"
    for d in (root / "crisis", root / "mediaeval", root / "broken", outside):
        d.mkdir(parents=True)
    good = set()
    for src in crisis[:6]:
        shutil.copy(src, root / "crisis" / src.name)
        good.add(f"crisis/{src.name}")
    boston = mediaeval / "BostonMarathon"
    for src in [*sorted((boston / "reals").glob("*.jpg"))[:4],
                boston / "fakes" / "boston_fake_10.gif",    # real animated GIF (15 frames, palette)
                boston / "fakes" / "boston_fake_34.png"]:   # real RGBA PNG
        shutil.copy(src, root / "mediaeval" / src.name)
        good.add(f"mediaeval/{src.name}")
    (root / "crisis" / "alias.jpg").symlink_to(root / "crisis" / crisis[0].name)  # a link inside root: used
    good.add("crisis/alias.jpg")
    (root / "crisis" / "readme.txt").write_text("not an image suffix: skipped, not quarantined\n")

    # GENERATED bad files (the real data has none of these)
    real = crisis[6].read_bytes()
    (root / "crisis" / "truncated.jpg").write_bytes(real[: len(real) // 2])   # first half of a real JPEG
    (root / "crisis" / "notes.jpg").write_text("a text file named .jpg\n")
    shutil.copy(crisis[7], outside / "elsewhere.jpg")
    (root / "crisis" / "outside.jpg").symlink_to(outside / "elsewhere.jpg")   # resolves outside root
    (root / "crisis" / "dangling.jpg").symlink_to(root / "crisis" / "gone.jpg")
    (root / "mediaeval" / "bomb.png").write_bytes(png_header(20_000, 20_000))  # > Pillow's own limit
    (root / "mediaeval" / "big.png").write_bytes(png_header(5_000, 5_000))    # > max_pixels only
    (root / "broken" / "empty.jpg").write_bytes(b"")
    os.mkfifo(root / "broken" / "fifo.jpg")                                   # reading it would block
    shutil.copy(crisis[7], root / "loose.jpg")                                # no class folder
    (root / "linked").symlink_to(outside, target_is_directory=True)          # a folder outside root
    bad = {"crisis/truncated.jpg": "truncated", "crisis/notes.jpg": "not an image",
           "crisis/outside.jpg": "outside root", "crisis/dangling.jpg": "broken symlink",
           "mediaeval/bomb.png": "decompression bomb", "mediaeval/big.png": "decompression bomb",
           "broken/empty.jpg": "not an image", "broken/fifo.jpg": "not a regular file",
           "loose.jpg": "no class folder", "linked": "outside root"}
    return root, bad, good


def test_folder_build_quarantines_every_bad_file(tree, crisis, tmp_path, dask_address):
    root, bad, good = tree
    out = tmp_path / "shards"
    size = 16
    cfg = folder_config(root, out, extensions=EXTENSIONS, size=size, channels=3, max_pixels=9_000_000)
    cfg.health.on_problem = "warn"  # a handful of good images: not every class in every split
    m = images.run(cfg, dask_address=dask_address).manifest
    assert m["warnings"] and all("unhealthy dataset built" in w for w in m["warnings"])

    # every bad file, with its reason, in the quarantine file and its count; the run went on
    reasons = quarantined(out, m)
    assert set(reasons) == {f"{root}/{rel}" for rel in bad}
    for rel, prefix in bad.items():
        assert reasons[f"{root}/{rel}"].startswith(prefix + ":"), (rel, reasons[f"{root}/{rel}"])
    assert m["quarantine"]["count"] == len(bad)
    assert m["quarantine"]["by_reason"] == dict(Counter(bad.values()))
    assert "exceeds limit" in reasons[f"{root}/mediaeval/bomb.png"]   # Pillow's hard limit
    assert "> data.images.max_pixels 9,000,000" in reasons[f"{root}/mediaeval/big.png"]  # ours

    # every good image is a row of shape [3, S, S]; the class with no usable image is left out
    assert m["classes"] == ["crisis", "mediaeval"] and m["empty_classes"] == ["broken"]
    assert m["shapes"]["pixels"] == [3, size, size]
    got = rows(out)
    assert set(got) == good and m["rows"] == len(good)
    assert all(p.shape == (3 * size * size,) for _, p, _ in got.values())
    assert {i: m["classes"][label] for i, (label, _, _) in got.items()} == {i: i.split("/")[0] for i in good}
    assert m["class_counts"] == dict(Counter(i.split("/")[0] for i in good))
    assert m["images"] == {"files": len(good) + len(bad), "decoded": len(good), "resized": len(good),
                           "skipped_suffix": 1}
    # the skipped file is not dropped without a word: the manifest (and the run summary) name it
    assert m["unused"] == [{"source": str(root), "what": "files", "names": ["crisis/readme.txt"], "count": 1,
                            "declared": False}]
    spec = read_spec(str(out))
    assert spec.inputs["pixels"] == InputSpec("pixels", "pixels", (3, size, size), "uint8", (0.0, 1.0))

    # CHW: each stored channel plane keeps its own colour (the channel means of the full image)
    link_target = f"crisis/{Path(os.readlink(root / 'crisis' / 'alias.jpg')).name}"
    assert np.array_equal(got["crisis/alias.jpg"][1], got[link_target][1])
    for rel in good - {"crisis/alias.jpg", "mediaeval/boston_fake_10.gif", "mediaeval/boston_fake_34.png"}:
        full = np.asarray(Image.open(root / rel).convert("RGB"), np.float64).mean(axis=(0, 1))
        stored = got[rel][1].reshape(3, size, size).mean(axis=(1, 2))
        assert np.abs(stored - full).max() < 8, (rel, stored, full)

    # the animated GIF gives its first frame
    def frame(k: int) -> np.ndarray:
        with Image.open(root / "mediaeval" / "boston_fake_10.gif") as gif:
            gif.seek(k)
            rgba = gif.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        small = Image.alpha_composite(white, rgba).convert("RGB").resize((size, size),
                                                                        Image.Resampling.BILINEAR)
        return np.asarray(small, np.float64).transpose(2, 0, 1).ravel()
    stored = got["mediaeval/boston_fake_10.gif"][1].astype(np.float64)
    assert np.abs(stored - frame(0)).mean() < np.abs(stored - frame(1)).mean()

    # up to date: the same files and params write nothing
    before = snapshot(out)
    assert images.run(cfg, dask_address=dask_address).up_to_date
    assert snapshot(out) == before

    # a fixed file changes the sources: rebuilt, with it as a row and out of the quarantine
    shutil.copy(crisis[6], root / "crisis" / "truncated.jpg")
    m2 = images.run(cfg, dask_address=dask_address).manifest
    assert m2["rows"] == len(good) + 1 and m2["quarantine"]["count"] == len(bad) - 1
    assert f"{root}/crisis/truncated.jpg" not in quarantined(out, m2)
    assert not (out / m["quarantine"]["file"]).exists()  # the previous build's quarantine file is gone


def test_folder_errors(tmp_path, crisis, dask_address):
    out = tmp_path / "shards"
    missing = re.escape(f"data.images.root {tmp_path / 'nowhere'} does not exist")
    with pytest.raises(PipelineError, match=missing):
        images.run(folder_config(tmp_path / "nowhere", out))

    one = tmp_path / "one"
    (one / "crisis").mkdir(parents=True)
    shutil.copy(crisis[0], one / "crisis" / crisis[0].name)
    one_class = r"in 1 class folder\(s\) \['crisis'\].*at least two class folders"
    with pytest.raises(PipelineError, match=one_class):
        images.run(folder_config(one, out))
    # class_level parent wants root/GROUP/CLASS/img: root/CLASS/img gives no class at all
    with pytest.raises(PipelineError, match="in 0 class folder"):
        images.run(folder_config(one, out, class_level="parent"))
    assert not out.exists()  # all refused before anything was staged

    # two class folders, but one holds only a bad (GENERATED: text named .jpg) file: found on decode
    (one / "other").mkdir()
    (one / "other" / "fake.jpg").write_text("not an image\n")
    with pytest.raises(PipelineError, match=r"1 usable images in 1 class\(es\) \['crisis'\].*not an image"):
        images.run(folder_config(one, out), dask_address=dask_address)
    assert read_manifest(str(out)) is None
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]  # the writer aborted


# ---------------------------------------------------------------- the real MediaEval 2016 tree


def test_mediaeval_parent_class_level(mediaeval, tmp_path, dask_address):
    out = tmp_path / "shards"
    cfg = load_config(ROOT / "configs" / "mediaeval_images.toml",
                      [f'data.output="{out}"', f'data.images.root="{mediaeval}"']).data
    assert cfg.images.class_level == "parent" and cfg.images.size == 32 and cfg.images.channels == 3
    m = images.run(cfg, dask_address=dask_address).manifest

    # what the folder holds, counted here from the tree itself
    files = [p for p in mediaeval.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS]
    classed = [p for p in files if len(p.relative_to(mediaeval).parts) == 3]    # <event>/<class>/img
    loose = [p for p in files if len(p.relative_to(mediaeval).parts) == 2]      # <event>/img: no class
    assert len(files) == len(classed) + len(loose) and len(classed) > 300 and len(loose) > 50
    expected = Counter(p.parent.name for p in classed)
    assert set(expected) == {"fakes", "reals"}

    assert m["classes"] == ["fakes", "reals"] and m["class_counts"] == dict(expected)
    assert m["rows"] == len(classed)  # every classed real image decodes
    assert m["shapes"]["pixels"] == [3, 32, 32]
    reasons = quarantined(out, m)
    assert set(reasons) == {f"{mediaeval}/{p.relative_to(mediaeval).as_posix()}" for p in loose}
    assert m["quarantine"]["by_reason"] == {"no class folder": len(loose)}
    assert m["images"]["skipped_suffix"] == sum(1 for p in mediaeval.rglob("*.txt"))
    for c, n in expected.items():
        assert m["splits"]["test"]["classes"][c] in (n // 2, (n + 1) // 2)
        assert sum(m["splits"][s]["classes"][c] for s in SPLITS) == n
    assert {s["path"] for s in m["sources"]} == {f"{mediaeval}/{p.relative_to(mediaeval).as_posix()}"
                                                 for p in files}
    table = read_split(str(out), "test", columns=["id", "pixels"])
    assert table.num_rows == m["splits"]["test"]["rows"]
    assert all(len(p) == 3 * 32 * 32 for p in table.column("pixels").to_pylist())
    assert (out / MANIFEST).is_file()
