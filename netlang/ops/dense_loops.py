"""The bias gradient's loop nest, as plain Python: compiled by netlang.runtime.cnn.

`bias_grad` (netlang/ops/dense.py) is every bias's gradient (dense, convolutions, batch
norm): its CPU template emits one call to this compiled function rather than its own loop,
since every loop in a step costs compile time (see netlang/ops/conv_loops.py).
"""

import numpy as np


def column_sums(g, out):
    """out (C,) ← g summed over every axis but the last (a bias's gradient).  Runs of rows are
    added at once into float64 lanes, so the inner loop is long and contiguous even when C is
    small (a six-channel convolution's 100,000 rows), and the total keeps float64 precision."""
    C = out.size
    flat = g.reshape(g.size)
    rows = g.size // C
    per = max(1, 256 // C)   # rows per run
    width = per * C
    lanes = np.zeros(width, np.float64)
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
