"""`netlang warmup FILE`: compile every kernel a training run and inference of a model need
into the disk caches, without data, so the next `netlang train` starts at warm speed (the
work is netlang.train.warmup's)."""

from __future__ import annotations

import argparse
import json

from netlang.bench import DTYPES
from netlang.cli.common import add_device, compile_model, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang warmup`."""
    parser.description = (
        "Compile the programs a training run of the model calls (the training step, the "
        "evaluation pass) and its inference pass, into netlang's kernel cache and Numba's "
        "disk cache, then say what was compiled and how long it took.  A later run with the "
        "same caches, settings and NUMBA_NUM_THREADS compiles nothing.")
    parser.add_argument("file", help="the .net file")
    parser.add_argument("--batch", type=positive_int,
                        help="examples per training batch (default: the train section's; the "
                             "CPU engine compiles the same programs for every batch size)")
    add_device(parser, default="cpu",
               help="the engine to compile for: cpu (default) or auto (cuda when a GPU is "
                    "present); the cuda engine compiles each kernel at its first launch and "
                    "reference compiles nothing, so neither has anything to warm up")
    parser.add_argument("--processes", type=positive_int, default=1,
                        help="the MPI processes the run will have (`mpiexec -n N netlang "
                             "train`): compiles each one's gradient pass and the update "
                             "instead of the training step; run it with the processes' "
                             "NUMBA_NUM_THREADS")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="floating-point width of weights and activations")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Compile, then print the report (or JSON with `--json`)."""
    # Each program's line as it is made ready (minutes for a convolutional model), then the total.
    done = compile_model(args.file).warmup(batch=args.batch, device=args.device,
                                           dtype=args.dtype, processes=args.processes,
                                           verbose=not args.json)
    print(json.dumps(done.to_json()) if args.json else done.lines()[-1])
    return 0
