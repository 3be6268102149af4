"""The IDX file format (LeCun's MNIST container), gzipped or not.

Layout: two zero bytes, a dtype code, the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order, big-endian.
Data files are untrusted input, so every way a file can be wrong (short,
long, unknown code, bad gzip stream) becomes a one-line `DataError`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from netlang.errors import DataError

# IDX dtype codes; values are stored big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"


def decompress_if_gzipped(data: bytes, name: str) -> bytes:
    """Gunzip `data` when it starts with the gzip magic; otherwise return it unchanged.

    The magic decides, not the file suffix: browsers and some mirrors hand out
    already-decompressed files that keep their `.gz` name.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{name}: corrupt or truncated gzip data ({reason})") from None


def parse_idx(data: bytes, name: str = "<idx data>") -> np.ndarray:
    """Decode uncompressed IDX bytes into an array in native byte order."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: truncated IDX header ({len(data)} of {header_size} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    # Python ints: a hostile header cannot overflow the size computation.
    expected = header_size + dtype.itemsize * _product(dims)
    if len(data) < expected:
        raise DataError(f"{name}: truncated IDX data ({len(data)} of {expected} bytes for "
                        f"shape {dims})")
    if len(data) > expected:
        raise DataError(f"{name}: {len(data) - expected} unexpected bytes after the IDX data "
                        f"of shape {dims}")
    values = np.frombuffer(data, dtype, offset=header_size).reshape(dims)
    # Copy into native order: the result must be writable and fast to compute with.
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file from disk, gzipped or plain."""
    path = Path(path)
    return parse_idx(read_idx_bytes(path), path.name)


def read_idx_bytes(path: Path) -> bytes:
    """The uncompressed bytes of an IDX file on disk."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decompress_if_gzipped(raw, path.name)


def _product(dims: tuple[int, ...]) -> int:
    total = 1
    for d in dims:
        total *= d
    return total
