"""Weights files: safetensors, written atomically and read with every check named.

Weights are stored as safetensors: a JSON header plus raw little-endian tensor bytes, which
loads without pickle (so a weights file from a stranger cannot run code) and which PyTorch
users can read directly.  Every problem with a file on disk -- missing, truncated, not
safetensors, names/shapes/dtypes that do not fit the model -- raises `WeightsError` with one
line naming the file and the tensor.  The format is described for users in docs/weights.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import save as save_safetensors

from netlang.errors import WeightsError, did_you_mean
from netlang.version import __version__
from netlang.weights.atomic import write_bytes
from netlang.weights.safe_read import open_regular, parse_json, shown

# safetensors dtype codes -> numpy.  Codes numpy cannot represent (BF16, F8_*) are rejected
# with a message rather than silently converted.
_DTYPES: dict[str, np.dtype] = {code: np.dtype(t) for code, t in {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "C64": np.complex64,
}.items()}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

# The same cap the Rust reader uses: a hostile 8-byte prefix must not make us allocate 2**64.
_MAX_HEADER = 100_000_000
# NumPy's limit on the dimensions of an array.
_MAX_DIMS = 32
_HEX = re.compile(r"[0-9a-fA-F]+")


def check_source_hash(source_hash: Any) -> str:
    """The model source hash in lower case; anything but a hex string is a caller's bug."""
    if not isinstance(source_hash, str) or not _HEX.fullmatch(source_hash):
        raise ValueError(f"source_hash must be a hex string, got {source_hash!r}")
    return source_hash.lower()


def format_shape(shape) -> str:
    """A shape as Python writes a tuple, `(3,)` included, for messages."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def serialize(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The bytes of a safetensors file holding `tensors`, before anything touches the disk
    (a checkpoint serialises all its files first, so a bad tensor writes nothing).  `path`
    only names the file in errors."""
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise WeightsError(f"{path}: cannot save tensor named {name!r}: names must be "
                               "non-empty strings")
        array = np.asarray(value)
        if array.dtype.newbyteorder("=") not in _CODES:
            raise WeightsError(f"{path}: cannot save tensor `{name}`: dtype {array.dtype} "
                               "has no safetensors equivalent")
        # safetensors copies from the data pointer, so a strided view (e.g. a transpose)
        # would be written in the wrong element order: force C order first.
        if not array.flags.c_contiguous:
            array = np.array(array, order="C")
        arrays[name] = array
    try:
        return save_safetensors(arrays, metadata=dict(metadata))
    except Exception as exc:  # the Rust serializer's own checks
        raise WeightsError(f"{path}: cannot serialize tensors: {exc}") from None


def save_weights(path: str | os.PathLike, params: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str] | None = None, *,
                 source_hash: str | None = None) -> Path:
    """Atomically write `params` to a safetensors file.

    The header metadata always records `netlang_version` and `source_hash` (the hash of the
    model source the weights belong to; given as an argument or as metadata["source_hash"]).
    Other metadata values must be strings, as safetensors requires.
    """
    path = Path(path)
    meta = dict(metadata or {})
    source_hash = source_hash if source_hash is not None else meta.get("source_hash")
    if source_hash is None:
        raise ValueError("save_weights needs the model's source_hash")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"weights metadata must map str to str, got {key!r}: {value!r}")
    meta["source_hash"] = check_source_hash(source_hash)
    meta["netlang_version"] = __version__
    write_bytes(path, serialize(path, params, meta))
    return path


