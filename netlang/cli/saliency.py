"""`netlang saliency FILE INPUT --weights RUN`: a PNG of each input example beside the
gradient of its class score (the computation is netlang.saliency's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from netlang.cli.common import positive_int
from netlang.cli.trained import (
    add_weights_arguments,
    load_model,
    read_input,
    saved_normalization,
    standardized,
)
from netlang.errors import UsageError
from netlang.saliency import PICTURE_HEIGHT, saliency, saliency_picture
from netlang.train.png import write_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang saliency`."""
    parser.description = (
        "Compute the gradient of a class score (the first output before its softmax: the "
        "logit) with respect to the input, and write a PNG with each example beside its "
        "saliency map (absolute gradient, maximum over channels, scaled to 0..255).")
    parser.add_argument("file", help="the .net file")
    parser.add_argument("input", help="an .npy array (one example or a batch) or a PNG image")
    add_weights_arguments(parser)
    parser.add_argument("-o", "--output", help="the PNG to write (default: "
                                               "<input name>_saliency.png)")
    parser.add_argument("--class", type=int, dest="target", metavar="K",
                        help="explain class K instead of the top-scoring class")
    parser.add_argument("--zoom", type=positive_int,
                        help="enlarge each pixel to ZOOM×ZOOM (default: about "
                             f"{PICTURE_HEIGHT} pixels per example)")


def run(args: argparse.Namespace) -> int:
    """Write the picture; print each example's class and score."""
    model, _ = load_model(args)
    binding = model.binding
    if binding.data_input is None:
        raise UsageError("this model has several data inputs; compute saliency from Python "
                         "with a dict (Model.saliency)")
    shape, _ = binding.inputs[binding.data_input]
    x = read_input(args.input, shape)
    norm = saved_normalization(args.weights, shape)
    # The run standardized its inputs: so does the gradient's input.
    result = saliency(model.engine, model.graph, {binding.data_input: standardized(x, norm, shape)},
                      args.target)
    gradient = result.gradients[binding.data_input]
    if norm is not None:  # chain rule back to the raw input
        gradient = gradient / norm["std"].reshape(shape)
    output = Path(args.output or f"{Path(args.input).stem}_saliency.png")
    if output.suffix.lower() != ".png":
        raise UsageError(f"-o {output}: the saliency map is written as a PNG (end it in .png)")
    write_png(output, saliency_picture(x, gradient, zoom=args.zoom))
    for i, (cls, value) in enumerate(zip(result.classes, result.scores)):
        where = f"example {i}: " if len(x) > 1 else ""
        print(f"{where}class {int(cls)} (score {float(value):.4f} in `{result.score}`)")
    print(f"wrote {output}")
    return 0
