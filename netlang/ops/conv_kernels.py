"""Kernel templates of the convolutions, for the CPU and CUDA code generators.

The ops themselves (arguments, shape rules, parameters, reference forward and backward
rules) are in netlang/ops/conv.py; this module attaches their kernels.

On the CPU every convolution is an im2col packing into a workspace followed by one BLAS product per
group, block by block: a block is a run of consecutive output lines (one example's row of
output pixels), sized so its column matrix stays in cache, and the product's epilogue (bias,
activation) runs while the block is still there.  Channels-last makes the columns of one
kernel offset a contiguous run of input channels; columns are ordered (group, kh, kw,
C/groups), and the PyTorch weight (F, C/groups, kh, kw) is copied into that order each step
(it is small).  The input gradient is the product of the output gradient with the weight
followed by col2im (each column added back to the input position it was read from); the
weight gradient is the product of the output gradient with the columns, accumulated over
blocks by gemm's beta.  A 1×1, stride-1, unpadded convolution needs no packing: the input's
rows are its columns.

The loop nests are plain Python in netlang/ops/conv_loops.py, compiled once by
netlang.runtime.cnn and shared by every model; the generated code holds the block loop, the
products and the epilogue.
"""

import contextlib
import dataclasses

from netlang.ops.conv import (
    _transpose_pads,
    conv2d,
    conv2d_grad_input,
    conv2d_grad_weight,
    conv_pads,
    conv_transpose2d,
    conv_transpose2d_grad_input,
)

