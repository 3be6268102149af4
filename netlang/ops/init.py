"""Parameter initialisation schemes, seeded.

Each parameter node names its scheme, its fans and a gain: the op that creates it
picks the scheme (and a layer's `init` and `gain` arguments, from `init_args`,
override it for the layer's weights).  `initialize` draws every parameter from
one seeded generator in creation order, so the same seed gives the same weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from netlang.ops.schema import Arg, FLOAT, enum


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How one scheme draws a tensor: its distribution and its scale at gain 1.

    `gain` multiplies the scale, so it scales a uniform scheme's range, a normal
    scheme's standard deviation and a constant, as PyTorch's `gain` does.
    """

    distribution: str  # "uniform" (over ±scale), "normal" (std scale) or "constant"
    scale: Callable[[int, int], float]  # fn(fan_in, fan_out) -> the bound, std or value
    doc: str  # what it draws, as docs/language.md's Initialisation table says (a test holds it)

    def draw_into(self, rng: np.random.Generator, out: np.ndarray, fan_in: int, fan_out: int,
                  gain: float) -> None:
        """Fill `out` (a fresh C-contiguous array of any float dtype) with the scheme's values:
        drawn in float64 and rounded to `out`'s dtype, the same values whatever the dtype
        (the float64 reference engine's weights are the float32 engine's, unrounded).  A
        constant scheme draws nothing from `rng`.

        Drawn `DRAW_BLOCK` values at a time: a generator's values come in the same order
        however a draw is split, and a parameter never has a float64 copy.  Drawn whole, in
        float64 then converted, VGG-16's 138 million weights made a warm process's engine take
        0.76 to 2.96 s to create (three processes; huge-page compaction on the float64
        copies), against 0.41 to 0.43 s by blocks; 138 million uniform values into float32
        took 4.1 s drawn whole and 0.35 s by blocks, equal bit for bit."""
        scale = gain * self.scale(fan_in, fan_out)
        flat = out.reshape(-1)
        if self.distribution == "constant":
            flat[:] = scale
            return
        for start in range(0, flat.size, DRAW_BLOCK):
            count = min(DRAW_BLOCK, flat.size - start)
            if self.distribution == "uniform":
                flat[start:start + count] = rng.uniform(-scale, scale, size=count)
            else:
                flat[start:start + count] = rng.standard_normal(count) * scale


# Values drawn per call of the generator while a parameter is filled (`Scheme.draw_into`):
# 512 KiB of float64, which stays in the core's cache until it is rounded into place.
DRAW_BLOCK = 1 << 16


SCHEMES = {
    "zeros": Scheme("constant", lambda fan_in, fan_out: 0.0, "all zeros, whatever the gain"),
    "ones": Scheme("constant", lambda fan_in, fan_out: 1.0, "all equal to the gain"),
    "uniform": Scheme("uniform", lambda fan_in, fan_out: 1.0, "U(±gain)"),
    "normal": Scheme("normal", lambda fan_in, fan_out: 1.0, "N(0, std = gain)"),
    # Xavier/Glorot: keeps activation variance through sigmoid/tanh/linear layers.
    "glorot_uniform": Scheme("uniform", lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out)),
                             "U(±gain·√(6 / (fan_in + fan_out)))"),
    "glorot_normal": Scheme("normal", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)),
                            "N(0, std = gain·√(2 / (fan_in + fan_out)))"),
    # He/Kaiming: the same for ReLU layers, which halve the variance.
    "he_uniform": Scheme("uniform", lambda fan_in, fan_out: math.sqrt(6 / fan_in),
                         "U(±gain·√(6 / fan_in))"),
    "he_normal": Scheme("normal", lambda fan_in, fan_out: math.sqrt(2 / fan_in),
                        "N(0, std = gain·√(2 / fan_in))"),
    # PyTorch's recurrent default (and its dense default's bound): U(±1/√fan_in); the
    # recurrent layers give the hidden size as fan_in, as PyTorch bounds them by it.
    "recurrent_uniform": Scheme("uniform", lambda fan_in, fan_out: 1 / math.sqrt(fan_in),
                                "U(±gain / √fan_in)"),
}


def init_args(default: str) -> list[Arg]:
    """The `init` and `gain` arguments of a layer whose weights are drawn by `default`."""
    return [
        Arg("init", enum(*SCHEMES), default,
            doc="how the weights are drawn (see Initialisation); biases stay as they are"),
        Arg("gain", FLOAT, 1.0, min=0.0, exclusive_min=True,
            doc="scales the weights' range or standard deviation"),
    ]


def initialize(graph, seed: int = 0, dtype=np.float32) -> dict:
    """Fresh values for every parameter and buffer of `graph`, name → array."""
    rng = np.random.default_rng(seed)
    values = {}
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        if data["role"] not in ("param", "buffer"):
            continue
        attrs = data["attrs"]
        value = np.empty(tuple(attrs["shape"]), dtype=dtype)
        SCHEMES[attrs["init"]].draw_into(rng, value, attrs["fan_in"], attrs["fan_out"],
                                         attrs["gain"])
        values[data["name"]] = value
    return values
