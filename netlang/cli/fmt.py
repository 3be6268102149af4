"""`netlang fmt FILE`: print, check or rewrite a .net file in canonical form."""

from __future__ import annotations

import argparse
import sys

from netlang.frontend.format import format_source
from netlang.frontend.parser import read_source
from netlang.weights import atomic_write


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang fmt`."""
    parser.add_argument("file", help="the .net file")
    parser.add_argument("-w", "--write", action="store_true", help="rewrite the file in place")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file is not in canonical form")


def run(args: argparse.Namespace) -> int:
    """Print the canonical form; with `--check` only say whether it differs, with `--write`
    replace the file (atomically, and only when it changes)."""
    source = read_source(args.file)
    formatted = format_source(source, args.file)
    if args.check:
        if formatted != source:
            print(f"{args.file}: would be reformatted", file=sys.stderr)
            return 1
        return 0
    if args.write:
        if formatted != source:
            atomic_write(args.file, lambda handle: handle.write(formatted.encode("utf-8")))
        return 0
    sys.stdout.write(formatted)
    return 0
