"""`netlang import model.onnx -o model.net`: an ONNX model as a .net file and its weights."""

from __future__ import annotations

import argparse

from netlang.api import import_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang import`."""
    parser.add_argument("file", help="the ONNX file to read")
    parser.add_argument("-o", "--output", required=True, help="the .net file to write")
    parser.add_argument("--weights-out", help="write the ONNX model's weights as this run "
                                              "directory (or .safetensors file)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing output file or run directory")


def run(args: argparse.Namespace) -> int:
    """Write the file (and the weights) and say what was written."""
    model = import_onnx(args.file, args.output, weights_out=args.weights_out, force=args.force,
                        device="reference")
    count = sum(array.size for array in {**model.parameters(), **model.buffers()}.values())
    outputs = len(model.graph.graph["outputs"])
    where = f"weights in {args.weights_out}" if args.weights_out else \
        "weights not written (--weights-out RUN writes them)"
    print(f"wrote {args.output} ({outputs} output{'s' if outputs != 1 else ''}, {count:,} "
          f"weights; {where})")
    return 0
