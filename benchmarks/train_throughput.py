"""Steady-state training throughput: netlang's CPU engine against PyTorch on the same model.

    python benchmarks/train_throughput.py [--model examples/mlp.net] [--batches 32,128,512]
                                          [--seconds 3] [--rounds 3] [--threads N] [--no-torch]
                                          [--cpu-time]

Each measurement trains on random data of the model's shapes for a fixed time
after a warm-up (the first step compiles; that time is reported separately).
PyTorch runs the same architecture (rebuilt from netlang's graph when it is a
chain of dense, conv2d, maxpool, avgpool, global_avgpool, batchnorm, flatten,
dropout, embedding, rnn/lstm/gru (torch.nn.RNN, LSTM, GRU, batch first) and
relu/sigmoid/tanh layers, with a softmax cross-entropy, per example or per time
step, and the model's gradient clipping), same batch, float32, same thread
count, in its own process, so the two runtimes' thread pools never share a
process.  The recurrent rows of the issue:

    python benchmarks/train_throughput.py --model examples/lstm_mnist_rows.net --batches 128
    python benchmarks/train_throughput.py --model examples/char_lstm.net --batches 64

netlang's images are channels-last (N, H, W, C);
PyTorch gets NCHW tensors of the same sizes, its native layout.
Figures depend on OPENBLAS_CORETYPE (OpenBLAS's kernel choice): the script
prints the value it ran under and never changes it.
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


def netlang_throughput(model_path: str, batch: int, seconds: float, cpu_time: bool = False) -> dict:
    import numpy as np

    import netlang
    from netlang.runtime import make_engine

    model = netlang.compile(model_path)
    engine = make_engine(model.graph, seed=0)
    feeds = _random_feeds(model.graph, batch, np)
    lr = model.train_config.optimizer.args["lr"]
    start = time.perf_counter()
    engine.train_step(feeds, lr)
    first = time.perf_counter() - start
    for _ in range(5):
        engine.train_step(feeds, lr)
    clock = time.process_time if cpu_time else time.perf_counter
    steps, start = 0, clock()
    while clock() - start < seconds:
        engine.train_step(feeds, lr)
        steps += 1
    elapsed = clock() - start
    return {"engine": engine.name, "samples_per_s": steps * batch / elapsed,
            "first_step_s": first, "steps": steps}


def _random_feeds(graph, batch, np):
    """Random inputs of the model's shapes (netlang.bench's), seeded alike in every process."""
    from netlang.bench import random_feeds
    return random_feeds(graph, batch, np.float32, np.random.default_rng(0))


# The model, its optimiser, a random batch and `step()`, in PyTorch (benchmarks/cold_start.py
# times the first step of the same).
TORCH_MODEL = r"""
import json, sys, time
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
# torch's RNN, LSTM or GRU, batch first, returning the whole output sequence or each
# direction's final state of the top layer, concatenated (netlang's `sequences`).
class Recurrent(torch.nn.Module):
    def __init__(self, arg):
        super().__init__()
        options = {"nonlinearity": arg["activation"]} if arg["kind"] == "RNN" else {}
        self.inner = getattr(torch.nn, arg["kind"])(
            arg["features"], arg["units"], num_layers=arg["layers"],
            bidirectional=arg["bidirectional"], dropout=arg["dropout"], batch_first=True,
            **options)
        self.sequences, self.directions = arg["sequences"], 2 if arg["bidirectional"] else 1
    def forward(self, x):
        out, final = self.inner(x)
        if self.sequences:
            return out
        final = final[0] if isinstance(final, tuple) else final
        return torch.cat([final[d - self.directions] for d in range(self.directions)], -1)
