"""Restricted Boltzmann machines, trained by contrastive divergence (CD-k) or persistent CD.

An RBM with visible units v, binary hidden units h, weight W (hidden × visible, as a dense
layer's), hidden bias c and visible bias b has the energy E(v, h) = −bᵀv − cᵀh − vᵀWᵀh (binary
visible units; Gaussian ones of unit variance have ½‖v − b‖² in place of −bᵀv), and, summing
out h, the free energy F(v) = −bᵀv − Σⱼ softplus(W v + c)ⱼ.  The log-likelihood's gradient is
−∂F(v)/∂θ at the data minus its expectation under the model; contrastive divergence estimates
the expectation at a sample ṽ drawn by k Gibbs steps started at the data, persistent CD by
chains that carry on from one step to the next (Tieleman 2008).

So the layer `x -> rbm(hidden)` outputs, per example, the free-energy gap F(x) − F(ṽ) with ṽ
held constant: its gradient is CD-k's update (∂F/∂W = −p(h|v)ᵀ v, so descending the gap moves
W by ⟨p(h|x) xᵀ⟩ − ⟨p(h|ṽ) ṽᵀ⟩), and a train section writes `loss gap` (with `update` naming
the RBM in a deep belief net's pretraining phases).  In a training step the layer is
rewritten as `rbm_chain` (the Gibbs chain: draws, no gradient), two `dense` products of the
RBM's weight and hidden bias (the hidden inputs x·Wᵀ + c and ṽ·Wᵀ + c) and `rbm_gap` (the
differentiable gap, from those inputs), so the backward pass reads the very sample the forward
pass drew, each product is computed once per step, and the weight's gradient is the dense
products' own.  The persistent chains are a buffer, `chain` (chains × visible), that
`rbm_chain` continues from and overwrites after each step (`OpDef.output_state`), saved in
checkpoints like batch norm's running statistics.  A dense layer may share the RBM's weight
and hidden bias (`dense(hidden, share = rbm_layer)` computes W x + c, so `sigmoid` after it is
p(h = 1 | x)): a deep belief net stacks RBMs on such layers and fine-tunes them with
backpropagation.

Draws come from the counter-based generator the noise ops use (one key per call; the index
scheme is rbm_loops.py `chain_index`).  The NumPy reference below, the CPU kernels (BLAS
products around the loop nests of rbm_loops.py) and the CUDA kernels of rbm_cuda.py compute
the units' inputs in the model's dtype and everything after them in float64, from the same
draws (rbm_loops.py's docstring states the contract).
"""

from __future__ import annotations

import math

import numpy as np

from netlang.ir.types import TensorType
from netlang.ops.init import SCHEMES
from netlang.ops.norm import draw_dropout_key
from netlang.ops.norm_loops import uniform_draw
from netlang.ops.rbm_loops import chain_index
from netlang.ops.registry import ParamSpec, define_internal, define_op
from netlang.ops.schema import Arg, BOOL, FLOAT, INT, enum

VISIBLE_UNITS = ("binary", "gaussian")
GAP_PARTS = ("input", "visible_bias", "data_hidden", "model_hidden")

rbm = define_op(
    "rbm", family="rbm",
    args=[
        Arg("hidden", INT, min=1, doc="binary hidden units"),
        Arg("k", INT, 1, min=1, doc="Gibbs steps of the negative chain (CD-k)"),
        Arg("persistent", BOOL, False,
            doc="continue the chains from the previous step's (persistent CD) instead of "
                "starting them at the data"),
        Arg("chains", INT, 100, min=1, doc="persistent chains (with `persistent = true`)"),
        Arg("visible", enum(*VISIBLE_UNITS), "binary",
            doc="visible units: binary, or Gaussian of unit variance (standardise the data)"),
        Arg("init", enum(*SCHEMES), "normal",
            doc="how the weight is drawn (see Initialisation); the biases start at zero"),
        # Small normal weights, as Hinton's practical guide to training RBMs advises.
        Arg("gain", FLOAT, 0.01, min=0.0, exclusive_min=True,
            doc="scales the weight's range or standard deviation"),
    ],
    doc="A restricted Boltzmann machine over its input's features: outputs, per example, the "
        "free-energy gap F(x) − F(ṽ) with ṽ drawn by `k` Gibbs steps from x (or from the "
        "persistent chains) and held constant, whose gradient is contrastive divergence's "
        "update. A `dense(hidden, share = this layer)` computes its hidden pre-activations.")
