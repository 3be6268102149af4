"""Dropout masks filled inside compiled programs from a per-step key.

The generator itself is `netlang.ops.norm.dropout_bits`, compiled here as it is written, so
the compiled kernels and the NumPy reference draw identical masks from identical keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netlang.ops.norm import dropout_bits

_bits = njit(inline="always")(dropout_bits)


@njit(cache=True, nogil=True)
def fill_dropout_mask(out, key, threshold, scale):
    """out[i] ← scale where element i is kept (top 32 bits of its hash ≥ threshold), else 0."""
    zero = scale - scale
    for i in range(out.size):
        keep = (_bits(key, np.uint64(i)) >> np.uint64(32)) >= threshold
        out[i] = scale if keep else zero
