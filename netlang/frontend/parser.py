"""Source text → typed AST, with Lark, and every Lark error converted here.

This module is the one boundary between Lark and the rest of netlang: nothing
else imports lark, and no Lark exception leaves it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading

import lark
from lark import Token, v_args

from netlang.errors import (NetlangFileError, NetlangSyntaxError, SourceLocation, did_you_mean)
from netlang.frontend import ast

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NESTING = 64
# Deeper syntax trees (`- - - x`, `a.shape.shape...`, `1 + 1 + ...`) would overflow the Python
# stack of the recursive tree walks; refuse them with a position instead.
MAX_DEPTH = 100
# Lark's LALR parser takes ~60 µs a token: beyond this many a file is refused up front (in well
# under a second) rather than parsed for minutes.  Real models are a few thousand tokens.
MAX_TOKENS = 50_000
# Integers beyond this many bits are refused (so are results of arithmetic; see lower.py).
MAX_INT_BITS = 256
KEYWORDS = ("import", "const", "input", "output", "block", "train", "if", "else", "as", "on",
            "and", "or", "not", "true", "false")

# How terminals are named in "expected ..." messages.
_TERMINAL_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string",
                   "COMPARE": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`/`, `//` or `%`", "STAR": "`*`",
                   "$END": "the end of the file"}


@functools.lru_cache(maxsize=None)
def grammar_text() -> str:
    return importlib.resources.files("netlang.grammar").joinpath("netlang.lark").read_text("utf-8")


_LARK_OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}
_CACHE_FORMAT = 1


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    return _load_parser()


# Building the LALR tables from the grammar takes 0.2-0.5 s, far more than parsing a model, so
# the tables are cached on disk: serialized by Lark, written with `marshal` (plain data; nothing
# in the file is ever run), in a private per-user directory, under a name that hashes the
# grammar text, the Lark and Python versions and the options.  Lark's own `cache=True` is not
# used: it unpickles a predictably named file in the shared temp directory.  Any problem with
# the cache (unwritable home, a corrupt or foreign file) just means building the tables anew.

def _parser_cache_path():
    import hashlib
    import os
    import sys
    base = os.environ.get("NETLANG_CACHE")
    if base:
        directory = os.path.join(base, "parser")
    else:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(home, "netlang", "parser")
    if not os.path.isabs(directory):  # no home directory to be found: no cache
        raise OSError("no cache directory")
    key = hashlib.sha256("\0".join([
        grammar_text(), lark.__version__, sys.version, repr(sorted(_LARK_OPTIONS.items())),
        str(_CACHE_FORMAT)]).encode("utf-8")).hexdigest()
    return directory, os.path.join(directory, f"lalr-{key[:40]}.marshal"), key


def _trusted(stat_result) -> bool:
    """Owned by this user and writable by no one else (always true where there are no uids)."""
    import os
    import stat
    if not hasattr(os, "getuid"):
        return True
    return stat_result.st_uid == os.getuid() and not stat_result.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_cached_tables():
    import marshal
    import os
    try:
        directory, path, key = _parser_cache_path()
        if not _trusted(os.stat(directory)):
            return None
        with open(path, "rb") as handle:
            if not _trusted(os.fstat(handle.fileno())):
                return None
            blob = handle.read()
        record = marshal.loads(blob)
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        return record["data"], record["memo"]
    except Exception:  # missing, unreadable, truncated or foreign: build the tables instead
        return None


def _write_cached_tables(data, memo) -> None:
    import marshal
    import os
    import tempfile
    try:
        directory, path, key = _parser_cache_path()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _trusted(os.stat(directory)):
            return
        blob = marshal.dumps({"key": key, "data": data, "memo": memo})
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lalr-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except Exception:  # a read-only or full disk only costs the next process the build
        pass


@functools.lru_cache(maxsize=None)
def _parser_tables():
    """Lark's serialized parser (data, memo): from the disk cache, else built and cached."""
    cached = _read_cached_tables()
    if cached is not None:
        return cached
    built = lark.Lark(grammar_text(), **_LARK_OPTIONS)
    data, memo = built.memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])
    _write_cached_tables(data, memo)
    return data, memo


def _load_parser(**runtime_options) -> lark.Lark:
    """A Lark LALR parser for the grammar; `runtime_options` such as `lexer_callbacks`."""
    try:
        data, memo = _parser_tables()
        return lark.Lark._load_from_dict(data, memo, **runtime_options)
    except Exception:  # a Lark whose serialization differs: build directly, as before
        return lark.Lark(grammar_text(), **_LARK_OPTIONS, **runtime_options)


def parse(source: str, path: str = "<string>") -> ast.Module:
    """Parse `source` into an `ast.Module`; raises NetlangSyntaxError with a position."""
    return _parse_with(_parser(), source, path)


