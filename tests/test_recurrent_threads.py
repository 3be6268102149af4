"""The recurrent layers' CPU kernels on any number of worker threads (issue 11's speed work).

Each kernel cuts a batch into blocks of examples (and its weight and input gradients' products
into blocks of rows) that depend on the batch alone, and the worker threads share the blocks:
OpenBLAS's result for a row of a product depends on how many rows the product has, so a cut by
the thread count would make a seed's weights depend on it.  Each training is a process of its
own (Numba's thread count is fixed when it starts); OpenBLAS is held to one thread in all of
them, so that the products outside the recurrent layer (the dense layer's) agree too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from netlang.weights import load_weights

# Batches of 300 examples: blocks of 64, 64, 64, 64 and 44 (recurrent_kernels.py
# `BLOCK_EXAMPLES`), shared 5 by one worker, 2 | 3 by two, 1 | 2 | 2 by three; an epoch's
# last, short batch (140 of 1040 examples: 64, 64 and 12) too.  Two layers, both directions
# and lengths: every section of the kernels is cut.
MODEL = """\
input x: [6, 3]
input n: int32[]
input y: int32[]

output z = x -> lstm(8, layers = 2, bidirectional = true, lengths = n) as rec -> dense(3)

train {
  loss cross_entropy(z, y)
  optimizer adam(lr = 0.01)
  batch_size 300
  epochs 2
}
"""


def _train(tmp_path, threads: int):
    env = {**os.environ, "NETLANG_CACHE": str(tmp_path / "cache"),
           "NUMBA_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1"}
    out = tmp_path / f"run{threads}"
    done = subprocess.run([sys.executable, "-m", "netlang.cli", "train", tmp_path / "rec.net",
                           "--data", tmp_path / "data.npz", "--out", out, "--seed", "7"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return load_weights(out / "weights.safetensors").params


@pytest.mark.slow   # three trainings, each compiling its programs afresh: about 80 s
def test_same_seed_same_weights_on_one_two_and_three_threads(tmp_path):
    (tmp_path / "rec.net").write_text(MODEL)
    rng = np.random.default_rng(0)

    def split(count):
        x = rng.normal(size=(count, 6, 3)).astype(np.float32)
        lengths = rng.integers(1, 7, count).astype(np.int32)
        return x, lengths, (x[:, 0, 0] > 0).astype(np.int64) + (lengths > 3)

    (x, n, y), (x_test, n_test, y_test) = split(1040), split(100)
    np.savez(tmp_path / "data.npz", x_train=x, n_train=n, y_train=y, x_test=x_test,
             n_test=n_test, y_test=y_test)
    runs = {threads: _train(tmp_path, threads) for threads in (1, 2, 3)}
    one = runs.pop(1)
    for threads, other in runs.items():
        assert one.keys() == other.keys()
        for tensor in one:
            assert np.array_equal(one[tensor], other[tensor]), \
                f"{threads} threads: {tensor} up to {np.abs(one[tensor] - other[tensor]).max():.3g} apart"
