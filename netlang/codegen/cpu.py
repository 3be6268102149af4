"""Render a planned graph into Python source for Numba: one function per program.

A *program* is a list of graph nodes in execution order (a training step's
forward, backward and optimiser update, or an inference pass) with a fusion
plan and a buffer plan.  The source is rendered from the kernel templates in
the op registry (`cpu_expr`, `cpu_kernel`, `cpu_view`) and, for the update,
from the optimiser templates in `netlang.ops.optim`.  Every identifier in the
source comes from a counter; names from the `.net` file appear only in
comments, sanitised.  This module never imports Numba: it returns text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re

from netlang.codegen.pieces import PIECE_LINES, emit_program_body
from netlang.codegen.spelling import CpuSpelling
from netlang.codegen.table import table_unpack, writer_layouts
from netlang.ir.graph import Graph
from netlang.ops import get_op
from netlang.passes.memory import EXTERNAL


@dataclasses.dataclass
class ProgramArg:
    """One positional argument of a generated program: what the engine passes there."""
    kind: str   # input, key (a dropout mask's per-step key), param, state, slot, scratch
    key: object  # input/param/state name, dropout_mask node, slot index, scratch name


@dataclasses.dataclass
class Program:
    """A rendered program: its module's source, the function to call, the arrays it takes
    (then `lr` and `t`), and the slots in which it leaves the values the caller keeps."""
    source: str
    function: str
    args: list           # ProgramArg per array the program takes
    result_slots: dict   # node → slot of every kept value (outputs, losses, gradients)
    # (module name, source) of the modules `source` imports its worker functions from: named
    # by their content, so programs that share a kernel share its compiled code.
    parts: tuple = ()
    # A program cut into pieces (netlang/codegen/pieces.py) is a Python function that calls
    # them in turn: (the name it calls a piece by, the parameters it passes, its weight: the
    # arrays it reads, plus one), in order.  Empty for a compiled program.
    pieces: tuple = ()
    # (element type, dimension count) per argument where the program takes its arrays in one
    # table (`table, lr, t`: netlang/codegen/table.py); None where it takes them one by one.
    layouts: tuple | None = None


def sanitise_comment(text: str) -> str:
    """User-derived text that may go into a comment: printable ASCII, no line breaks."""
    return re.sub(r"[^A-Za-z0-9_.,:()\[\] -]", "?", str(text))[:80]


class Emitter:
    """Lines of source with indentation and fresh names."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 1
        self._count = 0
        self.issued: list[str] = []   # the names `fresh` gave out, in order

    def line(self, text: str) -> None:
        """Appends `text` at the current indentation."""
        self.lines.append("    " * self.depth + text)

    @contextlib.contextmanager
    def block(self, header: str):
        """Emits `header` (a `for`, an `if`) and indents what is emitted inside the `with`."""
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def fresh(self, prefix: str = "t") -> str:
        """A new name: `prefix` and the next number of this emitter's counter (a worker function's
        emitter continues the program's, so names never repeat within a program)."""
        self._count += 1
        name = f"{prefix}{self._count}"
        self.issued.append(name)
        return name


