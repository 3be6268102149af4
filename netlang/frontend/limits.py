"""Limits that keep a hostile or absurd file from hanging or crashing the front end.

Each check runs before the stage it protects: the file's size before reading it
(`read_source`), the token count before Lark (whose
LALR parser takes ~60 µs a token), bracket nesting and tree depth before the
recursive tree transform, AST depth before lowering evaluates expressions
recursively; before all of them, characters that are not text at all
(`check_characters`).  Each refuses with a NetlangSyntaxError at a position, never a
traceback.
"""

from __future__ import annotations

import dataclasses
import re

import lark
from lark import Token

from netlang.errors import NetlangSyntaxError, SourceLocation
from netlang.frontend import ast

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NESTING = 64
# Deeper syntax trees (`- - - x`, `a.shape.shape...`, `1 + 1 + ...`) would overflow the Python
# stack of the recursive tree walks; refuse them with a position instead.
MAX_DEPTH = 100
# Lark's LALR parser takes ~60 µs a token: beyond this many a file is refused up front (in well
# under a second) rather than parsed for minutes.  Real models are a few thousand tokens.
MAX_TOKENS = 50_000
# Integers beyond this many bits are refused (so are results of arithmetic; see
# netlang.lower.expressions).
MAX_INT_BITS = 256

_ROUGH_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z0-9_.]+|->|\*\*|//|[=!<>]=|\S')


_NOT_TEXT = re.compile("[\0\ud800-\udfff]")


def check_characters(source: str, path: str) -> None:
    """Refuse text that no file could hold: a NUL (read_source calls such a file binary) or a
    lone surrogate (half of a UTF-16 pair; not Unicode text, and it cannot be encoded, so it
    could be neither hashed nor printed).  Only a string given to `netlang.compile` can carry
    either; a comment too, which the parser would skip."""
    found = _NOT_TEXT.search(source)
    if found is None:
        return
    start = found.start()
    line = source.count("\n", 0, start) + 1
    column = start - (source.rfind("\n", 0, start) + 1) + 1
    what = "a NUL character" if found.group() == "\0" else \
        f"a lone surrogate (U+{ord(found.group()):04X}), which is not Unicode text"
    loc = SourceLocation(path, line, column, line, column + 1, source)
    raise NetlangSyntaxError(f"this text contains {what}", loc)


def check_token_count(source: str, path: str) -> None:
    """Refuse a file of more than MAX_TOKENS tokens (counted roughly, without Lark) quickly."""
    if len(source) < MAX_TOKENS:  # every token is at least one character
        return
    for count, match in enumerate(_ROUGH_TOKEN.finditer(source), start=1):
        if count > MAX_TOKENS:
            start = match.start()
            line = source.count("\n", 0, start) + 1
            column = start - (source.rfind("\n", 0, start) + 1) + 1
            loc = SourceLocation(path, line, column, line, column + 1, source)
            raise NetlangSyntaxError(f"this file is too long: more than {MAX_TOKENS:,} tokens", loc)


def _first_position(tree):
    """(line, column, end_line, end_column) of the first token under a Lark tree, if any."""
    meta = getattr(tree, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return meta.line, meta.column, meta.end_line, meta.end_column
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Token):
            if node.line is not None:
                return node.line, node.column, node.end_line, node.end_column
        elif isinstance(node, lark.Tree):
            stack.extend(reversed(node.children))
    return 1, 1, None, None


def _too_deep(path, source, position) -> NetlangSyntaxError:
    line, column, end_line, end_column = position
    loc = SourceLocation(path, line, column, end_line, end_column, source)
    return NetlangSyntaxError(f"this is nested too deeply (more than {MAX_DEPTH} levels); "
                              f"split it into named steps", loc)


def check_tree_depth(tree, path: str, source: str) -> None:
    """Refuse a parse tree deeper than MAX_DEPTH before the (recursive) transform walks it."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(path, source, _first_position(node))
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


_AST_FIELDS: dict = {}


def check_ast_depth(module: ast.Module, path: str, source: str) -> None:
    """Refuse an AST deeper than MAX_DEPTH: folding `a + b + c + ...` nests it more than the
    parse tree, and lowering evaluates expressions recursively."""
    stack = [(module, 1)]
    fields_of = _AST_FIELDS  # class → its non-location field names (None: not an AST node)
    while stack:
        node, depth = stack.pop()
        if isinstance(node, tuple):
            stack.extend((item, depth) for item in node)
            continue
        cls = node.__class__
        if cls not in fields_of:
            fields_of[cls] = (tuple(f.name for f in dataclasses.fields(cls)
                                    if not f.name.endswith("loc"))
                              if dataclasses.is_dataclass(cls) else None)
        names = fields_of[cls]
        if names is None:
            continue
        if depth > MAX_DEPTH:
            loc = node.loc
            position = (loc.line, loc.column, loc.end_line, loc.end_column) if loc else (1, 1, None, None)
            raise _too_deep(path, source, position)
        for name in names:
            stack.append((getattr(node, name), depth + 1))


def check_nesting(source: str, path: str) -> None:
    """Refuse absurdly deep bracket nesting before the (recursive) tree transform sees it."""
    depth, line, column = 0, 1, 0
    in_string = in_comment = escaped = False
    for ch in source:
        column += 1
        if ch == "\n":
            line, column, in_comment, in_string = line + 1, 0, False, False
            continue
        if in_comment:
            continue
        if in_string:
            if escaped:  # `\"` does not end the string
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
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
