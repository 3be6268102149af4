"""`netlang export MODEL -o model.onnx`: a model's inference pass as an ONNX file."""

from __future__ import annotations

import argparse

from netlang.cli.common import compile_model, positive_int
from netlang.interchange import DEFAULT_OPSET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang export`."""
    parser.add_argument("file", help="the .net file (- reads standard input)")
    parser.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    parser.add_argument("--weights", help="a run directory or .safetensors file (default: the "
                                          "model's initial weights from its seed)")
    parser.add_argument("--force", action="store_true", help="use weights of a changed .net file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"the ONNX opset to write (default {DEFAULT_OPSET})")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="leave the batch axis free (named `batch`) instead of --batch")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="the fixed batch size of the inputs and outputs (default 1)")


def run(args: argparse.Namespace) -> int:
    """Write the file and say what was written."""
    model = compile_model(args.file)
    # The NumPy engine holds the weights: exporting compiles no kernels.
    model.device = "reference"
    if args.weights:
        model.load_weights(args.weights, force=args.force)
    path = model.export(args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                        batch=args.batch)
    print(f"wrote {path} (opset {args.opset}; weights: {args.weights or 'initial'})")
    return 0
