"""Training throughput on an NVIDIA GPU: netlang's CUDA engine against PyTorch CUDA.

    python benchmarks/gpu.py [--models mlp,lenet5,vgg_small,lstm] [--batches 128,1024]
                             [--seconds 3] [--no-torch] [--json]

For each model (examples/mlp.net, examples/lenet5.net, benchmarks/vgg_small.net, and
examples/lstm_mnist_rows.net as `lstm`: an LSTM of 128 units over 28 steps) and batch
size: training samples per second of `netlang`'s CUDA engine on random data of the model's
shapes, uploaded to the device once (each step then copies only its loss and outputs back,
as the training loop does), after a warm-up whose first step (kernel compilation) is
reported apart; then PyTorch CUDA on the same architecture (rebuilt as in
benchmarks/train_throughput.py), same batch, float32, in its own process, and the ratio.
Every op of the four models has a CUDA kernel (convolutions as im2col and the tiled product,
pooling, the recurrent layers' fused step kernels, see docs/cuda.md); a model with an op
that has none is reported as pending, naming the op.  Both sides clip by the global norm
where the model's train section says so (the LSTM recipe's `clip_norm 5`).
Each model row also counts the kernels one training step launches and times an empty
launch with as many arguments, so that the step's time can be split into what launching
costs on the host and the rest (the "launch-bound share"; a share near 1 means the GPU
waits on Python, not on arithmetic or memory).

    python benchmarks/gpu.py --products [--batches 128,1024]

times the generated matrix product alone (codegen/cuda.py `render_product`) in each of its
two tilings, register tiles and one output a thread, on the MLP's products at those
batch sizes and on square ones, beside PyTorch's (cuBLAS) in its own process: GFLOP/s,
and which tiling netlang's size rule picks (LaunchGeometry.wide_from, to be tuned by it).
Without a GPU the script exits with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

MODELS = {"mlp": os.path.join(ROOT, "examples", "mlp.net"),
          "lenet5": os.path.join(ROOT, "examples", "lenet5.net"),
          "vgg_small": os.path.join(HERE, "vgg_small.net"),
          "lstm": os.path.join(ROOT, "examples", "lstm_mnist_rows.net")}


def netlang_throughput(path: str, batch: int, seconds: float) -> dict:
    import numpy as np
    from numba import cuda
    from train_throughput import _random_feeds

    import netlang
    from netlang.errors import UsageError
    from netlang.runtime import make_engine

    model = netlang.compile(path)
    try:
        engine = make_engine(model.graph, seed=0, device="cuda")
    except UsageError as error:
        return {"pending": str(error)}
    feeds = {name: cuda.to_device(np.ascontiguousarray(
        value, dtype=np.float32 if value.dtype.kind == "f" else np.int64))
        for name, value in _random_feeds(model.graph, batch, np).items()}
    lr = model.train_config.optimizer.args["lr"]
    start = time.perf_counter()
    engine.train_step(feeds, lr)
    first = time.perf_counter() - start
    for _ in range(5):
        engine.train_step(feeds, lr)
    cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.train_step(feeds, lr)
        steps += 1
    cuda.synchronize()
    elapsed = time.perf_counter() - start
    launches, arguments = _count_launches(engine, lambda: engine.train_step(feeds, lr))
    launch_s = _empty_launch_seconds(round(arguments)) * launches
    return {"samples_per_s": steps * batch / elapsed, "first_step_s": first, "steps": steps,
            "launches_per_step": launches, "launch_bound_share": launch_s / (elapsed / steps)}


def _count_launches(engine, run_step) -> tuple[int, float]:
    """Kernels one training step launches, and their mean number of arguments: the step
    program's kernels (globals of its host function) wrapped to count, for one step."""
    _, _, _, step, _ = engine._training()
    names = step.function.__globals__
    counted = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, launch):
            def run(*args):
                counted.append(len(args))
                return self.kernel[launch](*args)
            return run

    kernels = {name: value for name, value in names.items()
               if name.startswith("k") and name[1:].isdigit()}
    try:
        names.update({name: Counting(kernel) for name, kernel in kernels.items()})
        run_step()
    finally:
        names.update(kernels)
    return len(counted), sum(counted) / max(1, len(counted))


