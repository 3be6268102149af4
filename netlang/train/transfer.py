"""Starting a run from another run's weights (transfer learning): `netlang train --init RUN`
and `Model.fit(init=...)`.

The source is a run directory or a weights file, saved from any model: the two `.net` files
may differ, so the source hash is not checked.  Layers are matched by name, each as a whole:
a layer of this model takes the source's tensors when the source holds every one of its
parameters and buffers (`fc1.weight`, `fc1.bias`, a batch norm's running statistics) under
the same name and with the same shape; a layer that does not fit keeps the fresh weights the
engine drew for it, and the report says why.  Naming layers (`init_layers`) copies those
alone and makes each one's absence or misfit an error, since the user counted on it.

Frozen layers (`freeze` in the train section) then stay exactly as copied.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from netlang.errors import UsageError, WeightsError, did_you_mean
from netlang.weights import find_weights, load_weights


@dataclasses.dataclass
class Transfer:
    """What `transfer_weights` did: the file read, the layers copied from it, and each layer
    initialised fresh with the reason."""

    source: Path
    copied: list                                       # layer names, in definition order
    fresh: dict = dataclasses.field(default_factory=dict)   # layer name → why

    def lines(self, frozen=()) -> list[str]:
        """What training prints about it: the layers copied, those drawn fresh, and those of
        the `frozen` layers that are fresh (they will keep their random weights: often a
        layer name that differs between the two models)."""
        out = [f"initialised from {self.source}: {', '.join(self.copied)}"]
        by_reason: dict[str, list[str]] = {}   # layers that share a reason are listed together
        for layer, why in self.fresh.items():
            by_reason.setdefault(why, []).append(layer)
        if by_reason:
            out.append("initialised fresh: " + ", ".join(
                f"{', '.join(layers)} ({why})" for why, layers in by_reason.items()))
        stuck = [layer for layer in self.fresh if layer in frozen]
        if stuck:
            out.append(f"frozen but fresh: {', '.join(stuck)} (kept at random initial weights)")
        return out


def layer_tensors(graph) -> dict[str, list[str]]:
    """Layer name → the names of its parameters and buffers, in definition order."""
    layers: dict[str, list[str]] = {}
    for name, node in list(graph.parameters().items()) + list(graph.buffers().items()):
        layers.setdefault(graph.nodes[node]["layer"], []).append(name)
    return layers


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _misfit(tensors: list[str], params: dict, source: dict) -> str | None:
    """Why a layer's tensors cannot come from `source` (in words that follow the source's
    name), or None when they all can."""
    absent = [name for name in tensors if name not in source]
    if len(absent) == len(tensors):
        return "not there"
    if absent:
        return f"`{absent[0]}` is not there"
    for name in tensors:
        there, here = np.shape(source[name]), np.shape(params[name])
        if there != here:
            return f"`{name}` is {_shape(there)} there, {_shape(here)} here"
    return None


def transfer_weights(graph, params: dict, init, layers=None) -> Transfer:
    """Copy into `params` (an engine's {name: array}, written in place) the layers of
    `graph` that the weights at `init` (a run directory or a .safetensors file) hold under
    the same names and shapes; `layers` (names, or one comma-separated string): copy those
    alone, each of which must fit.  Values are converted to `params`' dtype."""
    path = find_weights(init)
    source, _ = load_weights(path)   # every tensor, from whichever model saved them
    model_layers = layer_tensors(graph)
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    if layers is not None:
        layers = list(dict.fromkeys(layers))
        if not layers:
            raise UsageError("`init_layers=` names no layer")
        for layer in layers:
            if layer not in model_layers:
                raise UsageError(f"`init_layers=` names `{layer}`, which is not a layer with "
                                 f"weights in this model{did_you_mean(layer, model_layers)} "
                                 f"(layers: {', '.join(model_layers)})")
            why = _misfit(model_layers[layer], params, source)
            if why is not None:
                raise WeightsError(f"{path}: layer `{layer}`, named in `init_layers=`, cannot "
                                   f"start from these weights: {why}")
    copied, fresh = [], {}
    for layer, tensors in model_layers.items():
        if layers is not None and layer not in layers:
            fresh[layer] = "not named in `init_layers=`"
            continue
        why = _misfit(tensors, params, source)
        if why is not None:
            fresh[layer] = why
            continue
        for name in tensors:
            params[name][...] = source[name]
        copied.append(layer)
    if not copied:
        raise WeightsError(f"{path}: no layer of this model is there under its name with its "
                           f"shapes, so `init=` would copy nothing")
    return Transfer(path, copied, fresh)
