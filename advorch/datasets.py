"""The public datasets the configs use: a registry (datasets.toml + checksums/NAME.sha256),
fetched on request with pooch, every file checked against its pinned sha256.

Where data lives, first match wins (`locate`):
1. ../shared/data/FOLDER beside the repository (a developer's or CI's checkout;
   $ADVORCH_SHARED_DATA points elsewhere),
2. ROOT/FOLDER, ROOT = $ADVORCH_DATA or the user's cache folder (~/.cache/advorch/data),
   once every file there matches its checksum.
`fetch` downloads into a hidden staging folder next to ROOT/FOLDER, verifies every file and
only then renames the folder into place, so an interrupted or rejected download leaves
nothing half-written where a run would read it; a second call starts over cleanly.

$ADVORCH_MIRROR (a base URL) serves the same layout as ../shared/data
(MIRROR/FOLDER/FILE); when it is set, files come from it instead of their upstream sources
(an organisation's mirror, an air-gapped copy, the tests' loopback server).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tomllib
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# a checkout's data folder beside the repository (ADVORCH_SHARED_DATA: elsewhere)
SHARED = Path(os.environ.get("ADVORCH_SHARED_DATA", REPO.parent / "shared" / "data"))
TIMEOUT_S = 60


class DatasetError(RuntimeError):
    """A dataset can't be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class Source:
    url: str
    path: str = ""     # one file: where it lands inside the dataset folder
    archive: str = ""  # "zip" | "tar.gz": unpacked, only the listed files taken from it


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    licence: str
    homepage: str
    folder: str = ""
    size: int = 0         # bytes once fetched
    access: str = "open"  # open | manual (login, licence or conversion: steps) | bundled
    steps: tuple[str, ...] = ()
    sources: tuple[Source, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def configs(self) -> list[str]:
        """The repository's configs that read this dataset."""
        if not self.folder or not (REPO / "configs").is_dir():
            return []
        needle = f"shared/data/{self.folder}/"
        return sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.toml")
                      if needle in p.read_text())


def _checksums(name: str) -> dict[str, str]:
    path = HERE / "checksums" / f"{name}.sha256"
    if not path.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {rel.strip(): sha for sha, rel in pairs}


@cache
def registry() -> dict[str, Dataset]:
    """Every registered dataset by name."""
    raw = tomllib.loads((HERE / "datasets.toml").read_text())
    return {name: Dataset(name=name, title=d["title"], licence=d["licence"], homepage=d["homepage"],
                          folder=d.get("folder", ""), size=d.get("size", 0), access=d.get("access", "open"),
                          steps=tuple(d.get("steps", ())),
                          sources=tuple(Source(**s) for s in d.get("sources", ())),
                          files=_checksums(name))
            for name, d in raw.items()}


def get(name: str) -> Dataset:
    datasets = registry()
    if name not in datasets:
        raise DatasetError(f"unknown dataset {name!r}: one of {', '.join(datasets)} "
                           "(advorch datasets list)")
    return datasets[name]


def data_root() -> Path:
    """Where fetched datasets live: $ADVORCH_DATA, else the user's cache folder."""
    if os.environ.get("ADVORCH_DATA"):
        return Path(os.environ["ADVORCH_DATA"]).expanduser()
    import pooch

    return Path(pooch.os_cache("advorch")) / "data"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def problems(ds: Dataset, folder: Path) -> list[str]:
    """What is missing or differs from the pinned checksums in `folder` (empty: verified)."""
    found = []
    for rel, expected in ds.files.items():
        path = folder / rel
        if not path.is_file():
            found.append(f"{rel}: missing")
        elif (actual := sha256(path)) != expected:
            found.append(f"{rel}: sha256 {actual[:12]}… is not the pinned {expected[:12]}…")
    return found


def locate(name: str, root: Path | None = None) -> Path | None:
    """The dataset's folder if it is already here and complete (see the module docstring)."""
    ds = get(name)
    shared = SHARED / ds.folder
    if ds.files and all((shared / rel).is_file() for rel in ds.files):
        return shared  # a checkout's data: trusted as is, never re-hashed per run
    cached = (root or data_root()) / ds.folder
    if cached.is_dir() and not problems(ds, cached):
        return cached
    return None


