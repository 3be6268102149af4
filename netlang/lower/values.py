"""What lowering computes with, and how it fails: values, limits and the two exceptions.

An expression evaluates to a number, a string, a bool, a tuple, a `Tensor` (an IR
node and its type) or a `LayerRef` (a layer named as an argument).  A mistake is
raised as a `Problem` and recorded by the statement loop; a value that an earlier,
already reported mistake failed to produce is `POISON`, and using it raises
`Poisoned`, which stops the statement without a second report.
"""

from __future__ import annotations

import dataclasses

from netlang.errors import SourceLocation
from netlang.ir.types import TensorType

MAX_REPEAT = 1000
MAX_BLOCK_DEPTH = 32
# Imports within imports: counted, so a long chain is refused at its import whatever Python's
# recursion limit (each level nests the parser's and the lowering's frames).
MAX_IMPORT_DEPTH = 32
# Limits that keep a hostile file from hanging the compiler: layers in one model (repeats of
# blocks of repeats multiply), sizes, items of a tuple or string (and MAX_INT_BITS, the bits
# of an integer, from the parser).
MAX_LAYERS = 20_000
# Parameter tensors in one model (20,000 dense layers hold 40,000): a stacked recurrent layer
# plans a few per stacked layer.
MAX_PARAMETER_TENSORS = 60_000
MAX_DIM = 2 ** 31 - 1
MAX_ELEMENTS = 2 ** 40
MAX_SEQUENCE = 10_000


class Problem(Exception):
    """A mistake at `loc`; turned into a Diagnostic by the statement loop."""

    def __init__(self, message, loc, kind="error", notes=()):
        super().__init__(message)
        self.message, self.loc, self.kind, self.notes = message, loc, kind, list(notes)


class Poisoned(Exception):
    """A value that an earlier, already reported error failed to produce."""


POISON = object()


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A value that is a tensor: the IR node producing it."""

    node: int
    type: TensorType
    layer: str  # name of the layer (node) that produced it

    @property
    def description(self) -> str:
        """How messages name this value: its type and the layer it comes from."""
        return f"the tensor {self.type} from `{self.layer}`"


@dataclasses.dataclass(frozen=True)
class LayerRef:
    """A layer named as an argument (`share = fc1`, `tie = encoder`), with where it was named."""

    name: str
    loc: SourceLocation | None = None

    @property
    def description(self):
        """How messages name this value."""
        return f"layer `{self.name}`"
