"""`netlang check FILE`: compile a .net file and print the summary of its layers."""

from __future__ import annotations

import argparse
import json

from netlang.cli.common import compile_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang check`."""
    parser.add_argument("file", help="the .net file (- reads standard input)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the summary (a table, or JSON with `--json`)."""
    summary = compile_model(args.file).summary()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.render(title=f"{args.file}"))
    return 0
