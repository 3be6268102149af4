"""Random draws filled inside compiled programs from a per-step key: dropout masks and the
noise ops' draws.

The generator `netlang.ops.norm_loops.dropout_bits` and the loops that fill a mask or a draw
(`fill_dropout_mask`, `fill_normal`, `fill_reparameterised`, `fill_bernoulli` in
netlang/ops/norm_loops.py) are compiled here as they are written, so the compiled kernels and
the NumPy reference draw identical values from identical keys.
"""

from __future__ import annotations

from netlang.ops import norm_loops
from netlang.runtime.jit import compiled_generic, inlined

_dropout_bits = inlined(norm_loops.dropout_bits)
fill_dropout_mask = compiled_generic(norm_loops.fill_dropout_mask, _dropout_bits)
_uniform_draw = inlined(norm_loops.uniform_draw, _dropout_bits)
_normal_pair = inlined(norm_loops.normal_pair, _uniform_draw)
fill_normal = compiled_generic(norm_loops.fill_normal, _normal_pair)
fill_reparameterised = compiled_generic(norm_loops.fill_reparameterised, _normal_pair)
fill_bernoulli = compiled_generic(norm_loops.fill_bernoulli, _uniform_draw)
