"""Render a planned graph into numba.cuda source: kernels, and one host function per program.

The CUDA renderer is the CPU renderer (`codegen/cpu.py`) with what differs overridden:

- every loop the CPU renders as `for i in range(n)` over independent iterations (an
  elementwise op and its fused followers, a `k.parallel` block of an op's template, an
  optimiser update) becomes a kernel with a grid-stride loop, launched by the host function;
- `k.reduction` becomes a block reduction in shared memory (one block per group);
- `k.matmul` becomes a tiled matrix product in shared memory, with the op's bias and fused
  elementwise ops as its epilogue, and gemm's α and β (the SGD updates that the weight
  gradient's product performs itself, as on the CPU).

A template's host code (`k.host_value`, `k.host_block`: a convolution's loop over blocks of
rows, a slice of a view) goes to the host function, its names becoming kernel parameters where
kernels read them.  Ops' kernel templates are the CPU ones where those are written with the
three structures above (`op.cuda_kernel = op.cpu_kernel`), and CUDA-specific ones otherwise
(with their own workspaces where an op's `cuda_workspace` rule says so); elementwise
expressions, the optimiser and penalty templates and the fusion and buffer plans are shared.
The shared templates write constants and math functions through the renderer's spelling
table (`CudaSpelling` in `codegen/spelling.py`: `math`'s functions where the CPU's table has
NumPy's), so no CPU text is ever rewritten into CUDA text.  Host-side views (`reshape`) are
made in the host function and passed to the kernels, whose parameters are the host variables
their bodies read.  Identifiers come from counters; user names appear only in sanitised
comments.  This module never imports Numba.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

from netlang.codegen.cpu import (
    Emitter,
    Kernel,
    Program,
    ProgramWriter,
    emit_program_body,
    result_slots,
    sanitise_comment,
)
from netlang.codegen.cpu import supported as supported_on
from netlang.codegen.spelling import CudaSpelling
from netlang.codegen.update import UpdatePlan


@dataclasses.dataclass(frozen=True)
class LaunchGeometry:
    """How generated kernels are launched.

    Grid-stride kernels and reductions run `threads` threads a block (a power of two), in at
    most `blocks` blocks.  A matrix product is tiled in one of two ways, picked at run time from
    the output's size: a large output is cut into `wide_tile`² blocks, each thread computing a
    `micro`² patch of outputs from registers, operand tiles `depth` deep staged in shared
    memory (each value read from shared memory feeds `micro` multiply-adds); when that would
    make fewer than `wide_from` blocks, too few to keep every multiprocessor busy, the output is
    cut into `tile`² blocks of one output a thread."""
    threads: int = 256
    blocks: int = 2048
    tile: int = 16
    wide_tile: int = 64
    micro: int = 4
    depth: int = 16
    # Not yet tuned on a GPU: about half the multiprocessors of a large current GPU (an H100
    # has 132), where a 16-times-larger grid of one-output threads starts to win.
    wide_from: int = 64

    def __post_init__(self):
        threads = (self.wide_tile // self.micro) ** 2
        if self.wide_tile % self.micro or (self.wide_tile * self.depth) % threads:
            raise ValueError("a wide tile must split into micro patches, and its operand tiles "
                             "into equal loads per thread")


GPU = LaunchGeometry()
# The simulator runs every thread as a Python thread: few and small blocks keep it quick.  Its
# small wide tiles and `wide_from` let the tests' small products take both tilings.
SIMULATOR = LaunchGeometry(threads=2, blocks=2, tile=4, wide_tile=4, micro=2, depth=4,
                           wide_from=2)

# A name in a kernel's body (not an attribute): a host variable it reads becomes a parameter.
_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)")


class KernelEmitter(Emitter):
    """The host function's lines, with kernel bodies split off: while a kernel is open,
    `line` writes its body and `host_line` the host function (views of buffers)."""

    def __init__(self):
        super().__init__()
        self._host = None

    @property
    def in_kernel(self) -> bool:
        """Whether a kernel's body is being written (so `line` writes into it)."""
        return self._host is not None

    def open_kernel(self) -> None:
        """Starts a kernel's body: later lines go to a fresh list at depth 1 until
        `close_kernel`, the host function's set aside.  Kernels do not nest."""
        if self._host is not None:
            raise NotImplementedError("a kernel template opened a kernel inside a kernel")
        self._host = (self.lines, self.depth)
        self.lines, self.depth = [], 1

    def close_kernel(self) -> list:
        """Ends the kernel's body and returns its lines; lines go to the host function again."""
        body = self.lines
        self.lines, self.depth = self._host
        self._host = None
        return body

    def host_line(self, text: str) -> None:
        """A line of the host function, even while a kernel is open: a view a kernel reads is
        made on the host, before the kernel's launch."""
        if self._host is None:
            self.line(text)
        else:
            lines, depth = self._host
            lines.append("    " * depth + text)

    @property
    def host_depth(self) -> int:
        """The host function's indentation, whether or not a kernel is open (1: outside every
        block)."""
        return self.depth if self._host is None else self._host[1]


