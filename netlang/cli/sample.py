"""`netlang sample FILE --weights RUN`: samples of a generative model (its noise inputs drawn),
written as an array or a picture, or text a character model writes after a prime (the
sampling itself is netlang/sampling/'s, through `Model.sample`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from netlang.cli.common import positive_int
from netlang.cli.trained import add_weights_arguments, load_model
from netlang.errors import UsageError
from netlang.sampling import sample_grid
from netlang.train.png import write_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang sample`."""
    parser.description = (
        "For a model with noise inputs (`input z: [64] ~ normal`): draw COUNT samples of the "
        "output computed from the noise alone and write them with -o, as a float32 array "
        "(.npy, one sample per row, the output's shape) or a picture grid (.png). For a "
        "character model: print the prime, then LENGTH characters the model writes after it: "
        "each drawn from the model's probabilities at TEMPERATURE and fed back, the recurrent "
        "state carried from one character to the next. Characters are read and written with "
        "the vocabulary saved in the run directory (else printable ASCII and newline).")
    parser.add_argument("file", help="the .net file")
    add_weights_arguments(parser)
    parser.add_argument("--seed", type=int, metavar="S",
                        help="the same seed gives the same samples or text (default: a fresh one)")
    noise = parser.add_argument_group("models with noise inputs")
    noise.add_argument("--count", type=positive_int, metavar="N",
                       help="samples to draw (default 64)")
    noise.add_argument("-o", "--out", metavar="PATH",
                       help="where to write them: a .npy array or a .png grid")
    noise.add_argument("--output", metavar="NAME",
                       help="the output to sample, when several are computed from noise alone")
    text = parser.add_argument_group("character models")
    text.add_argument("--prime", help="the text to continue (default: a newline)")
    text.add_argument("--length", type=positive_int, default=200, metavar="N",
                      help="characters to generate (default 200)")
    text.add_argument("--temperature", type=float, default=1.0, metavar="T",
                      help="below 1 more likely characters, above 1 more varied ones; "
                           "0 always the most likely (default 1)")
    text.add_argument("--top-k", type=positive_int, metavar="K",
                      help="draw only among the K most likely characters")


def run(args: argparse.Namespace) -> int:
    """Write the samples of a model with noise inputs, or print a character model's text."""
    model, _ = load_model(args)
    if model.binding.noise_inputs:
        suffix = Path(args.out).suffix.lower() if args.out else ""
        if suffix not in (".npy", ".png"):
            raise UsageError("samples of a model with noise inputs are written to a file: "
                             "-o samples.npy (an array) or -o samples.png (a picture grid)")
        samples = model.sample(count=args.count, output=args.output, seed=args.seed)
        if suffix == ".npy":
            np.save(args.out, samples)
        else:
            write_png(args.out, sample_grid(samples))
        print(f"wrote {len(samples)} samples of shape {samples.shape[1:]} to {args.out}")
        return 0
    if args.count is not None or args.out is not None or args.output is not None:
        raise UsageError("--count, -o and --output sample a model with noise inputs "
                         "(`input z: [64] ~ normal`); this model has none")
    prime = "\n" if args.prime is None else args.prime
    text = model.sample(prime, length=args.length, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed)
    sys.stdout.write(prime + text + ("" if text.endswith("\n") else "\n"))
    return 0
