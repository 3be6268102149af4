"""Every environment flag netlang reads, read in one place.

NETLANG_DEBUG   1: pass timings; 2: also the IR after each pass; 3: also generated source.
NETLANG_VERIFY  1: verify the IR after every pass (tests set it).
NETLANG_CACHE   where compiled kernels are cached (default: ~/.cache/netlang/kernels).
NETLANG_DATA    where data sets are looked for first (see netlang.data).
NUMBA_ENABLE_CUDASIM  1: Numba's CUDA simulator stands in for a GPU (read here, set before
                Numba is imported; see docs/cuda.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time


def debug_level() -> int:
    try:
        return int(os.environ.get("NETLANG_DEBUG", "0") or 0)
    except ValueError:
        return 0


def verify_enabled() -> bool:
    return os.environ.get("NETLANG_VERIFY", "") not in ("", "0")


def cuda_simulator() -> bool:
    """Whether Numba's CUDA simulator runs the CUDA back end (no GPU needed; slow)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


def cache_dir() -> str:
    explicit = os.environ.get("NETLANG_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netlang", "kernels")


def debug(level: int, message: str) -> None:
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