COLUMN_BUDGET = 1 << 16   # elements of a block's column matrix (256 KiB in float32)
# On a GPU a block is one launch of each kernel: far larger (16 MiB in float32), yet bounded,
# since the whole batch's columns (VGG's at batch 1024: gigabytes) need not fit.
CUDA_COLUMN_BUDGET = 1 << 22


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A convolution from the input side (H, W, C) to the output side (Ho, Wo, F), with
    input row oh·sh − pt + i·dh under output row oh and kernel row i (columns alike)."""
    H: int
    W: int
    C: int
    Ho: int
    Wo: int
    F: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    groups: int
    kind: str = "forward"   # the kernel: forward, input (gradient) or weight (gradient)
    target: str = "cpu"     # whose kernels: "cuda" packs far larger blocks, never planar
    workers: int = 1        # CPU threads the batch is split among, each with its workspaces

    @property
    def Cg(self) -> int:
        """Input channels per group."""
        return self.C // self.groups

    @property
    def Fg(self) -> int:
        """Filters (output channels) per group."""
        return self.F // self.groups

    @property
    def Kg(self) -> int:
        """Columns per group: kh·kw·C/groups."""
        return self.kh * self.kw * self.Cg

    @property
    def K(self) -> int:
        """Columns of the whole column matrix, every group's: kh·kw·C."""
        return self.groups * self.Kg

    @property
    def direct(self) -> bool:
        """The input's rows are the column matrix (1×1 kernel, stride 1, no padding)."""
        return (self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.pt == self.pl == 0
                and (self.Ho, self.Wo) == (self.H, self.W))

    @property
    def reordered(self) -> bool:
        """Whether the weight's (C/groups, kh, kw) order differs from the columns' (kh, kw, C/groups)."""
        return self.Cg > 1 and self.kh * self.kw > 1

    @property
    def planar(self) -> bool:
        """Transposed columns from channel planes (netlang/ops/conv_loops.py): a stride-1
        convolution of a thin input (an image's first layer), whose im2col rows would be short
        runs."""
        return (self.target == "cpu" and self.kind != "input" and self.groups == 1
                and self.sh == self.sw == 1
                and not self.direct and self.kw * self.C < 8)

    @property
    def Wp(self) -> int:
        """Width of a planar row: the output's columns plus the kernel's dilated reach."""
        return self.Wo + (self.kw - 1) * self.dw

    @property
    def S(self) -> int:
        """Columns of one example in the planar layout."""
        return self.Ho * self.Wp

    @property
    def lines(self) -> int:
        """Output lines per block (whole examples in the planar layout)."""
        if self.planar:
            return self.Ho * max(1, COLUMN_BUDGET // (self.S * max(self.K, self.F)))
        budget = CUDA_COLUMN_BUDGET if self.target == "cuda" else COLUMN_BUDGET
        return max(1, budget // (self.Wo * max(self.K, self.F)))

    @property
    def parallel(self) -> bool:
        """Whether the batch's examples are split among worker threads (CPU only)."""
        return self.workers > 1 and self.target == "cpu"

    def workspaces(self) -> list:
        """(name, (shape, batched)): the weight in column order (or its gradient's sum) and
        the block's column matrix, each only where needed; in the planar layout a channel
        plane, the transposed columns and the transposed output (or output gradient).  Split
        among workers, each has its own block workspaces (a leading axis of `workers`) and,
        for the weight gradient, its own partial sum (`partial`), added up after them."""
        def own(shape):
            return ((self.workers,) + shape if self.parallel else shape), False
        names = []
        if self.planar:
            width = self.lines // self.Ho * self.S
            plane = (self.Ho + (self.kh - 1) * self.dh) * self.Wp + (self.kw - 1) * self.dw
            names += [("plane", own((self.C, plane))), ("columns", own((self.K, width))),
                      ("transposed", own((self.F, width)))]
            if self.kind == "weight" and self.parallel:
                names.append(("partial", own((self.F, self.K))))
            return names
        if self.reordered:
            names.append(("weight", ((self.F, self.Kg), False)))
        if not self.direct:
            names.append(("columns", own((self.lines * self.Wo, self.K))))
        if self.kind == "weight" and self.parallel:
            names.append(("partial", own((self.F, self.Kg))))
        return names


def _explicit_pads(in_hw, a):
    padding = a["padding"]
    if isinstance(padding, tuple) and all(isinstance(p, tuple) for p in padding):
        return padding
    return conv_pads(in_hw, a)


def _geometry(in_side, out_side, weight_shape, a, pads, kind) -> ConvGeometry:
    """in_side (N, H, W, C) and out_side (N, Ho, Wo, F) types; weight (F, C/groups, kh, kw)."""
    (pt, _), (pl, _) = pads
    return ConvGeometry(H=in_side.shape[1], W=in_side.shape[2], C=in_side.shape[3],
                        Ho=out_side.shape[1], Wo=out_side.shape[2], F=weight_shape[0],
                        kh=weight_shape[2], kw=weight_shape[3], sh=a["stride"][0], sw=a["stride"][1],
                        dh=a["dilation"][0], dw=a["dilation"][1], pt=pt, pl=pl, groups=a["groups"],
                        kind=kind, workers=a.get("_workers", 1))


def _forward_geometry(in_types, out_type, a):
    """conv2d (x, w) and conv_transpose2d_grad_input (g, w): x ⋆ w, cropped to the output."""
    x, w = in_types[0], in_types[1]
    return _geometry(x, out_type, w.shape, a, _explicit_pads(x.shape[1:3], a), "forward")


def _grad_input_geometry(in_types, out_type, a):
    return _geometry(out_type, in_types[0], in_types[1].shape, a, a["padding"], "input")


def _grad_weight_geometry(in_types, out_type, a):
    return _geometry(in_types[1], in_types[0], out_type.shape, a, a["padding"], "weight")


def _transpose_geometry(in_types, out_type, a):
    return _geometry(out_type, in_types[0], in_types[1].shape, a, _transpose_pads(a), "input")


def _workspace_rule(geometry):
    return lambda in_types, out_type, a: [spec for _, spec in
                                          geometry(in_types, out_type, a).workspaces()]


def _workspaces(k, geo) -> dict:
    return {name: k.workspace(i) for i, (name, _) in enumerate(geo.workspaces())}


_SHARED = ("weight",)   # the workspace all workers read; each has its own of the others


@contextlib.contextmanager
def _examples(k, geo, batch_of: str, ws: dict):
    """The batch's examples, split among the program's worker threads where the geometry
    says so (`Kernel.worker_chunks`): each worker runs the block loop over its own examples,
    whose outputs, input gradients and columns are disjoint from the others'.  Yields
    (first, stop, own): the run's bounds (None: the whole batch) and the workspaces the
    worker uses, its own where each has one."""
    if not geo.parallel:
        yield None, None, ws
        return
    with k.worker_chunks(f"{batch_of}.shape[0]") as (first, stop, worker):
        yield first, stop, {name: var if name in _SHARED else k.host_value(f"{var}[{worker}]", "ws")
                            for name, var in ws.items()}


def _emit_weight_rows(k, geo, w, ws) -> str:
    """The weight (F, C/groups, kh, kw) as rows (F, Kg) in column order (kh, kw, C/groups)."""
    if not geo.reordered:
        return k.matrix(w, geo.Kg)
    wr = ws["weight"]
    k.line(f"{k.helper('weight_to_rows')}({w}, {wr}, {geo.F}, {geo.Cg}, {geo.kh}, {geo.kw})")
    return wr


class _Blocks:
    """The loop over blocks of output lines: names for the block's line and row bounds, over
    the whole batch or over examples `first` to `stop` (a worker's run).  Host code: on a GPU
    the loop runs in the host function, launching each block's kernels."""

    def __init__(self, k, geo, batch_of: str, first: str | None = None, stop: str | None = None):
        self.k, self.geo = k, geo
        if first is None:
            self.start = "0"
            self.stop = self.nl = k.host_value(f"{batch_of}.shape[0] * {geo.Ho}", "nl")
        else:
            self.start = k.host_value(f"{first} * {k.size('Ho', geo.Ho)}", "l")
            self.stop = k.host_value(f"{stop} * {k.size('Ho', geo.Ho)}", "l")

    def __enter__(self):
        k, geo = self.k, self.geo
        self.l0 = k.fresh("l")
        lines, Wo = k.size("lines", geo.lines), k.size("Wo", geo.Wo)
        self._loop = k.host_block(f"for {self.l0} in range({self.start}, {self.stop}, {lines}):",
                                  defines=(self.l0,))
        self._loop.__enter__()
        self.l1 = k.host_value(f"min({self.l0} + {lines}, {self.stop})", "l")
        self.r0 = k.host_value(f"{self.l0} * {Wo}", "r")
        self.r1 = k.host_value(f"{self.l1} * {Wo}", "r")
        return self

    def __exit__(self, *exc):
        return self._loop.__exit__(*exc)


def _geometry_args(k, geo) -> str:
    """im2col's and col2im's geometry: the image's sizes as the kernel reads them (`Kernel.size`:
    parameters of a worker function), the window as numbers, which those loop nests are
    compiled for (netlang/runtime/cnn.py)."""
    sizes = [k.size(role, getattr(geo, role)) for role in ("H", "W", "C", "Ho", "Wo")]
    window = [str(v) for v in (geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.dw, geo.pt, geo.pl,
                               geo.groups)]
    return ", ".join(sizes + window)


def _im2col(k, geo, blocks, x, cols):
    k.line(f"{k.helper('im2col')}({x}, {cols}, {blocks.l0}, {blocks.l1}, {_geometry_args(k, geo)})")


def _col2im(k, geo, blocks, dx, cols):
    k.line(f"{k.helper('col2im')}({cols}, {dx}, {blocks.l0}, {blocks.l1}, {_geometry_args(k, geo)})")


def _epilogue(k, block, bias, row0):
    """The bias and fused ops on a block of output rows (a compiled helper for a bias alone)."""
    if k.fused:
        k.epilogue(block, bias=bias, row0=row0)
    elif bias is not None:
        k.line(f"{k.helper('add_bias')}({block}, {bias})")


def _per_group(k, geo, call):
    """One product for groups = 1; else one per group on column blocks (call(kslice, fslice))."""
    if geo.groups == 1:
        k.line(call("", ""))
        return
    grp = k.fresh("g")
    with k.block(f"for {grp} in range({geo.groups}):"):
        k.line(call(f"{grp} * {geo.Kg}:({grp} + 1) * {geo.Kg}",
                    f"{grp} * {geo.Fg}:({grp} + 1) * {geo.Fg}"))


def _cols(view, s):
    """A column block of a matrix view (the whole view when s is empty)."""
    if not s:
        return view
    return f"{view}[:, {s}]" if not view.endswith("]") else f"{view[:-1]}, {s}]"


def _row_block(view, s):
    return f"{view}[{s}]" if s else view


def _planar_block(k, geo, b, x, ws):
    """The block's examples and its transposed columns; returns (n0, n1, width)."""
    n0, n1, width = k.fresh("n"), k.fresh("n"), k.fresh("wd")
    k.line(f"{n0} = {b.l0} // {geo.Ho}")
    k.line(f"{n1} = {b.l1} // {geo.Ho}")
    k.line(f"{width} = ({n1} - {n0}) * {geo.S}")
    k.line(f"{k.helper('planar_columns')}({x}, {ws['plane']}, {ws['columns']}, {n0}, {n1}, "
           f"{geo.H}, {geo.W}, {geo.C}, {geo.Ho}, {geo.Wo}, {geo.kh}, {geo.kw}, {geo.dh}, "
           f"{geo.dw}, {geo.pt}, {geo.pl})")
    return n0, n1, width


def _block_columns(k, geo, b, x, x2, ws) -> str:
    """The block's column matrix: rows of x itself for a direct (1×1) convolution, else
    im2col into the columns workspace."""
    if geo.direct:
        return f"{x2}[{b.r0}:{b.r1}]"
    _im2col(k, geo, b, x, ws["columns"])
    return f"{ws['columns']}[:{b.r1} - {b.r0}]"


def _sum_partials(k, geo, ws, total) -> None:
    """A weight gradient summed by workers: their partial sums, added in worker order."""
    if geo.parallel:
        k.line(f"{k.helper('sum_partials')}({ws['partial']}, {total})")


def emit_conv(k, geo, x, w, out, bias=None):
    """out (N, Ho, Wo, F) ← x (N, H, W, C) ⋆ w (F, C/groups, kh, kw), + bias, + fused ops."""
    ws = _workspaces(k, geo)
    if geo.planar:
        w2, out2 = k.matrix(w, geo.K), k.matrix(out, geo.F)
        if k.fused:
            k.fused_operands()
        with _examples(k, geo, out, ws) as (first, stop, own), \
                _Blocks(k, geo, out, first, stop) as b:
            n0, n1, width = _planar_block(k, geo, b, x, own)
            k.line(f"{k.gemm}(False, False, 1.0, {w2}, {own['columns']}[:, :{width}], 0.0, "
                   f"{own['transposed']}[:, :{width}])")
            k.line(f"{k.helper('planar_to_rows')}({own['transposed']}, {out}, {n0}, {n1}, "
                   f"{geo.Ho}, {geo.Wo}, {geo.F}, {geo.Wp})")
            if bias is not None or k.fused:
                block = k.fresh("ob")
                k.line(f"{block} = {out2}[{b.r0}:{b.r1}]")
                _epilogue(k, block, bias, b.r0)
        return
    wr = _emit_weight_rows(k, geo, w, ws)
    out2 = k.matrix(out, geo.F)
    x2 = k.matrix(x, geo.C) if geo.direct else None
    if k.fused:
        k.fused_operands()   # their views, made once outside the loop
    with _examples(k, geo, out, ws) as (first, stop, own), _Blocks(k, geo, out, first, stop) as b:
        a = _block_columns(k, geo, b, x, x2, own)
        c = f"{out2}[{b.r0}:{b.r1}]"
        _per_group(k, geo, lambda ks, fs: f"{k.gemm}(False, True, 1.0, {_cols(a, ks)}, "
                                          f"{_row_block(wr, fs)}, 0.0, {_cols(c, fs)})")
        if bias is not None or k.fused:
            block = k.fresh("ob")
            k.line(f"{block} = {c}")
            _epilogue(k, block, bias, b.r0)


def emit_conv_transpose(k, geo, g, w, out, bias=None):
    """out (N, H, W, C) ← the adjoint of the convolution applied to g (N, Ho, Wo, F): conv2d's
    input gradient, and a transposed convolution's forward (+ bias, + fused ops)."""
    ws = _workspaces(k, geo)
    wr = _emit_weight_rows(k, geo, w, ws)
    g2 = k.matrix(g, geo.F)
    out2 = k.matrix(out, geo.C)
    if not geo.direct and not geo.parallel:
        k.line(f"{k.flat(out)}[:] = 0")
    if k.fused:
        k.fused_operands()
    pixels = geo.H * geo.W   # rows of out2 per example
    with _examples(k, geo, g, ws) as (first, stop, own):
        if first is not None and not geo.direct:   # the worker's own examples
            pixels = k.size("pixels", pixels)
            mine = k.host_value(f"{out2}[{first} * {pixels}:{stop} * {pixels}]", "ob")
            k.line(f"{mine}[:, :] = 0")
        with _Blocks(k, geo, g, first, stop) as b:
            a = f"{g2}[{b.r0}:{b.r1}]"
            c = f"{out2}[{b.r0}:{b.r1}]" if geo.direct else f"{own['columns']}[:{b.r1} - {b.r0}]"
            _per_group(k, geo, lambda ks, fs: f"{k.gemm}(False, False, 1.0, {_cols(a, fs)}, "
                                              f"{_row_block(wr, fs)}, 0.0, {_cols(c, ks)})")
            if geo.direct:
                if bias is not None or k.fused:
                    block = k.fresh("ob")
                    k.line(f"{block} = {c}")
                    _epilogue(k, block, bias, b.r0)
            else:
                _col2im(k, geo, b, out, own["columns"])
        if first is not None and not geo.direct:
            _epilogue(k, mine, bias, f"{first} * {pixels}")
    if not geo.direct and not geo.parallel:
        _epilogue(k, out2, bias, None)


def emit_conv_weight_grad(k, geo, g, x, out):
    """out (F, C/groups, kh, kw) ← Σ over examples and output pixels of g ⊗ the input window."""
    ws = _workspaces(k, geo)
    if geo.planar:
        total = k.matrix(out, geo.K)   # (F, C·kh·kw): the planar rows' order
        with _examples(k, geo, g, ws) as (first, stop, own):
            beta = k.fresh("beta")   # named inside: a worker function renumbers its own names
            acc = own["partial"] if geo.parallel else total
            with _Blocks(k, geo, g, first, stop) as b:
                k.line(f"{beta} = 0.0 if {b.l0} == {b.start} else 1.0")
                n0, n1, width = _planar_block(k, geo, b, x, own)
                k.line(f"{k.helper('rows_to_planar')}({g}, {own['transposed']}, {n0}, {n1}, "
                       f"{geo.Ho}, {geo.Wo}, {geo.F}, {geo.Wp})")
                k.line(f"{k.gemm}(False, True, 1.0, {own['transposed']}[:, :{width}], "
                       f"{own['columns']}[:, :{width}], {beta}, {acc})")
            with k.block(f"if {b.stop} == {b.start}:"):   # no example: no product ran
                k.line(f"{acc}[:, :] = 0")
        _sum_partials(k, geo, ws, total)
        return
    g2 = k.matrix(g, geo.F)
    total = ws["weight"] if geo.reordered else k.matrix(out, geo.Kg)
    x2 = k.matrix(x, geo.C) if geo.direct else None   # im2col packs the columns
    with _examples(k, geo, g, ws) as (first, stop, own):
        beta = k.fresh("beta")   # named inside: a worker function renumbers its own names
        acc = own["partial"] if geo.parallel else total
        with _Blocks(k, geo, g, first, stop) as b:
            k.line(f"{beta} = 0.0 if {b.l0} == {b.start} else 1.0")
            a = _block_columns(k, geo, b, x, x2, own)
            gb = f"{g2}[{b.r0}:{b.r1}]"
            _per_group(k, geo, lambda ks, fs: f"{k.gemm}(True, False, 1.0, {_cols(gb, fs)}, "
                                              f"{_cols(a, ks)}, {beta}, {_row_block(acc, fs)})")
        with k.block(f"if {b.stop} == {b.start}:"):   # no example: no product ran
            k.line(f"{acc}[:, :] = 0")
    _sum_partials(k, geo, ws, total)
    if geo.reordered:
        k.line(f"{k.helper('rows_to_weight')}({total}, {out}, {geo.F}, {geo.Cg}, {geo.kh}, {geo.kw})")


def _bias_of(k):
    return k.ins[2] if len(k.ins) > 2 else None


def _kernel(geometry, emit, with_bias=False):
    def kernel(k):
        geo = geometry(k.in_types, k.out_type, dict(k.attrs, _workers=k.workers))
        args = [k.ins[0], k.ins[1], k.out] + ([_bias_of(k)] if with_bias else [])
        emit(k, geo, *args)
    return kernel


conv2d.cpu_workspace = _workspace_rule(_forward_geometry)
conv2d.cpu_kernel = _kernel(_forward_geometry, emit_conv, with_bias=True)
# A conv2d of g whose output is cropped to in_hw: the crop is the output's size, so the
# forward kernel serves as it is.
conv_transpose2d_grad_input.cpu_workspace = _workspace_rule(_forward_geometry)
conv_transpose2d_grad_input.cpu_kernel = _kernel(_forward_geometry, emit_conv)
conv2d_grad_input.cpu_workspace = _workspace_rule(_grad_input_geometry)
conv2d_grad_input.cpu_kernel = _kernel(_grad_input_geometry, emit_conv_transpose)
conv_transpose2d.cpu_workspace = _workspace_rule(_transpose_geometry)
conv_transpose2d.cpu_kernel = _kernel(_transpose_geometry, emit_conv_transpose, with_bias=True)
conv2d_grad_weight.cpu_workspace = _workspace_rule(_grad_weight_geometry)
conv2d_grad_weight.cpu_kernel = _kernel(_grad_weight_geometry, emit_conv_weight_grad)
# Every product but the weight gradient ends in a loop over its output (the bias add), where
# the ops fused after it run.
for _op in (conv2d, conv2d_grad_input, conv_transpose2d, conv_transpose2d_grad_input):
    _op.epilogue_host = True


# ---- CUDA kernels -------------------------------------------------------------------------------
#
# The same blocks and products on the device (netlang/codegen/cuda.py): the host function runs
# the loop over blocks of output lines (`_Blocks`, far larger blocks than the CPU's), and each
# loop nest that the CPU calls (netlang/ops/conv_loops.py) is a grid-stride kernel here, one
# thread per element it writes: the weight in column order, im2col (one thread per column
# element), col2im as a gather (one thread per input element, summing the columns read from it:
# no atomics) and the weight gradient's reordering.  Products are the tiled `k.matmul`, a
# convolution's bias and fused ops its epilogue (groups > 1: one product per group, then the
# epilogue as a kernel of its own).  Kernel-local names are plain words: generated host names
# all end in a counter.

def _cuda_decompose(k, index: str, names_sizes) -> None:
    """Emits `name = …` for each (name, size), innermost last: `index` as mixed-radix digits."""
    rest = index
    for name, size in reversed(names_sizes[1:]):
        k.line(f"{name} = {rest} % {size}")
        k.line(f"q_{name} = {rest} // {size}")
        rest = f"q_{name}"
    k.line(f"{names_sizes[0][0]} = {rest}")


def _cuda_weight_rows(k, geo, w, ws) -> str:
    """The weight (F, C/groups, kh, kw) as rows (F, Kg) in column order (kh, kw, C/groups)."""
    if not geo.reordered:
        return k.matrix(w, geo.Kg)
    wf, rf = k.flat(w), k.flat(ws["weight"])
    with k.parallel(f"{rf}.size", "i"):
        _cuda_decompose(k, "i", [("fo", geo.F), ("ij", geo.kh * geo.kw), ("ch", geo.Cg)])
        k.line(f"{rf}[i] = {wf}[(fo * {geo.Cg} + ch) * {geo.kh * geo.kw} + ij]")
    return ws["weight"]


def _cuda_rows_to_weight(k, geo, rows, w) -> None:
    rf, wf = k.flat(rows), k.flat(w)
    with k.parallel(f"{rf}.size", "i"):
        _cuda_decompose(k, "i", [("fo", geo.F), ("ij", geo.kh * geo.kw), ("ch", geo.Cg)])
        k.line(f"{wf}[(fo * {geo.Cg} + ch) * {geo.kh * geo.kw} + ij] = {rf}[i]")


def _cuda_im2col(k, geo, b, x, cols) -> None:
    """cols' first rows ← the input windows of the block's output pixels (zeros in the padding)."""
    xf, cf = k.flat(x), k.flat(cols)
    with k.parallel(f"({b.r1} - {b.r0}) * {geo.K}", "i"):
        k.line(f"px = {b.r0} + i // {geo.K}")
        _cuda_decompose(k, "px", [("ex", None), ("oh", geo.Ho), ("ow", geo.Wo)])
        _cuda_decompose(k, f"i % {geo.K}", [("grp", None), ("ki", geo.kh), ("kj", geo.kw),
                                             ("ch", geo.Cg)])
        k.line(f"ih = oh * {geo.sh} - {geo.pt} + ki * {geo.dh}")
        k.line(f"iw = ow * {geo.sw} - {geo.pl} + kj * {geo.dw}")
        k.line(f"{cf}[i] = {xf}[((ex * {geo.H} + ih) * {geo.W} + iw) * {geo.C} + grp * {geo.Cg} "
               f"+ ch] if ih >= 0 and ih < {geo.H} and iw >= 0 and iw < {geo.W} else F(0.0)")


def _cuda_col2im(k, geo, b, dx, cols) -> None:
    """dx += the block's columns, gathered per input element of the block's examples from every
    (output pixel, kernel offset) that read it."""
    dxf, cf = k.flat(dx), k.flat(cols)
    per_example = geo.H * geo.W * geo.C
    n0 = k.host_value(f"{b.l0} // {geo.Ho}", "n")
    n1 = k.host_value(f"({b.l1} + {geo.Ho - 1}) // {geo.Ho}", "n")
    with k.parallel(f"({n1} - {n0}) * {per_example}", "i"):
        k.line(f"at = {n0} * {per_example} + i")
        _cuda_decompose(k, "at", [("ex", None), ("ih", geo.H), ("iw", geo.W), ("grp", geo.groups),
                                  ("ch", geo.Cg)])
        k.line("total = F(0.0)")
        with k.block(f"for ki in range({geo.kh}):"):
            k.line(f"th = ih + {geo.pt} - ki * {geo.dh}")
            k.line(f"oh = th // {geo.sh}")
            k.line(f"line = ex * {geo.Ho} + oh")
            with k.block(f"if th >= 0 and th % {geo.sh} == 0 and oh < {geo.Ho} and "
                         f"line >= {b.l0} and line < {b.l1}:"):
                with k.block(f"for kj in range({geo.kw}):"):
                    k.line(f"tw = iw + {geo.pl} - kj * {geo.dw}")
                    k.line(f"ow = tw // {geo.sw}")
                    with k.block(f"if tw >= 0 and tw % {geo.sw} == 0 and ow < {geo.Wo}:"):
                        k.line(f"total += {cf}[((line - {b.l0}) * {geo.Wo} + ow) * {geo.K} + "
                               f"grp * {geo.Kg} + (ki * {geo.kw} + kj) * {geo.Cg} + ch]")
        k.line(f"{dxf}[at] += total")


def _cuda_views(k, *arrays) -> None:
    """Flat views made before the loop over blocks, which the kernels inside it then share."""
    for array in arrays:
        k.flat(array)


def _cuda_fill_zero(k, var) -> None:
    vf = k.flat(var)
    with k.parallel(f"{vf}.size", "i"):
        k.line(f"{vf}[i] = F(0.0)")


def _cuda_epilogue(k, block, row0, bias) -> None:
    """The bias and fused ops on `block`, the output's rows from `row0` on, as a kernel."""
    if bias is None and not k.fused:
        return
    operands = k.fused_operands()
    with k.parallel(f"{block}.size", "i"):
        k.line(f"row = i // {block}.shape[1]")
        k.line(f"col = i % {block}.shape[1]")
        s = k.fresh("s")
        k.line(f"{s} = {block}[row, col]" + (f" + {bias}[col]" if bias is not None else ""))
        s = k.apply_fused(s, operands, f"({row0} + row) * {block}.shape[1] + col")
        k.line(f"{block}[row, col] = {s}")


def _cuda_products(k, geo, a, b, c, a_cols: bool, c_cols: bool, *, bias=None, row0=None,
                   epilogue=True, **options) -> None:
    """c ← the product, + bias, + fused ops (epilogue): one `k.matmul` with its own epilogue
    (groups = 1), else one bare product per group on column blocks, of `a` (a_cols: by
    columns, else by its F rows of b) and of `c`, then the epilogue over all of `c` as a kernel
    of its own (a group's product sees only its block of columns, so the bias is added once,
    there).  `options` go to each product."""
    if geo.groups == 1:
        k.matmul(a, b, c, bias=bias, row0=row0, epilogue=epilogue, **options)
        return
    grp = k.fresh("g")
    with k.host_block(f"for {grp} in range({geo.groups}):", defines=(grp,)):
        ks = f"{grp} * {geo.Kg}:({grp} + 1) * {geo.Kg}"
        fs = f"{grp} * {geo.Fg}:({grp} + 1) * {geo.Fg}"
        k.matmul(k.host_value(f"{a}[:, {ks if a_cols else fs}]", "v"),
                 k.host_value(f"{b}[{fs}]", "v"),
                 k.host_value(f"{c}[:, {ks if c_cols else fs}]", "v"), epilogue=False, **options)
    if epilogue:
        _cuda_epilogue(k, c, row0, bias)


def _cuda_block_columns(k, geo, b, x, x2, ws) -> str:
    """The block's column matrix: rows of x itself for a direct (1×1) convolution, else
    im2col into the columns workspace."""
    if geo.direct:
        return k.host_value(f"{x2}[{b.r0}:{b.r1}]", "v")
    _cuda_im2col(k, geo, b, x, ws["columns"])
    return k.host_value(f"{ws['columns']}[:{b.r1} - {b.r0}]", "v")


def emit_conv_cuda(k, geo, x, w, out, bias=None):
    """out (N, Ho, Wo, F) ← x ⋆ w, + bias, + fused ops: per block, im2col and the product."""
    ws = _workspaces(k, geo)
    wr = _cuda_weight_rows(k, geo, w, ws)
    out2 = k.matrix(out, geo.F)
    x2 = k.matrix(x, geo.C) if geo.direct else _cuda_views(k, x, ws["columns"])
    if k.fused:
        k.fused_operands()   # their views, made once outside the loop
    with _Blocks(k, geo, out) as b:
        a = _cuda_block_columns(k, geo, b, x, x2, ws)
        c = k.host_value(f"{out2}[{b.r0}:{b.r1}]", "v")
        _cuda_products(k, geo, a, wr, c, True, False, trans_b=True, bias=bias, row0=b.r0)


def emit_conv_transpose_cuda(k, geo, g, w, out, bias=None):
    """out (N, H, W, C) ← the adjoint of the convolution applied to g (N, Ho, Wo, F): per
    block, the product into columns and col2im (+ bias, + fused ops at the end)."""
    ws = _workspaces(k, geo)
    wr = _cuda_weight_rows(k, geo, w, ws)
    g2, out2 = k.matrix(g, geo.F), k.matrix(out, geo.C)
    if not geo.direct:
        _cuda_views(k, out, ws["columns"])
        _cuda_fill_zero(k, out)
    if k.fused:
        k.fused_operands()
    with _Blocks(k, geo, g) as b:
        a = k.host_value(f"{g2}[{b.r0}:{b.r1}]", "v")
        if geo.direct:
            c = k.host_value(f"{out2}[{b.r0}:{b.r1}]", "v")
            _cuda_products(k, geo, a, wr, c, False, True, bias=bias, row0=b.r0)
        else:
            c = k.host_value(f"{ws['columns']}[:{b.r1} - {b.r0}]", "v")
            _cuda_products(k, geo, a, wr, c, False, True, epilogue=False)
            _cuda_col2im(k, geo, b, out, ws["columns"])
    if not geo.direct:
        _cuda_epilogue(k, out2, "0", bias)


def emit_conv_weight_grad_cuda(k, geo, g, x, out):
    """out (F, C/groups, kh, kw) ← Σ over blocks of gᵀ · columns (the first block's product
    writes, later ones add)."""
    ws = _workspaces(k, geo)
    g2 = k.matrix(g, geo.F)
    acc = ws["weight"] if geo.reordered else k.matrix(out, geo.Kg)
    x2 = k.matrix(x, geo.C) if geo.direct else _cuda_views(k, x, ws["columns"])
    with _Blocks(k, geo, g) as b:
        a = _cuda_block_columns(k, geo, b, x, x2, ws)
        gb = k.host_value(f"{g2}[{b.r0}:{b.r1}]", "v")
        for header, accumulate in ((f"if {b.l0} == 0:", False), ("else:", True)):
            with k.host_block(header):
                if geo.groups == 1:
                    k.matmul(gb, a, acc, trans_a=True, epilogue=False, accumulate=accumulate)
                    continue
                grp = k.fresh("g")
                with k.host_block(f"for {grp} in range({geo.groups}):", defines=(grp,)):
                    ks = f"{grp} * {geo.Kg}:({grp} + 1) * {geo.Kg}"
                    fs = f"{grp} * {geo.Fg}:({grp} + 1) * {geo.Fg}"
                    k.matmul(k.host_value(f"{gb}[:, {fs}]", "v"), k.host_value(f"{a}[:, {ks}]", "v"),
                             k.host_value(f"{acc}[{fs}]", "v"), trans_a=True, epilogue=False,
                             accumulate=accumulate)
    with k.host_block(f"if {b.nl} == 0:"):   # an empty batch: no product ran
        _cuda_fill_zero(k, acc)
    if geo.reordered:
        _cuda_rows_to_weight(k, geo, acc, out)


def _cuda_geometry(geometry):
    return lambda in_types, out_type, a: dataclasses.replace(geometry(in_types, out_type, a),
                                                             target="cuda")


for _op, _geo, _emit, _bias in (
        (conv2d, _forward_geometry, emit_conv_cuda, True),
        (conv_transpose2d_grad_input, _forward_geometry, emit_conv_cuda, False),
        (conv2d_grad_input, _grad_input_geometry, emit_conv_transpose_cuda, False),
        (conv_transpose2d, _transpose_geometry, emit_conv_transpose_cuda, True),
        (conv2d_grad_weight, _grad_weight_geometry, emit_conv_weight_grad_cuda, False)):
    _op.cuda_workspace = _workspace_rule(_cuda_geometry(_geo))
    _op.cuda_kernel = _kernel(_cuda_geometry(_geo), _emit, with_bias=_bias)
