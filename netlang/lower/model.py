"""A whole model: its file and imports lowered, its train section added, its sources hashed.

`lower_source` is the front end's one entry point from source text to a Graph:
it runs the network's statements, then the train section, names default outputs
when the file declares none, and raises every diagnostic of the file together.
"""

from __future__ import annotations

import hashlib
import os

from netlang.errors import Diagnostic, SourceLocation, raise_diagnostics
from netlang.frontend import ast
from netlang.ir.graph import Graph
from netlang.lower.loader import Lowerer
from netlang.lower.names import Scope, forget_names
from netlang.lower.train_section import lower_train_sections
from netlang.lower.values import Problem


def source_hash(sources: dict[str, str], main: str) -> str:
    """sha256 over a model's sources, keyed by their paths relative to the main file.

    Weights and checkpoints record it; keying by relative path keeps it the same whatever the
    working directory or the spelling of the path (`examples/x.net`, `./examples/x.net`).
    """
    base = os.path.dirname(os.path.abspath(main)) if not main.startswith("<") else os.getcwd()
    keyed = []
    for path, text in sources.items():
        if path == main:
            key = ""
        elif path.startswith("<"):
            key = path
        else:
            key = os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/")
        keyed.append((key, text))
    digest = hashlib.sha256()
    for key, text in sorted(keyed):
        digest.update(key.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def lower_source(source: str | None, path: str) -> Graph:
    """Parse, lower and shape-check a whole `.net` file (and its imports) into a Graph."""
    lowerer = Lowerer()
    try:
        return _lower(lowerer, source, path)
    except RecursionError:
        # The parser bounds nesting, so this needs deep blocks around deep expressions; report
        # it at the statement being lowered, never as a traceback.
        item = lowerer.current_statement
        loc = getattr(item, "loc", None) or SourceLocation(path, 1, 1, source=lowerer.sources.get(path))
        raise_diagnostics(lowerer.diagnostics + [Diagnostic(
            "this is nested too deeply to compile (blocks within blocks within long expressions)",
            loc, "syntax")])
        raise  # unreachable: raise_diagnostics raises
    finally:
        forget_names()


def _lower(lowerer: Lowerer, source: str | None, path: str) -> Graph:
    env, module = lowerer.load_module(path, source, main=True)
    scope = Scope(env)
    statements = [i for i in module.items if not isinstance(i, (ast.Import, ast.BlockDef))]
    main_statements = [i for i in statements if not isinstance(i, ast.Train)]
    lowerer.run_statements(main_statements, scope, module_level=True)
    trains = [i for i in statements if isinstance(i, ast.Train)]
    graph = lowerer.graph
    if trains:
        lower_train_sections(lowerer, trains, scope)
    if not graph.graph["inputs"] and not lowerer.diagnostics:
        lowerer.report(Problem("this file defines no `input`; a model needs at least one "
                               "(a file of blocks is imported, not checked)",
                               SourceLocation(path, 1, 1, source=lowerer.sources.get(path)),
                               "name"), scope)
    if not graph.graph["outputs"] and graph.graph["inputs"]:
        _default_outputs(graph, scope)
    raise_diagnostics(lowerer.diagnostics)
    graph.graph["source_hash"] = source_hash(lowerer.sources, path)
    graph.graph["path"] = path
    graph.graph["sources"] = dict(lowerer.sources)
    return graph


def _default_outputs(graph: Graph, scope: Scope):
    """Without `output` statements, the layers nothing else consumes are the outputs.

    The train section's losses do not count as consumers: the logits a loss reads are an output.
    """
    for node in graph.topological_order():
        data = graph.nodes[node]
        if data["role"] == "layer" and all(graph.nodes[user]["role"] == "loss"
                                           for user in graph.successors(node)):
            graph.graph["outputs"][data["name"]] = node
