"""The typed AST of a `.net` file.

Frozen dataclasses; every node has a `loc` that is kept out of equality, so two
files that differ only in layout compare equal (which is what `fmt` promises).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from netlang.errors import SourceLocation


def _loc():
    return dataclasses.field(default=None, compare=False, repr=False)


node = dataclasses.dataclass(frozen=True)


# Expressions

@node
class Number:
    """A numeric literal: `6`, `0.5`, `1e-4`, `1_000`.

    `text` keeps the source spelling so that `fmt` writes the number back as it was written;
    a negated literal (`-1`) is one Number, not a UnaryOp.
    """

    value: Union[int, float]
    text: str
    loc: Optional[SourceLocation] = _loc()


@node
class String:
    """A string literal, its escapes resolved: `"lib/blocks.net"`, `"text:input.txt"`."""

    value: str
    loc: Optional[SourceLocation] = _loc()


@node
class Bool:
    """`true` or `false`."""

    value: bool
    loc: Optional[SourceLocation] = _loc()


@node
class Name:
    """An identifier: a name read as a value (`hidden` in `dense(hidden)`), or one being defined."""

    id: str
    loc: Optional[SourceLocation] = _loc()


@node
class Tuple:
    """A parenthesised tuple: `(3, 3)`, `(x,)`, `()`.

    As a chain's source it feeds a merging layer several tensors: `(b1, b2) -> concat`.
    """

    items: tuple
    loc: Optional[SourceLocation] = _loc()


@node
class Arg:
    """One argument of a call or step: positional (`6`) or keyword (`stride = 2`)."""

    name: Optional[str]  # None for a positional argument
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class Call:
    """A function call inside an expression, not a chain step: `max(1, filters // 4)`.

    In a `train` section it names a loss or optimiser: `cross_entropy(logits, label)`.
    """

    func: str
    args: tuple  # of Arg
    loc: Optional[SourceLocation] = _loc()


@node
class BinOp:
    """An infix operation: `2 * hidden`, `stride != 1 or x.shape[-1] != filters`.

    Between tensors, `+` and `*` are layers (`y + shortcut`); otherwise evaluated while lowering.
    """

    op: str  # + - * / // % ** == != < <= > >= and or
    left: object
    right: object
    loc: Optional[SourceLocation] = _loc()
    op_loc: Optional[SourceLocation] = _loc()   # the operator itself, where the parser has it


@node
class UnaryOp:
    """`-x` or `not x`, where `x` is not a literal number (`-1` is a Number)."""

    op: str  # - not
    operand: object
    loc: Optional[SourceLocation] = _loc()


@node
class Attribute:
    """`value.attr`, such as `x.shape`: a tensor's `shape`, `size` or `rank`."""

    value: object
    attr: str
    loc: Optional[SourceLocation] = _loc()


@node
class Index:
    """`value[index]`, such as `x.shape[-1]`."""

    value: object
    index: object
    loc: Optional[SourceLocation] = _loc()


@node
class Step:
    """One layer of a chain: `-> op(args) * repeat as label`."""

    op: str
    args: Optional[tuple]  # of Arg; None when written without parentheses
    repeat: object = None
    label: Optional[str] = None
    loc: Optional[SourceLocation] = _loc()
    op_loc: Optional[SourceLocation] = _loc()
    label_loc: Optional[SourceLocation] = _loc()


@node
class Group:
    """Steps in parentheses that repeat and take a label together: `-> (a -> b) * 3 as name`.

    `* n` binds to the one step before it, so a group is how a chain says that several
    steps repeat.  Parentheses with neither a repeat nor a label change nothing, and the
    parser leaves no Group for them.
    """

    steps: tuple  # of Step and Group
    repeat: object = None
    label: Optional[str] = None
    loc: Optional[SourceLocation] = _loc()
    label_loc: Optional[SourceLocation] = _loc()


