"""Shape rules and parameter shapes of every op, against hand-computed cases.

Everything goes through `netlang.compile(source)`, so these also check that the
language passes arguments to the rules as documented.  Where an op mirrors a
PyTorch layer, the expected sizes come from PyTorch's documented formulas
(written out independently below, not copied from netlang) and its documented
parameter layouts.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest

import netlang
from netlang.errors import NetlangArgumentError, NetlangError, NetlangShapeError


def compile_src(source: str):
    return netlang.compile(source, path="shapes.net")


def shape_of(source: str, name: str = "y") -> tuple:
    return compile_src(source).shapes[name]


def shapes_of(source: str) -> dict:
    return compile_src(source).shapes


def shape_error(source: str) -> NetlangShapeError:
    with pytest.raises(NetlangShapeError) as info:
        compile_src(source)
    assert info.value.line is not None and info.value.column is not None
    return info.value


# ---- PyTorch's documented output-size formulas ---------------------------------------------

def torch_conv_out(size, kernel, stride=1, padding=0, dilation=1):
    """torch.nn.Conv2d: floor((H + 2p - d(k-1) - 1) / s + 1)."""
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


def torch_conv_transpose_out(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """torch.nn.ConvTranspose2d: (H-1)s - 2p + d(k-1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def torch_pool_out(size, kernel, stride, padding=0, ceil_mode=False):
    """torch.nn.MaxPool2d / AvgPool2d (aten's pooling_output_shape): the ceil rounding is done
    by adding stride - 1, and in ceil mode a last window that would start in the right padding
    is dropped."""
    out = (size + 2 * padding - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# ---- conv2d ----------------------------------------------------------------------------------

@pytest.mark.parametrize("hw, args, expected", [
    ((28, 28), "6, 5, padding = 2", (28, 28)),                  # LeNet's first layer
    ((32, 32), "6, 5", (28, 28)),                               # valid, the default
    ((32, 32), "8, 3, stride = 2", (15, 15)),                   # floor((32 - 3) / 2) + 1
    ((224, 224), "64, 7, stride = 2, padding = 3", (112, 112)),  # ResNet's stem
    ((227, 227), "96, 11, stride = 4", (55, 55)),               # AlexNet's first layer
    ((10, 12), "4, (3, 5), stride = (1, 2), padding = (1, 0)", (10, 4)),
    ((10, 10), "4, 3, dilation = 2", (6, 6)),                   # effective kernel 5
    ((10, 10), "4, 3, dilation = 2, padding = 2", (10, 10)),
    ((10, 10), "4, 3, padding = ((1, 2), (0, 3))", (11, 11)),   # explicit asymmetric padding
    ((1, 1), "4, 1", (1, 1)),
])
def test_conv2d_output_size(hw, args, expected):
    h, w = hw
    assert shape_of(f"input x: [{h}, {w}, 3]\ny = x -> conv2d({args})\n") == (None, *expected, int(args.split(",")[0]))


@pytest.mark.parametrize("size, kernel, stride, dilation, expected", [
    (32, 3, 1, 1, 32), (32, 3, 2, 1, 16), (7, 3, 2, 1, 4), (9, 4, 1, 1, 9), (9, 4, 3, 1, 3),
    (10, 3, 1, 2, 10), (5, 5, 5, 1, 1), (1, 7, 1, 1, 1),
])
def test_conv2d_same_padding_keeps_ceil_of_size_over_stride(size, kernel, stride, dilation, expected):
    assert expected == -(-size // stride)
    src = (f"input x: [{size}, {size}, 2]\n"
           f"y = x -> conv2d(3, {kernel}, stride = {stride}, dilation = {dilation}, padding = same)\n")
    assert shape_of(src) == (None, expected, expected, 3)


def test_conv2d_matches_torch_formula_on_a_grid():
    for size, kernel, stride, padding, dilation in itertools.product(
            (5, 8, 13, 32), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        expected = torch_conv_out(size, kernel, stride, padding, dilation)
        src = (f"input x: [{size}, {size + 1}, 1]\ny = x -> conv2d(2, {kernel}, stride = {stride}, "
               f"padding = {padding}, dilation = {dilation})\n")
        if expected < 1:
            with pytest.raises(NetlangShapeError):
                compile_src(src)
            continue
        expected_w = torch_conv_out(size + 1, kernel, stride, padding, dilation)
        assert shape_of(src) == (None, expected, expected_w, 2), (size, kernel, stride, padding, dilation)


def test_conv2d_parameters_follow_pytorch_layout():
    shapes = shapes_of("input x: [8, 8, 3]\ny = x -> conv2d(16, (3, 5))\n")
    assert shapes["y.weight"] == (16, 3, 3, 5)  # (out, in / groups, kh, kw)
    assert shapes["y.bias"] == (16,)
    model = compile_src("input x: [8, 8, 3]\ny = x -> conv2d(16, 3, bias = false)\n")
    assert "y.bias" not in model.shapes
    assert model.summary().total_params == 16 * 3 * 9


def test_conv2d_groups_and_depthwise():
    shapes = shapes_of("input x: [8, 8, 4]\ny = x -> conv2d(8, 3, groups = 2, padding = 1)\n")
    assert shapes["y"] == (None, 8, 8, 8)
    assert shapes["y.weight"] == (8, 2, 3, 3)
    depthwise = compile_src("input x: [8, 8, 6]\ny = x -> conv2d(6, 3, groups = 6)\n")
    assert depthwise.shapes["y.weight"] == (6, 1, 3, 3)
    assert depthwise.shapes["y"] == (None, 6, 6, 6)
    assert depthwise.summary().total_params == 6 * 9 + 6
    # A depthwise multiplier: each input channel gets two filters.
    assert shapes_of("input x: [8, 8, 3]\ny = x -> conv2d(6, 3, groups = 3)\n")["y.weight"] == (6, 1, 3, 3)


def test_conv2d_groups_must_divide_channels_and_filters():
    error = shape_error("input x: [8, 8, 3]\ny = x -> conv2d(4, 3, groups = 2)\n")
    assert "groups" in error.message and "(None, 8, 8, 3)" in error.message
    shape_error("input x: [8, 8, 4]\ny = x -> conv2d(3, 3, groups = 2)\n")


def test_conv2d_kernel_larger_than_input():
    error = shape_error("input x: [4, 9, 1]\ny = x -> conv2d(2, 5)\n")
    assert "height 4" in error.message and "`x`" in error.message
    # Padding can make it fit again.
    assert shape_of("input x: [4, 9, 1]\ny = x -> conv2d(2, 5, padding = 1)\n") == (None, 2, 7, 2)


def test_conv2d_needs_an_image():
    error = shape_error("input x: [10]\ny = x -> conv2d(2, 3)\n")
    assert "(None, 10)" in error.message and "`x`" in error.message
    shape_error("input x: [4, 4, 4, 4]\ny = x -> conv2d(2, 3)\n")


# ---- conv_transpose2d ------------------------------------------------------------------------

@pytest.mark.parametrize("size, args, expected", [
    (7, "1, 3, stride = 2, padding = 1, output_padding = 1", 14),   # undoes a stride-2 conv of 14
    (4, "1, 4, stride = 2, padding = 1", 8),                        # DCGAN's up-sampling
    (5, "1, 3", 7),
    (5, "1, 3, dilation = 2", 9),
    (3, "1, (2, 2), stride = 3", 8),
    (1, "1, 4", 4),
])
def test_conv_transpose2d_output_size(size, args, expected):
    assert shape_of(f"input x: [{size}, {size}, 2]\ny = x -> conv_transpose2d({args})\n") == \
        (None, expected, expected, 1)


def test_conv_transpose2d_matches_torch_formula_on_a_grid():
    for size, kernel, stride, padding, dilation in itertools.product(
            (1, 4, 7), (1, 2, 3, 4), (1, 2, 3), (0, 1), (1, 2)):
        for output_padding in range(max(stride, dilation)):
            expected = torch_conv_transpose_out(size, kernel, stride, padding, output_padding, dilation)
            src = (f"input x: [{size}, {size}, 1]\ny = x -> conv_transpose2d(3, {kernel}, "
                   f"stride = {stride}, padding = {padding}, output_padding = {output_padding}, "
                   f"dilation = {dilation})\n")
            if expected < 1:
                with pytest.raises(NetlangShapeError):
                    compile_src(src)
            else:
                assert shape_of(src) == (None, expected, expected, 3)


def test_conv_transpose2d_output_padding_must_be_below_stride_or_dilation():
    error = shape_error("input x: [4, 4, 1]\ny = x -> conv_transpose2d(1, 3, stride = 2, "
                        "output_padding = 2)\n")
    assert "output_padding" in error.message
    # dilation 3 allows output_padding 2 at stride 1, as in PyTorch.
    assert shape_of("input x: [4, 4, 1]\ny = x -> conv_transpose2d(1, 3, dilation = 3, "
                    "output_padding = 2)\n") == (None, 4 - 1 + 6 + 2 + 1, 4 - 1 + 6 + 2 + 1, 1)


def test_conv_transpose2d_weight_layout():
    shapes = shapes_of("input x: [5, 5, 4]\ny = x -> conv_transpose2d(6, 3, groups = 2)\n")
    assert shapes["y.weight"] == (4, 3, 3, 3)  # (in, out / groups, kh, kw), PyTorch's layout
    assert shapes["y.bias"] == (6,)


# ---- pooling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, args, expected", [
    (28, "2", 14),
    (7, "2", 3),
    (7, "2, ceil_mode = true", 4),
    (112, "3, stride = 2, padding = 1", 56),          # ResNet's stem
    (55, "3, stride = 2", 27),                        # AlexNet
    (5, "2, stride = 2, padding = 1", 3),
    (4, "2, stride = 3, padding = 1", 2),
    (4, "2, stride = 3, padding = 1, ceil_mode = true", 2),  # the last window would start in padding
    (6, "3, stride = 2, ceil_mode = true", 3),
    (5, "3, stride = 2, ceil_mode = true", 2),
    (10, "3, stride = 1, padding = same", 10),
    (10, "3, stride = 2, padding = same", 5),
])
@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_pool_output_size(op, size, args, expected):
    assert shape_of(f"input x: [{size}, {size}, 5]\ny = x -> {op}({args})\n") == (None, expected, expected, 5)


def test_pool_matches_torch_formula_on_a_grid():
    for size, kernel, stride, padding, ceil_mode in itertools.product(
            (1, 2, 5, 6, 7, 12), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (False, True)):
        src = (f"input x: [{size}, {size}, 1]\ny = x -> maxpool({kernel}, stride = {stride}, "
               f"padding = {padding}, ceil_mode = {str(ceil_mode).lower()})\n")
        expected = torch_pool_out(size, kernel, stride, padding, ceil_mode)
        if padding > kernel // 2 or expected < 1:  # PyTorch refuses these too
            with pytest.raises(NetlangShapeError):
                compile_src(src)
        else:
            assert shape_of(src) == (None, expected, expected, 1), (size, kernel, stride, padding, ceil_mode)


def test_pool_stride_defaults_to_kernel_and_pairs_work():
    assert shape_of("input x: [12, 9, 2]\ny = x -> maxpool((3, 2))\n") == (None, 4, 4, 2)
    assert shape_of("input x: [12, 9, 2]\ny = x -> avgpool(2, stride = 1)\n") == (None, 11, 8, 2)


def test_pool_refuses_padding_beyond_half_the_window():
    error = shape_error("input x: [8, 8, 1]\ny = x -> maxpool(2, padding = 2)\n")
    assert "padding" in error.message


def test_pool_window_larger_than_input():
    shape_error("input x: [2, 2, 1]\ny = x -> maxpool(3)\n")


def test_global_avgpool():
    assert shape_of("input x: [7, 5, 64]\ny = x -> global_avgpool\n") == (None, 64)
    shape_error("input x: [64]\ny = x -> global_avgpool\n")


# ---- reshaping -------------------------------------------------------------------------------

def test_flatten():
    assert shape_of("input x: [7, 5, 3]\ny = x -> flatten\n") == (None, 105)
    assert shape_of("input x: [12]\ny = x -> flatten\n") == (None, 12)


@pytest.mark.parametrize("target, expected", [
    ("(4, 3, 5)", (4, 3, 5)),
    ("(-1, 5)", (12, 5)),
    ("(6, -1)", (6, 10)),
    ("(2, -1, 3)", (2, 10, 3)),
    ("(-1,)", (60,)),
    ("60", (60,)),
])
def test_reshape(target, expected):
    assert shape_of(f"input x: [3, 4, 5]\ny = x -> reshape({target})\n") == (None, *expected)


@pytest.mark.parametrize("target", ["(7, -1)", "(-1, -1)", "(4, 4)", "(0, 60)", "(-2, -30)"])
def test_reshape_refuses_sizes_that_do_not_fit(target):
    error = shape_error(f"input x: [3, 4, 5]\ny = x -> reshape({target})\n")
    assert "reshape" in error.message


def test_permute():
    assert shape_of("input x: [3, 4, 5]\ny = x -> permute((2, 0, 1))\n") == (None, 5, 3, 4)
    assert shape_of("input x: [3, 4]\ny = x -> permute((1, 0))\n") == (None, 4, 3)
    for bad in ("(0, 1)", "(0, 1, 1)", "(1, 2, 3)"):
        shape_error(f"input x: [3, 4, 5]\ny = x -> permute({bad})\n")


# ---- merging ---------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, expected", [
    ("-1", (4, 6, 5)), ("2", (4, 6, 5)),
])
def test_concat_channels(axis, expected):
    src = f"input a: [4, 6, 2]\ninput b: [4, 6, 3]\ny = (a, b) -> concat(axis = {axis})\n"
    assert shape_of(src) == (None, *expected)


