"""Cold start: how long a fresh process takes to its first training step, with every cache
empty and with every cache full, beside PyTorch eager's first step (issue 14).

    python benchmarks/cold_start.py [--models mlp,lenet5,resnet18,vgg16] [--rounds 1]
                                    [--batch N] [--floor] [--json]

What "first step" means here: a fresh `python` process imports netlang, compiles the model's
`.net` file (`netlang.compile`), draws a random batch of the model's input shapes
(`netlang.bench.random_feeds`, seeded) and takes one optimiser step on it
(`Model.train_step`: the CPU engine builds its training-step program, Numba compiles it or
loads it from its disk cache, the step runs).  That is what `netlang train` does before its
first batch, less reading the data set and making the evaluation program ready (a short
`netlang train` also evaluates: `netlang warmup` compiles both).  Each time is the process's
whole wall time as the parent measures it, from `exec` to exit, so the interpreter's start
is included; the CPU time the process used (user + system, all its threads) is beside it,
because the machine this ran on is shared and wall time there depends on the load.  "to 1st
step" is the issue's measure: from the launch to the end of the first step, without the
process's exit (Python's teardown, about 0.1 s for a warm MLP).  Netlang compiles a program in
several processes (NETLANG_COMPILE_PROCESSES, default: the CPUs; netlang/runtime/
parallel_compile.py), whose CPU time is counted too.  The package's bytecode is compiled first,
as an installation has it.

With `--train-run DATA` each process is instead a short `netlang train MODEL --data DATA
--limit 512 --epochs 1` (the issue's own measure: it also reads the data, makes the evaluation
program ready, evaluates and writes its run directory); the JSON's `warm_compiled_s` is what
the warm run still compiled (run.json's `compile`), 0 when it compiled nothing.

- **cold**: NETLANG_CACHE (netlang's kernel cache and, in its `parser` folder, the parser's
  tables) and NUMBA_CACHE_DIR (Numba's disk cache of the loop nests in netlang/ops/ and of
  the generated programs) point at a fresh empty folder.  Python's own bytecode of the
  netlang package is left as it is, as in any installation.
- **warm**: a second process on the same folders, now full.
- **compile**: cold − warm: what the first run pays for compiling.
- **floor** (`--floor`): a process that only imports NumPy, networkx, Lark and Numba (and the
  Numba module a cached program's environment imports), from its launch to the end of those
  imports: the share of a warm start that is the dependencies', not netlang's.
- **torch**: PyTorch eager, in a process of its own: `import torch`, the same architecture
  (rebuilt from netlang's graph for chains by benchmarks/train_throughput.py's `torch_spec`;
  ResNet-18, not a chain, written out below in torchvision's structure), a random batch of
  the same size (NCHW), one SGD/Adam step.  Its `step_s` is the first step alone, after the
  import and the model's construction.

Batches: the train section's batch size for the MLP and LeNet-5, 32 for ResNet-18 and VGG-16
(the issue's settings); `--batch` sets one for every model.  NUMBA_NUM_THREADS and the
torch thread count are the environment's (the cores when unset); the load average is
printed beside the figures.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)   # train_throughput's torch_spec and TORCH_MODEL
sys.path.insert(0, ROOT)   # this checkout's netlang
from train_throughput import TORCH_MODEL, torch_spec  # noqa: E402

import netlang  # noqa: E402

TRAIN_RUN_LIMIT = 512   # examples per split of --train-run's data: a few steps and an evaluation
MODELS = {"mlp": None, "lenet5": None, "resnet18": 32, "vgg16": 32}   # name → batch (None: the file's)

NETLANG_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import numpy as np
import netlang
from netlang.bench import random_feeds
imported = time.perf_counter()
model = netlang.compile(sys.argv[1])
batch = int(sys.argv[2]) or model.train_config.batch_size
feeds = random_feeds(model.graph, batch, np.float32, np.random.default_rng(0))
compiled = time.perf_counter()
loss, _ = model.train_step(feeds, steps_per_epoch=1)
stepped = time.perf_counter()
print(json.dumps({"import_s": imported - started, "front_end_s": compiled - imported,
                  "step_s": stepped - compiled, "stepped_at": time.time(), "batch": batch,
                  "loss": loss,
                  "numba": "numba" in sys.modules}))
"""

