"""Normalisation and dropout."""

import numpy as np

from netlang.ops.norm_loops import GOLDEN, MIX1, MIX2, dropout_bits
from netlang.ops.registry import ParamSpec, always, define_internal, define_op, elementwise_same, same_type_as
from netlang.ops.schema import Arg, FLOAT, INT, LAYER

batchnorm = define_op(
    "batchnorm", family="norm",
    args=[
        Arg("momentum", FLOAT, 0.1, min=0.0, max=1.0, doc="weight of the new batch in the running statistics"),
        Arg("eps", FLOAT, 1e-5, min=0.0, exclusive_min=True),
        Arg("share", LAYER, None, doc="use this layer's parameters"),
    ],
    doc="Normalises each channel (last axis) by batch statistics in training and running "
        "statistics in evaluation, then scales and shifts: weight and bias of shape (C,); "
        "running_mean and running_var are buffers, not counted as parameters.")
batchnorm.document(
    shape="unchanged; normalises over the last axis (channels), which must exist "
          "(per-example rank ≥ 1).",
    params="`weight` `(C,)` (ones) and `bias` `(C,)` (zeros); the buffers `running_mean` and "
           "`running_var` `(C,)` are state, not parameters, and are not counted in "
           "`total_params`.",
    example="input x: [28, 28, 1]\n"
            "output y = x -> conv2d(8, 3, bias = false) -> batchnorm(momentum = 0.1) -> relu")


@batchnorm.shape
def _batchnorm_shape(ctx, a):
    ctx.need_float(0)
    if ctx.inputs[0].rank < 2:
        ctx.fail(f"`batchnorm` needs a channel axis, got {ctx.describe(0)}")
    return ctx.inputs[0]


@batchnorm.params
def _batchnorm_params(inputs, a):
    c = inputs[0].shape[-1]
    # The scale is not penalised: shrinking it towards zero fights the normalisation.
    return [ParamSpec("weight", (c,), "ones", penalise=False), ParamSpec("bias", (c,), "zeros"),
            ParamSpec("running_mean", (c,), "zeros", buffer=True),
            ParamSpec("running_var", (c,), "ones", buffer=True)]


lrn = define_op(
    "lrn", family="norm",
    args=[
        Arg("size", INT, 5, min=1, doc="channels in each normalisation window"),
        Arg("alpha", FLOAT, 1e-4, min=0.0),
        Arg("beta", FLOAT, 0.75, min=0.0),
        Arg("k", FLOAT, 2.0, min=0.0),
    ],
    doc="Local response normalisation across channels (AlexNet, GoogLeNet): "
        "x / (k + alpha/size · sum of x² over `size` neighbouring channels)^beta, as PyTorch.")
lrn.document(
    shape="unchanged; the input is `(C,)`-last with one or two spatial axes "
          "(per-example rank 2 or 3).",
    params=None,
    example="input x: [27, 27, 96]\n"
            "output y = x -> lrn(size = 5, alpha = 1e-4, beta = 0.75, k = 2)")


@lrn.shape
def _lrn_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (3, 4), "a channel axis (C,) after spatial axes")
    return ctx.inputs[0]


dropout = define_op(
    "dropout", family="norm",
    args=[Arg("rate", FLOAT, 0.5, min=0.0, max=1.0, doc="probability of dropping a unit "
              "(PyTorch's convention; the lectures' keep probability p is 1 - rate)")],
    doc="Inverted dropout: in training zeroes each unit with probability `rate` and scales the "
        "rest by 1/(1 - rate); in evaluation passes its input through.")
dropout.document(
    shape="unchanged (floating-point input); the identity at evaluation time.",
    params=None, example="input x: [800]\noutput y = x -> dropout(0.5)")
dropout.shape(elementwise_same)
dropout.step_local = always   # the identity where steps are run one at a time (evaluation)


# ---- forward and backward ------------------------------------------------------------------


def _dropout_forward(ins, a, ctx):
    x = ins[0]
    if ctx.mode != "train" or a["rate"] == 0:
        return x
    return x * dropout_mask_array(x.shape, a["rate"], ctx.rng, x.dtype)


# Masks come from a counter-based generator: element i of a mask is a hash of (key, i), the
# key drawn once per mask from the engine's RNG.  Every engine (the NumPy reference, the Numba
# CPU kernels, the CUDA ones) computes the same mask from the same key, each element on its
# own, so a kernel fills a mask in one parallel pass with no generator state to carry, and a
# run resumes exactly from the RNG state alone.  The hash is splitmix64's output function.
# The hash itself lives with the mask's loop nest (norm_loops.py), so that Numba's cache of
# the compiled mask, which keys on that file, sees an edit to it.