def test_concat_on_other_axes_and_many_inputs():
    assert shape_of("input a: [4, 6, 2]\ninput b: [3, 6, 2]\ny = (a, b) -> concat(axis = 0)\n") == \
        (None, 7, 6, 2)
    assert shape_of("input a: [4, 6, 2]\ninput b: [4, 1, 2]\ny = (a, b, a) -> concat(axis = -2)\n") == \
        (None, 4, 13, 2)
    # The default axis is the last one.
    assert shape_of("input a: [5]\ninput b: [7]\ny = (a, b) -> concat\n") == (None, 12)


def test_concat_mismatch_names_both_inputs():
    error = shape_error("input a: [4, 6, 2]\ninput b: [4, 5, 3]\ny = (a, b) -> concat\n")
    assert "(None, 4, 6, 2) from `a`" in error.message and "(None, 4, 5, 3) from `b`" in error.message
    error = shape_error("input a: [4, 6]\ninput b: [4, 6, 1]\ny = (a, b) -> concat(axis = 0)\n")
    shape_error("input a: [4]\ninput b: [4]\ny = (a, b) -> concat(axis = 1)\n")


@pytest.mark.parametrize("op, operator", [("add", "+"), ("multiply", "*")])
def test_add_and_multiply(op, operator):
    assert shape_of(f"input a: [3, 4]\ninput b: [3, 4]\ny = a {operator} b\n") == (None, 3, 4)
    assert shape_of(f"input a: [3, 4]\ny = (a, a, a) -> {op}\n") == (None, 3, 4)
    error = shape_error(f"input a: [3, 4]\ninput b: [4, 3]\ny = a {operator} b\n")
    assert "(None, 3, 4) from `a`" in error.message and "(None, 4, 3) from `b`" in error.message


