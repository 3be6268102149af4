"""Grammar-aware mutations of `.net` sources, for the fuzz tests and benchmarks/fuzz.py.

One engine, driven by a `random.Random`: hypothesis hands the tests one (`st.randoms`), the
fuzz script seeds its own.  Besides the edits of characters and tokens that
tests/test_properties.py makes, it swaps one op for another, puts huge or degenerate numbers
where numbers were, nests an expression or a block deeply, inserts unicode that is not text
(lone surrogates, NUL, control characters, bidirectional overrides) and adds imports: of a
chain of files longer than the import limit, of the file itself, of files that are not
netlang's.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d[\d_]*(?:\.\d*)?'
                   r'(?:[eE][+-]?\d+)?|->|\*\*|//|[=!<>]=|\S')
NUMBER = re.compile(r"\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

FRAGMENTS = ["(", ")", "[", "]", "{", "}", ",", "->", "*", "**", "=", "-", "+", "/", ".", ":",
             "0", "1", "-1", "2.5", "1e9", "10 ** 40", '"s"', "x", "as", "if", "else", "block",
             "input", "output", "const", "train", "import", "true", "not", "and", "on", "\n",
             " ", "#", "int32", "(1, 2)", '"lib.net"']
HUGE_NUMBERS = ["0", "-1", "1e308", "1e400", "2 ** 31", "10 ** 9", "10 ** 18", "2 ** 255",
                "99999999999999999999999", "0.0000001", "4294967297", "1_000_000", "1e-400"]
NOT_TEXT = ["\ud800", "\udfff", "\ud83d", "\x00", "\x1b[31m", "\r", "\x0c", "\x1c", "\u2028",
            "\u202e", "\ufeff", "\u200b", "é", "文", "😀", "\x7f", "\t", "\x85"]
KINDS = ("delete char", "insert char", "delete token", "insert fragment", "replace token",
         "duplicate token", "swap tokens", "swap op", "huge number", "deep nesting",
         "not text", "import")


def op_names() -> list[str]:
    """Every op a `.net` file can name, from the registry."""
    from netlang.ops import all_ops  # here, not at the top: tests/ imports this before netlang
    return sorted(name for name, op in all_ops().items() if op.role in ("layer", "loss"))


def make_import_chain(directory: Path, length: int = 40) -> Path:
    """`chain0.net` importing `chain1.net` ... `length` files, more than imports may nest;
    also `notes.txt`, a file that is not netlang's.  The head of the chain."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(length):
        body = f'import "chain{i + 1}.net"\n' if i + 1 < length else "const depth = 1\n"
        (directory / f"chain{i}.net").write_text(body, "utf-8")
    (directory / "notes.txt").write_text("SECRET: not netlang\n", "utf-8")
    return directory / "chain0.net"


def mutate(text: str, rng: random.Random, ops: list[str], chain: Path | None = None) -> str:
    """`text` with one mutation of a kind chosen by `rng`."""
    kind = rng.choice(KINDS)
    tokens = [m.span() for m in TOKEN.finditer(text)] or [(0, 0)]
    i = rng.randrange(len(text) + 1)
    a, b = rng.choice(tokens)
    c, d = rng.choice(tokens)
    if kind == "delete char":
        return text[:i] + text[i + 1:]
    if kind == "insert char":
        return text[:i] + chr(rng.randrange(32, 0x3000)) + text[i:]
    if kind == "delete token":
        return text[:a] + text[b:]
    if kind == "insert fragment":
        return text[:i] + rng.choice(FRAGMENTS) + text[i:]
    if kind == "replace token":
        return text[:a] + rng.choice(FRAGMENTS) + text[b:]
    if kind == "duplicate token":
        return text[:a] + text[c:d] + " " + text[a:]
    if kind == "swap tokens":
        (a, b), (c, d) = sorted([(a, b), (c, d)])
        return text if b > c else text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    if kind == "swap op":
        spans = [m.span() for m in IDENTIFIER.finditer(text) if m.group() in ops]
        if not spans:
            return text
        a, b = rng.choice(spans)
        return text[:a] + rng.choice(ops) + text[b:]
    if kind == "huge number":
        spans = [m.span() for m in NUMBER.finditer(text)]
        if not spans:
            return text
        a, b = rng.choice(spans)
        return text[:a] + rng.choice(HUGE_NUMBERS) + text[b:]
    if kind == "deep nesting":
        depth = rng.choice([10, 60, 200, 2000])
        shape = rng.choice(["paren", "minus", "block"])
        if shape == "paren":
            return text[:a] + "(" * depth + text[a:b] + ")" * depth + text[b:]
        if shape == "minus":
            return text[:a] + "- " * depth + text[a:]
        blocks = "".join(f"block n{k}() {{ input x output y = x -> n{k + 1}() }}\n"
                         for k in range(depth)) + f"block n{depth}() {{ input x output y = x }}\n"
        return blocks + text + "\noutput nested = x -> n0()\n"
    if kind == "not text":
        return text[:i] + rng.choice(NOT_TEXT) + text[i:]
    # import: a chain past the limit, the file itself, a file that is not netlang's, odd paths
    targets = ['"."', '"/"', '"\\n"', '"/dev/zero"', '"/etc/passwd"', '"../../x.net"',
               '"' + "a/" * 200 + 'x.net"', '"\x00"']
    if chain is not None:
        targets += [f'"{chain}"', f'"{chain.parent / "notes.txt"}"', f'"{chain.parent}/"']
    return f"import {rng.choice(targets)}\n" + text