def dropout_threshold(rate: float) -> int:
    """An element is kept when the top 32 bits of its hash are at least this: P = 1 − rate."""
    return min(int(round(rate * 2.0 ** 32)), 2 ** 32)


def draw_dropout_key(rng) -> np.ndarray:
    """One mask's key, as the one-element uint64 array the compiled kernels take."""
    return rng.integers(0, 2 ** 63, size=1, dtype=np.int64).astype(np.uint64)


def dropout_key_at(key: np.ndarray, first_element: int) -> np.ndarray:
    """The key of the part of `key`'s mask that starts at element `first_element`: the hash
    reads key + (index + 1)·GOLDEN, so element i under the returned key is element
    first_element + i under `key`.  A process computing rows r0.. of a batch thus draws its
    rows of the whole batch's mask (netlang/train/shards.py); 0 leaves the key as it is."""
    # Arrays wrap around modulo 2**64 without a warning, as the hash itself does.
    return key + np.array([first_element], dtype=np.uint64) * GOLDEN


def dropout_mask_array(shape, rate, rng, dtype):
    """Inverted dropout's mask: 0 with probability `rate`, else 1/(1 − rate)."""
    key = draw_dropout_key(rng)[0]
    if rate >= 1:
        return np.zeros(shape, dtype=dtype)
    bits = dropout_bits(key, np.arange(int(np.prod(shape)), dtype=np.uint64))
    keep = (bits >> np.uint64(32)) >= np.uint64(dropout_threshold(rate))
    return (keep.astype(dtype) / np.asarray(1 - rate, dtype=dtype)).reshape(shape)


dropout.forward(_dropout_forward)

dropout_mask = define_internal(
    "dropout_mask", family="norm", shape=same_type_as(0), args=dropout.args,
    doc="A fresh inverted-dropout mask of its operand's shape each training step. The training "
        "graph writes dropout(x) as x · dropout_mask(x), so the backward pass reuses the mask.")
# Outside training (the engine's evaluation loss) the mask is all ones: dropout is the identity.
dropout_mask.forward(lambda ins, a, ctx: dropout_mask_array(ins[0].shape, a["rate"], ctx.rng,
                                                             ins[0].dtype)
                     if ctx.mode == "train" else np.ones_like(ins[0]))


def rewrite_as_masked_product(graph, node, mask_op: str, attrs: dict) -> None:
    """Replace `node`, an op of one input x, by x · mask_op(x, **attrs): the mask drawn in the
    forward pass is then a node of the graph, and the backward pass multiplies by that same
    mask (dropout's and masking noise's training rewrites)."""
    data = graph.nodes[node]
    x = data["inputs"][0]
    mask = graph.add_op(mask_op, [x], attrs, data["type"],
                        name=graph.unique_name(f"{data['name']}.mask"), role="internal",
                        layer=data["layer"], trace=data["trace"])
    graph.replace_op(node, "multiply", [x, mask], {})


@dropout.training_rewrite
def _dropout_as_masked_product(graph, node):
    """Inside a training step dropout(x) is x · dropout_mask(x)."""
    rewrite_as_masked_product(graph, node, "dropout_mask",
                              {"rate": graph.nodes[node]["attrs"]["rate"]})


# In the training graph dropout has become a product with its mask (see the rewrite above);
# this rule serves graphs differentiated in evaluation mode, where dropout is the identity.
dropout.vjp(lambda b, node, g: [g])


# ---- CPU kernels ------------------------------------------------------------------------------
# In evaluation dropout is the identity (a view); in training the graph has replaced it by a
# product with its mask, which the kernel below fills from a key the engine draws each step.
dropout.cpu_view = True


def _dropout_mask_kernel(k):
    out, key = k.flat(k.out), k.key()  # a key each step, used or not, as the reference draws
    rate = k.attrs["rate"]
    if rate >= 1:
        k.line(f"{out}[:] = F(0.0)")
        return
    fill = k.helper("fill_dropout_mask", "netlang.runtime.random_bits")
    k.line(f"{fill}({out}, {key}[0], np.uint64({dropout_threshold(rate)}), "
           f"F(1.0) / {k.const(1 - rate)})")


dropout_mask.cpu_kernel = _dropout_mask_kernel


