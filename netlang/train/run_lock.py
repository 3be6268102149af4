"""An exclusive lock on a run directory, held for as long as a process writes into it.

Two processes writing one run directory corrupt it: each prunes the other's temporary
checkpoint directories, metrics.jsonl gets epochs twice, and the weights of one run end up
under the other's run.json.  So a writer (`netlang train`, `Model.fit(out=...)`,
`Model.save(directory)`) first takes `RunLock`: `flock(LOCK_EX | LOCK_NB)` on the file `.lock`
inside the directory, held through an open descriptor for the writer's whole life.  The
kernel drops the lock when that descriptor closes, so a process that dies, by kill -9 too,
never leaves a stale lock behind.  The file holds the pid of its last holder, which a refused
writer names, and stays: removing it would let a process that opened it a moment earlier
lock a file nobody else sees.  (A directory the lock itself made, in which nothing else was
written, is removed whole, and `acquire` checks that the file it locked is still there.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from netlang.errors import UsageError

LOCK_FILE = ".lock"


class RunLock:
    """The exclusive lock on the run directory `directory`, created when missing: taken at
    once or refused with a one-line UsageError naming the holder's pid; a `with` block (or
    `acquire` and `release`) holds it.  A directory that this lock created and that holds
    nothing but the lock file when the lock is released (a run refused before writing
    anything) is removed again, with the parents created for it."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._descriptor: int | None = None
        self._created: list[Path] = []   # the directories acquire made, innermost first

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise UsageError when another process holds it."""
        path = self.directory / LOCK_FILE
        while True:
            self._created = _make_directories(self.directory)
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                                     0o666)
            except FileNotFoundError:   # the directory went away with a releasing holder
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _recorded_pid(descriptor)
                os.close(descriptor)
                raise UsageError(f"{self.directory} is in use by another netlang process"
                                 + (f" (pid {holder})" if holder else "") + ": wait for it to "
                                 "finish, or write this run into another directory") from None
            except BaseException:
                os.close(descriptor)
                raise
            if _same_file(descriptor, path):
                break
            # A holder removed the file (and its directory) between our open and our lock:
            # a lock on that orphan would guard nothing.  Open the file as it is now.
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Give the lock back (nothing when not held)."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            if self._created and _holds_only_the_lock(self.directory):
                # Removed while still locked, so no writer can have started in it meanwhile.
                (self.directory / LOCK_FILE).unlink()
                for directory in self._created:
                    os.rmdir(directory)
        except OSError:   # another process's file appeared in it: the directory stays
            pass
        finally:
            os.close(descriptor)   # the lock goes with the descriptor
            self._created = []


def _make_directories(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; the ones made, innermost first."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _recorded_pid(descriptor: int) -> int | None:
    """The pid the holder wrote into the lock file, or None before it has written it."""
    try:
        return int(os.pread(descriptor, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):
        return None


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether `descriptor` is the file at `path` now."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino)


def _holds_only_the_lock(directory: Path) -> bool:
    return [entry.name for entry in directory.iterdir()] == [LOCK_FILE]
