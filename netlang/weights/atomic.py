"""Files that appear whole or not at all.

A file is written to a temporary name in its own directory and renamed over the target only
once it is complete and on disk, so a reader (or a resumed run after a crash or a Ctrl-C)
sees the old file or the new one, never a mix.  Weights, checkpoints, run.json, PNGs and
graph drawings are all written through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator

from netlang.errors import WeightsError


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable: without it a power cut can forget the new
    name."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask.  mkstemp/mkdtemp create private (0600/0700) entries; results get
    the mode a plain open()/mkdir() would.  Reading the umask means setting it briefly (racy
    only against another thread changing the umask)."""
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
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a stray temp file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO[bytes]], Any]) -> None:
    """Call `write_fn(f)` on a temp file, then atomically move it to `path`.

    If `write_fn` raises, the temp file is removed and any existing `path` is untouched.
    """
    with atomic_file(path) as f:
        write_fn(f)


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write `data` to `path`; a failing disk is a one-line WeightsError."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        raise WeightsError(f"cannot write {path}: {exc.strerror or exc}") from None