def _empty_launch_seconds(arguments: int) -> float:
    """Host time of one launch of a kernel that does nothing, given `arguments` device arrays
    (Numba's launch cost grows with its arguments), the queue kept short by syncing."""
    import numpy as np
    from numba import cuda
    params = ", ".join(f"p{i}" for i in range(arguments))
    scope = {"cuda": cuda}
    exec(f"def empty({params}):\n    pass\n", scope)
    kernel = cuda.jit(scope["empty"])
    args = [cuda.to_device(np.zeros(4, np.float32)) for _ in range(arguments)]
    kernel[1, 32](*args)
    cuda.synchronize()
    total, rounds = 0.0, 20
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(50):
            kernel[1, 32](*args)
        total += time.perf_counter() - start
        cuda.synchronize()
    return total / (rounds * 50)


def product_shapes(batches) -> list[tuple[int, int, int, bool, bool]]:
    """(m, n, k, trans_a, trans_b) of the MLP's first layer at each batch size (forward,
    input gradient, weight gradient, as the step computes them), and square products."""
    shapes = []
    for b in batches:
        shapes += [(b, 800, 784, False, True), (b, 784, 800, False, False),
                   (800, 784, b, True, False)]
    return shapes + [(1024, 1024, 1024, False, False), (4096, 4096, 4096, False, False)]


def netlang_products(shapes, seconds: float) -> list[dict]:
    """GFLOP/s of the generated product in each tiling, timed by CUDA events."""
    import numpy as np
    from numba import cuda

    from netlang.codegen.cuda import GPU, render_product
    from netlang.runtime.cpu import load_program
    rows = []
    for m, n, k, trans_a, trans_b in shapes:
        product = load_program(render_product(trans_a=trans_a, trans_b=trans_b), "product")
        rng = np.random.default_rng(0)
        a = cuda.to_device(rng.random((k, m) if trans_a else (m, k), np.float32))
        b = cuda.to_device(rng.random((n, k) if trans_b else (k, n), np.float32))
        out = cuda.device_array((m, n), np.float32)
        row = {"m": m, "n": n, "k": k, "trans_a": trans_a, "trans_b": trans_b,
               "picks": "wide" if product.__globals__["_wide"](m, n) else "narrow"}
        for tiling, wide_from in (("wide", 0), ("narrow", 10 ** 9)):
            product.__globals__["_WIDE_FROM"] = wide_from
            product(a, b, out)
            cuda.synchronize()
            runs, spent, wall = 0, 0.0, time.perf_counter()
            # Bounded by the wall clock too: the simulator's events report no time at all.
            while time.perf_counter() - wall < seconds / 4:
                start, stop = cuda.event(), cuda.event()
                start.record()
                for _ in range(10):
                    product(a, b, out)
                stop.record()
                stop.synchronize()
                spent += start.elapsed_time(stop) / 1000
                runs += 10
            row[tiling] = 2 * m * n * k * runs / spent / 1e9 if spent > 0 else None
        product.__globals__["_WIDE_FROM"] = GPU.wide_from
        rows.append(row)
    return rows


TORCH_PRODUCTS = r"""
import json, sys, time
import torch
shapes, seconds = json.loads(sys.argv[1])
rates = []
for m, n, k, trans_a, trans_b in shapes:
    a = torch.rand((k, m) if trans_a else (m, k), device="cuda")
    b = torch.rand((n, k) if trans_b else (k, n), device="cuda")
    left, right = (a.t() if trans_a else a), (b.t() if trans_b else b)
    torch.mm(left, right); torch.cuda.synchronize()
    runs, spent = 0, 0.0
    while spent < seconds / 4:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            torch.mm(left, right)
        stop.record(); stop.synchronize()
        spent += start.elapsed_time(stop) / 1000; runs += 10
    rates.append(2 * m * n * k * runs / spent / 1e9)
print(json.dumps(rates))
"""


