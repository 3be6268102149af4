"""A compiled program made ready before its first call, and whether that means compiling it.

Numba compiles a function at its first call, so a training run that just started stepping
spent its first step compiling, and counted that time as training (epoch 1 of a small model
showed a thousandth of epoch 2's samples/s).  A run instead makes each program it will call
ready before the first step (`ProgramCompilation.run`), for the very argument types the calls
will pass: Numba loads it from its disk cache or compiles it then, and the steps that follow
compile nothing.  Whether a program will be compiled or loaded is known beforehand
(`needs_compiling`), so the run can say what it is compiling before the wait, and nothing at
all when everything comes from the cache.
"""

from __future__ import annotations

import contextlib
import time

# The session of helpers that `compile_ahead` started, until `together` or `stop_ahead` ends it.
_ahead = None


class ProgramCompilation:
    """One program (`title`, as the run names it) made ready for calls with `arguments`:
    the values a call passes, or values of the same types."""

    def __init__(self, title: str, dispatcher, arguments):
        self.title = title
        self._dispatcher = dispatcher
        # The types Numba reads off the arguments of a call, so the overload made ready here
        # is the one each call then finds.
        self._signature = tuple(dispatcher.typeof_pyval(value) for value in arguments)

    @property
    def ready(self) -> bool:
        """Whether this process already compiled or loaded the program for these types."""
        return self._signature in self._dispatcher.overloads

    @property
    def needs_compiling(self) -> bool:
        """Whether `run` will compile the program: it is not ready, and Numba's disk cache
        has no entry for these types (`parallel_compile.in_disk_cache`), or a helper process
        compiles it for this run (and may have put it there already)."""
        # Numba's modules, imported here: importing this module never starts Numba.
        from netlang.runtime.parallel_compile import claimed_elsewhere, in_disk_cache
        return not self.ready and (claimed_elsewhere(self._dispatcher, self._signature)
                                   or not in_disk_cache(self._dispatcher, self._signature))

    def programs(self) -> list:
        """[(dispatcher, signature)] of what `run` will compile (none where it loads)."""
        return [(self._dispatcher, self._signature)] if self.needs_compiling else []

    def run(self) -> tuple[float, bool]:
        """Make the program ready: (seconds taken, whether it was compiled rather than loaded
        from the cache or already ready).  Numba's own count of cache misses says which, so a
        cache entry that failed to load is counted as the compilation it turned into; a program
        that a helper process compiled for this run counts as compiled."""
        return ProgramCompilations(self.title, [self]).run()


class ProgramCompilations:
    """A program that is a Python function calling compiled pieces (netlang/codegen/pieces.py),
    made ready as one: each piece a `ProgramCompilation`, the processes compiling them at once."""

    def __init__(self, title: str, pieces: list):
        self.title = title
        self.pieces = pieces

    @property
    def ready(self) -> bool:
        """Whether every piece is compiled or loaded in this process."""
        return all(piece.ready for piece in self.pieces)

    @property
    def needs_compiling(self) -> bool:
        """Whether `run` will compile a piece."""
        return any(piece.needs_compiling for piece in self.pieces)

    def programs(self) -> list:
        """[(dispatcher, signature)] of the pieces `run` will compile."""
        return [program for piece in self.pieces for program in piece.programs()]

    def run(self) -> tuple[float, bool]:
        """Make every piece ready, in one session of compile processes: (seconds taken,
        whether a piece was compiled rather than loaded, as `ProgramCompilation.run` says)."""
        # Numba's modules, imported here: importing this module never starts Numba.
        from netlang.runtime import parallel_compile
        start = time.perf_counter()
        # Compiled afresh: in several processes where the machine has the cores (netlang/
        # runtime/parallel_compile.py), in the session `together` opened if there is one;
        # loaded from the cache: here.
        programs = self.programs() if not parallel_compile.active() else []
        pieces = [(piece._dispatcher, piece._signature) for piece in self.pieces]
        misses = [dispatcher.stats.cache_misses[signature] for dispatcher, signature in pieces]
        with parallel_compile.session(programs, parallel_compile.compile_processes()
                                      if programs else 1):
            elsewhere = parallel_compile.compile_programs(pieces)
        compiled = any(elsewhere) or any(
            dispatcher.stats.cache_misses[signature] > before
            for (dispatcher, signature), before in zip(pieces, misses))
        return time.perf_counter() - start, compiled


@contextlib.contextmanager
def together(compilations):
    """Inside, the `run`s of `compilations` that compile share one set of helper processes,
    which walk all their call trees in turn: while this process compiles the training step,
    the helpers compile its callees, then the evaluation, whole, which this process then loads.
    Helpers that `compile_ahead` started serve instead, and end with this."""
    programs = [program for compilation in compilations for program in compilation.programs()]
    try:
        if len(programs) < 2:   # nothing to share
            yield
        else:
            from netlang.runtime import parallel_compile
            with parallel_compile.session(programs, parallel_compile.compile_processes()):
                yield
    finally:
        stop_ahead()


def compile_ahead(compilations) -> None:
    """Start compiling those of `compilations` that need it in helper processes, one per CPU
    (`parallel_compile.compile_processes`), and return at once, so that they compile while
    this process does other work before it needs them (a training run loads its data); the
    next `together` waits for them and loads what they compiled, or `stop_ahead` ends them.
    None are started where everything is cached, or for one process.  A compilation whose
    program the run then does not call (its guess of the evaluated nodes was wrong) costs the
    helpers' time only: the results never depend on it."""
    global _ahead
    from netlang.runtime import parallel_compile
    programs = [program for compilation in compilations for program in compilation.programs()]
    stop_ahead()
    _ahead = parallel_compile.begin(programs, parallel_compile.compile_processes()
                                    if programs else 0, parent_first=False)


def stop_ahead() -> None:
    """End the helpers `compile_ahead` started, if they still run (the run ended before it
    needed its programs: its data failed to load)."""
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is not None:
        from netlang.runtime import parallel_compile
        parallel_compile.end(ahead)