def test_merge_needs_two_inputs():
    with pytest.raises(NetlangArgumentError):
        compile_src("input a: [3]\ny = a -> add\n")


# ---- dense and embedding ---------------------------------------------------------------------

def test_dense_on_vectors_and_sequences():
    shapes = shapes_of("input x: [20]\ny = x -> dense(7)\n")
    assert shapes["y"] == (None, 7) and shapes["y.weight"] == (7, 20) and shapes["y.bias"] == (7,)
    shapes = shapes_of("input x: [5, 20]\ny = x -> dense(7, bias = false)\n")
    assert shapes["y"] == (None, 5, 7)  # applied to the last axis, time kept
    assert shapes["y.weight"] == (7, 20) and "y.bias" not in shapes


def test_dense_on_images_applies_to_channels():
    assert shape_of("input x: [4, 4, 3]\ny = x -> dense(2)\n") == (None, 4, 4, 2)


def test_dense_tie_uses_the_transposed_weight():
    model = compile_src("input x: [784]\nh = x -> dense(64) as enc\ny = h -> dense(784, tie = enc)\n")
    assert model.shapes["y"] == (None, 784)
    # Tied: the decoder owns only its bias.
    assert model.summary().total_params == 64 * 784 + 64 + 784
    error = shape_error("input x: [784]\nh = x -> dense(64) as enc\ny = h -> dense(100, tie = enc)\n")
    assert "(784, 64)" in error.message and "(100, 64)" in error.message
    assert "`enc`" in error.message and "`y`" in error.message


