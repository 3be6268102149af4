"""Batch statistics summed across gradient shards: the hook a synchronised gradient pass calls.

A batch norm in a gradient pass of a shard (netlang/train/shards.py) computes its
per-channel sums over the shard's rows, then calls `sum_batch_statistics` (from compiled
code, in Numba's object mode), and computes its statistics and its gradients from the sums
this returns: those of the whole batch, summed over the shards along their fixed tree, so that
the model computed does not depend on how many processes share the batch.  What the sums are
summed with is installed by `reduce_statistics_with` (the shards of one process meet on
threads; processes exchange them).  A program rendered without `statistics_across_processes`
(the fused step of a process training alone) never calls this module, so its code and its
speed are those of one process.
"""

from __future__ import annotations

import warnings

import numpy as np

# Numba warns, once per batch norm, that the object-mode block of a synchronised pass takes
# the GIL although the function is compiled with nogil=True: it must, to call MPI, and the
# pass is serial there.  (The message starts with terminal colour codes, hence the `.*`.)
warnings.filterwarnings("ignore", message=".*Code running in object mode won't allow parallel")

_reduction = None


def reduce_statistics_with(reduction) -> None:
    """Install `reduction(sums, rows, with_gradients) -> total rows`, which sums `sums` (float64
    (2, C): Σx, Σx², or (4, C) with Σg, Σg·x) in place across the shards and returns the
    rows of the whole batch; None uninstalls it."""
    global _reduction
    _reduction = reduction


def sum_batch_statistics(sums: np.ndarray, rows: int, with_gradients: bool) -> int:
    """The sums of this shard's `rows` rows made the whole batch's, in place; returns the
    whole batch's rows.  With no reduction installed, the pass holds the whole batch."""
    if _reduction is None:
        return rows
    return int(_reduction(sums if with_gradients else sums[:2], rows, with_gradients))
