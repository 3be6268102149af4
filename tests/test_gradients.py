"""Gradient checks: every backward rule in the op registry against finite differences.

Each case is a tiny `.net` model, compiled from source, that applies one op (with
non-default arguments where it has them) and ends in a loss.  The reference engine
evaluates it in float64; every parameter gradient and the gradient with respect to
each data input is compared with central finite differences of the objective,
computed by running the *forward* graph alone (so the check does not lean on any
backward rule).  A registry walk makes sure no differentiable op escapes: an op with
a vjp rule needs a case here, an op without one is listed in PENDING with its reason.

Also here: the textbook facts the lectures quote (hinge loss on the CS231n example,
squared error = ½Σ(t−y)², σ' = σ(1−σ)), and, where PyTorch is installed, whole models
and each loss against torch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netlang
from netlang.interp import ExecContext, execute, needed_nodes
from netlang.ops import all_ops, get_op
from netlang.ops.init import initialize
from netlang.passes.autodiff import differentiate
from netlang.runtime.reference import ReferenceEngine

EPS = 1e-6     # central-difference step
RTOL = 1e-6    # max |analytic − numeric| ≤ RTOL · max(|analytic|, |numeric|) + ATOL
ATOL = 1e-8    # round-off of a difference quotient of O(1) losses is ~1e-10

# Graph leaves: gradients end there, they have no vjp by nature.
SOURCES = {"input", "param"}

# Differentiable ops whose backward rule has not landed yet.  When one gains a vjp rule,
# test_registry_coverage fails until it moves from here to a gradient case below.
PENDING: dict[str, str] = {
    # A training step differentiates the layer as rbm_chain + rbm_gap (its training rewrite);
    # outside one the chain's draw is not the forward pass's, so autodiff refuses it.
    "rbm": "differentiated as rbm_gap after its training rewrite; no rule in evaluation mode",
}


def _rbm_in_training_form(graph):
    """The RBM layer as a training step has it: rbm_gap(x, rbm_chain(x))."""
    for node in [n for n in graph.nodes if graph.op(n) == "rbm"]:
        get_op("rbm").training_rewrite_rule(graph, node)


# ---- drawing inputs ------------------------------------------------------------------------


def normal(scale=1.0):
    return lambda rng, shape: rng.normal(0.0, scale, shape)


def away_from(point=0.0, gap=0.2):
    """Normal draws pushed at least `gap` away from a kink at `point`."""
    def draw(rng, shape):
        n = rng.normal(0.0, 1.0, shape)
        return point + np.where(n < 0, -1.0, 1.0) * (gap + np.abs(n))
    return draw


def labels(k):
    return lambda rng, shape: rng.integers(0, k, shape)


def probabilities(rng, shape):
    e = np.exp(rng.normal(0.0, 1.0, shape))
    return e / e.sum(axis=-1, keepdims=True)


def unit_interval(rng, shape):
    return rng.uniform(0.05, 0.95, shape)


def positive(rng, shape):
    return rng.uniform(0.3, 2.0, shape)


def away_from_each(name, points, gap=0.05):
    """Validity: no element of `name` lies within `gap` of one of `points` (kinks)."""
    def valid(feeds):
        return all(bool(np.abs(feeds[name] - p).min() > gap) for p in points)
    return valid


def maxima_apart(name, axes, gap=0.05):
    """Validity: over `axes` (of the full shape), each maximum of `name` wins by `gap`."""
    def valid(feeds):
        x = np.moveaxis(feeds[name], axes, range(-len(axes), 0))
        top = np.sort(x.reshape(x.shape[:x.ndim - len(axes)] + (-1,)), axis=-1)
        return bool((top[..., -1] - top[..., -2]).min() > gap)
    return valid


def groups_apart(name, pieces, gap=0.05):
    """Validity: each maxout group of `name` has a unique maximum, `gap` clear of the rest."""
    def valid(feeds):
        x = feeds[name]
        g = np.sort(x.reshape(x.shape[:-1] + (-1, pieces)), axis=-1)
        return pieces == 1 or bool((g[..., -1] - g[..., -2]).min() > gap)
    return valid


def margins_apart(scores, label, margin=1.0, gap=0.05):
    """Validity: no hinge margin s_j − s_y + margin lies within `gap` of its kink."""
    def valid(feeds):
        s, y = feeds[scores], feeds[label]
        correct = np.take_along_axis(s, y[..., None], axis=-1)
        m = s - correct + margin
        np.put_along_axis(m, y[..., None], np.inf, axis=-1)
        return bool(np.abs(m).min() > gap)
    return valid


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    source: str
    # Input name → drawer(rng, full shape); float inputs default to standard normal.
    draw: dict = dataclasses.field(default_factory=dict)
    batch: int = 3
    # Redraw the feeds until this holds (keeps finite differences off kinks).
    valid: Callable | None = None
    # Edits the compiled graph: places an internal op the language never writes itself.
    rewrite: Callable | None = None
    # The op a case is filed under must appear in its forward graph (checked).
    extra_ops: tuple = ()

    def __repr__(self):
        return self.id


def _as_scale(name, factor):
    def rewrite(graph):
        node = graph.node_named(name)
        graph.replace_op(node, "scale", graph.operands(node), {"factor": factor})
    return rewrite


def se_model(body, inputs, out="y", out_shape=None):
    """A model: `inputs` lines, `body` lines defining `out`, squared error against `t`."""
    shape = f"input t: [{', '.join(map(str, out_shape))}]\n" if out_shape is not None else ""
    return (f"{inputs}\n{shape}{body}\noutput {out}\n"
            f"train {{ loss squared_error({out}, t) }}\n")


# ---- the table: op → its gradient cases ------------------------------------------------------

CASES: dict[str, list[Case]] = {
    "identity": [
        Case("identity", se_model("y = x -> identity -> dense(3)", "input x: [5]", out_shape=[3])),
    ],
    "sign": [
        # Zero gradient through the step; the input still learns through the dense branch.
        Case("sign_fanout", se_model("a = x -> sign\nb = x -> dense(4)\ny = a + b",
                                     "input x: [4]", out_shape=[4]),
             draw={"x": away_from(0.0)}),
    ],
    "threshold": [
        Case("threshold_value", se_model("a = x -> threshold(value = 0.3)\nb = x -> tanh\n"
                                         "y = (a, b) -> concat -> dense(2)",
                                         "input x: [4]", out_shape=[2]),
             draw={"x": away_from(0.3)}),
    ],
    "sigmoid": [
        Case("sigmoid_bce", "input x: [4]\ninput t: [3]\np = x -> dense(3) -> sigmoid\noutput p\n"
                            "train { loss binary_cross_entropy(p, t) }\n",
             draw={"t": unit_interval}),
        Case("sigmoid_direct", se_model("y = x -> sigmoid", "input x: [5]", out_shape=[5]),
             draw={"x": normal(3.0)}),
    ],
    "tanh": [
        Case("tanh", se_model("y = x -> tanh -> dense(3)", "input x: [4]", out_shape=[3]),
             draw={"x": normal(2.0)}),
    ],
    "relu": [
        Case("relu_direct", se_model("y = x -> relu -> dense(3)", "input x: [5]", out_shape=[3]),
             draw={"x": away_from(0.0)}),
        Case("relu_hidden", se_model("y = x -> dense(6) -> relu -> dense(2)", "input x: [4]",
                                     out_shape=[2])),
    ],
    "leaky_relu": [
        Case("leaky_relu_slope", "input x: [5]\ninput t: [2]\n"
                                 "y = x -> leaky_relu(slope = 0.2) -> dense(2)\noutput y\n"
                                 "train { loss mse(y, t) }\n",
             draw={"x": away_from(0.0)}),
    ],
    "elu": [
        Case("elu_alpha", se_model("y = x -> elu(alpha = 0.7) -> dense(2)", "input x: [5]",
                                   out_shape=[2]),
             draw={"x": away_from(0.0)}),
    ],
    "silu": [
        Case("silu", se_model("y = x -> silu -> dense(3)", "input x: [5]", out_shape=[3]),
             draw={"x": normal(3.0)}),
    ],
    "gelu": [
        Case("gelu_exact", se_model("y = x -> gelu -> dense(3)", "input x: [5]", out_shape=[3]),
             draw={"x": normal(2.0)}),
        Case("gelu_tanh", se_model("y = x -> dense(4) -> gelu(approximate = tanh)",
                                   "input x: [5]", out_shape=[4]),
             draw={"x": normal(2.0)}),
    ],
    "softmax": [
        Case("softmax_last", se_model("y = x -> softmax", "input x: [5]", out_shape=[5]),
             draw={"t": probabilities}),
        Case("softmax_axis0_3d", se_model("y = x -> softmax(axis = 0) -> flatten -> dense(3)",
                                          "input x: [3, 4]", out_shape=[3])),
        Case("softmax_middle_axis", se_model("y = x -> softmax(axis = 1)", "input x: [2, 3, 2]",
                                             out_shape=[2, 3, 2])),
    ],
    "log_softmax": [
        Case("log_softmax_last", se_model("y = x -> log_softmax", "input x: [4]", out_shape=[4])),
        Case("log_softmax_axis0_3d", se_model("y = x -> log_softmax(axis = 0) -> dense(2)",
                                              "input x: [3, 4]", out_shape=[3, 2])),
    ],
    "maxout": [
        Case("maxout_pieces3", se_model("y = x -> maxout(pieces = 3) -> dense(2)", "input x: [6]",
                                        out_shape=[2]),
             valid=groups_apart("x", 3)),
        Case("maxout_3d", se_model("y = x -> maxout(pieces = 2)", "input x: [2, 4]",
                                   out_shape=[2, 2]),
             valid=groups_apart("x", 2)),
    ],
    # Tensor math (ops/elementwise.py, ops/reduce.py): functions, arithmetic with numbers and
    # between tensors (broadcast both ways), reductions and slices, each ending in a loss.
    "exp": [Case("exp_scaled", se_model("y = exp(x) * 0.5 + 1", "input x: [5]", out_shape=[5]))],
    "log": [Case("log", se_model("y = log(x)", "input x: [5]", out_shape=[5]),
                 draw={"x": positive})],
    "sqrt": [Case("sqrt", se_model("y = x -> sqrt -> dense(2)", "input x: [4]", out_shape=[2]),
                  draw={"x": positive})],
    "square": [Case("square", se_model("y = square(x) - x", "input x: [5]", out_shape=[5]))],
    "abs": [Case("abs", se_model("y = x -> abs -> dense(3)", "input x: [4]", out_shape=[3]),
                 draw={"x": away_from(0.0)})],
    "softplus": [Case("softplus_wide", se_model("y = softplus(x)", "input x: [6]", out_shape=[6]),
                      draw={"x": normal(8.0)})],
    "clip": [Case("clip_bounds", se_model("y = x -> clip(-0.5, 1) -> dense(3)", "input x: [6]",
                                          out_shape=[3]),
                  valid=away_from_each("x", (-0.5, 1.0)))],
    "pow": [Case("pow_cube", se_model("y = x ** 3", "input x: [5]", out_shape=[5])),
            Case("pow_fraction", se_model("y = x -> pow(0.5)", "input x: [5]", out_shape=[5]),
                 draw={"x": positive})],
    # Sign is flat near the draws: the blocked gradient is zero either way.  That no gradient
    # flows through is test_stop_gradient_blocks_the_gradient's.
    "stop_gradient": [Case("stop_gradient_flat", se_model(
        "y = x * stop_gradient(sign(x)) + x", "input x: [4]", out_shape=[4]),
        draw={"x": away_from(0.0)})],
    "subtract": [Case("subtract", se_model("h = a -> dense(3)\ny = h - b", "input a: [4]\ninput b: [3]",
                                           out_shape=[3]))],
    "divide": [Case("divide_broadcast", se_model("y = a / softplus(b)",
                                                 "input a: [2, 3]\ninput b: [3]",
                                                 out_shape=[2, 3]))],
    "add_scalar": [Case("add_scalar_both_sides", se_model("y = 1 - (x + 2)", "input x: [4]",
                                                          out_shape=[4]))],
    "rdivide_scalar": [Case("rdivide_scalar", se_model("y = 2 / x", "input x: [4]",
                                                       out_shape=[4]),
                            draw={"x": positive})],
    "broadcast_to": [
        Case("broadcast_both_operands", se_model("y = a * b + c", "input a: [3, 1]\n"
                                                 "input b: [4]\ninput c: [1, 4]",
                                                 out_shape=[3, 4])),
    ],
    "sum": [
        Case("sum_axes_keepdims", se_model("y = x - sum(x, axis = (0, 2), keepdims = true)",
                                           "input x: [2, 3, 2]", out_shape=[2, 3, 2])),
        Case("sum_last", se_model("y = x -> sum -> dense(2)", "input x: [3, 4]", out_shape=[2])),
    ],
    "mean": [Case("mean_middle", se_model("y = mean(x, axis = 1)", "input x: [2, 3, 4]",
                                          out_shape=[2, 4]))],
    "max": [
        Case("max_first_axis", se_model("y = max(x, axis = 0)", "input x: [4, 3]",
                                        out_shape=[3]), valid=maxima_apart("x", (1,))),
        Case("max_all_keepdims", se_model("y = x - max(x, axis = (0, 1), keepdims = true)",
                                          "input x: [2, 3]", out_shape=[2, 3]),
             valid=maxima_apart("x", (1, 2))),
    ],
    "slice": [Case("slice_middle_axis", se_model("y = x -> slice(1, 3, axis = 0)",
                                                 "input x: [4, 2]", out_shape=[2, 2]))],
    "dense": [
        Case("dense", se_model("y = x -> dense(3)", "input x: [4]", out_shape=[3])),
        Case("dense_no_bias", se_model("y = x -> dense(3, bias = false) -> tanh -> dense(2)",
                                       "input x: [4]", out_shape=[2])),
        Case("dense_3d_input", se_model("y = x -> dense(4) -> tanh -> dense(2)", "input x: [3, 5]",
                                        out_shape=[3, 2])),
        Case("dense_tied", se_model("h = x -> dense(3) as enc -> tanh\n"
                                    "y = h -> dense(5, tie = enc)", "input x: [5]", out_shape=[5]),
             extra_ops=("transpose",)),
        Case("dense_shared", se_model("a = x -> dense(4) as fc -> tanh\n"
                                      "b = z -> dense(4, share = fc) -> sigmoid\n"
                                      "y = (a, b) -> concat -> dense(2)",
                                      "input x: [3]\ninput z: [3]", out_shape=[2])),
    ],
    "embedding": [
        Case("embedding_repeated_ids",
             "input ids: int[6]\ninput label: int[]\n"
             "y = ids -> embedding(4, 3) -> flatten -> dense(3)\noutput y\n"
             "train { loss cross_entropy(y, label) }\n",
             # Six positions over a vocabulary of four: every example repeats an id.
             draw={"ids": labels(4), "label": labels(3)}),
        Case("embedding_sequence_dense",
             "input ids: int[5]\ninput t: [5, 2]\n"
             "y = ids -> embedding(3, 4) -> dense(2)\noutput y\n"
             "train { loss squared_error(y, t) }\n",
             draw={"ids": labels(3)}),
    ],
    "concat": [
        Case("concat_axis0_3d", se_model("y = (a, b) -> concat(axis = 0) -> dense(2)",
                                         "input a: [2, 3]\ninput b: [4, 3]", out_shape=[6, 2])),
        Case("concat_last_three", se_model("c = a -> tanh\ny = (a, b, c) -> concat(axis = -1) -> dense(2)",
                                           "input a: [2, 3]\ninput b: [2, 1]", out_shape=[2, 2])),
        Case("concat_same_twice", se_model("y = (x, x) -> concat -> dense(3)", "input x: [4]",
                                           out_shape=[3])),
    ],
    "add": [
        Case("add_residual", se_model("h = x -> dense(4) -> tanh\ny = h + x", "input x: [4]",
                                      out_shape=[4])),
        Case("add_fanout_three", se_model("h = x -> dense(3)\n"
                                          "p = h -> sigmoid\nq = h -> tanh\ny = (h, p, q) -> add",
                                          "input x: [2]", out_shape=[3])),
    ],
    "multiply": [
        Case("multiply_three", se_model("a = x -> dense(3)\nb = x -> tanh -> dense(3)\n"
                                        "y = (a, b, z) -> multiply", "input x: [4]\ninput z: [3]",
                                        out_shape=[3])),
        Case("multiply_square", se_model("h = x -> dense(3)\ny = h * h", "input x: [2]",
                                         out_shape=[3])),
        Case("multiply_repeated_operand", se_model("y = (x, z, x) -> multiply",
                                                   "input x: [3]\ninput z: [3]", out_shape=[3])),
    ],
    "flatten": [
        Case("flatten", se_model("y = x -> flatten -> dense(2)", "input x: [2, 3, 2]",
                                 out_shape=[2])),
    ],
    "reshape": [
        Case("reshape", se_model("y = x -> reshape(shape = (3, -1)) -> dense(2)", "input x: [6]",
                                 out_shape=[3, 2])),
    ],
    "permute": [
        Case("permute_3axes", se_model("y = x -> permute(axes = (2, 0, 1)) -> flatten -> dense(3)",
                                       "input x: [2, 3, 4]", out_shape=[3])),
        Case("permute_then_dense", se_model("y = x -> permute(axes = (1, 0)) -> dense(2)",
                                            "input x: [3, 4]", out_shape=[4, 2])),
    ],
    "dropout": [
        # In training the mask is redrawn every step; the check replays one fixed mask.
        Case("dropout_train", se_model("y = x -> dense(6) -> dropout(0.5) -> dense(2)",
                                       "input x: [3]", out_shape=[2])),
    ],
    # The sampling ops (netlang/ops/noise.py): each check replays one fixed draw, as dropout's.
    "gaussian_noise": [
        Case("gaussian_noise_train", se_model("y = x -> dense(5) -> gaussian_noise(0.7) -> dense(2)",
                                              "input x: [3]", out_shape=[2])),
    ],
    "masking_noise": [
        Case("masking_noise_train", se_model("y = x -> dense(6) -> masking_noise(0.4) -> dense(2)",
                                             "input x: [3]", out_shape=[2])),
    ],
    "sample_normal": [
        Case("sample_normal_reparameterised", se_model(
            "mu = x -> dense(4)\nlogvar = x -> dense(4)\ny = (mu, logvar) -> sample_normal -> dense(2)",
            "input x: [3]", out_shape=[2])),
    ],
    "rbm_gap": [
        # The chain's binary draws are step functions of the parameters, so central differences
        # see the gap with the sample held constant, as its rule does.
        Case("rbm_gap_cd2", "input x: [5]\ng = x -> rbm(3, k = 2)\noutput g\n"
                            "train { loss g }\n", rewrite=_rbm_in_training_form,
             draw={"x": unit_interval}),
        Case("rbm_gap_persistent", "input x: [4]\ng = x -> rbm(3, persistent = true, chains = 3)"
                                   "\noutput g\ntrain { loss 0.5 * g }\n",
             rewrite=_rbm_in_training_form),
        # Gaussian visible units are checked in test_rbm.py with the sample fixed: their draw
        # moves continuously with the parameters, so a finite difference would move it too.
        Case("rbm_gap_through_dense",
             "input x: [4]\nv = x -> dense(5) -> sigmoid\ng = v -> rbm(3, k = 1)\n"
             "output g\ntrain { loss g }\n", rewrite=_rbm_in_training_form),
    ],
    "bernoulli": [
        # No gradient through the draw: only the other branch's parameters get one (a draw
        # this close to its threshold would flip under the finite difference: none is).
        Case("bernoulli_no_gradient", se_model(
            "b = x -> dense(3) -> sigmoid -> bernoulli\nd = x -> dense(3)\ny = b + d",
            "input x: [4]", out_shape=[3])),
    ],
    "transpose": [
        Case("transpose_tied_autoencoder",
             se_model("h = x -> dense(2) as enc -> sigmoid\ny = h -> dense(4, tie = enc)",
                      "input x: [4]", out_shape=[4])),
    ],
    "scale": [
        Case("scale", se_model("y = x -> dense(3) -> identity as sc -> tanh", "input x: [3]",
                               out_shape=[3]),
             rewrite=_as_scale("sc", -1.7)),
    ],
    "loss_sum": [
        Case("loss_sum_weighted",
             "input x: [4]\ninput label: int[]\ninput t: [3]\ny = x -> dense(3)\n"
             "z = x -> tanh -> dense(3)\noutput y\n"
             "train { loss 0.3 * cross_entropy(y, label) + 2 * squared_error(z, t)"
             " + mse(y, t) * 0.5 }\n",
             draw={"label": labels(3)}),
    ],
    "cross_entropy": [
        Case("cross_entropy_labels",
             "input x: [4]\ninput label: int[]\ny = x -> dense(3)\noutput y\n"
             "train { loss cross_entropy(y, label) }\n",
             batch=4, draw={"label": labels(3)}),
        Case("cross_entropy_labels_smoothing",
             "input x: [4]\ninput label: int[]\ny = x -> dense(5)\noutput y\n"
             "train { loss cross_entropy(y, label, label_smoothing = 0.2) }\n",
             draw={"label": labels(5)}),
        Case("cross_entropy_probabilities_smoothing",
             "input x: [4]\ninput p: [3]\ny = x -> dense(3)\noutput y\n"
             "train { loss cross_entropy(y, p, label_smoothing = 0.1) }\n",
             draw={"p": probabilities}),
        # Soft targets that are not distributions (weights per class): -Σ t·log softmax(s).
        Case("cross_entropy_unnormalised_targets",
             "input x: [4]\ninput p: [3]\ny = x -> dense(3)\noutput y\n"
             "train { loss cross_entropy(y, p) }\n",
             draw={"p": unit_interval}),
        Case("cross_entropy_sequence",
             "input x: [3, 4]\ninput label: int[3]\ny = x -> dense(3)\noutput y\n"
             "train { loss cross_entropy(y, label) }\n",
             draw={"label": labels(3)}),
    ],
    "binary_cross_entropy": [
        Case("bce_probabilities",
             "input x: [4]\ninput t: [3]\np = x -> dense(3) -> sigmoid\noutput p\n"
             "train { loss binary_cross_entropy(p, t) }\n",
             draw={"t": unit_interval}),
        Case("bce_probability_input",  # the prediction itself is fed, away from 0 and 1
             "input q: [3]\ninput t: [3]\np = q -> identity\noutput p\n"
             "train { loss binary_cross_entropy(p, t) }\n",
             draw={"q": unit_interval, "t": unit_interval}),
        Case("bce_logits",
             "input x: [4]\ninput t: [3]\ns = x -> dense(3)\noutput s\n"
             "train { loss binary_cross_entropy(s, t, logits = true) }\n",
             draw={"x": normal(3.0), "t": unit_interval}),
        Case("bce_int_labels_one_unit",
             "input x: [4]\ninput label: int[]\ns = x -> dense(1)\noutput s\n"
             "train { loss binary_cross_entropy(s, label, logits = true) }\n",
             batch=4, draw={"label": labels(2)}),
    ],
    "squared_error": [
        Case("squared_error", se_model("y = x -> dense(3)", "input x: [4]", out_shape=[3])),
        Case("squared_error_int_one_unit",
             "input x: [4]\ninput label: int[]\ny = x -> dense(1)\noutput y\n"
             "train { loss squared_error(y, label) }\n",
             draw={"label": labels(5)}),
        Case("squared_error_int_one_hot",
             "input x: [4]\ninput label: int[]\ny = x -> dense(3) -> softmax\noutput y\n"
             "train { loss squared_error(y, label) }\n",
             draw={"label": labels(3)}),
    ],
    "mse": [
        Case("mse", "input x: [4]\ninput t: [2, 3]\ny = x -> dense(6) -> reshape(shape = (2, 3))\n"
                    "output y\ntrain { loss mse(y, t) }\n"),
        Case("mse_int_one_unit",
             "input x: [2]\ninput label: int[]\ny = x -> dense(1)\noutput y\n"
             "train { loss mse(y, label) }\n",
             draw={"label": labels(4)}),
    ],
    "kl_normal": [
        Case("kl_normal_dense",
             "input x: [4]\nmu = x -> dense(3)\nlogvar = x -> tanh -> dense(3)\noutput mu\n"
             "train { loss kl_normal(mu, logvar) }\n"),
        Case("kl_normal_inputs", "input m: [2, 3]\ninput v: [2, 3]\n"
                                 "train { loss 0.5 * kl_normal(m, v) }\n"),
    ],
    "batch_mean": [
        # Terms written as expressions: a [1] and two [] per example, one weighted negative.
        Case("batch_mean_expressions",
             "input x: [4]\ns = x -> dense(1)\nh = x -> tanh -> dense(2)\noutput s\n"
             "train { loss softplus(-s) - 0.3 * sum(square(h), axis = 0) "
             "+ mean(h * s, axis = 0) / 2 }\n"),
        Case("batch_mean_inputs", "input x: [3]\ntrain { loss sum(x * x, axis = 0) }\n"),
    ],
    "hinge": [
        Case("hinge_scores",
             "input s: [4]\ninput label: int[]\ny = s -> identity\noutput y\n"
             "train { loss hinge(y, label) }\n",
             batch=5, draw={"label": labels(4)}, valid=margins_apart("s", "label")),
        Case("hinge_margin_dense",
             "input x: [3]\ninput label: int[]\ny = x -> dense(4)\noutput y\n"
             "train { loss hinge(y, label, margin = 0.5) }\n",
             batch=4, draw={"label": labels(4)}),
    ],
    "conv2d": [
        Case("conv2d", se_model("y = x -> conv2d(3, 3)", "input x: [5, 5, 2]", out_shape=[3, 3, 3]),
             batch=2),
        Case("conv2d_stride2_padding1", se_model("y = x -> conv2d(2, 3, stride = 2, padding = 1)",
                                                 "input x: [5, 5, 2]", out_shape=[3, 3, 2]),
             batch=2),
        # Even kernels under `same`: the odd padding goes to the bottom/right.
        Case("conv2d_same_even_kernel", se_model("y = x -> conv2d(2, (2, 4), stride = 2, padding = same)",
                                                 "input x: [5, 6, 2]", out_shape=[3, 3, 2]),
             batch=2),
        Case("conv2d_same_even_kernel_stride1", se_model("y = x -> conv2d(2, 2, padding = same) -> tanh",
                                                         "input x: [3, 4, 2]", out_shape=[3, 4, 2]),
             batch=2),
        Case("conv2d_dilation2_asymmetric_padding",
             se_model("y = x -> conv2d(2, 3, dilation = 2, padding = ((1, 0), (2, 1)), bias = false)",
                      "input x: [6, 5, 1]", out_shape=[3, 4, 2]), batch=2),
        Case("conv2d_groups2", se_model("y = x -> conv2d(4, 3, groups = 2, padding = 1)",
                                        "input x: [3, 4, 4]", out_shape=[3, 4, 4]), batch=2),
        Case("conv2d_depthwise", se_model("y = x -> conv2d(6, 3, groups = 3, stride = (1, 2))",
                                          "input x: [5, 5, 3]", out_shape=[3, 2, 6]), batch=2),
        Case("conv2d_stack", se_model("y = x -> conv2d(3, 2, stride = 2) -> tanh -> conv2d(2, 2)",
                                      "input x: [5, 5, 1]", out_shape=[1, 1, 2]), batch=3),
    ],
    "conv_transpose2d": [
        # padding >= output_padding: the input gradient is a plain conv2d of g.
        Case("conv_transpose2d_stride2", se_model(
            "y = x -> conv_transpose2d(2, 3, stride = 2, padding = 1, output_padding = 1)",
            "input x: [3, 3, 2]", out_shape=[6, 6, 2]), batch=2),
        # output_padding beyond the padding: a conv2d cropped to the input (an internal op).
        Case("conv_transpose2d_output_padding", se_model(
            "y = x -> conv_transpose2d(3, 2, stride = 2, output_padding = 1, bias = false)",
            "input x: [3, 2, 2]", out_shape=[7, 5, 3]), batch=2),
        Case("conv_transpose2d_dilation_groups", se_model(
            "y = x -> conv_transpose2d(4, (2, 3), dilation = 2, groups = 2, padding = (1, 0))",
            "input x: [3, 3, 4]", out_shape=[3, 7, 4]), batch=2),
        Case("conv_transpose2d_dilation_output_padding", se_model(
            "y = x -> conv_transpose2d(2, 2, dilation = 2, output_padding = (1, 0))",
            "input x: [3, 3, 1]", out_shape=[6, 5, 2]), batch=2),
        Case("conv_transpose2d_autoencoder", se_model(
            "h = x -> conv2d(2, 3, stride = 2, padding = 1) -> tanh\n"
            "y = h -> conv_transpose2d(1, 3, stride = 2, padding = 1, output_padding = 1)",
            "input x: [4, 4, 1]", out_shape=[4, 4, 1]), batch=2),
    ],
    "maxpool": [
        Case("maxpool2", se_model("y = x -> maxpool(2)", "input x: [4, 4, 2]", out_shape=[2, 2, 2]),
             batch=2),
        # Overlapping windows; in ceil mode the last row/column of windows hangs off the edge.
        Case("maxpool_ceil_mode_padding", se_model(
            "y = x -> maxpool(3, stride = 2, padding = 1, ceil_mode = true)",
            "input x: [6, 5, 2]", out_shape=[4, 3, 2]), batch=2),
        Case("maxpool_same_asymmetric", se_model(
            "y = x -> maxpool((2, 3), stride = (2, 1), padding = same)",
            "input x: [5, 4, 1]", out_shape=[3, 4, 1]), batch=2),
        Case("maxpool_after_conv", se_model("y = x -> conv2d(2, 2) -> maxpool(2) -> flatten -> dense(2)",
                                            "input x: [5, 5, 1]", out_shape=[2]), batch=3),
    ],
    "avgpool": [
        Case("avgpool2", se_model("y = x -> avgpool(2)", "input x: [4, 4, 2]", out_shape=[2, 2, 2]),
             batch=2),
        Case("avgpool_ceil_mode_padding", se_model(
            "y = x -> avgpool(3, stride = 2, padding = 1, ceil_mode = true)",
            "input x: [6, 5, 2]", out_shape=[4, 3, 2]), batch=2),
        Case("avgpool_exclude_padding", se_model(
            "y = x -> avgpool(3, stride = 2, padding = 1, ceil_mode = true, count_include_pad = false)",
            "input x: [6, 5, 2]", out_shape=[4, 3, 2]), batch=2),
        Case("avgpool_same_asymmetric_exclude", se_model(
            "y = x -> avgpool((2, 3), stride = (2, 1), padding = same, count_include_pad = false)",
            "input x: [5, 4, 1]", out_shape=[3, 4, 1]), batch=2),
    ],
    "global_avgpool": [
        Case("global_avgpool", se_model("y = x -> global_avgpool -> dense(2)", "input x: [3, 4, 2]",
                                        out_shape=[2])),
        Case("global_avgpool_after_conv", se_model("y = x -> conv2d(3, 2) -> global_avgpool",
                                                   "input x: [4, 3, 2]", out_shape=[3])),
    ],
    # Training mode: each output depends on the whole batch through its statistics.
    "batchnorm": [
        Case("batchnorm_features", se_model("y = x -> batchnorm", "input x: [3]", out_shape=[3]),
             batch=4),
        Case("batchnorm_channels_last", se_model(
            "y = x -> conv2d(3, 2, bias = false) -> batchnorm(momentum = 0.3) -> tanh",
            "input x: [3, 3, 2]", out_shape=[2, 2, 3]), batch=2),
        Case("batchnorm_images", se_model("y = x -> batchnorm(eps = 0.01) -> flatten -> dense(2)",
                                          "input x: [2, 3, 2]", out_shape=[2]), batch=2),
        Case("batchnorm_sequence", se_model("y = x -> batchnorm -> dense(2)", "input x: [4, 3]",
                                            out_shape=[4, 2]), batch=2),
    ],
    "lrn": [
        Case("lrn_images", se_model("y = x -> lrn(size = 3, alpha = 0.5, beta = 0.75, k = 1.0)",
                                    "input x: [2, 2, 5]", out_shape=[2, 2, 5]), batch=2),
        Case("lrn_even_size_sequence", se_model("y = x -> lrn(size = 4, alpha = 1.0, beta = 0.6, k = 2)",
                                                "input x: [3, 6]", out_shape=[3, 6]), batch=2),
        Case("lrn_window_wider_than_channels", se_model(
            "y = x -> lrn(size = 5, alpha = 0.2) -> global_avgpool", "input x: [2, 2, 3]",
            out_shape=[3]), batch=2),
    ],
    # Backpropagation through time (ops/recurrent_reference.py): every parameter, the input,
    # the initial states; `lengths` from 0 (all padding) to the whole sequence.  More in
    # test_recurrent.py, with PyTorch.
    "rnn": [
        Case("rnn_tanh_lengths_states", se_model(
            "y = x -> rnn(3, sequences = true, h0 = h, lengths = n)",
            "input x: [4, 2]\ninput h: [3]\ninput n: int32[]", out_shape=[4, 3]),
             draw={"n": labels(5)}),
        Case("rnn_relu_stacked_bidirectional", se_model(
            "y = x -> rnn(3, layers = 2, bidirectional = true, activation = relu)",
            "input x: [4, 2]", out_shape=[6])),
    ],
    "lstm": [
        Case("lstm_stacked_bidirectional_states_lengths", se_model(
            "y = x -> lstm(3, layers = 2, bidirectional = true, h0 = h, c0 = c, lengths = n)",
            "input x: [4, 2]\ninput h: [4, 3]\ninput c: [4, 3]\ninput n: int32[]",
            out_shape=[6]), draw={"n": labels(5)}),
        Case("lstm_dropout_between_layers", se_model(
            "y = x -> lstm(3, layers = 3, dropout = 0.4, sequences = true)", "input x: [4, 2]",
            out_shape=[4, 3])),   # the training program draws a `recurrent_dropout_mask`
    ],
    "gru": [
        Case("gru_bidirectional_sequences_lengths", se_model(
            "y = x -> gru(3, bidirectional = true, sequences = true, h0 = h, lengths = n)",
            "input x: [4, 2]\ninput h: [2, 3]\ninput n: int32[]", out_shape=[4, 6]),
             draw={"n": labels(5)}),
    ],
}

ALL_CASES = [case for cases in CASES.values() for case in cases]


def test_registry_coverage():
    """Every differentiable op has a gradient case or an explicit reason it has none yet."""
    # An op that expands into others (`split`) has no graph node, so no rule of its own.
    needed = {name for name, op in all_ops().items()
              if name not in SOURCES and op.expand_rule is None
              and (op.role in ("layer", "loss") or op.differentiable)}
    with_vjp = {name for name in needed if all_ops()[name].vjp_rule is not None}
    missing = sorted(with_vjp - set(CASES))
    assert not missing, f"ops with a vjp rule but no gradient case in CASES: {missing}"
    unlisted = sorted(needed - with_vjp - set(PENDING))
    assert not unlisted, f"differentiable ops with no vjp rule and not listed in PENDING: {unlisted}"
    graduated = sorted(set(PENDING) & with_vjp)
    assert not graduated, (f"ops in PENDING now have a vjp rule; give them gradient cases and "
                           f"drop them from PENDING: {graduated}")
    stale = sorted((set(CASES) | set(PENDING)) - needed)
    assert not stale, f"CASES/PENDING name ops that are not differentiable registry ops: {stale}"
    assert all(CASES[name] for name in CASES), "an op in CASES has an empty list of cases"


def test_an_op_without_a_backward_rule_refuses_to_train(monkeypatch):
    """An op with no vjp rule fails loudly in autodiff rather than training with a wrong
    gradient (every registry op has one today, so one is taken away for the test)."""
    monkeypatch.setattr(get_op("tanh"), "vjp_rule", None)
    model = netlang.compile("input x: [3]\ninput t: [4]\n"
                            "y = x -> dense(4) -> tanh\noutput y\n"
                            "train { loss mse(y, t) }\n")
    with pytest.raises(netlang.NetlangError, match="no backward rule"):
        differentiate(model.graph.copy(), list(model.graph.parameters().values()))


# ---- the checker ---------------------------------------------------------------------------


def compile_case(case: Case):
    graph = netlang.compile(case.source).graph
    if case.rewrite:
        case.rewrite(graph)
    return graph


def draw_feeds(graph, case: Case, rng, batch):
    for _ in range(200):
        feeds = {}
        for name, node in graph.graph["inputs"].items():
            t = graph.type_of(node)
            shape = (batch,) + tuple(t.shape[1:])
            if name in case.draw:
                feeds[name] = np.asarray(case.draw[name](rng, shape))
            elif t.is_float:
                feeds[name] = rng.normal(0.0, 1.0, shape)
            else:
                raise AssertionError(f"case {case.id}: integer input `{name}` needs a drawer")
        if case.valid is None or case.valid(feeds):
            return feeds
    raise AssertionError(f"case {case.id}: could not draw valid inputs")


def differentiable_inputs(graph) -> list[str]:
    """Float data inputs: not loss targets (the losses pass no gradient to their target)."""
    targets = {graph.operands(node)[1] for node, _ in graph.graph["losses"]
               if all_ops()[graph.op(node)].operand_names == ("prediction", "target")}
    return [name for name, node in graph.graph["inputs"].items()
            if graph.type_of(node).is_float and node not in targets]


def random_params(graph, rng) -> dict:
    # Fresh values (biases included) rather than the init schemes' zeros and small weights.
    return {name: rng.normal(0.0, 0.6, value.shape)
            for name, value in initialize(graph, 0, np.float64).items()}


class Objective:
    """The training objective Σ wᵢ·lossᵢ from the forward graph, dropout masks replayed."""

    def __init__(self, graph, mask_seed, mode="train"):
        self.graph = graph
        self.losses = graph.graph["losses"]
        self.order = needed_nodes(graph, [n for n, _ in self.losses])
        self.mask_seed = mask_seed
        self.mode = mode

    def __call__(self, feeds, params) -> float:
        ctx = ExecContext(mode=self.mode, rng=np.random.default_rng(self.mask_seed), dtype=np.float64)
        values = execute(self.graph, feeds, params, [n for n, _ in self.losses], ctx, order=self.order)
        return sum(w * float(values[n]) for n, w in self.losses)


def numeric_gradient(f, array: np.ndarray, eps=EPS) -> np.ndarray:
    """Central differences of f() with respect to `array`, which f reads (edited in place)."""
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array)
    grad = np.zeros(flat.size)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad.reshape(array.shape)


def assert_close(analytic, numeric, what, rtol=RTOL, atol=ATOL):
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, f"{what}: gradient shape {analytic.shape}, expected {numeric.shape}"
    error = float(np.abs(analytic - numeric).max(initial=0.0))
    scale = max(float(np.abs(analytic).max(initial=0.0)), float(np.abs(numeric).max(initial=0.0)))
    assert error <= rtol * scale + atol, (
        f"{what}: max |analytic − numeric| = {error:.3g} at scale {scale:.3g} "
        f"(relative {error / max(scale, 1e-300):.3g})\nanalytic:\n{analytic}\nnumeric:\n{numeric}")


def check_gradients(graph, feeds, params, label, mask_seed=1234):
    """Engine gradients (float64) of every parameter and data input vs finite differences."""
    inputs = differentiable_inputs(graph)
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()},
                             dtype=np.float64, input_grads=inputs)
    engine.rng = np.random.default_rng(mask_seed)
    loss, grads, _ = engine.gradients(feeds)
    objective = Objective(graph, mask_seed)
    assert loss == pytest.approx(objective(feeds, params), rel=1e-12, abs=1e-12), f"{label}: loss"
    assert set(grads) == set(engine.trainable) | set(inputs)
    params = {k: v.copy() for k, v in params.items()}
    feeds = {k: np.array(v, dtype=np.float64 if graph.type_of(graph.graph["inputs"][k]).is_float
                         else v.dtype) for k, v in feeds.items()}
    for name in engine.trainable:
        numeric = numeric_gradient(lambda: objective(feeds, params), params[name])
        assert_close(grads[name], numeric, f"{label}: d objective / d {name}")
    for name in inputs:
        numeric = numeric_gradient(lambda: objective(feeds, params), feeds[name])
        assert_close(grads[name], numeric, f"{label}: d objective / d input {name}")
    return loss, grads


@pytest.mark.parametrize("op_name,case", [(op, c) for op, cs in CASES.items() for c in cs],
                         ids=[c.id for cs in CASES.values() for c in cs])
def test_gradient_case(op_name, case):
    graph = compile_case(case)
    ops = {graph.op(n) for n in graph.nodes}
    if op_name == "loss_sum":  # autodiff adds the objective; exercise it with weights and terms
        weights = [w for _, w in graph.graph["losses"]]
        assert len(weights) > 1 and any(w != 1 for w in weights)
    else:
        assert op_name in ops, f"case {case.id} is filed under `{op_name}` but never applies it"
    assert set(case.extra_ops) <= ops
    rng = np.random.default_rng(sum(map(ord, case.id)))
    feeds = draw_feeds(graph, case, rng, case.batch)
    check_gradients(graph, feeds, random_params(graph, rng), case.id)


def test_case_ids_unique():
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


def test_dropout_rule_in_evaluation_mode():
    """dropout's own vjp (the identity) on a graph differentiated without the training rewrite."""
    case = CASES["dropout"][0]
    graph = compile_case(case).copy()
    rng = np.random.default_rng(5)
    feeds = draw_feeds(graph, case, rng, 3)
    params = random_params(graph, rng)
    wrt = list(graph.parameters().values()) + [graph.graph["inputs"]["x"]]
    grads = differentiate(graph, wrt)
    ctx = ExecContext(mode="eval", dtype=np.float64)
    values = execute(graph, feeds, params, [grads.objective] + list(grads.of.values()), ctx)
    objective = Objective(graph, 0, mode="eval")
    feeds = {k: np.array(v, dtype=np.float64) for k, v in feeds.items()}
    for node, g in grads.of.items():
        name = graph.nodes[node]["name"]
        target = feeds[name] if name in feeds else params[name]
        assert_close(values[g], numeric_gradient(lambda: objective(feeds, params), target), name)


