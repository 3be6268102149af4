"""`netlang fmt`: print a `.net` file in canonical form, keeping every comment.

The output is printed from the AST, so layout is canonical by construction, and it
must parse back to an equal AST (locations aside).  Comments are not in the AST:
they come from the parser's lexer, and each is re-attached by position to the
statement it precedes or trails; a comment in a chain stays with its step.  A comment
that has no such place (inside an argument list or an `if` condition, say) moves to
just before its statement: moved, never dropped, and where the next run leaves it.
"""

from __future__ import annotations

import bisect
import dataclasses
import re

from netlang.frontend import ast
from netlang.frontend.parser import parse_with_comments

MAX_WIDTH = 100
INDENT = "  "

# Binding strength, loosest first, mirroring grammar/netlang.lark's expression rules.
OR, AND, NOT, COMPARE, SUM, PRODUCT, UNARY, POWER, POSTFIX, ATOM = range(1, 11)
_BINARY = {"or": OR, "and": AND, "+": SUM, "-": SUM, "*": PRODUCT, "/": PRODUCT, "//": PRODUCT,
           "%": PRODUCT, "**": POWER, **{op: COMPARE for op in ("==", "!=", "<", "<=", ">", ">=")}}


def format_source(source: str, path: str = "<string>") -> str:
    """`source` in canonical form; raises NetlangError where `source` does not parse."""
    source = source.removeprefix("\ufeff")  # as the parser does, so positions agree
    module, comments = parse_with_comments(source, path)
    lines = _Formatter(source).body(module.items, [Comment(*c) for c in comments], "", top=True)
    return "".join(line + "\n" for line in _align(lines))


@dataclasses.dataclass
class Line:
    """One output line: code, and the comment that trails it (if any)."""

    code: str
    comment: str = ""


def _align(lines) -> list:
    """Trailing comments start in one column within a run of lines at one indentation.

    A blank line or a change of indentation ends the run, so a block's header comment
    is not pushed out to line up with its body's, but a chain's steps line up.
    """
    out, run = [], []

    def flush():
        width = max((len(line.code) for line in run if line.comment), default=0)
        out.extend(line.code.ljust(width) + "  " + line.comment if line.comment else line.code
                   for line in run)
        run.clear()

    for line in lines:
        if run and _indent(line.code) != _indent(run[0].code):
            flush()
        if line.code:
            run.append(line)
        else:
            flush()
            out.append("")
    flush()
    return out


def _indent(code: str) -> int:
    return len(code) - len(code.lstrip(" "))


@dataclasses.dataclass(frozen=True)
class Comment:
    """A `#` comment as the lexer found it: where it starts and its text, `#` included.

    Comments are not in the AST; the formatter places each by comparing its position with
    the statements' spans.
    """

    line: int
    column: int
    text: str

    @property
    def pos(self):
        """`(line, column)`, comparable with the start and end of an AST node."""
        return (self.line, self.column)

    def __post_init__(self):  # `# note  \r` and `# note` are the same comment
        object.__setattr__(self, "text", self.text.rstrip())


def _start(node):
    return (node.loc.line, node.loc.column)


def _end(node):
    return (node.loc.end_line, node.loc.end_column)


# Expressions

def expr(node, min_level: int = 0) -> str:
    """`node` as source text, parenthesised only if it binds looser than `min_level`."""
    text, level = _expr(node)
    return f"({text})" if level < min_level else text


def _expr(node):
    if isinstance(node, ast.BinOp):
        level = _BINARY[node.op]
        if level == COMPARE:  # `a < b < c` does not parse: both sides must be sums
            left, right = SUM, SUM
        elif level == POWER:  # right-associative: `a ** b ** c` is `a ** (b ** c)`
            left, right = POSTFIX, UNARY
        else:  # left-associative
            left, right = level, level + 1
        return f"{expr(node.left, left)} {node.op} {expr(node.right, right)}", level
    if isinstance(node, ast.UnaryOp):
        if node.op == "not":
            return f"not {expr(node.operand, NOT)}", NOT
        return f"-{expr(node.operand, UNARY)}", UNARY
    if isinstance(node, ast.Number):  # `-3` is a literal with its sign, so it binds as `-x` does
        return node.text, UNARY if node.text.startswith("-") else ATOM
    if isinstance(node, ast.String):
        return quote(node.value), ATOM
    if isinstance(node, ast.Bool):
        return ("true" if node.value else "false"), ATOM
    if isinstance(node, ast.Name):
        return node.id, ATOM
    if isinstance(node, ast.Tuple):
        items = [expr(i) for i in node.items]
        return "(" + (items[0] + "," if len(items) == 1 else ", ".join(items)) + ")", ATOM
    if isinstance(node, ast.Call):
        return f"{node.func}({args(node.args)})", ATOM
    if isinstance(node, ast.Attribute):  # `(2).x`, as `2.x` would lex as the number `2.`
        value = expr(node.value, ATOM + 1 if isinstance(node.value, ast.Number) else POSTFIX)
        return f"{value}.{node.attr}", POSTFIX
    if isinstance(node, ast.Index):
        return f"{expr(node.value, POSTFIX)}[{expr(node.index)}]", POSTFIX
    raise TypeError(f"cannot format {type(node).__name__}")


