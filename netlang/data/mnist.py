"""MNIST: find the four IDX files, fetch them when missing, verify, decode.

Files are looked for in `$NETLANG_DATA/mnist`, then in the user cache
(`$XDG_CACHE_HOME/netlang/mnist`, default `~/.cache/netlang/mnist`); missing ones
are downloaded into the cache from the public mirrors. Checksums are taken of
the *uncompressed* bytes: they are the canonical ones, and they hold whoever
gzipped the file. Verification is always on because it is cheap next to the
decompression we do anyway (md5 of the 47 MB training images: ~0.08 s, gunzip:
~0.3 s), so no stamp file can get stale.

The network is reached only through `fetch_url`, which tests replace.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from netlang.config import data_dir, user_cache
from netlang.data.idx import GZIP_MAGIC, decompress_if_gzipped, parse_idx, read_idx_bytes
from netlang.errors import DataError

ENV_VAR = "NETLANG_DATA"

# md5 of the uncompressed IDX files, as published with the data set.
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Tried in order; LeCun's own site is last because it often refuses robots.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

DOWNLOAD_TIMEOUT_S = 30.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the largest file is ~10 MB gzipped, 47 MB plain

Fetch = Callable[[str, float], bytes]


class MnistArrays(NamedTuple):
    """The four MNIST arrays as the IDX files hold them: uint8 images and uint8 labels."""

    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray   # (10000, 28, 28) uint8
    y_test: np.ndarray   # (10000,) uint8


def cache_dir() -> Path:
    """Where downloads go: `$XDG_CACHE_HOME/netlang/mnist` or `~/.cache/netlang/mnist`."""
    return Path(user_cache("mnist"))


def search_dirs() -> list[Path]:
    """Directories searched for the files, in order. Read at call time, not import time."""
    dirs = []
    if data_dir():
        dirs.append(Path(data_dir()).expanduser() / "mnist")
    dirs.append(cache_dir())
    return dirs


def fetch_url(url: str, timeout: float) -> bytes:
    """Download `url` whole; the one place this package touches the network."""
    # Imported here: urllib.request brings http.client, ssl and email, 13 ms of every process
    # that reads MNIST (or imports netlang.api), almost always from disk.
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"response larger than {MAX_DOWNLOAD_BYTES} bytes")
    return data


def find_file(stem: str, dirs: list[Path]) -> Path | None:
    """The first `stem.gz` or plain `stem` in `dirs`."""
    for directory in dirs:
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                return candidate
    return None


def download(stem: str, dest: Path, *, fetch: Fetch | None = None,
             mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Fetch `stem.gz` from the first mirror that serves a verified copy; save it atomically."""
    fetch = fetch or fetch_url  # looked up per call so a monkeypatched `fetch_url` is seen
    failures: list[tuple[str, str]] = []  # (url, reason)
    for mirror in mirrors:
        url = f"{mirror}{stem}.gz"
        try:
            raw = fetch(url, DOWNLOAD_TIMEOUT_S)
            data = decompress_if_gzipped(raw, f"{stem}.gz")
        except DataError as exc:
            failures.append((url, exc.message))
            continue
        except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
            failures.append((url, _describe(exc)))
            continue
        if _md5_mismatch(data, stem):
            failures.append((url, f"served a copy whose md5 is not {FILES[stem]}"))
            continue
        # Keep whichever form the mirror served; find_file accepts both names.
        target = dest / (f"{stem}.gz" if raw.startswith(GZIP_MAGIC) else stem)
        _write_atomically(target, raw)
        return target
    if not failures:
        raise DataError("download failed: no mirrors given")
    reasons = {reason for _, reason in failures}
    if len(reasons) == 1:  # typically offline: say it once, not once per mirror
        raise DataError(f"download failed from {len(failures)} mirror(s): {reasons.pop()}")
    raise DataError("download failed: " + "; ".join(
        f"{urllib.parse.urlsplit(url).netloc}: {reason}" for url, reason in failures))


def load_mnist(directory: str | Path | None = None, *, allow_download: bool = True,
               verify: bool = True, fetch: Fetch | None = None) -> MnistArrays:
    """The four MNIST arrays as uint8: images (N, 28, 28), labels (N,).

    `directory` replaces the search path (and receives downloads); `verify=False`
    skips the checksums, for files in MNIST's format that are not MNIST.
    """
    dirs = [Path(directory).expanduser()] if directory is not None else search_dirs()
    dest = dirs[0] if directory is not None else cache_dir()
    arrays = {}
    for stem, md5 in FILES.items():
        path = find_file(stem, dirs)
        if path is None:
            path = _fetch_missing(stem, dirs, dest, allow_download, fetch)
        data = read_idx_bytes(path)
        actual = _md5_mismatch(data, stem) if verify else None
        if actual:
            raise DataError(f"{path}: checksum mismatch for {stem} (md5 of the uncompressed "
                            f"data is {actual}, expected {md5}); delete or replace the file")
        arrays[stem] = parse_idx(data, str(path))
    result = MnistArrays(
        arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"],
        arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    _check_shapes(result)
    return result


def _fetch_missing(stem: str, dirs: list[Path], dest: Path, allow_download: bool,
                   fetch: Fetch | None) -> Path:
    where = " or ".join(str(d) for d in dirs)
    hint = (f"download {stem}.gz from {MIRRORS[0]} and put it in {dest}, or set {ENV_VAR} "
            f"to a directory whose mnist/ folder holds it")
    if not allow_download:
        raise DataError(f"MNIST file {stem}.gz not found in {where} (downloads disabled); {hint}")
    try:
        return download(stem, dest, fetch=fetch)
    except DataError as exc:
        raise DataError(f"MNIST file {stem}.gz not found in {where} and {exc.message}; "
                        f"{hint}") from None


def _md5_mismatch(data: bytes, stem: str) -> str | None:
    """The md5 of `data` when it is not the published one for `stem`, else None."""
    actual = hashlib.md5(data).hexdigest()
    return actual if actual != FILES[stem] else None


def _check_shapes(m: MnistArrays) -> None:
    """Only reachable with verify=False: checksummed files always pass."""
    for split, images, labels in (("train", m.x_train, m.y_train), ("test", m.x_test, m.y_test)):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"MNIST {split} images must be uint8 of shape (N, rows, cols), got "
                            f"{images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(f"MNIST {split} labels must be uint8 of shape (N,), got "
                            f"{labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"MNIST {split} set has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataError(f"MNIST {split} labels must be 0..9, found {int(labels.max())}")
    if m.x_train.shape[1:] != m.x_test.shape[1:]:
        raise DataError(f"MNIST train images are {m.x_train.shape[1:]} but test images are "
                        f"{m.x_test.shape[1:]}")


def _write_atomically(target: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, so readers never see half a file."""
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                        suffix=".part")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
        raise DataError(f"cannot save {target}: {exc.strerror or exc}") from None


def _describe(exc: BaseException) -> str:
    """A short reason for a failed request, without the exception's class-name noise."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__