def test_batchnorm_rule_in_evaluation_mode():
    """In evaluation batch norm uses the running statistics, forward and backward."""
    case = CASES["batchnorm"][1]
    graph = compile_case(case)
    rng = np.random.default_rng(6)
    feeds = draw_feeds(graph, case, rng, 2)
    params = random_params(graph, rng)
    params = {k: np.abs(v) + 0.5 if k.endswith("running_var") else v for k, v in params.items()}
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()},
                             dtype=np.float64, input_grads=("x",))
    loss, grads, _ = engine.gradients(feeds, mode="eval")
    objective = Objective(graph, 0, mode="eval")
    assert loss == pytest.approx(objective(feeds, params), rel=1e-12)
    assert loss != pytest.approx(Objective(graph, 0)(feeds, params), rel=1e-3)  # not batch stats
    feeds = {k: np.array(v, dtype=np.float64) for k, v in feeds.items()}
    for name in engine.trainable:
        assert_close(grads[name], numeric_gradient(lambda: objective(feeds, params), params[name]), name)
    assert_close(grads["x"], numeric_gradient(lambda: objective(feeds, params), feeds["x"]), "x")


def test_dropout_is_off_outside_training():
    """Evaluation mode (the engine's `loss`, `gradients(mode="eval")`) applies no mask."""
    graph = netlang.compile(se_model("y = x -> dropout(0.5)", "input x: [6]", out_shape=[6])).graph
    feeds = {"x": np.ones((4, 6)), "t": np.zeros((4, 6))}
    engine = ReferenceEngine(graph, dtype=np.float64, input_grads=("x",))
    assert engine.loss(feeds) == pytest.approx(3.0)
    assert engine.loss(feeds) == pytest.approx(3.0)
    loss, grads, outputs = engine.gradients(feeds, mode="eval")
    assert loss == pytest.approx(3.0)
    np.testing.assert_allclose(grads["x"], np.full((4, 6), 0.25))
    # In training the mask is 0 or 1/(1 − rate) and the gradient uses the same mask.
    loss, grads, outputs = engine.gradients(feeds, mode="train")
    assert set(np.unique(outputs["y"])) <= {0.0, 2.0}
    np.testing.assert_allclose(grads["x"], outputs["y"] * outputs["y"] / 4)


