"""AST → graph IR: blocks expanded, repeats unrolled, names resolved, shapes inferred.

Lowering walks a module's statements in dependency order (so a file may define
names in any order, and a cycle is an error), evaluates argument expressions,
instantiates blocks and adds one IR node per op.  Each node's type is inferred
as it is added, by the op's own shape rule, because expressions may ask for an
inferred size (`x.shape[-1]`).  `netlang.passes.shapes` runs the same rules
again over a finished graph.

Errors never stop lowering: each is recorded as a diagnostic, the names the
failed statement would have defined are poisoned (so one mistake is reported
once, not again by everything downstream), and all are raised together at the
end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
import os

from netlang.errors import Diagnostic, SourceLocation, did_you_mean, raise_diagnostics
from netlang.frontend import ast
from netlang.frontend.parser import MAX_INT_BITS, parse, read_source
from netlang.ir.graph import Graph
from netlang.ir.types import BATCH, DTYPES, TensorType
from netlang.ops.registry import ShapeContext, ShapeProblem, all_ops, get_op
from netlang.ops.schema import REQUIRED, ArgumentProblem, bind_arguments, describe_value
from netlang.train_section import lower_train_section

MAX_REPEAT = 1000
MAX_BLOCK_DEPTH = 32
# Limits that keep a hostile file from hanging the compiler: layers in one model (repeats of
# blocks of repeats multiply), sizes, items of a tuple or string (and MAX_INT_BITS, the bits
# of an integer, from the parser).
MAX_LAYERS = 20_000
MAX_DIM = 2 ** 31 - 1
MAX_ELEMENTS = 2 ** 40
MAX_SEQUENCE = 10_000
DTYPE_ALIASES = {"float": "float32", "int": "int32", "long": "int64", "double": "float64"}


class Problem(Exception):
    """A mistake at `loc`; turned into a Diagnostic by the statement loop."""

    def __init__(self, message, loc, kind="error", notes=()):
        super().__init__(message)
        self.message, self.loc, self.kind, self.notes = message, loc, kind, list(notes)


class Poisoned(Exception):
    """A value that an earlier, already reported error failed to produce."""


POISON = object()


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A value that is a tensor: the IR node producing it."""

    node: int
    type: TensorType
    layer: str  # name of the layer (node) that produced it

    @property
    def description(self) -> str:
        return f"the tensor {self.type} from `{self.layer}`"


@dataclasses.dataclass
class BlockInfo:
    definition: ast.BlockDef
    module: "ModuleEnv"


class ModuleEnv:
    """What one file defines at its top level: constants and blocks (its own and imported)."""

    def __init__(self, path: str):
        self.path = path
        self.consts: dict = {}
        self.blocks: dict[str, BlockInfo] = {}
        self.origin: dict[str, str] = {}  # name → file defining it, for conflict messages


class Scope:
    def __init__(self, module: ModuleEnv, prefix: str = "", trace=(), parent: "Scope | None" = None,
                 params: dict | None = None):
        self.module = module
        self.prefix = prefix
        self.trace = tuple(trace)
        self.parent = parent
        self.values: dict = dict(params or {})
        self.defined_at: dict = {}  # name → SourceLocation of its definition
        self.declared: set = set()  # names its statements define, bound or not yet
        self.counters: dict[str, int] = {}

    def lookup(self, name: str):
        if name in self.values:
            return self.values[name]
        if name in self.module.consts:
            return self.module.consts[name]
        raise KeyError(name)

    def visible_names(self):
        return set(self.values) | set(self.module.consts)

    def known_names(self):
        """Every name this scope defines or will define: candidates for a suggestion."""
        return self.visible_names() | self.declared


_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}
_BUILTINS = {"min": min, "max": max, "abs": abs, "int": lambda v: int(math.floor(v)),
             "round": round, "ceil": lambda v: int(math.ceil(v))}


