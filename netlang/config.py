"""Every environment flag netlang reads, read in one place.

NETLANG_DEBUG   1: pass timings; 2: also the IR after each pass; 3: also generated source.
NETLANG_VERIFY  1: verify the IR after every pass (tests set it).
NETLANG_CACHE   where compiled kernels are cached (default: ~/.cache/netlang/kernels), with the
                parser's tables in its `parser` folder.
XDG_CACHE_HOME  the user cache the defaults live in (~/.cache when unset).
NETLANG_DATA    where data sets are looked for first (see netlang.data).
NUMBA_ENABLE_CUDASIM  1: Numba's CUDA simulator stands in for a GPU (read here, set before
                Numba is imported; see docs/cuda.md).
NETLANG_MPI_TIMEOUT  seconds a process training with others under MPI waits for them at a
                step before it ends the job (default 300; see docs/training.md).
PMI_SIZE, OMPI_COMM_WORLD_SIZE, PMIX_RANK  set by an MPI launcher (MPICH's and Intel's
                mpiexec, Open MPI's mpirun, Slurm's srun): whether this process is one of
                several that MPI started (netlang/train/distributed.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time


def debug_level() -> int:
    """NETLANG_DEBUG as a number; 0 when unset or not a number.

    A bad value silences debug output rather than breaking a run.
    """
    try:
        return int(os.environ.get("NETLANG_DEBUG", "0") or 0)
    except ValueError:
        return 0


def verify_enabled() -> bool:
    """Whether NETLANG_VERIFY asks for the IR to be verified after every pass."""
    return os.environ.get("NETLANG_VERIFY", "") not in ("", "0")


def cuda_simulator() -> bool:
    """Whether Numba's CUDA simulator runs the CUDA back end (no GPU needed; slow)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


def user_cache(*parts: str) -> str:
    """A folder of netlang's in the user cache: XDG_CACHE_HOME, or ~/.cache where that is unset
    or relative (the XDG spec says a relative value must be ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netlang", *parts)


def cache_dir() -> str:
    """Where compiled kernels are cached: NETLANG_CACHE, else `netlang/kernels` in the user cache."""
    return os.environ.get("NETLANG_CACHE") or user_cache("kernels")


def parser_cache_dir() -> str:
    """Where the parser's tables are cached: `parser` inside NETLANG_CACHE when that is set (one
    variable moves every cache), else `netlang/parser` in the user cache."""
    explicit = os.environ.get("NETLANG_CACHE")
    return os.path.join(explicit, "parser") if explicit else user_cache("parser")


def owned_privately(stat_result) -> bool:
    """Owned by this user and writable by no one else (always true where there are no uids)."""
    if not hasattr(os, "getuid"):
        return True
    return stat_result.st_uid == os.getuid() and not stat_result.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def private_directory(directory: str) -> str | None:
    """Create the cache folder `directory` (mode 0700) if it is missing; None when it is this
    user's and writable by no one else, else why not, in words (`is writable by other users
    (mode 0777)`).  A cache holds what netlang runs or loads, so only its owner may write it;
    a folder that fails the check is neither fixed nor used (it may be shared on purpose)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    found = os.stat(directory)
    if hasattr(os, "getuid") and found.st_uid != os.getuid():
        return "belongs to another user"
    if not owned_privately(found):
        return f"is writable by other users (mode {stat.S_IMODE(found.st_mode):04o})"
    return None


def data_dir() -> str | None:
    """NETLANG_DATA: where data sets are looked for first, or None when unset."""
    return os.environ.get("NETLANG_DATA") or None


def debug(level: int, message: str) -> None:
    """Print `message` to stderr when NETLANG_DEBUG is at least `level`."""
    if debug_level() >= level:
        print(f"[netlang] {message}", file=sys.stderr)


@contextlib.contextmanager
def timed(what: str):
    """Reports a pass's wall time at NETLANG_DEBUG=1."""
    start = time.perf_counter()
    try:
        yield
    finally:
        debug(1, f"{what}: {(time.perf_counter() - start) * 1000:.1f} ms")


# What the common MPI launchers set in each process they start: MPICH's Hydra, Intel MPI and
# Slurm's PMI-2 `PMI_SIZE`, Open MPI `OMPI_COMM_WORLD_SIZE`, PMIx (Slurm's srun --mpi=pmix,
# Open MPI 5) `PMIX_RANK`.
MPI_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (see MPI_LAUNCHER_VARIABLES): only then
    is mpi4py imported, so a process outside mpiexec never loads MPI."""
    return any(name in os.environ for name in MPI_LAUNCHER_VARIABLES)


def mpi_timeout() -> float:
    """NETLANG_MPI_TIMEOUT: seconds to wait for the other processes at a step (default 300)."""
    return float(os.environ.get("NETLANG_MPI_TIMEOUT", "") or 300.0)
