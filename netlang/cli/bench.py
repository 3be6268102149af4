"""`netlang bench FILE`: seconds per batch of a model's forward pass and training step (the
timing is netlang.bench's)."""

from __future__ import annotations

import argparse
import json

from netlang.bench import DEFAULT_STEPS, DTYPES, bench
from netlang.cli.common import add_device, compile_model, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang bench`."""
    parser.description = (
        "Time one batch through a model on random inputs of its shapes: the forward "
        "(inference) pass and, when the model has a train section, the training step "
        "(forward, backward and update).  The first step of each compiles and is reported "
        "apart; then the median and minimum of --steps timed steps, and samples per second "
        "from the median.")
    parser.add_argument("file", help="the .net file")
    parser.add_argument("--batch", type=positive_int,
                        help="examples per batch (default: the train section's batch_size, "
                             "else 32)")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"timed steps after the warm-up (default {DEFAULT_STEPS})")
    add_device(parser, default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="floating-point width of weights and activations")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and the random inputs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the timing table (or the dict as JSON with `--json`)."""
    result = bench(compile_model(args.file).graph, batch=args.batch, steps=args.steps,
                   device=args.device, dtype=args.dtype, seed=args.seed, path=args.file)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def format_report(result: dict) -> str:
    """The table `netlang bench` prints, from the dict `netlang.bench.bench` returns."""
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


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _rate(per_second: float) -> str:
    # Whole numbers with separators, but three significant digits for slow models.
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"
