"""Where a compiled training step spends its time, kernel by kernel.

    python benchmarks/profile_step.py [--model examples/lenet5.net] [--batch 128] [--repeat 20]

The CPU engine compiles a whole training step into one function.  This script
cuts that function's source at its `# op name` comments, compiles each piece as
a function of its own (with the buffer views it uses, which the step makes once
at the top level) and times it on the step's own buffers, after one real step
has filled them.  The pieces' times add up to about the step's (the step itself
is timed too); the optimiser update is one piece.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# The step's top-level views and sizes (`v3 = reshaped(a0, ...)`, `n2 = a0.shape[0]`, a section
# `s6 = f5[...]`), which later pieces use: each piece repeats those of the pieces before it,
# after the line that makes the step's arrays from its table (`a0, a1, = arrays_at(...)`).
VIEW = re.compile(r"^    ([a-z]+\d+) = (reshaped\(|(a\d+|[a-z]+\d+)(\.shape\[|\[))")
UNPACK = re.compile(r"^    (a\d+, )+= arrays_at\(")


def sections(source: str):
    """(title, lines) of each top-level `# ...` section of the step's body."""
    body = source.split("):\n", 1)[1].splitlines()
    out, title, lines = [], None, []
    for line in body:
        if line.startswith("    # "):
            if title is not None:
                out.append((title, lines))
            title, lines = line[6:], []
        elif line.strip() != "return 0" and "blas_threads" not in line:
            lines.append(line)   # a step with workers holds BLAS to one thread: see main
    if title is not None:
        out.append((title, lines))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(os.path.dirname(HERE), "examples", "lenet5.net"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    from numba import njit

    import netlang
    from benchmarks.train_throughput import _random_feeds
    from netlang.runtime.cpu import CpuEngine

    model = netlang.compile(args.model)
    engine = CpuEngine(model.graph, seed=0)
    feeds = _random_feeds(model.graph, args.batch, np)
    lr = model.train_config.optimizer.args["lr"]
    engine.train_step(feeds, lr)
    graph, _, _, step, _ = engine._training()
    prepared, batch = engine._feeds(graph, feeds, engine._input_names(step))
    from netlang.ops.norm import draw_dropout_key
    # The step's table (its arrays: netlang/codegen/table.py), lr and t.
    call_args = step.arguments(engine, prepared, batch, float(lr), 2,
                               lambda node: draw_dropout_key(engine.rng))

    def timed(fn):
        fn(*call_args)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn(*call_args)
            best = min(best, time.perf_counter() - start)
        return best

    whole = timed(step.function)
    if "blas_threads = set_blas_threads(1)" in step.program.source:
        # The step holds BLAS to one thread from its first line to its last: so do its pieces.
        from netlang.runtime.blas import set_blas_threads
        set_blas_threads(1)
    source = step.program.source
    header = re.split(r"^@\w+$", source, maxsplit=1, flags=re.M)[0]   # before the decorator
    signature = source.split("def train_step(", 1)[1].split(")", 1)[0]
    views = [line for line in source.splitlines() if UNPACK.match(line)]
    rows = []
    for title, lines in sections(source):
        text = "\n".join([header, f"def piece({signature}):"] + views + lines + ["    return 0", ""])
        namespace: dict = {}
        exec(compile(text, f"<{title}>", "exec"), namespace)
        rows.append((title, timed(njit(namespace["piece"]))))
        views += [line for line in lines if VIEW.match(line)]
    total = sum(t for _, t in rows)
    print(f"model: {os.path.relpath(args.model)}   batch: {args.batch}   "
          f"step: {whole * 1e3:.2f} ms ({args.batch / whole:,.0f} samples/s)   "
          f"pieces: {total * 1e3:.2f} ms")
    for title, t in sorted(rows, key=lambda r: -r[1]):
        print(f"{t * 1e3:9.3f} ms  {100 * t / total:5.1f}%  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