def test_dense_share():
    model = compile_src("input a: [8]\ninput b: [8]\np = a -> dense(4) as f\nq = b -> dense(4, share = f)\n")
    assert model.summary().total_params == 4 * 8 + 4
    error = shape_error("input a: [8]\ninput b: [9]\np = a -> dense(4) as f\nq = b -> dense(4, share = f)\n")
    assert "`f` has (4, 8)" in error.message and "`q` needs (4, 9)" in error.message


def test_embedding():
    shapes = shapes_of("input t: int32[12]\ny = t -> embedding(100, 16)\n")
    assert shapes["y"] == (None, 12, 16) and shapes["y.weight"] == (100, 16)
    assert shape_of("input t: int64[]\ny = t -> embedding(10, 3)\n") == (None, 3)
    error = shape_error("input t: [12]\ny = t -> embedding(100, 16)\n")
    assert "integer" in error.message


# ---- recurrent -------------------------------------------------------------------------------

def _params(model):
    return model.summary().total_params


def test_lstm_parameter_count_matches_pytorch():
    # torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True): 15,040 parameters.
    model = compile_src("input x: [7, 10]\ny = x -> lstm(20, layers = 2, bidirectional = true)\n")
    assert _params(model) == 15040
    assert model.shapes["y"] == (None, 40)
    assert model.shapes["y.weight_ih_l0"] == (80, 10)
    assert model.shapes["y.weight_hh_l0_reverse"] == (80, 20)
    assert model.shapes["y.weight_ih_l1"] == (80, 40)  # the second layer reads both directions
    assert model.shapes["y.bias_hh_l1_reverse"] == (80,)