class Lowerer:
    def __init__(self):
        self.graph = Graph()
        self.diagnostics: list[Diagnostic] = []
        self._seen = set()
        self.modules: dict[str, ModuleEnv] = {}
        self._loading: list[str] = []
        self.block_stack: list[str] = []
        self.sources: dict[str, str] = {}
        self.layer_count = 0
        self.too_large = False
        self.current_statement = None  # the top-level statement being lowered

    # -- diagnostics ------------------------------------------------------------------------

    def report(self, problem: Problem, scope: Scope | None):
        trace = tuple(reversed(scope.trace)) if scope else ()
        key = (problem.message, problem.loc.sort_key() if problem.loc else None)
        if key in self._seen:  # the same mistake inside a block instantiated many times
            return
        self._seen.add(key)
        self.diagnostics.append(Diagnostic(problem.message, problem.loc, problem.kind,
                                           problem.notes, trace))

    # -- modules ----------------------------------------------------------------------------

    def load_module(self, path: str, source: str | None, main: bool) -> tuple[ModuleEnv, ast.Module]:
        if source is None:
            source = read_source(path)
        self.sources[path] = source
        module_ast = parse(source, path)
        env = ModuleEnv(path)
        key = os.path.realpath(path) if os.path.exists(path) else path
        self._loading.append(key)
        try:
            for item in module_ast.items:
                if isinstance(item, ast.Import):
                    self._import(env, item)
        finally:
            self._loading.pop()
        for item in module_ast.items:
            if isinstance(item, ast.BlockDef):
                self._define_block(env, item)
        if not main:
            # A library contributes its blocks and constants, evaluated in its own scope.
            consts = [i for i in module_ast.items if isinstance(i, ast.Const)]
            scope = Scope(env)
            self.run_statements(consts, scope, module_level=True)
            env.consts.update({k: v for k, v in scope.values.items()})
        return env, module_ast

    def _import(self, env: ModuleEnv, item: ast.Import):
        base = os.path.dirname(env.path) if env.path and not env.path.startswith("<") else os.getcwd()
        target = os.path.normpath(os.path.join(base, item.path))
        key = os.path.realpath(target)
        if key in self._loading:
            chain = " → ".join(os.path.basename(p) for p in self._loading[self._loading.index(key):])
            self.report(Problem(f"import cycle: {chain} → {os.path.basename(key)}", item.loc,
                                "import"), None)
            return
        if key not in self.modules:
            from netlang.errors import NetlangError
            start = len(self.diagnostics)
            imported = None
            try:
                imported, _ = self.load_module(target, None, main=False)
            except NetlangError as exc:  # the imported file cannot be read or parsed
                if exc.loc is None or exc.loc.source is None:  # nothing in it to point at
                    self.report(Problem(f"cannot import \"{item.path}\": {exc.message}", item.loc,
                                        "import"), None)
                else:
                    self.diagnostics.extend(exc.diagnostics)
            # Mistakes inside the imported file (or deeper) also point at this import, as a block's
            # mistakes point at its instantiation.
            for diagnostic in self.diagnostics[start:]:
                if diagnostic.loc is not None and diagnostic.loc.path != env.path:
                    diagnostic.trace = tuple(diagnostic.trace) + (
                        (f"\"{item.path}\", imported here", item.loc),)
            if imported is None:
                return
            self.modules[key] = imported
        imported = self.modules[key]
        for name, block in imported.blocks.items():
            self._add_definition(env, env.blocks, name, block, imported.origin.get(name), item.loc)
        for name, value in imported.consts.items():
            self._add_definition(env, env.consts, name, value, imported.origin.get(name), item.loc)

    def _add_definition(self, env, table, name, value, origin, loc):
        if name in table and table[name] is not value:
            self.report(Problem(f"`{name}` is defined both in {env.origin.get(name)} and in {origin}",
                                loc, "name"), None)
            return
        table[name] = value
        env.origin[name] = origin

    def _define_block(self, env: ModuleEnv, item: ast.BlockDef):
        name = item.name.id
        if _user_op(name) is not None:
            self.report(Problem(f"block `{name}` has the name of a built-in layer", item.name.loc,
                                "name"), None)
            return
        if name in env.blocks:
            self.report(Problem(f"block `{name}` is defined twice (first in "
                                f"{env.origin.get(name)})", item.name.loc, "name"), None)
            return
        env.blocks[name] = BlockInfo(item, env)
        env.origin[name] = f"{item.loc}" if item.loc else env.path

    # -- statements -------------------------------------------------------------------------

    def run_statements(self, items, scope: Scope, module_level: bool, in_block: bool = False):
        """Evaluate `items` in dependency order; returns the block's outputs (in_block)."""
        outputs = []
        for item in items:
            scope.declared.update(_defined_names(item))
        ordered = self._dependency_order(items, scope)
        for item in ordered:
            if module_level:
                self.current_statement = item
            try:
                self.run_statement(item, scope, module_level, in_block, outputs)
            except Problem as problem:
                self.report(problem, scope)
                for name in _defined_names(item):
                    scope.values[name] = POISON
            except Poisoned:
                for name in _defined_names(item):
                    scope.values[name] = POISON
        return outputs

    def run_statement(self, item, scope: Scope, module_level, in_block, outputs):
        if isinstance(item, (ast.Import, ast.BlockDef)):
            if not module_level:
                what = "an import" if isinstance(item, ast.Import) else "a block definition"
                raise Problem(f"{what} belongs at the top level of a file", item.loc, "name")
            return  # handled when the module was loaded
        if isinstance(item, ast.Train):
            if not module_level or in_block:
                raise Problem("a `train` section belongs at the top level of a file", item.loc,
                              "name")
            return  # lowered after the network
        if isinstance(item, ast.Const):
            value = self.evaluate(item.value, scope)
            if isinstance(value, Tensor):
                raise Problem(f"constant `{item.name.id}` must be a number, string or tuple, not a "
                              f"tensor", item.value.loc, "argument")
            self.bind(scope, item.name, value)
            if not scope.prefix:  # a file's own top-level constant: its blocks see it too
                scope.module.consts[item.name.id] = value
        elif isinstance(item, ast.Input):
            self.lower_input(item, scope, in_block)
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                self.check_free(scope, target)
            hint = item.targets[0].id if len(item.targets) == 1 else None
            value = self.evaluate(item.value, scope, name_hint=hint)
            self.bind_targets(item, value, scope)
        elif isinstance(item, ast.Output):
            self.lower_output(item, scope, in_block, outputs)
        elif isinstance(item, ast.If):
            condition = self.evaluate(item.condition, scope)
            if not isinstance(condition, bool):
                raise Problem(f"the condition of `if` must be true or false, not "
                              f"{describe_value(condition)}", item.condition.loc, "argument")
            branch = item.body if condition else item.orelse
            outputs.extend(self.run_statements(branch, scope, module_level=False,
                                               in_block=in_block) or [])
        else:
            raise Problem(f"unsupported statement {type(item).__name__}", item.loc)

    def check_free(self, scope: Scope, name: ast.Name):
        """Refuse to define `name` again (before anything of the new definition is built)."""
        if name.id in scope.values and scope.values[name.id] is not POISON:
            first = scope.defined_at.get(name.id)
            where = ""
            if first is not None and first.line:
                where = (f" (first on line {first.line})" if name.loc is None or first.line != name.loc.line
                         else f" (first at column {first.column})")
            raise Problem(f"`{name.id}` is defined twice{where}", name.loc, "name")
        if name.id in _BUILTINS or _user_op(name.id) is not None:
            raise Problem(f"`{name.id}` is the name of a built-in; choose another name", name.loc,
                          "name")

    def bind(self, scope: Scope, name: ast.Name, value):
        if scope.values.get(name.id) is value and isinstance(value, Tensor):
            return  # `y = x -> relu as y`: the label and the assignment name the same layer
        self.check_free(scope, name)
        scope.values[name.id] = value
        scope.defined_at[name.id] = name.loc

    def bind_targets(self, item: ast.Assign, value, scope: Scope):
        targets = item.targets
        if len(targets) == 1:
            self.bind(scope, targets[0], value)
            return
        if not isinstance(value, tuple) or len(value) != len(targets):
            count = len(value) if isinstance(value, tuple) else 1
            raise Problem(f"{len(targets)} names on the left but {count} value"
                          f"{'s' if count != 1 else ''} on the right", item.loc, "name")
        for target, v in zip(targets, value):
            self.bind(scope, target, v)

    def lower_input(self, item: ast.Input, scope: Scope, in_block: bool):
        if in_block:
            # A block's input: bound to the instantiation's incoming tensors before the body runs.
            if item.name.id not in scope.values:
                raise Problem(f"block input `{item.name.id}` was not given a tensor", item.loc, "name")
            if item.type is not None:
                value = scope.values[item.name.id]
                expected = self.tensor_type(item.type, scope)
                if isinstance(value, Tensor) and (value.type.shape != expected.shape
                                                  or value.type.dtype != expected.dtype):
                    raise Problem(f"block input `{item.name.id}` must be {expected} {expected.dtype}, "
                                  f"got {value.description}", item.loc, "shape")
            return
        if item.type is None:
            raise Problem(f"input `{item.name.id}` needs a shape, e.g. `input {item.name.id}: [784]`",
                          item.loc, "argument")
        self.check_free(scope, item.name)
        type_ = self.tensor_type(item.type, scope)
        name = item.name.id
        if self.graph.has_name(name):
            raise Problem(f"`{name}` is defined twice", item.name.loc, "name")
        node = self.graph.add_op("input", (), {"shape": type_.shape, "dtype": type_.dtype}, type_,
                                 name=name, role="input", loc=item.loc)
        self.graph.graph["inputs"][name] = node
        self.bind(scope, item.name, Tensor(node, type_, name))

    def tensor_type(self, expr: ast.TensorTypeExpr, scope: Scope) -> TensorType:
        dtype = expr.dtype or "float32"
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise Problem(f"unknown dtype `{expr.dtype}`"
                          f"{did_you_mean(expr.dtype, DTYPES + tuple(DTYPE_ALIASES))}",
                          expr.dtype_loc or expr.loc, "argument")
        dims = []
        for d in expr.dims:
            value = self.evaluate(d, scope)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Problem(f"a dimension must be a positive integer, not {describe_value(value)}",
                              d.loc, "argument")
            if value > MAX_DIM:
                raise Problem(f"the dimension {value} is too large", d.loc, "argument")
            dims.append(value)
        return TensorType((BATCH,) + tuple(dims), dtype)

    def lower_output(self, item: ast.Output, scope: Scope, in_block: bool, outputs: list):
        name = item.name
        if item.value is None:
            try:
                value = scope.lookup(name.id)
            except KeyError:
                raise self.unknown_name(name.id, name.loc, scope) from None
        else:
            self.check_free(scope, name)
            value = self.evaluate(item.value, scope, name_hint=name.id)
            self.bind(scope, name, value)
        if value is POISON:
            raise Poisoned()
        if not isinstance(value, Tensor):
            raise Problem(f"output `{name.id}` must be a single tensor, not {describe_value(value)}",
                          item.loc, "argument")
        if in_block:
            outputs.append(value)
            return
        if name.id in self.graph.graph["outputs"]:
            raise Problem(f"output `{name.id}` is declared twice", name.loc, "name")
        self.graph.graph["outputs"][name.id] = value.node

    # -- dependency order -------------------------------------------------------------------

    def _dependency_order(self, items, scope: Scope):
        """Order statements so each runs after the statements defining the names it uses."""
        definer: dict[str, int] = {}
        for i, item in enumerate(items):
            for name in _defined_names(item):
                definer.setdefault(name, i)
        deps = []
        top_level = not scope.prefix
        for i, item in enumerate(items):
            names = _used_names(item)
            if top_level:  # a block of this file reads the file's constants when it is used
                names |= _block_free_names(item, scope.module)
            used = {definer[n] for n in names if n in definer and definer[n] != i}
            deps.append(sorted(used))
        order, state = [], [0] * len(items)  # 0 new, 1 visiting, 2 done

        # A depth-first search with an explicit stack: a file may chain thousands of
        # definitions, each using the next, deeper than Python's recursion limit.
        for root in range(len(items)):
            if state[root]:
                continue
            state[root] = 1
            stack = [(root, iter(deps[root]))]
            try:
                while stack:
                    i, pending = stack[-1]
                    for j in pending:
                        if state[j] == 2:
                            continue
                        if state[j] == 1:
                            path = [k for k, _ in stack]
                            cycle = path[path.index(j):] + [j]
                            names = [self._first_defined(items[k]) for k in cycle]
                            raise Problem("these definitions depend on each other in a cycle: "
                                          + " → ".join(f"`{n}`" for n in names),
                                          items[cycle[0]].loc, "name")
                        state[j] = 1
                        stack.append((j, iter(deps[j])))
                        break
                    else:
                        stack.pop()
                        state[i] = 2
                        order.append(items[i])
            except Problem as problem:
                self.report(problem, scope)
                # Drop every statement still on the search path (the cycle and what waits on
                # it); the rest go on.
                for j in range(len(items)):
                    if state[j] == 1:
                        state[j] = 2
                        for name in _defined_names(items[j]):
                            scope.values[name] = POISON
        return order

    @staticmethod
    def _first_defined(item):
        names = _defined_names(item)
        return names[0] if names else "?"

    # -- expressions ------------------------------------------------------------------------

    def unknown_name(self, name: str, loc, scope: Scope) -> Problem:
        candidates = scope.known_names() | set(scope.module.blocks)
        return Problem(f"unknown name `{name}`{did_you_mean(name, candidates)}", loc, "name")

    def evaluate(self, expr, scope: Scope, name_hint: str | None = None, bare_words=()):
        value = self._evaluate(expr, scope, name_hint, bare_words)
        if value is POISON:
            raise Poisoned()
        return value

    def _evaluate(self, expr, scope, name_hint=None, bare_words=()):
        if isinstance(expr, (ast.Number, ast.String, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Name):
            try:
                return scope.lookup(expr.id)
            except KeyError:
                if expr.id in bare_words:
                    return expr.id
                if expr.id in scope.module.blocks or _user_op(expr.id) is not None:
                    raise Problem(f"`{expr.id}` is a layer, not a value; use it in a chain: "
                                  f"`x -> {expr.id}`", expr.loc, "name") from None
                raise self.unknown_name(expr.id, expr.loc, scope) from None
        if isinstance(expr, ast.Tuple):
            values, poisoned = [], False
            for item in expr.items:
                try:
                    values.append(self.evaluate(item, scope))
                except Poisoned:  # go on: the other items may hold mistakes of their own
                    poisoned = True
            if poisoned:
                raise Poisoned()
            return tuple(values)
        if isinstance(expr, ast.Chain):
            return self.lower_chain(expr, scope, name_hint)
        if isinstance(expr, ast.BinOp):
            return self.binary(expr, scope, name_hint)
        if isinstance(expr, ast.UnaryOp):
            operand = self.evaluate(expr.operand, scope)
            if expr.op == "not":
                if not isinstance(operand, bool):
                    raise Problem(f"`not` needs true or false, not {describe_value(operand)}",
                                  expr.loc, "argument")
                return not operand
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise Problem(f"cannot negate {describe_value(operand)}", expr.loc, "argument")
            return -operand
        if isinstance(expr, ast.Attribute):
            value = self.evaluate(expr.value, scope)
            if isinstance(value, Tensor):
                if expr.attr == "shape":
                    return tuple(value.type.sample_shape)
                if expr.attr == "size":
                    return value.type.size
                if expr.attr == "rank":
                    return len(value.type.sample_shape)
                raise Problem(f"a tensor has `shape`, `size` and `rank`, not `{expr.attr}`"
                              f"{did_you_mean(expr.attr, ('shape', 'size', 'rank'))}", expr.loc, "name")
            raise Problem(f"{describe_value(value)} has no attribute `{expr.attr}`", expr.loc, "name")
        if isinstance(expr, ast.Index):
            value = self.evaluate(expr.value, scope)
            index = self.evaluate(expr.index, scope)
            if not isinstance(value, tuple):
                raise Problem(f"cannot index {describe_value(value)}", expr.loc, "argument")
            if isinstance(index, bool) or not isinstance(index, int):
                raise Problem(f"an index must be an integer, not {describe_value(index)}",
                              expr.index.loc, "argument")
            if not -len(value) <= index < len(value):
                raise Problem(f"index {index} is out of range for {describe_value(value)}",
                              expr.index.loc, "argument")
            return value[index]
        if isinstance(expr, ast.Call):
            return self.call_builtin(expr, scope)
        raise Problem(f"unsupported expression {type(expr).__name__}", getattr(expr, "loc", None))

    def call_builtin(self, expr: ast.Call, scope: Scope):
        if expr.func not in _BUILTINS:
            if expr.func in scope.module.blocks or _user_op(expr.func) is not None:
                raise Problem(f"`{expr.func}` is a layer; use it in a chain: `x -> {expr.func}(...)`",
                              expr.loc, "name")
            raise Problem(f"unknown function `{expr.func}`{did_you_mean(expr.func, _BUILTINS)}",
                          expr.loc, "name")
        if any(a.name for a in expr.args):
            raise Problem(f"`{expr.func}` takes no keyword arguments", expr.loc, "argument")
        values = [self.evaluate(a.value, scope) for a in expr.args]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise Problem(f"`{expr.func}` needs numbers", expr.loc, "argument")
        try:
            return _BUILTINS[expr.func](*values)
        except TypeError:
            raise Problem(f"wrong number of arguments for `{expr.func}`", expr.loc, "argument") from None
        except (OverflowError, ValueError):  # int(inf), round(nan), ...
            raise Problem(f"`{expr.func}` cannot take {', '.join(describe_value(v) for v in values)}",
                          expr.loc, "argument") from None

    def binary(self, expr: ast.BinOp, scope: Scope, name_hint: str | None = None):
        op = expr.op
        if op in ("and", "or"):
            left = self.evaluate(expr.left, scope)
            if not isinstance(left, bool):
                raise Problem(f"`{op}` needs true or false, not {describe_value(left)}",
                              expr.left.loc, "argument")
            if (op == "and" and not left) or (op == "or" and left):
                return left
            right = self.evaluate(expr.right, scope)
            if not isinstance(right, bool):
                raise Problem(f"`{op}` needs true or false, not {describe_value(right)}",
                              expr.right.loc, "argument")
            return right
        try:
            left = self.evaluate(expr.left, scope)
        except Poisoned:
            self.evaluate(expr.right, scope)  # the right operand may hold a mistake of its own
            raise
        right = self.evaluate(expr.right, scope)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            merge = {"+": "add", "*": "multiply"}.get(op)
            if merge is None or not (isinstance(left, Tensor) and isinstance(right, Tensor)):
                raise Problem(f"cannot apply `{op}` to {describe_value(left)} and "
                              f"{describe_value(right)}; tensors support `+` and `*` between tensors",
                              expr.loc, "argument")
            # `y = a + b` names the add layer `y`, as `y = (a, b) -> add` does.
            return self.apply_op(get_op(merge), (left, right), {}, name_hint, scope, expr.loc)
        if op in _COMPARE:
            if op in ("==", "!=") or _both_numbers(left, right):
                return _COMPARE[op](left, right)
            raise Problem(f"cannot compare {describe_value(left)} and {describe_value(right)}",
                          expr.loc, "argument")
        if op == "+" and ((isinstance(left, tuple) and isinstance(right, tuple))
                          or (isinstance(left, str) and isinstance(right, str))):
            if len(left) + len(right) > MAX_SEQUENCE:
                raise Problem(f"this {'tuple' if isinstance(left, tuple) else 'string'} is too long "
                              f"(more than {MAX_SEQUENCE:,} items)", expr.loc, "argument")
            return left + right
        if not _both_numbers(left, right):
            raise Problem(f"cannot apply `{op}` to {describe_value(left)} and {describe_value(right)}",
                          expr.loc, "argument")
        if op in ("/", "//", "%") and right == 0:
            raise Problem("division by zero", expr.loc, "argument")
        if op == "**" and abs(right) > 64:
            raise Problem(f"exponent {right} is too large", expr.loc, "argument")
        try:
            result = _ARITHMETIC[op](left, right)
        except (OverflowError, ZeroDivisionError):  # 1e300 ** 2, 0 ** -1
            raise Problem(f"`{op}` of {describe_value(left)} and {describe_value(right)} is not a "
                          f"finite number", expr.loc, "argument") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise Problem(f"`{op}` of {describe_value(left)} and {describe_value(right)} is not a "
                          f"finite real number", expr.loc, "argument")
        # Operands are bounded (literals and results by MAX_INT_BITS, exponents by 64), so the
        # result was cheap to compute; refuse it when it is out of bounds itself.
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise Problem("this number is too large", expr.loc, "argument")
        return result

    # -- chains, layers, blocks -------------------------------------------------------------

    def lower_chain(self, chain: ast.Chain, scope: Scope, name_hint: str | None):
        try:
            value = self.evaluate(chain.source, scope)
        except (Problem, Poisoned):
            self.check_steps(chain.steps, scope)
            raise
        for i, step in enumerate(chain.steps):
            last = i == len(chain.steps) - 1
            try:
                value = self.apply_step(step, value, scope, name_hint if last else None)
            except (Problem, Poisoned):
                self.check_steps(chain.steps[i + 1:], scope)
                raise
        return value

    def apply_step(self, step: ast.Step, incoming, scope: Scope, name_hint: str | None):
        _check_tensors(incoming, step)
        count = None
        if step.repeat is not None:
            count = self.evaluate(step.repeat, scope)
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEAT:
                raise Problem(f"a repeat count must be an integer from 1 to {MAX_REPEAT}, not "
                              f"{describe_value(count)}", step.repeat.loc, "argument")
        if step.label:
            self.check_free(scope, ast.Name(step.label, loc=step.label_loc))
        base = step.label or name_hint
        value = incoming
        for k in range(count or 1):
            label = f"{base}.{k}" if count is not None and base else base
            if count is not None and not base:
                label = None
            value = self.apply_one(step, value, scope, label)
        if step.label:
            self.bind(scope, ast.Name(step.label, loc=step.label_loc), value)
        return value

    def apply_one(self, step: ast.Step, incoming, scope: Scope, label: str | None):
        if step.op in scope.module.blocks:
            return self.instantiate(scope.module.blocks[step.op], step, incoming, scope, label)
        op = self.layer_op(step, scope)
        attrs = self.bind_op_args(op, step.args or (), scope, step)
        operands = incoming if isinstance(incoming, tuple) else (incoming,)
        return self.apply_op(op, operands, attrs, label, scope, step.loc, arity_loc=step.op_loc)

    def layer_op(self, step: ast.Step, scope: Scope):
        """The op a step names, or a Problem saying why it names none."""
        op = get_op(step.op)
        if op is None or op.role == "internal":
            choices = [n for n, o in all_ops().items() if o.role == "layer"] + list(scope.module.blocks)
            raise Problem(f"unknown layer `{step.op}`{did_you_mean(step.op, choices)}",
                          step.op_loc, "name")
        if op.role == "loss":
            raise Problem(f"`{step.op}` is a loss; write it in the train section: "
                          f"`loss {step.op}(prediction, target)`", step.op_loc, "name")
        return op

    def check_steps(self, steps, scope: Scope):
        """Report the mistakes steps make on their own (an unknown layer, a bad argument) when no
        tensor reaches them because of an earlier error, so one mistake does not hide others."""
        for step in steps:
            try:
                if step.op in scope.module.blocks:
                    self.bind_block_args(scope.module.blocks[step.op], step, scope)
                else:
                    self.bind_op_args(self.layer_op(step, scope), step.args or (), scope, step)
            except Problem as problem:
                self.report(problem, scope)
            except Poisoned:
                pass

    def bind_op_args(self, op, args, scope: Scope, step):
        schema = {a.name: a for a in op.args}
        positional, keywords, locs = [], [], {}
        given = [a for a in args if a.name is None]
        if len(given) > len(op.args):
            many = (f"takes no arguments" if not op.args else
                    f"takes at most {len(op.args)} positional argument{'s' if len(op.args) != 1 else ''}"
                    f", got {len(given)}")
            raise Problem(f"`{op.name}` {many}", given[len(op.args)].loc, "argument",
                          [f"`{op.name}` takes ({_signature(op.args)})"] if op.args else [])
        for i, arg in enumerate(args):
            if arg.name is None:
                if keywords:
                    raise Problem("a positional argument cannot follow a keyword argument",
                                  arg.loc, "argument")
                spec = op.args[i] if i < len(op.args) else None
                locs[i] = arg.loc
                positional.append(self.evaluate_arg(arg.value, spec, scope))
            else:
                locs[arg.name] = arg.loc
                keywords.append((arg.name, self.evaluate_arg(arg.value, schema.get(arg.name), scope)))
        try:
            return bind_arguments(op.args, positional, keywords, f"`{op.name}`")
        except ArgumentProblem as problem:
            loc = locs.get(problem.index, step.op_loc if step is not None else None)
            notes = [f"`{op.name}` takes ({_signature(op.args)})"] if problem.index is None or \
                isinstance(problem.index, str) else []
            raise Problem(problem.message, loc, "argument", notes) from None

    def evaluate_arg(self, expr, spec, scope: Scope):
        if spec is not None and spec.type.is_layer_ref:
            if not isinstance(expr, (ast.Name, ast.String)):
                raise Problem("expected the name of a layer", expr.loc, "argument")
            name = expr.id if isinstance(expr, ast.Name) else expr.value
            try:
                value = scope.lookup(name)
            except KeyError:
                raise Problem(f"unknown layer `{name}`"
                              f"{did_you_mean(name, scope.visible_names())}", expr.loc, "name") from None
            if value is POISON:
                raise Poisoned()
            if not isinstance(value, Tensor):
                raise Problem(f"`{name}` is not a layer", expr.loc, "argument")
            return LayerRef(value.layer, expr.loc)
        if spec is not None and spec.type.bare_words and isinstance(expr, ast.Name) and \
                expr.id not in spec.type.bare_words and expr.id not in scope.visible_names():
            words = spec.type.bare_words
            options = [f"`{w}`" for w in words] + ([] if "|" in spec.type.name else ["a number"])
            raise Problem(f"`{spec.name}` must be {_join_or(options)}, not `{expr.id}`"
                          f"{did_you_mean(expr.id, words)}", expr.loc, "argument")
        value = self.evaluate(expr, scope, bare_words=spec.type.bare_words if spec else ())
        if isinstance(value, Tensor):
            raise Problem(f"an argument cannot be a tensor ({value.description}); tensors flow "
                          f"along chains", expr.loc, "argument")
        return value

    def layer_name(self, op_name: str, label: str | None, scope: Scope) -> str:
        if label:
            name = scope.prefix + label
            if self.graph.has_name(name):
                raise Problem(f"a layer named `{name}` already exists", None, "name")
            return name
        while True:
            count = scope.counters.get(op_name, 0) + 1
            scope.counters[op_name] = count
            name = f"{scope.prefix}{op_name}_{count}"
            if not self.graph.has_name(name):
                return name

    def apply_op(self, op, operands, attrs, label, scope: Scope, loc, arity_loc=None):
        operands = tuple(operands)
        if op.arity is None:
            if len(operands) < 2:
                raise Problem(f"`{op.name}` merges two or more tensors; feed it a tuple such as "
                              f"`(a, b) -> {op.name}`", arity_loc or loc, "argument")
        elif len(operands) != op.arity:
            raise Problem(f"`{op.name}` takes {op.arity} input tensor"
                          f"{'s' if op.arity != 1 else ''}, got {len(operands)}", arity_loc or loc,
                          "argument")
        try:
            name = self.layer_name(op.name, label, scope)
        except Problem as problem:
            problem.loc = loc
            raise
        in_types = [t.type for t in operands]
        producers = [t.layer for t in operands]
        plan = self.plan_params(op, in_types, attrs, name, scope, loc, producers)
        types = in_types + [p[1] for p in plan]
        ctx = ShapeContext(op, types, producers + [p[2] for p in plan])
        try:
            out_type = op.infer(ctx, attrs)
        except ShapeProblem as problem:
            raise Problem(str(problem), loc, "shape") from None
        for what, type_ in [("output", out_type)] + [(f"parameter `{p[2]}`", p[1]) for p in plan]:
            dims = [d for d in type_.shape if d is not None]
            if any(d > MAX_DIM for d in dims) or math.prod(dims) > MAX_ELEMENTS:
                raise Problem(f"`{op.name}` would make an {what} of shape {type_}, too large to "
                              f"build", loc, "shape")
        if self.layer_count >= MAX_LAYERS:
            if self.too_large:  # already reported once; stop building quietly
                raise Poisoned()
            self.too_large = True
            raise Problem(f"this model has more than {MAX_LAYERS:,} layers; check the repeat counts",
                          loc, "shape")
        if op.role != "loss":
            self.layer_count += 1
        param_nodes = [self.materialise_param(entry, name, scope) for entry in plan]
        stored = {k: (v.name if isinstance(v, LayerRef) else v) for k, v in attrs.items()}
        node = self.graph.add_op(op.name, [t.node for t in operands] + param_nodes, stored, out_type,
                                 name=name, role=op.role, loc=loc, trace=scope.trace)
        return Tensor(node, out_type, name)

    def plan_params(self, op, in_types, attrs, layer, scope, loc, producers=None):
        """(kind, type, producer, payload) for each parameter operand the layer needs.

        kind is `new` (payload: ParamSpec), `existing` (payload: node id, for sharing) or
        `tied` (payload: the other layer's weight node, used transposed).
        """
        if not op.params_rule:
            return []
        try:
            specs = op.parameter_specs(in_types, attrs)
        except (IndexError, ValueError, ZeroDivisionError, TypeError):
            # The operand is malformed; let the shape rule explain how.
            ctx = ShapeContext(op, in_types, list(producers or ["?"] * len(in_types)))
            try:
                op.infer(ctx, attrs)
            except ShapeProblem as problem:
                raise Problem(str(problem), loc, "shape") from None
            except (IndexError, ValueError, TypeError):
                pass
            raise Problem(f"`{op.name}` cannot take {in_types[0]}", loc, "shape") from None
        shared = attrs.get("share")
        tie = attrs.get(op.tie) if op.tie else None
        if shared is not None and tie is not None:
            raise Problem(f"`{op.name}` cannot both share and tie parameters", loc, "argument")
        plan = []
        if shared is not None:
            owned = self.params_of(shared.name)
            other_op = self.graph.op(self.graph.node_named(shared.name))
            if other_op != op.name:
                raise Problem(f"cannot share parameters with `{shared.name}`: it is a `{other_op}`, "
                              f"this is a `{op.name}`", shared.loc, "argument")
            for spec in specs:
                node = owned.get(spec.name)
                if node is None or self.graph.type_of(node).shape != spec.shape:
                    have = self.graph.type_of(node) if node is not None else "none"
                    raise Problem(f"`{layer}` cannot share the {spec.name} of `{shared.name}`: "
                                  f"`{shared.name}` has {have}, `{layer}` needs "
                                  f"{TensorType(spec.shape)}", shared.loc, "shape")
                plan.append(("existing", self.graph.type_of(node), shared.name, node))
            return plan
        for spec in specs:
            if tie is not None and spec.name == "weight":
                other = self.graph.node_named(tie.name)
                if self.graph.op(other) != op.name:
                    raise Problem(f"cannot tie to `{tie.name}`: it is a `{self.graph.op(other)}`, "
                                  f"not a `{op.name}`", tie.loc, "argument")
                weight = self.params_of(tie.name)["weight"]
                wtype = self.graph.type_of(weight)
                tied = TensorType(tuple(reversed(wtype.shape)), wtype.dtype)
                if tied.shape != spec.shape:
                    raise Problem(f"cannot tie `{layer}` to `{tie.name}`: the weight of `{tie.name}` "
                                  f"transposed is {tied}, `{layer}` needs {TensorType(spec.shape)}",
                                  tie.loc, "shape")
                plan.append(("tied", tied, f"{tie.name}.weight", weight))
            else:
                plan.append(("new", TensorType(spec.shape), f"{layer}.{spec.name}", spec))
        return plan

    def params_of(self, layer: str) -> dict[str, int]:
        node = self.graph.node_named(layer)
        out = {}
        for operand in self.graph.operands(node):
            data = self.graph.nodes[operand]
            if data["role"] in ("param", "buffer"):
                out[data["name"].rsplit(".", 1)[-1]] = operand
        return out

    def materialise_param(self, entry, layer: str, scope: Scope) -> int:
        kind, type_, producer, payload = entry
        if kind == "existing":
            return payload
        if kind == "tied":
            return self.graph.add_op("transpose", [payload], {"perm": (1, 0)}, type_,
                                     name=self.graph.unique_name(f"{layer}.weight_tied"),
                                     role="internal", layer=layer, trace=scope.trace)
        spec = payload
        return self.graph.add_op(
            "param", (), {"shape": spec.shape, "init": spec.init, "fan_in": spec.fan_in,
                          "fan_out": spec.fan_out, "penalise": spec.penalised},
            type_, name=f"{layer}.{spec.name}", role="buffer" if spec.buffer else "param",
            layer=layer, trace=scope.trace)

    def instantiate(self, block: BlockInfo, step: ast.Step, incoming, scope: Scope, label):
        definition = block.definition
        name = definition.name.id
        if name in self.block_stack or len(self.block_stack) >= MAX_BLOCK_DEPTH:
            raise Problem(f"block `{name}` instantiates itself" if name in self.block_stack else
                          f"blocks nested more than {MAX_BLOCK_DEPTH} deep", step.op_loc, "name")
        instance = self.layer_name(name, label, scope) if not label else scope.prefix + label
        if self.graph.has_name(instance) or self.graph.has_prefix(instance):
            raise Problem(f"a layer named `{instance}` already exists", step.loc, "name")
        params = self.bind_block_args(block, step, scope)
        inputs = [item for item in definition.body if isinstance(item, ast.Input)]
        tensors = incoming if isinstance(incoming, tuple) else (incoming,)
        if len(inputs) != len(tensors):
            raise Problem(f"block `{name}` takes {len(inputs)} input tensor"
                          f"{'s' if len(inputs) != 1 else ''}, got {len(tensors)}", step.op_loc,
                          "argument")
        for item, tensor in zip(inputs, tensors):
            params[item.name.id] = tensor
        inner = Scope(block.module, prefix=instance + ".",
                      trace=scope.trace + ((f"block `{name}` instantiated as `{instance}`", step.loc),),
                      params=params)
        self.block_stack.append(name)
        try:
            outputs = self.run_statements(definition.body, inner, module_level=False, in_block=True)
        finally:
            self.block_stack.pop()
        if any(v is POISON for v in inner.values.values()) and not outputs:
            raise Poisoned()
        if not outputs:
            raise Problem(f"block `{name}` has no `output`", definition.loc, "name")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def bind_block_args(self, block: BlockInfo, step: ast.Step, scope: Scope) -> dict:
        definition = block.definition
        names = [p.name.id for p in definition.params]
        values, locs = {}, {}
        for i, arg in enumerate(step.args or ()):
            if arg.name is None:
                if i >= len(names):
                    raise Problem(f"block `{definition.name.id}` takes at most {len(names)} "
                                  f"argument{'s' if len(names) != 1 else ''}", arg.loc, "argument")
                key = names[i]
            else:
                key = arg.name
                if key not in names:
                    raise Problem(f"block `{definition.name.id}` has no parameter `{key}`"
                                  f"{did_you_mean(key, names)}", arg.loc, "argument")
            if key in values:
                raise Problem(f"parameter `{key}` is given twice", arg.loc, "argument")
            values[key] = self.evaluate(arg.value, scope)
            if isinstance(values[key], Tensor):
                raise Problem("a block parameter cannot be a tensor; tensors flow along chains",
                              arg.loc, "argument")
            locs[key] = arg.loc
        defaults_scope = Scope(block.module)
        for param in definition.params:
            key = param.name.id
            if key not in values:
                if param.default is None:
                    raise Problem(f"block `{definition.name.id}` needs the parameter `{key}`",
                                  step.op_loc, "argument")
                defaults_scope.values.update(values)
                values[key] = self.evaluate(param.default, defaults_scope)
        return values


@dataclasses.dataclass(frozen=True)
class LayerRef:
    name: str
    loc: SourceLocation | None = None

    @property
    def description(self):
        return f"layer `{self.name}`"


def _signature(args) -> str:
    parts = []
    for a in args:
        default = "none" if a.default is None else describe_value(a.default).strip("`")
        parts.append(a.name if a.default is REQUIRED else f"{a.name}={default}")
    return ", ".join(parts)


def _join_or(words) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _both_numbers(a, b) -> bool:
    return all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in (a, b))