# ---- drawn shapes: a few representative ops under hypothesis ---------------------------------

DRAWN = settings(max_examples=8, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


def _dims(shape):
    return ", ".join(map(str, shape))


@DRAWN
@given(batch=st.integers(1, 4), lead=st.lists(st.integers(1, 3), max_size=2),
       features=st.integers(1, 4), units=st.integers(1, 4), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_dense_drawn(batch, lead, features, units, bias, seed):
    shape = lead + [features]
    source = se_model(f"y = x -> dense({units}, bias = {str(bias).lower()}) -> tanh",
                      f"input x: [{_dims(shape)}]", out_shape=lead + [units])
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(seed)
    check_gradients(graph, draw_feeds(graph, Case("dense", source), rng, batch),
                    random_params(graph, rng), f"dense {shape}->{units}")


@DRAWN
@given(data=st.data(), batch=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       log=st.booleans(), seed=st.integers(0, 2**16))
def test_softmax_axis_drawn(data, batch, shape, log, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    op = "log_softmax" if log else "softmax"
    source = se_model(f"y = x -> {op}(axis = {axis})", f"input x: [{_dims(shape)}]", out_shape=shape)
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(seed)
    check_gradients(graph, draw_feeds(graph, Case(op, source), rng, batch),
                    random_params(graph, rng), f"{op} {shape} axis {axis}")


@DRAWN
@given(data=st.data(), batch=st.integers(1, 3), shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       count=st.integers(2, 3), seed=st.integers(0, 2**16))
def test_concat_drawn(data, batch, shape, count, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    widths = data.draw(st.lists(st.integers(1, 3), min_size=count, max_size=count), label="widths")
    inputs, names = [], []
    for i, w in enumerate(widths):
        s = list(shape)
        s[axis] = w
        inputs.append(f"input x{i}: [{_dims(s)}]")
        names.append(f"x{i}")
    out = list(shape)
    out[axis] = sum(widths)
    source = se_model(f"y = ({', '.join(names)}) -> concat(axis = {axis}) -> sigmoid",
                      "\n".join(inputs), out_shape=out)
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(seed)
    check_gradients(graph, draw_feeds(graph, Case("concat", source), rng, batch),
                    random_params(graph, rng), f"concat {widths} axis {axis}")


@DRAWN
@given(batch=st.integers(1, 5), classes=st.integers(2, 5), steps=st.sampled_from([None, 1, 3]),
       smoothing=st.sampled_from([0.0, 0.1, 0.3]), soft=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_drawn(batch, classes, steps, smoothing, soft, seed):
    lead = [] if steps is None else [steps]
    target = f"input t: [{_dims(lead + [classes])}]" if soft else f"input t: int[{_dims(lead)}]"
    source = (f"input x: [{_dims(lead + [3])}]\n{target}\ny = x -> dense({classes})\noutput y\n"
              f"train {{ loss cross_entropy(y, t, label_smoothing = {smoothing}) }}\n")
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(seed)
    case = Case("ce", source, draw={"t": probabilities if soft else labels(classes)})
    check_gradients(graph, draw_feeds(graph, case, rng, batch), random_params(graph, rng),
                    f"cross_entropy classes={classes} steps={steps} smoothing={smoothing}")


@DRAWN
@given(batch=st.integers(1, 4), units=st.integers(1, 3), pieces=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_maxout_drawn(batch, units, pieces, seed):
    source = se_model(f"y = x -> maxout(pieces = {pieces}) -> dense(2)",
                      f"input x: [{units * pieces}]", out_shape=[2])
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(seed)
    case = Case("maxout", source, valid=groups_apart("x", pieces))
    check_gradients(graph, draw_feeds(graph, case, rng, batch), random_params(graph, rng),
                    f"maxout units={units} pieces={pieces}")


# ---- textbook facts -------------------------------------------------------------------------

HINGE_SOURCE = ("input s: [3]\ninput label: int[]\ny = s -> identity\noutput y\n"
                "train { loss hinge(y, label) }\n")
# CS231n's worked example: columns are the cat, car and frog images.
CS231N_SCORES = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
CS231N_LABELS = np.array([0, 1, 2])


def test_hinge_lecture_example():
    engine = ReferenceEngine(netlang.compile(HINGE_SOURCE).graph, dtype=np.float64)
    per_example = [engine.loss({"s": CS231N_SCORES[i:i + 1], "label": CS231N_LABELS[i:i + 1]})
                   for i in range(3)]
    np.testing.assert_allclose(per_example, [2.9, 0.0, 12.9], atol=1e-12)
    mean = engine.loss({"s": CS231N_SCORES, "label": CS231N_LABELS})
    assert mean == pytest.approx(15.8 / 3, abs=1e-12)
    assert round(mean, 2) == 5.27
    # The subgradient: each violating class gets +1, the true class −(number of violators).
    engine = ReferenceEngine(netlang.compile(HINGE_SOURCE).graph, dtype=np.float64, input_grads=("s",))
    _, grads, _ = engine.gradients({"s": CS231N_SCORES, "label": CS231N_LABELS})
    np.testing.assert_allclose(grads["s"], np.array([[-1, 1, 0], [0, 0, 0], [1, 1, -2]]) / 3,
                               atol=1e-15)


def test_squared_error_is_half_sum():
    source = se_model("y = x -> identity", "input x: [3]", out_shape=[3])
    engine = ReferenceEngine(netlang.compile(source).graph, dtype=np.float64, input_grads=("x",))
    y = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
    t = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss, grads, _ = engine.gradients({"x": y, "t": t})
    # ½Σ(t − y)² per example (7 and 0.625), averaged over the batch of two.
    assert loss == pytest.approx((7.0 + 0.625) / 2, abs=1e-12)
    assert loss == pytest.approx(np.mean(0.5 * ((t - y) ** 2).sum(axis=1)), abs=1e-12)
    np.testing.assert_allclose(grads["x"], (y - t) / 2, atol=1e-15)   # d/dy ½(t − y)² = y − t


def test_sigmoid_derivative_is_sigma_one_minus_sigma():
    source = se_model("y = x -> sigmoid", "input x: [5]", out_shape=[5])
    engine = ReferenceEngine(netlang.compile(source).graph, dtype=np.float64, input_grads=("x",))
    x = np.array([[0.0, 1.0, -2.0, 4.0, -30.0]])
    y = engine.forward({"x": x})["y"]
    sigma = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(y, sigma, rtol=1e-15)
    # Target y − 1 makes d loss / d y = y − t = 1, so d loss / d x is σ'(x) itself.
    _, grads, _ = engine.gradients({"x": x, "t": y - 1})
    np.testing.assert_allclose(grads["x"], sigma * (1 - sigma), rtol=1e-12)
    assert grads["x"][0, 0] == pytest.approx(0.25)   # σ'(0) = ¼, its maximum


# ---- against PyTorch (skipped where torch is not installed) ---------------------------------

MLP_SOURCE = """
input x: [5]
input label: int[]
h1 = x -> dense(8) as fc1 -> relu
h2 = h1 -> dense(6) as fc2 -> tanh
h3 = h2 -> dense(4) as fc3 -> sigmoid
logits = h3 -> dense(3) as fc4
output logits
output probs = logits -> softmax
train { loss cross_entropy(logits, label) }
"""


def _rel_error(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-12))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)], ids=["float64", "float32"])
def test_mlp_matches_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    graph = netlang.compile(MLP_SOURCE).graph
    rng = np.random.default_rng(7)
    params = {k: v.astype(dtype) for k, v in random_params(graph, rng).items()}
    x = rng.normal(0.0, 1.0, (6, 5)).astype(dtype)
    label = rng.integers(0, 3, 6)
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()}, dtype=dtype)
    loss, grads, outputs = engine.gradients({"x": x, "label": label})

    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tp = {k: torch.tensor(v, dtype=tdtype, requires_grad=True) for k, v in params.items()}
    h = torch.tensor(x, dtype=tdtype)
    h = torch.relu(F.linear(h, tp["fc1.weight"], tp["fc1.bias"]))   # weight (out, in) as nn.Linear
    h = torch.tanh(F.linear(h, tp["fc2.weight"], tp["fc2.bias"]))
    h = torch.sigmoid(F.linear(h, tp["fc3.weight"], tp["fc3.bias"]))
    logits = F.linear(h, tp["fc4.weight"], tp["fc4.bias"])
    probs = torch.softmax(logits, dim=-1)
    tloss = F.cross_entropy(logits, torch.tensor(label, dtype=torch.int64))
    tloss.backward()

    assert _rel_error(outputs["logits"], logits.detach().numpy()) < tol
    assert _rel_error(outputs["probs"], probs.detach().numpy()) < tol
    assert _rel_error(loss, tloss.item()) < tol
    assert set(grads) == set(tp)
    for name, p in tp.items():
        assert grads[name].dtype == dtype
        assert _rel_error(grads[name], p.grad.numpy()) < tol, name


