"""Training throughput on an NVIDIA GPU: netlang's CUDA engine against PyTorch CUDA.

    python benchmarks/gpu.py [--models mlp,lenet5,vgg_small] [--batches 128,1024]
                             [--seconds 3] [--no-torch] [--json]

For each model (examples/mlp.net, examples/lenet5.net, benchmarks/vgg_small.net) and batch
size: training samples per second of `netlang`'s CUDA engine on random data of the model's
shapes, uploaded to the device once (each step then copies only its loss and outputs back,
as the training loop does), after a warm-up whose first step (kernel compilation) is
reported apart; then PyTorch CUDA on the same architecture (rebuilt as in
benchmarks/train_throughput.py), same batch, float32, in its own process, and the ratio.
Every op of the three models has a CUDA kernel (convolutions as im2col and the tiled product,
pooling, see docs/cuda.md); a model with an op that has none is reported as pending, naming
the op.
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
          "vgg_small": os.path.join(HERE, "vgg_small.net")}


def netlang_throughput(path: str, batch: int, seconds: float) -> dict:
    import numpy as np
    from numba import cuda

    import netlang
    from netlang.errors import UsageError
    from netlang.runtime import make_engine
    from train_throughput import _random_feeds

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
    return {"samples_per_s": steps * batch / elapsed, "first_step_s": first, "steps": steps}


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
    args = parser.parse_args(argv)
    from netlang.runtime.cuda import gpu_available
    if not gpu_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine (the simulator is for tests, "
              "not timings)", file=sys.stderr)
        return 1
    from numba import cuda
    device = cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else device
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
                f"(first step {ours['first_step_s']:.1f}s)")
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