@node
class Chain:
    """A source, then steps each fed the one before: `image -> conv2d(6, 5) as c1 -> relu`.

    An expression with no `->` stays a bare expression and makes no Chain.
    """

    source: object
    steps: tuple  # of Step and Group
    loc: Optional[SourceLocation] = _loc()


# Statements

@node
class Import:
    """`import "lib/blocks.net"`: brings in another file's blocks and constants.

    `path` is as written, resolved against the importing file's folder.
    """

    path: str
    loc: Optional[SourceLocation] = _loc()


@node
class Const:
    """`const classes = 10`: a name bound to a number, string or tuple, never a tensor."""

    name: Name
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class TensorTypeExpr:
    """The type after `input x:`: `[28, 28, 1]`, `int32[steps]`, `int32[]`.

    An optional dtype (float32 when left out) and the dimensions of one example; the batch
    dimension is implicit.
    """

    dtype: Optional[str]
    dims: tuple
    loc: Optional[SourceLocation] = _loc()
    dtype_loc: Optional[SourceLocation] = _loc()


@node
class Noise:
    """`~ normal(std = 0.5)` after an input's type: the distribution the input is drawn from
    (its arguments optional), instead of being fed data."""

    distribution: str
    args: tuple  # of Arg
    loc: Optional[SourceLocation] = _loc()
    op_loc: Optional[SourceLocation] = _loc()


@node
class Input:
    """`input image: [28, 28, 1]`: a tensor fed to the network; `input z: [64] ~ normal`, one
    drawn afresh for every batch (`noise`).

    Inside a block, `input x` (type optional) names a tensor handed to the block, and a
    type, when given, is checked against it.
    """

    name: Name
    type: Optional[TensorTypeExpr]
    noise: Optional[Noise] = None
    loc: Optional[SourceLocation] = _loc()


@node
class Output:
    """`output logits = features -> dense(10)`: a named result of the network or block.

    Without `= ...` (`output code`) it exports a value already defined.
    """

    name: Name
    value: object  # a Chain or expression, or None to export an existing value
    loc: Optional[SourceLocation] = _loc()


@node
class Assign:
    """`name = chain`, or `a, b = chain` to unpack several values: `code = image -> dense(32)`."""

    targets: tuple  # of Name
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class If:
    """`if stride != 1 { ... } else { ... }`: a choice made while lowering, not in the graph.

    The condition is true or false, never a tensor, so only one branch reaches the graph.
    `else if` is an If alone in `orelse`.
    """

    condition: object
    body: tuple
    orelse: tuple  # statements, or a 1-tuple holding a nested If
    loc: Optional[SourceLocation] = _loc()


@node
class BlockParam:
    """One parameter of a block definition: `filters`, or `stride = 1` with a default."""

    name: Name
    default: object = None
    loc: Optional[SourceLocation] = _loc()


@node
class BlockDef:
    """`block residual(filters, stride = 1) { input x ... output out = ... }`.

    A reusable sub-network, used as a step: `x -> residual(64) as res1`.  Only at a file's top
    level.
    """

    name: Name
    params: tuple  # of BlockParam
    body: tuple
    loc: Optional[SourceLocation] = _loc()


@node
class TrainItem:
    """One line of a `train` section: `optimizer adam(lr = 1e-3)`, `metrics accuracy, top_k(5)`.

    `on` lists the layers a `regularize` line applies to: `regularize l2(1e-4) on fc1, fc2`.
    """

    key: Name
    values: tuple
    on: tuple = ()  # of Name
    loc: Optional[SourceLocation] = _loc()


@node
class Train:
    """`train { loss ... optimizer ... }`: how to train the network, at a file's top level.

    With a name (`train discriminator { ... }`) it is a training phase: its settings override
    those of the unnamed section, and the unnamed section's `phases` orders the phases.
    """

    items: tuple
    name: Optional[Name] = None  # None for the unnamed section
    loc: Optional[SourceLocation] = _loc()


@node
class Module:
    """A whole `.net` file: its top-level statements in source order, and its path."""

    path: str
    items: tuple
    loc: Optional[SourceLocation] = _loc()
