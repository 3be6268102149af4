"""CPU programs with worker threads (NUMBA_NUM_THREADS=2) across separate processes.

Each netlang command is a process of its own that shares the kernel cache with the others,
which is where two defects hid (issue 15): a program compiled against a worker function
loaded from the cache crashed the next process that loaded it (the thread pool was never
started), and two trainings with the same seed gave weights that differ in the last bits
(the workers left OpenBLAS's process-wide thread count at 1 or 2, by a race).  The model is
small, so each command compiles in seconds; its dense layer is large enough for OpenBLAS to
split a product among its threads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from netlang.weights import load_weights

SMALL_CNN = """\
input image: [8, 8, 1]
input label: int32[]

output logits = image
  -> conv2d(8, 3, padding = 1) as conv1 -> relu -> maxpool(2)
  -> flatten
  -> dense(64) as fc1 -> relu
  -> dense(3) as fc2

train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.05, momentum = 0.9)
  batch_size 64
  epochs 2
}
"""


@pytest.fixture
def small_cnn(tmp_path):
    """(model, data .npz, a batch of four inputs as .npy): noisy three-class 8×8 images."""
    model = tmp_path / "small.net"
    model.write_text(SMALL_CNN)
    rng = np.random.default_rng(0)

    def images(n):
        labels = rng.integers(0, 3, n)
        x = rng.integers(0, 200, (n, 8, 8, 1)).astype(np.uint8)
        for c in range(3):
            x[labels == c, 2 * c:2 * c + 3] += 25   # a faint band per class: never all learnt
        return x, labels

    (x_train, y_train), (x_test, y_test) = images(1024), images(64)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    batch = tmp_path / "x.npy"
    np.save(batch, x_test[:4].astype(np.float32))
    return model, data, batch


def netlang(cache, *args):
    """Run one netlang command in a process of its own: two workers, two OpenBLAS threads,
    `cache` as the kernel cache.  The finished process (its exit code, output)."""
    env = {**os.environ, "NETLANG_CACHE": str(cache), "NUMBA_NUM_THREADS": "2",
           "OPENBLAS_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "netlang.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_commands_after_a_cold_cache_load_each_others_programs(small_cnn, tmp_path):
    """eval compiles its program and the worker functions; predict compiles another program
    against the workers it loads from the cache; the second predict and bench load that
    program: they crashed with a segfault when the cached program did not start the pool.
    (The weights come from the reference engine: the CPU engine's training would only add
    its compile, in a cache of its own.)"""
    model, data, batch = small_cnn
    run = tmp_path / "run"
    trained = netlang(tmp_path / "cache", "train", model, "--data", data, "--out", run,
                      "--seed", "7", "--epochs", "1", "--device", "reference")
    assert trained.returncode == 0, trained.stderr
    cache = tmp_path / "cold"
    commands = [("eval", model, "--weights", run, "--data", data),
                ("predict", model, "--weights", run, batch),
                ("predict", model, "--weights", run, batch),
                ("bench", model, "--batch", 16, "--steps", 2)]
    for command in commands:
        done = netlang(cache, *command)
        assert done.returncode == 0, f"netlang {command[0]}: exit {done.returncode}\n{done.stderr}"


def test_same_seed_same_weights_with_two_workers(small_cnn, tmp_path):
    """Three trainings, the first on a cold cache, the others on the cache it left: the same
    seed and worker count give bit-identical weights.  (The race that broke this showed in
    some runs only: on a broken step this test may pass by luck, on a sound one it never
    fails.)"""
    model, data, _ = small_cnn
    cache = tmp_path / "cache"
    weights = {}
    for name in ("cold", "warm", "warm again"):
        out = tmp_path / name
        done = netlang(cache, "train", model, "--data", data, "--out", out, "--seed", "7")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "training small.net on the cpu engine"
        weights[name] = load_weights(out / "weights.safetensors").params
    cold = weights.pop("cold")
    for name, other in weights.items():
        assert cold.keys() == other.keys()
        for tensor in cold:
            assert np.array_equal(cold[tensor], other[tensor]), \
                f"{name}: {tensor} up to {np.abs(cold[tensor] - other[tensor]).max():.3g} apart"

