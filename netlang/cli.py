"""The `netlang` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from netlang.errors import NetlangError


def _compile(path):
    from netlang.api import compile as compile_model
    return compile_model(os.fspath(path) if path != "-" else sys.stdin.read())


def cmd_check(args) -> int:
    model = _compile(args.file)
    summary = model.summary()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.render(title=f"{args.file}"))
    return 0


def cmd_graph(args) -> int:
    from netlang.ir.dot import write_graph
    model = _compile(args.file)
    message = write_graph(model.graph, args.output, params=args.params)
    if message:
        print(message)
    return 0


def cmd_fmt(args) -> int:
    from netlang.frontend.format import format_source
    from netlang.frontend.parser import read_source
    source = read_source(args.file)
    formatted = format_source(source, args.file)
    if args.check:
        if formatted != source:
            print(f"{args.file}: would be reformatted", file=sys.stderr)
            return 1
        return 0
    if args.write:
        from netlang.weights import atomic_write
        if formatted != source:
            atomic_write(args.file, lambda handle: handle.write(formatted.encode("utf-8")))
        return 0
    sys.stdout.write(formatted)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `netlang train: error: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netlang", description="Compile, check, train and run neural networks written in .net files.")
    parser.add_argument("--version", action="version", version=f"netlang {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="check a .net file and print a summary of its layers")
    check.add_argument("file", help="the .net file")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(run=cmd_check)

    graph = sub.add_parser("graph", help="draw the computation graph (DOT, SVG or PNG)")
    graph.add_argument("file")
    graph.add_argument("-o", "--output", required=True,
                       help="out.dot, out.svg or out.png (SVG/PNG need Graphviz's `dot`)")
    graph.add_argument("--params", action="store_true",
                       help="draw parameters as nodes of their own instead of in their layer's label")
    graph.set_defaults(run=cmd_graph)

    fmt = sub.add_parser("fmt", help="print a .net file in canonical form")
    fmt.add_argument("file")
    fmt.add_argument("-w", "--write", action="store_true", help="rewrite the file in place")
    fmt.add_argument("--check", action="store_true",
                     help="exit 1 if the file is not in canonical form")
    fmt.set_defaults(run=cmd_fmt)

    from netlang.train.commands import add_commands
    add_commands(sub)  # train, eval, predict
    from netlang.bench import add_command as add_bench
    add_bench(sub)
    from netlang.saliency import add_command as add_saliency
    add_saliency(sub)
    return parser


def _version() -> str:
    from netlang import __version__
    return __version__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except NetlangError as error:
        print(error.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netlang: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as error:  # e.g. a run directory that cannot be written
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