def _check_tensors(incoming, step):
    values = incoming if isinstance(incoming, tuple) else (incoming,)
    for v in values:
        if not isinstance(v, Tensor):
            raise Problem(f"`{step.op}` needs a tensor flowing in, not {describe_value(v)}",
                          step.op_loc, "argument")


# AST nodes are immutable, and a block's body is re-examined at every instantiation, so the
# names a statement defines and uses are worked out once per node object: (kind, id(node)) →
# (node, result).  Holding the node keeps its id from being reused; `lower_source` empties
# the memo when it finishes.
_NAMES_MEMO: dict = {}


def _memoised(kind: str, node, compute):
    key = (kind, id(node))
    hit = _NAMES_MEMO.get(key)
    if hit is not None and hit[0] is node:
        return hit[1]
    result = compute(node)
    _NAMES_MEMO[key] = (node, result)
    return result


def _defined_names(item) -> list[str]:
    return list(_memoised("defined", item, _compute_defined_names))


def _used_names(item) -> set[str]:
    return set(_memoised("used", item, _compute_used_names))


def _compute_defined_names(item) -> tuple[str, ...]:
    return tuple(_defined_names_uncached(item))


def _compute_used_names(item) -> frozenset[str]:
    return frozenset(_used_names_uncached(item))


def _defined_names_uncached(item) -> list[str]:
    if isinstance(item, ast.Const):
        return [item.name.id]
    if isinstance(item, ast.Input):
        return [item.name.id]
    if isinstance(item, ast.Assign):
        return [t.id for t in item.targets] + _labels(item.value)
    if isinstance(item, ast.Output):
        return ([item.name.id] if item.value is not None else []) + _labels(item.value)
    if isinstance(item, ast.If):
        names = []
        for sub in tuple(item.body) + tuple(item.orelse):
            names += [n for n in _defined_names(sub) if n not in names]
        return names
    return []


