"""`netlang saliency`: which input values a class score is most sensitive to.

The saliency of an input is the gradient of one class score with respect to it
(Simonyan, Vedaldi and Zisserman, 2013).  The score is the model's first output read
before its softmax or sigmoid (the logit), since the probabilities saturate; the class
is the top-scoring one, or one the caller names.  The engine computes the gradient as
a vector-Jacobian product (`engine.vjp`) seeded with the one-hot of that class, in
evaluation mode and through every layer, convolutions included; weights never change.

The picture shows each example beside its map: the absolute gradient, its maximum over
channels, scaled so that each map's largest value is white.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from netlang.errors import UsageError
from netlang.train.image_grid import (GAP, as_picture, display_range, enlarge, image_grid,
                                      to_uint8)

# An output computed by one of these is read before it: their input is the logit.
SCORE_ACTIVATIONS = ("softmax", "log_softmax", "sigmoid")
PICTURE_HEIGHT = 128  # small inputs are enlarged to about this many pixels per example


@dataclasses.dataclass
class Saliency:
    gradients: dict      # input name → d score / d input, shaped like the input's batch
    classes: np.ndarray  # the class whose score was differentiated, per example
    scores: np.ndarray   # that class's score, per example
    score: str           # the node whose values are the scores


def score_node(graph) -> str:
    """The name of the node holding the class scores: the first output, before its softmax
    or sigmoid."""
    if not graph.graph["outputs"]:
        raise UsageError("this model has no output to explain")
    name, node = next(iter(graph.graph["outputs"].items()))
    if graph.op(node) in SCORE_ACTIVATIONS:
        node = graph.operands(node)[0]
        name = graph.nodes[node]["name"]
    shape = graph.type_of(node).shape
    if len(shape) > 2:
        raise UsageError(f"saliency needs one score per class and example, but `{name}` has "
                         f"shape {tuple(shape[1:])} per example")
    return name


def saliency(engine, graph, arrays: dict, target=None) -> Saliency:
    """The gradient of each example's class score with respect to the float inputs in
    `arrays` ({input name: batch}).  `target` is None (each example's top class), a class
    index, or one index per example."""
    score = score_node(graph)
    if not any(graph.type_of(graph.graph["inputs"][name]).is_float for name in arrays
               if name in graph.graph["inputs"]):
        raise UsageError("saliency differentiates with respect to float inputs, and this "
                         "model's inputs hold integers (token ids, labels)")
    values = np.asarray(engine.forward(arrays, "eval", outputs=[score])[score])
    batch = len(values)
    scores = values.reshape(batch, -1)  # a single score per example becomes one class
    classes = scores.shape[1]
    if target is None:
        chosen = scores.argmax(axis=1)
    else:
        chosen = np.asarray(target)
        if chosen.ndim > 1 or chosen.size not in (1, batch) \
                or not np.issubdtype(chosen.dtype, np.integer):
            raise UsageError(f"target must be a class index or one per example ({batch}), "
                             f"got {target!r}")
        chosen = np.broadcast_to(chosen.reshape(-1), (batch,)).astype(np.int64)
        wrong = chosen[(chosen < 0) | (chosen >= classes)]
        if wrong.size:
            raise UsageError(f"class {int(wrong[0])} is out of range: `{score}` has {classes} "
                             f"score(s) per example, 0..{classes - 1}")
    cotangent = np.zeros((batch, classes), dtype=engine.dtype)
    cotangent[np.arange(batch), chosen] = 1  # one-hot: the chosen score alone
    gradients = engine.vjp(arrays, score, cotangent.reshape(values.shape))
    return Saliency(gradients, chosen, scores[np.arange(batch), chosen], score)


def saliency_picture(inputs, gradients, *, zoom: int | None = None) -> np.ndarray:
    """A uint8 image: one row per example, the example beside its saliency map.

    `zoom` enlarges each pixel to zoom × zoom (default: enough for about
    PICTURE_HEIGHT pixels per example)."""
    inputs, gradients = np.asarray(inputs), np.asarray(gradients)
    low, high = display_range(inputs)
    rows = []
    for x, g in zip(inputs, gradients):
        magnitude = np.abs(g.astype(np.float64))
        if magnitude.ndim == 3:
            magnitude = magnitude.max(axis=-1)  # the strongest channel per pixel
        peak = float(magnitude.max())
        rows.append([to_uint8(as_picture(x), low, high),
                     to_uint8(as_picture(magnitude), 0.0, peak if peak > 0 else 1.0)])
    if zoom is None:
        zoom = max(1, PICTURE_HEIGHT // rows[0][0].shape[0])
    return image_grid([[enlarge(cell, zoom) for cell in row] for row in rows],
                      gap=max(GAP, zoom))  # the gap grows with the cells, to stay visible


# ---------------------------------------------------------------------------------------------
# The command line (registered by netlang.cli)


def add_command(sub) -> None:
    from netlang.train.commands import DEVICES, positive_int
    parser = sub.add_parser(
        "saliency", help="draw which input pixels the predicted class depends on",
        description="Compute the gradient of a class score (the first output before its "
                    "softmax: the logit) with respect to the input, and write a PNG with "
                    "each example beside its saliency map (absolute gradient, maximum over "
                    "channels, scaled to 0..255).")
    parser.add_argument("file", help="the .net file")
    parser.add_argument("input", help="an .npy array (one example or a batch) or a PNG image")
    parser.add_argument("--weights", required=True, help="a run directory or .safetensors file")
    parser.add_argument("-o", "--output", help="the PNG to write (default: "
                                               "<input name>_saliency.png)")
    parser.add_argument("--class", type=int, dest="target", metavar="K",
                        help="explain class K instead of the top-scoring class")
    parser.add_argument("--zoom", type=positive_int,
                        help="enlarge each pixel to ZOOM×ZOOM (default: about "
                             f"{PICTURE_HEIGHT} pixels per example)")
    parser.add_argument("--force", action="store_true", help="use weights of a changed .net file")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.set_defaults(run=cmd_saliency)


def cmd_saliency(args) -> int:
    from netlang.train.commands import load_model, saved_normalization, read_input
    from netlang.train.png import write_png
    model, _ = load_model(args)
    binding = model.binding
    if binding.data_input is None:
        raise UsageError("this model has several data inputs; compute saliency from Python "
                         "with a dict (Model.saliency)")
    shape, _ = binding.inputs[binding.data_input]
    x = read_input(args.input, shape)
    feed = x
    norm = saved_normalization(args.weights)
    if norm is not None:  # the run standardized its inputs: so does the gradient's input
        feed = (x - norm["mean"].reshape(shape)) / norm["std"].reshape(shape)
    result = saliency(model.engine, model.graph, {binding.data_input: feed}, args.target)
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
