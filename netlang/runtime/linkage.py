"""Compiled functions that their compiled callers call by name, instead of carrying a copy.

Numba links the whole compiled code of every function a compiled function calls into the
caller's own module, and optimises and translates that module to machine code again: LeNet-5's
training step carried its five worker functions, each carrying im2col, the products and the
pooling loops, and the workers' parallel loops carried them once more; three quarters of its
cold first step was LLVM working on code it had compiled already (docs/compiler.md, Where
compile time goes).  A `SymbolDispatcher` instead gives each compiled signature a name of its
own in LLVM's symbol table (`netlang_fn_` and a digest of the function's module, name and
argument types) bound to its machine code, and its callers call that name: each function's
code is optimised and translated once.

A caller loaded from Numba's disk cache in a later process needs those names bound before its
machine code is linked.  Each caller therefore keeps, beside its Numba cache index, a list of
the names it calls and whose they are (`<index>.<signature digest>.callees`, one per compiled
signature, JSON: module, function and the callee's mangled argument types, read back against
the callee's own Numba cache index), written
while it is being compiled, before Numba writes the cache entry.  Before a caller is compiled or
loaded, its callees are loaded from that list; a list missing, unreadable or naming a callee
that cannot be loaded makes the caller's cache entry a miss (its index removed), so the caller
is compiled afresh rather than linked against a name that nothing binds.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import json
import os
import sys
import tempfile
import threading

import llvmlite.binding as llvm
from numba.core import cgutils, sigutils
from numba.core.base import OverloadSelector
from numba.core.caching import FunctionCache
from numba.core.imputils import fix_returning_optional, impl_ret_new_ref
from numba.core.itanium_mangler import mangle_args
from numba.core.registry import CPUDispatcher
from numba.core.runtime import rtsys

from netlang.runtime import parallel_compile

# Several processes may save entries of one function into Numba's disk cache at once (two
# runs, MPI ranks, or one program compiled in several processes): each save holds a lock.
parallel_compile.install_cache_lock()
# A process that compiles loads Numba's registries without importing SciPy's linear algebra.
parallel_compile.defer_scipy_blas_probe()

# symbol name → the dispatcher and signature it is bound to, in this process.
_bound: dict[str, tuple] = {}
# The callers being compiled on this thread, innermost last (a callee is compiled while its
# caller is being typed): each as (dispatcher, its argument types, the names its code calls
# so far, the callees it links late: {name: (dispatcher, argument types, signature)}).
_compiling = threading.local()
_lock = threading.RLock()


def _home(dispatcher) -> tuple[str, str]:
    """(module, name) under which the dispatcher is found again in a later process: its
    function's module, or a netlang module that holds it (netlang/runtime/cnn.py holds loop
    nests written in netlang/ops/); found once."""
    home = getattr(dispatcher, "_netlang_home", None)
    if home is None:
        own = dispatcher.py_func.__module__
        candidates = [own] + sorted(name for name in list(sys.modules)
                                    if name.startswith("netlang") and name != own)
        home = (own, dispatcher.py_func.__name__)
        for module_name in candidates:
            module = sys.modules.get(module_name)
            found = [name for name, value in vars(module).items() if value is dispatcher] \
                if module is not None else []
            if found:
                home = (module_name, found[0])
                break
        dispatcher._netlang_home = home
    return home


def _symbol(dispatcher, argtypes) -> str:
    module, name = _home(dispatcher)
    key = f"{module}.{name}({mangle_args(argtypes)})"
    return "netlang_fn_" + hashlib.sha256(key.encode()).hexdigest()[:32]


# The types a callee's code takes and returns, as a call of it is lowered (Numba's `fndesc`
# has these two fields too).
CalleeTypes = collections.namedtuple("CalleeTypes", "restype argtypes")


def _call_by_symbol(types, symbol):
    """The lowering of a call of the function whose code takes and returns `types`
    (`CalleeTypes`, or its `fndesc`), through `symbol`: as Numba's own call of a compiled
    function (`numba.core.imputils.user_function`), but declaring the bound name instead of
    linking the callee's code in."""

    def call(context, builder, sig, args):
        fnty = context.call_conv.get_function_type(types.restype, types.argtypes)
        function = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        status, value = context.call_conv.call_function(builder, function, types.restype,
                                                        types.argtypes, args)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        value = fix_returning_optional(context, builder, sig, status, value)
        _record_call(symbol)
        return impl_ret_new_ref(context, builder, types.restype, value)

    call.signature = tuple(types.argtypes)
    call.libs = ()
    return call


