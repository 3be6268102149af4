"""Which input values a class score is most sensitive to (`Model.saliency`; the
`netlang saliency` command draws it, netlang/cli/saliency.py).

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

import numpy as np

from netlang.errors import UsageError
from netlang.ops import get_op
from netlang.train.image_grid import GAP, as_picture, display_range, enlarge, image_grid, to_uint8

PICTURE_HEIGHT = 128  # small inputs are enlarged to about this many pixels per example


@dataclasses.dataclass
class Saliency:
    """What `saliency` returns: per-input gradients, and each example's class and its score."""

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
    if get_op(graph.op(node)).normalises_scores:  # softmax, sigmoid: their input is the logit
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