# What any warm start on netlang's dependencies pays before netlang's own work: the imports a
# warm training step needs (NumPy, networkx for the IR, Lark for the parser, Numba and the
# Numba modules a cached program's environment imports), from the interpreter's launch.
FLOOR_CHILD = r"""
import json, time
started = time.perf_counter()
marks = {}
import numpy
marks["numpy"] = time.perf_counter()
import networkx
marks["networkx"] = time.perf_counter()
import lark
marks["lark"] = time.perf_counter()
import numba
import numba.np.arrayobj
marks["numba"] = time.perf_counter()
previous, spans = started, {}
for name, at in marks.items():
    spans[name], previous = at - previous, at
print(json.dumps({**spans, "imported_at": time.time()}))
"""


def floor_round(timeout: float) -> dict:
    """FLOOR_CHILD's launch to the end of its imports, and each import's share."""
    launched_at = time.time()
    printed, wall, _ = timed_process([sys.executable, "-c", FLOOR_CHILD], dict(os.environ),
                                     timeout)
    spans = last_json(printed)
    return {"floor_s": spans.pop("imported_at") - launched_at, "floor_wall_s": wall,
            **{f"floor_{name}_s": value for name, value in spans.items()}}


# ResNet-18 as examples/resnet18.net writes it (torchvision's structure), with the same
# optimiser, batch and loss as the chains of TORCH_MODEL.
TORCH_RESNET18 = r"""
import json, sys, time
import torch
from torch import nn
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))
widths, blocks, cin = [64, 128, 256, 512], [], 64
for i, width in enumerate(widths):
    blocks += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
    cin = width
net = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                    nn.MaxPool2d(3, 2, 1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(512, spec["classes"]))
opt = torch.optim.SGD(net.parameters(), lr=spec["lr"], momentum=spec["momentum"])
loss_fn = nn.CrossEntropyLoss()
b = spec["batch"]
x = torch.rand((b, 3) + tuple(spec["input"][:2]))
y = torch.randint(0, spec["classes"], (b,))
def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
"""

TORCH_FIRST_STEP = r"""
start = time.perf_counter()
step()
print(json.dumps({"step_s": time.perf_counter() - start}))
"""


