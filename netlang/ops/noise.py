"""Sampling ops and noise inputs: random draws inside a model.

Every draw comes from the counter-based generator dropout masks use (netlang/ops/norm_loops.py
`dropout_bits`): element i of a draw is a function of (key, i) alone, the key drawn once per
op per call from the engine's seeded generator, so the NumPy reference, the Numba CPU kernels
and the CUDA kernels compute the same values from the same key, each element on its own, and
a run resumes exactly from the generator's state.  Uniform and normal draws are defined in
norm_loops.py (`uniform_draw`, `normal_pair`), computed in float64 and rounded once.

- `gaussian_noise(std)` and `masking_noise(p)` corrupt their input in training only (a
  denoising autoencoder's corruption) and pass it through otherwise, as dropout does: the
  training rewrite writes them as `x + normal_noise(x)` and `x · masking_mask(x)`, so the
  backward pass sees the very draw the forward pass made.
- `sample_normal(mu, logvar)` draws z = mu + exp(logvar / 2) · ε in training and inference
  alike (a variational autoencoder's code); its gradient is the reparameterisation's,
  ∂z/∂mu = 1 and ∂z/∂logvar = (z − mu) / 2, read from z itself, so ε is never stored.
- `bernoulli(p)` draws 1 with probability p, else 0, in training and inference; no gradient
  flows through the draw.

Noise inputs (`input z: [64] ~ normal`) are inputs the training loop, evaluation, prediction
and sampling fill with fresh draws instead of data: `NOISE_DISTRIBUTIONS` holds the
distributions a `~` may name, and `noise_input_array` draws one batch of one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.ops.norm import draw_dropout_key, dropout_threshold, rewrite_as_masked_product
from netlang.ops.norm_loops import GOLDEN, MIX1, MIX2, dropout_bits, normal_pair, uniform_draw
from netlang.ops.onnx_forms import passthrough
from netlang.ops.registry import always, define_internal, define_op, elementwise_same, same_type_as
from netlang.ops.schema import Arg, FLOAT

# ---- the ops -----------------------------------------------------------------------------------

gaussian_noise = define_op(
    "gaussian_noise", family="noise",
    args=[Arg("std", FLOAT, min=0.0, doc="the standard deviation of the added noise")],
    doc="In training adds independent normal noise of standard deviation `std` to each element "
        "(a denoising autoencoder's corruption); in evaluation passes its input through.")
gaussian_noise.document(
    shape="unchanged (floating-point input); the identity at evaluation time.", params=None,
    example="input image: [784]\noutput code = image -> gaussian_noise(0.3) -> dense(64)")
gaussian_noise.shape(elementwise_same)
gaussian_noise.step_local = always

masking_noise = define_op(
    "masking_noise", family="noise",
    args=[Arg("p", FLOAT, min=0.0, max=1.0, doc="the probability of zeroing an element")],
    doc="In training zeroes each element with probability `p` and leaves the rest as they are "
        "(masking corruption; unlike dropout, no rescaling); in evaluation passes its input "
        "through.")
masking_noise.document(
    shape="unchanged (floating-point input); the identity at evaluation time.", params=None,
    example="input image: [784]\noutput code = image -> masking_noise(0.25) -> dense(64)")
masking_noise.shape(elementwise_same)
masking_noise.step_local = always

sample_normal = define_op(
    "sample_normal", family="noise", arity=2, operand_names=("mu", "logvar"),
    doc="A draw z = mu + exp(logvar / 2) · ε, ε standard normal, element by element, in "
        "training and inference alike; the gradient is the reparameterisation's (∂z/∂mu = 1, "
        "∂z/∂logvar = (z − mu) / 2).")
sample_normal.document(
    shape="two floating-point tensors of one shape (the mean and the log-variance); the draw "
          "has that shape.", params=None,
    example="input x: [784]\nh = x -> dense(400) -> relu\nmu = h -> dense(20)\n"
            "logvar = h -> dense(20)\noutput z = (mu, logvar) -> sample_normal")

bernoulli = define_op(
    "bernoulli", family="noise",
    doc="A 0/1 draw per element, 1 with the probability its input gives (clipped to [0, 1]), in "
        "training and inference alike; no gradient flows back through the draw.")
bernoulli.document(
    shape="unchanged (floating-point probabilities); the draw has their type.", params=None,
    example="input x: [784]\noutput h = x -> dense(64) -> sigmoid -> bernoulli")
bernoulli.shape(elementwise_same)


@sample_normal.shape
def _sample_normal_shape(ctx, a):
    ctx.need_float(0)
    if ctx.inputs[0] != ctx.inputs[1]:
        ctx.fail(f"`sample_normal` needs a mean and a log-variance of one shape and dtype, got "
                 f"{ctx.describe(0)} and {ctx.describe(1)}")
    return ctx.inputs[0]


# ---- the reference: NumPy, from the same generator -------------------------------------------

def _indices(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)


def standard_normal(shape, key) -> np.ndarray:
    """Standard normal draws of stream `key` in float64, element i the i-th of the flattened
    shape (pair p giving elements 2p and 2p + 1, as norm_loops.py `normal_pair` says)."""
    size = int(np.prod(shape))
    first, second = normal_pair(np.uint64(key), np.arange((size + 1) // 2, dtype=np.uint64))
    return np.stack([first, second], axis=1).reshape(-1)[:size].reshape(shape)


def normal_array(shape, key, mean: float = 0.0, std: float = 1.0, dtype=np.float32):
    """mean + std · (normal draws of stream `key`), element i the i-th of the flattened shape."""
    return (mean + std * standard_normal(shape, key)).astype(dtype)


def uniform_array(shape, key, low: float = 0.0, high: float = 1.0, dtype=np.float32):
    """Uniform draws on (low, high) of stream `key`, element i the i-th of the flattened shape."""
    return (low + (high - low) * uniform_draw(np.uint64(key), _indices(shape))).astype(dtype)


def masking_array(shape, key, p: float, dtype):
    """masking_noise's mask: 0 with probability p, else 1 (dropout's mask, unscaled)."""
    bits = dropout_bits(np.uint64(key), _indices(shape))
    return ((bits >> np.uint64(32)) >= np.uint64(dropout_threshold(p))).astype(dtype)


def _draw_key(ctx) -> np.uint64:
    return draw_dropout_key(ctx.rng)[0]


gaussian_noise.forward(
    lambda ins, a, ctx: ins[0] + normal_array(ins[0].shape, _draw_key(ctx), 0.0, a["std"],
                                              ins[0].dtype)
    if ctx.mode == "train" else ins[0])
masking_noise.forward(
    lambda ins, a, ctx: ins[0] * masking_array(ins[0].shape, _draw_key(ctx), a["p"], ins[0].dtype)
    if ctx.mode == "train" else ins[0])


def _sample_normal_forward(ins, a, ctx):
    mu, logvar = ins
    eps = standard_normal(mu.shape, _draw_key(ctx))
    return (mu.astype(np.float64) + np.exp(0.5 * logvar.astype(np.float64)) * eps).astype(mu.dtype)


sample_normal.forward(_sample_normal_forward)
bernoulli.forward(lambda ins, a, ctx: (uniform_draw(_draw_key(ctx), _indices(ins[0].shape))
                                       < ins[0].astype(np.float64)).astype(ins[0].dtype))

# The draws gaussian_noise and masking_noise become in a training step (see the rewrites).
normal_noise = define_internal(
    "normal_noise", family="noise", shape=same_type_as(0), args=gaussian_noise.args,
    doc="Fresh normal draws of standard deviation `std`, of its operand's shape, each training "
        "step: the training graph writes gaussian_noise(x) as x + normal_noise(x).")
normal_noise.forward(lambda ins, a, ctx: normal_array(ins[0].shape, _draw_key(ctx), 0.0,
                                                      a["std"], ins[0].dtype)
                     if ctx.mode == "train" else np.zeros_like(ins[0]))
masking_mask = define_internal(
    "masking_mask", family="noise", shape=same_type_as(0), args=masking_noise.args,
    doc="A fresh 0/1 mask, 0 with probability `p`, of its operand's shape each training step: "
        "the training graph writes masking_noise(x) as x · masking_mask(x).")
masking_mask.forward(lambda ins, a, ctx: masking_array(ins[0].shape, _draw_key(ctx), a["p"],
                                                       ins[0].dtype)
                     if ctx.mode == "train" else np.ones_like(ins[0]))


@gaussian_noise.training_rewrite
def _gaussian_noise_as_sum(graph, node):
    """Inside a training step gaussian_noise(x) is x + normal_noise(x): the draw is a node of
    the graph, and the gradient passes through the sum unchanged."""
    data = graph.nodes[node]
    x = data["inputs"][0]
    noise = graph.add_op("normal_noise", [x], {"std": data["attrs"]["std"]}, data["type"],
                         name=graph.unique_name(f"{data['name']}.noise"), role="internal",
                         layer=data["layer"], trace=data["trace"])
    graph.replace_op(node, "add", [x, noise], {})


@masking_noise.training_rewrite
def _masking_noise_as_product(graph, node):
    """Inside a training step masking_noise(x) is x · masking_mask(x): the backward pass
    multiplies by the mask the forward pass drew."""
    rewrite_as_masked_product(graph, node, "masking_mask", {"p": graph.nodes[node]["attrs"]["p"]})


# Outside a training step both corruptions are the identity (graphs differentiated in
# evaluation mode); in one, the rewrites above have replaced them.
gaussian_noise.vjp(lambda b, node, g: [g])
masking_noise.vjp(lambda b, node, g: [g])


# The draw is a step function of p: its derivative is zero wherever it exists, and no
# surrogate gradient is made up for it (a model that needs one writes it out).
bernoulli.vjp(lambda b, node, g: [None])


@sample_normal.vjp
def _sample_normal_vjp(b, node, g):
    """∂z/∂mu = 1; ∂z/∂logvar = exp(logvar / 2) · ε / 2 = (z − mu) / 2, read from the draw."""
    mu, _ = b.operands(node)
    spread = b.add("subtract", [node, mu])
    return [g, b.add("scale", [b.add("multiply", [g, spread])], factor=0.5)]


# ---- kernels -----------------------------------------------------------------------------------
# In evaluation the corruptions are views (the identity); in training the graph holds their
# draws, which the kernels below fill from a key the engine draws for each per call.  Every
# kernel takes its key whether or not it uses it, as the reference draws one.
gaussian_noise.cpu_view = True
masking_noise.cpu_view = True


def _normal_noise_kernel(k):
    fill = k.helper("fill_normal", "netlang.runtime.random_bits")
    k.line(f"{fill}({k.flat(k.out)}, {k.key()}[0], 0.0, {float(k.attrs['std'])!r})")


def _masking_mask_kernel(k):
    out, key = k.flat(k.out), k.key()
    fill = k.helper("fill_dropout_mask", "netlang.runtime.random_bits")
    k.line(f"{fill}({out}, {key}[0], np.uint64({dropout_threshold(k.attrs['p'])}), F(1.0))")


def _sample_normal_kernel(k):
    fill = k.helper("fill_reparameterised", "netlang.runtime.random_bits")
    mu, logvar = (k.flat(x) for x in k.ins)
    k.line(f"{fill}({k.flat(k.out)}, {mu}, {logvar}, {k.key()}[0])")


def _bernoulli_kernel(k):
    fill = k.helper("fill_bernoulli", "netlang.runtime.random_bits")
    k.line(f"{fill}({k.flat(k.out)}, {k.flat(k.ins[0])}, {k.key()}[0])")


normal_noise.cpu_kernel = _normal_noise_kernel
masking_mask.cpu_kernel = _masking_mask_kernel
sample_normal.cpu_kernel = _sample_normal_kernel
bernoulli.cpu_kernel = _bernoulli_kernel


# CUDA: one element per thread, the CUDA engine passing the key as a scalar.  The hash and the
# draws are norm_loops.py's written out (a kernel calling no device function compiles to PTX
# without a GPU), in float64 as there; tests compare the draws with the reference's.  The RBM's
# Gibbs sampling kernels (netlang/ops/rbm_cuda.py) draw through these too.

def cuda_bits(k, key: str, index: str) -> str:
    """Emits `dropout_bits(key, index)`; returns the variable holding it."""
    z, u = k.fresh("z"), "np.uint64"
    k.line(f"{z} = {u}({key}) + ({u}({index}) + {u}(1)) * {u}({int(GOLDEN)})")
    k.line(f"{z} = ({z} ^ ({z} >> {u}(30))) * {u}({int(MIX1)})")
    k.line(f"{z} = ({z} ^ ({z} >> {u}(27))) * {u}({int(MIX2)})")
    k.line(f"{z} = {z} ^ ({z} >> {u}(31))")
    return z


def cuda_uniform(k, key: str, index: str) -> str:
    """Emits `uniform_draw(key, index)` in float64; returns its variable."""
    bits, value = cuda_bits(k, key, index), k.fresh("u")
    k.line(f"{value} = (np.float64({bits} >> np.uint64(11)) + 0.5) * {2.0 ** -53!r}")
    return value


def cuda_normal(k, key: str, index: str) -> str:
    """Emits normal draw `index` of stream `key` in float64 (its half of `normal_pair`: the
    cosine's for an even index, the sine's for an odd one); returns its variable."""
    pair = f"(np.uint64({index}) >> np.uint64(1))"
    first = cuda_uniform(k, key, f"{pair} * np.uint64(2)")
    second = cuda_uniform(k, key, f"{pair} * np.uint64(2) + np.uint64(1)")
    angle, value = k.fresh("angle"), k.fresh("n")
    k.line(f"{angle} = {2.0 * np.pi!r} * {second}")
    k.line(f"{value} = {k.math.sqrt(f'-2.0 * {k.math.log(first)}')} * "
           f"({k.math.sin(angle)} if {index} % 2 == 1 else {k.math.cos(angle)})")
    return value


def _normal_noise_cuda_kernel(k):
    out, key = k.flat(k.out), k.key()
    with k.parallel(f"{out}.size", "i"):
        draw = cuda_normal(k, key, "i")
        k.line(f"{out}[i] = {float(k.attrs['std'])!r} * {draw}")


def _masking_mask_cuda_kernel(k):
    out, key = k.flat(k.out), k.key()
    with k.parallel(f"{out}.size", "i"):
        bits = cuda_bits(k, key, "i")
        k.line(f"{out}[i] = F(1.0) if ({bits} >> np.uint64(32)) >= "
               f"np.uint64({dropout_threshold(k.attrs['p'])}) else F(0.0)")


def _sample_normal_cuda_kernel(k):
    out, key = k.flat(k.out), k.key()
    mu, logvar = (k.flat(x) for x in k.ins)
    with k.parallel(f"{out}.size", "i"):
        draw = cuda_normal(k, key, "i")
        k.line(f"{out}[i] = np.float64({mu}[i]) + "
               f"{k.math.exp(f'0.5 * np.float64({logvar}[i])')} * {draw}")


def _bernoulli_cuda_kernel(k):
    out, key, p = k.flat(k.out), k.key(), k.flat(k.ins[0])
    with k.parallel(f"{out}.size", "i"):
        draw = cuda_uniform(k, key, "i")
        k.line(f"{out}[i] = F(1.0) if {draw} < np.float64({p}[i]) else F(0.0)")


normal_noise.cuda_kernel = _normal_noise_cuda_kernel
masking_mask.cuda_kernel = _masking_mask_cuda_kernel
sample_normal.cuda_kernel = _sample_normal_cuda_kernel
bernoulli.cuda_kernel = _bernoulli_cuda_kernel


# ---- noise inputs ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NoiseDistribution:
    """A distribution an input may be drawn from (`input z: [64] ~ normal(std = 0.5)`): its
    arguments' schema (bound as a layer's are) and a NumPy draw of a batch."""

    name: str
    doc: str
    args: tuple
    draw: object   # fn(shape, key, attrs, dtype) -> array


NOISE_DISTRIBUTIONS = {
    "normal": NoiseDistribution(
        "normal", "independent normal draws (standard normal by default)",
        (Arg("mean", FLOAT, 0.0, doc="the mean"),
         Arg("std", FLOAT, 1.0, min=0.0, doc="the standard deviation")),
        lambda shape, key, a, dtype: normal_array(shape, key, a["mean"], a["std"], dtype)),
    "uniform": NoiseDistribution(
        "uniform", "independent uniform draws on (low, high) ((0, 1) by default)",
        (Arg("low", FLOAT, 0.0, doc="the lower end"), Arg("high", FLOAT, 1.0, doc="the upper end")),
        lambda shape, key, a, dtype: uniform_array(shape, key, a["low"], a["high"], dtype)),
}


def noise_input_array(noise: dict, shape, key, dtype=np.float32) -> np.ndarray:
    """A batch of a noise input: `noise` is the input's {"distribution": name, **arguments}
    (its graph attribute), `shape` the batch's full shape (examples first), `key` the stream.
    Example e's element j is draw e · size + j of the stream, size the elements per example."""
    distribution = NOISE_DISTRIBUTIONS[noise["distribution"]]
    return distribution.draw(tuple(shape), key, noise, dtype)


# ONNX: the training-only corruptions are the identity in an inference graph.  The draws of
# `sample_normal` and `bernoulli` have no ONNX form: ONNX's random ops cannot reproduce the
# counter-based generator's draws, so those ops are refused by name (tests/test_onnx.py).
gaussian_noise.onnx_rule = passthrough
masking_noise.onnx_rule = passthrough
