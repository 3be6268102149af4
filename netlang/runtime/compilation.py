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
        has no entry for these types (`parallel_compile.in_disk_cache`)."""
        # Numba's modules, imported here: importing this module never starts Numba.
        from netlang.runtime.parallel_compile import in_disk_cache
        return not self.ready and not in_disk_cache(self._dispatcher, self._signature)

    def run(self) -> tuple[float, bool]:
        """Make the program ready: (seconds taken, whether it was compiled rather than loaded
        from the cache or already ready).  Numba's own count of cache misses says which, so a
        cache entry that failed to load is counted as the compilation it turned into."""
        # Numba's modules, imported here: importing this module never starts Numba.
        from netlang.runtime import parallel_compile
        misses = self._dispatcher.stats.cache_misses[self._signature]
        start = time.perf_counter()
        # Compiled afresh: in several processes where the machine has the cores (netlang/
        # runtime/parallel_compile.py), in the session `together` opened if there is one;
        # loaded from the cache: here.
        programs = [(self._dispatcher, self._signature)] \
            if not parallel_compile.active() and self.needs_compiling else []
        with parallel_compile.session(programs, parallel_compile.compile_processes()
                                      if programs else 1):
            self._dispatcher.compile(self._signature)
        seconds = time.perf_counter() - start
        return seconds, self._dispatcher.stats.cache_misses[self._signature] > misses


@contextlib.contextmanager
def together(compilations):
    """Inside, the `run`s of `compilations` that compile share one set of helper processes,
    which walk all their call trees in turn: while this process compiles the training step,
    the helpers already compile the evaluation's callees."""
    programs = [(compilation._dispatcher, compilation._signature)
                for compilation in compilations if compilation.needs_compiling]
    if len(programs) < 2:   # nothing to share (and Numba's modules left unimported)
        yield
        return
    from netlang.runtime import parallel_compile
    with parallel_compile.session(programs, parallel_compile.compile_processes()):
        yield
