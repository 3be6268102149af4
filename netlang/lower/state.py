"""What one lowering run holds: the graph being built, the files loaded, the mistakes so far.

`LoweringState` is the root of the lowering classes (expressions, layers, blocks,
statements, the loader), each adding one part of the language on top of the last;
`report` is how every part records a mistake without stopping.
"""

from __future__ import annotations

from netlang.errors import Diagnostic
from netlang.ir.graph import Graph
from netlang.lower.names import ModuleEnv, Scope
from netlang.lower.values import Problem


class LoweringState:
    """The graph under construction, the diagnostics so far and the bookkeeping of one run."""

    def __init__(self):
        self.graph = Graph()
        self.diagnostics: list[Diagnostic] = []
        self._seen = set()
        self.modules: dict[str, ModuleEnv] = {}
        self._loading: list[str] = []
        self.block_stack: list[str] = []
        self.sources: dict[str, str] = {}
        self.layer_count = 0
        self.parameter_count = 0
        self.too_large = False
        self.current_statement = None  # the top-level statement being lowered

    def report(self, problem: Problem, scope: Scope | None):
        """Record `problem` as a diagnostic, once, with the block instantiations that led to it."""
        trace = tuple(reversed(scope.trace)) if scope else ()
        key = (problem.message, problem.loc.sort_key() if problem.loc else None)
        if key in self._seen:  # the same mistake inside a block instantiated many times
            return
        self._seen.add(key)
        self.diagnostics.append(Diagnostic(problem.message, problem.loc, problem.kind,
                                           problem.notes, trace))
