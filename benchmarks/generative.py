"""Training throughput of the generative examples: netlang's CPU engine against PyTorch.

    python benchmarks/generative.py [--seconds 5] [--rounds 3] [--threads N] [--only vae|gan]
                                    [--cpu-time]

Two models, each trained at its own batch size on random data of MNIST's shape:

- examples/vae.net (batch 128): one step is an Adam update of the whole VAE on the negative
  ELBO (binary cross-entropy summed over the pixels plus the KL term, both averaged over
  the batch), the latent drawn by the reparameterisation;
- examples/gan.net (batch 64): one round is the discriminator's step on a batch of real
  digits and a batch of fakes (its loss with one-sided label smoothing, dropout in its hidden
  layers), then the generator's step on a fresh batch of noise (the file's
  `phases alternate(discriminator, generator)`), each phase updating only its own layers.

Samples/s counts the real examples a second of training consumes (the VAE's batch per
step, the GAN's real batch per round).  PyTorch trains the same layers, losses and optimiser
(torch.optim.Adam with the file's settings) in its own process with the same thread count;
its discriminator step runs the generator without a gradient and its generator step stops
gradients at the discriminator's weights, the cheapest form of each step in PyTorch.  Each
side's warm-up steps (netlang's first step compiles) are not timed.  The two sides run one
after the other, alternating for `--rounds` rounds, and the median of each is reported.

Figures on a machine shared with other work follow its load: the script prints the load
average beside them.  `--cpu-time` counts samples per CPU-second of the process instead, one
thread each side, which a busy machine disturbs far less (a process waiting for a core uses
no CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import netlang
from netlang.runtime import make_engine
from netlang.train.phased import phase_runs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"vae": (os.path.join(ROOT, "examples", "vae.net"), 128),
          "gan": (os.path.join(ROOT, "examples", "gan.net"), 64)}
WARMUP_STEPS = 5


def netlang_rate(which: str, seconds: float, cpu_time: bool) -> dict:
    """Samples/s of netlang's CPU engine training `which` (see the module docstring)."""
    path, batch = MODELS[which]
    model = netlang.compile(path)
    config = model.train_config
    rng = np.random.default_rng(0)
    images = {"image": rng.uniform(size=(batch, 784)).astype(np.float32)}
    if which == "vae":
        engine = make_engine(model.graph, config, seed=0)
        lr = config.optimizer.args["lr"]

        def step():
            engine.train_step(images, lr)
    else:
        owner = make_engine(model.graph, config, seed=0)
        runs = phase_runs(model.graph, config,
                          lambda graph, cfg, params: make_engine(graph, cfg, params, seed=0),
                          owner.params)

        def step():
            for run in runs:
                feeds = images if run.reads_data else run.engine.with_noise({}, count=batch)
                run.engine.train_step(feeds, run.config.optimizer.args["lr"])
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
    warmup = time.perf_counter() - start
    clock = time.process_time if cpu_time else time.perf_counter
    steps, start = 0, clock()
    while clock() - start < seconds:
        step()
        steps += 1
    return {"samples_per_s": steps * batch / (clock() - start), "warmup_s": warmup,
            "steps": steps}


TORCH_SCRIPT = r"""
import json, sys, time
import torch
import torch.nn.functional as F
which, batch, seconds, threads, warmup = (sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]))
clock = time.process_time if sys.argv[6] == "cpu" else time.perf_counter
torch.set_num_threads(threads)
torch.manual_seed(0)
nn = torch.nn
images = torch.rand(batch, 784)
if which == "vae":
    enc, enc_mu, enc_logvar = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
    dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())
    params = [p for m in (enc, enc_mu, enc_logvar, dec) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    def step():
        opt.zero_grad(set_to_none=True)
        h = F.relu(enc(images))
        mu, logvar = enc_mu(h), enc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x_hat = dec(z)
        bce = F.binary_cross_entropy(x_hat, images, reduction="sum") / batch
        kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp()) / batch
        (bce + kl).backward()
        opt.step()
else:
    G = nn.Sequential(nn.Linear(64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
                      nn.Linear(256, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                      nn.Linear(512, 784), nn.Sigmoid())
    D = nn.Sequential(nn.Linear(784, 512), nn.LeakyReLU(0.2), nn.Dropout(0.3),
                      nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(256, 1))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    def step():
        with torch.no_grad():
            fake = G(torch.randn(batch, 64))
        opt_d.zero_grad(set_to_none=True)
        real = D(images)
        (0.9 * F.softplus(-real) + 0.1 * F.softplus(real) + F.softplus(D(fake))).mean().backward()
        opt_d.step()
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        F.softplus(-D(G(torch.randn(batch, 64)))).mean().backward()
        opt_g.step()
        D.requires_grad_(True)
for _ in range(warmup):
    step()
steps, start = 0, clock()
while clock() - start < seconds:
    step(); steps += 1
print(json.dumps({"samples_per_s": steps * batch / (clock() - start), "steps": steps}))
"""


def measure(side: str, which: str, seconds: float, threads: int, cpu_time: bool) -> dict:
    """One measurement in a fresh process (`side`: netlang or torch)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    if side == "torch":
        argv = [sys.executable, "-c", TORCH_SCRIPT, which, str(MODELS[which][1]),
                str(seconds), str(threads), str(WARMUP_STEPS), "cpu" if cpu_time else "wall"]
    else:
        argv = [sys.executable, os.path.abspath(__file__), "--child", which,
                "--seconds", str(seconds)] + (["--cpu-time"] if cpu_time else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{side} {which} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    """Print each model's samples/s on both sides and netlang's ratio to PyTorch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", choices=sorted(MODELS))
    parser.add_argument("--cpu-time", action="store_true",
                        help="samples per CPU-second, one thread each (see the docstring)")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(netlang_rate(args.child, args.seconds, args.cpu_time)))
        return
    if args.cpu_time:
        args.threads = 1
    print(f"threads: {args.threads} (NUMBA, OpenBLAS and torch alike)   "
          f"clock: {'CPU time' if args.cpu_time else 'wall'}   "
          f"load average at start: {os.getloadavg()[0]:.1f}")
    for which in [args.only] if args.only else sorted(MODELS, reverse=True):
        rates = {"netlang": [], "torch": []}
        for _ in range(args.rounds):
            for side in rates:
                rates[side].append(measure(side, which, args.seconds, args.threads,
                                           args.cpu_time)["samples_per_s"])
        ours, theirs = statistics.median(rates["netlang"]), statistics.median(rates["torch"])
        print(f"{which} (batch {MODELS[which][1]}): netlang {ours:,.0f} samples/s, "
              f"PyTorch {theirs:,.0f} samples/s, ratio {ours / theirs:.2f}x   "
              f"(rounds: netlang {', '.join(f'{r:,.0f}' for r in rates['netlang'])}; "
              f"PyTorch {', '.join(f'{r:,.0f}' for r in rates['torch'])}; "
              f"load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
