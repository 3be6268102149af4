"""What several commands share: flag types and choices, and reading the model a command names."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from netlang.api import Model
from netlang.api import compile as compile_source
from netlang.data import BUILTIN_SETS

DEVICES = ("cpu", "cuda", "auto", "reference")
NORMALIZE = ("auto", "scale", "standardize", "none")
DATA_HELP = ("mnist, xor, blobs, spirals, first_element, FILE.npz, FILE.csv, text:FILE.txt or "
             "folder:PATH (images in train/<class>/, test/<class>/)")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got `{text}`") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def number(text: str) -> str:
    """argparse type: text that reads as a number, kept as text (train-section syntax)."""
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got `{text}`") from None
    return text


def data_set(text: str) -> str:
    """argparse type for `--data`: a built-in set's name in its canonical spelling.

    The data loader reads built-in names in any case (`MNIST`, `Xor`); spelling them
    its way here keeps run.json and what `eval` prints the same whichever case was typed.
    Paths stay as given."""
    name = text.strip().lower()
    return name if name in BUILTIN_SETS else text


def add_device(parser: argparse.ArgumentParser, **options) -> None:
    """The `--device` flag, with the same choices on every command."""
    options.setdefault("help", "cpu (default; compiled with Numba), cuda, auto (cuda when a "
                               "GPU is present) or reference (the NumPy engine)")
    parser.add_argument("--device", choices=DEVICES, **options)


def compile_model(path: str) -> Model:
    """The model in the .net file at `path` (`-`: source text on standard input)."""
    if path == "-":
        return compile_source(sys.stdin.read())
    # A Path is always read as a file: a missing one is `no such file`, never source text.
    return compile_source(Path(os.fspath(path)))
