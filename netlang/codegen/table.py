"""A program's arrays passed as one table of addresses and sizes, which the program unpacks.

Numba compiles, beside a function that Python calls, a wrapper that converts each argument from
its Python object, with the checks and the error paths of each: LeNet-5's training step takes
58 arrays, and that wrapper was about 1 s of its 3 s of compiling (docs/compiler.md, Where
compile time goes).  A CPU program instead takes one int64 array, the table, and `lr` and `t`:
for each of its arrays in turn the table holds its address, then its sizes, one per dimension.
Its first line makes its arrays from the table (`arrays_at`, netlang/runtime/jit.py) given a
literal string, the spec, that says where each starts in the table and its dimensions and
element type; the host fills the table from the arrays it would have passed (`ArgumentTable`,
netlang/runtime/argument_table.py) and checks each array against its entry, since a wrong
type would now be read as the wrong bytes rather than compiled for.

The arrays' sizes are read from the table, never compiled in: the program's loops see the
sizes they saw as arguments.  The spec holds no name-like token (a code letter follows a digit),
so renumbering a piece's generated names (`ProgramWriter._part`) never touches it.
"""

from __future__ import annotations

import numpy as np

# Element type → the code letter a spec gives it (after the dimension count: "2s").
CODES = {"float32": "s", "float64": "d", "int64": "q", "uint64": "Q"}
DTYPES = {code: name for name, code in CODES.items()}


def argument_layout(graph, buffers, dtype: str, arg) -> tuple[str, int]:
    """(element type name, dimension count) of the array the engine passes for `arg` (a
    ProgramArg) to a program of engine dtype `dtype`, as the engine allocates it."""
    if arg.kind == "slot":
        shape, batched, kind = buffers.slots[arg.key]
        return slot_dtype(kind, dtype), len(shape) + bool(batched)
    if arg.kind in ("param", "state"):
        # A state array is its parameter's shape (Optimizer: `{param}.{slot}`, zeros_like).
        name = arg.key if arg.kind == "param" else arg.key.rsplit(".", 1)[0]
        return dtype, len(graph.nodes[graph.node_named(name)]["attrs"]["shape"])
    if arg.kind == "input":
        t = graph.type_of(graph.graph["inputs"][arg.key])
        return input_dtype(t, dtype), len(t.shape)
    if arg.kind == "gradient":
        return dtype, len(graph.type_of(arg.key).shape)
    if arg.kind == "key":   # a dropout mask's key: one uint64 (netlang/ops/norm.py)
        return "uint64", 1
    raise ValueError(f"a {arg.kind} argument has no place in a CPU program's table")


def slot_dtype(kind: str, dtype: str) -> str:
    """The element type of a buffer the memory plan marks `kind`, in a program of engine dtype
    `dtype`: acc64 is a kernel's float64 accumulators whatever the engine's dtype."""
    if kind == "acc64":
        return "float64"
    return np.dtype(dtype).name if kind.startswith("float") else "int64"


def input_dtype(t, dtype):
    """The element type an engine of dtype `dtype` feeds an input of type `t` as: `dtype` as
    given for floating-point data, int64 for integer data (labels, indices).  Called for each
    input of each step: nothing is converted (np.dtype(...).name took 2.8 µs)."""
    return dtype if t.is_float else "int64"


def table_offsets(layouts) -> tuple[list[int], int]:
    """(where each array's entry starts in the table, the table's length): an entry is the
    array's address, then one size per dimension."""
    offsets, at = [], 0
    for _, ndim in layouts:
        offsets.append(at)
        at += 1 + ndim
    return offsets, at


def writer_layouts(writer) -> tuple:
    """(element type, dimension count) of each argument a ProgramWriter gave out so far."""
    return tuple(argument_layout(writer.graph, writer.buffers, writer.dtype, arg)
                 for arg in writer.args)


def table_unpack(writer, names: list) -> list[str]:
    """[The line that makes the arrays `names` from the table] of the program `writer` writes,
    `arrays_at` imported; [] for no names."""
    if not names:
        return []
    writer.imports.add(("netlang.runtime.jit", "arrays_at"))
    return [unpack_line(names, writer_layouts(writer))]


def unpack_line(names: list, layouts: list, indent: str = "    ") -> str:
    """The line that makes the arrays `names` (their positions in the program's arguments,
    `a<i>`) from the table, of `layouts` (every argument's, in order)."""
    offsets, _ = table_offsets(layouts)
    entries = []
    for name in names:
        index = int(name[1:])
        dtype, ndim = layouts[index]
        entries.append(f"{offsets[index]}:{ndim}{CODES[dtype]}")
    return f"{indent}{', '.join(names)}, = arrays_at(table, \"{';'.join(entries)}\")"
