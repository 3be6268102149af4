"""The bias gradient's loop nest, as plain Python: compiled by netlang.runtime.cnn.

`bias_grad` (netlang/ops/dense.py) is every bias's gradient (dense, convolutions, batch
norm): its CPU template emits one call to this compiled function rather than its own loop,
since every loop in a step costs compile time (see netlang/ops/conv_loops.py).
"""

import numpy as np

# The float64 lanes a bias's gradient sums into, at most: compiled, they are a buffer on the
# stack (see `lanes_buffer`), and a bias of more channels is summed in blocks of this many.
LANES = 1024


def lanes_buffer():
    """LANES float64 values to sum into, their contents undefined.  Compiled (netlang/runtime/
    cnn.py), this name is bound to a buffer in the compiled function's stack frame: NumPy's
    allocation, compiled, costs nothing at run time but 0.2 s of Numba's typing in every
    process that compiles a bias's gradient."""
    return np.empty(LANES, np.float64)


def column_sums(g, out):
    """out (C,) ← g summed over every axis but the last (a bias's gradient).  Runs of rows are
    added at once into float64 lanes, so the inner loop is long and contiguous even when C is
    small (a six-channel convolution's 100,000 rows), and the total keeps float64 precision.
    A bias of more than LANES channels is summed LANES channels at a time, each in one row
    per run, in the order a narrower one's would be."""
    C = out.size
    flat = g.reshape(g.size)
    rows = g.size // C
    lanes = lanes_buffer()
    for c0 in range(0, C, LANES):   # one block of channels at a time (one, unless C > LANES)
        block = C - c0 if C - c0 < LANES else LANES
        # Rows per run: several only for a single block, whose rows lie one after the other.
        per = 256 // C if C < 256 else 1
        width = per * block
        for j in range(width):
            lanes[j] = 0.0
        runs = rows // per
        for run in range(runs):
            base = run * per * C + c0
            for j in range(width):
                lanes[j] += flat[base + j]
        tail = runs * per * C
        for j in range(tail, rows * C):  # the rows after the last whole run (per > 1 only)
            lanes[j - tail] += flat[j]
        for j in range(block):
            total = 0.0
            for k in range(per):
                total += lanes[k * block + j]
            out[c0 + j] = total
