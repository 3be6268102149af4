"""Pictures of what a trained model makes: reconstructions, and samples of generative models.

A model counts as an autoencoder when one of its losses compares a prediction with one
of the model's own data inputs of the same shape, as `binary_cross_entropy(reconstruction,
image)` does.  Nothing else is assumed about it, so a dense autoencoder of flattened
digits and a convolutional one are treated alike.  Training writes `reconstructions.png`
into the run directory for such a model: a row of inputs over the row of their
reconstructions (see netlang/train/image_grid.py for how examples become pictures).

A model with an output computed from noise inputs alone (a GAN's generator, a VAE's
decoder fed the prior) also gets `samples.png`: 64 samples of that output, drawn as
`netlang sample --count 64 --seed 0` draws them (netlang/sampling/noise.py), one picture
per such output (`samples_NAME.png` when there are several).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from netlang.errors import UsageError
from netlang.sampling.noise import NoiseModel, draw_samples, noise_outputs, sample_grid
from netlang.train.image_grid import as_picture, display_range, image_grid, to_uint8
from netlang.train.metrics import compares_prediction
from netlang.train.png import write_png

RECONSTRUCTIONS_FILE = "reconstructions.png"
EXAMPLES = 8  # one row of inputs over one row of reconstructions
SAMPLES_FILE = "samples.png"
SAMPLES = 64  # an 8×8 grid
SAMPLES_SEED = 0  # the same picture for the same weights, whatever the run's seed


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
    arrays = next(a for a in (prepared.test, prepared.val, prepared.train) if a)
    return write_png(Path(out) / RECONSTRUCTIONS_FILE,
                     reconstruction_grid(engine, graph, arrays))


def write_samples(out, engine, graph, binding) -> list[Path]:
    """Write `out`/samples.png (see the module docstring) for each output of `graph` computed
    from noise inputs alone; the paths written, none for a model without such an output."""
    outputs = noise_outputs(graph, binding) if binding.noise_inputs else {}
    written = []
    for name, noise in outputs.items():
        samples = draw_samples(engine, NoiseModel(name, noise), SAMPLES, SAMPLES_SEED)
        file = SAMPLES_FILE if len(outputs) == 1 else f"samples_{name}.png"
        written.append(write_png(Path(out) / file, sample_grid(samples)))
    return written