@pytest.mark.parametrize("op, gates", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_recurrent_parameter_counts(op, gates):
    # PyTorch: per layer and direction, gates·h·(in + h) weights and 2·gates·h biases.
    model = compile_src(f"input x: [5, 10]\ny = x -> {op}(20)\n")
    assert _params(model) == gates * 20 * (10 + 20) + 2 * gates * 20
    model = compile_src(f"input x: [5, 10]\ny = x -> {op}(20, layers = 3)\n")
    first = gates * 20 * (10 + 20) + 2 * gates * 20
    later = gates * 20 * (20 + 20) + 2 * gates * 20
    assert _params(model) == first + 2 * later


@pytest.mark.parametrize("args, expected", [
    ("8", (None, 8)),
    ("8, sequences = true", (None, 5, 8)),
    ("8, bidirectional = true", (None, 16)),
    ("8, bidirectional = true, sequences = true", (None, 5, 16)),
    ("8, layers = 3, sequences = true", (None, 5, 8)),
])
@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_recurrent_output_shapes(op, args, expected):
    assert shape_of(f"input x: [5, 3]\ny = x -> {op}({args})\n") == expected


def test_recurrent_needs_a_sequence():
    error = shape_error("input x: [10]\ny = x -> lstm(4)\n")
    assert "(None, 10)" in error.message


def test_stacked_recurrent_layers_read_sequences():
    shapes = shapes_of("input t: int32[9]\n"
                       "y = t -> embedding(50, 6) -> gru(5, sequences = true) -> lstm(4)\n")
    assert shapes["y"] == (None, 4)
    assert shapes["y.weight_ih_l0"] == (16, 5)


# ---- normalisation, dropout, activations -----------------------------------------------------

def test_batchnorm_parameters_and_buffers():
    model = compile_src("input x: [6, 6, 8]\ny = x -> batchnorm\n")
    assert model.shapes["y"] == (None, 6, 6, 8)
    summary = model.summary()
    assert summary.total_params == 16       # weight and bias
    assert summary.buffers == 16            # running mean and variance, not parameters
    assert set(model.graph.buffers()) == {"y.running_mean", "y.running_var"}
    assert set(model.graph.parameters()) == {"y.weight", "y.bias"}
    assert shape_of("input x: [30]\ny = x -> batchnorm\n") == (None, 30)


def test_dropout_lrn_and_elementwise_activations_keep_shape():
    for op in ("relu", "sigmoid", "tanh", "identity", "sign", "elu", "leaky_relu(0.1)",
               "threshold(0.5)", "softmax", "log_softmax", "dropout(0.3)", "batchnorm"):
        assert shape_of(f"input x: [3, 4, 5]\ny = x -> {op}\n") == (None, 3, 4, 5), op
    assert shape_of("input x: [3, 4, 5]\ny = x -> lrn(size = 3)\n") == (None, 3, 4, 5)


def test_softmax_axis():
    assert shape_of("input x: [3, 4]\ny = x -> softmax(axis = 0)\n") == (None, 3, 4)
    error = shape_error("input x: [3, 4]\ny = x -> softmax(axis = 2)\n")
    assert "axis 2" in error.message


@pytest.mark.parametrize("features, pieces, expected", [(12, 2, 6), (12, 3, 4), (12, 12, 1), (5, 1, 5)])
def test_maxout(features, pieces, expected):
    assert shape_of(f"input x: [{features}]\ny = x -> maxout({pieces})\n") == (None, expected)
    assert shape_of(f"input x: [2, {features}]\ny = x -> maxout(pieces = {pieces})\n") == (None, 2, expected)


def test_maxout_needs_a_divisible_last_axis():
    error = shape_error("input x: [10]\ny = x -> maxout(3)\n")
    assert "divisible by 3" in error.message


# ---- losses ----------------------------------------------------------------------------------

def loss_src(pred_shape, target_type, loss, extra=""):
    return (f"input x: [{pred_shape}]\ninput t: {target_type}\ny = x -> identity\n"
            f"train {{\n  loss {loss}(y, t{extra})\n}}\n")


@pytest.mark.parametrize("pred, target", [
    ("10", "int32[]"), ("10", "[10]"), ("5, 10", "int64[5]"), ("5, 10", "[5, 10]"),
])
def test_cross_entropy_targets(pred, target):
    model = compile_src(loss_src(pred, target, "cross_entropy"))
    (node, weight), = model.graph.graph["losses"]
    assert model.graph.type_of(node).shape == () and weight == 1.0


@pytest.mark.parametrize("pred, target", [
    ("10", "int32[10]"), ("10", "[9]"), ("5, 10", "int32[]"), ("5, 10", "int32[4]"),
])
def test_cross_entropy_refuses_mismatched_targets(pred, target):
    error = shape_error(loss_src(pred, target, "cross_entropy"))
    assert "`y`" in error.message and "`t`" in error.message


def test_hinge_needs_integer_labels():
    compile_src(loss_src("10", "int32[]", "hinge"))
    shape_error(loss_src("10", "[10]", "hinge"))


@pytest.mark.parametrize("loss", ["mse", "squared_error", "binary_cross_entropy"])
def test_same_shape_losses(loss):
    compile_src(loss_src("4", "[4]", loss))
    compile_src(loss_src("1", "int32[]", loss))       # labels for a single output unit
    compile_src(loss_src("3", "int32[]", loss))       # labels standing for one-hot rows
    error = shape_error(loss_src("4", "[5]", loss))
    assert "(None, 4) from `y`" in error.message and "(None, 5) from `t`" in error.message
    shape_error(loss_src("4", "[]", loss))            # a float target needs the full shape


def test_loss_weights_and_sums():
    src = ("input x: [4]\ninput t: int32[]\ny = x -> dense(3)\nr = x -> dense(4)\n"
           "train {\n  loss cross_entropy(y, t) + 0.5 * mse(r, x) + mse(r, x) * 2\n}\n")
    weights = [w for _, w in compile_src(src).graph.graph["losses"]]
    assert weights == [1.0, 0.5, 2.0]


def test_losses_are_refused_outside_the_train_section():
    with pytest.raises(NetlangError) as info:
        compile_src("input x: [4]\ny = x -> cross_entropy\n")
    assert "train section" in info.value.message


# ---- whole-model shapes ----------------------------------------------------------------------

def test_lenet_shapes_and_parameter_count():
    model = compile_src("""
input image: [32, 32, 1]
output logits = image
  -> conv2d(6, 5) as c1 -> tanh -> avgpool(2) as s2
  -> conv2d(16, 5) as c3 -> tanh -> avgpool(2) as s4
  -> flatten -> dense(120) as f5 -> tanh -> dense(84) as f6 -> tanh -> dense(10)
""")
    shapes = model.shapes
    assert shapes["c1"] == (None, 28, 28, 6) and shapes["s2"] == (None, 14, 14, 6)
    assert shapes["c3"] == (None, 10, 10, 16) and shapes["s4"] == (None, 5, 5, 16)
    assert shapes["f5"] == (None, 120) and shapes["logits"] == (None, 10)
    assert model.summary().total_params == 61706


def test_shape_expressions_see_inferred_shapes():
    src = ("input x: [12, 10, 3]\nh = x -> conv2d(8, 3)\n"
           "y = h -> reshape((h.shape[0] * h.shape[1], h.shape[-1])) -> dense(h.size // 10)\n")
    assert shape_of(src) == (None, 80, 8 * 8 * 10 // 10)


def test_repeat_names_and_shapes():
    shapes = shapes_of("input x: [4]\ny = x -> dense(4) * 3\n")
    assert shapes["y.0"] == shapes["y.1"] == shapes["y.2"] == (None, 4)
    assert shapes["y.2.weight"] == (4, 4)


def test_grouped_repeat_names_and_shapes():
    shapes = shapes_of("""
input image: [12, 12, 1]
h = image -> (conv2d(4, 3, padding = same) -> relu) * 2 as stage -> maxpool(2)
v = h -> flatten -> (dense(8) -> relu) * 2 -> dropout(0.5)
y = v -> (dense(6) -> tanh) * 2
output z = y -> (dense(3) -> sigmoid) as head
""")
    # A named group's copies are `stage.0`, `stage.1`, as a repeated block's instances are,
    # with the layers inside numbered afresh in each copy.
    assert shapes["stage.0.conv2d_1"] == shapes["stage.1.relu_1"] == (None, 12, 12, 4)
    assert shapes["stage.0.conv2d_1.weight"] == (4, 1, 3, 3)
    assert shapes["stage.1.conv2d_1.weight"] == (4, 4, 3, 3)
    assert shapes["h"] == (None, 6, 6, 4)
    # Without a name, the copies' layers take automatic names where the chain is.
    assert shapes["dense_1"] == shapes["relu_2"] == (None, 8) and "dense_3" not in shapes
    # The last step of an assignment is named by it; a label without a repeat is one copy.
    assert shapes["y.0.dense_1"] == shapes["y.1.tanh_1"] == (None, 6)
    assert shapes["head.dense_1"] == shapes["head.sigmoid_1"] == (None, 3)


def test_grouped_repeat_names_its_copies_as_a_repeated_block_does():
    block = shapes_of("""
block unit(n) {
  input x
  output out = x -> dense(n) as fc -> relu
}
input x: [4]
y = x -> unit(5) * 2 as stage
""")
    group = shapes_of("input x: [4]\ny = x -> (dense(5) -> relu) * 2 as stage\n")
    def copies(shapes):
        return {name.split(".")[1] for name in shapes if name.startswith("stage.")}

    assert copies(block) == copies(group) == {"0", "1"}
    for k in (0, 1):
        assert block[f"stage.{k}.fc.weight"] == group[f"stage.{k}.dense_1.weight"]


def test_parentheses_without_repeat_or_label_change_nothing():
    plain = compile_src("input x: [4]\ny = x -> dense(3) -> relu\n")
    grouped = compile_src("input x: [4]\ny = x -> ((dense(3)) -> (relu))\n")
    assert grouped.shapes == plain.shapes


@pytest.mark.parametrize("chain, suggestion", [
    ("x -> dense(4) -> relu * 3", "`(dense(4) -> relu) * 3`"),
    ("x -> dense(4) -> dropout(0.5) -> tanh * n as t", "`(dense(4) -> dropout(0.5) -> tanh) * n as t`"),
    ("x -> (dense(4) -> relu -> sigmoid * 2) * 2", "`(dense(4) -> relu -> sigmoid) * 2`"),
    ("x -> relu * 2", "`(... -> relu) * 2`"),
])
def test_repeating_an_activation_alone_is_an_error(chain, suggestion):
    with pytest.raises(NetlangArgumentError) as info:
        compile_src(f"input x: [4]\nconst n = 3\ny = {chain}\n")
    message = info.value.message
    assert message.startswith("`* ") and "repeats only" in message and suggestion in message
    assert info.value.line == 3 and info.value.column == chain.rindex(" -> ") + 9


@pytest.mark.parametrize("chain", [
    "x -> dense(4) * 3",                      # parameters of its own
    "x -> (dense(4) -> relu) * 3",            # the group means it
    "x -> dense(4) -> (relu) * 2",            # and so does a group of one
    "x -> dense(4) -> relu * 1",              # one copy is no repeat
    "x -> dense(8) -> maxout(2) * 2",         # shape-changing
])
def test_repeats_that_stay_legal(chain):
    compile_src(f"input x: [4]\ny = {chain}\n")


def test_pooling_repeats_stay_legal():
    assert shape_of("input x: [8, 8, 2]\ny = x -> maxpool(2) * 2 -> relu\n") == (None, 2, 2, 2)


@pytest.mark.parametrize("source, message", [
    ("y = x -> (dense(4) as fc -> relu) * 2", "`fc` would name a layer in every copy"),
    ("a = x -> (dense(4) -> relu) as g\nb = x -> (dense(4) -> relu) as g", "`g` is defined twice"),
    ("y = x -> (dense(4) -> relu) * 0", "a repeat count must be an integer from 1 to 1000, not 0"),
])
def test_grouped_repeat_mistakes(source, message):
    with pytest.raises(NetlangError, match=re.escape(message)):
        compile_src(f"input x: [4]\n{source}\n")
