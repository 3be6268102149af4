"""Training checkpoints: written so that a crash never loses the last good one.

Layout:  run_dir/ckpt-<step>/{weights.safetensors, optimizer.safetensors, state.json}
         run_dir/latest            (text file: the name of the committed ckpt directory)

Why a directory per checkpoint plus a pointer, rather than three files in run_dir: each file
can be replaced atomically, but three renames are not atomic together, so a crash between
them would pair new weights with old optimizer state -- and the previous checkpoint would
already be overwritten.  Here a new checkpoint is written into a fresh temp directory,
renamed into place, and only then made current by atomically replacing the tiny `latest`
file.  That single rename is the commit point: before it, `latest` names the previous,
untouched checkpoint; after it, the new complete one.  A random checkpoint_id stored in all
three files additionally catches files mixed up by hand.

Loading checks that the committed checkpoint is whole (its state file parses, both tensor
files have intact headers and the same checkpoint_id); when it is not -- a truncated file
after a full disk, a checkpoint copied half-way -- the previous checkpoint kept beside it is
used instead, with a one-line warning naming the damaged file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from netlang.errors import WeightsError
from netlang.version import __version__
from netlang.weights.atomic import current_umask, fsync_directory, write_bytes
from netlang.weights.safe_read import (
    POINTER_CAP,
    STATE_CAP,
    open_regular,
    read_json,
    read_text_capped,
)
from netlang.weights.safetensors_files import (
    Expected,
    WeightsReport,
    check_source_hash,
    load_weights,
    read_header,
    serialize,
    source_mismatch,
)

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
CHECKPOINT_FORMAT = "netlang-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_CKPT_NAME = re.compile(r"ckpt-(\d+)(?:-(\d+))?")

# Checks a checkpoint's saved state (the dict under "state") read from the given state file.
StateCheck = Callable[[dict, Path], None]


class DamagedCheckpointWarning(UserWarning):
    """The committed checkpoint of a run is damaged and an older one is used instead."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: everything a run needs to continue exactly."""

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
        name = read_text_capped(pointer, POINTER_CAP, what="checkpoint pointer").strip()
    except FileNotFoundError:
        return None
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
    source_hash = check_source_hash(source_hash)
    checkpoint_id = uuid.uuid4().hex
    # Serialise everything before touching the disk, so a bad state writes nothing at all.
    try:
        state_bytes = json.dumps({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
            "netlang_version": __version__, "source_hash": source_hash,
            "checkpoint_id": checkpoint_id, "state": dict(state),
        }, indent=2, sort_keys=True, default=_json_default).encode("utf-8") + b"\n"
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{run_dir}: checkpoint state cannot be saved as JSON: {exc}") \
            from None
    meta = {"source_hash": source_hash, "netlang_version": __version__,
            "checkpoint_id": checkpoint_id}
    weights_bytes = serialize(run_dir / WEIGHTS_FILE, params, meta)
    optimizer_bytes = serialize(run_dir / OPTIMIZER_FILE, optimizer_state, meta)

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
                write_bytes(tmp / file, data)
            os.chmod(tmp, 0o777 & ~current_umask())
            os.rename(tmp, run_dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_directory(run_dir)
        write_bytes(run_dir / LATEST_FILE, (name + "\n").encode("utf-8"))  # the commit
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


def _age(name: str) -> tuple[int, int]:
    """Order of checkpoint names as save_checkpoint hands them out: by step, then by the
    `-2`, `-3`... given to a second save at the same step."""
    match = _CKPT_NAME.fullmatch(name)
    return int(match.group(1)), int(match.group(2) or 1)


def _older_checkpoints(run_dir: Path, name: str) -> list[Path]:
    """The ckpt-* directories saved before `name`, newest first."""
    try:
        names = [entry.name for entry in run_dir.iterdir()
                 if _CKPT_NAME.fullmatch(entry.name) and entry.is_dir()]
    except OSError:
        return []
    older = sorted((n for n in names if _age(n) < _age(name)), key=_age, reverse=True)
    return [run_dir / n for n in older]


def _resolve(run_dir: Path, check) -> tuple[Path, Any]:
    """The checkpoint directory meant by `run_dir`, with what `check(directory)` returned:
    the one `latest` commits to, or the previous one kept beside it when `check` finds the
    committed one damaged (raising WeightsError); a ckpt-* directory itself is accepted too,
    as it is."""
    if not run_dir.is_dir():
        raise WeightsError(f"{run_dir}: no such checkpoint directory")
    name = _committed(run_dir)
    if name is None:
        if (run_dir / STATE_FILE).is_file():
            return run_dir, check(run_dir)
        raise WeightsError(f"{run_dir}: no checkpoint found (no `{LATEST_FILE}` file)")
    try:
        ckpt = run_dir / name
        if not ckpt.is_dir():
            raise WeightsError(f"{run_dir / LATEST_FILE}: names checkpoint `{name}`, "
                               "which does not exist")
        return ckpt, check(ckpt)
    except WeightsError as damage:
        for older in _older_checkpoints(run_dir, name):
            try:
                checked = check(older)
            except WeightsError:
                continue
            warnings.warn(f"{damage.message}; using the previous checkpoint {older} instead",
                          DamagedCheckpointWarning, stacklevel=3)
            return older, checked
        raise


def _read_state(path: Path) -> dict:
    try:
        doc = read_json(path, STATE_CAP, what="checkpoint state file")
    except FileNotFoundError:
        raise WeightsError(f"{path}: checkpoint is incomplete (file missing)") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a netlang checkpoint state file")
    if doc.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise WeightsError(f"{path}: checkpoint format version {doc.get('format_version')!r}"
                           f" is not supported (expected {CHECKPOINT_FORMAT_VERSION})")
    for key, kind in (("source_hash", str), ("checkpoint_id", str), ("state", dict)):
        if not isinstance(doc.get(key), kind):
            raise WeightsError(f"{path}: `{key}` is missing or malformed")
    return doc


def _check_intact(ckpt: Path, check_state: StateCheck | None = None) -> dict:
    """The state document of `ckpt`, once its three files are known to be whole and to
    belong together (headers only: no tensor is read), and its state passes `check_state`."""
    doc = _read_state(ckpt / STATE_FILE)
    if check_state is not None:
        check_state(doc["state"], ckpt / STATE_FILE)
    for file in (WEIGHTS_FILE, OPTIMIZER_FILE):
        _, meta = read_header(ckpt / file)
        if meta.get("checkpoint_id") != doc["checkpoint_id"]:
            raise WeightsError(f"{ckpt / file}: belongs to a different checkpoint than "
                               f"{ckpt / STATE_FILE} (checkpoint_id differs)")
    return doc


def load_checkpoint(run_dir: str | os.PathLike, *, source_hash: str | None = None,
                    force: bool = False, expected: Expected | None = None,
                    strict: bool = True, check_state: StateCheck | None = None) -> Checkpoint:
    """Load the committed checkpoint of a run directory for resuming training.

    A damaged committed checkpoint falls back to the previous one (see the module
    docstring).  With `source_hash`, a checkpoint trained from a different model source is
    refused unless `force`.  `expected`/`strict` check the weights as in load_weights.
    `check_state(state, state_file)` checks the saved state field by field (the trainer
    knows its fields), raising WeightsError; a state that fails counts as damage.
    """
    ckpt, doc = _resolve(Path(run_dir), lambda ckpt: _check_intact(ckpt, check_state))
    if source_hash is not None and not force \
            and doc["source_hash"].lower() != source_hash.lower():
        raise source_mismatch(Path(run_dir), doc["source_hash"], source_hash,
                              "resume from it anyway")
    loaded = load_weights(ckpt / WEIGHTS_FILE, expected, strict=strict)
    opt_state, _ = load_weights(ckpt / OPTIMIZER_FILE)
    return Checkpoint(path=ckpt, params=loaded.params, optimizer_state=opt_state,
                      state=doc["state"], source_hash=doc["source_hash"],
                      netlang_version=str(doc.get("netlang_version", "unknown")),
                      checkpoint_id=doc["checkpoint_id"], report=loaded.report)


def _weights_intact(ckpt: Path) -> None:
    """The check find_weights needs: the weights file, where there is one, is whole."""
    if (ckpt / WEIGHTS_FILE).is_file():
        read_header(ckpt / WEIGHTS_FILE)


def find_weights(path: str | os.PathLike) -> Path:
    """The weights file meant by `path`: a .safetensors file, a run dir or a ckpt dir."""
    path = Path(path)
    if path.is_file():
        return path
    if path.exists() and not path.is_dir():
        # Opening it only to say what it is: a FIFO is not waited on, a device never read.
        with open_regular(path, what="weights file or run directory"):
            pass
    if path.is_dir():
        is_run = (path / LATEST_FILE).exists() or (path / STATE_FILE).exists()
        weights = (_resolve(path, _weights_intact)[0] if is_run else path) / WEIGHTS_FILE
        if weights.is_file():
            return weights
        raise WeightsError(f"{path}: directory holds no {WEIGHTS_FILE} or checkpoint")
    raise WeightsError(f"{path}: no such weights file or run directory")
