"""Large arrays on small pages: how netlang allocates the buffers a program runs on and the
data sets it prepares.

NumPy asks Linux for transparent huge pages (`madvise`) for every array of 4 MiB or more.
Where the kernel has none free (memory fragmented by a compile that just ended, say) and
compacts memory on demand (`defrag` set to `madvise`, a common default), each first write
to such an array waits for that compaction.  On the two-core machine, 2 GB of fresh arrays
written once took 0.7 s on small pages and 0.1 to 4.5 s on huge ones, depending only on what
had run before; ResNet-18's first step at batch 32 took 4.3 s instead of 2.9 s, and loading
MNIST 0.32 to 0.85 s instead of 0.38 to 0.40 s.  The steps after the first took the same time
either way (docs/compiler.md, "Where compile time goes").
"""

from __future__ import annotations

import contextlib

try:   # NumPy's switch for the request (NumPy 2; 1.x keeps it in numpy.core)
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _set_madvise_hugepage


@contextlib.contextmanager
def small_pages():
    """Inside, NumPy allocates without asking for huge pages.  The setting is NumPy's, for the
    whole process: restored on the way out."""
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)
