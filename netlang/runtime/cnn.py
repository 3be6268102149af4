"""The CNN kernels' loop nests, compiled: generated code imports them from here by name.

Each is written as plain Python beside its op (netlang/ops/conv_loops.py, pool_loops.py,
norm_loops.py, and dense_loops.py for every bias's gradient) and compiled here once per
machine for each dtype and set of constant arguments (Numba's disk cache; a geometry known
when compiled made LeNet-5's training step 15% faster than one read at run time; im2col and
col2im are compiled per stride, dilation and groups only, the weight's reordering per kernel
size, see below), shared by
every model with that geometry: a generated step calls them by name instead of carrying its
own copy of each loop nest (see conv_loops.py and netlang/runtime/linkage.py for why).  The
names are the ones the ops' CPU templates emit (`Kernel.helper`), so they stay fixed; the
tiny helpers that other loop nests call are inlined into them.
"""

from __future__ import annotations

from netlang.ops import conv_loops, dense_loops, norm_loops, pool_loops
from netlang.runtime.jit import compiled_generic, compiled_shared, compiled_window, inlined, stack_float64s

# ---- convolutions ------------------------------------------------------------------------------

# im2col and col2im are specialised on their convolution's strides, dilations and groups
# only (`compiled_window`), which their loops step by and branch on; the image's sizes (H, W,
# C, Ho, Wo), the kernel's size and the padding are plain values, so one compilation serves
# every layer of a stride: ResNet-18's 7×7, 3×3 and 1×1 convolutions share two im2col (stride
# 1 and 2) where they had four, and two col2im where they had three (its cold step compiled
# 33.5 → 30.3 s in one process).  With the kernel's size known too, LLVM unrolled the loop
# over its rows into a copy per row (LeNet-5's im2col and col2im: 0.15-0.5 s more of LLVM
# each, one process) for no speed (a kernel row's run is kw·C values, C plain anyway:
# LeNet-5 at 64, 5.54 against 5.60 ms a step; ResNet-18 at 32, 3.71 against 3.72 s;
# `turns.py`).  The weight's reordering between (F, C, kh, kw) and rows is compiled once for
# every size (`compiled_generic`): a weight is small beside the images a convolution reads
# (ResNet-18's largest, 2.4 M values, once a step; its first im2col at batch 32, 59 M), and
# ResNet-18's three kernel sizes compiled each of the two three times.  The pooling loops and
# the planar (thin-input) ones that reorder a product's output stay specialised on every size
# (`compiled_shared`): run over 6 or 16 channels not known when compiled, LeNet-5's pooling
# took 1.5 times as long, and a model has few of them.  `planar_columns` is specialised on the
# channel count only (its inner loop over an input pixel's channels): with its kernel size
# known too, LLVM unrolled its kh·kw runs into 25 vectorised copies for LeNet-5's 5×5 window,
# 14,000 lines of optimised IR and 0.8 s of LLVM against 0.3 s now (this machine, one
# process), at the same training speed (`turns.py`).
CONV_STEPS = ("sh", "sw", "dh", "dw", "groups")

_copy_run = inlined(conv_loops.copy_run)
_add_run = inlined(conv_loops.add_run)
_zero_run = inlined(conv_loops.zero_run)
_inner_columns = inlined(conv_loops.inner_columns)

weight_to_rows = compiled_generic(conv_loops.weight_to_rows)
rows_to_weight = compiled_generic(conv_loops.rows_to_weight)
sum_partials = compiled_shared(conv_loops.sum_partials)
add_bias = compiled_shared(conv_loops.add_bias)
im2col = compiled_window(conv_loops.im2col, _copy_run, _zero_run, _inner_columns,
                         literal=CONV_STEPS)
col2im = compiled_window(conv_loops.col2im, _add_run, _inner_columns, literal=CONV_STEPS)
planar_columns = compiled_window(conv_loops.planar_columns, _copy_run, literal=("C",))
planar_to_rows = compiled_shared(conv_loops.planar_to_rows)
rows_to_planar = compiled_shared(conv_loops.rows_to_planar)

# ---- pooling -----------------------------------------------------------------------------------

_clipped_window = inlined(pool_loops.clipped_window)
_average_count = inlined(pool_loops.average_count)

maxpool_forward = compiled_shared(pool_loops.maxpool_forward, _clipped_window)
maxpool_backward = compiled_shared(pool_loops.maxpool_backward, _clipped_window)
avgpool_forward = compiled_shared(pool_loops.avgpool_forward, _clipped_window, _average_count)
avgpool_backward = compiled_shared(pool_loops.avgpool_backward, _clipped_window, _average_count)
global_avgpool_forward = compiled_shared(pool_loops.global_avgpool_forward)
global_avgpool_backward = compiled_shared(pool_loops.global_avgpool_backward)

# ---- biases ------------------------------------------------------------------------------------

_lanes_buffer = stack_float64s(dense_loops.LANES, stands_for=dense_loops.lanes_buffer)
column_sums = compiled_shared(dense_loops.column_sums,
                              lanes_buffer=_lanes_buffer)

# ---- batch norm and LRN ------------------------------------------------------------------------

channel_sums = compiled_shared(norm_loops.channel_sums)
batch_moments = compiled_shared(norm_loops.batch_moments)
batchnorm_sums = compiled_shared(norm_loops.batchnorm_sums, channel_sums)
batchnorm_coefficients_from_sums = compiled_shared(norm_loops.batchnorm_coefficients_from_sums,
                                                   batch_moments)
batchnorm_coefficients = compiled_shared(norm_loops.batchnorm_coefficients, channel_sums,
                                         batchnorm_coefficients_from_sums)
batchnorm_apply = compiled_shared(norm_loops.batchnorm_apply)
batchnorm_grad_input_from_sums = compiled_shared(norm_loops.batchnorm_grad_input_from_sums,
                                                 batch_moments)
batchnorm_grad_input = compiled_shared(norm_loops.batchnorm_grad_input, channel_sums,
                                       batchnorm_grad_input_from_sums)
batchnorm_grad_weight_from_sums = compiled_shared(norm_loops.batchnorm_grad_weight_from_sums,
                                                  batch_moments)
batchnorm_grad_weight = compiled_shared(norm_loops.batchnorm_grad_weight, channel_sums,
                                        batchnorm_grad_weight_from_sums)
lrn_forward = compiled_shared(norm_loops.lrn_forward)
lrn_backward = compiled_shared(norm_loops.lrn_backward)
