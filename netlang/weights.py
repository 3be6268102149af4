"""Weights files and training checkpoints.

Weights are stored as safetensors: a JSON header plus raw little-endian tensor bytes, which
loads without pickle (so a weights file from a stranger cannot run code) and which PyTorch
users can read directly.  A training run directory holds checkpoints that can be resumed
exactly: weights, optimizer state and a JSON `state.json` (epoch, step, RNG state, config).

Every problem with a file on disk -- missing, truncated, not safetensors, names/shapes/dtypes
that do not fit the model -- raises `WeightsError` with one line naming the file and the
tensor.  The on-disk formats are described for users in docs/weights.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import re
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np

from netlang.errors import WeightsError, did_you_mean

__all__ = [
    "atomic_file", "atomic_write", "save_weights", "load_weights", "read_header",
    "LoadedWeights", "WeightsReport", "expected_of", "save_checkpoint", "load_checkpoint",
    "Checkpoint", "find_weights", "rng_state_to_json", "rng_from_json",
]

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
CHECKPOINT_FORMAT = "netlang-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

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
_HEX = re.compile(r"[0-9a-fA-F]+")
_CKPT_NAME = re.compile(r"ckpt-\d+(-\d+)?")


# --------------------------------------------------------------------------------------------
# Atomic files


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; without it a power cut can forget the new name.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    # mkstemp/mkdtemp create private (0600/0700) entries; we give results the mode a plain
    # open()/mkdir() would.  Reading the umask means setting it briefly (racy only against
    # another thread changing the umask).
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary temp file that replaces `path` only if the `with` body succeeds.

    The temp file lives in the target's directory so that os.replace is a same-filesystem
    rename, which is atomic: readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename can be
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a stray temp file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO[bytes]], Any]) -> None:
    """Call `write_fn(f)` on a temp file, then atomically move it to `path`.

    If `write_fn` raises, the temp file is removed and any existing `path` is untouched.
    """
    with atomic_file(path) as f:
        write_fn(f)


# --------------------------------------------------------------------------------------------
# Weights files


def _netlang_version() -> str:
    # A source checkout may not be pip-installed, so prefer the package's own __version__.
    try:
        version = getattr(importlib.import_module("netlang"), "__version__", None)
        if version:
            return str(version)
    except ImportError:
        pass
    try:
        from importlib.metadata import version as dist_version
        return dist_version("netlang")
    except Exception:
        return "unknown"


def _check_source_hash(source_hash: Any) -> str:
    if not isinstance(source_hash, str) or not _HEX.fullmatch(source_hash):
        raise ValueError(f"source_hash must be a hex string, got {source_hash!r}")
    return source_hash.lower()


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _serialize(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    from safetensors.numpy import save

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
        return save(arrays, metadata=dict(metadata))
    except Exception as exc:  # the Rust serializer's own checks
        raise WeightsError(f"{path}: cannot serialize tensors: {exc}") from None


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        raise WeightsError(f"cannot write {path}: {exc.strerror or exc}") from None


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
    meta["source_hash"] = _check_source_hash(source_hash)
    meta["netlang_version"] = _netlang_version()
    _write_bytes(path, _serialize(path, params, meta))
    return path


def _header_pairs(path: Path, pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise WeightsError(f"{path}: not a valid safetensors file: tensor `{sorted(dupes)[0]}` "
                           "is listed twice in the header")
    return dict(pairs)


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[tuple[int, ...], str]],
                                                  dict[str, str]]:
    """Parse and fully validate a safetensors header without reading tensor data.

    Returns ({name: (shape, dtype code)}, metadata).  Doing our own validation (rather than
    relying on the Rust reader's errors) lets every failure name the file and the tensor, and
    catches truncation before any tensor is read.
    """
    path = Path(path)
    bad = f"{path}: not a valid safetensors file"
    try:
        if path.is_dir():
            raise WeightsError(f"{path}: is a directory, expected a .safetensors file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
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
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"),
                            object_pairs_hook=lambda pairs: _header_pairs(path, pairs))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{bad}: header is not JSON") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{bad}: header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsError(f"{bad}: __metadata__ must map strings to strings")

    data_len = size - 8 - header_len
    entries = {}
    spans = []
    for name, info in header.items():
        where = f"{bad}: tensor `{name}`"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise WeightsError(f"{where} lacks dtype, shape or data_offsets")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in shape)):
            raise WeightsError(f"{where} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise WeightsError(f"{where} has invalid data_offsets {offsets!r}")
        if code not in _DTYPES:
            raise WeightsError(f"{path}: tensor `{name}` has dtype {code!r}, which netlang "
                               "cannot load (supported: " + ", ".join(_DTYPES) + ")")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise WeightsError(f"{where}: shape {_fmt_shape(shape)} {code} needs {nbytes} "
                               f"bytes but data_offsets span {offsets[1] - offsets[0]}")
        if offsets[1] > data_len:
            raise WeightsError(f"{path}: file is truncated: tensor `{name}` needs data up to "
                               f"byte {offsets[1]} but only {data_len} bytes are present")
        entries[name] = (tuple(shape), code)
        spans.append((offsets[0], offsets[1], name))
    # Tensors must tile the data section exactly; overlap would alias two parameters.
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start != end:
            raise WeightsError(f"{bad}: tensor `{name}` data starts at byte {start}, "
                               f"expected {end} (overlapping or gapped tensors)")
        end = stop
    if end != data_len:
        raise WeightsError(f"{bad}: {data_len - end} stray bytes after the last tensor")
    return entries, metadata


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
        self = super().__new__(cls, (params, metadata))
        self.report = report
        return self

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self[0]

    @property
    def metadata(self) -> dict[str, str]:
        return self[1]


Expected = Mapping[str, tuple[tuple[int, ...], Any]]


def expected_of(params: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The `expected` argument of load_weights that matches `params` exactly."""
    return {name: (tuple(np.shape(a)), np.asarray(a).dtype) for name, a in params.items()}


def _source_mismatch(what: Path, old: str, new: str, action: str) -> WeightsError:
    return WeightsError(f"{what} was trained from a different model source (saved with "
                        f"{old[:12]}, model is {new[:12]}); pass --force to {action}")


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
    from safetensors import safe_open

    path = Path(path)
    entries, metadata = read_header(path)
    saved_hash = metadata.get("source_hash")
    if source_hash is not None and saved_hash and not force \
            and saved_hash.lower() != source_hash.lower():
        raise _source_mismatch(path, saved_hash, source_hash, "load these weights anyway")

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
                                f"{_fmt_shape(shape)} {dtype})"
                                + did_you_mean(name, set(entries) - set(expected)))
                continue
            got_shape, code = entries[name]
            if got_shape != shape:
                why = f"shape {_fmt_shape(got_shape)} in file, model expects {_fmt_shape(shape)}"
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

    params = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for name in wanted:
                array = f.get_tensor(name)
                # Training updates parameters in place, so never hand out read-only views.
                params[name] = array if array.flags.writeable else array.copy()
    except WeightsError:
        raise
    except Exception as exc:  # header passed our checks, so this is I/O or a race
        raise WeightsError(f"{path}: cannot read tensors: {exc}") from None
    report.loaded = list(params)
    return LoadedWeights(params, dict(metadata), report)