def _header_pairs(path: Path, pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise WeightsError(f"{path}: not a valid safetensors file: tensor `{sorted(dupes)[0]}` "
                           "is listed twice in the header")
    return dict(pairs)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tensor as the header describes it: where its bytes lie in the data section."""

    shape: tuple[int, ...]
    code: str
    start: int
    stop: int


def _parse_header(path: Path, f, size: int) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """The validated header of the open safetensors file `f` of `size` bytes: its tensors,
    its metadata and where its data section starts (see read_header)."""
    bad = f"{path}: not a valid safetensors file"
    try:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{bad}: file is {'empty' if not prefix else 'too short'} "
                               f"({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER or header_len > size - 8:
            raise WeightsError(f"{bad}: header claims {header_len} bytes but the file "
                               f"has {size - 8} after the length prefix (truncated or "
                               "not safetensors)")
        raw = f.read(header_len)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WeightsError(f"{bad}: header is not UTF-8 text (byte {exc.start})") from None
    header = parse_json(text, f"{bad}: header",
                        object_pairs_hook=lambda pairs: _header_pairs(path, pairs))
    if not isinstance(header, dict):
        raise WeightsError(f"{bad}: header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsError(f"{bad}: __metadata__ must map strings to strings")

    data_len = size - 8 - header_len
    entries = {}
    for name, info in header.items():
        where = f"{bad}: tensor `{name}`"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise WeightsError(f"{where} lacks dtype, shape or data_offsets")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in shape)):
            raise WeightsError(f"{where} has an invalid shape {shown(shape)} (at most "
                               f"{_MAX_DIMS} dimensions, each an integer >= 0)")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise WeightsError(f"{where} has invalid data_offsets {shown(offsets)}")
        if not isinstance(code, str) or code not in _DTYPES:
            raise WeightsError(f"{path}: tensor `{name}` has dtype {shown(code)}, which "
                               "netlang cannot load (supported: " + ", ".join(_DTYPES) + ")")
        # Python integers: a shape of 2**64 must be compared, not overflow a C integer.
        nbytes = math.prod(shape) * _DTYPES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise WeightsError(f"{where}: shape {format_shape(shape)[:60]} {code} needs "
                               f"{shown(nbytes)} bytes but data_offsets span "
                               f"{shown(offsets[1] - offsets[0])}")
        if offsets[1] > data_len:
            raise WeightsError(f"{path}: file is truncated: tensor `{name}` needs data up to "
                               f"byte {shown(offsets[1])} but only {data_len} bytes are "
                               "present")
        entries[name] = _Entry(tuple(shape), code, offsets[0], offsets[1])
    # Tensors must tile the data section exactly; overlap would alias two parameters.
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].stop)):
        if entry.start != end:
            raise WeightsError(f"{bad}: tensor `{name}` data starts at byte {entry.start}, "
                               f"expected {end} (overlapping or gapped tensors)")
        end = entry.stop
    if end != data_len:
        raise WeightsError(f"{bad}: {data_len - end} stray bytes after the last tensor")
    return entries, metadata, 8 + header_len


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[tuple[int, ...], str]],
                                                  dict[str, str]]:
    """Parse and fully validate a safetensors header without reading tensor data.

    Returns ({name: (shape, dtype code)}, metadata).  Doing our own validation (rather than
    relying on the Rust reader's errors) lets every failure name the file and the tensor, and
    catches truncation before any tensor is read.
    """
    path = Path(path)
    try:
        with open_regular(path, what=".safetensors file") as (f, size):
            entries, metadata, _ = _parse_header(path, f, size)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    return {name: (entry.shape, entry.code) for name, entry in entries.items()}, metadata


def _read_tensors(path: Path, f, entries: Mapping[str, _Entry], data_start: int,
                  wanted: list[str]) -> dict[str, np.ndarray]:
    """The tensors `wanted`, read from the open file `f` whose header gave `entries`: native
    byte order, C order and writeable (training updates parameters in place)."""
    params = {}
    try:
        for name in wanted:
            entry = entries[name]
            f.seek(data_start + entry.start)
            # Read straight into the array handed out: no zero-filling, no second copy.
            array = np.empty(entry.shape, dtype=_DTYPES[entry.code].newbyteorder("<"))
            if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != array.nbytes:
                raise WeightsError(f"{path}: file is truncated: tensor `{name}` ends past "
                                   "the end of the file (was it changed while being read?)")
            params[name] = array.astype(_DTYPES[entry.code], copy=False)   # copies on big-endian
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read tensors: {exc.strerror or exc}") from None
    return params


@dataclasses.dataclass
class WeightsReport:
    """What a load took from a file; with strict=False, also what it had to leave out."""

    path: Path
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)      # expected, not in file
    unexpected: list[str] = dataclasses.field(default_factory=list)   # in file, not expected
    mismatched: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> why

    @property
    def complete(self) -> bool:
        """Whether the file held exactly the expected tensors."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line for the CLI to print after a partial (transfer-learning) load."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        parts = [f"loaded {len(self.loaded)} of {total} tensors from {self.path}"]
        if self.mismatched:
            parts.append("skipped " + ", ".join(
                f"`{n}` ({why})" for n, why in self.mismatched.items()))
        if self.missing:
            parts.append("not in file " + ", ".join(f"`{n}`" for n in self.missing))
        if self.unexpected:
            parts.append("ignored " + ", ".join(f"`{n}`" for n in self.unexpected))
        return "; ".join(parts)


class LoadedWeights(tuple):
    """`(params, metadata)` -- unpacks like a pair -- plus `.report` (a WeightsReport)."""

    report: WeightsReport

    def __new__(cls, params: dict[str, np.ndarray], metadata: dict[str, str],
                report: WeightsReport):
        """The pair, with the report attached."""
        self = super().__new__(cls, (params, metadata))
        self.report = report
        return self

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{tensor name: array}, writeable."""
        return self[0]

    @property
    def metadata(self) -> dict[str, str]:
        """The header's `__metadata__` (source_hash, netlang_version, ...)."""
        return self[1]


Expected = Mapping[str, tuple[tuple[int, ...], Any]]


def expected_of(params: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The `expected` argument of load_weights that matches `params` exactly."""
    return {name: (tuple(np.shape(a)), np.asarray(a).dtype) for name, a in params.items()}


def source_mismatch(what: Path, old: str, new: str, action: str) -> WeightsError:
    """The error for weights saved from another model source (`action`: what force=True does;
    the command line words it as its `--force` flag)."""
    return WeightsError(f"{what} was trained from a different model source (saved with "
                        f"{old[:12]}, model is {new[:12]}); pass force=True to {action}")


def _limited(problems: list[str]) -> str:
    # Keep the reason to one readable line even when a whole model does not fit.
    shown = "; ".join(problems[:3])
    return shown + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def load_weights(path: str | os.PathLike, expected: Expected | None = None, *,
                 strict: bool = True, source_hash: str | None = None,
                 force: bool = False) -> LoadedWeights:
    """Load a safetensors file, checked against `expected` {name: (shape, dtype)}.

    strict=True: the file must hold exactly the expected tensors with the expected shapes and
    dtypes.  strict=False (transfer learning): load only the tensors that fit; the rest are
    listed in `.report` for the caller to initialise and to tell the user about.
    With `source_hash`, a file saved from a different model source is refused unless `force`
    (files without a recorded hash, e.g. converted from PyTorch, are accepted).
    """
    path = Path(path)
    try:
        with open_regular(path, what=".safetensors file") as (f, size):
            entries, metadata, data_start = _parse_header(path, f, size)
            report, wanted = _fit(path, entries, metadata, expected, strict, source_hash,
                                  force)
            params = _read_tensors(path, f, entries, data_start, wanted)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    report.loaded = list(params)
    return LoadedWeights(params, dict(metadata), report)


def _fit(path: Path, entries: Mapping[str, _Entry], metadata: Mapping[str, str],
         expected: Expected | None, strict: bool, source_hash: str | None,
         force: bool) -> tuple[WeightsReport, list[str]]:
    """What load_weights takes from a file with these `entries`: the report, and the names of
    the tensors to read (a file that does not fit raises WeightsError: see load_weights)."""
    saved_hash = metadata.get("source_hash")
    if source_hash is not None and saved_hash and not force \
            and saved_hash.lower() != source_hash.lower():
        raise source_mismatch(path, saved_hash, source_hash, "load these weights anyway")

    report = WeightsReport(path)
    if expected is None:
        wanted = list(entries)
    else:
        problems = []
        for name, (shape, dtype) in expected.items():
            shape, dtype = tuple(shape), np.dtype(dtype)
            if name not in entries:
                report.missing.append(name)
                problems.append(f"tensor `{name}` is missing (the model expects "
                                f"{format_shape(shape)} {dtype})"
                                + did_you_mean(name, set(entries) - set(expected)))
                continue
            got_shape, code = entries[name].shape, entries[name].code
            if got_shape != shape:
                why = (f"shape {format_shape(got_shape)} in file, model expects "
                       f"{format_shape(shape)}")
            elif _DTYPES[code] != dtype:
                why = f"dtype {_DTYPES[code]} in file, model expects {dtype}"
            else:
                continue
            report.mismatched[name] = why
            problems.append(f"tensor `{name}` has {why}")
        for name in entries:
            if name not in expected:
                report.unexpected.append(name)
                problems.append(f"unexpected tensor `{name}`"
                                + did_you_mean(name, set(expected) - set(entries)))
        if strict and problems:
            raise WeightsError(f"{path}: weights do not fit the model: {_limited(problems)}")
        wanted = [n for n in expected if n in entries and n not in report.mismatched]

    return report, wanted