rbm.document(
    shape="`(features,)` → a scalar per example (the free-energy gap); floating-point input. "
          "Binary visible units take values in [0, 1].",
    params="`weight` `(hidden, features)` (`init`, N(0, 0.01) by default: `gain` 0.01), `bias` "
           "`(hidden,)` and `visible_bias` `(features,)` (zeros); with `persistent = true` the "
           "buffer `chain` `(chains, features)`, the persistent chains (zeros at first).",
    example="input x: [784]\ngap = x -> rbm(500, k = 1) as rbm1\noutput h = x -> "
            "dense(500, share = rbm1) -> sigmoid\ntrain { loss gap }")
# A dense layer sharing these parameters reads `weight` and `bias`: W x + c.
rbm.lends_parameters_to = ("dense",)



@rbm.shape
def _rbm_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (2,), "a batch of feature vectors (flatten images first)")
    return TensorType((ctx.inputs[0].shape[0],), ctx.inputs[0].dtype)


@rbm.params
def _rbm_params(inputs, a):
    visible = inputs[0].shape[-1]
    specs = [ParamSpec("weight", (a["hidden"], visible), a["init"], visible, a["hidden"],
                       a["gain"]),
             ParamSpec("bias", (a["hidden"],), "zeros", visible, a["hidden"]),
             ParamSpec("visible_bias", (visible,), "zeros", visible, a["hidden"])]
    if a["persistent"]:
        specs.append(ParamSpec("chain", (a["chains"], visible), "zeros", buffer=True))
    return specs


@rbm.macs
def _rbm_macs(inputs, out, a):
    # Per example: the data's hidden pre-activations, and 2k + 1 products of the chain.
    return (2 * a["k"] + 2) * a["hidden"] * inputs[0].shape[-1]


# ---- the reference: NumPy ---------------------------------------------------------------------
# The units' inputs in the model's dtype, everything after them in float64 (rbm_loops.py's
# contract).

def _sigmoid(a):
    # rbm_loops.py `logistic`'s formula, so both compare their draws with the same value.
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def hidden_inputs(v, weight, hidden_bias):
    """v·Wᵀ + c per row, in the weight's dtype (as the dense layer that shares W computes it)."""
    return v.astype(weight.dtype) @ weight.T + hidden_bias


def hidden_probabilities(v, weight, hidden_bias):
    """p(h = 1 | v) = σ(v·Wᵀ + c) per row, float64."""
    return _sigmoid(hidden_inputs(v, weight, hidden_bias).astype(np.float64))