def _dropout_mask_cuda_kernel(k):
    """The same mask, one element per thread; the CUDA engine passes the key as a scalar.  The
    hash is `dropout_bits` written out (a kernel calling no device function compiles to PTX
    without a GPU); the CUDA tests compare the masks with the reference's."""
    out, key = k.flat(k.out), k.key()
    rate = k.attrs["rate"]
    with k.parallel(f"{out}.size", "i"):
        if rate >= 1:
            k.line(f"{out}[i] = F(0.0)")
            return
        z = k.fresh("z")
        u = "np.uint64"
        k.line(f"{z} = {u}({key}) + ({u}(i) + {u}(1)) * {u}({int(GOLDEN)})")
        k.line(f"{z} = ({z} ^ ({z} >> {u}(30))) * {u}({int(MIX1)})")
        k.line(f"{z} = ({z} ^ ({z} >> {u}(27))) * {u}({int(MIX2)})")
        k.line(f"{z} = {z} ^ ({z} >> {u}(31))")
        k.line(f"{out}[i] = F(1.0) / {k.const(1 - rate)} if ({z} >> {u}(32)) >= "
               f"{u}({dropout_threshold(rate)}) else F(0.0)")


dropout_mask.cuda_kernel = _dropout_mask_cuda_kernel


# ---- batch normalisation and local response normalisation -----------------------------------
#
# Batch norm normalises each channel (the last axis) over every other axis.  In training the
# statistics are the batch's (the biased variance, as PyTorch normalises with) and the running
# statistics move towards the batch's mean and *unbiased* variance by `momentum`; in evaluation
# the running statistics normalise.  The backward ops recompute the statistics from x rather
# than keeping them, and follow the same mode as the forward (the engine runs both in one pass).

