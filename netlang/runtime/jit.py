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

from llvmlite import ir
from numba import njit
from numba.core import cgutils
from numba.core import types as numba_types
from numba.core.errors import TypingError
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from netlang.runtime.linkage import SymbolDispatcher, TARGET_OPTIONS, dispatcher_class, symbol_jit


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


class GenericDispatcher(SymbolDispatcher):
    """A compiled function that compiled callers call with the types of their arguments'
    values, not with the values themselves.

    Numba types a constant argument at a call site as a literal (`Literal[int](28)`, a
    convolution's height; `Literal[bool](False)`, a product's transpose flag) and compiles
    the callee once per set of such values: every geometry of every model compiled each loop
    nest afresh (LeNet-5's two pooling layers compiled `maxpool_forward` twice, and its five
    kinds of product compiled `gemm32` five times).  Typed as plain integers and booleans, a
    function is compiled once per dtype and array layout and shared by every model.  Only for
    functions whose speed does not depend on the constants: the BLAS products and the random
    draws (`run_workers` types a worker's share so too). The convolution and pooling loop nests,
    made generic in everything, lost 15% of LeNet-5's training speed (docs/compiler.md, Where
    compile time goes): im2col and col2im keep their strides, dilations and groups
    (`literal_names`, `compiled_window`; runtime/cnn.py says why), the pooling loops all of
    theirs (`compiled_shared`); the weight's reordering is generic, its loops ordered for it."""

    # Whether array arguments are typed with any layout ('A'), contiguous or not: for a
    # function that hands their pointers and strides on (a BLAS call) and never loops over
    # them, so one compilation serves views and whole buffers alike.
    any_layout = False
    # The parameters whose constant values stay compiled in (`compiled_window`), by position.
    literal_positions: frozenset = frozenset()
    literal_names: frozenset = frozenset()

    def get_call_template(self, args, kws):
        """The call's template for `args` and `kws` with every literal type made plain, but
        those of the parameters kept literal."""
        return super().get_call_template(
            tuple(arg if i in self.literal_positions else self._generic(arg)
                  for i, arg in enumerate(args)),
            {name: arg if name in self.literal_names else self._generic(arg)
             for name, arg in kws.items()})

    def _generic(self, arg):
        arg = numba_types.unliteral(arg)
        if self.any_layout and isinstance(arg, numba_types.Array) and arg.layout != "A":
            return arg.copy(layout="A")
        return arg


def generic(function=None, any_layout: bool = False, literal: tuple = (), **options):
    """`function` compiled as a `GenericDispatcher` (`any_layout`: its array arguments typed
    with layout 'A'; `literal`: the names of the parameters whose constant values are still
    compiled in), once per machine (Numba's disk cache) and without the GIL; `options` are
    Numba's (`error_model`, `no_cpython_wrapper`).  Used bare or with options, as `njit`."""
    def make(py_function):
        dispatcher = dispatcher_class(GenericDispatcher, options)(
            py_func=py_function, locals={}, targetoptions={**TARGET_OPTIONS, **options})
        dispatcher.any_layout = any_layout
        parameters = py_function.__code__.co_varnames[:py_function.__code__.co_argcount]
        unknown = set(literal) - set(parameters)
        if unknown:
            raise ValueError(f"{py_function.__name__} has no parameter {sorted(unknown)[0]}")
        dispatcher.literal_names = frozenset(literal)
        dispatcher.literal_positions = frozenset(i for i, name in enumerate(parameters)
                                                 if name in dispatcher.literal_names)
        dispatcher.enable_caching()
        return dispatcher
    return make if function is None else make(function)


def compiled(function, *callees, vector_division: bool = False, **named):
    """`function` compiled once per machine (Numba's disk cache) and without the GIL, so the
    workers of a parallel step run it at once; where its source calls a function of the same
    name as one of the compiled `callees`, the compiled callee is called, and where it calls
    a name in `named`, the compiled function given for it (one loop nest compiled twice, with
    two versions of a function it calls).  `vector_division`: a division by zero gives inf or
    NaN, as in NumPy, instead of raising: Numba's check before every division otherwise keeps
    a loop that divides from vectorising.  A constant argument at a compiled call site is
    compiled in as a constant, once per value (the recurrent step functions are compiled so,
    per unit count, as they were measured); `compiled_generic` compiles once for all values."""
    options = {"error_model": "numpy"} if vector_division else {}
    return njit(cache=True, nogil=True, **options)(_rebound(function, callees, named))


