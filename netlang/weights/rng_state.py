"""Random generator state as JSON, so a resumed run draws exactly the numbers it would have.

A checkpoint stores the data-order and dropout generators' states in its state.json; NumPy
bit generators expose their state as dicts of (big) ints and, for some, arrays, which this
module turns into JSON and back without losing a bit.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from netlang.weights.json_fields import Fields

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


def _check_words(fields: Fields, key: str, dtype: str, count: int) -> None:
    """Field `key` of `fields` is an array as _to_json writes it: `count` words of `dtype`."""
    array = fields.object(key)
    if array.text("dtype") != dtype:
        raise array.error(array.name("dtype"), f'"{dtype}"', array.doc["dtype"])
    words = array.raw("__ndarray__", optional=False)
    bits = np.dtype(dtype).itemsize * 8
    if not (isinstance(words, list) and len(words) == count
            and all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**bits
                    for w in words)):
        raise array.error(array.name("__ndarray__"),
                          f"a list of {count} integers in [0, 2**{bits})", words)


def _check_buffered(fields: Fields) -> None:
    """The 32-bit output a generator keeps between two draws."""
    fields.integer("has_uint32", 0, 2)
    fields.integer("uinteger", 0, 2**32, high_text="2**32")


def _check_pcg(fields: Fields) -> None:
    state = fields.object("state")
    state.integer("state", 0, 2**128, high_text="2**128")
    # Seeding always makes the increment odd (an even one gives a degenerate stream).
    if state.integer("inc", 0, 2**128, high_text="2**128") % 2 == 0:
        raise state.error(state.name("inc"), "odd", state.doc["inc"])
    _check_buffered(fields)


def _check_mt19937(fields: Fields) -> None:
    state = fields.object("state")
    _check_words(state, "key", "<u4", 624)
    state.integer("pos", 0, 625)


def _check_philox(fields: Fields) -> None:
    state = fields.object("state")
    _check_words(state, "counter", "<u8", 4)
    _check_words(state, "key", "<u8", 2)
    _check_words(fields, "buffer", "<u8", 4)
    fields.integer("buffer_pos", 0, 5)
    _check_buffered(fields)


def _check_sfc64(fields: Fields) -> None:
    _check_words(fields.object("state"), "state", "<u8", 4)
    _check_buffered(fields)


# The fields of each bit generator's state, as NumPy's setters accept them: anything else
# would be an OverflowError there, or be truncated silently.
_STATE_CHECKS = {"PCG64": _check_pcg, "PCG64DXSM": _check_pcg, "MT19937": _check_mt19937,
                 "Philox": _check_philox, "SFC64": _check_sfc64}


def check_rng_state(data: Any, where: str | os.PathLike, name: str = "rng") -> None:
    """A saved generator state (field `name` of the file `where`) fits its bit generator
    field by field; otherwise a one-line WeightsError naming the field."""
    fields = Fields(data, where, name + ".")
    generator = fields.text("bit_generator")
    if generator not in _BIT_GENERATORS:
        raise fields.error(fields.name("bit_generator"),
                           "one of " + ", ".join(_BIT_GENERATORS), generator)
    _STATE_CHECKS[generator](fields)


def rng_from_json(data: Mapping[str, Any], where: str | os.PathLike = "saved RNG state",
                  name: str = "rng") -> np.random.Generator:
    """A Generator continuing exactly where the one passed to rng_state_to_json stopped;
    a state that does not fit (see check_rng_state) is a one-line WeightsError."""
    check_rng_state(data, where, name)
    bit_generator = _BIT_GENERATORS[data["bit_generator"]]()
    bit_generator.state = _from_json(dict(data))
    return np.random.Generator(bit_generator)