class CudaKernel(Kernel):
    """What a `cuda_kernel` template sees: a `Kernel` whose parallel structures launch kernels.
    Its lines must lie inside them: a line for the host function would run on the host."""

    def line(self, text: str) -> None:
        """A line of the open kernel's body; refused outside a kernel, where it would run on the
        host."""
        if not self.program.emitter.in_kernel:
            raise NotImplementedError(f"`{self.graph.op(self.node)}`'s template writes host code")
        self.program.emitter.line(text)

    def block(self, header: str):
        """A block (`for`, `if`) of the open kernel's body; refused outside a kernel."""
        if not self.program.emitter.in_kernel:
            raise NotImplementedError(f"`{self.graph.op(self.node)}`'s template writes host code")
        return self.program.emitter.block(header)

    def fresh(self, prefix: str = "t") -> str:
        """A new variable name, unique in the program."""
        return self.program.emitter.fresh(prefix)

    def helper(self, name: str, module: str = "") -> str:
        """Refused: a CUDA template cannot call a CPU helper."""
        # CPU helpers are host code; device functions would need a GPU to type a kernel
        # (compile_ptx), so CUDA templates write their loops out.
        raise NotImplementedError(f"`{self.graph.op(self.node)}` calls the CPU helper {name}")

    def host_function(self, name: str, module: str) -> str:
        """A plain Python function that the host function calls between launches (a check of
        an input the kernels cannot report on), imported by the program's module; call it in a
        `host_value`."""
        self.program.imports.add((module, name))
        return name

    def epilogue(self, out2d, bias=None, row0=None):
        """Refused: on the GPU the epilogue is part of the product's kernel (`matmul`)."""
        raise NotImplementedError("the CUDA renderer fuses epilogues into k.matmul")

    def parallel(self, size: str, index: str = "i"):
        """Independent iterations `index` < `size`: a kernel with a grid-stride loop."""
        return self.program.grid_loop(index, size)

    def reduction(self, size, index, body, finish, groups=None, group="g") -> None:
        """Σ over `index` < `size` as a block reduction in shared memory, one block per group
        (`CudaProgramWriter.reduction`)."""
        self.program.reduction(size, index, body, finish, groups, group)

    def matmul(self, a, b, out, trans_a=False, trans_b=False, bias=None, epilogue=True,
               row0=None, accumulate=False) -> None:
        """out ← op(a)·op(b) (+ out, with `accumulate`) as a tiled product kernel whose epilogue
        adds `bias` and, with `epilogue`, runs this node's fused ops; `out` may be the block of
        the output's rows that starts at row `row0`."""
        self.program.gemm(self.node if epilogue else None, a, b, out, trans_a, trans_b,
                          bias=bias, row0=row0, beta="1.0" if accumulate else "0.0")

    def host_value(self, expr: str, prefix: str = "h") -> str:
        """A host-function variable holding `expr` (a view, a slice, a block bound); kernels that
        read it take it as a parameter.  Refused inside a kernel."""
        if self.program.emitter.in_kernel:
            raise NotImplementedError(f"`{self.graph.op(self.node)}`'s template writes host "
                                      "code inside a kernel")
        name = self.fresh(prefix)
        self.program.emitter.line(f"{name} = {expr}")
        self.program.host_names.add(name)
        return name

    def host_block(self, header: str, defines=()):
        """A block (`for`, `if`) of the host function; `defines`, the names its header binds,
        become parameters of the kernels that read them.  Refused inside a kernel."""
        if self.program.emitter.in_kernel:
            raise NotImplementedError(f"`{self.graph.op(self.node)}`'s template writes host "
                                      "code inside a kernel")
        self.program.host_names.update(defines)
        return self.program.emitter.block(header)


