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
    value: Union[int, float]
    text: str
    loc: Optional[SourceLocation] = _loc()


@node
class String:
    value: str
    loc: Optional[SourceLocation] = _loc()


@node
class Bool:
    value: bool
    loc: Optional[SourceLocation] = _loc()


@node
class Name:
    id: str
    loc: Optional[SourceLocation] = _loc()


@node
class Tuple:
    items: tuple
    loc: Optional[SourceLocation] = _loc()


@node
class Arg:
    name: Optional[str]  # None for a positional argument
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class Call:
    func: str
    args: tuple  # of Arg
    loc: Optional[SourceLocation] = _loc()


@node
class BinOp:
    op: str  # + - * / // % ** == != < <= > >= and or
    left: object
    right: object
    loc: Optional[SourceLocation] = _loc()
    op_loc: Optional[SourceLocation] = _loc()   # the operator itself, where the parser has it


@node
class UnaryOp:
    op: str  # - not
    operand: object
    loc: Optional[SourceLocation] = _loc()


@node
class Attribute:
    value: object
    attr: str
    loc: Optional[SourceLocation] = _loc()


@node
class Index:
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
    source: object
    steps: tuple  # of Step and Group
    loc: Optional[SourceLocation] = _loc()


# Statements

@node
class Import:
    path: str
    loc: Optional[SourceLocation] = _loc()


@node
class Const:
    name: Name
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class TensorTypeExpr:
    dtype: Optional[str]
    dims: tuple
    loc: Optional[SourceLocation] = _loc()
    dtype_loc: Optional[SourceLocation] = _loc()


@node
class Input:
    name: Name
    type: Optional[TensorTypeExpr]
    loc: Optional[SourceLocation] = _loc()


@node
class Output:
    name: Name
    value: object  # a Chain or expression, or None to export an existing value
    loc: Optional[SourceLocation] = _loc()


@node
class Assign:
    targets: tuple  # of Name
    value: object
    loc: Optional[SourceLocation] = _loc()


@node
class If:
    condition: object
    body: tuple
    orelse: tuple  # statements, or a 1-tuple holding a nested If
    loc: Optional[SourceLocation] = _loc()


@node
class BlockParam:
    name: Name
    default: object = None
    loc: Optional[SourceLocation] = _loc()


@node
class BlockDef:
    name: Name
    params: tuple  # of BlockParam
    body: tuple
    loc: Optional[SourceLocation] = _loc()


@node
class TrainItem:
    key: Name
    values: tuple
    on: tuple = ()  # of Name
    loc: Optional[SourceLocation] = _loc()


@node
class Train:
    items: tuple
    loc: Optional[SourceLocation] = _loc()


@node
class Module:
    path: str
    items: tuple
    loc: Optional[SourceLocation] = _loc()
