"""The IDX file format (LeCun's MNIST container), gzipped or not.

Layout: two zero bytes, a dtype code, the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order, big-endian.
Data files are untrusted input, so every way a file can be wrong (short,
long, unknown code, bad gzip stream) becomes a one-line `DataError`.
"""

from __future__ import annotations

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


# The largest IDX file netlang reads whole (MNIST's largest is 47 MB uncompressed).
MAX_IDX_BYTES = 2 ** 30
_CHUNK = 1 << 20


def decompress_if_gzipped(data: bytes, name: str) -> bytes:
    """Gunzip `data` when it starts with the gzip magic; otherwise return it unchanged.

    The magic decides, not the file suffix: browsers and some mirrors hand out
    already-decompressed files that keep their `.gz` name.  The stream is decompressed
    piece by piece, no further than the IDX header it starts with says the file holds (and
    one byte more, to notice trailing data), so a gzip bomb is refused after a few bytes
    instead of filling memory; `parse_idx` then checks the bytes against the header.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    stream = _GzipStream(data, name)
    head = stream.read(4)
    if len(head) == 4:
        head += stream.read(4 * head[3])
    expected = declared_idx_size(head, name)
    return head + stream.read(expected - len(head) + 1) if expected is not None else head


class _GzipStream:
    """The decompressed bytes of a gzip stream (members one after another), read on demand."""

    def __init__(self, data: bytes, name: str):
        self.name = name
        self.pending = data
        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: a gzip header
        self.done = False

    def read(self, count: int) -> bytes:
        """Up to `count` more bytes; fewer only where the stream ends."""
        out = bytearray()
        try:
            while len(out) < count and not self.done:
                chunk = self.decompressor.decompress(self.pending, min(count - len(out), _CHUNK))
                self.pending = self.decompressor.unconsumed_tail
                out += chunk
                if self.decompressor.eof:
                    rest = self.decompressor.unused_data
                    self.done = not rest.strip(b"\0")  # gzip allows zero padding after a member
                    self.pending = rest
                    self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif not chunk and not self.pending:
                    raise EOFError("the stream ends before its end-of-stream marker")
        except (EOFError, zlib.error) as exc:
            raise DataError(f"{self.name}: corrupt or truncated gzip data ({exc})") from None
        return bytes(out)


def declared_idx_size(head: bytes, name: str) -> int | None:
    """The size in bytes (header included) an IDX header declares, checked against
    MAX_IDX_BYTES; None when `head` is not a whole, valid header (`parse_idx` says why)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES or not head[3]:
        return None
    header_size = 4 + 4 * head[3]
    if len(head) < header_size:
        return None
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4", count=head[3], offset=4))
    size = header_size + IDX_DTYPES[head[2]].itemsize * _product(dims)
    if size > MAX_IDX_BYTES:
        raise DataError(f"{name}: the IDX header declares shape {dims}, {size:,} bytes; "
                        f"netlang reads IDX files of up to {MAX_IDX_BYTES:,} bytes")
    return size


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
