"""The fields of a JSON object read back from disk, each taken with its check.

A checkpoint's state, a run's run.json and a random generator's saved state are read back
field by field through `Fields`: a field that is missing, of the wrong type or out of range
is a one-line WeightsError naming the file and the field, e.g.

    runs/mlp/ckpt-00000003/state.json: field "epoch" must be an integer >= 0, not "abc"

so that nothing read back reaches the trainer as a value it would crash on (a KeyError, an
OverflowError) or silently misuse (a negative epoch, a NaN learning rate).
"""

from __future__ import annotations

import math
import os
from typing import Any

from netlang.errors import WeightsError
from netlang.weights.safe_read import shown

_MISSING = object()


def _is_integer(value: Any) -> bool:
    # JSON's true/false arrive as bool, which Python counts as int.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Fields:
    """One JSON object read back from `where` (a file, for messages); `prefix` is the dotted
    path of the object inside the file's document ("" for the document itself)."""

    def __init__(self, doc: Any, where: str | os.PathLike, prefix: str = ""):
        self.where, self.prefix = str(where), prefix
        if not isinstance(doc, dict):
            raise self.error(prefix.rstrip(".") or None, "a JSON object", doc)
        self.doc = doc

    def error(self, name: str | None, expectation: str, value: Any) -> WeightsError:
        """The one-line error of field `name` (the document when None)."""
        what = f'field "{name}"' if name else "the document"
        return WeightsError(f"{self.where}: {what} must be {expectation}, not {shown(value)}")

    def name(self, key: str) -> str:
        """The dotted name of this object's field `key`."""
        return self.prefix + key

    def raw(self, key: str, optional: bool) -> Any:
        """The value of `key` unchecked; None for an optional field that is absent or null,
        and a one-line error for a required one that is absent."""
        value = self.doc.get(key, _MISSING)
        if value is _MISSING or value is None:
            if optional:
                return None
            if value is _MISSING:
                raise WeightsError(f'{self.where}: field "{self.name(key)}" is missing')
        return value

    def integer(self, key: str, low: int = 0, high: int | None = None, *,
                high_text: str | None = None, optional: bool = False) -> int | None:
        """An integer in [low, high) (no upper bound when `high` is None); `high_text` writes
        the bound in the message when its digits would not help (2**128)."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not _is_integer(value) or value < low or (high is not None and value >= high):
            expectation = (f"an integer >= {low}" if high is None
                           else f"an integer in [{low}, {high_text or high})")
            raise self.error(self.name(key), expectation, value)
        return value

    def number(self, key: str, low: float | None = None, *, optional: bool = False,
               finite: bool = True) -> float | None:
        """A number (an integer or a float), finite unless `finite` is False, >= `low`."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not _is_number(value) or (finite and not math.isfinite(value)) \
                or (low is not None and not value >= low):
            expectation = "a " + ("finite " if finite else "") + "number" \
                + (f" >= {low}" if low is not None else "")
            raise self.error(self.name(key), expectation, value)
        return value

    def boolean(self, key: str, *, optional: bool = False) -> bool | None:
        """true or false."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise self.error(self.name(key), "true or false", value)
        return value

    def text(self, key: str, *, optional: bool = False) -> str | None:
        """A string."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.error(self.name(key), "a string", value)
        return value

    def texts(self, key: str, *, optional: bool = False) -> list[str] | None:
        """A list of strings."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(self.name(key), "a list of strings", value)
        return value

    def object(self, key: str, *, optional: bool = False) -> Fields | None:
        """A nested object, whose fields are taken in turn."""
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        return Fields(value, self.where, self.name(key) + ".")

    def objects(self, key: str, *, optional: bool = False) -> dict[str, Fields] | None:
        """An object of objects: {name: Fields of each}."""
        outer = self.object(key, optional=optional)
        if outer is None:
            return None
        return {name: outer.object(name) for name in outer.doc}
