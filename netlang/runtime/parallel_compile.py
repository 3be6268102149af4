"""Compiling a program in several processes at once, each compiling different callees.

A cold training step is mostly its callees: LeNet-5's step compiles 24 functions (worker
functions, im2col, the pooling loops, the products) and only one of them is the step.  Numba
compiles them one after another, in one process, under one lock; on a machine with more cores
the others wait.  Callees are called by name (netlang/runtime/linkage.py) and land in Numba's
disk cache one by one, so they can just as well be compiled by other processes:

- Before compiling a program, the process (the *parent*) forks `processes - 1` *helpers*.
  Every process then walks the program's call tree in the same order: the parent compiling
  the program, each helper only typing it (Numba's type inference, no lowering and no LLVM).
- A callee met that is neither compiled in this process nor in the disk cache is *claimed*:
  the first process to create its claim file (O_EXCL) compiles it fully (Numba saves it in the
  disk cache), and marks it done.  A process that finds it claimed by another types it only,
  to learn its return type and walk on to its own callees, and calls it by its name.
- Before a process lowers a call of a callee claimed elsewhere, it waits for that callee to be
  done and loads it from the disk cache, which binds its name.  By then the process has typed
  its whole function and compiled whatever it claimed; the call graph has no cycles, so no two
  processes wait on each other.  A claimant that died without finishing (killed, or its
  compilation failed) leaves the callee to the waiter, which compiles it itself.
- A function a process compiles at the bottom of its stack (a program, or a callee it claimed
  on its walk) *links its callees late* (netlang/runtime/linkage.py): it claims none of them
  while it is typed, is lowered and optimised against their names, and only then, before its
  machine code is linked, compiles those still unclaimed and waits for the others
  (`link_late`).  So a program's own lowering no longer waits at the end of its callees.
- The programs themselves are claimed in the same way: the parent owns the first, and a
  helper that reaches a later one (the evaluation, after walking the training step) before
  the parent does compiles it whole, while the parent still compiles the first; the parent
  then waits for it and loads it from the disk cache (`compile_programs`).
- Helpers end when their walk ends (`os._exit`: no atexit handlers, no buffered output), or
  with their parent (`PR_SET_PDEATHSIG`); the parent ends them when its `session` closes,
  once it has compiled the programs the helpers walked (a training step and an evaluation
  share one session: runtime/compilation.py's `together`).

The machine code is the same whichever process compiles a function: the same IR through the
same LLVM, cached under the same key, and called by the same name.  A run's results do not
depend on how the work was split (tests/test_parallel_compile.py compares the weights).

Numba's disk cache was not written for writers in several processes: saving an entry reads
the function's index, picks a free data file name and writes the index back, so two processes
saving two signatures of one function at once could lose one entry or, worse, give both the
same data file (an index key then loads the other signature's code).  `install_cache_lock`
makes each save hold an exclusive lock on a file beside the index (`fcntl.flock`, released
by the kernel if the process dies).

POSIX only (fork, flock); `NETLANG_COMPILE_PROCESSES` sets how many processes compile (1:
this process alone; default: the CPUs this process may run on, at most 8, and 1 in a rank of
an MPI job).
"""

from __future__ import annotations

import contextlib
import ctypes
import dis
import fcntl
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time

from numba.core import caching, compiler, sigutils, types, typing
from numba.core.compiler_machinery import FunctionPass, register_pass
from numba.core.typed_passes import NopythonTypeInference

from netlang.errors import UsageError

MAX_PROCESSES = 8
# How often a process waiting for another's callee looks again (seconds).
_POLL = 0.005

# The session this process takes part in while a program is being compiled, else None.
_session = None


def compile_processes() -> int:
    """How many processes compile a program: NETLANG_COMPILE_PROCESSES, else the CPUs this
    process may run on (at most MAX_PROCESSES); 1 where fork is missing."""
    if not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity"):
        return 1
    setting = os.environ.get("NETLANG_COMPILE_PROCESSES", "").strip()
    if not setting and "mpi4py.MPI" in sys.modules:
        # A rank of an MPI job: the ranks already share the cores, and some MPI transports
        # do not survive a fork.
        return 1
    if setting:
        try:
            count = int(setting)
        except ValueError:
            count = 0
        if count < 1:
            raise UsageError(f"NETLANG_COMPILE_PROCESSES must be a whole number of at least 1, "
                             f"not {setting!r}")
        return count
    return max(1, min(MAX_PROCESSES, len(os.sched_getaffinity(0))))


