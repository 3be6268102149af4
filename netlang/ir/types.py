"""Tensor types of the IR: a shape and a dtype.

Shapes are full shapes.  A tensor that varies per example has the batch
dimension first, written `None` (the JSON `null` of `netlang check --json`);
parameters have no batch dimension.  The `.net` language writes per-example
shapes and axes, so the front end adds and removes the leading `None`.
"""

from __future__ import annotations

import dataclasses
import math

BATCH = None  # the symbolic batch dimension
DTYPES = ("float32", "float64", "int32", "int64")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")


@dataclasses.dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] is BATCH

    @property
    def sample_shape(self) -> tuple:
        """The per-example shape, as the language writes it."""
        return self.shape[1:] if self.batched else self.shape

    @property
    def size(self) -> int:
        """Elements per example (or in all, for an unbatched tensor)."""
        return math.prod(self.sample_shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def __str__(self) -> str:
        return format_shape(self.shape)


def format_shape(shape) -> str:
    dims = ", ".join("None" if d is BATCH else str(d) for d in shape)
    if len(shape) == 1:
        dims += ","
    return f"({dims})"