def args(arguments) -> str:
    """Call or step arguments as source text: `6, 5, stride = 2`."""
    return ", ".join(expr(a.value) if a.name is None else f"{a.name} = {expr(a.value)}"
                     for a in arguments)


def quote(value: str) -> str:
    """A string literal that the parser's `_unescape` turns back into `value`."""
    escaped = re.sub(r'[\\"\n\t]', lambda m: {"\n": "\\n", "\t": "\\t"}.get(m[0], "\\" + m[0]), value)
    return f'"{escaped}"'


def step(node) -> str:
    """One step of a chain (an ast.Step or ast.Group) as canonical source text."""
    if isinstance(node, ast.Group):
        text = "(" + " -> ".join(step(s) for s in node.steps) + ")"
    else:
        text = node.op if node.args is None else f"{node.op}({args(node.args)})"
    if node.repeat is not None:  # the grammar takes only an atom after `*`
        text += f" * {expr(node.repeat, ATOM)}"
    return text + (f" as {node.label}" if node.label else "")


# Statements

_GROUPS = {ast.Import: "imports", ast.Const: "consts", ast.Input: "inputs"}


def _group(item):
    """Top-level groups are separated by a blank line; each block and train is its own group."""
    if isinstance(item, (ast.BlockDef, ast.Train)):
        return id(item)
    return _GROUPS.get(type(item), "body")


