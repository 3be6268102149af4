"""The recurrent layers' matrix products: netlang's `vector_gemm` against OpenBLAS (`gemm32`,
the products of every other kernel) on the shapes the row LSTM multiplies, on one thread.

    python benchmarks/recurrent_products.py [--repeat 100]

Prints each shape's best time of five rounds of `--repeat` calls and its GFLOP/s.  OpenBLAS's
figure depends on OPENBLAS_CORETYPE (the kernels it picks), which the script prints and never
changes; run it with OPENBLAS_NUM_THREADS=1 for one thread on both sides.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlang.runtime.blas import gemm32  # noqa: E402
from netlang.runtime.vector_gemm import vector_gemm  # noqa: E402

# (what it is, M, K, N, a transposed): the row LSTM at batch 128 (28 steps, 128 units), in
# blocks of 64 examples for the per-step products.
SHAPES = [
    ("a step's x·W_ihᵀ, 64 examples", 64, 28, 512, False),
    ("a step's h·W_hhᵀ, 64 examples", 64, 128, 512, False),
    ("a step's da·W_hh, 64 examples", 64, 512, 128, False),
    ("W_hh's gradient, batch 128", 512, 3584, 128, True),
    ("W_ih's gradient, batch 128", 512, 3584, 28, True),
]


def best_time(function, repeat: int) -> float:
    function()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}   "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}")
    print(f"{'product':<32} {'shape':>22}  {'vector_gemm':>20}  {'OpenBLAS':>20}")
    for title, m, k, n, transa in SHAPES:
        a = rng.standard_normal((k, m) if transa else (m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        c = np.zeros((m, n), np.float32)
        ours = best_time(lambda: vector_gemm(transa, 1.0, a, b, 0.0, c), args.repeat)
        theirs = best_time(lambda: gemm32(transa, False, 1.0, a, b, 0.0, c), args.repeat)
        flop = 2.0 * m * k * n
        shape = f"({k}×{m})ᵀ by {k}×{n}" if transa else f"{m}×{k} by {k}×{n}"
        print(f"{title:<32} {shape:>22}  {ours * 1e6:8.1f} µs {flop / ours / 1e9:5.0f} GF/s  "
              f"{theirs * 1e6:8.1f} µs {flop / theirs / 1e9:5.0f} GF/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
