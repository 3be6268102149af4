"""Dropout masks filled inside compiled programs from a per-step key.

The generator `netlang.ops.norm_loops.dropout_bits` and the loop that fills a mask
(`netlang.ops.norm_loops.fill_dropout_mask`) are compiled here as they are written, so the
compiled kernels and the NumPy reference draw identical masks from identical keys.
"""

from __future__ import annotations

from netlang.ops import norm_loops
from netlang.runtime.jit import compiled, inlined

_dropout_bits = inlined(norm_loops.dropout_bits)
fill_dropout_mask = compiled(norm_loops.fill_dropout_mask, _dropout_bits)