class _Formatter:
    def __init__(self, source: str):
        self.blank = {n for n, text in enumerate(source.split("\n"), 1) if not text.strip()}
        # The AST keeps no braces, but telling a comment in an `if` body from one in its
        # `else` body needs them: find them outside strings and comments.
        starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.braces = {"{": [], "}": []}
        for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}]', source):
            if m[0] in "{}":
                line = bisect.bisect_right(starts, m.start())
                self.braces[m[0]].append((line, m.start() - starts[line - 1] + 1))

    def brace(self, char: str, after):
        found = self.braces[char]
        i = bisect.bisect_right(found, after)
        return found[i] if i < len(found) else None

    def body(self, items, comments, indent: str, top: bool = False, after_line: int = 0) -> list:
        """Lines for a run of statements and the comments among them."""
        leading = [[] for _ in items]
        inner = [[] for _ in items]
        trailing = [None] * len(items)
        dangling = []
        starts = [_start(i) for i in items]
        for c in comments:
            k = bisect.bisect_right(starts, c.pos) - 1  # the last statement starting before c
            if k >= 0 and c.pos < _end(items[k]):
                inner[k].append(c)
            elif k >= 0 and items[k].loc.end_line == c.line:
                trailing[k] = c
            elif k + 1 < len(items):
                leading[k + 1].append(c)
            else:
                dangling.append(c)

        out = []
        state = {"prev": after_line, "group": None}

        def emit(first_line: int, lines, new_group=False):
            # Keep one blank line where the user left any; add one between top-level groups.
            gap = first_line - 1 > state["prev"] and first_line - 1 in self.blank
            if out and (gap or new_group):
                out.append(Line(""))
            out.extend(lines)

        for k, item in enumerate(items):
            group = _group(item) if top else None
            new_group = state["group"] is not None and group != state["group"]
            for c in leading[k]:
                emit(c.line, [Line(indent + c.text)], new_group)
                state["prev"], new_group = c.line, False
            lines, moved = self.statement(item, inner[k], indent)
            if trailing[k]:
                lines[-1].comment = trailing[k].text
            emit(item.loc.line, [Line(indent + c.text) for c in moved] + lines, new_group)
            state["prev"], state["group"] = item.loc.end_line, group
        for c in dangling:
            emit(c.line, [Line(indent + c.text)])
            state["prev"] = c.line
        return out

    def statement(self, item, comments, indent: str):
        """(lines, comments to print just before them) for one statement and its inner comments."""
        if isinstance(item, ast.Import):
            return [Line(f"{indent}import {quote(item.path)}")], comments
        if isinstance(item, ast.Const):
            return [Line(f"{indent}const {item.name.id} = {expr(item.value)}")], comments
        if isinstance(item, ast.Input):
            text = f"{indent}input {item.name.id}"
            if item.type is not None:
                dims = ", ".join(expr(d) for d in item.type.dims)
                text += f": {item.type.dtype or ''}[{dims}]"
            if item.noise is not None:
                text += f" ~ {item.noise.distribution}"
                if item.noise.args:
                    text += f"({args(item.noise.args)})"
            return [Line(text)], comments
        if isinstance(item, ast.Output):
            if item.value is None:
                return [Line(f"{indent}output {item.name.id}")], comments
            return self.chain(f"output {item.name.id} = ", item.value, comments, indent)
        if isinstance(item, ast.Assign):
            targets = ", ".join(t.id for t in item.targets)
            return self.chain(f"{targets} = ", item.value, comments, indent)
        if isinstance(item, ast.TrainItem):
            text = f"{indent}{item.key.id} " + ", ".join(expr(v) for v in item.values)
            if item.on:
                text += " on " + ", ".join(n.id for n in item.on)
            return [Line(text)], comments
        if isinstance(item, ast.BlockDef):
            params = ", ".join(p.name.id if p.default is None else f"{p.name.id} = {expr(p.default)}"
                               for p in item.params)
            return self.braced(f"{indent}block {item.name.id}({params}) {{", item.body, comments,
                               self.brace("{", _end(item.name)), indent)
        if isinstance(item, ast.Train):
            title = f"train {item.name.id}" if item.name is not None else "train"
            return self.braced(f"{indent}{title} {{", item.items, comments,
                               self.brace("{", _start(item)), indent)
        if isinstance(item, ast.If):
            return self.if_stmt(item, comments, indent)
        raise TypeError(f"cannot format {type(item).__name__}")

    def chain(self, head: str, value, comments, indent: str):
        """`head` + a chain, keeping the author's line breaks between steps.

        Steps the author wrote on one line stay on one line (a `conv -> relu -> pool`
        stage reads as a unit); a line that would pass MAX_WIDTH is broken before each
        `->`, and a comment inside the chain ends its line.  Idempotent: the output's
        breaks are the breaks it keeps.
        """
        if not isinstance(value, ast.Chain):
            return [Line(indent + head + expr(value))], comments
        parts = [value.source, *value.steps]
        texts = [expr(value.source)] + ["-> " + step(s) for s in value.steps]
        ends = [_end(p) for p in parts]
        attached = [[] for _ in parts]
        moved = []
        for c in comments:  # a comment inside a chain follows the last part that ends before it
            k = bisect.bisect_right(ends, c.pos) - 1
            (attached[k] if k >= 0 else moved).append(c)
        groups = [[0]]
        for k in range(1, len(parts)):
            if _start(parts[k])[0] > ends[k - 1][0] or attached[k - 1]:
                groups.append([k])
            else:
                groups[-1].append(k)
        lines = []
        for g, group in enumerate(groups):
            prefix = indent + (head if g == 0 else INDENT)
            if len(prefix + " ".join(texts[k] for k in group)) > MAX_WIDTH:
                runs = [[k] for k in group]  # too long: one step per line
            else:
                runs = [group]
            for r, run in enumerate(runs):
                lead = prefix if r == 0 else indent + INDENT
                lines.append(Line(lead + " ".join(texts[k] for k in run)))
                last = run[-1]
                for i, c in enumerate(attached[last]):
                    if i == 0 and c.line == ends[last][0]:  # it trailed this part's line
                        lines[-1].comment = c.text
                    else:
                        lines.append(Line(indent + INDENT + c.text))
        return lines, moved

    def braced(self, header: str, items, comments, open_pos, indent: str):
        """`header {` + the indented body + `}`; comments before the `{` move before it all."""
        moved = [c for c in comments if c.pos < open_pos]
        inside = [c for c in comments if c.pos > open_pos]
        # A comment on the `{` line, before any statement, stays at the end of that line.
        first = _start(items[0]) if items else None
        after = [c for c in inside if c.line == open_pos[0] and (first is None or c.pos < first)]
        lines = self.body(items, [c for c in inside if c not in after], indent + INDENT,
                          after_line=open_pos[0])
        if not lines and not after:
            return [Line(header + "}")], moved
        return [Line(header, after[0].text if after else ""), *lines, Line(indent + "}")], moved

    def if_stmt(self, item: ast.If, comments, indent: str, keyword: str = "if"):
        open1 = self.brace("{", _end(item.condition))
        close1 = self.brace("}", max([open1] + [_end(i) for i in item.body]))
        nested = item.orelse[0] if len(item.orelse) == 1 and isinstance(item.orelse[0], ast.If) else None
        open2 = close1
        if _end(item) > (close1[0], close1[1] + 1):  # there is an `else` (`else {}` is not in the AST)
            open2 = self.brace("{", close1)
            if nested is not None and open2 > _start(nested):
                open2 = close1  # `else if` has no `{` of its own: count from the `}` before it
        # A comment between `}` and `else {` ends the `if` body, which keeps comments in order.
        lines, moved = self.braced(f"{indent}{keyword} {expr(item.condition)} {{", item.body,
                                   [c for c in comments if c.pos < open2], open1, indent)
        rest = [c for c in comments if c.pos > open2]
        if not item.orelse and not rest:
            return lines, moved
        tail = lines.pop()
        if nested is not None and all(_start(nested) < c.pos < _end(nested) for c in rest):
            # `else if` unless a comment needs the `else { ... }` body to sit in
            sub, sub_moved = self.if_stmt(nested, rest, indent, keyword="else if")
            if not sub_moved:
                sub[0].code = tail.code + " " + sub[0].code.lstrip()
                return lines + sub, moved
        sub, _ = self.braced(tail.code + " else {", item.orelse, rest, open2, indent)
        return lines + sub, moved