# --------------------------------------------------------------------------------------------
# RNG state <-> JSON

# Constructing a bit generator from a name read off disk: only these, never getattr(np.random).
_BIT_GENERATORS = {cls.__name__: cls for cls in (
    np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox,
    np.random.SFC64)}


def _to_json(value: Any) -> Any:
    # PCG64 state is plain (big) ints, which JSON keeps exactly; MT19937/Philox use arrays.
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    return value


def rng_state_to_json(rng: np.random.Generator | np.random.BitGenerator | dict) -> dict:
    """JSON-able copy of a Generator's `bit_generator.state` (or of such a state dict)."""
    if isinstance(rng, np.random.Generator):
        rng = rng.bit_generator
    state = rng.state if isinstance(rng, np.random.BitGenerator) else rng
    return _to_json(state)


def rng_from_json(data: Mapping[str, Any]) -> np.random.Generator:
    """A Generator continuing exactly where the one passed to rng_state_to_json stopped."""
    name = data.get("bit_generator") if isinstance(data, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise WeightsError(f"saved RNG state has unknown bit generator {name!r}")
    bit_generator = _BIT_GENERATORS[name]()
    try:
        bit_generator.state = _from_json(dict(data))
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"saved {name} RNG state is malformed: {exc}") from None
    return np.random.Generator(bit_generator)


