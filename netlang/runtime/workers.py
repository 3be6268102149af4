"""A kernel's worker threads: `run_workers`, which compiled code calls to run one function on
each of a program's workers at once, on Numba's thread pool.

A kernel that splits a batch among the workers (`ProgramWriter.worker_function` in
netlang/codegen/cpu.py) is written as one worker's share, a serial function of the worker's
index and the step's values.  It used to be run by a `prange` over the workers in a function
of its own; Numba's parallel transform then analysed that function, and compiled its loop's
body once more as a function of its own: 0.24 s of compiling per kernel for a loop that only
calls the share (LeNet-5 has five such kernels, ResNet-18 thirteen).  `run_workers` writes the
same call of Numba's thread pool (`numba_parallel_for`, the entry point its parallel loops
use) directly in LLVM IR, in the calling function: nothing is analysed or compiled twice.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils
from numba.core import types as numba_types
from numba.extending import intrinsic

from netlang.runtime.linkage import declare_call, note_thread_pool_call, start_thread_pool

# What a share that fails is reported as, once every worker is done: the worker threads run
# without Python, so the share's own exception cannot be raised from them.
WORKER_FAILED = ("a kernel's worker thread failed (an exception in compiled code); "
                 "run with NUMBA_NUM_THREADS=1 to see it raised")


@intrinsic(prefer_literal=True)
def run_workers(typingctx, share, count, arguments):
    """Call `share(worker, *arguments)` for each `worker` in range(`count`) (a constant), the
    calls spread over Numba's thread pool, and return when all are done; a share that fails
    makes this raise RuntimeError after the others finish.  `share` is a SymbolDispatcher
    (netlang/runtime/linkage.py), its worker index an int64, the arguments' constant sizes
    typed as plain integers (compiled once for all values, as a `GenericDispatcher` is)."""
    if not (isinstance(share, numba_types.Dispatcher)
            and isinstance(count, numba_types.IntegerLiteral) and count.literal_value > 0
            and isinstance(arguments, numba_types.BaseTuple)):
        return None
    plain = [numba_types.unliteral(kind) for kind in arguments.types]
    call = share.get_call_type(typingctx, (numba_types.int64, *plain), {})
    if call is None:
        return None
    workers = count.literal_value

    def codegen(context, builder, signature, values):
        # The thread pool's entry points are bound as LLVM symbols when the pool starts, and
        # must be again before this code is loaded from the cache in another process.
        start_thread_pool()
        note_thread_pool_call()
        module = builder.module
        callee, callee_types = declare_call(context, module, share.dispatcher, call.args)
        byte_ptr = ir.IntType(8).as_pointer()
        intp = context.get_value_type(numba_types.intp)
        flag = ir.IntType(8)

        # What every worker reads: the arguments (their constants made plain), and where a
        # failed share says so.
        packed = [context.cast(builder, builder.extract_value(values[2], i), kind, target)
                  for i, (kind, target) in enumerate(zip(arguments.types, plain))]
        shared_type = ir.LiteralStructType([value.type for value in packed] + [flag.as_pointer()])
        failed = cgutils.alloca_once_value(builder, flag(0))
        shared = cgutils.alloca_once(builder, shared_type)
        for i, value in enumerate(packed + [failed]):
            builder.store(value, cgutils.gep_inbounds(builder, shared, 0, i))

        # The pool calls `kernel` with runs of the worker indices (args[0], dims[0] of them),
        # as it calls a parallel loop's body with runs of its iterations.
        kernel_type = ir.FunctionType(ir.VoidType(), [byte_ptr.as_pointer(), intp.as_pointer(),
                                                      intp.as_pointer(), byte_ptr])
        kernel = ir.Function(module, kernel_type, module.get_unique_name("netlang_workers"))
        kernel.linkage = "internal"
        inner = ir.IRBuilder(kernel.append_basic_block())
        runs, dims, _, data = kernel.args
        state = inner.bitcast(data, shared_type.as_pointer())
        own = [inner.load(cgutils.gep_inbounds(inner, state, 0, i)) for i in range(len(packed))]
        failed_flag = inner.load(cgutils.gep_inbounds(inner, state, 0, len(packed)))
        indices = inner.bitcast(inner.load(runs), intp.as_pointer())
        with cgutils.for_range(inner, inner.load(dims)) as loop:
            worker = inner.load(inner.gep(indices, [loop.index]))
            status, _ = context.call_conv.call_function(inner, callee, callee_types.restype,
                                                        callee_types.argtypes, [worker] + own)
            with inner.if_then(status.is_error, likely=False):
                inner.store_atomic(flag(1), failed_flag, "monotonic", 1)
        inner.ret_void()

        indices = cgutils.alloca_once(builder, intp, size=workers)
        for worker in range(workers):
            builder.store(intp(worker), builder.gep(indices, [intp(worker)]))
        runs = cgutils.alloca_once_value(builder, builder.bitcast(indices, byte_ptr))
        dims = cgutils.alloca_once_value(builder, intp(workers))
        steps = cgutils.alloca_once_value(builder, intp(context.get_abi_sizeof(intp)))
        thread_count = builder.call(cgutils.get_or_insert_function(
            module, ir.FunctionType(intp, []), "get_num_threads"), [])
        threads = builder.select(builder.icmp_signed("<", thread_count, intp(workers)),
                                 thread_count, intp(workers))
        parallel_for = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [byte_ptr] * 5 + [intp] * 3),
            "numba_parallel_for")
        # No inner dimensions, one array (the indices), `threads` threads.
        builder.call(parallel_for, [builder.bitcast(kernel, byte_ptr),
                                    builder.bitcast(runs, byte_ptr),
                                    builder.bitcast(dims, byte_ptr),
                                    builder.bitcast(steps, byte_ptr),
                                    builder.bitcast(shared, byte_ptr),
                                    intp(0), intp(1), threads])
        with cgutils.if_unlikely(builder, builder.icmp_unsigned("!=", builder.load(failed),
                                                                 flag(0))):
            context.call_conv.return_user_exc(builder, RuntimeError, (WORKER_FAILED,))
        return context.get_dummy_value()

    return numba_types.none(share, count, arguments), codegen
