"""Lark's parse tree → the typed AST of netlang.frontend.ast, with a position on every node.

`ToAst` has one method per grammar rule, each given the rule's `meta` (its span in
the source) by `v_args(meta=True)`; `__default__` refuses a rule without one, so
the AST never holds a raw Lark tree.  A mistake only visible here (a number too
large) raises NetlangSyntaxError, which Lark wraps in a VisitError that
netlang.frontend.parser unwraps.
"""

from __future__ import annotations

import re

import lark
from lark import Token, v_args

from netlang.errors import NetlangSyntaxError, SourceLocation
from netlang.frontend import ast
from netlang.frontend.limits import MAX_INT_BITS


def _number(token: Token):
    text = str(token).replace("_", "")
    if re.fullmatch(r"\d+", text):
        return int(text)
    return float(text)


def _spliced(steps) -> tuple:
    """A chain's or group's steps, with the steps of plain parentheses (a tuple) spliced in."""
    out = []
    for item in steps:
        if isinstance(item, tuple):
            out.extend(item)
        else:
            out.append(item)
    return tuple(out)


def _unescape(text: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text[1:-1])


@v_args(meta=True, inline=True)
class ToAst(lark.Transformer):
    """Lark parse tree → ast nodes.  Every rule has a method; `__default__` refuses the rest."""

    def __init__(self, path, source):
        super().__init__()
        self.path, self.source = path, source

    def loc(self, meta) -> SourceLocation:
        """The source span of a rule, from its meta."""
        return SourceLocation(self.path, meta.line, meta.column, meta.end_line, meta.end_column,
                              self.source)

    def tok_loc(self, token: Token) -> SourceLocation:
        """The source span of one token."""
        return SourceLocation(self.path, token.line, token.column, token.end_line, token.end_column,
                              self.source)

    def name_node(self, token: Token) -> ast.Name:
        """A NAME token as an ast.Name with its position."""
        return ast.Name(str(token), loc=self.tok_loc(token))

    def __default__(self, data, children, meta):
        raise NotImplementedError(f"grammar rule {data!r} has no AST conversion")

    def start(self, meta, *items):
        """A whole file → ast.Module."""
        return ast.Module(self.path, tuple(items), loc=self.loc(meta) if items else None)

    def import_stmt(self, meta, path):
        """`import "path"` → ast.Import."""
        return ast.Import(_unescape(str(path)), loc=self.loc(meta))

    def const_stmt(self, meta, name, value):
        """`const NAME = expr` → ast.Const."""
        return ast.Const(self.name_node(name), value, loc=self.loc(meta))

    def input_stmt(self, meta, name, type_, noise):
        """`input NAME: [dims] [~ distribution(args)]` → ast.Input."""
        return ast.Input(self.name_node(name), type_, noise, loc=self.loc(meta))

    def noise(self, meta, distribution, args):
        """`~ NAME(args)` after an input's type → ast.Noise."""
        return ast.Noise(str(distribution), args or (), loc=self.loc(meta),
                         op_loc=self.tok_loc(distribution))

    def tensor_type(self, meta, dtype, *dims):
        """`dtype[d1, d2]` → ast.TensorTypeExpr (the dtype is optional)."""
        return ast.TensorTypeExpr(str(dtype) if dtype is not None else None,
                                  tuple(d for d in dims if d is not None), loc=self.loc(meta),
                                  dtype_loc=self.tok_loc(dtype) if dtype is not None else None)

    def output_stmt(self, meta, name, value):
        """`output NAME [= chain]` → ast.Output."""
        return ast.Output(self.name_node(name), value, loc=self.loc(meta))

    def assign_stmt(self, meta, *parts):
        """`a, b = chain` → ast.Assign."""
        *targets, value = parts
        return ast.Assign(tuple(self.name_node(t) for t in targets), value, loc=self.loc(meta))

    def if_stmt(self, meta, condition, *rest):
        """`if cond { ... } else { ... }` → ast.If."""
        *body, orelse = rest
        return ast.If(condition, tuple(body), orelse or (), loc=self.loc(meta))

    def else_clause(self, meta, *items):
        """The statements of an `else` (an `else if` is one ast.If)."""
        return tuple(items)

    def block_def(self, meta, name, *rest):
        """`block NAME(params) { ... }` → ast.BlockDef."""
        params = tuple(p for p in rest if isinstance(p, ast.BlockParam))
        body = tuple(p for p in rest if p is not None and not isinstance(p, ast.BlockParam))
        return ast.BlockDef(self.name_node(name), params, body, loc=self.loc(meta))

    def block_param(self, meta, name, default):
        """`NAME [= default]` in a block definition → ast.BlockParam."""
        return ast.BlockParam(self.name_node(name), default, loc=self.loc(meta))

    def train_block(self, meta, name, *items):
        """`train [NAME] { ... }` → ast.Train (named: a training phase)."""
        return ast.Train(tuple(items), self.name_node(name) if name is not None else None,
                         loc=self.loc(meta))

    def train_stmt(self, meta, key, *rest):
        """`key value, ... [on layers]` → ast.TrainItem."""
        *values, on = rest
        return ast.TrainItem(self.name_node(key), tuple(values), on or (), loc=self.loc(meta))

    def on_clause(self, meta, *names):
        """The layer names after `on`."""
        return tuple(self.name_node(n) for n in names)

    def chain(self, meta, source, *steps):
        """`source -> step -> ...` → ast.Chain; a bare expression stays itself."""
        if not steps:
            return source
        return ast.Chain(source, _spliced(steps), loc=self.loc(meta))

    def group(self, meta, *parts):
        """`(step -> step) * repeat as label` → ast.Group; without either, its bare steps."""
        *steps, repeat, label = parts
        if repeat is None and label is None:
            return _spliced(steps)  # spliced into the enclosing chain or group
        label_name, label_loc = label if label else (None, None)
        return ast.Group(_spliced(steps), repeat, label_name, loc=self.loc(meta),
                         label_loc=label_loc)

    def step(self, meta, name, args, repeat, label):
        """`NAME(args) * repeat as label` → ast.Step."""
        label_name, label_loc = label if label else (None, None)
        return ast.Step(str(name), args, repeat, label_name, loc=self.loc(meta),
                        op_loc=self.tok_loc(name), label_loc=label_loc)

    def repeat(self, meta, count):
        """The count after `*` in a step."""
        return count

    def label(self, meta, name):
        """The name after `as`, with its position."""
        return (str(name), self.tok_loc(name))

    def call_args(self, meta, *args):
        """`(a, b, key = c)` → a tuple of ast.Arg."""
        return tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, loc=a.loc)
                     for a in args if a is not None)

    def keyword_arg(self, meta, name, value):
        """`NAME = expr` among call arguments → ast.Arg."""
        return ast.Arg(str(name), value, loc=self.loc(meta))

    def _fold(self, meta, op, operands):
        result = operands[0]
        for operand in operands[1:]:
            result = ast.BinOp(op, result, operand, loc=self.loc(meta))
        return result

    def or_expr(self, meta, *operands):
        """`a or b or ...` → nested ast.BinOp."""
        return self._fold(meta, "or", operands)

    def and_expr(self, meta, *operands):
        """`a and b and ...` → nested ast.BinOp."""
        return self._fold(meta, "and", operands)

    def not_op(self, meta, operand):
        """`not x` → ast.UnaryOp."""
        return ast.UnaryOp("not", operand, loc=self.loc(meta))

    def comparison(self, meta, left, op, right):
        """`a < b` (one comparison, not chained) → ast.BinOp."""
        return ast.BinOp(str(op), left, right, loc=self.loc(meta), op_loc=self.tok_loc(op))

    def _infix(self, meta, parts):
        result = parts[0]
        for op, operand in zip(parts[1::2], parts[2::2]):
            result = ast.BinOp(str(op), result, operand, loc=self.loc(meta),
                               op_loc=self.tok_loc(op))
        return result

    def sum(self, meta, *parts):
        """`a + b - c` → ast.BinOp, left to right."""
        return self._infix(meta, parts)

    def product(self, meta, *parts):
        """`a * b / c` → ast.BinOp, left to right."""
        return self._infix(meta, parts)

    def negate(self, meta, operand):
        """`-x` → ast.UnaryOp; a negated literal stays one ast.Number."""
        if isinstance(operand, ast.Number):
            return ast.Number(-operand.value, "-" + operand.text, loc=self.loc(meta))
        return ast.UnaryOp("-", operand, loc=self.loc(meta))

    def power(self, meta, base, exponent):
        """`a ** b` → ast.BinOp."""
        return ast.BinOp("**", base, exponent, loc=self.loc(meta))

    def attribute(self, meta, value, name):
        """`x.shape` → ast.Attribute."""
        return ast.Attribute(value, str(name), loc=self.loc(meta))

    def index(self, meta, value, index):
        """`x[i]` → ast.Index."""
        return ast.Index(value, index, loc=self.loc(meta))

    def number(self, meta, token):
        """A NUMBER → ast.Number; an integer beyond MAX_INT_BITS is refused."""
        try:
            value = _number(token)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            value = None
        if value is None or (isinstance(value, int) and value.bit_length() > MAX_INT_BITS):
            raise NetlangSyntaxError(f"the number {str(token)[:20]}... is too large",
                                     self.tok_loc(token))
        return ast.Number(value, str(token), loc=self.loc(meta))

    def string(self, meta, token):
        """A STRING → ast.String, its escapes resolved."""
        return ast.String(_unescape(str(token)), loc=self.loc(meta))

    def name(self, meta, token):
        """A NAME used as a value → ast.Name."""
        return ast.Name(str(token), loc=self.loc(meta))

    def true(self, meta):
        """`true` → ast.Bool."""
        return ast.Bool(True, loc=self.loc(meta))

    def false(self, meta):
        """`false` → ast.Bool."""
        return ast.Bool(False, loc=self.loc(meta))

    def call(self, meta, name, args):
        """`f(args)` in an expression → ast.Call."""
        return ast.Call(str(name), args or (), loc=self.loc(meta))

    def tuple(self, meta, *items):
        """`(a, b)`, `(a,)` or `()` → ast.Tuple."""
        return ast.Tuple(tuple(i for i in items if i is not None), loc=self.loc(meta))
