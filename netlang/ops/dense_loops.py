"""The bias gradient's loop nest, as plain Python: compiled by netlang.runtime.cnn.

`bias_grad` (netlang/ops/dense.py) is every bias's gradient (dense, convolutions, batch
norm): its CPU template emits one call to this compiled function rather than its own loop,
since every loop in a step costs compile time (see netlang/ops/conv_loops.py).
"""

import numpy as np

# The float64 lanes a bias's gradient sums into, at most: compiled, they are a buffer on the
# stack (64 KiB, see `lanes_buffer`).  A bias of more channels (a language model's output
# over a large vocabulary) is summed this many channels at a time, one pass over the
# gradient per block: a wide bias read in one pass needs a lane per channel.
LANES = 8192


def lanes_buffer():
    """LANES float64 values to sum into, their contents undefined.  Compiled (netlang/runtime/
    cnn.py), this name is bound to a buffer in the compiled function's stack frame: NumPy's
    allocation, compiled, costs nothing at run time but 0.2 s of Numba's typing in every
    process that compiles a bias's gradient."""
    return np.empty(LANES, np.float64)


def column_sums(g, out):
    """out (C,) ← g summed over every axis but the last (a bias's gradient; generated code
    passes g flat, read as rows of C values, so one compilation serves every rank).  Runs of
    rows are added at once into float64 lanes, so the inner loop is long and contiguous even
    when C is small (a six-channel convolution's 100,000 rows), and the total keeps float64
    precision.
    A bias of more than LANES channels is summed LANES channels at a time, one row per run,
    as a narrower one of more than 256 channels is."""
    C = out.size
    flat = g.reshape(g.size)
    rows = g.size // C
    lanes = lanes_buffer()
    if C > LANES:   # LANES channels at a time, one row per run
        for c0 in range(0, C, LANES):
            block = C - c0 if C - c0 < LANES else LANES
            for j in range(block):
                lanes[j] = 0.0
            for r in range(rows):
                base = r * C + c0
                for j in range(block):
                    lanes[j] += flat[base + j]
            for j in range(block):
                out[c0 + j] = lanes[j]
        return
    per = 256 // C if C < 256 else 1   # rows per run
    width = per * C
    for j in range(width):
        lanes[j] = 0.0
    runs = rows // per
    for run in range(runs):
        base = run * width
        for j in range(width):
            lanes[j] += flat[base + j]
    for j in range(runs * width, rows * C):  # the rows after the last whole run
        lanes[j - runs * width] += flat[j]
    for c in range(C):
        total = 0.0
        for k in range(per):
            total += lanes[k * C + c]
        out[c] = total