LOSS_CASES = {
    # id: (prediction chain from the scores s, loss, target type, target drawer,
    #      torch's loss of the raw scores s and the target)
    "cross_entropy": ("s -> identity", "cross_entropy(y, t)", "int[]", labels(4),
                      lambda F, s, t, C: F.cross_entropy(s, t)),
    "cross_entropy_smoothing": ("s -> identity", "cross_entropy(y, t, label_smoothing = 0.2)",
                                "int[]", labels(4),
                                lambda F, s, t, C: F.cross_entropy(s, t, label_smoothing=0.2)),
    "cross_entropy_probabilities": ("s -> identity", "cross_entropy(y, t, label_smoothing = 0.1)",
                                    "[4]", probabilities,
                                    lambda F, s, t, C: F.cross_entropy(s, t, label_smoothing=0.1)),
    # Soft targets that do not sum to one: both take -Σ t·log softmax(s) literally.
    "cross_entropy_soft_weights": ("s -> identity", "cross_entropy(y, t)", "[4]", unit_interval,
                                   lambda F, s, t, C: F.cross_entropy(s, t)),
    # netlang sums over the outputs and averages over the batch.
    "bce": ("s -> sigmoid", "binary_cross_entropy(y, t)", "[4]", unit_interval,
            lambda F, s, t, C: F.binary_cross_entropy(s.sigmoid(), t, reduction="sum") / s.shape[0]),
    "bce_logits": ("s -> identity", "binary_cross_entropy(y, t, logits = true)", "[4]",
                   unit_interval,
                   lambda F, s, t, C: F.binary_cross_entropy_with_logits(s, t, reduction="sum")
                   / s.shape[0]),
    "mse": ("s -> identity", "mse(y, t)", "[4]", normal(),
            lambda F, s, t, C: F.mse_loss(s, t)),
    "squared_error": ("s -> identity", "squared_error(y, t)", "[4]", normal(),
                      lambda F, s, t, C: 0.5 * F.mse_loss(s, t, reduction="sum") / s.shape[0]),
    # torch divides each example's sum by the number of classes.
    "hinge": ("s -> identity", "hinge(y, t)", "int[]", labels(4),
              lambda F, s, t, C: F.multi_margin_loss(s, t, margin=1.0) * C),
}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("loss_id", sorted(LOSS_CASES))
def test_loss_matches_torch(loss_id, dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    chain, expression, target_type, draw, torch_loss = LOSS_CASES[loss_id]
    source = (f"input s: [4]\ninput t: {target_type}\ny = {chain}\noutput y\n"
              f"train {{ loss {expression} }}\n")
    graph = netlang.compile(source).graph
    rng = np.random.default_rng(11)
    s = rng.normal(0.0, 1.5, (5, 4)).astype(dtype)
    t = np.asarray(draw(rng, (5,) if target_type.startswith("int") else (5, 4)))
    if t.dtype.kind == "f":
        t = t.astype(dtype)
    engine = ReferenceEngine(graph, dtype=dtype, input_grads=("s",))
    loss, grads, _ = engine.gradients({"s": s, "t": t})

    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    ts = torch.tensor(s, dtype=tdtype, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.int64 if t.dtype.kind in "iu" else tdtype)
    tloss = torch_loss(F, ts, tt, 4)
    tloss.backward()
    assert _rel_error(loss, tloss.item()) < tol
    assert _rel_error(grads["s"], ts.grad.numpy()) < tol
