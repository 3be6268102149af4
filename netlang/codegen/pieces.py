"""A long program's nodes cut into functions of their own ("pieces"), which the program calls.

Numba compiles one function in one process: a training step of a few hundred lines was the
last, serial part of a cold start, after the callees that several processes had compiled
at once (netlang/runtime/parallel_compile.py); ResNet-18's step alone took 11 of its 24 s.
Cut into pieces of about `PIECE_LINES` lines, each piece is a callee like the others, claimed
and compiled by whichever process meets it first, and the program that calls them is short.
Compiled in one process the pieces cost about what the whole step did (ResNet-18: 59.6
against 55.8 CPU s when it was measured; docs/compiler.md, Where compile time goes), so a
program is cut only where it is long: more than two pieces' worth.

A piece is written like a worker function's body (`ProgramWriter._part`): content-addressed
module, names renumbered, taking the program's arguments it reads.  What a piece makes (the
views of buffers, the variables holding nodes' values) exists only inside it; a later piece
makes again the views it needs.  Values cross pieces only through the buffers, which are
the program's arguments, so the arithmetic, and every bit of the results, is the same as
uncut (tests/test_parallel_compile.py).
"""

from __future__ import annotations

import re

PIECE_LINES = 120
# A name the writer generated (a prefix and a number), not a loop index or a helper.
_GENERATED = re.compile(r"(?<![\w.])[a-z]+\d+\b")


def emit_in_pieces(writer, order) -> list:
    """Emit every node of `order` through `writer`, in pieces: [(the names a piece generated,
    its text)] for `sound` to check once the program is written."""
    nodes = list(order)
    position, made = 0, []
    while position < len(nodes):
        outer = writer.emitter
        inner = type(outer)()
        inner._count = outer._count
        saved = (dict(writer._vars), dict(writer._views), set(writer.step_names))
        writer.emitter = inner
        try:
            while position < len(nodes) and len(inner.lines) < PIECE_LINES:
                writer.emit_node(nodes[position])
                position += 1
        finally:
            writer.emitter = outer
            outer._count = inner._count
            writer._vars, writer._views = saved[0], saved[1]
            # The program's own names: what it had, and the arguments the piece added.
            writer.step_names = saved[2] | set(writer._arg_of.values())
        body = [line for line in inner.lines if not line.lstrip().startswith("#")]
        if not body:
            continue
        text = "\n".join(body)
        made.append((set(inner.issued), text))
        params = writer.step_parameters(text, ("lr", "t"))
        writer._part("\n".join([f"def piece({', '.join(params)}):", text]),
                     set(inner.issued), "piece", params, [])
    return made


def sound(writer, made: list, rest: str) -> bool:
    """Whether no name a piece made is read after it, by a later piece or by the program's
    `rest` (the update after the pieces): such a program would be wrong cut, and is written
    uncut instead."""
    parts = {name for _, _, name in writer.part_imports}
    for index, (issued, _) in enumerate(made):
        later = "\n".join([text for _, text in made[index + 1:]] + [rest])
        if issued & (set(_GENERATED.findall(later)) - parts):
            return False
    return True
