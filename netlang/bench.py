"""How long one batch takes through a model, forward and in training (`Model.bench`; the
`netlang bench` command prints it, netlang/cli/bench.py).

Any model runs on random inputs of its own shapes: float inputs (images, float loss
targets) uniform in [0, 1), integer inputs in the range their consumers accept (class
labels below the number of classes, token ids below the vocabulary), noise inputs from
their own distribution.  A fresh engine,
seeded, holds the weights, so benchmarking never touches a model's trained weights.

The first call of each kind compiles its program (with Numba on the CPU engine): its
time is reported on its own as `warmup_s`, and the median and minimum over the timed
steps after it.  A model without a `train` section is timed forward only.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from netlang.errors import UsageError
from netlang.ops import stated_integer_bounds
from netlang.ops.noise import noise_input_array

DTYPES = ("float32", "float64")
DEFAULT_STEPS = 10


def random_feeds(graph, batch: int, dtype, rng: np.random.Generator) -> dict:
    """{input name: a random batch} for every input of `graph` (see the module docstring)."""
    feeds = {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        shape = (batch,) + tuple(t.shape[1:])
        noise = graph.nodes[node]["attrs"].get("noise")
        if noise is not None:   # drawn from its own distribution, as training draws it
            feeds[name] = noise_input_array(noise, shape, rng.integers(0, 2 ** 63), dtype)
        elif t.is_float:
            feeds[name] = rng.random(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, _integer_range(graph, node), shape)
    return feeds


def _integer_range(graph, node) -> int:
    """How many values an integer input may take: the tightest bound among its consumers; a
    consumer that states none reads a binary label (a single sigmoid unit): 0 or 1."""
    bounds = [2 if bound is None else bound for bound in stated_integer_bounds(graph, node)]
    return max(1, min(bounds, default=2))


def _time(call, steps: int) -> dict:
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"warmup_s": warmup, "median_s": statistics.median(times), "min_s": min(times)}


def bench(graph, *, batch: int | None = None, steps: int = DEFAULT_STEPS, device: str = "cpu",
          dtype: str = "float32", seed: int = 0, path: str | None = None) -> dict:
    """Time the forward pass and the training step of `graph` on batches of `batch` random
    examples (default: the train section's batch size); see the module docstring.

    Returns {"model", "engine", "device", "dtype", "batch", "steps", "forward",
    "train_step"}: `forward` and `train_step` each hold "warmup_s", "median_s", "min_s"
    (seconds per batch) and "samples_per_s" (from the median); `train_step` is None for
    a model without a train section.
    """
    from netlang.runtime import make_engine
    config = graph.graph.get("train")
    if batch is None:
        batch = config.batch_size if config is not None else 32
    for what, value in (("batch", batch), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"bench: {what} must be a positive integer, got {value!r}")
    if dtype not in DTYPES:
        raise UsageError(f"bench: unknown dtype `{dtype}` (expected {' or '.join(DTYPES)})")
    engine = make_engine(graph, config, seed=seed, device=device, dtype=np.dtype(dtype).type)
    feeds = random_feeds(graph, batch, np.dtype(dtype), np.random.default_rng(seed))
    result = {"model": path, "engine": engine.name, "device": device, "dtype": dtype,
              "batch": batch, "steps": steps}
    result["forward"] = _time(lambda: engine.forward(feeds, "eval"), steps)
    result["train_step"] = None
    if graph.graph.get("losses") and config is not None:
        lr = float(config.optimizer.args["lr"])
        result["train_step"] = _time(lambda: engine.train_step(feeds, lr), steps)
    for timing in (result["forward"], result["train_step"]):
        if timing is not None:
            timing["samples_per_s"] = batch / timing["median_s"]
    return result
