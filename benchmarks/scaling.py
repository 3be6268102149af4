"""Data-parallel scaling: MPI allreduce against message size, a step's compute against its
communication, and a projection to 2-64 nodes (docs/scaling.md).

    python benchmarks/scaling.py --json one.json                 # 1 process: the steps
    mpiexec -n 2 python benchmarks/scaling.py --json two.json    # 2 processes: + allreduce
    python benchmarks/scaling.py --project one.json two.json     # docs/scaling.md's tables

In each process it measures, for every model (`--models`, each at its train section's batch
size B), with random inputs of the model's shapes:

Compute is timed in CPU time of one thread (run with NUMBA_NUM_THREADS=1), the median of
`--repeats` calls; communication, and the whole data-parallel step, in wall time, the fastest
call (on a busy machine wall time measures the other processes: the load average is printed
beside the figures).

- `fused_ms`: one process's training step, the update fused into the compiled step (K = 1);
- `sharded_ms` (K = 1): one process's step with `gradient_shards` 2 (two gradient passes of
  B/2 examples, their sum and the host update): what makes it compute 2 processes' bits;
- `gradients_ms`: the compiled gradient pass of this process's share of B (B/K examples);
- `update_ms`: the update a data-parallel step applies after the sum (the training step's
  update compiled alone, with the model's penalties: `CpuEngine.apply_update`);
- `allreduce_ms` (K > 1): MPI Allreduce of the model's gradients in one flat buffer, and
  split into 4 and 16 buckets;
- `tree_sum_ms` (K > 1): the same buffer summed along the shards' tree, as training sums it
  (`Ranks.tree_sum`: Sendrecv and an addition per level);
- `step_ms` (K > 1): a whole data-parallel step as training runs it (gradients, with batch
  norm's statistics summed across the processes, copy into the buffer, tree sum, update).

Under mpiexec every rank also sweeps Allreduce over float32 messages of 4 B to 64 MiB.
`--project` reads the two files and prints the projection: a step on K nodes costs

    t(K) = t_gradients(B) / K + t_update + t_tree(K),
    t_tree(K) = 2·(K−1)/K · bytes / bandwidth + 2·log2(K) · latency,

the time of the tree sum (`Ranks.tree_sum`: a reduce-scatter by recursive halving and an
all-gather by recursive doubling, log2(K) messages each, 2·(K−1)/K of the gradients sent in
all, as a ring allreduce sends), and its efficiency is t_fused(B) / (K · t(K)); with B
examples on each node instead (a global batch of K·B), t(K) = t_gradients(B) + t_update +
t_tree(K) and the efficiency t_fused(B) / t(K).  Bandwidths are the network's nominal rates
(10 and 100 Gb/s); the per-hop latencies are assumptions written in the table (25 µs for
10 Gb/s Ethernet through TCP, 3 µs for 100 Gb/s RDMA), not measurements: this machine has no
network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import netlang  # noqa: E402  (after the checkout is on the path)
from netlang.bench import random_feeds  # noqa: E402
from netlang.runtime import make_engine  # noqa: E402
from netlang.train.distributed import world  # noqa: E402
from netlang.train.metrics import MetricAccumulator  # noqa: E402
from netlang.train.shards import ShardedSteps, Shards, share_batch_statistics  # noqa: E402

MODELS = {"mlp_500_300": "examples/mlp_500_300.net", "lenet5": "examples/lenet5.net",
          "resnet18": "examples/resnet18.net"}
NETWORKS = [("10 Gb/s", 10e9 / 8, 25e-6), ("100 Gb/s", 100e9 / 8, 3e-6)]
NODES = (2, 4, 8, 16, 32, 64)


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median CPU milliseconds of `repeats` calls of `fn` (this process's time: on a busy
    machine wall time measures the other processes), after `warmup` calls.  For compute in
    one thread (NUMBA_NUM_THREADS=1)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times)


def fastest_ms(fn, repeats: int, warmup: int = 2) -> float:
    """The least wall milliseconds of `repeats` calls of `fn`, after `warmup` calls: for
    communication, which waits for the other process (the fastest call is the one no other
    process interrupted)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def allreduce_sweep(ranks, repeats: int) -> list:
    """[(bytes, median ms)] of Allreduce on float32 messages from 4 B to 64 MiB."""
    rows = []
    for power in range(2, 27, 2):
        buffer = np.ones(2 ** power // 4, dtype=np.float32)
        count = repeats if buffer.nbytes < 2 ** 22 else max(5, repeats // 10)
        ms = fastest_ms(lambda: ranks.sum(buffer, "benchmarking"), count)
        rows.append((buffer.nbytes, ms))
    return rows


def bucketed(ranks, size: int, buckets: int, repeats: int) -> float:
    """Median ms of summing `size` float32 gradients as `buckets` Allreduce calls."""
    parts = [np.ones(len(part), np.float32) for part in np.array_split(np.arange(size), buckets)]
    return fastest_ms(lambda: [ranks.sum(part, "benchmarking") for part in parts], repeats)


def data_parallel_steps(engine, ranks, shards: Shards) -> ShardedSteps:
    """The steps of an epoch summing `shards`' gradients, as training runs them, without a
    trainer (nothing asks them to stop)."""
    steps = ShardedSteps(engine, None, MetricAccumulator(None), ranks,
                         SimpleNamespace(stop_requested=False, agree_to_stop=lambda agreed: None),
                         50, shards)
    steps.start()
    return steps


def measure_model(name: str, ranks, repeats: int, batch_size: int | None = None) -> dict:
    """The figures of one model (see the module docstring)."""
    model = netlang.compile(str(ROOT / MODELS[name]))
    batch = batch_size or model.train_config.batch_size
    size = ranks.size if ranks is not None else 1
    share = batch // size
    engine = make_engine(model.graph, seed=0)
    if ranks is not None:
        # Batch norm's statistics summed across the processes, as training sums them: only
        # the whole step (`step_ms`) does, `gradients_ms` times the pass on its share alone.
        share_batch_statistics(engine)
    lr = float(engine.config.optimizer.args["lr"])
    feeds = random_feeds(model.graph, share, np.float32, np.random.default_rng(0))
    params = sum(engine.params[n].size for n in engine.trainable)
    row = {"model": name, "batch": batch, "processes": size, "parameters": int(params),
           "gradient_bytes": int(params * 4)}
    if ranks is None:
        whole = random_feeds(model.graph, batch, np.float32, np.random.default_rng(0))
        row["fused_ms"] = median_ms(lambda: engine.train_step(whole, lr), repeats)
        shared = make_engine(model.graph, seed=0)   # its gradient pass sums batch statistics
        share_batch_statistics(shared)
        sharded = data_parallel_steps(shared, None, Shards(2))
        row["sharded_ms"] = median_ms(lambda: sharded.step(whole, batch, lr, 0, 1), repeats)
    row["gradients_ms"] = median_ms(lambda: engine.gradients(feeds, "train"), repeats)
    _, grads, _ = engine.gradients(feeds, "train")
    grads = {n: grads[n] for n in engine.trainable}
    row["update_ms"] = median_ms(lambda: engine.apply_update(grads, lr), repeats)
    if ranks is not None:
        flat = np.ones(params, np.float32)
        row["allreduce_ms"] = fastest_ms(lambda: ranks.sum(flat, "benchmarking"), repeats)
        row["allreduce_4_buckets_ms"] = bucketed(ranks, params, 4, repeats)
        row["allreduce_16_buckets_ms"] = bucketed(ranks, params, 16, repeats)
        row["tree_sum_ms"] = fastest_ms(lambda: ranks.tree_sum(flat, "benchmarking"), repeats)

        # The data-parallel step itself, as an epoch runs it (no trainer: nothing stops it).
        steps = data_parallel_steps(engine, ranks, Shards(size, ranks))
        step = lambda: steps.step(feeds, batch, lr, 0, 1)  # noqa: E731
        row["step_ms"] = fastest_ms(step, repeats)
    return row


def shard_rounds(name: str, rounds: int, repeats: int) -> None:
    """The fused step against the 2-shard step of one process, in `rounds` alternating rounds
    of `repeats` calls (median CPU ms each), and the median of their ratios: alternating, so
    that a machine whose load changes weighs on both alike."""
    model = netlang.compile(str(ROOT / MODELS[name]))
    batch = model.train_config.batch_size
    engine, shared = make_engine(model.graph, seed=0), make_engine(model.graph, seed=0)
    share_batch_statistics(shared)   # a shard's pass sums batch statistics
    whole = random_feeds(model.graph, batch, np.float32, np.random.default_rng(0))
    sharded = data_parallel_steps(shared, None, Shards(2))
    pairs = [(median_ms(lambda: engine.train_step(whole, 0.01), repeats),
              median_ms(lambda: sharded.step(whole, batch, 0.01, 0, 1), repeats))
             for _ in range(rounds)]
    print(json.dumps({"model": name, "batch": batch, "fused_ms": [round(f, 2) for f, _ in pairs],
                      "sharded_ms": [round(s, 2) for _, s in pairs],
                      "median_ratio": round(statistics.median(s / f for f, s in pairs), 3),
                      "load_average": os.getloadavg()[0]}), flush=True)


def measure(args) -> dict:
    ranks = world()
    result = {"processes": ranks.size if ranks is not None else 1,
              "load_average": os.getloadavg()[0], "models": []}
    if ranks is not None:
        result["allreduce"] = allreduce_sweep(ranks, args.repeats * 5)
    for name in args.models.split(","):
        row = measure_model(name, ranks, args.repeats, args.batch)
        result["models"].append(row)
        if ranks is None or ranks.root:
            print(json.dumps(row), flush=True)
    return result


def tree_ms(nodes: int, nbytes: int, bandwidth: float, latency: float) -> float:
    """The tree sum of `nbytes` on `nodes` nodes (a power of two), in ms."""
    return (2 * (nodes - 1) / nodes * nbytes / bandwidth
            + 2 * math.log2(nodes) * latency) * 1000


def project(one: dict, two: dict) -> str:
    """docs/scaling.md's tables, as Markdown, from the measurements of 1 and 2 processes."""
    lines = ["Allreduce on this machine (2 processes, shared memory; fastest call, ms):", "",
             "| message | ms | GB/s (2·bytes/time) |", "| ---: | ---: | ---: |"]
    for nbytes, ms in two["allreduce"]:
        rate = 2 * nbytes / (ms / 1000) / 1e9 if ms else float("nan")
        lines.append(f"| {_bytes(nbytes)} | {ms:.4f} | {rate:.2f} |")
    lines += ["", "Per step, measured (ms: compute in CPU time, communication and the "
              "2-process step in wall time; load average "
              f"{one['load_average']:.1f} and {two['load_average']:.1f}):", "",
              "| model | B | gradients | 1 process: fused step | 1 process: 2 shards | "
              "1 process: gradients(B) + update | 2 processes: gradients(B/2) | "
              "allreduce (1 buffer / 4 / 16 buckets) | tree sum | 2 processes: whole step |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    twos = {row["model"]: row for row in two["models"]}
    for row in one["models"]:
        other = twos.get(row["model"])
        if other is None:
            continue
        lines.append(
            f"| {row['model']} | {row['batch']} | {_bytes(row['gradient_bytes'])} | "
            f"{row['fused_ms']:.2f} | "
            f"{format(row['sharded_ms'], '.2f') if 'sharded_ms' in row else '—'} | "
            f"{row['gradients_ms']:.2f} + {row['update_ms']:.2f} | "
            f"{other['gradients_ms']:.2f} | {other['allreduce_ms']:.3f} / "
            f"{other['allreduce_4_buckets_ms']:.3f} / {other['allreduce_16_buckets_ms']:.3f} | "
            f"{other['tree_sum_ms']:.3f} | {other['step_ms']:.2f} |")
    for network, bandwidth, latency in NETWORKS:
        for scaling in ("strong", "weak"):
            lines += ["", f"Projected on a {network} network (latency {latency * 1e6:g} µs a hop), "
                          + ("the global batch B shared by the K nodes (strong scaling)"
                             if scaling == "strong" else
                             "B examples on each node, a global batch of K·B (weak scaling)")
                          + ": step ms (efficiency)", "",
                      "| model | B | " + " | ".join(f"{k} nodes" for k in NODES) + " |",
                      "| --- | ---: |" + " ---: |" * len(NODES)]
            for row in one["models"]:
                cells = []
                for k in NODES:
                    tree = tree_ms(k, row["gradient_bytes"], bandwidth, latency)
                    if scaling == "strong":
                        step = row["gradients_ms"] / k + row["update_ms"] + tree
                        efficiency = row["fused_ms"] / (k * step)
                    else:
                        step = row["gradients_ms"] + row["update_ms"] + tree
                        efficiency = row["fused_ms"] / step
                    cells.append(f"{step:.2f} ({efficiency:.0%})")
                lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp_500_300,lenet5",
                        help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int,
                        help="the global batch of every model (default: its train section's)")
    parser.add_argument("--json", help="write the measurements here (rank 0)")
    parser.add_argument("--shard-rounds", type=int, metavar="N",
                        help="instead: the fused step against the 2-shard step of one "
                             "process, in N alternating rounds of --repeats calls")
    parser.add_argument("--project", nargs="+", metavar="FILE",
                        help="print the tables from files of 1 and 2 processes, in pairs "
                             "(ONE TWO [ONE TWO ...]: models measured in separate runs)")
    args = parser.parse_args()
    if args.project:
        files = [json.loads(Path(p).read_text()) for p in args.project]
        if len(files) % 2:
            parser.error("--project takes files in pairs: 1 process, then 2 processes")
        one, two = files[0], files[1]
        for more_one, more_two in zip(files[2::2], files[3::2]):
            one["models"] += more_one["models"]
            two["models"] += more_two["models"]
        print(project(one, two))
        return
    if args.shard_rounds:
        for name in args.models.split(","):
            shard_rounds(name, args.shard_rounds, args.repeats)
        return
    result = measure(args)
    ranks = world()
    if args.json and (ranks is None or ranks.root):
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