# The loop nests, products and draws below are called by generated code only, so they are
# compiled without the wrapper that Python calls a function through (`no_cpython_wrapper`):
# those wrappers took 0.3 of LeNet-5's 8.3 seconds of compiling in one process (8.01-8.12 s
# without them against 8.35-8.43 s with, three alternating rounds; ResNet-18 23.4-23.5 s
# against 24.2-26.8 s, two rounds).  A call from Python is refused in one line
# (linkage.dispatcher_class); tests call them through a compiled function of their own
# (tests/conftest.py's `from_python`).
def compiled_generic(function, *callees, **named):
    """`function` compiled as `compiled` compiles it, but once for all values of its constant
    arguments (a `GenericDispatcher`): for loop nests whose sizes vary from model to model (a
    convolution's geometry) and whose speed does not depend on knowing them when compiled."""
    return generic(_rebound(function, callees, named), no_cpython_wrapper=True)


def compiled_window(function, *callees, literal: tuple, **named):
    """`function` compiled as `compiled_shared` compiles it, but once per set of constant
    values of the parameters named in `literal` only, the others typed as plain values: for a
    convolution's or a pooling's loop nest, specialised on its window (kernel size, stride,
    dilation, padding), which its inner loops run over, and not on the image's sizes, so the
    layers of a model that share a window share one compilation (ResNet-18's 3×3 convolutions
    of 64 to 512 channels: one im2col, not one per layer)."""
    return generic(_rebound(function, callees, named), literal=literal, no_cpython_wrapper=True)


def compiled_shared(function, *callees, **named):
    """`function` compiled as `compiled` compiles it, once per set of constant arguments, and
    called by name from compiled callers (a `SymbolDispatcher`, netlang/runtime/linkage.py)
    instead of copied into each."""
    return symbol_jit(_rebound(function, callees, named), no_cpython_wrapper=True)


def stack_float64s(count: int, stands_for):
    """A function of no arguments that compiled code calls for `count` float64 values in the
    calling function's stack frame, as a 1-d array (contents undefined; never returned from
    the function, whose frame holds it), in place of the plain function `stands_for` of a
    loop nest's module, which allocates them with NumPy.  A loop nest's scratch lanes so cost
    no allocation, and no typing: NumPy's `np.empty`, compiled, took 0.2 s of Numba's typing
    in each process compiling it (netlang/ops/dense_loops.py's `lanes_buffer`)."""
    array_type = numba_types.Array(numba_types.float64, 1, "C")

    @intrinsic
    def buffer(typingctx):
        def codegen(context, builder, signature, arguments):
            intp = context.get_value_type(numba_types.intp)
            data = cgutils.alloca_once(builder, context.get_value_type(numba_types.float64),
                                       size=count)
            data.align = 64   # a cache line, as NumPy's buffers: vector loads never split
            array = make_array(array_type)(context, builder)
            populate_array(array, data=data, shape=[ir.Constant(intp, count)],
                           strides=[ir.Constant(intp, 8)], itemsize=ir.Constant(intp, 8),
                           meminfo=None)
            return array._getvalue()
        return array_type(), codegen
    buffer.stands_for = stands_for
    return buffer


