"""Names and scopes: what a file defines, what a scope sees, which names a statement uses.

A file's top level becomes a `ModuleEnv` (its constants and blocks, its own and
imported); each block instantiation runs in its own `Scope`.  Statements may be
written in any order, so lowering asks each one which names it defines and which
it uses (`defined_names`, `used_names`, `block_free_names`) and runs them in
dependency order.
"""

from __future__ import annotations

import dataclasses

from netlang.frontend import ast
from netlang.ops import get_op


@dataclasses.dataclass
class BlockInfo:
    """A block definition and the file whose constants its body sees."""

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
    """The names one body of statements sees: a file's top level or one block instantiation.

    `prefix` names the instance (`encoder.`) so its layers get unique names, and `trace`
    records the instantiations that led here, for messages about mistakes inside blocks.
    """

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

    def within(self, name: str) -> "Scope":
        """The scope for one copy of a named group (`-> (a -> b) * 2 as s`): its layers are
        named under `s.0.`, with counters of their own, as in a block instance, but the names
        it binds and sees are this scope's own (a group is not a block: it has no body)."""
        inner = Scope(self.module, prefix=f"{self.prefix}{name}.", trace=self.trace)
        inner.values, inner.defined_at, inner.declared = self.values, self.defined_at, self.declared
        return inner

    def lookup(self, name: str):
        """The value bound to `name` here or among the file's constants; KeyError if none."""
        if name in self.values:
            return self.values[name]
        if name in self.module.consts:
            return self.module.consts[name]
        raise KeyError(name)

    def visible_names(self):
        """Every name bound so far: candidates for a suggestion where a value is needed."""
        return set(self.values) | set(self.module.consts)

    def known_names(self):
        """Every name this scope defines or will define: candidates for a suggestion."""
        return self.visible_names() | self.declared


def user_op(name: str):
    """The op a user may write in a chain (`dense`, `cross_entropy`), or None.

    Internal ops (`param`, `transpose`, gradient ops, ...) never appear in source, so their
    names stay free for the user's own values and blocks.
    """
    op = get_op(name)
    return op if op is not None and op.role != "internal" else None


# AST nodes are immutable, and a block's body is re-examined at every instantiation, so the
# names a statement defines and uses are worked out once per node object: (kind, id(node)) →
# (node, result).  Holding the node keeps its id from being reused; `lower_source` empties
# the memo (`forget_names`) when it finishes.
_NAMES_MEMO: dict = {}


def _memoised(kind: str, node, compute):
    key = (kind, id(node))
    hit = _NAMES_MEMO.get(key)
    if hit is not None and hit[0] is node:
        return hit[1]
    result = compute(node)
    _NAMES_MEMO[key] = (node, result)
    return result


def forget_names() -> None:
    """Empty the memo of defined and used names, so it holds no AST beyond one lowering."""
    _NAMES_MEMO.clear()


def defined_names(item) -> list[str]:
    """The names a statement defines: its targets and the labels (`as name`) of its chains."""
    return list(_memoised("defined", item, _compute_defined_names))


def used_names(item) -> set[str]:
    """The names a statement reads (not counting the names it defines itself)."""
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
            names += [n for n in defined_names(sub) if n not in names]
        return names
    return []


def _labels(expr) -> list[str]:
    out = []
    for node in walk(expr):
        if isinstance(node, (ast.Step, ast.Group)) and node.label:
            out.append(node.label)
    return out


def _used_names_uncached(item) -> set[str]:
    if isinstance(item, (ast.Import, ast.BlockDef, ast.Train)):
        return set()
    used = set()
    for node in walk(item):
        if isinstance(node, ast.Name):
            used.add(node.id)
    if isinstance(item, ast.Output) and item.value is None:
        used.add(item.name.id)
    if isinstance(item, ast.Const):
        used.discard(item.name.id)
    if isinstance(item, ast.Input):
        used.discard(item.name.id)
    return used


def block_free_names(item, module) -> set[str]:
    """Names that the blocks of `module` used by `item` read from the file's top level.

    A block body sees its parameters, its inputs, its own definitions and its file's constants;
    any other name it uses is one of those constants, so the statement using the block must
    run after the constant's definition.
    """
    free, seen = set(), set()
    pending = [node.op for node in walk(item) if isinstance(node, ast.Step)]
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
            used |= {n.id for n in walk(param.default) if isinstance(n, ast.Name)}
        for sub in definition.body:
            local.update(defined_names(sub))
            used |= used_names(sub)
            pending += [n.op for n in walk(sub) if isinstance(n, ast.Step)]
        free |= used - local
    return free


# AST class → the names of the fields `walk` descends into (None: not an AST node).  Looked up
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


def walk(node):
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
