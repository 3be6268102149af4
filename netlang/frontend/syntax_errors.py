"""Lark's syntax errors → NetlangSyntaxErrors in plain words, and recovery to find the rest.

A Lark `UnexpectedInput` names parser states and terminal names; `syntax_error`
turns it into one diagnostic that says what was found and what would fit, points
at a misspelt keyword or an unclosed bracket, and never lists more than a few
choices.  `more_syntax_errors` then looks past the first error, parsing each later
self-contained statement on its own, so one file's independent mistakes are
reported together.
"""

from __future__ import annotations

import re

import lark
from lark import Token

from netlang.errors import NetlangSyntaxError, SourceLocation, did_you_mean
from netlang.frontend.parse_tables import KEYWORDS, plain_parser

# How terminals are named in "expected ..." messages.
_TERMINAL_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string",
                   "COMPARE": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`/`, `//` or `%`", "STAR": "`*`",
                   "$END": "the end of the file"}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = plain_parser().get_terminal(name).pattern
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


def syntax_error(exc: lark.exceptions.UnexpectedInput, source: str, path: str) -> NetlangSyntaxError:
    """The NetlangSyntaxError for one Lark parse error, its message in the language's words."""
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


def more_syntax_errors(source: str, path: str, first_line: int) -> list:
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
            plain_parser().parse(text)
        except lark.exceptions.UnexpectedInput as exc:
            diagnostic = syntax_error(exc, text, path).diagnostics[0]
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