def torch_products(shapes, seconds: float):
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        return None
    result = subprocess.run([sys.executable, "-c", TORCH_PRODUCTS, json.dumps([shapes, seconds])],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main_products(args, device: str) -> int:
    shapes = product_shapes([int(b) for b in args.batches.split(",")])
    rows = netlang_products(shapes, args.seconds)
    theirs = None if args.no_torch else torch_products(shapes, args.seconds)
    for i, row in enumerate(rows):
        row["device"] = device
        row["torch"] = theirs[i] if theirs else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        ops = ("aᵀ" if row["trans_a"] else "a") + "·" + ("bᵀ" if row["trans_b"] else "b")
        torch_rate = f"{row['torch']:8.0f}" if row["torch"] else "     n/a"
        print(f"{row['m']:5d}×{row['n']:5d}×{row['k']:5d} {ops:6s} GFLOP/s: wide "
              f"{row['wide']:8.0f}  narrow {row['narrow']:8.0f}  cuBLAS {torch_rate}  "
              f"netlang picks {row['picks']}  [{device}]", flush=True)
    return 0


def _torch_cuda_script() -> str:
    """benchmarks/train_throughput.py's PyTorch script, on the GPU."""
    from train_throughput import TORCH_SCRIPT
    build, _, _ = TORCH_SCRIPT.partition("net = torch.nn.Sequential(*layers)")
    return build + r"""
net = torch.nn.Sequential(*layers).cuda()
if spec["optimizer"] == "adam":
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
else:
    opt = torch.optim.SGD(net.parameters(), lr=spec["lr"], momentum=spec["momentum"])
loss_fn = torch.nn.CrossEntropyLoss()
b = spec["batch"]
shape = tuple(spec["input"])
if len(shape) == 3:
    shape = (shape[2], shape[0], shape[1])
x = torch.rand((b,) + shape, device="cuda")
y = torch.randint(0, spec["classes"], (b,), device="cuda")
def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    if spec["clip_norm"]:   # as netlang's step clips (the LSTM recipe's clip_norm 5)
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec["clip_norm"])
    opt.step()
    return loss
for _ in range(10):
    step()
torch.cuda.synchronize()
steps, start = 0, time.perf_counter()
while time.perf_counter() - start < spec["seconds"]:
    float(step()); steps += 1   # the loss read back each step, as netlang's loop does
torch.cuda.synchronize()
print(json.dumps({"samples_per_s": steps * b / (time.perf_counter() - start)}))
"""


def torch_throughput(path: str, batch: int, seconds: float):
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        return None
    from train_throughput import torch_spec
    layers, extra = torch_spec(path)
    if layers is None:
        return None
    spec = dict(extra, layers=layers, batch=batch, seconds=seconds, threads=1, cpu_time=False)
    result = subprocess.run([sys.executable, "-c", _torch_cuda_script(), json.dumps(spec)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "PyTorch failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--products", action="store_true",
                        help="time the matrix product's two tilings instead of models")
    args = parser.parse_args(argv)
    from netlang.runtime.cuda import gpu_available
    if not gpu_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine (the simulator is for tests, "
              "not timings)", file=sys.stderr)
        return 1
    from numba import cuda
    device = cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else device
    if args.products:
        return main_products(args, device)
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            ours = netlang_throughput(MODELS[name], batch, args.seconds)
            theirs = None if args.no_torch else torch_throughput(MODELS[name], batch, args.seconds)
            ratio = None
            if theirs and "samples_per_s" in theirs and "samples_per_s" in ours:
                ratio = ours["samples_per_s"] / theirs["samples_per_s"]
            rows.append({"model": name, "batch": batch, "device": device, "netlang": ours,
                         "torch": theirs, "ratio": ratio})
            if not args.json:
                print(_format(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _format(row) -> str:
    ours, theirs = row["netlang"], row["torch"]
    if "pending" in ours:
        mine = f"netlang: {ours['pending']}"
    else:
        mine = (f"netlang {ours['samples_per_s']:10.0f} samples/s "
                f"(first step {ours['first_step_s']:.1f}s; {ours['launches_per_step']} "
                f"launches a step, launch-bound share {ours['launch_bound_share']:.2f})")
    if theirs is None:
        other = "torch: n/a"
    elif "error" in theirs:
        other = f"torch: {theirs['error']}"
    else:
        other = f"torch {theirs['samples_per_s']:10.0f} samples/s"
    ratio = f"ratio {row['ratio']:.2f}" if row["ratio"] is not None else "ratio n/a"
    return f"{row['model']:10s} batch {row['batch']:5d} [{row['device']}]  {mine}  {other}  {ratio}"


if __name__ == "__main__":
    sys.exit(main())
