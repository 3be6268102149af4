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
    """The shape and dtype of a value in the graph.

    `shape` starts with `BATCH` when the value varies per example (see the module docstring).
    """

    shape: tuple
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        """The number of dimensions, the batch dimension included."""
        return len(self.shape)

    @property
    def batched(self) -> bool:
        """Whether the first dimension is the batch (a per-example tensor, not a parameter)."""
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
        """Whether the dtype is float32 or float64 (integer tensors carry labels and ids)."""
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> "TensorType":
        """The same dtype with another shape."""
        return TensorType(tuple(shape), self.dtype)

    def __str__(self) -> str:
        return format_shape(self.shape)


def format_shape(shape) -> str:
    """`(None, 28, 28, 1)`: the batch written `None`, and a 1-tuple keeps its comma: `(10,)`."""
    dims = ", ".join("None" if d is BATCH else str(d) for d in shape)
    if len(shape) == 1:
        dims += ","
    return f"({dims})"