class Kernel:
    """What a `cpu_kernel` template sees: its operands' and output's variables and types, and
    the renderer's spelling of scalar code (`const` and `math`: one `CpuSpelling`, called for
    a constant, `k.const(0.5)`, its methods for math functions, `k.math.exp(x)`)."""

    def __init__(self, program: "ProgramWriter", node: int):
        self.program = program
        self.graph = program.graph
        self.node = node
        data = self.graph.nodes[node]
        self.attrs = data["attrs"]
        self.ins = [program.var(o) for o in data["inputs"]]
        self.in_types = [self.graph.type_of(o) for o in data["inputs"]]
        self.out = program.var(node)
        self.out_type = data["type"]
        self.const = self.math = program.spelling
        # "train" (batch statistics) or "eval" (running statistics), and whether this program
        # is the training step, whose kernels also update buffers in place (a state rule).
        self.mode = program.mode
        # A data-parallel gradient pass moves the running statistics as the step would: its
        # update follows on the host (netlang/train/distributed.py).
        self.updates_state = program.update is not None or program.statistics_across_processes
        # Whether batch statistics are the whole batch's, summed across processes
        # (`sum_across_processes`), or this program's own batch's.
        self.statistics_across_processes = program.statistics_across_processes
        self.gemm = "gemm32" if program.dtype == "float32" else "gemm64"

    def reshaped(self, expr: str, trailing: tuple) -> str:
        """Source of a view of the C-contiguous array `expr` as `ProgramWriter.view` makes one
        (shape (size // ∏ trailing, *trailing)), for a kernel that holds it in a variable of
        its own (a block's section, in a loop)."""
        return self.program.reshaped(expr, trailing)

    def helper(self, name: str, module: str = "netlang.runtime.cnn") -> str:
        """A compiled helper function the kernel calls (imported by the program's source)."""
        self.program.imports.add((module, name))
        return name

    def sum_across_processes(self, sums: str, rows: str, with_gradients: bool) -> str:
        """Emits the call that makes the per-channel `sums` (a float64 (4, C) workspace) of
        this program's `rows` rows the whole batch's, across the processes of a data-parallel
        run (netlang/runtime/statistics.py; only Σx and Σx² without `with_gradients`);
        returns the variable holding the whole batch's rows.  Object mode, as MPI is called
        from Python."""
        total = self.fresh("rows")
        reduce = self.helper("sum_batch_statistics", "netlang.runtime.statistics")
        with self.block(f"with {self.helper('objmode', 'numba')}({total}='int64'):"):
            self.line(f"{total} = {reduce}({sums}, {rows}, {with_gradients})")
        return total

    def key(self) -> str:
        """A one-element uint64 array the engine fills before each call: this node's random key
        (see `netlang.ops.norm_loops.dropout_bits`)."""
        return self.program.argument("key", self.node)

    def workspace(self, i: int) -> str:
        """The i-th scratch array the op's `cpu_workspace` rule asked for."""
        return self.program.argument("slot", self.program.buffers.workspaces[self.node][i])

    def line(self, text: str) -> None:
        """Emits a line of the kernel's code (into the worker function while one is open)."""
        self.emitter.line(text)

    def block(self, header: str):
        """Emits `header` (a `for`, an `if`) and indents what the `with` emits."""
        return self.emitter.block(header)

    def fresh(self, prefix: str = "t") -> str:
        """A new variable name, unique in the program."""
        return self.emitter.fresh(prefix)

    def rows(self, var: str, type_) -> str:
        """A 2-D (rows, last axis) view of a batched or unbatched array variable."""
        return self.matrix(var, type_.shape[-1] if type_.shape else 1)

    def matrix(self, var: str, width: int) -> str:
        """A 2-D (size // width, width) view of an array variable."""
        return self.program.view(var, (width,), "v")

    def flat(self, var: str) -> str:
        """A 1-D view of an array variable."""
        return self.program.view(var, (), "f")

    def epilogue(self, out2d: str, bias: str | None = None, row0: str | None = None) -> None:
        """The loop that ends a matrix product: bias add, then every fused elementwise op.

        `out2d` is the (rows, last axis) output or, with `row0`, the block of its rows that
        starts at row `row0` (a kernel that works block by block runs it per block)."""
        self.program.emit_epilogue(self.node, out2d, bias, row0)

    @property
    def fused(self) -> bool:
        """Whether elementwise ops are fused into this kernel's output."""
        return bool(self.program.fusion.epilogue.get(self.node))

    def fused_operands(self) -> dict:
        """Flat views of what the fused ops read besides the running value (emit before the loop)."""
        return self.program._epilogue_operands(self.program.fusion.epilogue.get(self.node, []),
                                               self.node)

    def apply_fused(self, value: str, operands: dict, index: str) -> str:
        """Emits the fused ops on `value`, the output's element at flat index `index`; returns
        the variable holding the result, to be stored by the kernel."""
        return self.program._emit_chain(self.program.fusion.epilogue.get(self.node, []), self.node,
                                        value, operands, index)

    @property
    def paired_loss(self):
        """For a paired loss gradient: the loss node computed with it."""
        return self.program.fusion.paired.get(self.node)

    # Target-neutral structure: the CUDA renderer (codegen/cuda.py) overrides these three, so
    # a template written with them serves both back ends.

    def parallel(self, size: str, index: str = "i"):
        """A loop whose iterations are independent (a kernel launch on a GPU)."""
        return self.block(f"for {index} in range({size}):")

    def reduction(self, size: str, index: str, body, finish, groups: str | None = None,
                  group: str = "g") -> None:
        """Σ over `index` < `size` into a float64 accumulator: `body(acc)` emits one iteration
        (adding to acc), `finish(acc)` uses the total.  With `groups`, one independent
        reduction per `group` < `groups` (a block per group on a GPU)."""
        with contextlib.ExitStack() as stack:
            if groups is not None:
                stack.enter_context(self.block(f"for {group} in range({groups}):"))
            acc = self.fresh("acc")
            self.line(f"{acc} = 0.0")
            with self.block(f"for {index} in range({size}):"):
                body(acc)
            finish(acc)

    def matmul(self, a: str, b: str, out: str, trans_a: bool = False, trans_b: bool = False,
               bias: str | None = None, epilogue: bool = True, row0: str | None = None,
               accumulate: bool = False) -> None:
        """out ← op(a)·op(b) (+ out, with `accumulate`) over 2-D views, then (with `epilogue`)
        the bias and fused ops; `out` may be the block of the output's rows that starts at row
        `row0`."""
        beta = "1.0" if accumulate else "0.0"
        self.line(f"{self.gemm}({trans_a}, {trans_b}, 1.0, {a}, {b}, {beta}, {out})")
        if epilogue:
            self.epilogue(out, bias=bias, row0=row0)

    # Host code around the structures above (a loop over blocks of a convolution's rows): on
    # the CPU it is code like any other; on a GPU it runs in the host function, between
    # kernel launches.

    def host_value(self, expr: str, prefix: str = "h") -> str:
        """A fresh variable holding `expr` (a view, a slice, a block bound)."""
        name = self.fresh(prefix)
        self.line(f"{name} = {expr}")
        return name

    def host_block(self, header: str, defines=()):
        """A block (`for`, `if`) of host code; `defines`: the names its header binds."""
        return self.block(header)

    @property
    def emitter(self):
        """Where the kernel's lines go: the program's emitter, or a worker function's."""
        return self.program.emitter   # a worker function's while one is being written

    # Splitting a batch among the CPU's cores.

    @property
    def workers(self) -> int:
        """Threads a kernel may split a batch among (1: serial, as on a GPU)."""
        return self.program.workers

    def size(self, role: str, value: int) -> str:
        """A size of the kernel's geometry (`role`: which one, as "Ho"), as the code reads it:
        the number itself, but inside a worker function a parameter that the step passes it,
        so kernels that differ only in their sizes (ResNet's 3×3 convolutions of 64 to 512
        channels) are one worker function, compiled once (`ProgramWriter.worker_function`)."""
        sizes = self.program.worker_sizes
        if sizes is None:
            return str(value)
        if role not in sizes:
            sizes[role] = (self.fresh("z"), value)
        elif sizes[role][1] != value:
            raise AssertionError(f"a worker function's size {role} has two values")
        return sizes[role][0]

    @contextlib.contextmanager
    def worker_chunks(self, count: str):
        """`count` independent items (a batch's examples), one contiguous run per worker
        thread.  With several workers, what is emitted inside becomes a function of its own
        (`ProgramWriter.worker_function`) whose body is a `prange` over the workers, BLAS
        held to one thread while it runs; yields (first, stop, worker), the names of the
        run's bounds and of the worker's index.  With one worker it emits nothing around the
        body and yields (None, None, None).  The runs depend on the worker count only."""
        workers = self.program.workers
        if workers == 1:
            yield None, None, None
            return
        with self.program.worker_function() as worker:
            n = self.host_value(count, "n")
            first, stop = self.fresh("e"), self.fresh("e")
            self.line(f"{first} = {n} * {worker} // {workers}")
            self.line(f"{stop} = {n} * ({worker} + 1) // {workers}")
            yield first, stop, worker


