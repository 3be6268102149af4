"""A long program's nodes cut into functions of their own ("pieces"), which the program calls.

Numba compiles one function in one process: a training step of a few hundred lines was the
last, serial part of a cold start, after the callees that several processes had compiled
at once (netlang/runtime/parallel_compile.py); ResNet-18's step alone took 11 of its 24 s.
Cut into pieces of about `PIECE_LINES` lines, the optimiser update a piece of its own, each
piece is a compiled function that the program, now a plain Python function, calls in turn:
the pieces are made ready together (runtime/compilation.py's `ProgramCompilations`), each
claimed and compiled by whichever process reaches it first.  (A compiled program calling
them took ResNet-18's 318 arrays in and handed them on: 4.5 s of Numba's time, alone, at the
end of the cold start.  From Python, the calls cost their arguments' typing, some
microseconds a step.)  Compiled in one process the pieces cost about what the whole step did
(ResNet-18: 59.6 against 55.8 CPU s when it was measured; docs/compiler.md, Where compile
time goes), so a program is cut only where it is long: more than two pieces' worth.

A piece is written like a worker function's body (`ProgramWriter._part`): content-addressed
module, names renumbered, taking the program's arguments it reads.  What a piece makes (the
views of buffers, the variables holding nodes' values) exists only inside it; a later piece
makes again the views it needs.  Values cross pieces only through the buffers, which are
the program's arguments, so the arithmetic, and every bit of the results, is the same as
uncut (tests/test_parallel_compile.py).
"""

from __future__ import annotations

import re

from netlang.codegen.table import table_unpack

PIECE_LINES = 120
# A name the writer generated (a prefix and a number), not a loop index or a helper.
_GENERATED = re.compile(r"(?<![\w.])[a-z]+\d+\b")


def emit_program_body(writer, order, update, cut: bool = False):
    """Every node of `order` in turn (`cut`: in pieces, `emit_in_pieces`), then the
    update's tail: (body lines, parameter list), or None where the pieces were unsound."""
    writer.update = update
    tail = (lambda: update.emit_tail(writer)) if update is not None else None
    if cut:
        made = emit_in_pieces(writer, order, tail)
        if not sound(writer, made):
            return None
    else:
        for node in order:
            writer.emit_node(node)
        if tail is not None:
            tail()
    params = ", ".join([f"a{i}" for i in range(len(writer.args))] + ["lr", "t"])
    return writer.emitter.lines or ["    pass"], params


def emit_in_pieces(writer, order, tail=None) -> list:
    """Emit every node of `order` through `writer`, in pieces, then what `tail()` emits (the
    optimiser update) as a piece of its own: [(the names a piece generated, its text)] for
    `sound` to check once the program is written.  What is left of the program is the calls
    of its pieces, in Python (`ProgramWriter._part`'s `from_python`)."""
    nodes = list(order)
    position, made = 0, []

    def next_nodes():
        nonlocal position
        while position < len(nodes) and len(writer.emitter.lines) < PIECE_LINES:
            writer.emit_node(nodes[position])
            position += 1

    while position < len(nodes):
        _emit_piece(writer, next_nodes, made)
    if tail is not None:
        _emit_piece(writer, tail, made)
    return made


def _emit_piece(writer, emit, made: list) -> None:
    """What `emit()` writes through `writer`, as one piece, which the program calls."""
    outer = writer.emitter
    inner = type(outer)()
    inner._count = outer._count
    saved = (dict(writer._vars), dict(writer._views), set(writer.step_names))
    writer.emitter = inner
    try:
        emit()
    finally:
        writer.emitter = outer
        outer._count = inner._count
        writer._vars, writer._views = saved[0], saved[1]
        # The program's own names: what it had, and the arguments the piece added.
        writer.step_names = saved[2] | set(writer._arg_of.values())
    body = [line for line in inner.lines if not line.lstrip().startswith("#")]
    if not body:
        return
    text = "\n".join(body)
    made.append((set(inner.issued), text))
    # A piece takes the program's table and makes the arrays it reads from it
    # (netlang/codegen/table.py): Numba's wrapper then converts one array, not each of them.
    # Its weight, the arrays it reads, orders the pieces' compilations (runtime/cpu.py).
    arrays = writer.step_parameters(text)
    writer._part("\n".join(["def piece(table, lr, t):", *table_unpack(writer, arrays), text]),
                 set(inner.issued), "piece", ["table", "lr", "t"], [],
                 from_python=1 + len(arrays))


def sound(writer, made: list) -> bool:
    """Whether no name a piece made is read after it, by a later piece (the update's among
    them): such a program would be wrong cut, and is written uncut instead."""
    parts = {name for _, _, name in writer.part_imports}
    for index, (issued, _) in enumerate(made):
        later = "\n".join(text for _, text in made[index + 1:])
        if issued & (set(_GENERATED.findall(later)) - parts):
            return False
    return True
