"""Source locations, diagnostics and the error classes every layer raises.

A `.net` file is untrusted input, so every mistake in it must surface as a
`NetlangError` carrying a position, never as a Python traceback.  One error
object can carry several diagnostics: a file's mistakes are collected and
reported together, sorted by position.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import unicodedata
from typing import Iterable, Sequence

# How long a quoted name or string may be in a message before it is cut with an ellipsis, and
# how long a whole message may be: a 1 MB identifier must not make a 1 MB diagnostic.
MAX_ECHO = 80
MAX_MESSAGE = 2000
# Bidirectional overrides reorder what a terminal shows; they are escaped as control characters.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Quoted echoes, paired left to right as a reader pairs them.
_QUOTED = re.compile(r"`[^`\n]*`|\"[^\"\n]*\"")


def _unprintable(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI


def printable(text: str) -> str:
    """`text` safe to print on one line: control characters (newline, ANSI escape), lone
    surrogates and bidirectional overrides escaped as `\\n`, `\\x1b`, `\\ud800`; each quoted
    echo (`name` or "string") over MAX_ECHO characters cut with an ellipsis; the whole cut at
    MAX_MESSAGE.  A user's string can then neither forge a second diagnostic line, nor drive
    the terminal, nor flood it."""
    if any(_unprintable(ch) for ch in text):
        text = "".join(ch.encode("unicode_escape").decode("ascii") if _unprintable(ch) else ch
                       for ch in text)
    text = _QUOTED.sub(lambda m: m.group() if len(m.group()) <= MAX_ECHO + 2
                       else m.group()[:MAX_ECHO + 1] + "…" + m.group()[-1], text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


@dataclasses.dataclass(frozen=True)
class SourceLocation:
    """A span in a source file; lines and columns count from 1."""

    path: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None
    source: str | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{printable(self.path)}:{self.line}:{self.column}"

    def sort_key(self) -> tuple:
        """Where the span starts, `(path, line, column)`, as a key to sort or de-duplicate by."""
        return (self.path, self.line, self.column)


@dataclasses.dataclass
class Diagnostic:
    """One message about one place.

    `trace` lists the block instantiations and imports (innermost first, as rendered)
    through which the culprit was reached, so an error inside a block points at its
    callers too.
    """

    message: str
    loc: SourceLocation | None = None
    kind: str = "error"
    notes: list[str] = dataclasses.field(default_factory=list)
    trace: tuple[tuple[str, SourceLocation], ...] = ()

    def render(self) -> str:
        """The message as printed: `path:line:col: error: ...` and the source line, caret under it.

        Then the notes, and each step of the trace with its own source line.
        """
        lines = []
        prefix = f"{self.loc}: " if self.loc else ""
        lines.append(f"{prefix}error: {printable(self.message)}")
        if self.loc is not None:
            lines.extend(_source_excerpt(self.loc))
        for note in self.notes:
            lines.append(f"  = note: {printable(note)}")
        for what, where in self.trace:
            lines.append(f"{where}: note: in {printable(what)}")
            lines.extend(_source_excerpt(where))
        return "\n".join(lines)


def _source_excerpt(loc: SourceLocation) -> list[str]:
    """The source line of `loc` with a caret span under the culprit."""
    if not loc.source:
        return []
    # Lines as the lexer counts them: at "\n" only (splitlines also splits at \x0c, \x1c, ...).
    source_lines = [line.rstrip("\r") for line in loc.source.split("\n")]
    if not 1 <= loc.line <= len(source_lines):
        return []
    # One column per character, so the caret stays under the culprit: whatever cannot be shown
    # safely (a control character, a lone surrogate) is shown as U+FFFD.
    text = "".join("\ufffd" if _unprintable(ch) else ch
                   for ch in source_lines[loc.line - 1].expandtabs(1))
    if len(text) > 200:  # keep very long lines readable: show a window around the column
        start = max(0, loc.column - 80)
        text = text[start:start + 160]
        column = loc.column - start
    else:
        column = loc.column
    width = 1
    if loc.end_line == loc.line and loc.end_column and loc.end_column > loc.column:
        width = loc.end_column - loc.column
    width = max(1, min(width, len(text) - column + 1))
    gutter = f"{loc.line:>4} | "
    return [f"{gutter}{text}", " " * (len(gutter) - 2) + "| " + " " * (column - 1) + "^" * width]


class NetlangError(Exception):
    """Any error about user input: a `.net` file, a flag, a data or weights file.

    `path`, `line` and `column` describe the first diagnostic; all of them are in
    `diagnostics`, sorted by position.
    """

    kind = "error"

    def __init__(self, message: str | None = None, loc: SourceLocation | None = None, *,
                 notes: Sequence[str] = (), trace=(),
                 diagnostics: Iterable[Diagnostic] | None = None, path: str | None = None):
        if diagnostics is None:
            diagnostics = [Diagnostic(message or "error", loc, self.kind, list(notes), tuple(trace))]
        self.diagnostics = in_source_order(diagnostics)
        self._path = path  # for an error about a whole file (missing, a directory): no position
        first = self.diagnostics[0]
        self.message = printable(first.message)  # as rendered: safe to print on its own
        self.loc = first.loc
        super().__init__(self.render())

    @property
    def path(self) -> str | None:
        """The file of the first diagnostic, or of the whole-file error when it has no position."""
        return self.loc.path if self.loc else self._path

    @property
    def line(self) -> int | None:
        """The line of the first diagnostic, or None when it has no position."""
        return self.loc.line if self.loc else None

    @property
    def column(self) -> int | None:
        """The column of the first diagnostic, or None when it has no position."""
        return self.loc.column if self.loc else None

    def render(self) -> str:
        """Every diagnostic rendered, in source order."""
        return "\n".join(d.render() for d in self.diagnostics)


class NetlangSyntaxError(NetlangError):
    """The text does not follow the grammar."""
    kind = "syntax"


class NetlangNameError(NetlangError):
    """An unknown, duplicate or misplaced name."""
    kind = "name"


class NetlangArgumentError(NetlangError):
    """An unknown, missing or ill-typed argument of a layer, block or setting."""
    kind = "argument"


class NetlangShapeError(NetlangError):
    """Shapes that do not fit together."""
    kind = "shape"


class NetlangImportError(NetlangError):
    """An import that cannot be read or that forms a cycle."""
    kind = "import"


class NetlangFileError(NetlangError):
    """A file that cannot be read as source: missing, empty, binary, a directory."""
    kind = "file"


class DataError(NetlangError):
    """A data set that is missing, malformed or does not fit the model."""
    kind = "data"


class WeightsError(NetlangError):
    """A weights or checkpoint file that is missing, malformed or does not fit."""
    kind = "weights"


class UsageError(NetlangError):
    """A bad command-line flag or API argument."""
    kind = "usage"


ERROR_CLASSES = {cls.kind: cls for cls in (
    NetlangError, NetlangSyntaxError, NetlangNameError, NetlangArgumentError,
    NetlangShapeError, NetlangImportError, NetlangFileError, DataError, WeightsError, UsageError)}


def in_source_order(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics by line and column.

    A mistake in another file than the one its trace starts from (in an imported file, or
    in a block imported from one) takes its place at the outermost point of its trace:
    the `import` or the instantiation.  Files rank in the order they first appear.
    """
    diagnostics = list(diagnostics)

    def anchor(d):
        if d.loc is None:
            return None
        outermost = d.trace[-1][1] if d.trace else None
        if outermost is not None and outermost.path != d.loc.path:
            return outermost
        return d.loc

    files: dict = {}
    for d in diagnostics:
        a = anchor(d)
        files.setdefault(a.path if a else None, len(files))
        if d.loc is not None:
            files.setdefault(d.loc.path, len(files))

    def key(d):
        a = anchor(d)
        if a is None:
            return (files[None], 0, 0, 0, 0, 0)
        return (files[a.path], a.line, a.column, files[d.loc.path], d.loc.line, d.loc.column)
    return sorted(diagnostics, key=key)


def raise_diagnostics(diagnostics: Sequence[Diagnostic]) -> None:
    """Raise one error carrying every diagnostic; its class follows the first one's kind."""
    if not diagnostics:
        return
    ordered = in_source_order(diagnostics)
    cls = ERROR_CLASSES.get(ordered[0].kind, NetlangError)
    raise cls(diagnostics=ordered)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean `x`?)' suffix for the closest known spelling, or ''."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""