def declare_call(context, module, dispatcher, argtypes):
    """(LLVM function, `CalleeTypes`) of the dispatcher's code for `argtypes`, declared in
    `module` by its bound name, for a call that an intrinsic writes itself
    (runtime/workers.py): the code made ready first (compiled here, or loaded once the process
    that claimed it is done), or left to be linked late (`_late_callee`), and the name listed
    among the callees of the function being compiled, as for a call that Numba lowers
    (`_call_by_symbol`)."""
    argtypes = tuple(argtypes)
    signature = _late_callee(dispatcher, argtypes)
    if signature is not None:
        types = CalleeTypes(signature.return_type, argtypes)
    else:
        dispatcher.get_overload(argtypes)
        fndesc = dispatcher.overloads[argtypes].fndesc
        types = CalleeTypes(fndesc.restype, tuple(fndesc.argtypes))
    symbol = _symbol(dispatcher, argtypes)
    fnty = context.call_conv.get_function_type(types.restype, types.argtypes)
    function = cgutils.get_or_insert_function(module, fnty, symbol)
    _record_call(symbol)
    return function, types


# -- linking late --------------------------------------------------------------------------
#
# While several processes compile a program (netlang/runtime/parallel_compile.py), a
# function that a process compiles at the bottom of its stack (the program, a piece of it, or
# a callee claimed on a walk) is typed with its callees typed only, unclaimed; its calls of
# them are lowered by name from the types it inferred (`_late_callee`), and LLVM optimises
# its code while the other processes compile those callees.  Only just before its machine
# code is linked (`_link_late_callees`, from Numba's `_finalize_final_module`) does the
# process compile those no one has claimed and wait for the others.  A caller that claimed
# each callee as it typed it compiled them all first, then lowered itself alone at the end:
# LeNet-5's training step, 2.3 s of lowering and LLVM after its callees, while the other
# process had nothing left to do.  The names, the machine code and the results are the same.

def _linking_late() -> bool:
    """Whether the function being compiled on this thread links its callees late: it is at
    the bottom of this thread's stack of compilations, while processes compile together."""
    frames = getattr(_compiling, "frames", None)
    return bool(frames) and len(frames) == 1 and parallel_compile.active()


def _late_callee(dispatcher, argtypes):
    """The signature of `dispatcher`'s callee for `argtypes` when the function being compiled
    links it late (typed only, its code not here): listed, to be made ready before the
    caller's code is linked.  None where the call takes the usual way."""
    if not _linking_late():
        return None
    signature = parallel_compile.late_signature(dispatcher, argtypes)
    if signature is None:
        return None
    symbol = _symbol(dispatcher, argtypes)
    late = _compiling.frames[-1][3]
    if symbol not in late:
        late[symbol] = (dispatcher, tuple(argtypes), signature)
    return signature


def _link_late_callees() -> None:
    """Make ready the callees that the function being compiled on this thread links late, and
    check that each one's code takes and returns the types its calls were lowered with."""
    frames = getattr(_compiling, "frames", None)
    if not frames or not frames[-1][3]:
        return
    late = dict(frames[-1][3])
    frames[-1][3].clear()
    parallel_compile.link_late([(dispatcher, argtypes) for dispatcher, argtypes, _ in
                                late.values()])
    for symbol, (dispatcher, argtypes, signature) in late.items():
        fndesc = dispatcher.overloads[argtypes].fndesc
        if symbol not in _bound or fndesc.restype != signature.return_type \
                or tuple(fndesc.argtypes) != argtypes:
            raise RuntimeError(f"netlang: {dispatcher.py_func.__qualname__}{argtypes} was "
                               f"compiled as {fndesc.argtypes} -> {fndesc.restype}, not as its "
                               f"caller was lowered ({signature})")


def _install_late_linking() -> None:
    """Run `_link_late_callees` before Numba links a library's optimised module into the
    process (`CPUCodeLibrary._finalize_final_module`, Numba 0.68), so that a function linked
    late finds every name it calls bound."""
    from numba.core.codegen import CPUCodeLibrary
    finalize = CPUCodeLibrary._finalize_final_module
    if getattr(finalize, "_netlang_late", False):
        return

    def _finalize_final_module(self):
        _link_late_callees()
        return finalize(self)

    _finalize_final_module._netlang_late = True
    _finalize_final_module.__doc__ = finalize.__doc__
    CPUCodeLibrary._finalize_final_module = _finalize_final_module


