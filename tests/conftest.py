"""Settings shared by the whole suite, applied before any test imports netlang's back ends."""

import os
from pathlib import Path

# Every pass's output is verified in tests (a broken invariant fails where it broke).
os.environ.setdefault("NETLANG_VERIFY", "1")

# One CPU worker: each convolution of a program compiled for several workers is a parallel
# function of its own, a few seconds more of compile time per model (dozens of models here);
# tests/test_cpu_engine.py's worker tests split batches among several explicitly.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

# Real MNIST, where the checkout has shared/ beside it (CI does); tests that need it skip otherwise.
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if _shared.is_dir():
    os.environ.setdefault("NETLANG_DATA", str(_shared))


# ---- the CUDA back end -----------------------------------------------------------------------
# tests/test_cuda.py runs twice: in the main pass (a GPU, if there is one; otherwise only the
# tests that need none), and again under Numba's CUDA simulator in its own process, since
# NUMBA_ENABLE_CUDASIM must be set before Numba is imported:
#     NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py
# The simulator runs every GPU thread as a Python thread: the sizes below shrink its work, and
# a short switch interval keeps its threads from waiting out the default 5 ms slices.
import sys  # noqa: E402

import pytest  # noqa: E402

CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
if CUDA_SIMULATOR:
    sys.setswitchinterval(1e-4)


class CudaSizes:
    """Batch sizes and step counts for the CUDA tests: small under the simulator."""

    def __init__(self, simulated: bool):
        self.simulated = simulated
        self.batch = 5 if simulated else 32           # an odd size under the simulator
        self.steps = 2 if simulated else 6            # training steps compared step for step
        self.run_steps = 8 if simulated else 60      # the XOR and MLP trajectories
        self.hidden = 8 if simulated else 64
        self.image_batch = 2 if simulated else 16    # the convolutional models' batches


def pytest_configure(config):
    if CUDA_SIMULATOR:   # the simulator's NumPy uint64 scalars warn where the device wraps
        config.addinivalue_line("filterwarnings",
                                "ignore:overflow encountered in scalar:RuntimeWarning")


@pytest.fixture(scope="session")
def cuda_sizes():
    return CudaSizes(CUDA_SIMULATOR)


def random_batch(graph, n, seed, classes=3):
    """A batch for every input of a model: standard normal floats, integers below `classes`."""
    import numpy as np
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        if t.is_float:
            feeds[name] = rng.standard_normal((n,) + tuple(t.shape[1:])).astype(np.float32)
        else:
            feeds[name] = rng.integers(0, classes, (n,) + tuple(t.shape[1:]))
    return feeds