def batch_statistics(x):
    """(mean, biased variance, count) per channel over every axis but the last."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = np.square(x - mean).mean(axis=axes)
    return mean, var, x.size // x.shape[-1]


def _bn_normalised(x, running_mean, running_var, a, ctx):
    """(x̂, 1/√(var + eps), whether batch statistics were used)."""
    if ctx.mode == "train":
        mean, var, _ = batch_statistics(x)
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / np.sqrt(var + a["eps"])
    return (x - mean) * inv_std, inv_std, ctx.mode == "train"


@batchnorm.forward
def _batchnorm_forward(ins, a, ctx):
    x, weight, bias, running_mean, running_var = ins
    xhat, _, _ = _bn_normalised(x, running_mean, running_var, a, ctx)
    return xhat * weight + bias


def _batchnorm_state(ins, a, ctx):
    x, _, _, running_mean, running_var = ins
    mean, var, n = batch_statistics(x)
    unbiased = var * (n / max(n - 1, 1))
    m = a["momentum"]
    return {3: (1 - m) * running_mean + m * mean, 4: (1 - m) * running_var + m * unbiased}


batchnorm.state_rule = _batchnorm_state

batchnorm_grad_input = define_internal(
    "batchnorm_grad_input", family="norm", arity=5, shape=same_type_as(0), args=batchnorm.args,
    doc="dx of batchnorm from (x, weight, running_mean, running_var, g). Training: "
        "w/σ · (g − mean(g) − x̂ · mean(g·x̂)) with batch statistics; evaluation: w/σ · g.")


@batchnorm_grad_input.forward
def _batchnorm_grad_input(ins, a, ctx):
    x, weight, running_mean, running_var, g = ins
    xhat, inv_std, batch = _bn_normalised(x, running_mean, running_var, a, ctx)
    scale = weight * inv_std
    if not batch:
        return g * scale
    axes = tuple(range(x.ndim - 1))
    return scale * (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes))


batchnorm_grad_weight = define_internal(
    "batchnorm_grad_weight", family="norm", arity=4, shape=same_type_as(1), args=batchnorm.args,
    doc="d weight of batchnorm from (x, running_mean, running_var, g): Σ g · x̂ per channel.")


@batchnorm_grad_weight.forward
def _batchnorm_grad_weight(ins, a, ctx):
    x, running_mean, running_var, g = ins
    xhat, _, _ = _bn_normalised(x, running_mean, running_var, a, ctx)
    return (g * xhat).reshape(-1, x.shape[-1]).sum(axis=0)


@batchnorm.vjp
def _batchnorm_vjp(b, node, g):
    x, weight, _, running_mean, running_var = b.operands(node)
    eps = {"eps": b.attrs(node)["eps"], "momentum": b.attrs(node)["momentum"]}
    return [b.add("batchnorm_grad_input", [x, weight, running_mean, running_var, g], **eps),
            b.add("batchnorm_grad_weight", [x, running_mean, running_var, g], **eps),
            b.add("bias_grad", [g]), None, None]


def channel_window_sum(v, before, after):
    """Σ v[..., c'] for c − before ≤ c' ≤ c + after (clipped to the channels), per offset."""
    c = v.shape[-1]
    padded = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(before, after)])
    out = np.zeros_like(v)
    for offset in range(before + after + 1):
        out += padded[..., offset:offset + c]
    return out


def _lrn_base(x, a):
    """k + alpha/size · Σ x² over the window of `size` channels around each (PyTorch's)."""
    size = a["size"]
    return a["k"] + (a["alpha"] / size) * channel_window_sum(x * x, size // 2, (size - 1) // 2)


lrn.forward(lambda ins, a, ctx: ins[0] * _lrn_base(ins[0], a) ** -a["beta"])

lrn_grad = define_internal(
    "lrn_grad", family="norm", arity=2, shape=same_type_as(0), args=lrn.args,
    doc="dx of lrn from (x, g): g·b^−β − 2αβ/size · x · Σ_{windows holding x} g·x·b^(−β−1).")


@lrn_grad.forward
def _lrn_grad(ins, a, ctx):
    x, g = ins
    size, beta = a["size"], a["beta"]
    base = _lrn_base(x, a)
    scaled = base ** -beta
    # Channel c's window holds channel j when j − (size−1)//2 ≤ c ≤ j + size//2.
    back = channel_window_sum(g * x * scaled / base, (size - 1) // 2, size // 2)
    return g * scaled - (2 * a["alpha"] * beta / size) * x * back


lrn.vjp(lambda b, node, g: [b.add("lrn_grad", [b.operands(node)[0], g], **b.attrs(node))])



# ---- CPU kernels: batch norm and LRN ----------------------------------------------------------
#
# Both work on the (rows, C) view of any rank, through the loop nests of
# netlang/ops/norm_loops.py (compiled by netlang.runtime.cnn).  Batch norm's
# per-channel sums accumulate in float64 workspaces in one pass (Σx, Σx², and for the
# gradients Σg, Σg·x).  In the training step the forward kernel also moves the running
# statistics, written in place into the buffers (passed to the program like parameters), as
# the state rule does after a reference step; the gradient program leaves them alone, but for
# a data-parallel run's (`_whole_batch_sums`).  An activation after a batch norm runs in its
# output loop.


def _whole_batch_sums(k, x, g, with_gradients: bool):
    """In a data-parallel gradient pass, emits the per-channel sums of x and g into workspace 0
    summed across the processes (Σg and Σg·x too `with_gradients`), and returns the variable
    of the whole batch's rows; elsewhere None."""
    if k.mode != "train" or not k.statistics_across_processes:
        return None
    rows = k.fresh("rows")
    k.line(f"{rows} = {k.helper('batchnorm_sums')}({x}, {k.workspace(0)}, {g}, {g != x})")
    return k.sum_across_processes(k.workspace(0), rows, with_gradients)

def _batchnorm_kernel(k):
    x, weight, bias, rm, rv = k.ins
    C = k.in_types[0].shape[-1]
    acc, coef = k.workspace(0), k.workspace(1)
    train = k.mode == "train"
    # Only the last batch norm on these buffers in the step updates them, from the values it
    # started with (the reference applies the state rules after the step, the last one winning).
    later = k.program.order[k.program.order.index(k.node) + 1:]
    buffers = k.graph.operands(k.node)[3:5]
    last = not any(k.graph.op(n) == "batchnorm" and k.graph.operands(n)[3:5] == buffers
                   for n in later)
    settings = f"{k.attrs['eps']!r}, {k.attrs['momentum']!r}, {train}, " \
               f"{train and k.updates_state and last}"
    total = _whole_batch_sums(k, x, x, with_gradients=False)
    if total is None:
        k.line(f"{k.helper('batchnorm_coefficients')}({x}, {weight}, {rm}, {rv}, {acc}, "
               f"{coef}, {settings})")
    else:
        k.line(f"{k.helper('batchnorm_coefficients_from_sums')}({weight}, {rm}, {rv}, {acc}, "
               f"{coef}, {total}, {settings})")
    if not k.fused:
        k.line(f"{k.helper('batchnorm_apply')}({x}, {coef}, {bias}, {k.out})")
        return
    xr, out = k.rows(x, k.in_types[0]), k.rows(k.out, k.out_type)
    operands = k.fused_operands()
    with k.block(f"for r in range({xr}.shape[0]):"):
        with k.block(f"for c in range({C}):"):
            s = k.fresh("s")
            k.line(f"{s} = ({xr}[r, c] - {coef}[0, c]) * {coef}[1, c] + {bias}[c]")
            s = k.apply_fused(s, operands, f"r * {C} + c")
            k.line(f"{out}[r, c] = {s}")


def _batchnorm_grad_input_kernel(k):
    x, weight, rm, rv, g = k.ins
    # The whole batch's Σg and Σg·x̂ too: an example's dx depends on every example's dy.
    total = _whole_batch_sums(k, x, g, with_gradients=True)
    if total is not None:
        k.line(f"{k.helper('batchnorm_grad_input_from_sums')}({x}, {g}, {weight}, {k.out}, "
               f"{k.workspace(0)}, {k.workspace(1)}, {total}, {k.attrs['eps']!r})")
        return
    k.line(f"{k.helper('batchnorm_grad_input')}({x}, {g}, {weight}, {rm}, {rv}, {k.out}, "
           f"{k.workspace(0)}, {k.workspace(1)}, {k.attrs['eps']!r}, {k.mode == 'train'})")


def _batchnorm_grad_weight_kernel(k):
    x, rm, rv, g = k.ins
    # This process's Σg·x̂ alone: the step sums the weight's gradient with the others.
    total = _whole_batch_sums(k, x, g, with_gradients=False)
    if total is not None:
        k.line(f"{k.helper('batchnorm_grad_weight_from_sums')}({rm}, {rv}, {k.out}, "
               f"{k.workspace(0)}, {total}, {k.attrs['eps']!r}, True)")
        return
    k.line(f"{k.helper('batchnorm_grad_weight')}({x}, {g}, {rm}, {rv}, {k.out}, "
           f"{k.workspace(0)}, {k.attrs['eps']!r}, {k.mode == 'train'})")


def _bn_workspaces(coefficients):
    """(4, C) float64 sums, and (3, C) per-channel coefficients."""
    def rule(in_types, out_type, a):
        c = in_types[0].shape[-1]
        return [((4, c), False, "acc64")] + ([((3, c), False)] if coefficients else [])
    return rule


batchnorm.cpu_kernel = _batchnorm_kernel
# Its output loop is where an activation after it runs.
batchnorm.epilogue_host = True
batchnorm.cpu_workspace = _bn_workspaces(True)
batchnorm_grad_input.cpu_kernel = _batchnorm_grad_input_kernel
batchnorm_grad_input.cpu_workspace = _bn_workspaces(True)
batchnorm_grad_weight.cpu_kernel = _batchnorm_grad_weight_kernel
batchnorm_grad_weight.cpu_workspace = _bn_workspaces(False)


# ---- batch norm folded into the product before it (evaluation programs) -----------------------
#
# In evaluation a batch norm is a per-channel affine map of fixed coefficients, so a
# convolution or dense layer feeding it alone can absorb it: W' = W·s (s = γ/√(var + ε), one
# factor per output channel, axis 0 of both weight layouts), b' = (b − mean)·s + β.
# `passes/fold_batchnorm.py` rewrites evaluation graphs so (by batch norm's fold rule below,
# for the products marked `foldable_product`); these ops compute W' and b' from
# the current parameters at every call (a pass over the weights, not over the activations).

def _fold_scale(gamma, var, eps):
    return gamma / np.sqrt(var + eps)


batchnorm_fold_weight = define_internal(
    "batchnorm_fold_weight", family="norm", arity=3, shape=same_type_as(0),
    args=[Arg("eps", FLOAT, 1e-5)],
    doc="A product's weight with an evaluation-mode batch norm folded in, from (weight, "
        "bn weight, running_var): each output channel's slice times γ/√(var + ε).")
batchnorm_fold_weight.forward(lambda ins, a, ctx: (
    ins[0] * _fold_scale(ins[1], ins[2], a["eps"]).reshape((-1,) + (1,) * (ins[0].ndim - 1))
).astype(ins[0].dtype))

batchnorm_fold_bias = define_internal(
    "batchnorm_fold_bias", family="norm", arity=None, shape=same_type_as(0),
    args=[Arg("eps", FLOAT, 1e-5)],
    doc="A product's bias with an evaluation-mode batch norm folded in, from (bn weight, bn "
        "bias, running_mean, running_var[, bias]): (bias − mean)·γ/√(var + ε) + β.")


@batchnorm_fold_bias.forward
def _batchnorm_fold_bias(ins, a, ctx):
    gamma, beta, mean, var = ins[:4]
    bias = ins[4] if len(ins) > 4 else 0
    return ((bias - mean) * _fold_scale(gamma, var, a["eps"]) + beta).astype(gamma.dtype)


@batchnorm.fold_into
def _fold_batchnorm_into_product(graph, node, product):
    """Rewrites the batch norm `node` as a copy of the `product` feeding it (a conv2d or dense
    layer) that reads `batchnorm_fold_weight(W, γ, var)` and `batchnorm_fold_bias(γ, β, mean,
    var[, b])`: the node keeps its name, type and consumers, and `product` is left unread."""
    data = graph.nodes[node]
    x, weight, *bias = graph.operands(product)
    gamma, beta, mean, var = data["inputs"][1:5]
    eps = {"eps": data["attrs"]["eps"]}
    common = dict(role="internal", layer=data["layer"], trace=data["trace"])
    new_weight = graph.add_op("batchnorm_fold_weight", [weight, gamma, var], eps,
                              graph.type_of(weight),
                              name=graph.unique_name(f"{data['name']}.folded_weight"), **common)
    new_bias = graph.add_op("batchnorm_fold_bias", [gamma, beta, mean, var] + bias, eps,
                            graph.type_of(beta),
                            name=graph.unique_name(f"{data['name']}.folded_bias"), **common)
    attrs = dict(graph.nodes[product]["attrs"])
    if "bias" in attrs:
        attrs["bias"] = True
    graph.replace_op(node, graph.op(product), [x, new_weight, new_bias], attrs)


def _fold_weight_kernel(k):
    w, gamma, var = k.matrix(k.ins[0], k.in_types[0].size // k.in_types[0].shape[0]), *k.ins[1:]
    out = k.matrix(k.out, k.out_type.size // k.out_type.shape[0])
    scale, eps = k.fresh("sc"), k.const(k.attrs["eps"])
    with k.parallel(f"{w}.shape[0]", "f"):
        k.line(f"{scale} = {gamma}[f] / {k.math.sqrt(f'{var}[f] + {eps}')}")
        with k.block(f"for j in range({w}.shape[1]):"):
            k.line(f"{out}[f, j] = {w}[f, j] * {scale}")


def _fold_bias_kernel(k):
    gamma, beta, mean, var = k.ins[:4]
    bias = f"{k.ins[4]}[c]" if len(k.ins) > 4 else k.const(0)
    eps = k.const(k.attrs["eps"])
    with k.parallel(f"{k.out}.shape[0]", "c"):
        k.line(f"{k.out}[c] = ({bias} - {mean}[c]) * ({gamma}[c] / "
               f"{k.math.sqrt(f'{var}[c] + {eps}')}) + {beta}[c]")


batchnorm_fold_weight.cpu_kernel = _fold_weight_kernel
batchnorm_fold_bias.cpu_kernel = _fold_bias_kernel


def _lrn_args(a) -> str:
    """Channels before and after each window's centre, alpha/size, beta, k."""
    size = a["size"]
    return f"{size // 2}, {(size - 1) // 2}, {a['alpha'] / size!r}, {a['beta']!r}, {a['k']!r}"


def _lrn_kernel(k):
    k.line(f"{k.helper('lrn_forward')}({k.ins[0]}, {k.out}, {_lrn_args(k.attrs)})")


def _lrn_grad_kernel(k):
    x, g = k.ins
    k.line(f"{k.helper('lrn_backward')}({x}, {g}, {k.out}, {k.workspace(0)}, {_lrn_args(k.attrs)})")


lrn.cpu_kernel = _lrn_kernel
lrn_grad.cpu_kernel = _lrn_grad_kernel
lrn_grad.cpu_workspace = lambda in_types, out_type, a: [((2, in_types[0].shape[-1]), False)]


# ---- CUDA kernels: batch norm, the fold ops, LRN -------------------------------------------------
#
# Batch norm's per-channel sums are `k.reduction`s, one block per channel (the CPU helper's
# Σx, Σx², Σg, Σg·x, each a float64 sum into the same (4, C) workspace); the block's thread 0
# turns them into the channel's coefficients (and, in the training step, moves the running
# statistics); the elementwise pass that applies them carries the fused activation.  The fold
# ops' CPU templates are target-neutral already.  LRN is one thread per element, each summing
# its own channel windows (its gradient recomputes its neighbours' windows: no workspace).

def _cuda_channel_sums(k, rows, acc, terms, finish=None) -> None:
    """acc[slot, c] ← Σ over rows of each (slot, expression of row r and channel c); `finish`
    (acc64 totals in acc) runs in the last reduction's block."""
    for n, (slot, term) in enumerate(terms):
        last = n == len(terms) - 1

        def done(total, slot=slot, last=last):
            k.line(f"{acc}[{slot}, c] = {total}")
            if last and finish is not None:
                finish()
        k.reduction(f"{rows}.shape[0]", "r", lambda total, term=term: k.line(f"{total} += {term}"),
                    done, groups=f"{rows}.shape[1]", group="c")


def _cuda_moments(k, acc, rows) -> None:
    """mean and var (biased) of channel c from acc's Σx and Σx², as `batch_moments`."""
    k.line(f"count = max({rows}.shape[0], 1)")
    k.line(f"mean = {acc}[0, c] / count")
    k.line(f"var = max({acc}[1, c] / count - mean * mean, 0.0)")


def _batchnorm_cuda_kernel(k):
    x, weight, bias, rm, rv = k.ins
    xr, out = k.rows(x, k.in_types[0]), k.rows(k.out, k.out_type)
    acc, coef = k.workspace(0), k.workspace(1)
    eps, momentum = k.attrs["eps"], k.attrs["momentum"]
    later = k.program.order[k.program.order.index(k.node) + 1:]
    buffers = k.graph.operands(k.node)[3:5]
    last = not any(k.graph.op(n) == "batchnorm" and k.graph.operands(n)[3:5] == buffers
                   for n in later)
    if k.mode == "train":
        def finish():
            _cuda_moments(k, acc, xr)
            if k.updates_state and last:
                k.line(f"{rm}[c] = (1.0 - {momentum!r}) * {rm}[c] + {momentum!r} * mean")
                k.line(f"{rv}[c] = (1.0 - {momentum!r}) * {rv}[c] + {momentum!r} * var * "
                       f"({xr}.shape[0] / max({xr}.shape[0] - 1, 1))")
            k.line(f"{coef}[0, c] = mean")
            k.line(f"{coef}[1, c] = {weight}[c] / math.sqrt(var + {eps!r})")
        _cuda_channel_sums(k, xr, acc, [(0, f"{xr}[r, c]"), (1, f"float64({xr}[r, c]) * {xr}[r, c]")],
                           finish)
    else:
        with k.parallel(f"{weight}.size", "c"):
            k.line(f"{coef}[0, c] = {rm}[c]")
            k.line(f"{coef}[1, c] = {weight}[c] / math.sqrt(float64({rv}[c]) + {eps!r})")
    operands = k.fused_operands()
    with k.parallel(f"{out}.size", "i"):
        k.line(f"row = i // {out}.shape[1]")
        k.line(f"c = i % {out}.shape[1]")
        s = k.fresh("s")
        k.line(f"{s} = ({xr}[row, c] - {coef}[0, c]) * {coef}[1, c] + {bias}[c]")
        s = k.apply_fused(s, operands, "i")
        k.line(f"{out}[row, c] = {s}")


def _batchnorm_grad_input_cuda_kernel(k):
    x, weight, rm, rv, g = k.ins
    xr, gr, out = k.rows(x, k.in_types[0]), k.rows(g, k.in_types[4]), k.rows(k.out, k.out_type)
    acc, coef, eps = k.workspace(0), k.workspace(1), k.attrs["eps"]
    if k.mode == "train":
        def finish():   # dx = A·g + B·x + D per channel, as the CPU helper
            _cuda_moments(k, acc, xr)
            k.line(f"inv = 1.0 / math.sqrt(var + {eps!r})")
            k.line(f"gxhat = ({acc}[3, c] - mean * {acc}[2, c]) * inv")
            k.line(f"a = {weight}[c] * inv")
            k.line("b = -a * inv * gxhat / count")
            k.line(f"{coef}[0, c] = a")
            k.line(f"{coef}[1, c] = b")
            k.line(f"{coef}[2, c] = -a * {acc}[2, c] / count - b * mean")
        _cuda_channel_sums(k, xr, acc, [
            (0, f"{xr}[r, c]"), (1, f"float64({xr}[r, c]) * {xr}[r, c]"), (2, f"{gr}[r, c]"),
            (3, f"float64({gr}[r, c]) * {xr}[r, c]")], finish)
        value = f"{coef}[0, c] * {gr}[row, c] + {coef}[1, c] * {xr}[row, c] + {coef}[2, c]"
    else:
        with k.parallel(f"{weight}.size", "c"):
            k.line(f"{coef}[0, c] = {weight}[c] / math.sqrt(float64({rv}[c]) + {eps!r})")
        value = f"{coef}[0, c] * {gr}[row, c]"
    with k.parallel(f"{out}.size", "i"):
        k.line(f"row = i // {out}.shape[1]")
        k.line(f"c = i % {out}.shape[1]")
        k.line(f"{out}[row, c] = {value}")


def _batchnorm_grad_weight_cuda_kernel(k):
    x, rm, rv, g = k.ins
    xr, gr = k.rows(x, k.in_types[0]), k.rows(g, k.in_types[3])
    acc, eps = k.workspace(0), k.attrs["eps"]
    train = k.mode == "train"

    def finish():
        if train:
            _cuda_moments(k, acc, xr)
        else:
            k.line(f"mean = float64({rm}[c])")
            k.line(f"var = float64({rv}[c])")
        k.line(f"{k.out}[c] = ({acc}[3, c] - mean * {acc}[2, c]) / math.sqrt(var + {eps!r})")
    terms = [(0, f"{xr}[r, c]"), (1, f"float64({xr}[r, c]) * {xr}[r, c]")] if train else []
    _cuda_channel_sums(k, xr, acc, terms + [(2, f"{gr}[r, c]"),
                                            (3, f"float64({gr}[r, c]) * {xr}[r, c]")], finish)


batchnorm.cuda_kernel = _batchnorm_cuda_kernel
batchnorm_grad_input.cuda_kernel = _batchnorm_grad_input_cuda_kernel
batchnorm_grad_weight.cuda_kernel = _batchnorm_grad_weight_cuda_kernel
batchnorm_fold_weight.cuda_kernel = batchnorm_fold_weight.cpu_kernel
batchnorm_fold_bias.cuda_kernel = batchnorm_fold_bias.cpu_kernel


def _cuda_lrn_window(k, x, base, centre, total) -> None:
    """`total` ← Σ x² (float64) over the window of channel `centre` (as `lrn_forward`)."""
    size = k.attrs["size"]
    C = k.in_types[0].shape[-1]
    k.line(f"{total} = 0.0")
    with k.block(f"for q in range(max({centre} - {size // 2}, 0), "
                 f"min({centre} + {(size - 1) // 2 + 1}, {C})):"):
        k.line(f"{total} += float64({x}[{base} + q]) * {x}[{base} + q]")


def _lrn_cuda_kernel(k):
    a = k.attrs
    C = k.in_types[0].shape[-1]
    xf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        k.line(f"c = i % {C}")
        k.line("base = i - c")
        _cuda_lrn_window(k, xf, "base", "c", "total")
        k.line(f"{of}[i] = {xf}[i] * ({a['k']!r} + {a['alpha'] / a['size']!r} * total) ** "
               f"-{a['beta']!r}")


def _lrn_grad_cuda_kernel(k):
    """dx as `lrn_backward`, each neighbour's g·x·b^(−β−1) recomputed by the thread."""
    a = k.attrs
    size, beta, alpha_n = a["size"], a["beta"], a["alpha"] / a["size"]
    C = k.in_types[0].shape[-1]
    xf, gf, of = k.flat(k.ins[0]), k.flat(k.ins[1]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        k.line(f"c = i % {C}")
        k.line("base = i - c")
        k.line("back = 0.0")
        # Channel c lies in channel j's window when j − after ≤ c ≤ j + before.
        with k.block(f"for j in range(max(c - {(size - 1) // 2}, 0), min(c + {size // 2 + 1}, {C})):"):
            _cuda_lrn_window(k, xf, "base", "j", "sj")
            k.line(f"bj = {a['k']!r} + {alpha_n!r} * sj")
            k.line(f"back += {gf}[base + j] * {xf}[base + j] * bj ** -{beta!r} / bj")
        _cuda_lrn_window(k, xf, "base", "c", "sc")
        k.line(f"{of}[i] = {gf}[i] * ({a['k']!r} + {alpha_n!r} * sc) ** -{beta!r} - "
               f"{2.0 * alpha_n * beta!r} * {xf}[i] * back")


lrn.cuda_kernel = _lrn_cuda_kernel
lrn_grad.cuda_kernel = _lrn_grad_cuda_kernel
lrn_grad.cuda_workspace = lambda in_types, out_type, a: []   # recomputes instead