class CudaProgramWriter(ProgramWriter):
    """The CPU's program writer with the CUDA structures: kernels launched by a host function
    (see the module's docstring)."""

    spelling = CudaSpelling()

    def __init__(self, graph, order, fusion, buffers, dtype: str, mode: str = "eval",
                 geometry: LaunchGeometry = GPU):
        super().__init__(graph, order, fusion, buffers, dtype, mode)
        self.emitter = KernelEmitter()
        self.geometry = geometry
        self.host_names: set = set()
        self.kernels: list[str] = []

    # -- host variables ---------------------------------------------------------------------

    def argument(self, kind: str, key) -> str:
        """As on the CPU; the argument is also a host variable, so a kernel that reads it takes
        it as a parameter."""
        name = super().argument(kind, key)
        self.host_names.add(name)
        return name

    def reshaped(self, var: str, trailing: tuple) -> str:
        """`ProgramWriter.reshaped`'s view as NumPy's reshape, for the host function: shape
        (var.size // ∏ trailing, *trailing), or var.size for a flat view."""
        if not trailing:
            return f"{var}.reshape({var}.size)"
        product = " * ".join(str(size) for size in trailing)
        product = product if len(trailing) == 1 else f"({product})"
        sizes = ", ".join(str(size) for size in trailing)
        return f"{var}.reshape(({var}.size // {product}, {sizes}))"

    def view(self, var: str, trailing: tuple, prefix: str) -> str:
        """`ProgramWriter.view`'s view, as `var.reshape(...)`, made in the host function (even
        while a kernel is open) and passed to the kernels that read it; made once per program
        outside every host block."""
        key = (var, tuple(trailing))
        if key in self._views:
            return self._views[key]
        name = self.emitter.fresh(prefix)
        self.emitter.host_line(f"{name} = {self.reshaped(var, trailing)}")
        self.host_names.add(name)
        if self.emitter.host_depth == 1:
            self._views[key] = name
        return name

    # -- kernels ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def kernel(self, grid: str, block: str):
        """A kernel whose body is what is emitted inside; launched where the block ends."""
        self.emitter.open_kernel()
        try:
            yield
        finally:
            body = self.emitter.close_kernel()
        text = "\n".join(body)
        params, seen = [], set()
        for name in _NAME.findall(text):
            if name not in seen and (name in self.host_names or name in ("lr", "t")):
                seen.add(name)
                params.append(name)
        name = self.emitter.fresh("k")
        self.kernels.append("\n".join([
            "@cuda.jit(**_JIT)", f"def {name}({', '.join(params)}):"] + body))
        self.emitter.line(f"{name}[{grid}, {block}]({', '.join(params)})")

    @contextlib.contextmanager
    def grid_loop(self, index: str, size: str, prologue=()):
        """Independent iterations `index` < `size`: a kernel with a grid-stride loop."""
        with self.kernel(f"_grid({size})", "_T"):
            for line in prologue:
                self.emitter.line(line)
            with self.emitter.block(f"for {index} in range(cuda.grid(1), {size}, "
                                    f"cuda.gridsize(1)):"):
                yield

    def loop(self, index: str, size: str):
        """An elementwise op's loop: a kernel with a grid-stride loop."""
        return self.grid_loop(index, size)

    def reduction(self, size, index, body, finish, groups=None, group="g") -> None:
        """One block per group; its threads stride over `index` into float64 partial sums,
        added up in shared memory by a tree; thread 0 runs `finish` with the total."""
        e = self.emitter
        with self.kernel(groups or "1", "_T"):
            part, tid, acc, w = (e.fresh(p) for p in ("sh", "tid", "acc", "w"))
            if groups is not None:
                e.line(f"{group} = cuda.blockIdx.x")
            e.line(f"{part} = cuda.shared.array({self.geometry.threads}, float64)")
            e.line(f"{tid} = cuda.threadIdx.x")
            e.line(f"{acc} = 0.0")
            with e.block(f"for {index} in range({tid}, {size}, _T):"):
                body(acc)
            e.line(f"{part}[{tid}] = {acc}")
            e.line("cuda.syncthreads()")
            e.line(f"{w} = _T // 2")
            with e.block(f"while {w} > 0:"):
                with e.block(f"if {tid} < {w}:"):
                    e.line(f"{part}[{tid}] += {part}[{tid} + {w}]")
                e.line("cuda.syncthreads()")
                e.line(f"{w} //= 2")
            with e.block(f"if {tid} == 0:"):
                e.line(f"{acc} = {part}[0]")
                finish(acc)

    def gemm(self, host, a: str, b: str, out: str, trans_a: bool, trans_b: bool, *,
             alpha: str = "1.0", beta: str = "0.0", bias: str | None = None,
             row0: str | None = None) -> None:
        """out ← α·op(a)·op(b) + β·out, then the bias and `host`'s fused ops, as a tiled product
        (see LaunchGeometry): the host function launches the register-tiled kernel when the
        output is large enough to fill the device with its blocks, else the one-output-a-thread
        kernel.  `out` may be a block of `host`'s output rows starting at row `row0` (the fused
        ops' operands are indexed so)."""
        chain = self.fusion.epilogue.get(host, []) if host is not None else []
        extra = self._epilogue_operands(chain, host) if chain else {}
        g, e = self.geometry, self.emitter
        product = dict(a=a, b=b, out=out, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                       beta=beta, bias=bias, row0=row0, host=host, chain=chain, extra=extra)
        with e.block(f"if _wide({out}.shape[0], {out}.shape[1]):"):
            self._tiled_product(g.wide_tile, g.micro, g.depth, **product)
        with e.block("else:"):
            self._tiled_product(g.tile, 1, g.tile, **product)

    def _tiled_product(self, edge: int, micro: int, depth: int, *, a, b, out, trans_a, trans_b,
                       alpha, beta, bias, row0, host, chain, extra) -> None:
        """One kernel of `gemm`: a block computes an `edge`² tile of `out`, each of its
        (edge/micro)² threads a micro² patch whose rows (columns) are edge/micro apart, so that
        a warp's reads of a shared tile fall in distinct banks or broadcast, and its stores of
        `out` coalesce.  Operand tiles `depth` deep are staged in shared memory, loaded along
        each operand's contiguous axis (coalesced) whether it is transposed or not; the patch's
        sums stay in registers (scalars written out, not a local array)."""
        e = self.emitter
        across = edge // micro
        threads = across * across
        grid = f"(_cdiv({out}.shape[1], {edge}), _cdiv({out}.shape[0], {edge}))"
        with self.kernel(grid, f"({across}, {across})"):
            sa, sb, tx, ty, tid, r0, c0, m, n, kk, k0, q, idx, u, v, i, j, row, col = (
                e.fresh(p) for p in ("sa", "sb", "tx", "ty", "tid", "r", "c", "m", "n", "kk",
                                     "k", "q", "idx", "u", "v", "i", "j", "row", "col"))
            acc = [[e.fresh("acc") for _ in range(micro)] for _ in range(micro)]
            # sa[v, u] = op(a)[r0 + u, k0 + v];  sb[v, u] = op(b)[k0 + v, c0 + u].  Literal shapes
            # (Numba types a shared array's shape only from constants); a padding column keeps
            # the transposing stores off one bank.
            e.line(f"{sa} = cuda.shared.array(({depth}, {edge + 1}), _FT)")
            e.line(f"{sb} = cuda.shared.array(({depth}, {edge + 1}), _FT)")
            e.line(f"{tx} = cuda.threadIdx.x")
            e.line(f"{ty} = cuda.threadIdx.y")
            e.line(f"{tid} = {ty} * {across} + {tx}")
            e.line(f"{r0} = cuda.blockIdx.y * {edge}")
            e.line(f"{c0} = cuda.blockIdx.x * {edge}")
            e.line(f"{m} = {out}.shape[0]")
            e.line(f"{n} = {out}.shape[1]")
            e.line(f"{kk} = {a}.shape[{0 if trans_a else 1}]")
            for name in sum(acc, []):
                e.line(f"{name} = F(0.0)")

            def stage(tile: str, operand: str, start: str, bound: str, edge_first: bool):
                """tile[v, u] = the operand's element u along the tile's edge (from `start`,
                below `bound`) and v along this step's depth; `edge_first`: the operand is
                indexed [edge, depth], so contiguous along the depth, which the loads follow."""
                if edge_first:
                    e.line(f"{u} = {idx} // {depth}")
                    e.line(f"{v} = {idx} % {depth}")
                else:
                    e.line(f"{u} = {idx} % {edge}")
                    e.line(f"{v} = {idx} // {edge}")
                e.line(f"{i} = {start} + {u}")
                e.line(f"{j} = {k0} + {v}")
                element = f"{operand}[{i}, {j}]" if edge_first else f"{operand}[{j}, {i}]"
                e.line(f"{tile}[{v}, {u}] = {element} if {i} < {bound} and {j} < {kk} "
                       "else F(0.0)")

            with e.block(f"for {k0} in range(0, {kk}, {depth}):"):
                for load in range(edge * depth // threads):
                    e.line(f"{idx} = {tid} + {load * threads}")
                    stage(sa, a, r0, m, edge_first=not trans_a)   # a: (m, k), or (k, m)
                    stage(sb, b, c0, n, edge_first=trans_b)       # b: (k, n), or (n, k)
                e.line("cuda.syncthreads()")
                with e.block(f"for {q} in range({depth}):"):
                    left = [e.fresh("x") for _ in range(micro)]
                    right = [e.fresh("y") for _ in range(micro)]
                    for p, name in enumerate(left):
                        e.line(f"{name} = {sa}[{q}, {ty} + {p * across}]")
                    for p, name in enumerate(right):
                        e.line(f"{name} = {sb}[{q}, {tx} + {p * across}]")
                    for p, x in enumerate(left):
                        for r, y in enumerate(right):
                            e.line(f"{acc[p][r]} += {x} * {y}")
                e.line("cuda.syncthreads()")
            for p in range(micro):
                for r in range(micro):
                    e.line(f"{row} = {r0} + {ty} + {p * across}")
                    e.line(f"{col} = {c0} + {tx} + {r * across}")
                    with e.block(f"if {row} < {m} and {col} < {n}:"):
                        value = acc[p][r] if alpha == "1.0" else f"{alpha} * {acc[p][r]}"
                        if beta != "0.0":
                            value += f" + {beta} * {out}[{row}, {col}]"
                        if bias is not None:
                            value += f" + {bias}[{col}]"
                        s = e.fresh("s")
                        e.line(f"{s} = {value}")
                        if extra:
                            e.line(f"k = ({row0} + {row}) * {n} + {col}" if row0 else
                                   f"k = {row} * {n} + {col}")
                        s = self._emit_chain(chain, host, s, extra, "k")
                        e.line(f"{out}[{row}, {col}] = {s}")

    # -- the program --------------------------------------------------------------------------

    def emit_kernel(self, op, node: int) -> None:
        """A non-elementwise op's kernel, from its `cuda_kernel` template.  An op without one is
        refused (NotImplementedError), never run on the CPU instead."""
        if op.cuda_kernel is None:
            raise NotImplementedError(f"op `{op.name}` has no CUDA kernel")
        op.cuda_kernel(CudaKernel(self, node))


def supported(graph, nodes) -> list[str]:
    """Ops among `nodes` that have no CUDA kernel template (empty: all are supported)."""
    return supported_on(graph, nodes, "cuda_kernel")


def render_program(graph, order, fusion, buffers, *, dtype: str, function: str, keep,
                   update=None, title: str = "", mode: str = "eval",
                   geometry: LaunchGeometry = GPU, cache: bool = True) -> Program:
    """Source of one program: its kernels and a host function `function` launching them in
    order; `update` (a CudaUpdatePlan) ends it.  The host function takes the program's
    arguments (device arrays; a dropout key as a scalar) and `lr`, `t`."""
    writer = CudaProgramWriter(graph, order, fusion, buffers, dtype, mode, geometry)
    body, params = emit_program_body(writer, order, update)
    source = _module_source(writer, function, params, body, title, cache)
    return Program(source, function, writer.args, result_slots(buffers, keep))


def _module_source(writer, function: str, params: str, body: list, title: str,
                   cache: bool) -> str:
    """A module of `writer`'s kernels and the host function `function(params)` running `body`."""
    geometry = writer.geometry
    header = [
        f"# Generated by netlang for {sanitise_comment(title)} (CUDA). Do not edit.",
        *writer.spelling.imports,
        "import numpy as np",
        "from numba import cuda, float32, float64",
    ] + [f"from {module} import {name}" for module, name in sorted(writer.imports)] + [
        "",
        f"F = np.{writer.dtype}",
        f"_FT = {writer.dtype}",
        f"_T = {geometry.threads}",
        f"_BLOCKS = {geometry.blocks}",
        f"_WIDE_TILE = {geometry.wide_tile}",
        f"_WIDE_FROM = {geometry.wide_from}",
        "_JIT = " + ("{'cache': True}" if cache else "{}"),
        "",
        "",
        "def _grid(n):",
        "    return max(1, min(_BLOCKS, (n + _T - 1) // _T))",
        "",
        "",
        "def _cdiv(n, d):",
        "    return max(1, (n + d - 1) // d)",
        "",
        "",
        "def _wide(m, n):",
        "    # whether an m×n product takes the register-tiled kernel (LaunchGeometry)",
        "    return _cdiv(m, _WIDE_TILE) * _cdiv(n, _WIDE_TILE) >= _WIDE_FROM",
        "",
    ]
    kernels = []
    for kernel in writer.kernels:
        kernels += ["", kernel, ""]
    return "\n".join(header + kernels + ["", f"def {function}({params}):"] +
                     body + ["    return 0", ""])


# -- the training loop's own programs ----------------------------------------------------------
# Two small programs that let the training loop leave its data and its running metrics on the
# device: both are generated with the structures above, whatever the model.

# The running totals `render_metrics` adds to, in this order (float64, one element each).
METRIC_TOTALS = ("loss_sum", "examples", "correct", "positions", "diverged_step", "diverged_loss")


def render_metrics(*, loss_slot: int, scores_slot: int | None = None, labels: str | None = None,
                   rule=None, dtype: str = "float32", geometry: LaunchGeometry = GPU,
                   cache: bool = True, title: str = "") -> Program:
    """A host function `metrics(..., examples, t)` run after a training step: it adds the step
    to running totals on the device (`METRIC_TOTALS`, a float64 "scratch" argument) as the
    host's MetricAccumulator adds a step's loss and outputs: the loss (the step's objective, in
    slot `loss_slot`) times the batch's `examples`; and, with `scores_slot`, the positions
    whose predicted class equals the label in input `labels`, read as `rule` (a
    netlang.train.metrics.ClassRule) says.  The first step `t` whose loss is not finite is
    recorded with that loss, for the loop's divergence check.

    The host sums float64(loss) · examples in step order from the same start, and the product
    is exact (a float32 significand times a batch size), so the totals are the host's to the
    bit, fused multiply-add or not."""
    writer = CudaProgramWriter(None, [], None, None, dtype, geometry=geometry)
    e = writer.emitter
    totals = writer.argument("scratch", "totals")
    at = {name: i for i, name in enumerate(METRIC_TOTALS)}
    writer.host_names.add("examples")
    loss = writer.argument("slot", loss_slot)
    loss = writer.view(loss, (), "f")
    scores = positions = None
    if scores_slot is not None:
        scores = writer.argument("slot", scores_slot)
        scores = writer.view(scores, (), "f")
        target = writer.argument("input", labels)
        target = writer.view(target, (), "f")
        positions = f"{scores}.size // {rule.units}" if rule.units > 1 else f"{scores}.size"
    e.line("# the loss, and where it first stopped being finite")
    with writer.kernel("1", "1"):
        value = e.fresh("s")
        e.line(f"{value} = float64({loss}[0])")
        with e.block(f"if not math.isfinite({value}) and {totals}[{at['diverged_step']}] == 0.0:"):
            e.line(f"{totals}[{at['diverged_step']}] = t")
            e.line(f"{totals}[{at['diverged_loss']}] = {value}")
        e.line(f"{totals}[{at['loss_sum']}] += {value} * examples")
        e.line(f"{totals}[{at['examples']}] += examples")
        if scores is not None:
            e.line(f"{totals}[{at['positions']}] += {positions}")
    if scores is None:
        return _metrics_program(writer, title, cache)

    def first_highest(values: str, row: str, into: str) -> None:
        """`into` = the index of the first highest of the `rule.units` values of a row (argmax)."""
        best, c = e.fresh("best"), e.fresh("c")
        e.line(f"{best} = {values}[{row} * {rule.units}]")
        e.line(f"{into} = 0")
        with e.block(f"for {c} in range(1, {rule.units}):"):
            with e.block(f"if {values}[{row} * {rule.units} + {c}] > {best}:"):
                e.line(f"{best} = {values}[{row} * {rule.units} + {c}]")
                e.line(f"{into} = {c}")

    def count(acc: str) -> None:
        predicted, label = e.fresh("p"), e.fresh("l")
        if rule.units == 1:
            e.line(f"{predicted} = 1 if {scores}[r] > {rule.threshold!r} else 0")
        else:
            first_highest(scores, "r", predicted)
        if rule.labels == "index":
            e.line(f"{label} = {target}[r]")
        elif rule.labels == "one_hot":
            first_highest(target, "r", label)
        else:
            e.line(f"{label} = 1 if {target}[r] > 0.5 else 0")
        with e.block(f"if {predicted} == {label}:"):
            e.line(f"{acc} += 1.0")

    e.line("# correct predictions")
    # One block: thread 0 alone adds the block's total.
    writer.reduction(positions, "r", count,
                     lambda acc: e.line(f"{totals}[{at['correct']}] += {acc}"))
    return _metrics_program(writer, title, cache)


def _metrics_program(writer, title: str, cache: bool) -> Program:
    params = ", ".join([f"a{i}" for i in range(len(writer.args))] + ["examples", "t"])
    source = _module_source(writer, "metrics", params, writer.emitter.lines,
                            f"{title} training metrics", cache)
    return Program(source, "metrics", writer.args, {})


def render_gather(*, geometry: LaunchGeometry = GPU, cache: bool = True) -> Program:
    """A host function `gather(data, order, start, out)`: out[r] = data[order[start + r]] for
    every row r of `out` (examples of any shape and dtype): a batch taken from a data set held
    on the device, in an order copied in once per epoch."""
    writer = CudaProgramWriter(None, [], None, None, "float32", geometry=geometry)
    e = writer.emitter
    data, order, out = (writer.argument("input", key) for key in ("data", "order", "out"))
    writer.host_names.update(("start", "width"))
    source, target = (writer.view(v, (), "f") for v in (data, out))
    e.line(f"width = {out}.size // {out}.shape[0]")
    with writer.grid_loop("i", f"{target}.size"):
        e.line(f"{target}[i] = {source}[{order}[start + i // width] * width + i % width]")
    params = f"{data}, {order}, start, {out}"
    return Program(_module_source(writer, "gather", params, writer.emitter.lines,
                                  "a data set on the device", cache),
                   "gather", writer.args, {})


def render_product(*, trans_a: bool = False, trans_b: bool = False, dtype: str = "float32",
                   geometry: LaunchGeometry = GPU, cache: bool = True) -> Program:
    """A host function `product(a, b, out)`: out ← op(a)·op(b), the matrix product every
    program's `k.matmul` launches, alone (no bias or epilogue): for tests against NumPy, and
    for benchmarks/gpu.py to time each tiling (set the module's `_WIDE_FROM`) on given shapes."""
    writer = CudaProgramWriter(None, [], None, None, dtype, geometry=geometry)
    a, b, out = (writer.argument("input", key) for key in ("a", "b", "out"))
    writer.gemm(None, a, b, out, trans_a, trans_b)
    return Program(_module_source(writer, "product", f"{a}, {b}, {out}", writer.emitter.lines,
                                  "a matrix product", cache), "product", writer.args, {})


class CudaUpdatePlan(UpdatePlan):
    """The optimiser update on the device: the CPU's plan (which weights the gradient product
    updates itself) and templates, each parameter's loop a kernel.  Clipping by the global norm
    adds one reduction per gradient into a float64 scratch scalar (atomically across blocks),
    which every update kernel reads."""

    def emit_absorbed(self, writer, node):
        """The weight gradient's product as a tiled product kernel accumulating into the update's
        target with the optimiser rule's α and β (one pair for the first step, one for later
        steps), then the rule's per-element lines as a grid-stride kernel."""
        e, u, rule = writer.emitter, self.absorbed[node], self.rule
        graph = writer.graph
        g, x = graph.operands(node)
        g2 = writer.view(writer.var(g), graph.type_of(g).shape[-1:], "v")
        x2 = writer.view(writer.var(x), graph.type_of(x).shape[-1:], "v")
        p = writer.argument("param", u.name)
        state = self._state_flats(writer, u, self.slots)
        target = p if rule.target == "param" else state[rule.target][0]
        e.line(f"# {sanitise_comment(u.name)}: gradient product fused with the update")
        for header, (alpha, beta) in (("if t == 1:", rule.first), ("else:", rule.later)):
            with e.block(header):
                writer.gemm(None, g2, x2, target, True, False, alpha=alpha, beta=beta)
        if rule.after:
            pf = writer.view(p, (), "f")
            names = {"p": pf, **{slot: flat for slot, (_, flat) in state.items()}}
            with writer.grid_loop("i", f"{pf}.size"):
                for line in rule.after:
                    e.line(line.format(**names))

    def emit_tail(self, writer):
        """The update of every parameter not absorbed into its gradient's product, one grid-stride
        kernel each running the optimiser's template.  With clipping, the squared global norm is
        first summed into a scratch scalar (a reduction per gradient), from which each update
        kernel computes the clipping factor."""
        e, c = writer.emitter, writer.spelling
        flats = self.update_flats(writer)
        clip, norm = self.clip_norm, None
        if clip:
            norm = writer.argument("scratch", "norm2")
            with writer.kernel("1", "1"):
                e.line(f"{norm}[0] = 0.0")
            for u, pf, gf, names in flats:
                def body(acc, u=u, pf=pf, gf=gf):
                    e.line(f"gi = {gf}[i]")
                    for line in self.penalty(self.regularizers, u.layer, u.penalised, c, pf):
                        e.line(line)
                    e.line(f"{acc} += gi * gi")
                writer.reduction(f"{gf}.size", "i", body,
                                 lambda acc: e.line(f"cuda.atomic.add({norm}, 0, {acc})"))
        for u, pf, gf, names in flats:
            prologue, body = self.template(self.optimizer.args, c, names)
            if clip:
                prologue = prologue + [
                    "clipf = 1.0",
                    f"if math.sqrt({norm}[0]) > {clip!r}:",
                    f"    clipf = {clip!r} / (math.sqrt({norm}[0]) + 1e-6)"]
            with writer.grid_loop("i", f"{gf}.size", prologue):
                self.emit_element_update(e, c, u, pf, gf, body)