def active() -> bool:
    """Whether this process is compiling in a session (see `session`)."""
    return _session is not None


@contextlib.contextmanager
def session(programs: list, processes: int):
    """While inside, this process compiles with `processes - 1` helpers beside it, which walk
    the call trees of `programs` ([(dispatcher, signature)], in the order this process will
    compile them) and compile what they claim (see the module's docstring).  Nothing is
    forked inside a session already open, or for fewer than two processes (`begin`)."""
    opened = begin(programs, processes - 1, parent_first=True)
    try:
        yield
    finally:
        end(opened)


def begin(programs: list, helpers: int, *, parent_first: bool):
    """Open a session: fork `helpers` helpers that walk `programs` (see `session`), and return
    at once; `end` closes it.  `parent_first`: this process compiles the first program itself
    (it is about to); else it is left to the helpers, as all the programs are while this
    process does other work (loads the data: netlang/runtime/compilation.py's
    `compile_ahead`).  The session opened, for `end`; None for no helpers or programs, or
    inside another session."""
    global _session
    if _session is not None or helpers < 1 or not programs:
        return None
    session = _Session(tempfile.mkdtemp(prefix="netlang-claims-"))
    parent = os.getpid()
    if parent_first:   # the first program is the parent's before any helper runs
        first, first_signature = programs[0]
        session.claim(first.symbol(first_signature))
    sys.stdout.flush()
    sys.stderr.flush()
    for _ in range(helpers):
        try:
            pid = os.fork()
        except OSError:   # no more processes to be had: fewer helpers
            break
        if pid == 0:   # a helper: walk the call trees, compile what it claims, end
            try:
                _end_with(parent)
                session.helpers = []
                _session = session
                for dispatcher, signature in programs:
                    with contextlib.suppress(Exception):   # the parent reports it
                        _walk_program(session, dispatcher, signature)
            finally:
                os._exit(0)
        session.helpers.append(pid)
    _session = session
    return session


def end(session) -> None:
    """Close `session` (`begin`'s), if it is open: its helpers are ended (what they still
    compile, the programs no longer need) and its claims removed."""
    global _session
    if session is None or session is not _session:
        return
    _session = None
    for pid in session.helpers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
    shutil.rmtree(session.directory, ignore_errors=True)


def _walk_program(session, dispatcher, signature) -> None:
    """A helper's turn at one program: compiled whole when it is this helper's, else typed,
    compiling the callees this helper claims on the way."""
    if not _compiled_if_own(session, dispatcher, signature):
        typed_signature(dispatcher, signature)


def _compiled_if_own(session, dispatcher, signature) -> bool:
    """Compile the program when it is this process's: it claims it first, or claimed it
    before (the parent's first program); whether it did."""
    if session.compile_if_unclaimed(dispatcher, signature):
        return True
    if session.claimant(dispatcher.symbol(signature)) == os.getpid():
        dispatcher.compile(signature)
        return True
    return False


def compile_programs(programs: list) -> list:
    """Compile (or load) the programs `programs` ([(dispatcher, signature)]) in this process.
    In a session, it first compiles those that are its own or that no process claimed yet, and
    only then waits for each program another process claimed and loads it from the disk cache
    (compiled here after all, where that process failed): no process waits while a program (a
    piece of a cut program) is left unclaimed.  For each program, whether another process
    compiled it for this session."""
    session = _session
    if session is None:
        for dispatcher, signature in programs:
            dispatcher.compile(signature)
        return [False] * len(programs)
    elsewhere = [not _compiled_if_own(session, dispatcher, signature)
                 for dispatcher, signature in programs]
    for (dispatcher, signature), claimed in zip(programs, elsewhere):
        if claimed:
            session.wait(dispatcher.symbol(signature))
            dispatcher.compile(signature)
    return elsewhere


def claimed_elsewhere(dispatcher, signature) -> bool:
    """Whether another process of the open session claimed the program: it compiles it, or
    compiled it already, for this session (the helpers `compile_ahead` started, say)."""
    session = _session
    if session is None:
        return False
    claimant = session.claimant(dispatcher.symbol(signature))
    return claimant is not None and claimant != os.getpid()