# --------------------------------------------------------------------------------------------
# Checkpoints
#
# Layout:  run_dir/ckpt-<step>/{weights.safetensors, optimizer.safetensors, state.json}
#          run_dir/latest            (text file: the name of the committed ckpt directory)
#
# Why a directory per checkpoint plus a pointer, rather than three files in run_dir: each file
# can be replaced atomically, but three renames are not atomic together, so a crash between
# them would pair new weights with old optimizer state -- and the previous checkpoint would
# already be overwritten.  Here a new checkpoint is written into a fresh temp directory,
# renamed into place, and only then made current by atomically replacing the tiny `latest`
# file.  That single rename is the commit point: before it, `latest` names the previous,
# untouched checkpoint; after it, the new complete one.  A random checkpoint_id stored in all
# three files additionally catches files mixed up by hand.


@dataclasses.dataclass
class Checkpoint:
    path: Path                            # the ckpt-<step> directory
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    state: dict[str, Any]                 # what the trainer passed to save_checkpoint
    source_hash: str
    netlang_version: str
    checkpoint_id: str
    report: WeightsReport | None = None   # from loading the weights (see load_weights)


def _json_default(value: Any) -> Any:
    # Trainers naturally put numpy scalars (a loss, a step) in their state.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _committed(run_dir: Path) -> str | None:
    """The checkpoint name `latest` points at, or None when nothing was committed yet."""
    pointer = run_dir / LATEST_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{pointer}: cannot read checkpoint pointer: {exc}") from None
    # The name is joined onto run_dir: refuse anything that could point elsewhere.
    if not _CKPT_NAME.fullmatch(name):
        raise WeightsError(f"{pointer}: does not name a checkpoint directory ({name[:40]!r})")
    return name


