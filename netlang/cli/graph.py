"""`netlang graph FILE -o OUT`: draw a model's computation graph as DOT, SVG or PNG."""

from __future__ import annotations

import argparse

from netlang.cli.common import compile_model
from netlang.ir.dot import write_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang graph`."""
    parser.add_argument("file", help="the .net file (- reads standard input)")
    parser.add_argument("-o", "--output", required=True,
                        help="out.dot, out.svg or out.png (SVG/PNG need Graphviz's `dot`)")
    parser.add_argument("--params", action="store_true",
                        help="draw parameters as nodes of their own instead of in their "
                             "layer's label")


def run(args: argparse.Namespace) -> int:
    """Write the drawing; print what the writer reports (e.g. DOT kept when Graphviz is absent)."""
    message = write_graph(compile_model(args.file).graph, args.output, params=args.params)
    if message:
        print(message)
    return 0
