"""The table through which a CPU program takes its arrays (netlang/codegen/table.py), filled
on the host.

The program reads each array's address and sizes from the table and trusts them: an array of
another element type, dimension count or layout would be read as the wrong bytes, where Numba
would have compiled the function again for it.  So each array is checked against its entry
when it enters the table, and refused in one line if it does not fit.  The table keeps the
arrays it holds alive, and an entry is written again only for an array that is not the one it
holds (a new batch's inputs, a fresh dropout key, a parameter replaced): a step costs an
identity test per array, where Numba's dispatch typed every argument of every call.

Identity is enough for the memory's safety.  The table holds a reference to each array, so
NumPy refuses to resize one in place (`resize` checks references), and its memory stays where
the table says.  Its shape or dtype set in place keep its bytes, so sizes read from the table
still lie within them.
"""

from __future__ import annotations

import operator

import numpy as np

from netlang.codegen.table import table_offsets
from netlang.errors import UsageError

# Arguments a program only reads; every other array it may write.
_READ_ONLY_KINDS = ("input", "key")


class ArgumentTable:
    """The table of one program (its ProgramArgs `args` of `layouts`), one per program object:
    its calls are made one at a time."""

    def __init__(self, args, layouts):
        self.args = list(args)
        self.layouts = [(np.dtype(dtype), ndim) for dtype, ndim in layouts]
        self.offsets, size = table_offsets(layouts)
        self.table = np.zeros(size, dtype=np.int64)
        self._held: list = [None] * len(self.args)

    def __reduce__(self):
        """A copy (copy, deepcopy, pickle) starts empty: copied addresses would still point at
        the arrays of the table copied, which an identity test against the copied arrays
        would not catch."""
        return ArgumentTable, (self.args, [(dtype.name, ndim) for dtype, ndim in self.layouts])

    def filled(self, arrays) -> np.ndarray:
        """The table holding `arrays` (one per argument, in order)."""
        held = self._held
        if not all(map(operator.is_, arrays, held)):   # in C: a tiny model's step is 15 µs
            for index, array in enumerate(arrays):
                if array is not held[index]:
                    self._enter(index, array)
        return self.table

    def _enter(self, index: int, array) -> None:
        dtype, ndim = self.layouts[index]
        arg = self.args[index]
        written = arg.kind not in _READ_ONLY_KINDS
        fits = isinstance(array, np.ndarray) and array.dtype == dtype and array.ndim == ndim \
            and array.flags.c_contiguous and (array.flags.writeable or not written)
        if not fits:
            raise UsageError(f"{_described(arg)} is {_array_described(array)}: the compiled "
                             f"program takes a {'writeable ' if written else ''}C-contiguous "
                             f"{dtype} array of {ndim} dimension{'s' if ndim != 1 else ''} there")
        at = self.offsets[index]
        self.table[at] = array.ctypes.data
        self.table[at + 1:at + 1 + ndim] = array.shape
        self._held[index] = array


def _described(arg) -> str:
    names = {"param": "parameter", "state": "optimiser state", "input": "input",
             "gradient": "gradient of", "slot": "buffer", "key": "dropout key of node"}
    return f"{names.get(arg.kind, arg.kind)} `{arg.key}`"


def _array_described(array) -> str:
    if not isinstance(array, np.ndarray):
        return f"a {type(array).__name__}"
    layout = "" if array.flags.c_contiguous else "non-contiguous "
    access = "" if array.flags.writeable else "read-only "
    return f"a {access}{layout}{array.dtype} array of shape {array.shape}"
