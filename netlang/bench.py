"""`netlang bench`: how long one batch takes through a model, forward and in training.

Any model runs on random inputs of its own shapes: float inputs (images, float loss
targets) uniform in [0, 1), integer inputs in the range their consumers accept (class
labels below the number of classes, token ids below the vocabulary).  A fresh engine,
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

DTYPES = ("float32", "float64")
DEFAULT_STEPS = 10


def random_feeds(graph, batch: int, dtype, rng: np.random.Generator) -> dict:
    """{input name: a random batch} for every input of `graph` (see the module docstring)."""
    feeds = {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        shape = (batch,) + tuple(t.shape[1:])
        if t.is_float:
            feeds[name] = rng.random(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, _integer_range(graph, node), shape)
    return feeds


def _integer_range(graph, node) -> int:
    """How many values an integer input may take: the tightest bound among its consumers."""
    from netlang.train.metrics import CLASS_SCORE_LOSSES
    bounds = []
    for user in graph.successors(node):
        data = graph.nodes[user]
        if data["op"] == "embedding":
            bounds.append(int(data["attrs"]["vocab"]))
        elif data["op"] in CLASS_SCORE_LOSSES and graph.operands(user)[1] == node:
            bounds.append(int(graph.type_of(graph.operands(user)[0]).shape[-1]))
        else:  # a binary label (a single sigmoid unit), or a use we cannot read: 0 or 1
            bounds.append(2)
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


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _rate(per_second: float) -> str:
    # Whole numbers with separators, but three significant digits for slow models.
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def format_report(result: dict) -> str:
    """The table `netlang bench` prints."""
    title = result["model"] or "model"
    lines = [f"{title}: batch {result['batch']}, {result['dtype']}, {result['engine']} engine; "
             f"median and min of {result['steps']} steps after a warm-up step (compile)",
             f"{'':<12}{'warm-up':>10}{'median':>12}{'min':>12}{'samples/s':>12}"]
    for label, key in (("forward", "forward"), ("train step", "train_step")):
        timing = result[key]
        if timing is None:
            lines.append(f"{label:<12}no train section: forward only")
            continue
        lines.append(f"{label:<12}{_duration(timing['warmup_s']):>10}"
                     f"{_duration(timing['median_s']):>12}{_duration(timing['min_s']):>12}"
                     f"{_rate(timing['samples_per_s']):>12}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command line (registered by netlang.cli)


def add_command(sub) -> None:
    from netlang.train.commands import DEVICES, positive_int
    bench_parser = sub.add_parser(
        "bench", help="time a model's forward pass and training step per batch",
        description="Time one batch through a model on random inputs of its shapes: the "
                    "forward (inference) pass and, when the model has a train section, the "
                    "training step (forward, backward and update).  The first step of each "
                    "compiles and is reported apart; then the median and minimum of --steps "
                    "timed steps, and samples per second from the median.")
    bench_parser.add_argument("file", help="the .net file")
    bench_parser.add_argument("--batch", type=positive_int,
                              help="examples per batch (default: the train section's "
                                   "batch_size, else 32)")
    bench_parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                              help=f"timed steps after the warm-up (default {DEFAULT_STEPS})")
    bench_parser.add_argument("--device", default="cpu", choices=DEVICES,
                              help="cpu (default; compiled with Numba) or reference (NumPy)")
    bench_parser.add_argument("--dtype", default="float32", choices=DTYPES,
                              help="floating-point width of weights and activations")
    bench_parser.add_argument("--seed", type=int, default=0,
                              help="seed of the weights and the random inputs")
    bench_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    bench_parser.set_defaults(run=cmd_bench)


def cmd_bench(args) -> int:
    import json
    from netlang.train.commands import compile_model
    model = compile_model(args.file)
    result = bench(model.graph, batch=args.batch, steps=args.steps, device=args.device,
                   dtype=args.dtype, seed=args.seed, path=args.file)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