def fetch(name: str, root: Path | None = None, mirror: str | None = None) -> Path:
    """Download, verify and place dataset `name` under `root`; its folder.

    Already complete → returned as is. A folder there that fails verification is refused
    (named files), never overwritten: it may hold someone's work."""
    return fetch_dataset(get(name), root, mirror)


def fetch_dataset(ds: Dataset, root: Path | None = None, mirror: str | None = None) -> Path:
    """`fetch` for a registry entry (one edited in a test, say)."""
    name = ds.name
    dest = (root or data_root()) / ds.folder
    bad = problems(ds, dest) if ds.files and dest.exists() else []
    if ds.files and dest.exists() and not bad:
        return dest
    if ds.access != "open":
        steps = "\n".join(f"  {i}. {s.format(dest=dest)}" for i, s in enumerate(ds.steps, 1))
        raise DatasetError(f"{name} can't be downloaded automatically ({ds.licence}):\n{steps}")
    if dest.exists():
        raise DatasetError(f"{dest} exists but does not match the registry: " + "; ".join(bad[:5])
                           + f". Remove {dest} (or fix those files) and fetch again.")
    mirror = mirror if mirror is not None else os.environ.get("ADVORCH_MIRROR")
    staging = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        if mirror:
            for rel, digest in ds.files.items():
                url = f"{mirror.rstrip('/')}/{quote(ds.folder)}/{quote(rel)}"
                _download(url, digest, staging / rel, f"put it at {dest / rel} (sha256 {digest})")
        else:
            for source in ds.sources:
                _from_source(source, ds, staging, dest)
        if bad := problems(ds, staging):
            raise DatasetError(f"{name}: the download does not match the registry, rejected: "
                               + "; ".join(bad[:5]))
        staging.rename(dest)  # atomic on one filesystem: the folder appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _download(url: str, digest: str | None, target: Path, by_hand: str) -> Path:
    """One file via pooch to `target` (`by_hand`: where a user puts it when offline). pooch
    renames its temporary file into place only after the hash check, so a failed or corrupt
    download leaves nothing behind."""
    import pooch
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(url, known_hash=f"sha256:{digest}" if digest else None, fname=target.name,
                       path=target.parent, progressbar=False,
                       downloader=pooch.HTTPDownloader(timeout=TIMEOUT_S))
    except ValueError as e:  # pooch's hash mismatch
        raise DatasetError(f"{url}: checksum mismatch, the file was rejected ({e})") from None
    except (requests.RequestException, OSError) as e:
        raise DatasetError(
            f"could not download {url}: {type(e).__name__}: {e}\n"
            f"Offline? Download it by hand and {by_hand}, or set ADVORCH_MIRROR to a mirror "
            "of the data folder; then fetch again.") from None
    return target


def _from_source(source: Source, ds: Dataset, staging: Path, dest: Path) -> None:
    if not source.archive:
        digest = ds.files.get(source.path)
        _download(source.url, digest, staging / source.path,
                  f"put it at {dest / source.path} (sha256 {digest})")
        return
    # the archive's own hash is not pinned (GitHub builds archives on the fly); every file
    # taken from it is verified against checksums/NAME.sha256 afterwards
    name = source.url.rsplit("/", 1)[-1]
    archive = _download(source.url, None, staging / f".{name}",
                        f"unpack it so that {dest} holds the files `advorch datasets info {ds.name}` lists")
    missing = {rel for rel in ds.files if not (staging / rel).exists()}
    for member, read in _members(archive, source.archive):
        rel = next((r for r in missing if f"/{member}".endswith(f"/{r}")), None)
        if rel is not None:  # only listed names are written: no traversal, no extras
            missing.discard(rel)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            with read() as src, (staging / rel).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    archive.unlink()


def _members(archive: Path, kind: str) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(name, opener) of every regular file in a zip or tar.gz."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda i=info: z.open(i))
    elif kind == "tar.gz":
        with tarfile.open(archive, "r:gz") as t:
            for info in t:
                if info.isfile():
                    yield info.name, (lambda i=info: t.extractfile(i))
    else:
        raise DatasetError(f"unknown archive kind {kind!r} in datasets.toml (zip or tar.gz)")
