"""`netlang sample FILE --weights RUN`: text a character model writes after a prime (the
sampling itself is netlang/sampling/'s, through `Model.sample`)."""

from __future__ import annotations

import argparse
import sys

from netlang.cli.common import positive_int
from netlang.cli.trained import add_weights_arguments, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang sample`."""
    parser.description = (
        "Print the prime, then LENGTH characters a character model writes after it: each "
        "drawn from the model's probabilities at TEMPERATURE and fed back, the recurrent "
        "state carried from one character to the next. Characters are read and written with "
        "the vocabulary saved in the run directory (else printable ASCII and newline).")
    parser.add_argument("file", help="the .net file")
    add_weights_arguments(parser)
    parser.add_argument("--prime", default="\n",
                        help="the text to continue (default: a newline)")
    parser.add_argument("--length", type=positive_int, default=200, metavar="N",
                        help="characters to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="below 1 more likely characters, above 1 more varied ones; "
                             "0 always the most likely (default 1)")
    parser.add_argument("--top-k", type=positive_int, metavar="K",
                        help="draw only among the K most likely characters")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="the same seed gives the same text (default: a fresh one)")


def run(args: argparse.Namespace) -> int:
    """Print the prime followed by the generated text."""
    model, _ = load_model(args)
    text = model.sample(args.prime, length=args.length, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed)
    sys.stdout.write(args.prime + text + ("" if text.endswith("\n") else "\n"))
    return 0