@intrinsic
def reshaped(typingctx, array, trailing):
    """A C-contiguous view of the C-contiguous `array` of shape (array.size // ∏ trailing,
    *trailing) (`trailing`: a tuple of integers, () for a flat view), sharing its memory.

    Generated programs make their views with this rather than `array.reshape(shape)`, whose size
    checks and exception Numba writes out at every call site: a view and one element read took
    330 lines of IR and 0.032 s of compiling with reshape, 165 lines and 0.014 s with this (a
    function of 21 such sites against one; LeNet-5's training step makes 30). The leading size
    is derived, never given, so the view never reaches past the array whatever the sizes; where
    the program's sizes agree, as they do by construction, it is the view `reshape` would
    make."""
    if not isinstance(array, numba_types.Array) or array.layout != "C":
        raise TypingError(f"reshaped() takes a C-contiguous array, not {array}")
    if not isinstance(trailing, numba_types.BaseTuple) or \
            not all(isinstance(t, numba_types.Integer) for t in trailing):
        raise TypingError(f"reshaped() takes a tuple of integers, not {trailing}")
    result_type = array.copy(ndim=1 + len(trailing), layout="C")

    def codegen(context, builder, signature, arguments):
        array_type, trailing_type = signature.args
        intp_type = context.get_value_type(numba_types.intp)
        source = make_array(array_type)(context, builder, arguments[0])
        dims = [context.cast(builder, value, kind, numba_types.intp) for value, kind in
                zip(cgutils.unpack_tuple(builder, arguments[1], len(trailing_type)), trailing_type)]
        inner = ir.Constant(intp_type, 1)
        for dim in dims:
            inner = builder.mul(inner, dim)
        zero = ir.Constant(intp_type, 0)
        empty = builder.icmp_signed("==", inner, zero)
        # No division by zero: a zero trailing size makes an empty view.
        divisor = builder.select(empty, ir.Constant(intp_type, 1), inner)
        leading = builder.select(empty, zero, builder.sdiv(source.nitems, divisor))
        shape = [leading] + dims
        strides, stride = [], source.itemsize
        for dim in reversed(shape):
            strides.append(stride)
            stride = builder.mul(stride, dim)
        view = make_array(result_type)(context, builder)
        populate_array(view, data=source.data, shape=shape, strides=list(reversed(strides)),
                       itemsize=source.itemsize, meminfo=source.meminfo, parent=source.parent)
        return impl_ret_borrowed(context, builder, result_type, view._getvalue())
    return result_type(array, trailing), codegen


@intrinsic
def arrays_at(typingctx, table, spec):
    """The arrays a program's table holds (netlang/codegen/table.py), as a tuple: `spec` is a
    literal string of entries `<offset>:<ndim><code>` separated by `;`, each an array whose
    address is at `table[offset]` and whose sizes follow it, of the element type `code` names
    (table.CODES).  The arrays are C-contiguous views of memory the caller owns and keeps alive
    for the call (no reference is counted)."""
    from netlang.codegen.table import DTYPES
    if not isinstance(table, numba_types.Array) or table.dtype != numba_types.int64 or \
            table.ndim != 1 or table.layout != "C":
        raise TypingError(f"arrays_at() takes a C-contiguous int64 table, not {table}")
    if not isinstance(spec, numba_types.StringLiteral):
        raise TypingError(f"arrays_at() takes a literal spec, not {spec}")
    entries = []
    for entry in spec.literal_value.split(";"):
        offset, layout = entry.split(":")
        entries.append((int(offset), int(layout[:-1]),
                        numba_types.Array(getattr(numba_types, DTYPES[layout[-1]]),
                                          int(layout[:-1]), "C")))
    result_type = numba_types.Tuple([array_type for _, _, array_type in entries])

    def codegen(context, builder, signature, arguments):
        intp_type = context.get_value_type(numba_types.intp)
        source = make_array(signature.args[0])(context, builder, arguments[0])
        arrays = []
        for offset, ndim, array_type in entries:
            def at(index):
                return builder.load(cgutils.gep(builder, source.data, offset + index))
            element = context.get_data_type(array_type.dtype)
            itemsize = ir.Constant(intp_type, context.get_abi_sizeof(element))
            shape = [at(1 + axis) for axis in range(ndim)]
            strides, stride = [], itemsize
            for dim in reversed(shape):
                strides.append(stride)
                stride = builder.mul(stride, dim)
            array = make_array(array_type)(context, builder)
            populate_array(array, data=builder.inttoptr(at(0), element.as_pointer()),
                           shape=shape, strides=list(reversed(strides)), itemsize=itemsize,
                           meminfo=None)
            arrays.append(array._getvalue())
        return context.make_tuple(builder, result_type, arrays)
    return result_type(table, spec), codegen
