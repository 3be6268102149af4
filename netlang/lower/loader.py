"""The whole lowering: a file and the files it imports, loaded into module environments.

`Lowerer` is the last of the lowering classes (expressions, layers, blocks,
statements) and the one callers create.  Loading a file parses it, loads its
imports first (a cycle of imports is an error), registers its blocks and, for an
imported file, evaluates its constants in its own scope; the importing file then
sees those blocks and constants as its own.
"""

from __future__ import annotations

import os

from netlang.errors import NetlangError
from netlang.frontend import ast
from netlang.frontend.parser import parse, read_source
from netlang.lower.names import BlockInfo, ModuleEnv, Scope, user_op
from netlang.lower.statements import StatementRunner
from netlang.lower.values import MAX_IMPORT_DEPTH, Problem


class Lowerer(StatementRunner):
    """Lowers a `.net` file and its imports into one graph, collecting every mistake."""

    def load_module(self, path: str, source: str | None, main: bool) -> tuple[ModuleEnv, ast.Module]:
        """Parse the file at `path` (or `source`), load its imports and register its blocks.

        An imported file (`main` false) also evaluates its constants, in its own scope.
        """
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
        """Load the file an `import` names, once, and add its blocks and constants to `env`.

        The policy (docs/language.md, Imports): a path is relative to the importing file's
        directory (to the working directory for source text); absolute paths and `..` are
        allowed; only a file whose name, symbolic links resolved, ends in `.net` is read, so an
        import of another file on the machine is refused at the import without showing any of it.
        """
        if "\0" in item.path:
            self.report(Problem("an import path cannot contain a NUL character", item.loc,
                                "import"), None)
            return
        if len(self._loading) > MAX_IMPORT_DEPTH:
            self.report(Problem(f"imports nested more than {MAX_IMPORT_DEPTH} deep (a file that "
                                f"imports a file that imports ...)", item.loc, "import"), None)
            return
        base = os.path.dirname(env.path) if env.path and not env.path.startswith("<") else os.getcwd()
        target = os.path.normpath(os.path.join(base, item.path))
        key = os.path.realpath(target)
        if not (target.endswith(".net") and key.endswith(".net")):
            self.report(Problem(f"`{item.path}` is not a netlang file (an import names a `.net` "
                                f"file)", item.loc, "import"), None)
            return
        if key in self._loading:
            chain = " → ".join(os.path.basename(p) for p in self._loading[self._loading.index(key):])
            self.report(Problem(f"import cycle: {chain} → {os.path.basename(key)}", item.loc,
                                "import"), None)
            return
        if key not in self.modules:
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
        if user_op(name) is not None:
            self.report(Problem(f"block `{name}` has the name of a built-in layer", item.name.loc,
                                "name"), None)
            return
        if name in env.blocks:
            self.report(Problem(f"block `{name}` is defined twice (first in "
                                f"{env.origin.get(name)})", item.name.loc, "name"), None)
            return
        env.blocks[name] = BlockInfo(item, env)
        env.origin[name] = f"{item.loc}" if item.loc else env.path