layers = []
for kind, arg in spec["layers"]:
    if kind == "recurrent":
        layers.append(Recurrent(arg))
    elif kind == "embedding":
        layers.append(torch.nn.Embedding(arg[0], arg[1]))
    elif kind == "dense":
        layers.append(torch.nn.Linear(arg[0], arg[1]))
    elif kind == "flatten":
        layers.append(torch.nn.Flatten())
    elif kind == "dropout":
        layers.append(torch.nn.Dropout(arg))
    elif kind == "conv2d":
        (t, b_), (l, r) = arg["pads"]
        if (t, l) != (b_, r):
            layers.append(torch.nn.ZeroPad2d((l, r, t, b_)))
        layers.append(torch.nn.Conv2d(arg["cin"], arg["filters"], arg["kernel"], arg["stride"],
                                      (t, l) if (t, l) == (b_, r) else 0, arg["dilation"],
                                      arg["groups"], arg["bias"]))
    elif kind == "maxpool":
        layers.append(torch.nn.MaxPool2d(arg["kernel"], arg["stride"], arg["padding"],
                                         ceil_mode=arg["ceil_mode"]))
    elif kind == "avgpool":
        layers.append(torch.nn.AvgPool2d(arg["kernel"], arg["stride"], arg["padding"],
                                         ceil_mode=arg["ceil_mode"],
                                         count_include_pad=arg["count_include_pad"]))
    elif kind == "global_avgpool":
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    elif kind == "batchnorm":
        cls = torch.nn.BatchNorm2d if arg["rank"] == 4 else torch.nn.BatchNorm1d
        layers.append(cls(arg["channels"], eps=arg["eps"], momentum=arg["momentum"]))
    else:
        layers.append({"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[kind]())
net = torch.nn.Sequential(*layers)
if spec["optimizer"] == "adam":
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
else:
    opt = torch.optim.SGD(net.parameters(), lr=spec["lr"], momentum=spec["momentum"])
loss_fn = torch.nn.CrossEntropyLoss()
b = spec["batch"]
shape = tuple(spec["input"])
if len(shape) == 3:   # netlang's (H, W, C) image: PyTorch's NCHW of the same sizes
    shape = (shape[2], shape[0], shape[1])
if spec["tokens"]:   # token ids below the vocabulary
    x = torch.randint(0, spec["tokens"], (b,) + shape)
else:
    x = torch.rand((b,) + shape)
y = torch.randint(0, spec["classes"], (b,) + tuple(spec["label"]))
def step():
    opt.zero_grad(set_to_none=True)
    scores = net(x)   # a loss per time step: averaged over the batch and the steps
    loss = loss_fn(scores.reshape(-1, spec["classes"]), y.reshape(-1))
    loss.backward()
    if spec["clip_norm"]:
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec["clip_norm"])
    opt.step()
"""

TORCH_SCRIPT = TORCH_MODEL + r"""
for _ in range(10):
    step()
clock = time.process_time if spec["cpu_time"] else time.perf_counter
steps, start = 0, clock()
while clock() - start < spec["seconds"]:
    step(); steps += 1
print(json.dumps({"samples_per_s": steps * b / (clock() - start)}))
"""


# netlang's recurrent ops and the torch modules of the same equations and parameter layouts.
RECURRENT = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def torch_spec(model_path: str):
    """The model as a layer list PyTorch can rebuild, or None when it has other ops."""
    import netlang
    model = netlang.compile(model_path)
    graph = model.graph
    from netlang.ops.conv import conv_pads
    from netlang.ops.pool import pool_geometry
    layers = []
    previous = None
    for node in graph.topological_order():
        data = graph.nodes[node]
        if data["role"] != "layer":
            continue
        op, a = data["op"], data["attrs"]
        x = data["inputs"][0]
        if previous is not None and x != previous:
            return None, None   # not a chain
        previous = node
        xt = graph.type_of(x)
        if op == "dense":
            w = graph.type_of(data["inputs"][1])
            layers.append(("dense", [w.shape[1], w.shape[0]]))
        elif op in RECURRENT:
            if any(a.get(name) is not None for name in ("h0", "c0", "lengths")):
                return None, None
            layers.append(("recurrent", {
                "kind": RECURRENT[op], "features": xt.shape[-1], "units": a["units"],
                "layers": a["layers"], "bidirectional": a["bidirectional"],
                "sequences": a["sequences"], "dropout": a["dropout"],
                "activation": a.get("activation", "tanh")}))
        elif op == "embedding":
            layers.append(("embedding", [a["vocab"], a["dim"]]))
        elif op == "conv2d":
            pads = conv_pads(tuple(xt.shape[1:3]), a)
            layers.append(("conv2d", {"cin": xt.shape[3], "filters": a["filters"],
                                      "kernel": list(a["kernel"]), "stride": list(a["stride"]),
                                      "pads": [list(p) for p in pads],
                                      "dilation": list(a["dilation"]), "groups": a["groups"],
                                      "bias": a["bias"]}))
        elif op in ("maxpool", "avgpool"):
            kernel, stride, pads, _, _ = pool_geometry(tuple(xt.shape[1:3]), a)
            if any(p0 != p1 for p0, p1 in pads):
                return None, None
            layers.append((op, {"kernel": list(kernel), "stride": list(stride),
                                "padding": [pads[0][0], pads[1][0]], "ceil_mode": a["ceil_mode"],
                                "count_include_pad": a.get("count_include_pad", True)}))
        elif op == "batchnorm":
            layers.append(("batchnorm", {"channels": xt.shape[-1], "rank": xt.rank,
                                         "eps": a["eps"], "momentum": a["momentum"]}))
        elif op in ("flatten", "relu", "sigmoid", "tanh", "global_avgpool"):
            layers.append((op, None))
        elif op == "dropout":
            layers.append(("dropout", a["rate"]))
        else:
            return None, None
    optimizer = model.train_config.optimizer
    if optimizer.name not in ("sgd", "adam"):
        return None, None
    args = optimizer.args
    image, label = list(model.inputs.values())[:2]
    outputs = next(iter(model.outputs.values()))
    first = layers[0]
    return layers, {"lr": args["lr"], "momentum": args.get("momentum", 0.0),
                    "optimizer": optimizer.name, "input": list(image[1:]), "classes": outputs[-1],
                    "label": list(label[1:]), "clip_norm": model.train_config.clip_norm,
                    "tokens": first[1][0] if first[0] == "embedding" else 0}


def torch_throughput(model_path, batch, seconds, threads, cpu_time=False):
    try:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            return None
    except Exception:
        return None
    layers, extra = torch_spec(model_path)
    if layers is None:
        return None
    spec = dict(extra, layers=layers, batch=batch, seconds=seconds, threads=threads,
                cpu_time=cpu_time)
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, json.dumps(spec)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["samples_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "mlp.net"))
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating measurements of each side; the best of each is shown")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each, samples per CPU-second: comparable even when other "
                             "processes load the machine (wall-clock ratios are not)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # measure one batch size in this process
        print(json.dumps(netlang_throughput(args.model, int(args.child), args.seconds,
                                            args.cpu_time)))
        return 0
    env = dict(os.environ)
    if args.cpu_time:
        args.threads = 1
        env["OPENBLAS_NUM_THREADS"] = "1"
    # netlang's convolutions split a batch among NUMBA_NUM_THREADS workers: the same threads
    # as PyTorch's.
    env["NUMBA_NUM_THREADS"] = str(args.threads)
    print(f"model: {os.path.relpath(args.model)}   threads: {args.threads}   "
          f"clock: {'CPU time' if args.cpu_time else 'wall'}   "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"{'batch':>6}  {'netlang':>12}  {'pytorch':>12}  {'ratio':>6}  first step")
    for batch in [int(b) for b in args.batches.split(",")]:
        # Each side in its own process, one after the other: no shared thread pools.
        # Rounds alternate the two sides; each side's best round counts, so a burst of load
        # from elsewhere (these are shared virtual machines) hurts neither side's figure.
        ours, theirs = None, None
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child",
                                  str(batch), "--seconds", str(args.seconds)]
                                 + (["--cpu-time"] if args.cpu_time else []),
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                print(out.stderr)
                return 1
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if ours is None or run["samples_per_s"] > ours["samples_per_s"]:
                ours = dict(run, first_step_s=(ours or run)["first_step_s"])
            if not args.no_torch:
                rate = torch_throughput(args.model, batch, args.seconds, args.threads, args.cpu_time)
                if rate is not None:
                    theirs = max(theirs or 0.0, rate)
        ratio = f"{ours['samples_per_s'] / theirs:6.2f}" if theirs else "     -"
        theirs_text = f"{theirs:12,.0f}" if theirs else f"{'n/a':>12}"
        print(f"{batch:>6}  {ours['samples_per_s']:12,.0f}  {theirs_text}  {ratio}  "
              f"{ours['first_step_s']:.2f} s ({ours['engine']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