def save_checkpoint(run_dir: str | os.PathLike, *, params: Mapping[str, np.ndarray],
                    optimizer_state: Mapping[str, np.ndarray], state: Mapping[str, Any],
                    source_hash: str) -> Path:
    """Write a complete checkpoint and make it the one load_checkpoint returns.

    `state` must be JSON-serialisable (epoch, step, schedule position, data-order seed, RNG
    state via rng_state_to_json, config).  Keeps the new and the previous checkpoint; older
    ones and leftovers of interrupted saves are deleted after the commit.  Returns the new
    checkpoint directory.  Not safe against two processes saving into one run_dir at once.
    """
    run_dir = Path(run_dir)
    source_hash = _check_source_hash(source_hash)
    checkpoint_id = uuid.uuid4().hex
    version = _netlang_version()
    # Serialise everything before touching the disk, so a bad state writes nothing at all.
    try:
        state_bytes = json.dumps({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
            "netlang_version": version, "source_hash": source_hash,
            "checkpoint_id": checkpoint_id, "state": dict(state),
        }, indent=2, sort_keys=True, default=_json_default).encode("utf-8") + b"\n"
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{run_dir}: checkpoint state cannot be saved as JSON: {exc}") \
            from None
    meta = {"source_hash": source_hash, "netlang_version": version,
            "checkpoint_id": checkpoint_id}
    weights_bytes = _serialize(run_dir / WEIGHTS_FILE, params, meta)
    optimizer_bytes = _serialize(run_dir / OPTIMIZER_FILE, optimizer_state, meta)

    step = state.get("step")
    base = f"ckpt-{int(step):08d}" if isinstance(step, (int, np.integer)) and step >= 0 \
        else "ckpt-00000000"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = _committed(run_dir)
        # A name never used before, so we never write into a directory someone may read.
        name, n = base, 1
        while (run_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tmp-ckpt-"))
        try:
            for file, data in ((WEIGHTS_FILE, weights_bytes), (OPTIMIZER_FILE, optimizer_bytes),
                               (STATE_FILE, state_bytes)):
                _write_bytes(tmp / file, data)
            os.chmod(tmp, 0o777 & ~_umask())
            os.rename(tmp, run_dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(run_dir)
        _write_bytes(run_dir / LATEST_FILE, (name + "\n").encode("utf-8"))  # the commit
    except OSError as exc:
        raise WeightsError(f"{run_dir}: cannot write checkpoint: {exc.strerror or exc}") \
            from None

    # Pruning only after the commit: failures here cost disk space, never consistency.
    with contextlib.suppress(OSError):
        for entry in run_dir.iterdir():
            stale = _CKPT_NAME.fullmatch(entry.name) and entry.name not in (name, previous)
            if entry.is_dir() and (stale or entry.name.startswith(".tmp-ckpt-")):
                shutil.rmtree(entry, ignore_errors=True)
    return run_dir / name


def _checkpoint_dir(run_dir: Path) -> Path:
    """The committed checkpoint of a run dir; a ckpt-* directory itself is accepted too."""
    if not run_dir.is_dir():
        raise WeightsError(f"{run_dir}: no such checkpoint directory")
    name = _committed(run_dir)
    if name is not None:
        ckpt = run_dir / name
        if not ckpt.is_dir():
            raise WeightsError(f"{run_dir / LATEST_FILE}: names checkpoint `{name}`, "
                               "which does not exist")
        return ckpt
    if (run_dir / STATE_FILE).is_file():
        return run_dir
    raise WeightsError(f"{run_dir}: no checkpoint found (no `{LATEST_FILE}` file)")


def _read_state(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: checkpoint is incomplete (file missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: not a valid checkpoint state file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a netlang checkpoint state file")
    if doc.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise WeightsError(f"{path}: checkpoint format version {doc.get('format_version')!r}"
                           f" is not supported (expected {CHECKPOINT_FORMAT_VERSION})")
    for key, kind in (("source_hash", str), ("checkpoint_id", str), ("state", dict)):
        if not isinstance(doc.get(key), kind):
            raise WeightsError(f"{path}: `{key}` is missing or malformed")
    return doc


def load_checkpoint(run_dir: str | os.PathLike, *, source_hash: str | None = None,
                    force: bool = False, expected: Expected | None = None,
                    strict: bool = True) -> Checkpoint:
    """Load the committed checkpoint of a run directory for resuming training.

    With `source_hash`, a checkpoint trained from a different model source is refused unless
    `force`.  `expected`/`strict` check the weights as in load_weights.
    """
    ckpt = _checkpoint_dir(Path(run_dir))
    doc = _read_state(ckpt / STATE_FILE)
    if source_hash is not None and not force \
            and doc["source_hash"].lower() != source_hash.lower():
        raise _source_mismatch(Path(run_dir), doc["source_hash"], source_hash,
                               "resume from it anyway")
    params, wmeta = loaded = load_weights(ckpt / WEIGHTS_FILE, expected, strict=strict)
    opt_state, ometa = load_weights(ckpt / OPTIMIZER_FILE)
    for file, meta in ((WEIGHTS_FILE, wmeta), (OPTIMIZER_FILE, ometa)):
        if meta.get("checkpoint_id") != doc["checkpoint_id"]:
            raise WeightsError(f"{ckpt / file}: belongs to a different checkpoint than "
                               f"{ckpt / STATE_FILE} (checkpoint_id differs)")
    return Checkpoint(path=ckpt, params=params, optimizer_state=opt_state, state=doc["state"],
                      source_hash=doc["source_hash"],
                      netlang_version=str(doc.get("netlang_version", "unknown")),
                      checkpoint_id=doc["checkpoint_id"], report=loaded.report)


def find_weights(path: str | os.PathLike) -> Path:
    """The weights file meant by `path`: a .safetensors file, a run dir or a ckpt dir."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        is_run = (path / LATEST_FILE).exists() or (path / STATE_FILE).exists()
        weights = (_checkpoint_dir(path) if is_run else path) / WEIGHTS_FILE
        if weights.is_file():
            return weights
        raise WeightsError(f"{path}: directory holds no {WEIGHTS_FILE} or checkpoint")
    raise WeightsError(f"{path}: no such weights file or run directory")
