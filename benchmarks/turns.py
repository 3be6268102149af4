"""Two versions of netlang, one process each, taking turns of training steps: a comparison
of their steady-state speed that holds on a machine whose load changes from minute to minute.

    python benchmarks/turns.py TREE_A TREE_B [--model examples/lenet5.net] [--batch 128]
                               [--steps 10] [--turns 30]

Each TREE is a checkout of netlang (`git worktree add /tmp/before <commit>`); its process
imports netlang from there (PYTHONPATH), builds the model's CPU engine, takes five steps on
one random batch (the first compiles or loads), then waits.  The script then lets each process
take `--steps` steps in turn, `--turns` times, alternating which goes first, and prints each
version's median and fastest time per step.  Runs of `train_throughput.py` one after the
other compare minutes with different loads (±10% on this project's two-core machine); turns
of a few tens of milliseconds meet the same load.  The worker count and OpenBLAS's threads
are the environment's, the same for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

# One version's process: build, warm up, then a turn of `steps` steps per line on stdin, its
# time per step on stdout.
CHILD = r"""
import sys, time
import numpy as np
import netlang
from netlang.bench import random_feeds
from netlang.runtime import make_engine
model = netlang.compile(sys.argv[1])
batch, steps = int(sys.argv[2]), int(sys.argv[3])
engine = make_engine(model.graph, seed=0)
feeds = random_feeds(model.graph, batch, np.float32, np.random.default_rng(0))
lr = model.train_config.optimizer.args["lr"]
for _ in range(5):
    engine.train_step(feeds, lr)
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    for _ in range(steps):
        engine.train_step(feeds, lr)
    print((time.perf_counter() - start) / steps, flush=True)
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, help="two checkouts of netlang")
    parser.add_argument("--model", default="examples/lenet5.net",
                        help="the model, relative to each checkout")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per turn")
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args(argv)
    processes = []
    for tree in args.trees:
        tree = os.path.abspath(tree)
        env = dict(os.environ, PYTHONPATH=tree)
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, os.path.join(tree, args.model), str(args.batch),
             str(args.steps)], cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"{tree}: the model did not build (see its error above)")
        processes.append(process)
    times = [[] for _ in processes]
    for turn in range(args.turns):
        order = [0, 1] if turn % 2 == 0 else [1, 0]
        for i in order:
            processes[i].stdin.write("go\n")
            processes[i].stdin.flush()
            times[i].append(float(processes[i].stdout.readline()))
    for process in processes:
        process.stdin.close()
        process.wait()
    print(f"model: {args.model}   batch: {args.batch}   {args.turns} turns of {args.steps} steps   "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', '(cores)')}   "
          f"load average {os.getloadavg()[0]:.2f}")
    for tree, measured in zip(args.trees, times):
        median = statistics.median(measured)
        print(f"{tree}: median {median * 1e3:.3f} ms a step ({args.batch / median:,.0f} "
              f"samples/s), fastest turn {min(measured) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
