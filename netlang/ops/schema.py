"""Argument schemas: what a layer, optimiser or setting accepts, and how values are checked.

One schema type serves every callable thing in a `.net` file (ops, optimisers,
schedules, regularisers, training settings), so every one of them reports an
unknown, missing or ill-typed argument the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from netlang.errors import did_you_mean

REQUIRED = object()


class ArgumentProblem(Exception):
    """A bad argument; `index` is the position (or keyword name) of the culprit, if any."""

    def __init__(self, message: str, index=None):
        super().__init__(message)
        self.message = message
        self.index = index


@dataclasses.dataclass(frozen=True)
class ArgType:
    """A named type with a converter that returns the canonical value or raises ValueError."""

    name: str
    convert: Callable[[Any], Any]
    bare_words: tuple[str, ...] = ()  # enum words a user may write without quotes
    is_layer_ref: bool = False
    # A tensor of the model named by a keyword (a recurrent layer's `h0 = state`): the front
    # end passes it to the op as one more operand, after the ones flowing in.
    is_tensor: bool = False


def _int(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("an integer (use `//` for integer division)")
        return int(value)
    return value


def _float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the range of floats
        raise ValueError("a finite number") from None
    if not math.isfinite(number):  # `1e999` reads as infinity
        raise ValueError("a finite number")
    return number


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("`true` or `false`")
    return value


def _str(value):
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _pair(value):
    """An int for both spatial dimensions, or a (height, width) pair."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError("an integer or a pair of integers")
        return (_int(value[0]), _int(value[1]))
    v = _int(value)
    return (v, v)


def _ints(value):
    if not isinstance(value, tuple):
        value = (value,)
    return tuple(_int(v) for v in value)


def _floats(value):
    if not isinstance(value, tuple):
        value = (value,)
    return tuple(_float(v) for v in value)


INT = ArgType("int", _int)
FLOAT = ArgType("float", _float)
BOOL = ArgType("bool", _bool)
STR = ArgType("string", _str)
PAIR = ArgType("int or (int, int)", _pair)
INTS = ArgType("tuple of ints", _ints)
FLOATS = ArgType("tuple of numbers", _floats)
LAYER = ArgType("layer name", lambda v: v, is_layer_ref=True)
TENSOR = ArgType("tensor", lambda v: v, is_tensor=True)
ANY = ArgType("value", lambda v: v)


def enum(*choices: str) -> ArgType:
    """An ArgType that accepts one of `choices`, written bare or quoted: `padding = same`."""
    def convert(value):
        if value not in choices:
            raise ValueError("one of " + ", ".join(f"`{c}`" for c in choices))
        return value
    return ArgType("|".join(choices), convert, bare_words=choices)


def padding_type() -> ArgType:
    """`same`, `valid`, an int, a (rows, cols) pair, or ((top, bottom), (left, right))."""
    def convert(value):
        if value in ("same", "valid"):
            return value
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, tuple) for v in value):
            return (_pair(value[0]), _pair(value[1]))
        pair = _pair(value)
        return ((pair[0], pair[0]), (pair[1], pair[1]))
    return ArgType("`same`, `valid` or padding", convert, bare_words=("same", "valid"))


PADDING = padding_type()


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument in a schema: name, type, default (REQUIRED when it has none) and doc text.

    `min` and `max` bound every number in the value, those inside tuples included.
    """

    name: str
    type: ArgType
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False

    @property
    def required(self) -> bool:
        """Whether the argument has no default and must be given."""
        return self.default is REQUIRED

    def check(self, value):
        """`value` converted to the argument's canonical form.

        Raises ArgumentProblem, naming the argument, for a wrong type or a value out of bounds.
        """
        try:
            value = self.type.convert(value)
        except ValueError as exc:
            raise ArgumentProblem(f"`{self.name}` must be {exc}, not {describe_value(value)}")
        for v in _numbers_in(value):
            if self.min is not None and (v < self.min or (self.exclusive_min and v == self.min)):
                bound = f"greater than {self.min:g}" if self.exclusive_min else f"at least {self.min:g}"
                raise ArgumentProblem(f"`{self.name}` must be {bound}, not {v:g}")
            if self.max is not None and v > self.max:
                raise ArgumentProblem(f"`{self.name}` must be at most {self.max:g}, not {v:g}")
        return value


def _numbers_in(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _numbers_in(v)


def describe_value(value) -> str:
    """`value` as a user would write it, for messages: `true`, `"same"`, `(3,)`, `0.5`.

    Anything else, such as a tensor, by its `description` or its type's name.
    """
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(describe_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return getattr(value, "description", type(value).__name__)


def bind_arguments(schema: Sequence[Arg], positional: Sequence, keywords: Sequence[tuple[str, Any]],
                   what: str) -> dict:
    """Match positional and keyword values to `schema`, check them, fill defaults.

    Raises ArgumentProblem whose `index` is the positional index or keyword
    name of the culprit, so the caller can point a caret at it.
    """
    bound: dict[str, Any] = {}
    if len(positional) > len(schema):
        raise ArgumentProblem(
            f"{what} takes at most {len(schema)} positional argument"
            f"{'s' if len(schema) != 1 else ''}, got {len(positional)}", len(schema))
    for i, value in enumerate(positional):
        arg = schema[i]
        try:
            bound[arg.name] = arg.check(value)
        except ArgumentProblem as problem:
            problem.index = i
            raise
    by_name = {arg.name: arg for arg in schema}
    for key, value in keywords:
        if key not in by_name:
            raise ArgumentProblem(
                f"{what} has no argument `{key}`{did_you_mean(key, by_name)}", key)
        if key in bound:
            raise ArgumentProblem(f"argument `{key}` of {what} is given twice", key)
        try:
            bound[key] = by_name[key].check(value)
        except ArgumentProblem as problem:
            problem.index = key
            raise
    for arg in schema:
        if arg.name not in bound:
            if arg.required:
                raise ArgumentProblem(f"{what} needs the argument `{arg.name}`", None)
            # Defaults go through the same conversion, so rules see one canonical form.
            bound[arg.name] = arg.default if arg.default is None else arg.type.convert(arg.default)
    return bound


def signature(schema: Sequence[Arg]) -> str:
    """`units, bias=true` — for docs and error notes."""
    parts = []
    for arg in schema:
        if arg.required:
            parts.append(arg.name)
        else:
            parts.append(f"{arg.name}={describe_value(arg.default) if arg.default is not None else 'none'}")
    return ", ".join(parts)