_install_late_linking()


# The entry in a callee list that stands for Numba's thread pool: the function's code calls
# the pool (netlang/runtime/workers.py), whose entry points are bound once it has started.
THREAD_POOL = "numba_thread_pool"


def start_thread_pool() -> None:
    """Start Numba's thread pool (once per process), before code that calls it is loaded.

    Compiled code that runs workers calls the pool's entry points (`numba_parallel_for`,
    `get_num_threads`), names that LLVM binds only once the pool has started; machine code
    read back from Numba's cache with a name nothing binds kills the process.  So the
    engine starts the pool before it loads a program that has worker functions
    (`cpu.load_program`), and a function whose code calls the pool lists it among its callees
    (`note_thread_pool_call`), which starts the pool before the function is loaded
    however it is reached."""
    # Numba's OpenMP threading layer reads this when the pool starts: workers that wait by
    # spinning fight OpenBLAS's spinning threads for the cores, and a training step ran 20
    # times slower beside them.  Waiting passively costs nothing measurable here (a worker
    # sleeps only between kernels).  The user's own setting stands.  Set here, not at import:
    # importing netlang must not change the environment of the processes a user starts (a
    # PyTorch process started beside it ran 40% slower with passive OpenMP waits).
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    from numba.np.ufunc.parallel import _launch_threads
    _launch_threads()


def note_thread_pool_call() -> None:
    """Note that the caller being compiled calls Numba's thread pool: loading it in a later
    process starts the pool first (`_bind_callees`)."""
    _record_call(THREAD_POOL)


def _record_call(symbol: str) -> None:
    """Note that the caller being compiled calls `symbol`, in its list on disk at once: the list
    must be complete before Numba writes the caller's cache entry."""
    frames = getattr(_compiling, "frames", None)
    if not frames:
        return
    caller, argtypes_of_caller, called, late = frames[-1]
    if symbol in called:
        return
    called.add(symbol)
    path = _callee_list_path(caller, argtypes_of_caller)
    if path is None:
        return
    entries = _read_callee_list(path) or {}
    if symbol == THREAD_POOL:
        entries[symbol] = []
    else:
        dispatcher, argtypes = _bound[symbol] if symbol in _bound else late[symbol][:2]
        entries[symbol] = [*_home(dispatcher), mangle_args(argtypes)]
    _write_atomically(path, json.dumps(entries, sort_keys=True))


def _bind(symbol: str, entry) -> bool:
    """Whether the name a callee list holds is bound, after loading what it names (a callee,
    or Numba's thread pool)."""
    if symbol == THREAD_POOL:
        start_thread_pool()
        return True
    return symbol in _bound or (isinstance(entry, list) and len(entry) == 3
                                and _load_callee(*entry) and symbol in _bound)