def timed_process(argv: list, env: dict, timeout: float) -> tuple[str, float, float]:
    """(what it printed, wall seconds, CPU seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    launched_at = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The child's `stepped_at` made relative to its launch: start to the end of the first step.
    stdout = done.stdout.replace('"stepped_at": ', f'"launched_at": {launched_at!r}, "stepped_at": ')
    return stdout, wall, cpu


def last_json(printed: str) -> dict:
    """The JSON object a child printed on its last line."""
    return json.loads(printed.strip().splitlines()[-1])


def netlang_round(model_path: str, batch: int, timeout: float, train_run: str | None) -> dict:
    """One cold and one warm process on a fresh, empty set of caches: each takes the first
    step, or with `train_run` (a data set) runs a short `netlang train` on it."""
    folder = tempfile.mkdtemp(prefix="netlang-cold-")
    try:
        env = {**os.environ, "NETLANG_CACHE": os.path.join(folder, "netlang"),
               "NUMBA_CACHE_DIR": os.path.join(folder, "numba"),
               "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        if train_run is None:
            argv = [sys.executable, "-c", NETLANG_CHILD, model_path, str(batch)]
            cold, cold_wall, cold_cpu = timed_process(argv, env, timeout)
            warm, warm_wall, warm_cpu = timed_process(argv, env, timeout)
            cold, warm = last_json(cold), last_json(warm)
            details = {"batch": cold["batch"], "cold_step_s": cold["step_s"],
                       "warm_step_s": warm["step_s"], "warm_import_s": warm["import_s"],
                       "cold_to_step_s": cold["stepped_at"] - cold["launched_at"],
                       "warm_to_step_s": warm["stepped_at"] - warm["launched_at"],
                       "warm_front_end_s": warm["front_end_s"]}
        else:
            runs = [os.path.join(folder, "cold-run"), os.path.join(folder, "warm-run")]
            argv = [sys.executable, "-m", "netlang.cli", "train", model_path, "--data",
                    train_run, "--limit", str(TRAIN_RUN_LIMIT), "--epochs", "1", "--force"] + \
                (["--batch-size", str(batch)] if batch else [])
            _, cold_wall, cold_cpu = timed_process(argv + ["--out", runs[0]], env, timeout)
            _, warm_wall, warm_cpu = timed_process(argv + ["--out", runs[1]], env, timeout)
            with open(os.path.join(runs[1], "run.json"), encoding="utf-8") as handle:
                # A warm run that still compiled something says so here (run.json's `compile`).
                warm_compiled = json.load(handle).get("compile", {}).get("seconds", 0.0)
            details = {"batch": batch or netlang.compile(model_path).train_config.batch_size,
                       "warm_compiled_s": warm_compiled}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"cold_s": cold_wall, "cold_cpu_s": cold_cpu, "warm_s": warm_wall,
            "warm_cpu_s": warm_cpu, "compile_s": cold_wall - warm_wall,
            "compile_cpu_s": cold_cpu - warm_cpu, **details}


def torch_round(name: str, model_path: str, batch: int, timeout: float) -> dict | None:
    """PyTorch eager's first step in a fresh process, or None when torch is missing or the
    model is neither a chain torch_spec rebuilds nor ResNet-18."""
    if importlib.util.find_spec("torch") is None:   # the table says n/a
        return None
    layers, extra = torch_spec(model_path)
    if layers is not None:
        script = TORCH_MODEL + TORCH_FIRST_STEP
        spec = dict(extra, layers=layers, batch=batch)
    elif name == "resnet18":
        script = TORCH_RESNET18 + TORCH_FIRST_STEP
        model = netlang.compile(model_path)
        optimizer = model.train_config.optimizer.args
        spec = {"lr": optimizer["lr"], "momentum": optimizer.get("momentum", 0.0),
                "classes": next(iter(model.outputs.values()))[-1],
                "input": list(next(iter(model.inputs.values()))[1:]), "batch": batch}
    else:
        return None
    spec["threads"] = int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count())
    printed, wall, cpu = timed_process([sys.executable, "-c", script, json.dumps(spec)],
                                       dict(os.environ), timeout)
    return {"torch_s": wall, "torch_cpu_s": cpu, "torch_step_s": last_json(printed)["step_s"]}


def best(rounds: list) -> dict:
    """Each time's smallest value over the rounds (load from elsewhere only adds time), and
    the most any warm run still compiled; compile overhead recomputed from the chosen cold and
    warm times, and kept round by round too (`compile_rounds_s`: each round's cold less its
    own warm, which meet the same minute of a machine whose speed wanders)."""
    merged = {key: (max if key == "warm_compiled_s" else min)(r[key] for r in rounds)
              for key in rounds[0] if key != "batch"}
    merged["batch"] = rounds[0]["batch"]
    merged["compile_s"] = merged["cold_s"] - merged["warm_s"]
    merged["compile_cpu_s"] = merged["cold_cpu_s"] - merged["warm_cpu_s"]
    merged["compile_rounds_s"] = [r["cold_s"] - r["warm_s"] for r in rounds]
    return merged


def best_floor(rounds: list) -> dict:
    """The round whose launch-to-imports time is smallest, whole (its parts add up)."""
    return min(rounds, key=lambda r: r["floor_s"])


def main(argv=None) -> int:
    """Measure the models asked for and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5,resnet18,vgg16",
                        help="comma-separated names of examples/*.net (default: the issue's four)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="cold+warm pairs per model, each on fresh caches; the best counts")
    parser.add_argument("--batch", type=int, default=0,
                        help="batch for every model (default: the file's; 32 for ResNet-18 "
                             "and VGG-16)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--train-run", metavar="DATA",
                        help=f"time a short `netlang train MODEL --data DATA --limit "
                             f"{TRAIN_RUN_LIMIT} --epochs 1` in each process instead of the "
                             f"first step (e.g. mnist for the MLP and LeNet-5)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="also time the dependencies' floor: a process's launch to the "
                             "end of importing NumPy, networkx, Lark and Numba, which every "
                             "warm start pays before netlang's own work")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    # Python's bytecode of the package, as an installation has it (pip compiles it when it
    # installs); a checkout run with PYTHONDONTWRITEBYTECODE would otherwise compile every
    # module in every process, warm ones included (0.2 s of the MLP's warm start here).
    compileall.compile_dir(os.path.join(ROOT, "netlang"), quiet=1)
    header = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "numba_num_threads": os.environ.get("NUMBA_NUM_THREADS", "(cores)"),
              "compile_processes": os.environ.get("NETLANG_COMPILE_PROCESSES", "(cores)")}
    rows = {}
    for name in args.models.split(","):
        path = os.path.join(ROOT, "examples", f"{name}.net")
        if not os.path.exists(path):
            parser.error(f"no model {path}")
        batch = args.batch or MODELS.get(name) or 0
        row = best([netlang_round(path, batch, args.timeout, args.train_run)
                    for _ in range(args.rounds)])
        if not args.no_torch:
            runs = [torch_round(name, path, row["batch"], args.timeout)
                    for _ in range(args.rounds)]
            if runs[0] is not None:
                row.update({key: min(r[key] for r in runs) for key in runs[0]})
        rows[name] = row
        if not args.json:
            print(f"[{name} done; load average {os.getloadavg()[0]:.2f}]", file=sys.stderr,
                  flush=True)
    if args.floor:
        header["floor"] = best_floor([floor_round(args.timeout) for _ in range(args.rounds)])
    header["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps({**header, "models": rows}, indent=2))
        return 0
    print(f"cpus: {header['cpus']}   NUMBA_NUM_THREADS: {header['numba_num_threads']}   "
          f"NETLANG_COMPILE_PROCESSES: {header['compile_processes']}   "
          f"load average before: {header['load_average'][0]:.2f}, after: "
          f"{header['load_average_after'][0]:.2f}   (seconds; CPU seconds in brackets)")
    print(f"{'model':<10}{'batch':>6}  {'cold':>16}  {'warm':>14}  {'compile':>16}  "
          f"{'to 1st step cold':>16}  {'warm':>6}  {'torch process':>15}  {'torch step':>10}")
    for name, r in rows.items():
        torch_text = (f"{r['torch_s']:6.2f} ({r['torch_cpu_s']:5.1f})  {r['torch_step_s']:10.3f}"
                      if "torch_s" in r else f"{'n/a':>15}  {'n/a':>10}")
        print(f"{name:<10}{r['batch']:>6}  {r['cold_s']:7.2f} ({r['cold_cpu_s']:6.1f})  "
              f"{r['warm_s']:6.2f} ({r['warm_cpu_s']:5.1f})  "
              f"{r['compile_s']:7.2f} ({r['compile_cpu_s']:6.1f})  "
              f"{r.get('cold_to_step_s', float('nan')):16.2f}  "
              f"{r.get('warm_to_step_s', float('nan')):6.2f}  {torch_text}")
    if args.floor:
        floor = header["floor"]
        print(f"dependencies' floor: launch to the end of their imports {floor['floor_s']:.2f} s "
              f"(NumPy {floor['floor_numpy_s']:.2f}, networkx {floor['floor_networkx_s']:.2f}, "
              f"Lark {floor['floor_lark_s']:.2f}, Numba {floor['floor_numba_s']:.2f})")
    if args.rounds > 1:
        print("compile overhead round by round (each cold less its own warm):")
        for name, r in rows.items():
            each = r["compile_rounds_s"]
            print(f"  {name:<10}{'  '.join(f'{value:.2f}' for value in each)}   "
                  f"median {statistics.median(each):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