def _end_with(parent: int) -> None:
    """Make this helper end when its parent does (killed while compiling, say): Linux sends it
    SIGKILL then (prctl PR_SET_PDEATHSIG); elsewhere it ends at the end of its walk."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:   # the parent ended before the call above
        os._exit(1)


def deferred_template(dispatcher, args, kws, claim: bool = True):
    """In a session, the typing template of a call of `dispatcher` with argument types `args`
    that another process claimed: typed here, compiled there, as (template, pysig, args, kws).
    None where the call takes Numba's usual way: no session, compiled or cached already, or
    claimed (and compiled, before returning) by this process.  Where `claim` is false (a
    caller that links its callees late, `link_late`), an unclaimed callee is typed only too,
    and left to whichever process claims it first.  `dispatcher` is a `SymbolDispatcher` (its
    `symbol` names the code callers call)."""
    session = _session
    if session is None or not dispatcher._can_compile:
        return None
    pysig, folded = dispatcher._compiler.fold_argument_types(args, kws)
    argtypes = tuple(folded)
    deferred = dispatcher.__dict__.setdefault("_netlang_deferred", {})
    if deferred.get(argtypes, (session,))[0] is not session:
        # Typed in an earlier session (a callee of a callee compiled elsewhere, whose calls
        # this process never lowered): that session's claims are gone.
        del deferred[argtypes]
    symbol = dispatcher.symbol(argtypes)
    if argtypes in deferred and claim and session.claimant(symbol) is None:
        # Typed only before, by a caller linking late; claimed now where still unclaimed.
        del deferred[argtypes]
    if argtypes not in deferred:
        if argtypes in dispatcher.overloads or in_disk_cache(dispatcher, argtypes):
            return None
        if claim and session.compile_if_unclaimed(dispatcher, argtypes):
            return None
        try:
            # A caller linking late needs only the callee's return type; where the function
            # returns nothing, that is known without typing it (which its compiler does again).
            signature = typing.signature(types.none, *argtypes) \
                if not claim and returns_nothing(dispatcher.py_func) \
                else typed_signature(dispatcher, argtypes)
        except Exception:   # typing alone failed: take it from the claimant's cache entry
            session.wait(symbol)
            return None
        template = typing.make_concrete_template(
            f"CallTemplate({dispatcher.py_func.__name__})", key=dispatcher.py_func.__name__,
            signatures=[signature])
        deferred[argtypes] = (session, template, lambda: (
            session.compile_if_unclaimed(dispatcher, argtypes) or session.wait(symbol)))
    return deferred[argtypes][1], pysig, folded, {}


def await_deferred(dispatcher, argtypes) -> None:
    """Before a call of `dispatcher` with `argtypes` is lowered: when another process claimed
    that callee, wait until it is done with it and load it (from the disk cache, where it put
    it; or compiled here, where it failed), so its name is bound."""
    entry = dispatcher.__dict__.get("_netlang_deferred", {}).pop(tuple(argtypes), None)
    if entry is not None and entry[0] is _session and tuple(argtypes) not in dispatcher.overloads:
        entry[2]()
        dispatcher.compile(tuple(argtypes))


def returns_nothing(function) -> bool:
    """Whether every `return` of `function` returns the constant None (so Numba types its
    result as `none`): its bytecode returns only a None just loaded (and not jumped to, where
    another value could be on the stack).  Read once per function."""
    known = getattr(function, "_netlang_returns_nothing", None)
    if known is None:
        known = True
        instructions = list(dis.get_instructions(function))
        for i, instruction in enumerate(instructions):
            if instruction.opname == "RETURN_CONST":
                known = known and instruction.argval is None
            elif instruction.opname == "RETURN_VALUE":
                before = instructions[i - 1] if i else None
                known = known and not instruction.is_jump_target and before is not None \
                    and before.opname == "LOAD_CONST" and before.argval is None
        function._netlang_returns_nothing = known
    return known


def late_signature(dispatcher, argtypes):
    """The signature this process typed `dispatcher`'s callee for `argtypes` with in the open
    session (`deferred_template`), where its code is neither here nor loaded yet; else None."""
    entry = dispatcher.__dict__.get("_netlang_deferred", {}).get(tuple(argtypes))
    if entry is None or _session is None or entry[0] is not _session \
            or tuple(argtypes) in dispatcher.overloads:
        return None
    return entry[1].cases[0]


def link_late(callees: list) -> None:
    """Make the callees `callees` ([(dispatcher, argtypes)]) of a function whose code is lowered
    and optimised already, but not yet linked, ready here: first those that no process has
    claimed, compiled here; then the others, each waited for and loaded.  A caller linked late
    (netlang/runtime/linkage.py) typed its callees only, so its own lowering ran while other
    processes compiled them; its machine code needs their names bound only now."""
    session = _session
    waiting = []
    for dispatcher, argtypes in callees:
        dispatcher.__dict__.get("_netlang_deferred", {}).pop(tuple(argtypes), None)
        if tuple(argtypes) in dispatcher.overloads:
            continue
        if session is None or not session.compile_if_unclaimed(dispatcher, argtypes):
            waiting.append((dispatcher, argtypes))
    for dispatcher, argtypes in waiting:
        if session is not None:
            session.wait(dispatcher.symbol(argtypes))
        dispatcher.compile(tuple(argtypes))


def in_disk_cache(dispatcher, argtypes) -> bool:
    """Whether Numba's disk cache holds `dispatcher`'s entry for `argtypes` (an entry is keyed
    by the types, the machine and the function's code).  This reads the cache's index as
    Numba's loader does (Numba 0.68: `Cache._index_key`, `IndexDataCacheFile._load_index`);
    the index is small, the machine code is not loaded."""
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:
        return False
    try:
        key = cache._index_key(argtypes, dispatcher.targetctx.codegen())
        return key in cache_file._load_index()
    except Exception:   # unreadable: compiled (and the index rewritten) as a miss
        return False


class _Session:
    """The claims of one program's compilation, as files in a folder the processes share: a
    claim file holds its claimant's pid; `<claim>.done` says the claimant finished."""

    def __init__(self, directory: str):
        self.directory = directory
        self.helpers: list[int] = []   # their pids, in the process that forked them

    def claim(self, symbol: str) -> bool:
        """Whether this process now owns compiling `symbol` (no other process claimed it)."""
        try:
            fd = os.open(os.path.join(self.directory, symbol), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True

    def compile_if_unclaimed(self, dispatcher, signature) -> bool:
        """Claim `dispatcher`'s code for `signature` and compile it (into the disk cache),
        marked done whether or not that succeeds; whether this process claimed it."""
        symbol = dispatcher.symbol(signature)
        if not self.claim(symbol):
            return False
        try:
            dispatcher.compile(signature)
        finally:
            self.done(symbol)
        return True

    def done(self, symbol: str) -> None:
        """Mark `symbol` finished by its claimant, compiled or not."""
        with open(os.path.join(self.directory, symbol + ".done"), "w"):
            pass

    def finished(self, symbol: str) -> bool:
        """Whether `symbol`'s claimant has finished with it."""
        return os.path.exists(os.path.join(self.directory, symbol + ".done"))

    def claimant(self, symbol: str) -> int | None:
        """The pid of the process that claimed `symbol`: 0 while it is still writing it, None
        where there is no claim (or a session already over)."""
        try:
            with open(os.path.join(self.directory, symbol)) as handle:
                return int(handle.read() or 0)
        except (OSError, ValueError):
            return None

    def wait(self, symbol: str) -> None:
        """Return once `symbol`'s claimant has finished with it, or is gone (or there is no
        claim: a session already over)."""
        while not self.finished(symbol):
            claimant = self.claimant(symbol)
            if claimant is None or claimant == os.getpid() or (claimant and not _alive(claimant)):
                return
            time.sleep(_POLL)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# -- typing without compiling ---------------------------------------------------------------

@register_pass(mutates_CFG=False, analysis_only=True)
class _StopAfterTyping(FunctionPass):
    """Ends the pipeline with the function's return type, before anything is lowered."""

    _name = "netlang_stop_after_typing"

    def __init__(self):
        FunctionPass.__init__(self)

    def run_pass(self, state):
        """Stop, returning the inferred return type."""
        raise compiler._EarlyPipelineCompletion(state.return_type)


class _TypingOnly(compiler.CompilerBase):
    """Numba's untyped passes and its type inference, then stop."""

    def define_pipelines(self):
        """One pipeline: Numba's untyped pipeline, type inference, `_StopAfterTyping`."""
        manager = compiler.DefaultPassBuilder.define_untyped_pipeline(self.state, "typing only")
        manager.add_pass(NopythonTypeInference, "nopython frontend")
        manager.add_pass(_StopAfterTyping, "stop after typing")
        manager.finalize()
        return [manager]


def typed_signature(dispatcher, argtypes):
    """The signature Numba infers for `dispatcher` called with `argtypes`, typing its body (and
    so meeting its callees, which a session claims or types in turn) without lowering it."""
    argtypes = tuple(sigutils.normalize_signature(argtypes)[0]) \
        if not isinstance(argtypes, tuple) else argtypes
    function_compiler = dispatcher._compiler
    flags = compiler.Flags()
    function_compiler.targetdescr.options.parse_as_flags(flags, function_compiler.targetoptions)
    flags = function_compiler._customize_flags(flags)
    return_type = compiler.compile_extra(
        function_compiler.targetdescr.typing_context, function_compiler.targetdescr.target_context,
        function_compiler._get_implementation(argtypes, {}), args=argtypes, return_type=None,
        flags=flags, locals=function_compiler.locals, pipeline_class=_TypingOnly)
    return typing.signature(return_type, *argtypes)


# -- Numba's cache, saved under a lock ------------------------------------------------------

def install_cache_lock() -> None:
    """Make every save into Numba's disk cache hold an exclusive lock on `<index>.lock`, so
    processes saving entries of one function at once keep them all (see the docstring)."""
    cache_file_class = caching.IndexDataCacheFile
    if getattr(cache_file_class.save, "_netlang_locked", False):
        return
    unlocked_save = cache_file_class.save

    def save(self, key, data):
        with open(self._index_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return unlocked_save(self, key, data)

    save._netlang_locked = True
    save.__doc__ = unlocked_save.__doc__
    cache_file_class.save = save


# -- Numba's compiler, loaded without SciPy's linear algebra --------------------------------

def defer_scipy_blas_probe() -> None:
    """Make Numba load its compiler's registries without importing SciPy's linear algebra.

    The first compilation in a process imports every module that registers an implementation
    (`CPUContext.load_additional_registries`), and one of them, `numba.np.arraymath`, asks at
    import whether SciPy's BLAS is there by importing `scipy.linalg.cython_blas`: 0.2-0.35 s
    of importing `scipy.linalg` in every process that compiles, on the critical path of a
    cold run (both compile processes of `netlang train` pay it).  netlang's compiled code
    calls no SciPy: its products call NumPy's OpenBLAS (runtime/blas.py).  The probe's answer
    is only a flag, which chooses how `np.convolve` and `np.correlate` take inner products; it
    is set as the probe would set it where SciPy is installed, without importing it, and
    Numba's own `ensure_blas` is left as it was, so anything that compiles `np.dot` or
    `np.linalg` imports SciPy (and checks its BLAS's integer width) then, as before.  Where
    SciPy is missing the probe runs as it is, and fails fast.  Warm processes load no
    registries, so this touches only processes that compile (Numba 0.68)."""
    from numba.core import cpu
    load = cpu.CPUContext.load_additional_registries
    if getattr(load, "_netlang_deferred_probe", False):
        return

    def load_additional_registries(self):
        if "numba.np.arraymath" not in sys.modules and \
                importlib.util.find_spec("scipy") is not None:
            from numba.np import linalg
            probe = linalg.ensure_blas
            linalg.ensure_blas = _blas_assumed   # what arraymath binds and calls at import
            try:
                import numba.np.arraymath  # noqa: F401
            finally:
                linalg.ensure_blas = probe
        return load(self)

    load_additional_registries._netlang_deferred_probe = True
    load_additional_registries.__doc__ = load.__doc__
    cpu.CPUContext.load_additional_registries = load_additional_registries


def _blas_assumed() -> None:
    """`numba.np.linalg.ensure_blas` while `numba.np.arraymath` is imported: SciPy is
    installed (`defer_scipy_blas_probe`), so its BLAS is taken to be there."""
