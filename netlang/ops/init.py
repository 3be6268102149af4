"""Parameter initialisation schemes, seeded.

Each parameter node names its scheme (set by the op that creates it) and its
fans; `initialize` draws every parameter from one seeded generator in creation
order, so the same seed gives the same weights.
"""

from __future__ import annotations

import math

import numpy as np


def _uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, size=shape)


SCHEMES = {
    "zeros": lambda rng, shape, fan_in, fan_out: np.zeros(shape),
    "ones": lambda rng, shape, fan_in, fan_out: np.ones(shape),
    # Xavier/Glorot: keeps activation variance through sigmoid/tanh/linear layers.
    "glorot_uniform": lambda rng, shape, fan_in, fan_out: _uniform(rng, shape, math.sqrt(6 / (fan_in + fan_out))),
    # He/Kaiming: the same for ReLU layers, which halve the variance.
    "he_uniform": lambda rng, shape, fan_in, fan_out: _uniform(rng, shape, math.sqrt(6 / fan_in)),
    "normal": lambda rng, shape, fan_in, fan_out: rng.standard_normal(shape),
    # PyTorch's recurrent default: U(±1/√hidden) for every weight and bias.
    "recurrent_uniform": lambda rng, shape, fan_in, fan_out: _uniform(rng, shape, 1 / math.sqrt(fan_in)),
}


def initialize(graph, seed: int = 0, dtype=np.float32) -> dict:
    """Fresh values for every parameter and buffer of `graph`, name → array."""
    rng = np.random.default_rng(seed)
    values = {}
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        if data["role"] not in ("param", "buffer"):
            continue
        attrs = data["attrs"]
        draw = SCHEMES[attrs["init"]]
        values[data["name"]] = np.ascontiguousarray(
            draw(rng, tuple(attrs["shape"]), attrs["fan_in"], attrs["fan_out"]), dtype=dtype)
    return values