class ProgramWriter:
    """Writes one program's source from the ops' CPU templates: each node's code in order, the
    variable holding each node's value, and the arguments the program takes.  A target's
    renderer subclasses it and overrides only what differs (`codegen/cuda.py`)."""
    spelling = CpuSpelling()   # how constants and math functions are written (see CpuSpelling)

    def __init__(self, graph: Graph, order, fusion, buffers, dtype: str, mode: str = "eval",
                 workers: int = 1, statistics_across_processes: bool = False):
        self.graph = graph
        self.mode = mode
        self.statistics_across_processes = statistics_across_processes
        self.workers = workers      # threads a kernel may split a batch among (Kernel.workers)
        self.order = order
        self.fusion = fusion
        self.buffers = buffers
        self.dtype = dtype
        self.emitter = Emitter()
        self.args: list[ProgramArg] = []
        self._vars: dict = {}
        self._arg_of: dict = {}
        self.update = None
        self.imports: set = set()   # (module, name) of helpers the kernels call
        self._views: dict = {}
        self.step_names: set = set()   # variables of the step's own scope (arguments, views)
        self.parts: dict[str, str] = {}   # worker functions' modules: name → source
        # While a worker function is written: role → (its parameter, the step's value), the
        # sizes it takes as parameters (`Kernel.size`); None outside one.
        self.worker_sizes: dict | None = None
        self.part_imports: list = []   # (module, its function, the step's name for it)
        self.python_calls: list = []   # the pieces called from Python: (name, parameters)
        self.has_workers = False   # whether a kernel runs on worker threads (`worker_function`)

    def view(self, var: str, trailing: tuple, prefix: str) -> str:
        """A view of the C-contiguous array `var` of shape (var.size // ∏ trailing, *trailing)
        (`trailing`: sizes, or expressions of the program; () for a flat view), made once per
        program: a view made outside every loop serves every later kernel (each view costs
        Numba compile time; buffers never move).  Made by `runtime/jit.py`'s `reshaped`: the
        same view as `var.reshape(...)`, for about half of reshape's compile time."""
        key = (var, tuple(trailing))
        if key in self._views:
            return self._views[key]
        name = self.emitter.fresh(prefix)
        self.emitter.line(f"{name} = {self.reshaped(var, trailing)}")
        if self.emitter.depth == 1:
            self._views[key] = name
            self.step_names.add(name)
        return name

    def reshaped(self, var: str, trailing: tuple) -> str:
        """Source of `view`'s view of `var`, `reshaped(var, (sizes...))`, its import added."""
        self.imports.add(("netlang.runtime.jit", "reshaped"))
        return f"reshaped({var}, ({''.join(f'{size}, ' for size in trailing).rstrip()}))"

    @contextlib.contextmanager
    def worker_function(self):
        """What is emitted inside is one worker's share of a kernel, a function of its own
        that takes the worker's index and the step's variables it uses; the step runs it on
        each worker thread at once (`run_workers`, netlang/runtime/workers.py) and goes on
        when all are done.  Yields the name of the worker's index.  A step that has worker
        functions holds BLAS to one thread from its first line to its last
        (`render_program`), so a product inside a worker runs on the worker's thread
        (`set_blas_threads` says why the step sets the count, not the workers).

        The function goes to a module of its own (`parts`), its generated names numbered
        afresh and the module named by its content: the same kernel in another program (the
        training step's forward convolutions in the evaluation program, the layers a model
        edit left alone) is the same module, compiled once for both and cached on disk.  Its
        source holds the worker count (its runs of examples, which the step's workspaces were
        planned for)."""
        outer = self.emitter
        inner = Emitter()
        inner.depth = 3   # inside the function: no view made there is the step's
        inner._count = outer._count
        worker = inner.fresh("wk")
        self.emitter = inner
        self.worker_sizes = sizes = {}
        try:
            yield worker
        finally:
            self.emitter = outer
            self.worker_sizes = None
            outer._count = inner._count
        # Without comments: they may hold user names, which would tell equal kernels apart.
        body = "\n".join(line[8:] for line in inner.lines if not line.lstrip().startswith("#"))
        size_values = {name: value for name, value in sizes.values()}
        params = []
        for name in re.findall(r"\b[a-z]+\d+\b", body):
            if (name in self.step_names or name in size_values) and name not in params:
                params.append(name)
        arguments = [str(size_values.get(name, name)) for name in params]
        # One worker's share is a serial function of its own, which `run_workers` calls on
        # each worker thread (netlang/runtime/workers.py says why not a `prange`).  The sizes
        # the step passes as constants are typed as plain integers there: the share is
        # compiled once for all their values.  It is not called from Python: without the
        # wrapper that Python would call through, it compiles in about half the time.
        text = "\n".join([f"def share({', '.join([worker] + params)}):", body])
        self._part(text, set(params) | set(inner.issued), "share", arguments, [],
                   workers=self.workers)
        self.imports.add(("netlang.runtime.workers", "run_workers"))
        self.imports.add(("netlang.runtime.blas", "set_blas_threads"))

    @contextlib.contextmanager
    def serial_function(self, scalars=()):
        """What is emitted inside becomes a function of its own, which takes the step's views
        and arguments it reads (and the step's `scalars` among them, as `lr`) and which the
        step calls: content-addressed as a worker function is (`worker_function`), so the
        same code for many parameters (one optimiser's update of each weight) is compiled
        once.  Numba's compile time grows with the function it compiles: ResNet-18's step
        spent most of its 31 s compiling its loops, half of them 62 copies of one update."""
        outer = self.emitter
        inner = Emitter()
        inner.depth = 2   # inside the function: no view made there is the step's
        inner._count = outer._count
        self.emitter = inner
        known = dict(self._vars)
        try:
            yield
        finally:
            self.emitter = outer
            outer._count = inner._count
            self._vars = known   # a value's view made inside exists only there
        body = "\n".join(line[4:] for line in inner.lines if not line.lstrip().startswith("#"))
        params = self.step_parameters(body, scalars)
        text = "\n".join([f"def part({', '.join(params)}):", body])
        self._part(text, set(params) - set(scalars) | set(inner.issued), "part", params, [])

    def step_parameters(self, body: str, scalars=()) -> list:
        """The step's names (arguments, its views) and `scalars` that `body` reads, in order:
        what a function cut out of the step takes."""
        return list(dict.fromkeys(name for name in _NAME_TOKEN.findall(body)
                                  if name in self.step_names or name in scalars))

    def _part(self, text: str, generated: set, entry: str, arguments: list, imports: list,
              from_python: int = 0, workers: int = 0):
        """The module of a function the step calls (`text`, its `entry` called with
        `arguments`): its `generated` names renumbered, its helpers imported, named by its
        content (see `worker_function`).  `from_python`: a piece, which the program calls
        from Python and so compiles with Numba's wrapper: its weight (pieces.py).
        `workers`: a worker's share, called once on each of that many worker threads."""
        # Generated names renumbered in order of appearance: the text then depends only on
        # the kernel, not on how many names the program gave out before it.
        order = list(dict.fromkeys(name for name in _NAME_TOKEN.findall(text)
                                   if name in generated))
        renamed = {name: f"{name.rstrip('0123456789')}_{i}" for i, name in enumerate(order)}
        if set(renamed.values()) & set(_NAME_TOKEN.findall(text)):
            raise AssertionError("a function part's renumbered names collide")
        text = _NAME_TOKEN.sub(lambda m: renamed.get(m.group(0), m.group(0)), text)
        names = set(_NAME_TOKEN.findall(text))
        helpers = sorted((module, name) for module, name in self.imports | _GEMM_IMPORTS
                         if name in names)
        # A piece of a program (netlang/codegen/pieces.py) calls the program's parts.
        calls = [f"from {module} import {entry} as {renamed.get(name, name)}"
                 for module, entry, name in self.part_imports if renamed.get(name, name) in names]
        source = "\n".join(
            ["# Generated by netlang: one function of a program. Do not edit.",
             "import numpy as np", *self.spelling.imports, *imports,
             "from netlang.runtime.linkage import symbol_jit"] +
            [f"from {module} import {name}" for module, name in helpers] + calls +
            ["", f"F = np.{self.dtype}", "", "",
             # Else called from compiled code only: see linkage.TARGET_OPTIONS.
             "@symbol_jit" if from_python else "@symbol_jit(no_cpython_wrapper=True)",
             text, ""])
        module = "netlang_part_" + hashlib.sha256(source.encode()).hexdigest()[:24]
        self.parts[module] = source
        imported = {(m, e): name for m, e, name in self.part_imports}
        function = imported.get((module, entry))
        if function is None:
            function = self.emitter.fresh(entry + "s")   # parts, shares, pieces
            self.part_imports.append((module, entry, function))
        if workers:
            self.emitter.line(f"run_workers({function}, {workers}, ({', '.join(arguments)},))")
            self.has_workers = True
        else:
            self.emitter.line(f"{function}({', '.join(arguments)})")
        if from_python:
            self.python_calls.append((function, tuple(arguments), from_python))

    def part_import_lines(self) -> list:
        """The lines that import the functions of the program's parts."""
        return [f"from {module} import {entry} as {name}"
                for module, entry, name in self.part_imports]

    def argument(self, kind: str, key) -> str:
        """The parameter (`a0`, `a1`, ...) through which the program receives `key` of `kind`
        (see ProgramArg).  Added on first use, so the arguments come in the order the code first
        reads them."""
        if (kind, key) not in self._arg_of:
            name = f"a{len(self.args)}"
            self.args.append(ProgramArg(kind, key))
            self._arg_of[(kind, key)] = name
            self.step_names.add(name)
        return self._arg_of[(kind, key)]

    def var(self, node: int) -> str:
        """The variable holding a node's value (an argument, a buffer or a view of one)."""
        if node in self._vars:
            return self._vars[node]
        op = self.graph.op(node)
        data = self.graph.nodes[node]
        if op == "input":
            name = self.argument("input", data["name"])
        elif op == "param":
            name = self.argument("param", data["name"])
        elif node in self.fusion.host_of or get_op(op).cpu_view:
            root = self.buffers.root_of[node]
            name = self._view(node, root)
        else:
            name = self.argument("slot", self.buffers.slot_of[node])
        self._vars[node] = name
        return name

    def _view(self, node, root) -> str:
        root_var = self.var(root) if root != node else self.argument("slot", self.buffers.slot_of[node])
        t = self.graph.type_of(node)
        if self.graph.type_of(root).shape == t.shape:
            return root_var
        # The leading size (the batch, or the shape's first) is the one the view derives.
        return self.view(root_var, tuple(t.shape[1:]), "r")

    # -- elementwise ------------------------------------------------------------------------

    def expression(self, node: int, operand_values: list[str]) -> str:
        """The value of an elementwise op as one scalar expression of `operand_values` (variable
        names), from its `cpu_expr` template written with this writer's spelling."""
        op = get_op(self.graph.op(node))
        # Variadic ops (add, multiply) read their operand count from `_arity`.
        attrs = dict(self.graph.nodes[node]["attrs"], _arity=len(operand_values))
        template = op.cpu_expr(attrs, self.spelling)
        return template.format(*operand_values)

    def emit_elementwise(self, node: int) -> None:
        """A loop over the flattened output computing this op and its fused followers."""
        e = self.emitter
        out = self.var(node)
        flat_out = self.view(out, (), "f")
        operand_flats = {}
        for operand in self.graph.operands(node):
            if operand not in operand_flats:
                v = self.var(operand)
                operand_flats[operand] = self.view(v, (), "f")
        chain = self.fusion.epilogue.get(node, [])
        extra = self._epilogue_operands(chain, node)
        with self.loop("i", f"{flat_out}.size"):
            values = []
            for operand in self.graph.operands(node):
                s = e.fresh("s")
                e.line(f"{s} = {operand_flats[operand]}[i]")
                values.append(s)
            current = e.fresh("s")
            e.line(f"{current} = {self.expression(node, values)}")
            current = self._emit_chain(chain, node, current, extra, "i")
            e.line(f"{flat_out}[i] = {current}")

    def loop(self, index: str, size: str):
        """An elementwise loop (the CUDA renderer makes it a kernel)."""
        return self.emitter.block(f"for {index} in range({size}):")

    def _epilogue_operands(self, chain, host) -> dict:
        """Flat views of the operands that fused ops read besides the running value."""
        extra = {}
        inside = {host} | set(chain)
        for node in chain:
            for operand in self.graph.operands(node):
                if operand not in inside and operand not in extra:
                    v = self.var(operand)
                    extra[operand] = self.view(v, (), "f")
        return extra

    def _emit_chain(self, chain, host, current: str, extra: dict, index: str) -> str:
        e = self.emitter
        produced = {host: current}
        for node in chain:
            values = []
            for operand in self.graph.operands(node):
                if operand in produced:
                    values.append(produced[operand])
                else:
                    s = e.fresh("s")
                    e.line(f"{s} = {extra[operand]}[{index}]")
                    values.append(s)
            s = e.fresh("s")
            e.line(f"{s} = {self.expression(node, values)}")
            produced[node] = s
            current = s
        return current

    def emit_epilogue(self, host: int, out2d: str, bias: str | None, row0: str | None = None) -> None:
        """The loop that ends a matrix product into `out2d`: adds `bias` (one per column) and
        runs `host`'s fused elementwise ops on each element in place; nothing when there are
        neither.  With `row0`, `out2d` is the block of the output's rows that starts there, which
        is how the fused ops' operands are indexed."""
        chain = self.fusion.epilogue.get(host, [])
        if not chain and bias is None:
            return
        e = self.emitter
        extra = self._epilogue_operands(chain, host)
        with e.block(f"for r in range({out2d}.shape[0]):"):
            with e.block(f"for c in range({out2d}.shape[1]):"):
                s = e.fresh("s")
                e.line(f"{s} = {out2d}[r, c]" + (f" + {bias}[c]" if bias else ""))
                if extra:
                    row = f"({row0} + r)" if row0 else "r"
                    e.line(f"k = {row} * {out2d}.shape[1] + c")
                s = self._emit_chain(chain, host, s, extra, "k")
                e.line(f"{out2d}[r, c] = {s}")

    # -- the program ------------------------------------------------------------------------

    def emit_node(self, node: int) -> None:
        """Emits the code that computes `node`, or none: inputs and parameters are passed in, a
        fused op is computed by its host's kernel, a view is only a variable, and a weight
        gradient the update absorbs is its product into the update's target."""
        data = self.graph.nodes[node]
        op_name = data["op"]
        if op_name in EXTERNAL or node in self.fusion.host_of:
            return
        if self.update is not None and node in self.update.absorbed:
            self.update.emit_absorbed(self, node)
            return
        op = get_op(op_name)
        self.emitter.line(f"# {sanitise_comment(op_name)} {sanitise_comment(data['name'])}")
        if op.cpu_view:
            self.var(node)
        elif op.cpu_expr is not None:
            self.emit_elementwise(node)
        else:
            self.emit_kernel(op, node)

    # A target's renderer overrides this: which template an op's kernel comes from, and what
    # the template sees.
    def emit_kernel(self, op, node: int) -> None:
        """A non-elementwise op's kernel, from its `cpu_kernel` template.  An op without one is
        refused (NotImplementedError), never computed some other way."""
        if op.cpu_kernel is None:
            raise NotImplementedError(f"op `{op.name}` has no CPU kernel")
        op.cpu_kernel(Kernel(self, node))


