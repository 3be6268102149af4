"""Where a cold first training step's compile time goes, function by function.

    python benchmarks/compile_profile.py examples/lenet5.net [--batch 64] [--top 15]

Runs one training step of the model in a fresh process with every cache empty (the kernel
cache and Numba's cache pointed at a new temporary folder), and prints, from Numba's event
API (`numba.core.event`), each function Numba compiled: its seconds split into type
inference, lowering to LLVM IR, LLVM (optimisation and machine code, the time Numba holds
its LLVM lock) and the rest, each time exclusive of the functions compiled inside it.  Then
the totals, the CPU and wall seconds of the whole step, and the load average.  Functions with
the same name compiled more than once (another signature, or the same loop nest in another
module) are counted and summed on one line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import collections, json, os, sys, time
import numpy as np
from numba.core import event

# One frame per compile in progress; each event's time goes to the innermost frame, so a
# function's seconds exclude the callees compiled while it was being typed.
frames, done = [], []


class Profiler(event.Listener):
    def on_start(self, ev):
        now = time.perf_counter()
        if ev.kind == "numba:compile":
            name = getattr(ev.data["dispatcher"], "py_func", None)
            name = name.__qualname__ if name is not None else str(ev.data["dispatcher"])
            module = getattr(getattr(ev.data["dispatcher"], "py_func", None), "__module__", "")
            frames.append({"name": name, "module": module, "args": str(ev.data["args"]), "start": now, "child": 0.0,
                           "parts": collections.Counter(), "open": {}})
        elif frames:
            key = ev.data["name"].split(" [")[0] if ev.kind == "numba:run_pass" else ev.kind
            frames[-1]["open"][key] = (now, self._children_so_far())

    def _children_so_far(self):
        return frames[-1]["child"]

    def on_end(self, ev):
        now = time.perf_counter()
        if ev.kind == "numba:compile":
            frame = frames.pop()
            total = now - frame["start"]
            frame["self"] = total - frame["child"]
            if frames:
                frames[-1]["child"] += total
            done.append(frame)
        elif frames:
            key = ev.data["name"].split(" [")[0] if ev.kind == "numba:run_pass" else ev.kind
            if key in frames[-1]["open"]:
                start, child = frames[-1]["open"].pop(key)
                frames[-1]["parts"][key] += (now - start) - (frames[-1]["child"] - child)


class LlvmTotal(event.Listener):
    seconds = 0.0

    def on_start(self, ev):
        self.start = time.perf_counter()

    def on_end(self, ev):
        LlvmTotal.seconds += time.perf_counter() - self.start


listener = Profiler()
event.register("numba:llvm_lock", LlvmTotal())
for kind in ("numba:compile", "numba:run_pass", "numba:llvm_lock"):
    event.register(kind, listener)

import netlang
from netlang.runtime import make_engine

spec = json.loads(sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
model = netlang.compile(spec["model"])
engine = make_engine(model.graph, seed=0)
feeds = {}
for name, node in model.graph.graph["inputs"].items():
    t = model.graph.type_of(node)
    shape = (spec["batch"],) + tuple(t.shape[1:])
    feeds[name] = (np.random.default_rng(0).random(shape, dtype=np.float32) if t.is_float
                   else np.zeros(shape, np.int64))
engine.train_step(feeds, 0.01)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
start = time.perf_counter()
engine.train_step(feeds, 0.01)
second = time.perf_counter() - start
rows = []
for frame in done:
    parts = frame["parts"]
    llvm = parts["numba:llvm_lock"]
    typing = parts["nopython_type_inference"] + parts["partial_type_inference"]
    lowering = parts["native_lowering"] - llvm
    rows.append({"name": frame["name"], "module": frame["module"], "args": frame["args"], "self": frame["self"],
                 "typing": typing, "lowering": max(lowering, 0.0), "llvm": llvm})
print(json.dumps({"rows": rows, "llvm_total": LlvmTotal.seconds, "wall": wall, "cpu": cpu, "second_step": second,
                  "load": os.getloadavg()}))
"""


def profile(model: str, batch: int) -> tuple[dict, dict]:
    """One training step of `model` in a fresh process with empty caches, then in another
    process with the caches the first one filled: (cold result, warm result)."""
    with tempfile.TemporaryDirectory(prefix="nl-cold-") as cache:
        env = dict(os.environ, NETLANG_CACHE=os.path.join(cache, "kernels"),
                   NUMBA_CACHE_DIR=os.path.join(cache, "numba"))
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        results = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-c", CHILD,
                                   json.dumps({"model": model, "batch": batch})],
                                  env=env, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                sys.exit(done.stderr)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--signatures", action="store_true",
                        help="also list each compilation's argument types")
    args = parser.parse_args()
    result, warm = profile(args.model, args.batch)
    grouped: dict = {}
    for row in result["rows"]:
        entry = grouped.setdefault(row["name"], {"count": 0, "self": 0.0, "typing": 0.0,
                                                 "lowering": 0.0, "llvm": 0.0})
        entry["count"] += 1
        for key in ("self", "typing", "lowering", "llvm"):
            entry[key] += row[key]
    total = {key: sum(row[key] for row in result["rows"])
             for key in ("self", "typing", "lowering", "llvm")}
    print(f"{args.model}, batch {args.batch}: cold first step {result['wall']:.2f} s wall, "
          f"{result['cpu']:.2f} s CPU (second step {result['second_step'] * 1000:.1f} ms); "
          f"warm {warm['wall']:.2f} s wall, {warm['cpu']:.2f} s CPU; compile overhead "
          f"{result['wall'] - warm['wall']:.2f} s wall, {result['cpu'] - warm['cpu']:.2f} s CPU; "
          f"load average {result['load'][0]:.2f}")
    print(f"{len(result['rows'])} compilations of {len(grouped)} distinct functions: "
          f"{total['self']:.2f} s; type inference {total['typing']:.2f} s, lowering "
          f"{total['lowering']:.2f} s, LLVM {total['llvm']:.2f} s, other "
          f"{total['self'] - total['typing'] - total['lowering'] - total['llvm']:.2f} s")
    print(f"LLVM in all (machine code emitted when a cache entry is saved included): "
          f"{result['llvm_total']:.2f} s; outside the compilations: "
          f"{result['wall'] - total['self']:.2f} s")
    print(f"{'function':<28} {'n':>3} {'total':>7} {'typing':>7} {'lower':>7} {'llvm':>7}")
    for name, entry in sorted(grouped.items(), key=lambda item: -item[1]["self"])[:args.top]:
        print(f"{name[:28]:<28} {entry['count']:>3} {entry['self']:>7.2f} {entry['typing']:>7.2f} "
              f"{entry['lowering']:>7.2f} {entry['llvm']:>7.2f}")

    if args.signatures:
        for row in result["rows"]:
            print(f"  {row['name'][:28]:<28} {row['self']:6.2f}  {row['args'][:150]}")


if __name__ == "__main__":
    main()
