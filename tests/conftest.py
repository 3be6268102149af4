"""Settings shared by the whole suite, applied before any test imports netlang's back ends;
the CUDA passes' sizes and skips, the real MNIST files, and the random batches tests feed."""

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from netlang.data.mnist import FILES, find_file, search_dirs  # no back end: Numba comes later

# Every pass's output is verified in tests (a broken invariant fails where it broke).
os.environ.setdefault("NETLANG_VERIFY", "1")

# One CPU worker: each convolution of a program compiled for several workers is a parallel
# function of its own, a few seconds more of compile time per model (dozens of models here);
# tests/test_cpu_engine.py's worker tests split batches among several explicitly.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

# Real MNIST: where NETLANG_DATA points, else in shared/ beside the checkout (CI has it there),
# else in the download cache, as netlang's loader looks.  The directories are read now, before
# any test changes the environment (tests/test_data.py hides NETLANG_DATA from its tests).
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if _shared.is_dir():
    os.environ.setdefault("NETLANG_DATA", str(_shared))
_MNIST_SEARCH = search_dirs()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The directory holding the four real MNIST files, the first of the loader's directories
    that has them all; the test skips, naming where it looked, when none has."""
    for directory in _MNIST_SEARCH:
        if all(find_file(stem, [directory]) for stem in FILES):
            return directory
    pytest.skip(f"real MNIST files not found in {', '.join(map(str, _MNIST_SEARCH))} "
                f"(set NETLANG_DATA to the folder holding mnist/)")


# ---- the CUDA back end -----------------------------------------------------------------------
# tests/test_cuda.py, test_conformance.py and test_cuda_phases.py run twice: in the main pass
# (a GPU, if there is one; otherwise only the tests that need none), and again under Numba's
# CUDA simulator in its own process, since NUMBA_ENABLE_CUDASIM must be set before Numba is
# imported:
#     NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py tests/test_conformance.py \
#         tests/test_cuda_phases.py
# The simulator runs every GPU thread as a Python thread: the sizes below shrink its work, and
# a short switch interval keeps its threads from waiting out the default 5 ms slices.

CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
if CUDA_SIMULATOR:
    sys.setswitchinterval(1e-4)


@functools.cache
def cuda_runs() -> bool:
    """Whether CUDA kernels run here: under the simulator, or on a GPU."""
    if CUDA_SIMULATOR:
        return True
    try:
        from numba import cuda  # only when asked: the settings above come before Numba
        return cuda.is_available()
    except Exception:   # no numba-cuda, no driver: no GPU, whatever the reason
        return False


def skip_without_cuda():
    """The skip mark of a test that launches CUDA kernels."""
    return pytest.mark.skipif(not cuda_runs(), reason="no CUDA GPU here; the simulator pass "
                              "(NUMBA_ENABLE_CUDASIM=1, see tests/conftest.py) runs these kernels")


def engines(*names):
    """`names` as parameters of a test run by each engine, each skipped where it does not run:
    the cuda cases where CUDA kernels cannot run, the others in the simulator's pass (the main
    pass runs them; the simulator would only repeat them, slower)."""
    in_main_pass = pytest.mark.skipif(CUDA_SIMULATOR, reason="run in the main pass; the "
                                      "simulator pass runs only the cuda cases")
    return [pytest.param(name, id=name, marks=skip_without_cuda() if name == "cuda" else in_main_pass)
            for name in names]


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
    """Under the simulator, its NumPy uint64 scalars warn where the device wraps silently."""
    if CUDA_SIMULATOR:
        config.addinivalue_line("filterwarnings",
                                "ignore:overflow encountered in scalar:RuntimeWarning")


def pytest_sessionstart(session):
    """netlang's modules compiled to bytecode before any test starts a Python process: where
    PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines), Python writes none, so
    every `python -m netlang.cli ...` a test runs compiled the package's sources again, about
    0.8 s a process (an installation has its bytecode; benchmarks/cold_start.py compiles it
    too).  A read-only checkout is left as it is."""
    import compileall
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "netlang"), quiet=2)


@pytest.fixture(scope="session")
def cuda_sizes():
    """The CUDA tests' sizes for this pass (`CudaSizes`)."""
    return CudaSizes(CUDA_SIMULATOR)


def random_batch(graph, n, seed, classes=3):
    """A batch for every input of a model: standard normal floats, integers below `classes`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        if t.is_float:
            feeds[name] = rng.standard_normal((n,) + tuple(t.shape[1:])).astype(np.float32)
        else:
            feeds[name] = rng.integers(0, classes, (n,) + tuple(t.shape[1:]))
    return feeds


@functools.cache
def from_python(kernel):
    """`kernel` (a loop nest, product or draw of netlang/runtime/), callable from a test.  The
    runtime compiles them for compiled callers only, without the wrapper Python calls
    through; this is a compiled function that takes the test's arguments and passes them
    on, typed as a call from Python types them (no constant is compiled in)."""
    from numba import njit  # here, not at the top: conftest loads no back end early

    @njit
    def call(*args):
        return kernel(*args)
    return call


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of the CLI, in-process."""
    from netlang.cli import main  # here, not at the top: conftest loads no back end early
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse errors and --help
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def straight_and_resumed(model, tmp_path, stop_step, **options):
    """The engines of two training runs of `model` (netlang.train.loop.train's keywords
    `options`): one straight through, into tmp_path/"a"; one stopped after step `stop_step`
    into tmp_path/"b" and resumed from its checkpoint there.  Resuming is exact when their
    parameters are equal bit for bit."""
    # here, not at the top: conftest loads no back end early
    from netlang.train.loop import train
    from netlang.train.trainer import TrainingInterrupted

    def stop(trainer):
        if trainer.step == stop_step:
            trainer.request_stop()

    _, straight, _ = train(model, out=tmp_path / "a", **options)
    with pytest.raises(TrainingInterrupted):
        train(model, out=tmp_path / "b", on_step=stop, **options)
    _, resumed, _ = train(model, resume=tmp_path / "b", **options)
    return straight, resumed
