"""Execution engines: the NumPy reference and the Numba-compiled CPU and CUDA back ends.

Every engine has the same surface (`name`, `params`, `train_step`, `gradients`, `forward`,
`vjp`, `loss`), so the training loop, the API and the tests drive any of them, and each
takes the graphs of its programs from netlang/pipeline.py.  An engine runs only what it has
kernels for: a model with an op it lacks is refused in one line that names the op, its layer
and the engines that run it.  None falls back on another quietly; `reference` is chosen on
purpose (`--device reference`, `model.to("reference")`).
"""

import numpy as np

from netlang.errors import UsageError
from netlang.runtime.cpu import CpuEngine
from netlang.runtime.cuda import CudaEngine, gpu_available
from netlang.runtime.reference import ReferenceEngine

DEVICES = ("cpu", "cuda", "auto", "reference")


def make_engine(graph, config=None, params=None, *, seed: int = 0, device: str = "cpu",
                dtype=None, input_grads=()):
    """The engine for `device`: `cpu` (compiled with Numba), `reference` (the NumPy
    interpreter), `cuda` (refused with one line when there is no GPU) or `auto` (the GPU
    when there is one, else the CPU).  A model with an op the engine has no kernel for is
    refused with one line (see EngineBase.require_kernels)."""
    options = dict(seed=seed, dtype=dtype or np.float32, input_grads=input_grads)
    if check_device(device) == "auto":
        device = "cuda" if gpu_available() else "cpu"
    if device == "cpu":
        return CpuEngine(graph, config, params, **options)
    if device == "reference":
        return ReferenceEngine(graph, config, params, **options)
    # cuda: with no GPU, a one-line error saying so before anything is built
    return CudaEngine(graph, config, params, **options)


def check_device(device: str) -> str:
    """`device` when it is one of DEVICES; a one-line UsageError naming them else."""
    if device not in DEVICES:
        raise UsageError(f"unknown device `{device}`: use {', '.join(DEVICES[:-1])} or "
                         f"{DEVICES[-1]}")
    return device