def supported(graph: Graph, nodes, kernel_field: str = "cpu_kernel") -> list[str]:
    """Ops among `nodes` with no kernel template for a target (`kernel_field`: the op's
    field holding it; views and elementwise expressions serve every target).  Empty: all
    are supported."""
    missing = set()
    for node in nodes:
        op_name = graph.op(node)
        if op_name in EXTERNAL:
            continue
        op = get_op(op_name)
        if not (op.cpu_view or op.cpu_expr or getattr(op, kernel_field)):
            missing.add(op_name)
    return sorted(missing)


def result_slots(buffers, keep) -> dict:
    """node → slot of every kept value the program computes."""
    return {n: buffers.slot_of[n] for n in keep if n in buffers.slot_of}


# A name in generated source (not an attribute), and the helpers every program imports.
_NAME_TOKEN = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_GEMM_IMPORTS = {("netlang.runtime.blas", "gemm32"), ("netlang.runtime.blas", "gemm64")}


def render_program(graph: Graph, order, fusion, buffers, *, dtype: str, function: str,
                   keep, update=None, title: str = "", mode: str = "eval",
                   workers: int = 1, statistics_across_processes: bool = False) -> Program:
    """Source of one Numba function computing `order`; `update` (an UpdatePlan) ends it.
    `mode` is "train" for the programs of the training graph (batch statistics); `workers`:
    the threads a kernel may split a batch among (the buffer plan's per-worker workspaces
    were planned for the same count).  `statistics_across_processes`: batch statistics summed
    across the processes of a data-parallel run (`Kernel.sum_across_processes`)."""
    writer = ProgramWriter(graph, order, fusion, buffers, dtype, mode, workers,
                           statistics_across_processes)
    body, _ = emit_program_body(writer, order, update)
    if len(body) > 2 * PIECE_LINES:   # long: written again, cut into pieces
        cut_writer = ProgramWriter(graph, order, fusion, buffers, dtype, mode, workers,
                                   statistics_across_processes)
        written = emit_program_body(cut_writer, order, update, cut=True)
        if written is not None:
            writer, (body, _) = cut_writer, written
    if not writer.python_calls:   # its arrays from its table (a cut program's pieces make theirs)
        body = table_unpack(writer, [f"a{i}" for i in range(len(writer.args))]) + body
    header = [
        f"# Generated by netlang for {sanitise_comment(title)}. Do not edit.",
        "import numpy as np", *writer.spelling.imports,
        "from netlang.runtime.linkage import symbol_jit",
        "from netlang.runtime.blas import gemm32, gemm64",
    ] + [f"from {module} import {name}" for module, name in sorted(writer.imports)] + \
        writer.part_import_lines() + [
        "",
        f"F = np.{dtype}",
        "",
        "",
        # Cut into pieces, the program only calls them: a Python function.  Compiled, it took
        # ResNet-18's 318 arrays in and handed them on, 4.5 s of a cold start's serial end.
        *([] if writer.python_calls else ["@symbol_jit"]),
        f"def {function}(table, lr, t):",
    ]
    if writer.has_workers:
        # The workers are this step's parallelism: BLAS runs on one thread for the whole step,
        # its serial products included.  Toggling the count around each worker call (2 threads
        # between them) made LeNet-5's two-worker step 7.2 ms against 4.8 ms this way: its
        # serial products are too small for two OpenBLAS threads to pay off.
        body = ["    blas_threads = set_blas_threads(1)"] + body + ["    set_blas_threads(blas_threads)"]
    source = "\n".join(header + body + ["    return 0", ""])
    return Program(source, function, writer.args, result_slots(buffers, keep),
                   tuple(writer.parts.items()), tuple(writer.python_calls), writer_layouts(writer))
