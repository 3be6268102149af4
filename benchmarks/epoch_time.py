"""One epoch of MNIST, whole process: `netlang train` against the same training in PyTorch.

    python benchmarks/epoch_time.py [--model examples/lstm_mnist_rows.net] [--rounds 3]
                                    [--threads N] [--cold]

Issue 11's measure: a user's wait from typing the command to its end.  Each side is a fresh
process, timed by this script from start to exit (the interpreter's start and the library's
import included), that reads MNIST from `$NETLANG_DATA/mnist` (the gzipped IDX files), trains
one epoch of the model's recipe (its batch size, optimiser and rate, cosine schedule over the
epoch when the model has one, gradient clipping) on the 60,000 shuffled training images, and
evaluates on the 10,000 test images.

- **netlang**: `netlang train MODEL --data mnist --epochs 1 --out TMP` (which also writes its
  run directory: weights, checkpoint, metrics).  Warm: a first run, not timed, fills the
  kernel and Numba caches in a fresh folder that the timed runs share; with `--cold` every
  timed run starts from empty caches.
- **PyTorch**: the same architecture built by benchmarks/train_throughput.py's `torch_spec`
  (chains of the layers it knows), float32, NCHW images, the same thread count.

Rounds alternate the two sides; both the best and the median round are printed, with the
load average, since these are shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from train_throughput import TORCH_MODEL, torch_spec  # noqa: E402

# TORCH_MODEL builds `net`, `opt`, `loss_fn` and `step()` (which trains on the globals x, y);
# this reads MNIST, runs an epoch of shuffled batches through step(), then evaluates.
TORCH_EPOCH = TORCH_MODEL + r"""
import gzip, math, os
import numpy as np
def idx(name):
    with gzip.open(os.path.join(spec["data"], "mnist", name)) as f:
        raw = f.read()
    dims = raw[3]
    sizes = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(sizes)
def images(name):
    pixels = torch.from_numpy(idx(name).astype(np.float32) / 255.0)
    return pixels.reshape((pixels.shape[0],) + shape)
train_x, train_y = images("train-images-idx3-ubyte.gz"), torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
test_x, test_y = images("t10k-images-idx3-ubyte.gz"), torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
batches = math.ceil(train_x.shape[0] / b)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, batches) if spec["cosine"] else None
order = torch.randperm(train_x.shape[0])
net.train()
for i in range(batches):
    rows = order[i * b:(i + 1) * b]
    x, y = train_x[rows], train_y[rows]
    step()
    if schedule is not None:
        schedule.step()
net.eval()
correct = 0
with torch.no_grad():
    for i in range(0, test_x.shape[0], 1000):
        correct += (net(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
print(json.dumps({"test_accuracy": correct / test_x.shape[0]}))
"""


def _timed(name, command, env):
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(os.path.dirname(HERE), "examples",
                                                        "lstm_mnist_rows.net"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cold", action="store_true",
                        help="every netlang run starts from empty caches")
    args = parser.parse_args(argv)
    data = os.environ.get("NETLANG_DATA")
    if not data or not os.path.isdir(os.path.join(data, "mnist")):
        raise SystemExit("error: NETLANG_DATA must name a folder with mnist/ in it")

    import netlang
    model = netlang.compile(args.model)
    layers, extra = torch_spec(args.model)
    schedule = model.train_config.schedule
    spec = dict(extra, layers=layers, batch=model.train_config.batch_size, threads=args.threads,
                data=data, cosine=schedule is not None and schedule.name == "cosine")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads))
    work = tempfile.mkdtemp(prefix="netlang-epoch-")
    try:
        def caches(name):
            folder = os.path.join(work, name)
            return dict(env, NETLANG_CACHE=os.path.join(folder, "kernels"),
                        NUMBA_CACHE_DIR=os.path.join(folder, "numba"))
        # The `netlang` command's own entry point, without a shell wrapper's start in the time.
        train = [sys.executable, "-c", "import sys; from netlang.cli import main; sys.exit(main())",
                 "train", args.model, "--data", "mnist", "--epochs", "1"]
        if not args.cold:
            _timed("netlang train", train + ["--out", os.path.join(work, "fill")], caches("warm"))
        ours, theirs = [], []
        for round_ in range(args.rounds):
            run_env = caches(f"cold{round_}" if args.cold else "warm")
            ours.append(_timed("netlang train", train + ["--out", os.path.join(work, f"run{round_}")], run_env)[0])
            torch_s, out = _timed("pytorch", [sys.executable, "-c", TORCH_EPOCH, json.dumps(spec)], env)
            theirs.append(torch_s)
            accuracy = json.loads(out.strip().splitlines()[-1])["test_accuracy"]
            with open(os.path.join(work, f"run{round_}", "metrics.jsonl")) as f:
                ours_accuracy = json.loads(f.readlines()[-1]).get("test_accuracy")
            print(f"round {round_ + 1}: netlang {ours[-1]:.2f} s (test accuracy {ours_accuracy}), "
                  f"pytorch {torch_s:.2f} s (test accuracy {accuracy:.4f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"model: {os.path.relpath(args.model)}   threads: {args.threads}   "
          f"{'cold' if args.cold else 'warm'} caches   OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}   load average {load:.2f}")
    print(f"best:   netlang {min(ours):.2f} s, pytorch {min(theirs):.2f} s, "
          f"ratio {min(theirs) / min(ours):.2f}")
    print(f"median: netlang {statistics.median(ours):.2f} s, pytorch "
          f"{statistics.median(theirs):.2f} s, ratio "
          f"{statistics.median(theirs) / statistics.median(ours):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
