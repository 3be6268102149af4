"""Execution engines: the NumPy reference and the Numba-compiled CPU (and later CUDA) back ends.

Every engine has the same surface (`params`, `train_step`, `gradients`,
`forward`), so the training loop, the API and the tests drive any of them.
"""


def make_engine(graph, config=None, params=None, *, seed: int = 0, device: str = "cpu",
                dtype=None, input_grads=()):
    """The engine for `device`: `cpu` (compiled with Numba when available) or `reference`."""
    import numpy as np
    from netlang.errors import UsageError
    dtype = dtype or np.float32
    if device in ("cpu", "reference"):
        if device == "cpu":
            try:
                from netlang.runtime.cpu import CpuEngine
            except ImportError:
                CpuEngine = None
            if CpuEngine is not None and CpuEngine.supports(graph):
                return CpuEngine(graph, config, params, seed=seed, dtype=dtype,
                                 input_grads=input_grads)
        from netlang.runtime.reference import ReferenceEngine
        return ReferenceEngine(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
    if device in ("cuda", "auto"):
        if device == "auto":
            return make_engine(graph, config, params, seed=seed, device="cpu", dtype=dtype,
                               input_grads=input_grads)
        raise UsageError("--device cuda: the CUDA back end is not built yet; use --device cpu")
    raise UsageError(f"unknown device `{device}`: use cpu, cuda, auto or reference")
