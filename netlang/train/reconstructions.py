"""Autoencoders: which output reconstructs which input, and a picture of how well it does.

A model counts as an autoencoder when one of its losses compares a prediction with one
of the model's own data inputs of the same shape, as `binary_cross_entropy(reconstruction,
image)` does.  Nothing else is assumed about it, so a dense autoencoder of flattened
digits and a convolutional one are treated alike.  Training writes `reconstructions.png`
into the run directory for such a model: a row of inputs over the row of their
reconstructions (see netlang/train/image_grid.py for how examples become pictures).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from netlang.errors import UsageError
from netlang.train.image_grid import as_picture, display_range, image_grid, to_uint8
from netlang.train.metrics import compares_prediction

RECONSTRUCTIONS_FILE = "reconstructions.png"
EXAMPLES = 8  # one row of inputs over one row of reconstructions


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """A loss that compares `prediction` (a node name) with the data input `input`."""

    prediction: str
    input: str
    logits: bool  # the prediction is a logit (`binary_cross_entropy(..., logits = true)`)


def find_reconstruction(graph) -> Reconstruction | None:
    """The first loss of `graph` that reconstructs one of its data inputs, if any."""
    losses = [loss for loss, _ in graph.graph.get("losses") or []]
    for loss in losses:
        if not compares_prediction(graph, loss):
            continue
        prediction, target = graph.operands(loss)
        target_data = graph.nodes[target]
        if target_data["op"] != "input" or not graph.type_of(target).is_float:
            continue
        # A data input feeds the network too; a label input feeds only losses.
        if all(user in losses for user in graph.successors(target)):
            continue
        if tuple(graph.type_of(prediction).shape[1:]) != tuple(graph.type_of(target).shape[1:]):
            continue
        return Reconstruction(graph.nodes[prediction]["name"], target_data["name"],
                              bool(graph.nodes[loss]["attrs"].get("logits", False)))
    return None


def reconstruction_grid(engine, graph, arrays: dict, count: int = EXAMPLES) -> np.ndarray:
    """A uint8 image: the first `count` examples of `arrays` ({input name: array}) in a
    row, their reconstructions (evaluation mode) in the row below."""
    found = find_reconstruction(graph)
    if found is None:
        raise UsageError("this model reconstructs none of its inputs: no loss compares an "
                         "output with an input of the same shape")
    feeds = {name: np.asarray(a)[:count] for name, a in arrays.items()}
    if found.input not in feeds:
        raise UsageError(f"no data for input `{found.input}`")
    inputs = feeds[found.input]
    outputs = engine.forward(feeds, "eval", outputs=[found.prediction])[found.prediction]
    outputs = np.asarray(outputs, dtype=np.float64)
    if found.logits:
        outputs = 1.0 / (1.0 + np.exp(-outputs))
    low, high = display_range(inputs, outputs)
    top = [to_uint8(as_picture(x), low, high) for x in inputs]
    bottom = [to_uint8(as_picture(y), low, high) for y in outputs]
    return image_grid([top, bottom])


def write_reconstructions(out, engine, graph, prepared) -> Path | None:
    """Write `out`/reconstructions.png from the test split (else validation, else training)
    of `prepared` (a netlang.train.loop.PreparedData); None for a model that is no
    autoencoder."""
    if find_reconstruction(graph) is None:
        return None
    from netlang.train.png import write_png
    arrays = next(a for a in (prepared.test, prepared.val, prepared.train) if a)
    return write_png(Path(out) / RECONSTRUCTIONS_FILE,
                     reconstruction_grid(engine, graph, arrays))
