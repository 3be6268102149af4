"""Random generator state as JSON, so a resumed run draws exactly the numbers it would have.

A checkpoint stores the data-order and dropout generators' states in its state.json; NumPy
bit generators expose their state as dicts of (big) ints and, for some, arrays, which this
module turns into JSON and back without losing a bit.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from netlang.errors import WeightsError

# Constructing a bit generator from a name read off disk: only these, never getattr(np.random).
_BIT_GENERATORS = {cls.__name__: cls for cls in (
    np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox,
    np.random.SFC64)}


def _to_json(value: Any) -> Any:
    # PCG64 state is plain (big) ints, which JSON keeps exactly; MT19937/Philox use arrays.
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    return value


def rng_state_to_json(rng: np.random.Generator | np.random.BitGenerator | dict) -> dict:
    """JSON-able copy of a Generator's `bit_generator.state` (or of such a state dict)."""
    if isinstance(rng, np.random.Generator):
        rng = rng.bit_generator
    state = rng.state if isinstance(rng, np.random.BitGenerator) else rng
    return _to_json(state)


def rng_from_json(data: Mapping[str, Any]) -> np.random.Generator:
    """A Generator continuing exactly where the one passed to rng_state_to_json stopped."""
    name = data.get("bit_generator") if isinstance(data, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise WeightsError(f"saved RNG state has unknown bit generator {name!r}")
    bit_generator = _BIT_GENERATORS[name]()
    try:
        bit_generator.state = _from_json(dict(data))
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"saved {name} RNG state is malformed: {exc}") from None
    return np.random.Generator(bit_generator)
