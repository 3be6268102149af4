"""The package's shape, checked by reading its source (issue 10).

- No module outside `netlang/ops/` branches on an op's name: an op's facts live on its
  `OpDef` and are read generically.
- No import cycle between netlang modules, imports inside functions included.
- Numba is imported only under `netlang/runtime/`.
- No module is longer than 700 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

from netlang.ops import all_ops

PACKAGE = Path(__file__).resolve().parent.parent / "netlang"
MAX_LINES = 700

# The graph's leaves: values passed in (inputs) and held (parameters, buffers).  Every walk
# over a graph tells them from computed values, and the same words name the node roles; they
# are the IR's structure rather than facts of one op.
LEAVES = {"input", "param"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


# ---- (a) no branch on an op's name outside netlang/ops/ ----------------------------------------

def _strings(node) -> list[ast.Constant]:
    """The string constants of a constant, or of a tuple/list/set (or `frozenset(...)`) of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _strings(element)]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("frozenset", "set", "tuple") and node.args):
        return _strings(node.args[0])
    return []


def _is_op_name_word(name: str) -> bool:
    return name == "op" or name.startswith("op_") or name.endswith("_op")


def _reads_an_op(node) -> bool:
    """Whether an expression reads a node's op: `graph.op(n)`, `data["op"]`, `op`, `host_op`,
    `node.op`, `op.name`..."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and _is_op_name_word(sub.id):
            return True
        if isinstance(sub, ast.Attribute) and _is_op_name_word(sub.attr):
            return True
        if (isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant)
                and sub.slice.value == "op"):
            return True
    return False


def op_name_branches(source: str, op_names: set[str]) -> list[tuple[int, str]]:
    """(line, description) of every place in `source` that decides by an op's name:

    - a comparison (`==`, `!=`, `in`, `not in`) of an expression that reads an op with op
      names, written there or held by a module-level constant;
    - a `case` of a `match` on an op with an op name;
    - a table of op names: a tuple, list or set whose strings are all op names, or a dict
      whose string keys all are (the graph's leaves alone do not count).
    """
    tree = ast.parse(source)
    named = {name for name in op_names if name not in LEAVES}
    constants = {}
    for statement in tree.body:
        if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            value = statement.value
            strings = _strings(value) if not isinstance(value, ast.Dict) else \
                [s for key in value.keys if key is not None for s in _strings(key)]
            for target in targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = [s.value for s in strings]
    found = []

    def words_of(node) -> list[str]:
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        return [s.value for s in _strings(node)]

    def table(strings, what, line):
        values = [s.value for s in strings]
        if values and all(v in op_names for v in values) and any(v in named for v in values):
            found.append((line, f"{what} of op names {sorted(set(values))}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_reads_an_op(side) for side in sides):
                words = [w for side in sides for w in words_of(side) if w in named]
                if words:
                    found.append((node.lineno, f"comparison with op names {sorted(set(words))}"))
        elif isinstance(node, ast.Match) and _reads_an_op(node.subject):
            for case in node.cases:
                words = [w for sub in ast.walk(case.pattern) if isinstance(sub, ast.MatchValue)
                         for w in words_of(sub.value) if w in named]
                if words:
                    found.append((case.pattern.lineno, f"case of op names {sorted(set(words))}"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            table(_strings(node), "a collection", node.lineno)
        elif isinstance(node, ast.Dict):
            keys = [s for key in node.keys if key is not None for s in _strings(key)]
            table(keys, "a dict keyed by", node.lineno)
    return found


def test_the_op_name_check_finds_what_it_should():
    names = {"dense", "conv2d", "relu", "input", "param"}
    source = '''
HOSTS = ("dense", "conv2d")
RULES = {"relu": 1}
LEAVES = ("input", "param")
WORDS = ("dense", "sparse")

def f(graph, node, data, op, kind):
    if graph.op(node) == "dense": pass
    if data["op"] in HOSTS: pass
    if op.name != "relu": pass
    if graph.op(node) in ("input", "param"): pass
    if kind == "relu": pass
    match graph.op(node):
        case "conv2d": pass
'''
    lines = sorted(line for line, _ in op_name_branches(source, names))
    assert lines == [2, 3, 8, 9, 10, 14]


def test_no_module_outside_ops_branches_on_an_op_name():
    op_names = set(all_ops())
    found = []
    for path in MODULES.values():
        if path.is_relative_to(PACKAGE / "ops"):
            continue
        for line, what in op_name_branches(path.read_text(encoding="utf-8"), op_names):
            found.append(f"{_relative(path)}:{line}: {what}")
    assert not found, ("decisions by op name outside netlang/ops/ (make them facts of the "
                       "op, on its OpDef):\n" + "\n".join(found))


def test_the_facts_read_by_stages_outside_ops_are_on_every_op_that_needs_them():
    ops = all_ops()
    for name, op in ops.items():
        if op.role in ("layer", "loss"):   # the language reference (docs/gen_ops_table.py)
            assert op.shape_doc and op.example, f"`{name}` has no reference entry (OpDef.document)"
        if op.role == "loss" and op.operand_names == ("prediction", "target"):
            # how metrics read the prediction as classes (kl_normal compares none with a target)
            assert op.class_reading in ("scores", "probability", "value"), name
        if op.paired_loss is not None:
            assert ops[op.paired_loss].role == "loss", name
        if op.fold_rule is not None:
            assert any(other.foldable_product for other in ops.values()), name


# ---- (b) no import cycle, (c) numba only in runtime/ -------------------------------------------

def _imports(module: str, path: Path) -> list[str]:
    """Every module the source of `module` imports, at its top or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return targets


def _import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        for target in _imports(module, path):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # A package importing its own modules (its __init__ gathering them) is no cycle.
            if target and target != module and not module.startswith(target + "."):
                graph.add_edge(module, target)
    return graph


def test_no_import_cycle_between_modules():
    cycles = [sorted(c) for c in nx.strongly_connected_components(_import_graph()) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(", ".join(c) for c in cycles)


def test_numba_is_imported_only_under_runtime():
    outside = sorted(_relative(path) for module, path in MODULES.items()
                     if not path.is_relative_to(PACKAGE / "runtime")
                     and any(t.split(".")[0] == "numba" for t in _imports(module, path)))
    assert not outside, f"numba imported outside netlang/runtime/: {outside}"


def test_compiling_and_rendering_kernels_does_not_load_numba():
    script = ("import sys, netlang.frontend, netlang.ops, netlang.passes, netlang.codegen.cpu, "
              "netlang.codegen.cuda; print('numba' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def _load_time_imports(module: str, path: Path) -> set[str]:
    """What `module` imports when it is loaded (its body's imports, not its functions', which
    run only when called): the netlang modules, and the top-level names of other packages."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    in_functions = {id(inner) for node in ast.walk(tree) if isinstance(node, functions)
                    for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in in_functions:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            found.add(target.split(".")[0])
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def test_what_the_api_and_the_command_line_load_imports_numba_only_inside_functions():
    # `import netlang`, `netlang check` and `--help` never start Numba (tests/test_cold_start.py
    # runs them): every module the API or a command module loads, and every module those load
    # in turn, keeps `import numba` inside the functions that compile or run kernels.
    pending = ["netlang", "netlang.api"] + [m for m in MODULES if m.startswith("netlang.cli")]
    loaded_by = {module: None for module in pending}
    while pending:
        module = pending.pop()
        for target in _load_time_imports(module, MODULES[module]):
            if target in ("numba", "llvmlite"):
                chain, at = [], module
                while at is not None:
                    chain.append(at)
                    at = loaded_by[at]
                raise AssertionError(f"{target} loaded at import time: "
                                     f"{' <- '.join(chain)}")
            if target in MODULES and target not in loaded_by:
                loaded_by[target] = module
                pending.append(target)


# ---- (d) modules a reader can hold ---------------------------------------------------------------

def test_no_module_is_longer_than_700_lines():
    long = {_relative(path): n for path in MODULES.values()
            if (n := path.read_text(encoding="utf-8").count("\n")) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
