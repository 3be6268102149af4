"""Weights to and from PyTorch's `state_dict` form, as NumPy arrays (no torch import).

netlang's parameters already have PyTorch's layouts and names within a layer (`weight`,
`bias`, `running_mean`, `running_var`, `weight_ih_l0`, ...; docs/compiler.md, Parameter
layouts), and a layer's name is its key prefix (`layer1.0.conv1.weight`).  What differs:
PyTorch's batch norm also keeps `num_batches_tracked`, which `weights_to_state_dict` adds (so
`module.load_state_dict` accepts the result strictly) and `from_state_dict` ignores; and module
names, which a `rename` mapping bridges (docs/interchange.md has torchvision's ResNet-18).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from netlang.errors import WeightsError

# The per-layer entry PyTorch's batch norm keeps beside its running statistics.
BATCHES_TRACKED = "num_batches_tracked"
RUNNING_MEAN = ".running_mean"


def _weights_of(weights) -> dict:
    """name → array from a mapping, or from a model's parameters and buffers."""
    if isinstance(weights, Mapping):
        return dict(weights)
    if hasattr(weights, "parameters") and hasattr(weights, "buffers"):
        return {**weights.parameters(), **weights.buffers()}
    raise TypeError("weights_to_state_dict takes a netlang Model or a mapping name → array")


def weights_to_state_dict(weights) -> dict:
    """A PyTorch-style state dict (name → NumPy array, copies) of a model's weights or of a
    mapping name → array: the same names and layouts, plus a `num_batches_tracked` of 0
    (int64) beside each batch norm's running statistics, as PyTorch's modules keep."""
    state = {}
    for name, value in _weights_of(weights).items():
        state[name] = np.array(value, copy=True)
        if name.endswith(RUNNING_MEAN):
            state[f"{name[:-len(RUNNING_MEAN)]}.{BATCHES_TRACKED}"] = np.array(0, dtype=np.int64)
    return state


def _renamer(rename) -> Callable[[str], str]:
    if rename is None:
        return lambda key: key
    if isinstance(rename, Mapping):
        return lambda key: rename.get(key, key)
    if callable(rename):
        return rename
    raise TypeError("rename= takes a mapping or a function from state-dict keys to netlang names")


def from_state_dict(model, state_dict: Mapping, *, rename=None, strict: bool = True):
    """Loads a PyTorch-style state dict (name → array; anything `np.asarray` reads) into
    `model`'s weights and returns the model.

    `rename` maps a state-dict key to netlang's name (a mapping, or a function of the key);
    `num_batches_tracked` entries are ignored.  Every array must have the shape of the weight
    it lands in (it is converted to the model's dtype).  With `strict` (the default) a key
    that names no weight, or a weight that no key fills, is a WeightsError naming it."""
    to_name = _renamer(rename)
    targets = {**model.parameters(), **model.buffers()}
    loaded, unknown = {}, []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] == BATCHES_TRACKED:
            continue
        name = to_name(key)
        if name not in targets:
            unknown.append(key if name == key else f"{key} (as {name})")
            continue
        array = np.asarray(value)
        if array.shape != targets[name].shape:
            raise WeightsError(f"state dict entry `{key}` has shape {array.shape}; netlang's "
                               f"`{name}` has {targets[name].shape}")
        loaded[name] = array
    missing = [name for name in targets if name not in loaded]
    if strict and unknown:
        raise WeightsError(f"state dict entries that name no weight of the model: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                           f"(rename= maps keys to netlang's names; strict=False skips them)")
    if strict and missing:
        raise WeightsError(f"weights the state dict does not fill: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} (strict=False keeps them)")
    for name, array in loaded.items():
        targets[name][...] = array
    return model