# Comments are %ignore'd, so the plain parser drops them; `fmt` must keep them.  A second
# parser hands each COMMENT token to a callback, which appends it to this thread's list.
_comment_sink = threading.local()


def _collect_comment(token: Token) -> Token:
    _comment_sink.comments.append(token)
    return token


@functools.lru_cache(maxsize=None)
def _comment_parser() -> lark.Lark:
    return _load_parser(lexer_callbacks={"COMMENT": _collect_comment})


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
    _check_token_count(source, path)
    _check_nesting(source, path)
    try:
        tree = parser.parse(source)
    except lark.exceptions.UnexpectedInput as exc:
        error = _syntax_error(exc, source, path)
        more = _more_syntax_errors(source, path, error.line)
        if more:
            raise NetlangSyntaxError(diagnostics=error.diagnostics + more) from None
        raise error from None
    _check_tree_depth(tree, path, source)
    try:
        module = _ToAst(path, source).transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, NetlangSyntaxError):
            raise exc.orig_exc from None
        raise
    _check_ast_depth(module, path, source)
    return module


_ROUGH_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z0-9_.]+|->|\*\*|//|[=!<>]=|\S')


def _check_token_count(source: str, path: str) -> None:
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


def _check_tree_depth(tree, path: str, source: str) -> None:
    """Refuse a parse tree deeper than MAX_DEPTH before the (recursive) transform walks it."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(path, source, _first_position(node))
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


def _check_ast_depth(module: ast.Module, path: str, source: str) -> None:
    """Refuse an AST deeper than MAX_DEPTH: folding `a + b + c + ...` nests it more than the
    parse tree, and lowering evaluates expressions recursively."""
    import dataclasses
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


_AST_FIELDS: dict = {}


def _loc_of(meta, path, source) -> SourceLocation:
    return SourceLocation(path, meta.line, meta.column, meta.end_line, meta.end_column, source)


def _check_nesting(source: str, path: str) -> None:
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
        return "end of the file"
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
        if char == '"':
            message = "unterminated string: a string ends with `\"` on the same line"
        elif char.isprintable() and not char.isspace():
            message = f"unexpected character `{char}`"
        else:  # a control character or odd space would garble the message; name its code
            message = f"unexpected character U+{ord(char):04X}" if char else "unexpected character"
        end = column + 1
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            lines = source.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
        message = f"unexpected {_describe_token(token)}"
        opened = _unclosed_bracket(source, len(source) if token.type == "$END" else exc.pos_in_stream)
        # LALR states are shared, so a closing bracket may be "expected" with none open: drop it.
        allowed = {t for t in exc.expected
                   if t not in _CLOSERS.values() or (opened and _CLOSERS[opened[0]] == t)}
        expected = sorted({_describe_terminal(t) for t in allowed})
        if expected and len(expected) <= 8:
            message += "; expected " + _join_or(expected)
        else:  # too many to list: name the punctuation that would close or continue it
            closing = [word for terminal, word in (("COMMA", "`,`"), ("RPAR", "`)`"),
                                                   ("RSQB", "`]`"), ("RBRACE", "`}`"))
                       if terminal in allowed]
            if closing:
                message += "; expected " + _join_or(closing + ["more of the expression"])
        end = column + max(len(str(token)), 1) if token.type != "$END" else column + 1
        misspelt = _keyword_hint(source, exc)
        if misspelt:  # the culprit is the word before, not the token the parser stumbled on
            word, start, suggestion = misspelt
            notes.append(message)
            message = f"unknown keyword `{word}`{suggestion}"
            line = source.count("\n", 0, start) + 1
            column = start - (source.rfind("\n", 0, start) + 1) + 1
            end = column + len(word)
        if opened is not None and _CLOSERS[opened[0]] in exc.expected:
            notes.append(f"the `{opened[0]}` on line {opened[1]}, column {opened[2]} is not closed")
    else:  # UnexpectedEOF and any other kind
        message = "unexpected end of the file"
        end = column + 1
    loc = SourceLocation(path, line, column, line, end, source)
    return NetlangSyntaxError(message, loc, notes=notes)


_CLOSERS = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}

# Recovery: after a syntax error, the parser goes on at the next statement that starts a line
# (at column 1) and is self-contained, so one file's independent mistakes are reported together.
MAX_SYNTAX_ERRORS = 10
_RECOVERY_BUDGET = 200_000  # lines scanned looking for statements, at most
_STATEMENT_START = re.compile(r"(?:import|const|input|output|block|train|if)\b"
                              r"|[A-Za-z_]\w*\s*(?:,\s*[A-Za-z_]\w*\s*)*=(?!=)")


def _brackets(text: str):
    """(offset, bracket) of each bracket in `text` outside strings and comments.  A string or
    comment ends at the end of its line, as the grammar has it."""
    in_string = in_comment = escaped = False
    for offset, ch in enumerate(text):
        if ch == "\n":
            in_string = in_comment = escaped = False
        elif in_comment:
            pass
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "([{)]}":
            yield offset, ch


def _line_brackets(text: str):
    """(net change of bracket depth, lowest depth reached) over one line, outside strings."""
    depth = lowest = 0
    for _, ch in _brackets(text):
        if ch in "([{":
            depth += 1
        else:
            depth -= 1
            lowest = min(lowest, depth)
    return depth, lowest


def _more_syntax_errors(source: str, path: str, first_line: int) -> list:
    """The syntax errors after the one on `first_line`, found by parsing each later
    self-contained top-level statement on its own."""
    lines = source.split("\n")
    candidates = [i for i, text in enumerate(lines) if _STATEMENT_START.match(text)]
    is_candidate = set(candidates)
    brackets: dict = {}
    budget = _RECOVERY_BUDGET

    def statement_end(start):
        """The line after the statement starting on line `start` (0-based), or None if that
        line is inside something opened earlier (its brackets close what it did not open)."""
        nonlocal budget
        depth = 0
        for k in range(start, len(lines)):
            budget -= 1
            if k > start and depth == 0 and k in is_candidate:
                return k
            if k not in brackets:
                brackets[k] = _line_brackets(lines[k])
            net, lowest = brackets[k]
            if depth + lowest < 0 or budget < 0:
                return None
            depth += net
        return len(lines)

    found, after = [], first_line  # `after`: 0-based index of the first line to consider
    position = 0
    characters = len(source)
    while len(found) < MAX_SYNTAX_ERRORS - 1 and budget > 0:
        while position < len(candidates) and candidates[position] < after:
            position += 1
        chunk = None
        while position < len(candidates) and budget > 0:
            start = candidates[position]
            end = statement_end(start)
            if end is not None:
                chunk = (start, end)
                break
            position += 1
        if chunk is None:
            break
        start, end = chunk
        text = "\n" * start + "\n".join(lines[start:end])  # padded: lines keep their numbers
        characters -= len(text) - start
        if characters < 0:  # recovery may re-read the file about once, no more
            break
        try:
            _parser().parse(text)
        except lark.exceptions.UnexpectedInput as exc:
            diagnostic = _syntax_error(exc, text, path).diagnostics[0]
            loc = diagnostic.loc
            if isinstance(exc, lark.exceptions.UnexpectedToken) and exc.token.type == "$END" \
                    and end < len(lines):
                # The statement stops before the next one starts: say so where it stops.
                last = max(k for k in range(start, end) if lines[k].strip()) if \
                    any(lines[k].strip() for k in range(start, end)) else start
                column = len(lines[last].rstrip()) + 1
                diagnostic.message = diagnostic.message.replace(
                    "unexpected end of the file", "this statement is incomplete", 1)
                loc = SourceLocation(path, last + 1, column, last + 1, column + 1, source)
            else:
                loc = SourceLocation(path, loc.line, loc.column, loc.end_line, loc.end_column, source)
            diagnostic.loc = loc
            found.append(diagnostic)
            after = max(loc.line, start + 1)
            continue
        after = end
    return found


def _unclosed_bracket(source: str, pos: int):
    """(bracket, line, column) of the innermost bracket still open at `pos`, or None."""
    stack = []
    for offset, ch in _brackets(source[:pos]):
        if ch in "([{":
            stack.append((ch, offset))
        elif stack:
            stack.pop()
    if not stack:
        return None
    ch, offset = stack[-1]
    return ch, source.count("\n", 0, offset) + 1, offset - source.rfind("\n", 0, offset)


def _keyword_hint(source: str, exc):
    """(word, offset, suggestion) for a misspelt keyword just before the error (`inptu x: [2]`)."""
    if exc.pos_in_stream is None:
        return None
    before = source[:exc.pos_in_stream]
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", before)
    if not match or match.group(1) in KEYWORDS:
        return None
    # Only a word where a statement starts (`inptu x`, `} esle {`), not any name (`as blk.x`).
    if before[:match.start()].rstrip(" \t\r\f")[-1:] not in ("", "\n", "{", "}"):
        return None
    suggestion = did_you_mean(match.group(1), ("import", "const", "input", "output", "block", "train",
                                               "else"))
    return (match.group(1), match.start(1), suggestion) if suggestion else None


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
        try:
            value = _number(token)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            value = None
        if value is None or (isinstance(value, int) and value.bit_length() > MAX_INT_BITS):
            raise NetlangSyntaxError(f"the number {str(token)[:20]}... is too large",
                                     self.tok_loc(token))
        return ast.Number(value, str(token), loc=self.loc(meta))

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
