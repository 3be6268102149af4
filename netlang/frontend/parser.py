"""Source text → typed AST, with Lark, and every Lark error converted here.

This module is the one boundary between Lark and the rest of netlang: nothing
else imports lark, and no Lark exception leaves it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

import lark
from lark import Token, v_args

from netlang.errors import (NetlangFileError, NetlangSyntaxError, SourceLocation, did_you_mean)
from netlang.frontend import ast

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NESTING = 64
KEYWORDS = ("import", "const", "input", "output", "block", "train", "if", "else", "as", "on",
            "and", "or", "not", "true", "false")

# How terminals are named in "expected ..." messages.
_TERMINAL_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string",
                   "COMPARE": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`*`, `/`, `//` or `%`",
                   "$END": "the end of the file"}


@functools.lru_cache(maxsize=None)
def grammar_text() -> str:
    return importlib.resources.files("netlang.grammar").joinpath("netlang.lark").read_text("utf-8")


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True)


def parse(source: str, path: str = "<string>") -> ast.Module:
    """Parse `source` into an `ast.Module`; raises NetlangSyntaxError with a position."""
    _check_nesting(source, path)
    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(exc, source, path) from None
    try:
        return _ToAst(path, source).transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, NetlangSyntaxError):
            raise exc.orig_exc from None
        raise


def _loc_of(meta, path, source) -> SourceLocation:
    return SourceLocation(path, meta.line, meta.column, meta.end_line, meta.end_column, source)


def _check_nesting(source: str, path: str) -> None:
    """Refuse absurdly deep bracket nesting before the (recursive) tree transform sees it."""
    depth, line, column = 0, 1, 0
    in_string = in_comment = False
    for ch in source:
        column += 1
        if ch == "\n":
            line, column, in_comment, in_string = line + 1, 0, False, False
            continue
        if in_comment:
            continue
        if in_string:
            if ch == '"':
                in_string = False
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                loc = SourceLocation(path, line, column, line, column + 1, source)
                raise NetlangSyntaxError(f"brackets nested more than {MAX_NESTING} deep", loc)
        elif ch in ")]}":
            depth = max(0, depth - 1)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"`{pattern.value}`"
    return name.lower()


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type == "NAME":
        return f"name `{token}`"
    if token.type in ("NUMBER", "STRING"):
        return f"{token.type.lower()} `{token}`"
    return f"`{token}`"


def _syntax_error(exc: lark.exceptions.UnexpectedInput, source: str, path: str) -> NetlangSyntaxError:
    line, column = max(exc.line, 1), max(exc.column, 1)
    notes = []
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        message = f"unexpected character `{char}`"
        end = column + 1
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            lines = source.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
        message = f"unexpected {_describe_token(token)}"
        expected = sorted({_describe_terminal(t) for t in exc.expected})
        if expected and len(expected) <= 8:
            message += "; expected " + _join_or(expected)
        end = column + max(len(str(token)), 1) if token.type != "$END" else column + 1
        hint = _keyword_hint(source, exc)
        if hint:
            notes.append(hint)
    else:  # UnexpectedEOF and any other kind
        message = "unexpected end of the file"
        end = column + 1
    loc = SourceLocation(path, line, column, line, end, source)
    return NetlangSyntaxError(message, loc, notes=notes)


def _keyword_hint(source: str, exc) -> str:
    """A misspelt keyword just before the error (`inptu x: [2]`) gets a suggestion."""
    before = source[:exc.pos_in_stream]
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", before)
    if not match or match.group(1) in KEYWORDS:
        return ""
    suggestion = did_you_mean(match.group(1), ("import", "const", "input", "output", "block", "train"))
    return f"`{match.group(1)}` is not a keyword{suggestion}" if suggestion else ""


def _join_or(words) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _number(token: Token):
    text = str(token).replace("_", "")
    if re.fullmatch(r"\d+", text):
        return int(text)
    return float(text)


def _unescape(text: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text[1:-1])


@v_args(meta=True, inline=True)
class _ToAst(lark.Transformer):
    """Lark parse tree → ast nodes.  Every rule has a method; `__default__` refuses the rest."""

    def __init__(self, path, source):
        super().__init__()
        self.path, self.source = path, source

    def loc(self, meta) -> SourceLocation:
        return _loc_of(meta, self.path, self.source)

    def tok_loc(self, token: Token) -> SourceLocation:
        return SourceLocation(self.path, token.line, token.column, token.end_line, token.end_column,
                              self.source)

    def name_node(self, token: Token) -> ast.Name:
        return ast.Name(str(token), loc=self.tok_loc(token))

    def __default__(self, data, children, meta):
        raise NotImplementedError(f"grammar rule {data!r} has no AST conversion")

    def start(self, meta, *items):
        return ast.Module(self.path, tuple(items), loc=self.loc(meta) if items else None)

    def import_stmt(self, meta, path):
        return ast.Import(_unescape(str(path)), loc=self.loc(meta))

    def const_stmt(self, meta, name, value):
        return ast.Const(self.name_node(name), value, loc=self.loc(meta))

    def input_stmt(self, meta, name, type_):
        return ast.Input(self.name_node(name), type_, loc=self.loc(meta))

    def tensor_type(self, meta, dtype, *dims):
        return ast.TensorTypeExpr(str(dtype) if dtype is not None else None,
                                  tuple(d for d in dims if d is not None), loc=self.loc(meta),
                                  dtype_loc=self.tok_loc(dtype) if dtype is not None else None)

    def output_stmt(self, meta, name, value):
        return ast.Output(self.name_node(name), value, loc=self.loc(meta))

    def assign_stmt(self, meta, *parts):
        *targets, value = parts
        return ast.Assign(tuple(self.name_node(t) for t in targets), value, loc=self.loc(meta))

    def if_stmt(self, meta, condition, *rest):
        *body, orelse = rest
        return ast.If(condition, tuple(body), orelse or (), loc=self.loc(meta))

    def else_clause(self, meta, *items):
        return tuple(items)

    def block_def(self, meta, name, *rest):
        params = tuple(p for p in rest if isinstance(p, ast.BlockParam))
        body = tuple(p for p in rest if p is not None and not isinstance(p, ast.BlockParam))
        return ast.BlockDef(self.name_node(name), params, body, loc=self.loc(meta))

    def block_param(self, meta, name, default):
        return ast.BlockParam(self.name_node(name), default, loc=self.loc(meta))

    def train_block(self, meta, *items):
        return ast.Train(tuple(items), loc=self.loc(meta))

    def train_stmt(self, meta, key, *rest):
        *values, on = rest
        return ast.TrainItem(self.name_node(key), tuple(values), on or (), loc=self.loc(meta))

    def on_clause(self, meta, *names):
        return tuple(self.name_node(n) for n in names)

    def chain(self, meta, source, *steps):
        if not steps:
            return source
        return ast.Chain(source, tuple(steps), loc=self.loc(meta))

    def step(self, meta, name, args, repeat, label):
        label_name, label_loc = label if label else (None, None)
        return ast.Step(str(name), args, repeat, label_name, loc=self.loc(meta),
                        op_loc=self.tok_loc(name), label_loc=label_loc)

    def repeat(self, meta, count):
        return count

    def label(self, meta, name):
        return (str(name), self.tok_loc(name))

    def call_args(self, meta, *args):
        return tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, loc=a.loc)
                     for a in args if a is not None)

    def keyword_arg(self, meta, name, value):
        return ast.Arg(str(name), value, loc=self.loc(meta))

    def _fold(self, meta, op, operands):
        result = operands[0]
        for operand in operands[1:]:
            result = ast.BinOp(op, result, operand, loc=self.loc(meta))
        return result

    def or_expr(self, meta, *operands):
        return self._fold(meta, "or", operands)

    def and_expr(self, meta, *operands):
        return self._fold(meta, "and", operands)

    def not_op(self, meta, operand):
        return ast.UnaryOp("not", operand, loc=self.loc(meta))

    def comparison(self, meta, left, op, right):
        return ast.BinOp(str(op), left, right, loc=self.loc(meta))

    def _infix(self, meta, parts):
        result = parts[0]
        for op, operand in zip(parts[1::2], parts[2::2]):
            result = ast.BinOp(str(op), result, operand, loc=self.loc(meta))
        return result

    def sum(self, meta, *parts):
        return self._infix(meta, parts)

    def product(self, meta, *parts):
        return self._infix(meta, parts)

    def negate(self, meta, operand):
        if isinstance(operand, ast.Number):
            return ast.Number(-operand.value, "-" + operand.text, loc=self.loc(meta))
        return ast.UnaryOp("-", operand, loc=self.loc(meta))

    def power(self, meta, base, exponent):
        return ast.BinOp("**", base, exponent, loc=self.loc(meta))

    def attribute(self, meta, value, name):
        return ast.Attribute(value, str(name), loc=self.loc(meta))

    def index(self, meta, value, index):
        return ast.Index(value, index, loc=self.loc(meta))

    def number(self, meta, token):
        return ast.Number(_number(token), str(token), loc=self.loc(meta))

    def string(self, meta, token):
        return ast.String(_unescape(str(token)), loc=self.loc(meta))

    def name(self, meta, token):
        return ast.Name(str(token), loc=self.loc(meta))

    def true(self, meta):
        return ast.Bool(True, loc=self.loc(meta))

    def false(self, meta):
        return ast.Bool(False, loc=self.loc(meta))

    def call(self, meta, name, args):
        return ast.Call(str(name), args or (), loc=self.loc(meta))

    def tuple(self, meta, *items):
        return ast.Tuple(tuple(i for i in items if i is not None), loc=self.loc(meta))


def read_source(path) -> str:
    """Read a `.net` file, refusing what cannot be source text with one clear line."""
    import os
    p = os.fspath(path)
    where = SourceLocation(p, 1, 1)
    if not os.path.exists(p):
        raise NetlangFileError(f"no such file: {p}", None)
    if os.path.isdir(p):
        raise NetlangFileError(f"{p} is a directory, not a .net file", None)
    try:
        size = os.path.getsize(p)
        if size > MAX_SOURCE_BYTES:
            raise NetlangFileError(
                f"{p} is {size} bytes; .net files are limited to {MAX_SOURCE_BYTES} bytes", where)
        with open(p, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise NetlangFileError(f"cannot read {p}: {exc.strerror or exc}", None) from None
    if b"\0" in data:
        raise NetlangFileError(f"{p} is a binary file, not a .net file", where)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NetlangFileError(f"{p} is not UTF-8 text (byte {exc.start})", where) from None
    if not text.strip():
        raise NetlangFileError(f"{p} is empty: a model needs at least one `input`", where)
    return text
