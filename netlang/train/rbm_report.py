"""Energy-based layers (RBMs) judged on their own: reconstruction error, and pictures of
their filters and of Gibbs samples.

A layer whose op has a `visible_model` (an RBM: netlang/ops/rbm.py) models the values it
reads, its visible units.  For each such layer:

- `reconstruction_errors` is the mean squared error between the visible units v and their
  reconstruction p(v | h) after one up-down pass with h at p(h = 1 | v), over every example
  and visible unit of a set: what `netlang eval` reports as `reconstruction_error`.  (No
  pseudo-likelihood or AIS estimate: a one-bit pseudo-likelihood is a noisy proxy for the
  likelihood, and AIS needs tuned temperature schedules to be trusted; neither is reported.)
- `write_rbm_pictures` writes `filters_LAYER.png`, each hidden unit's weights as a tile
  (28×28 for 784 visible units; for other counts a tile as square as the count allows), and
  `gibbs_LAYER.png`, chains started at the first test examples, one row per snapshot after
  GIBBS_SNAPSHOTS steps (the top row is the start).

Both compute in NumPy (float64) from the engine's parameters, whatever the engine.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from netlang.ops import get_op
from netlang.ops.norm import draw_dropout_key
from netlang.train.binding import count_examples, take_examples
from netlang.train.evaluation import forward_nodes
from netlang.train.image_grid import display_range, image_grid, to_uint8
from netlang.train.png import write_png

CHAINS = 10                          # Gibbs chains in a picture, one per column
GIBBS_SNAPSHOTS = (0, 1, 3, 10, 30, 100)   # the steps after which each row shows the chains
PICTURES_SEED = 0                    # the same samples for the same weights


@dataclasses.dataclass
class VisibleLayer:
    """A layer that models its input: its name, the node it reads, its parameters' names
    (in the order its model takes them) and its model (the op's `visible_model`)."""

    name: str
    input: str
    params: tuple
    model: object


def visible_layers(graph) -> list[VisibleLayer]:
    """The layers of `graph` whose op models its input, in graph order."""
    found = []
    for node in graph.topological_order():
        data = graph.nodes[node]
        make_model = get_op(data["op"]).visible_model
        if make_model is None:
            continue
        operands = graph.operands(node)
        # The parameters follow the input; a persistent chain buffer, if any, is no parameter.
        params = tuple(graph.nodes[n]["name"] for n in operands[1:4])
        found.append(VisibleLayer(data["layer"] or data["name"], graph.nodes[operands[0]]["name"],
                                  params, make_model(data["attrs"])))
    return found


def _visible_values(engine, graph, layers, feeds: dict) -> dict:
    """Layer input name → its values for one batch (evaluation mode): a model input as fed,
    any other node computed by the engine."""
    inputs = graph.graph["inputs"]
    computed = [layer.input for layer in layers if layer.input not in inputs]
    values = forward_nodes(engine, feeds, list(dict.fromkeys(computed))) if computed else {}
    return {layer.input: np.asarray(feeds[layer.input] if layer.input in inputs
                                    else values[layer.input], dtype=np.float64)
            for layer in layers}


def _params(engine, layer: VisibleLayer) -> list:
    return [np.asarray(engine.params[name], dtype=np.float64) for name in layer.params]


def reconstruction_errors(engine, graph, arrays: dict, batch_size: int = 256) -> dict:
    """Layer name → mean squared error of its visible units against their one-pass
    reconstruction, over every example of `arrays` and every visible unit (see the module
    docstring); {} for a model without such layers."""
    layers = visible_layers(graph)
    if not layers:
        return {}
    params = {layer.name: _params(engine, layer) for layer in layers}
    totals = {layer.name: 0.0 for layer in layers}
    counts = {layer.name: 0 for layer in layers}
    n = count_examples(arrays)
    for start in range(0, n, batch_size):
        feeds = take_examples(arrays, slice(start, start + batch_size))
        visible = _visible_values(engine, graph, layers, feeds)
        for layer in layers:
            v = visible[layer.input]
            v = v.reshape(len(v), -1)
            error = v - layer.model.reconstruction(v, *params[layer.name])
            totals[layer.name] += float(np.square(error).sum())
            counts[layer.name] += error.size
    return {name: totals[name] / counts[name] for name in totals if counts[name]}


def tile_shape(units: int) -> tuple[int, int]:
    """(height, width) of a tile showing `units` values: a square for a perfect square
    (784 → 28×28), else rows of ⌈√units⌉ (500 → 22×23, the last cells left blank)."""
    width = math.isqrt(units)
    if width * width < units:
        width += 1
    return -(-units // width), width


def _tile(values, low: float, high: float) -> np.ndarray:
    """Values (units,) as a uint8 (height, width, 1) tile, blanks at `low`."""
    height, width = tile_shape(values.size)
    cells = np.full(height * width, low, dtype=np.float64)
    cells[:values.size] = values
    return to_uint8(cells.reshape(height, width, 1), low, high)


def _grid(tiles: list) -> np.ndarray:
    """Tiles in a grid as square as their count allows."""
    columns = math.isqrt(len(tiles))
    if columns * columns < len(tiles):
        columns += 1
    return image_grid([tiles[i:i + columns] for i in range(0, len(tiles), columns)], gap=1)


def filters_picture(weight) -> np.ndarray:
    """A uint8 image of each hidden unit's weights (a row of `weight`), each tile scaled to
    its own range."""
    weight = np.asarray(weight, dtype=np.float64)
    return _grid([_tile(row, float(row.min()), float(row.max())) for row in weight])


def gibbs_picture(layer: VisibleLayer, params: list, start) -> np.ndarray:
    """A uint8 image: chains from the rows of `start` (one per column), a row per snapshot
    of GIBBS_SNAPSHOTS."""
    rng = np.random.default_rng(PICTURES_SEED)
    chains = np.asarray(start, dtype=np.float64)
    snapshots, done = [], 0
    for steps in GIBBS_SNAPSHOTS:
        if steps > done:
            key = draw_dropout_key(rng)[0]
            chains = layer.model.gibbs(chains, *params, steps - done, key)
            done = steps
        snapshots.append(chains)
    low, high = display_range(*snapshots)
    return image_grid([[_tile(row, low, high) for row in snapshot] for snapshot in snapshots])


def write_rbm_pictures(out, engine, graph, arrays: dict) -> list[Path]:
    """Write `out`/filters_LAYER.png and `out`/gibbs_LAYER.png for each layer that models its
    input, the chains started at the first CHAINS examples of `arrays`; the paths written."""
    layers = visible_layers(graph)
    if not layers:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    feeds = take_examples(arrays, slice(0, CHAINS))
    visible = _visible_values(engine, graph, layers, feeds)
    written = []
    for layer in layers:
        params = _params(engine, layer)
        start = visible[layer.input].reshape(len(visible[layer.input]), -1)
        written.append(write_png(Path(out) / f"filters_{layer.name}.png",
                                 filters_picture(params[0])))
        written.append(write_png(Path(out) / f"gibbs_{layer.name}.png",
                                 gibbs_picture(layer, params, start)))
    return written