def _labels(expr) -> list[str]:
    out = []
    for node in _walk(expr):
        if isinstance(node, ast.Step) and node.label:
            out.append(node.label)
    return out


def _used_names_uncached(item) -> set[str]:
    if isinstance(item, (ast.Import, ast.BlockDef, ast.Train)):
        return set()
    used = set()
    for node in _walk(item):
        if isinstance(node, ast.Name):
            used.add(node.id)
    if isinstance(item, ast.Output) and item.value is None:
        used.add(item.name.id)
    if isinstance(item, ast.Const):
        used.discard(item.name.id)
    if isinstance(item, ast.Input):
        used.discard(item.name.id)
    return used


def _user_op(name: str):
    """The op a user may write in a chain (`dense`, `cross_entropy`), or None.

    Internal ops (`param`, `transpose`, gradient ops, ...) never appear in source, so their
    names stay free for the user's own values and blocks.
    """
    op = get_op(name)
    return op if op is not None and op.role != "internal" else None


def _block_free_names(item, module) -> set[str]:
    """Names that the blocks of `module` used by `item` read from the file's top level.

    A block body sees its parameters, its inputs, its own definitions and its file's constants;
    any other name it uses is one of those constants, so the statement using the block must
    run after the constant's definition.
    """
    free, seen = set(), set()
    pending = [node.op for node in _walk(item) if isinstance(node, ast.Step)]
    while pending:
        op = pending.pop()
        block = module.blocks.get(op)
        if op in seen or block is None or block.module is not module:
            continue
        seen.add(op)
        definition = block.definition
        local = {p.name.id for p in definition.params}
        used = set()
        for param in definition.params:
            used |= {n.id for n in _walk(param.default) if isinstance(n, ast.Name)}
        for sub in definition.body:
            local.update(_defined_names(sub))
            used |= _used_names(sub)
            pending += [n.op for n in _walk(sub) if isinstance(n, ast.Step)]
        free |= used - local
    return free


