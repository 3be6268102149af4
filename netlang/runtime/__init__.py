"""Execution engines: the NumPy reference and the Numba-compiled CPU (and later CUDA) back ends.

Every engine has the same surface (`params`, `train_step`, `gradients`,
`forward`), so the training loop, the API and the tests drive any of them.
"""


def make_engine(graph, config=None, params=None, *, seed: int = 0, device: str = "cpu",
                dtype=None, input_grads=()):
    """The engine for `device`: `cpu` (compiled with Numba when available, else the NumPy
    reference), `reference`, `cuda` (refused with one line when there is no GPU or the model
    has an op without a CUDA kernel) or `auto` (the GPU when there is one, else the CPU)."""
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
    if device == "auto":
        from netlang.runtime.cuda import gpu_available
        device = "cuda" if gpu_available() else "cpu"
        return make_engine(graph, config, params, seed=seed, device=device, dtype=dtype,
                           input_grads=input_grads)
    if device == "cuda":
        from netlang.runtime.cuda import CudaEngine, cuda_module
        cuda_module()   # no GPU: a one-line error saying so
        pending = CudaEngine.pending_ops(graph)
        if pending:
            raise UsageError(f"--device cuda: the CUDA back end has no kernel yet for "
                             f"{', '.join(f'`{op}`' for op in pending)} (use --device cpu)")
        return CudaEngine(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
    raise UsageError(f"unknown device `{device}`: use cpu, cuda, auto or reference")
