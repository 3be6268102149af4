"""The bigram baseline of a character corpus: the loss a character model has to beat.

    python benchmarks/char_bigram.py CORPUS.txt [--steps 64] [--vocab 96]

Cuts CORPUS.txt into the windows `netlang train MODEL --data text:CORPUS.txt` trains on (a model
reading `--steps` characters through an embedding of `--vocab` ids: examples/char_lstm.net's
64 and 96 by default), counts character pairs on the training split and prints the test
split's loss, in nats and bits per character, for a few additive smoothings (the best one is
the baseline: a held-out choice, which flatters the bigram, not the model).  Compare it with
the `test_loss` and `test_bpc` that `netlang train` or `netlang eval` report for the model.
"""

from __future__ import annotations

import argparse
import math

from netlang.data.text import bigram_loss, read_text

SMOOTHINGS = (0.01, 0.05, 0.1, 0.5, 1.0)


def main() -> None:
    """Print the bigram's held-out loss for each smoothing, then the best."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="a UTF-8 text file")
    parser.add_argument("--steps", type=int, default=64, help="characters per window")
    parser.add_argument("--vocab", type=int, default=96, help="character ids of the model")
    args = parser.parse_args()
    corpus = read_text(args.corpus)
    windows = corpus.windows(args.steps, corpus.vocabulary(args.vocab))
    print(f"{corpus.name}: {len(corpus.text):,} characters, {len(windows.x_train):,} training "
          f"and {len(windows.x_test):,} test windows of {args.steps}")
    losses = {smoothing: bigram_loss(windows, smoothing=smoothing) for smoothing in SMOOTHINGS}
    for smoothing, loss in losses.items():
        print(f"  smoothing {smoothing:<5}  test loss {loss:.4f} nats/char  "
              f"{loss / math.log(2):.4f} bits/char")
    best = min(losses, key=losses.get)
    print(f"bigram baseline: {losses[best]:.4f} nats/char, {losses[best] / math.log(2):.4f} "
          f"bits/char (smoothing {best})")


if __name__ == "__main__":
    main()
