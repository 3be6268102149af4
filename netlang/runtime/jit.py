"""Numba compilation of the loop nests that netlang/ops/ writes as plain Python.

A kernel's loop nest is written beside its op (netlang/ops/*_loops.py), in the subset of
Python that Numba compiles, so a reader sees the op whole and nothing outside runtime/
imports numba.  The runtime modules that generated code imports (cnn.py, random_bits.py)
compile them with the two functions here.

Inside compiled code a callee must be compiled too, while a loop nest's own module holds the
plain callee under the name it calls.  `compiled` therefore runs the function's code in a
copy of its module's namespace in which those names are bound to their compiled forms: a
module compiles its callees first and names them.  Numba's disk cache (in the ops module's
__pycache__) keys on a function's code and its source file's timestamp: editing a loop nest,
or a callee in its file, recompiles it; a callee from another file is not seen, so a loop nest's
callees live in its own file (`dropout_bits` is in norm_loops.py, and the NumPy reference in
norm.py imports it from there).
"""

from __future__ import annotations

import types

from numba import njit


def _rebound(function, callees, named):
    """`function` with its module's namespace copied and the names it calls bound to compiled
    `callees` (each under its own name) and to `named` (name → compiled callee)."""
    if not callees and not named:
        return function
    namespace = dict(function.__globals__)
    namespace.update((callee.py_func.__name__, callee) for callee in callees)
    namespace.update(named)
    return types.FunctionType(function.__code__, namespace, function.__name__,
                              function.__defaults__, function.__closure__)


def inlined(function, *callees, **named):
    """`function` compiled to be inlined into each compiled caller, as a helper of a few lines
    in an inner loop (a run of values, a window's bounds) must be to cost nothing; its calls
    bound as `compiled` binds them."""
    return njit(inline="always")(_rebound(function, callees, named))


def compiled(function, *callees, vector_division: bool = False, **named):
    """`function` compiled once per machine (Numba's disk cache) and without the GIL, so the
    workers of a parallel step run it at once; where its source calls a function of the same
    name as one of the compiled `callees`, the compiled callee is called, and where it calls
    a name in `named`, the compiled function given for it (one loop nest compiled twice, with
    two versions of a function it calls).  `vector_division`: a division by zero gives inf or
    NaN, as in NumPy, instead of raising: Numba's check before every division otherwise keeps
    a loop that divides from vectorising."""
    options = {"error_model": "numpy"} if vector_division else {}
    return njit(cache=True, nogil=True, **options)(_rebound(function, callees, named))
