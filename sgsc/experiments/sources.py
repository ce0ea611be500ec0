"""Where each data set comes from, and proof that a copy is the published one.

Sources, in order: a local copy under the data directory (``$SGSC_DATA_DIR``, default
``./data``), then the canonical download locations.  Every file is checked against the
sha256 of its *uncompressed* bytes, so a ``.gz`` recompressed by a mirror still verifies.
A local file that does not match is an error naming that file: it is never overwritten.
Only this module talks to the network, and only in its download step.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sgsc.fileformat import atomic

DATA_DIR_ENV = "SGSC_DATA_DIR"

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


class DataError(RuntimeError):
    """A data set is missing, corrupt or cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class DataFile:
    """One published file: where it may lie locally, where to fetch it, what it must hash to."""

    dataset: str
    name: str
    sha256: str  # of the uncompressed bytes
    urls: tuple[str, ...]
    local_dirs: tuple[str, ...]  # relative to the data directory, tried in order

    def candidates(self, root: Path) -> Iterator[Path]:
        """Local places this file may be, plain or gzipped."""
        for sub in self.local_dirs:
            for suffix in ("", ".gz"):
                yield root / sub / f"{self.name}{suffix}"


def _mnist_file(name: str, sha256: str) -> DataFile:
    return DataFile(
        dataset="mnist",
        name=name,
        sha256=sha256,
        urls=tuple(f"{mirror}{name}.gz" for mirror in _MNIST_MIRRORS),
        local_dirs=(".", "mnist", "MNIST/raw"),
    )


FILES: dict[str, tuple[DataFile, ...]] = {
    "mnist": (
        _mnist_file(
            "train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        _mnist_file(
            "train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        _mnist_file(
            "t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        _mnist_file(
            "t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    "names": (
        DataFile(
            dataset="names",
            name="names.txt",
            sha256="0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
            urls=("https://raw.githubusercontent.com/karpathy/makemore/master/names.txt",),
            local_dirs=(".", "names"),
        ),
    ),
    "tinyshakespeare": (
        DataFile(
            dataset="tinyshakespeare",
            name="input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            urls=(
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                "tinyshakespeare/input.txt",
            ),
            local_dirs=("tinyshakespeare",),
        ),
    ),
}
EMBEDDED = ("digits",)
DATASETS = (*FILES, *EMBEDDED)
IMAGE_DATASETS = ("mnist", "digits")
TEXT_DATASETS = ("names", "tinyshakespeare")


def data_dir() -> Path:
    """The data directory: ``$SGSC_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def check_dataset(name: str) -> None:
    """Raise a ValueError naming the valid data sets unless ``name`` is one."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------- files


# What a damaged or truncated gzip stream raises: a bad header, a bad CRC, a stream cut
# short, or (a flipped byte inside the deflate data) zlib's own error.
GZIP_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)


def _read_bytes(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except GZIP_ERRORS as err:
        what = "is not a readable gzip file" if path.suffix == ".gz" else "cannot be read"
        raise DataError(f"{path} {what} ({type(err).__name__}: {err}); it was left "
                        "untouched: delete it and run `python -m sgsc data fetch`, or put a "
                        "good copy there") from err


def _verified(file: DataFile, path: Path) -> bytes:
    payload = _read_bytes(path)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != file.sha256:
        raise DataError(
            f"{path} does not match the published {file.dataset} file {file.name} "
            f"(sha256 of its uncompressed bytes is {digest}, expected {file.sha256}). "
            "It was left untouched: replace it with a good copy or delete it and run "
            "`python -m sgsc data fetch`."
        )
    return payload


def locate(file: DataFile, root: Path | None = None) -> Path | None:
    """The first local copy of ``file`` under the data directory, or None."""
    root = data_dir() if root is None else root
    return next((p for p in file.candidates(root) if p.is_file()), None)


def _missing_message(file: DataFile, root: Path, reason: str) -> str:
    return (
        f"{file.dataset}: {file.name} is not in {root.resolve()} and could not be "
        f"downloaded ({reason}). Put the file (plain or .gz) at "
        f"{root / file.local_dirs[-1] / file.name}, or set {DATA_DIR_ENV} to the folder "
        f"that holds it. It is published at {file.urls[0]}"
    )


def _download(file: DataFile, root: Path) -> Path:
    """Fetch ``file`` into the data directory, trying each source in turn; a source is kept
    only once its bytes decompress and match the checksum; never overwrites."""
    target_dir = root / file.local_dirs[-1]
    errors = []
    for url in file.urls:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                raw = response.read()
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            errors.append(f"{url}: {getattr(err, 'reason', err)}")
            continue
        try:  # an HTML error page or a cut-off transfer is not a gzip stream
            payload = gzip.decompress(raw) if url.endswith(".gz") else raw
        except GZIP_ERRORS as err:
            errors.append(f"{url}: not a complete gzip file ({type(err).__name__})")
            continue
        if hashlib.sha256(payload).hexdigest() != file.sha256:
            errors.append(f"{url}: checksum mismatch (got {len(raw)} bytes)")
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / file.name
        atomic.write_bytes(target, payload)
        return target
    raise DataError(_missing_message(file, root, "; ".join(errors) or "no source"))


def read_file(file: DataFile, *, download: bool = True, root: Path | None = None) -> bytes:
    """The verified uncompressed bytes of ``file``: local copy first, then a download."""
    root = data_dir() if root is None else root
    path = locate(file, root)
    if path is None:
        if not download:
            raise DataError(_missing_message(file, root, "downloads disabled"))
        path = _download(file, root)
    return _verified(file, path)


@dataclass(frozen=True)
class FileStatus:
    dataset: str
    file: str
    source: str
    ok: bool
    detail: str


def verify(datasets: tuple[str, ...] = DATASETS, root: Path | None = None) -> list[FileStatus]:
    """Check every local file of ``datasets``; never downloads."""
    root = data_dir() if root is None else root
    report = []
    for name in datasets:
        check_dataset(name)
        if name in EMBEDDED:
            report.append(FileStatus(name, "(bundled with scikit-learn)", "sklearn", True,
                                     "embedded, no download"))
            continue
        for file in FILES[name]:
            path = locate(file, root)
            if path is None:
                report.append(FileStatus(name, file.name, "-", False,
                                         f"missing: put it under {root / file.local_dirs[-1]}"))
                continue
            try:
                _verified(file, path)
                report.append(FileStatus(name, file.name, str(path), True,
                                         f"sha256 {file.sha256[:12]}… verified"))
            except DataError as err:
                report.append(FileStatus(name, file.name, str(path), False, str(err)))
    return report


def fetch(datasets: tuple[str, ...] = DATASETS, root: Path | None = None) -> list[FileStatus]:
    """Download whatever is missing, then verify everything."""
    root = data_dir() if root is None else root
    for name in datasets:
        check_dataset(name)
        for file in FILES.get(name, ()):
            if locate(file, root) is None:
                _download(file, root)
    return verify(datasets, root)
