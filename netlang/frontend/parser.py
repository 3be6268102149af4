"""Source text → typed AST, with Lark, and every Lark error converted here.

This module is the front end's one boundary with Lark: the rest of netlang never
imports lark, and no Lark exception leaves `parse`.  The work behind it is split
by stage: `parse_tables` (the grammar and its cached LALR tables), `limits`
(refusing hostile input before each stage), `syntax_errors` (Lark's errors in
plain words) and `to_ast` (parse tree → AST).
"""

from __future__ import annotations

import functools
import os
import threading

import lark
from lark import Token

from netlang.errors import NetlangError, NetlangFileError, NetlangSyntaxError, SourceLocation
from netlang.frontend import ast
from netlang.frontend.limits import (
    MAX_SOURCE_BYTES,
    check_ast_depth,
    check_characters,
    check_nesting,
    check_token_count,
    check_tree_depth,
)
from netlang.frontend.parse_tables import load_parser, plain_parser
from netlang.frontend.syntax_errors import more_syntax_errors, syntax_error
from netlang.frontend.to_ast import ToAst


def parse(source: str, path: str = "<string>") -> ast.Module:
    """Parse `source` into an `ast.Module`; raises NetlangSyntaxError with a position."""
    return _parse_with(plain_parser(), source, path)


# Comments are %ignore'd, so the plain parser drops them; `fmt` must keep them.  A second
# parser hands each COMMENT token to a callback, which appends it to this thread's list.
_comment_sink = threading.local()


def _collect_comment(token: Token) -> Token:
    _comment_sink.comments.append(token)
    return token


@functools.lru_cache(maxsize=None)
def _comment_parser() -> lark.Lark:
    return load_parser(lexer_callbacks={"COMMENT": _collect_comment})


def parse_with_comments(source: str, path: str = "<string>"):
    """Like `parse`, and also return the comments as `(line, column, text)`, in source order."""
    _comment_sink.comments = []
    try:
        module = _parse_with(_comment_parser(), source, path)
        tokens = _comment_sink.comments
    finally:
        _comment_sink.comments = []
    found = {(t.line, t.column): str(t) for t in tokens}  # keyed by position: never one twice
    return module, [(line, column, text) for (line, column), text in sorted(found.items())]


def _parse_with(parser: lark.Lark, source: str, path: str) -> ast.Module:
    if source.startswith("\ufeff"):  # a byte-order mark, as some editors write
        source = source[1:]
    check_characters(source, path)
    check_token_count(source, path)
    check_nesting(source, path)
    try:
        tree = parser.parse(source)
    except lark.exceptions.UnexpectedInput as exc:
        error = syntax_error(exc, source, path)
        more = more_syntax_errors(source, path, error.line)
        if more:
            raise NetlangSyntaxError(diagnostics=error.diagnostics + more) from None
        raise error from None
    check_tree_depth(tree, path, source)
    try:
        module = ToAst(path, source).transform(tree)
    except lark.exceptions.VisitError as exc:
        raise _unwrapped(exc) from None
    check_ast_depth(module, path, source)
    return module


def _unwrapped(exc: lark.exceptions.VisitError) -> Exception:
    """The exception a transformer method raised, taken out of Lark's VisitError.

    A NetlangError (a number too large) is the user's mistake and leaves as it is.  Anything
    else is a fault in netlang's own transformer, or the stack running out: it leaves as
    itself too, never as a Lark type (so `lower_source` can still turn a RecursionError into
    a diagnostic), with a note naming the grammar rule and the line it was converting.
    """
    original = exc.orig_exc
    if not isinstance(original, NetlangError):
        meta = getattr(exc.obj, "meta", None)
        where = f" on line {meta.line}" if meta is not None and not getattr(meta, "empty", True) \
            else ""
        original.add_note(f"raised while converting the grammar rule `{exc.rule}`{where}")
    return original


def read_source(path) -> str:
    """Read a `.net` file, refusing what cannot be source text with one clear line."""
    p = os.fspath(path)
    where = SourceLocation(p, 1, 1)
    if not os.path.exists(p):
        raise NetlangFileError(f"no such file: {p}", None, path=p)
    if os.path.isdir(p):
        raise NetlangFileError(f"{p} is a directory, not a .net file", None, path=p)
    if not os.path.isfile(p):  # a FIFO or a device such as /dev/zero would hang the read
        raise NetlangFileError(f"{p} is not a regular file", None, path=p)
    try:
        size = os.path.getsize(p)
        if size > MAX_SOURCE_BYTES:
            raise NetlangFileError(
                f"{p} is {size} bytes; .net files are limited to {MAX_SOURCE_BYTES} bytes", where)
        with open(p, "rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise NetlangFileError(f"cannot read {p}: {exc.strerror or exc}", None, path=p) from None
    if b"\0" in data:
        raise NetlangFileError(f"{p} is a binary file, not a .net file", where)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Point at the offending byte, in a copy of the text where it reads as U+FFFD.
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start:exc.start].decode("utf-8", "replace")) + 1
        shown = data.decode("utf-8", "replace")
        raise NetlangFileError(f"{p} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
                               SourceLocation(p, line, column, line, column + 1, shown)) from None
    if not text.strip():
        raise NetlangFileError(f"{p} is empty: a model needs at least one `input`", where)
    return text