def _callee_list_path(dispatcher, argtypes) -> str | None:
    """Where the names that the dispatcher's cache entry for `argtypes` calls are listed: one
    file per signature, so processes compiling two signatures at once never merge lists."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    index_path = getattr(cache_file, "_index_path", None)
    if index_path is None:
        return None
    digest = hashlib.sha256(mangle_args(argtypes).encode()).hexdigest()[:16]
    return f"{index_path}.{digest}.callees"


def _read_callee_list(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (OSError, ValueError):
        return None
    return entries if isinstance(entries, dict) else None


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".callees-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_callee(module_name: str, name: str, mangled: str) -> bool:
    """Compile or load the callee `name` of `module_name` for the argument types whose mangled
    form is `mangled`, from its own cache index; whether its name is now bound."""
    module = sys.modules.get(module_name)
    if module is None:
        # Only netlang's own modules are imported on a cache file's word; generated modules
        # are in sys.modules already (the program's loader imports its parts first).
        if not module_name.startswith("netlang."):
            return False
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return False
    dispatcher = getattr(module, name, None)
    if not isinstance(dispatcher, SymbolDispatcher):
        return False
    for argtypes in list(dispatcher.overloads):
        if mangle_args(argtypes) == mangled:
            return True
    cache_file = getattr(dispatcher._cache, "_cache_file", None)
    if cache_file is None:
        return False
    try:
        index = cache_file._load_index()
    except Exception:  # a damaged index: the caller is compiled afresh instead
        return False
    for key in index:
        argtypes = key[0]
        if mangle_args(argtypes) == mangled:
            dispatcher.compile(argtypes)
            return True
    return False


_intrinsics = None


def _intrinsics_digest() -> str:
    """A digest of runtime/blas.py, jit.py and workers.py, where the intrinsics live; read
    once."""
    global _intrinsics
    if _intrinsics is None:
        digest = hashlib.sha256()
        for name in ("blas.py", "jit.py", "workers.py"):
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
                digest.update(f.read())
        _intrinsics = digest.hexdigest()[:16]
    return _intrinsics


class _LoadingCache(FunctionCache):
    """Numba's disk cache of a function, except that loading an entry does not first load every
    registry of Numba's CPU target (`target_context.refresh()`, which Numba's own cache calls).

    Machine code read back needs Numba's runtime and the symbols bound when the target context
    is made, nothing else; the registries (the implementations of everything Numba compiles,
    SciPy's BLAS table among them) serve the compiler, which loads them itself before it
    compiles anything (`CompilerBase.__init__`, and the target's first `get_function`).  They
    were 0.3 s of the MLP's warm start of 0.77 s, on a machine where they import SciPy.
    """

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    def _index_key(self, sig, codegen):
        """Numba's key (the signature, the machine, the function's bytecode), and a digest of
        the runtime modules whose intrinsics compiled code inlines (the products' calls,
        stack buffers): Numba keys an entry on the function's own file only, and an edit to
        one of those changes the machine code of every function that uses it."""
        return super()._index_key(sig, codegen) + (_intrinsics_digest(),)


class SymbolDispatcher(CPUDispatcher):
    """A Numba dispatcher whose compiled signatures its compiled callers call by name (see the
    module's docstring)."""

    def symbol(self, argtypes) -> str:
        """The name that callers call this function's code for `argtypes` by."""
        return _symbol(self, tuple(argtypes))

    def enable_caching(self):
        """Numba's disk cache, loading without the compiler's registries (`_LoadingCache`)."""
        self._cache = _LoadingCache(self.py_func)

    def add_overload(self, cres):
        """Numba's, then the signature's code bound to its own name, which callers call."""
        super().add_overload(cres)
        if cres.objectmode:
            return
        symbol = _symbol(self, cres.signature.args)
        with _lock:
            if symbol not in _bound:
                llvm.add_symbol(symbol, cres.library.get_pointer_to_function(
                    cres.fndesc.llvm_func_name))
                _bound[symbol] = (self, cres.signature.args)
        self._lower_calls_by_symbol(cres.entry_point, cres.fndesc, symbol)

    def get_call_template(self, args, kws):
        """Numba's; but while several processes compile a program (netlang/runtime/
        parallel_compile.py), a callee that another process claimed is only typed here, as is
        every callee of a function that links them late (see "linking late" above)."""
        template = parallel_compile.deferred_template(self, args, kws, claim=not _linking_late())
        return template if template is not None else super().get_call_template(args, kws)

    def get_overload(self, sig):
        """Numba's, once a callee that another process claimed is done there and loaded here
        (asked for as a call of it is lowered); for a callee linked late, the key its call is
        lowered under instead (its code made ready before the caller is linked)."""
        argtypes = tuple(sigutils.normalize_signature(sig)[0])
        signature = _late_callee(self, argtypes)
        if signature is not None:
            # No entry point here yet: the call's key in Numba's implementation table is the
            # bound name's.
            symbol = _symbol(self, argtypes)
            key = ("netlang late callee", symbol)
            if key not in self.targetctx._defns:
                self._lower_calls_by_symbol(key, CalleeTypes(signature.return_type, argtypes),
                                            symbol)
            return key
        parallel_compile.await_deferred(self, argtypes)
        return super().get_overload(sig)

    def _lower_calls_by_symbol(self, key, types, symbol) -> None:
        """Make Numba lower the calls it finds under `key` in its implementation table (an
        entry point, or a late callee's key) as calls of `symbol` (`_call_by_symbol`)."""
        selector = OverloadSelector()
        implementation = _call_by_symbol(types, symbol)
        selector.append(implementation, implementation.signature)
        self.targetctx._defns[key] = selector

    def compile(self, sig):
        """Numba's, after binding the names a cached entry of this function calls (or, where
        they cannot be bound, with the entry dropped so the function is compiled afresh)."""
        argtypes = tuple(sigutils.normalize_signature(sig)[0])
        with _lock:
            self._bind_callees(argtypes)
            frames = _compiling.__dict__.setdefault("frames", [])
            called = set()
            frames.append((self, argtypes, called, {}))
            misses = sum(self._cache_misses.values())
            try:
                entry = super().compile(sig)
            finally:
                frames.pop()
            path = _callee_list_path(self, argtypes)
            if path is None:
                return entry
            if sum(self._cache_misses.values()) > misses:
                # Compiled afresh: the list holds exactly what this code calls.  The names were
                # added as they were called (`_note_call`) to the list the file held, which may
                # be an earlier version's of the same function (its source edited, or a netlang
                # upgraded): a name left from it that nothing binds any more made every later
                # process drop this entry and compile it again.
                entries = _read_callee_list(path) or {}
                _write_atomically(path, json.dumps(
                    {symbol: entries[symbol] for symbol in called if symbol in entries},
                    sort_keys=True))
            elif not os.path.exists(path):
                # A function that calls nothing by name still has its (empty) list: an entry
                # without one is one whose list was never finished.
                _write_atomically(path, "{}")
            return entry

    def _bind_callees(self, argtypes) -> None:
        """Load the callees that the cache entry for `argtypes` lists, if there is one; drop the
        cache's index when that fails, so the entry is compiled afresh."""
        path = _callee_list_path(self, argtypes)
        if path is None or argtypes in self.overloads:
            return
        cache_file = self._cache._cache_file
        try:
            cached = any(key[0] == argtypes for key in cache_file._load_index())
        except Exception:  # a damaged index: cpu.py's check drops it, Numba compiles afresh
            return
        if not cached:
            return
        entries = _read_callee_list(path)
        # The thread pool first: a callee's own code may call it too.
        if entries is None or not all(_bind(symbol, entries[symbol]) for symbol in
                                      sorted(entries, key=lambda symbol: symbol != THREAD_POOL)):
            with contextlib.suppress(OSError):
                os.unlink(cache_file._index_path)


# Numba's options for every function compiled here.  Numba also wraps each compiled function
# as a C function, for code that takes it as a first-class value; nothing here does, and the
# wrapper of a training step of 318 array arguments took 0.9 s of LLVM's time to compile.
# (`no_cpython_wrapper`, the wrapper that Python calls through, is left on by default: the
# engine calls the programs, and tests the loop nests, from Python.  Generated worker
# functions, called only from compiled code, turn it off: for one of a dozen array arguments
# it took 0.17 s of the 0.19 s spent compiling an empty function.)
TARGET_OPTIONS = {"nopython": True, "nogil": True, "boundscheck": None, "no_cfunc_wrapper": True}


class _CompiledCallersOnly:
    """A dispatcher of a function compiled without the wrapper that Python calls through
    (`no_cpython_wrapper`): called from Python, Numba would jump through a null pointer and
    the process would crash; this refuses the call in one line instead."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__module__}.{self.py_func.__qualname__} is compiled "
                        f"for compiled callers only (no wrapper for calls from Python)")


_compiled_only_classes: dict = {}


def dispatcher_class(base, options: dict):
    """`base` (a dispatcher class), or its variant that refuses calls from Python where
    `options` compile no wrapper for them."""
    if not options.get("no_cpython_wrapper"):
        return base
    if base not in _compiled_only_classes:
        _compiled_only_classes[base] = type(f"CompiledOnly{base.__name__}",
                                            (_CompiledCallersOnly, base), {"__module__": __name__})
    return _compiled_only_classes[base]


def symbol_jit(function=None, **options):
    """`function` compiled as a `SymbolDispatcher` with Numba's disk cache, without the GIL;
    `options` are Numba's (`parallel`, `error_model`, `no_cpython_wrapper`).  Used bare or
    with options, as `njit`."""
    def make(py_function):
        dispatcher = dispatcher_class(SymbolDispatcher, options)(
            py_func=py_function, locals={}, targetoptions={**TARGET_OPTIONS, **options})
        dispatcher.enable_caching()
        return dispatcher
    return make if function is None else make(function)