# AST class → the names of the fields `_walk` descends into (None: not an AST node).  Looked up
# once per class: `dataclasses.fields` per node was most of the front end's time.
_WALK_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _walk_fields(cls) -> tuple[str, ...] | None:
    if not dataclasses.is_dataclass(cls):
        _WALK_FIELDS[cls] = None
        return None
    names = []
    for field in dataclasses.fields(cls):
        if field.name in ("loc", "op_loc", "label_loc", "dtype_loc"):
            continue
        if issubclass(cls, ast.Assign) and field.name == "targets":
            continue
        if issubclass(cls, (ast.Const, ast.Input, ast.Output, ast.BlockParam)) and \
                field.name == "name":
            continue
        names.append(field.name)
    _WALK_FIELDS[cls] = fields = tuple(names)
    return fields


def _walk(node):
    """Every AST node below `node` (iteratively, so deep chains cannot overflow the stack)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        if isinstance(current, tuple):
            stack.extend(current)
            continue
        cls = current.__class__
        fields = _WALK_FIELDS[cls] if cls in _WALK_FIELDS else _walk_fields(cls)
        if fields is None:
            continue
        yield current
        for name in fields:
            value = getattr(current, name)
            if isinstance(value, tuple):
                stack.append(value)
                continue
            cls = value.__class__
            if (_WALK_FIELDS[cls] if cls in _WALK_FIELDS else _walk_fields(cls)) is not None:
                stack.append(value)


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
        _NAMES_MEMO.clear()


def _lower(lowerer: Lowerer, source: str | None, path: str) -> Graph:
    env, module = lowerer.load_module(path, source, main=True)
    scope = Scope(env)
    statements = [i for i in module.items if not isinstance(i, (ast.Import, ast.BlockDef))]
    main_statements = [i for i in statements if not isinstance(i, ast.Train)]
    lowerer.run_statements(main_statements, scope, module_level=True)
    trains = [i for i in statements if isinstance(i, ast.Train)]
    for extra in trains[1:]:
        lowerer.report(Problem("a file has at most one `train` section", extra.loc, "name"), scope)
    graph = lowerer.graph
    if trains:
        lower_train_section(lowerer, trains[0], scope)
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