def gibbs_chain_reference(start, weight, hidden_bias, visible_bias, steps, key, gaussian):
    """The visible units after `steps` Gibbs steps from `start`, drawn as the CPU kernel draws
    them (rbm_loops.py `draw_hidden`, `draw_visible`), in the weight's dtype."""
    rows, visible = start.shape
    hidden = weight.shape[0]
    v = start.astype(weight.dtype)
    for s in range(steps):
        base = chain_index(2 * s, rows, hidden, visible)
        index = np.arange(rows * hidden, dtype=np.uint64).reshape(rows, hidden) + np.uint64(base)
        h = (uniform_draw(key, index) < hidden_probabilities(v, weight, hidden_bias))
        centre = (h.astype(weight.dtype) @ weight + visible_bias).astype(np.float64)
        base = chain_index(2 * s + 1, rows, hidden, visible)
        offsets = np.arange(rows * visible, dtype=np.uint64).reshape(rows, visible)
        if gaussian:
            # Normal pair p holds uniform draws 2p and 2p + 1: pairs from base / 2 on.
            v = centre + _first_of_pairs(key, offsets + np.uint64(base // 2))
        else:
            v = uniform_draw(key, offsets + np.uint64(base)) < _sigmoid(centre)
        v = v.astype(weight.dtype)
    return v


def _first_of_pairs(key, pairs):
    """The first standard normal draw of each normal pair in `pairs` (uint64 array)."""
    radius = np.sqrt(-2.0 * np.log(uniform_draw(key, pairs * np.uint64(2))))
    angle = 2.0 * math.pi * uniform_draw(key, pairs * np.uint64(2) + np.uint64(1))
    return radius * np.cos(angle)


def free_energy_from_inputs(v, pre, visible_bias, gaussian):
    """F(v) per row, float64, from the rows' hidden inputs pre = v·Wᵀ + c (see the module's
    docstring)."""
    v, b = v.astype(np.float64), visible_bias.astype(np.float64)
    softplus = np.logaddexp(0.0, pre.astype(np.float64)).sum(axis=1)
    if gaussian:
        return 0.5 * np.square(v - b).sum(axis=1) - softplus
    return -(v @ b) - softplus


def _chain_start(x, chain, a):
    return chain if a["persistent"] else x


def _gaussian(a):
    return a["visible"] == "gaussian"


def gap_from_inputs(x, model, visible_bias, pre_data, pre_model, a):
    """F(x) − F(model) per example (− the chains' mean F, persistent), from the hidden inputs
    of the data rows and of the model rows."""
    data = free_energy_from_inputs(x, pre_data, visible_bias, _gaussian(a))
    negative = free_energy_from_inputs(model, pre_model, visible_bias, _gaussian(a))
    return data - (negative.mean() if a["persistent"] else negative)


def gap(x, model, weight, bias, visible_bias, a):
    """F(x) − F(model) per example (− the chains' mean F, persistent)."""
    return gap_from_inputs(x, model, visible_bias, hidden_inputs(x, weight, bias),
                           hidden_inputs(model, weight, bias), a)


def _chain(ins, a, ctx):
    x, weight, bias, visible_bias = ins[:4]
    start = _chain_start(x, ins[4] if len(ins) > 4 else None, a)
    key = draw_dropout_key(ctx.rng)[0]
    return gibbs_chain_reference(start, weight, bias, visible_bias, a["k"], key, _gaussian(a))


@rbm.forward
def _rbm_forward(ins, a, ctx):
    x, weight, bias, visible_bias = ins[:4]
    model = _chain(ins, a, ctx)
    return gap(x, model, weight, bias, visible_bias, a).astype(x.dtype)


class VisibleModel:
    """What an RBM says about its visible units, in NumPy (float64): an evaluation's
    reconstruction and a picture's Gibbs samples.  The params are the layer's `weight`,
    `bias` (hidden) and `visible_bias`."""

    def __init__(self, gaussian: bool):
        self.gaussian = gaussian

    def reconstruction(self, v, weight, hidden_bias, visible_bias):
        """p(v | h) (its mean, for Gaussian units) with h at p(h = 1 | v): one deterministic
        up-down pass, the reconstruction Hinton's practical guide monitors."""
        centre = hidden_probabilities(v, weight, hidden_bias) @ weight.astype(np.float64) \
            + visible_bias
        return centre if self.gaussian else _sigmoid(centre)

    def gibbs(self, start, weight, hidden_bias, visible_bias, steps, key):
        """The visible units after `steps` Gibbs steps from `start`, drawn with `key` as the
        training chain draws (`gibbs_chain_reference`)."""
        return gibbs_chain_reference(start, weight, hidden_bias, visible_bias, steps, key,
                                     self.gaussian)


rbm.visible_model = lambda attrs: VisibleModel(_gaussian(attrs))


rbm_chain = define_internal(
    "rbm_chain", family="rbm", arity=None, args=rbm.args,
    doc="(x, weight, bias, visible_bias[, chain]) → the visible units after k Gibbs steps from "
        "x (or from the persistent chains, which take the result after the step); no gradient.")


@rbm_chain.shape
def _rbm_chain_shape(ctx, a):
    x = ctx.inputs[0]
    return ctx.inputs[4] if a["persistent"] else x


rbm_chain.forward(lambda ins, a, ctx: _chain(ins, a, ctx).astype(ins[0].dtype))
# The persistent chains continue, next step, from where this one left them.
rbm_chain.output_state = 4

rbm_gap = define_internal(
    "rbm_gap", family="rbm", arity=5, args=rbm.args, differentiable=True,
    shape=lambda ctx, a: TensorType((ctx.inputs[0].shape[0],), ctx.inputs[0].dtype),
    doc="(x, model sample, visible_bias, x·Wᵀ + c, sample·Wᵀ + c) → F(x) − F(sample) per "
        "example (the mean over the chains for persistent CD), the sample held constant.")
rbm_gap.forward(lambda ins, a, ctx: gap_from_inputs(*ins, a).astype(ins[0].dtype))

rbm_gap_grad = define_internal(
    "rbm_gap_grad", family="rbm", arity=6,
    args=(*rbm.args, Arg("part", enum(*GAP_PARTS), doc="the operand differentiated")),
    # The gradient has its operand's type: x (operand 1), the visible bias or a hidden input.
    shape=lambda ctx, a: ctx.inputs[1 if a["part"] == "input" else 2 + GAP_PARTS.index(a["part"])],
    doc="(g, x, model sample, visible_bias, x·Wᵀ + c, sample·Wᵀ + c) → the gradient of "
        "Σ g·gap with respect to `part`, the sample held constant.")


def gap_gradient_reference(part, g, x, model, visible_bias, pre_data, pre_model, a):
    """The gradient of Σₑ gₑ·gapₑ with respect to `part` (see rbm_loops.py `gradient_*`): the
    gap's own terms; what goes through the hidden inputs is the dense products' gradient."""
    gaussian = _gaussian(a)
    g, x, model, b = (t.astype(np.float64) for t in (g, x, model, visible_bias))
    model_weights = (np.full(len(model), g.sum() / len(model)) if a["persistent"] else g)
    if part == "input":
        return g[:, None] * ((x - b) if gaussian else -b)
    if part == "data_hidden":
        return -g[:, None] * _sigmoid(pre_data.astype(np.float64))
    if part == "model_hidden":
        return model_weights[:, None] * _sigmoid(pre_model.astype(np.float64))
    data_visible = x - b if gaussian else x
    model_visible = model - b if gaussian else model
    return model_weights @ model_visible - g @ data_visible


rbm_gap_grad.forward(lambda ins, a, ctx: gap_gradient_reference(
    a["part"], *ins, a).astype(ins[1].dtype))


@rbm_gap.vjp
def _rbm_gap_vjp(b, node, g):
    x, model, visible_bias, pre_data, pre_model = b.operands(node)
    attrs = b.attrs(node)
    grads = {part: b.add("rbm_gap_grad", [g, x, model, visible_bias, pre_data, pre_model],
                         **attrs, part=part)
             for part in GAP_PARTS}
    # No gradient reaches the sample: it is held constant, as the gap's definition says.
    return [grads["input"], None, grads["visible_bias"], grads["data_hidden"],
            grads["model_hidden"]]


@rbm.training_rewrite
def _rbm_as_chain_and_gap(graph, node):
    """Inside a training step rbm(x) is rbm_gap(x, ṽ, b, dense(x), dense(ṽ)) with ṽ =
    rbm_chain(x): the sample is a node of the graph, so the backward pass reads the draw the
    forward pass made, and the hidden inputs x·Wᵀ + c and ṽ·Wᵀ + c are dense products of the
    RBM's weight and hidden bias, computed once for the gap and its gradient (the weight's
    and the hidden bias's gradients are then the dense layers')."""
    data = graph.nodes[node]
    operands = data["inputs"]
    x, weight, bias, visible_bias = operands[:4]
    attrs = data["attrs"]
    chain_type = graph.type_of(operands[4]) if attrs["persistent"] else graph.type_of(x)
    model = graph.add_op("rbm_chain", list(operands), attrs, chain_type,
                         name=graph.unique_name(f"{data['name']}.chain"), role="internal",
                         layer=data["layer"], trace=data["trace"])
    dense_attrs = {"units": attrs["hidden"], "share": data["layer"], "bias": True, "tie": None,
                   "init": attrs["init"], "gain": attrs["gain"]}
    hidden_inputs_of = []
    for rows, role in ((x, "data"), (model, "model")):
        rows_type = graph.type_of(rows)
        hidden_inputs_of.append(graph.add_op(
            "dense", [rows, weight, bias], dense_attrs,
            rows_type.with_shape(rows_type.shape[:-1] + (attrs["hidden"],)),
            name=graph.unique_name(f"{data['name']}.{role}_hidden"), role="internal",
            layer=data["layer"], trace=data["trace"]))
    graph.replace_op(node, "rbm_gap", [x, model, visible_bias, *hidden_inputs_of], attrs)


# The layer itself has no backward rule: a training step differentiates it as rbm_gap, after
# the rewrite above, and outside one (an input gradient in evaluation) the chain's draw would
# not be the forward pass's, so autodiff refuses it in one line.


# ---- CPU kernels: BLAS products around the compiled loop nests of rbm_loops.py ------------------

def _flags(a):
    return f"{_gaussian(a)}, {bool(a['persistent'])}"


def emit_gibbs_chain(k, start: str, v: str) -> None:
    """v ← the visible units after k Gibbs steps from `start` (rows × visible): per step the
    hidden inputs' product, the hidden draws, the visible inputs' product and the visible
    draws; the products by BLAS in the model's dtype, into scratch arrays of that dtype."""
    draw_hidden, draw_visible, index = (k.helper(n, "netlang.runtime.rbm") for n in
                                        ("draw_hidden", "draw_visible", "chain_index"))
    weight, bias, visible_bias = k.ins[1:4]
    hidden, visible = (int(n) for n in k.in_types[1].shape)
    rows = k.host_value(f"{start}.shape[0]", "n")
    product, h, centre = k.fresh("pre"), k.fresh("h"), k.fresh("centre")
    k.line(f"{product} = np.empty(({rows}, {hidden}), dtype=F)")
    k.line(f"{h} = np.empty(({rows}, {hidden}), dtype=F)")
    k.line(f"{centre} = np.empty(({rows}, {visible}), dtype=F)")
    k.line(f"{v}[:, :] = {start}")
    key = k.key()
    for s in range(int(k.attrs["k"])):
        k.matmul(v, weight, product, trans_b=True, epilogue=False)
        k.line(f"{draw_hidden}({product}, {bias}, {key}[0], "
               f"{index}({2 * s}, {rows}, {hidden}, {visible}), {h})")
        k.matmul(h, weight, centre, epilogue=False)
        k.line(f"{draw_visible}({centre}, {visible_bias}, {key}[0], "
               f"{index}({2 * s + 1}, {rows}, {hidden}, {visible}), {_gaussian(k.attrs)}, {v})")


def _rbm_chain_kernel(k):
    x = k.ins[0]
    start = k.ins[4] if k.attrs["persistent"] else k.rows(x, k.in_types[0])
    out = k.rows(k.out, k.out_type)
    emit_gibbs_chain(k, start, out)
    if k.attrs["persistent"]:
        # The chains continue from here next step (the reference's `output_state`).
        k.line(f"{k.ins[4]}[:, :] = {out}")


def _rbm_gap_kernel(k):
    gap_of = k.helper("free_energy_gap", "netlang.runtime.rbm")
    x, model, visible_bias, pre_data, pre_model = (
        k.rows(var, type_) if i != 2 else var for i, (var, type_) in
        enumerate(zip(k.ins, k.in_types)))
    k.line(f"{gap_of}({x}, {model}, {visible_bias}, {pre_data}, {pre_model}, "
           f"{_flags(k.attrs)}, {k.flat(k.out)})")


def _rbm_gap_grad_kernel(k):
    g = k.flat(k.ins[0])
    x, model, pre_data, pre_model = (k.rows(k.ins[i], k.in_types[i]) for i in (1, 2, 4, 5))
    visible_bias = k.ins[3]
    gaussian, persistent = _gaussian(k.attrs), bool(k.attrs["persistent"])
    part = k.attrs["part"]
    helper = k.helper(f"gradient_{part}", "netlang.runtime.rbm")
    if part == "input":
        k.line(f"{helper}({g}, {x}, {visible_bias}, {gaussian}, {k.rows(k.out, k.out_type)})")
    elif part == "visible_bias":
        k.line(f"{helper}({g}, {x}, {model}, {visible_bias}, {gaussian}, {persistent}, {k.out})")
    elif part == "data_hidden":
        k.line(f"{helper}({g}, {pre_data}, {k.rows(k.out, k.out_type)})")
    else:
        k.line(f"{helper}({g}, {pre_model}, {persistent}, {k.rows(k.out, k.out_type)})")


rbm_chain.cpu_kernel = _rbm_chain_kernel
rbm_gap.cpu_kernel = _rbm_gap_kernel
rbm_gap_grad.cpu_kernel = _rbm_gap_grad_kernel


def _rbm_forward_kernel(k):
    """Evaluation: the chain into a scratch array, the hidden inputs of the data rows and of
    the model rows (products, then the bias added in the model's dtype), then the gap."""
    gap_of = k.helper("free_energy_gap", "netlang.runtime.rbm")
    add_bias = k.helper("add_bias")   # the convolutions' epilogue loop: pre[r, :] += bias
    x = k.rows(k.ins[0], k.in_types[0])
    weight, bias, visible_bias = k.ins[1:4]
    hidden = int(k.in_types[1].shape[0])
    start = k.ins[4] if k.attrs["persistent"] else x
    model = k.fresh("model")
    k.line(f"{model} = np.empty({start}.shape, dtype=F)")
    emit_gibbs_chain(k, start, model)
    inputs = []
    for rows in (x, model):
        pre = k.fresh("pre")
        k.line(f"{pre} = np.empty(({rows}.shape[0], {hidden}), dtype=F)")
        k.matmul(rows, weight, pre, trans_b=True, epilogue=False)
        k.line(f"{add_bias}({pre}, {bias})")
        inputs.append(pre)
    k.line(f"{gap_of}({x}, {model}, {visible_bias}, {inputs[0]}, {inputs[1]}, "
           f"{_flags(k.attrs)}, {k.flat(k.out)})")


rbm.cpu_kernel = _rbm_forward_kernel
