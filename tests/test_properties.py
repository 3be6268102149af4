"""Property-based tests of the front end (hypothesis).

- Random valid chains of layers compile, and every layer's inferred shape and
  parameter shapes agree with a direct recomputation from PyTorch's formulas.
- Every compiled graph is self-consistent: re-running each node's shape rule on
  its operands gives back the node's type.
- Random corruptions of valid sources either compile or raise a NetlangError
  with a path, line and column; no other exception ever escapes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netlang
from netlang.errors import NetlangError
from netlang.ops import ShapeContext, get_op

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def consistent(model) -> None:
    """Each node's type is what its op's shape rule gives for its operands' types."""
    graph = model.graph
    for node in graph.topological_order():
        data = graph.nodes[node]
        op = get_op(data["op"])
        assert op is not None, data["op"]
        operands = graph.operands(node)
        ctx = ShapeContext(op, [graph.type_of(o) for o in operands],
                           [graph.nodes[o]["layer"] for o in operands])
        assert op.infer(ctx, data["attrs"]) == data["type"], data["name"]
        for position, operand in enumerate(operands):  # edges carry the operand types
            assert graph.edges[operand, node, position]["type"] == graph.type_of(operand)


# ---- random valid chains on vectors ------------------------------------------------------------

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity", "sign", "elu", "softmax", "log_softmax",
               "leaky_relu(0.1)", "threshold(0.5)"]


@st.composite
def vector_chains(draw):
    features = draw(st.integers(1, 64))
    width = features
    expected = []  # (step text, output width, parameter shapes)
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["dense", "activation", "dropout", "batchnorm", "maxout"]))
        if kind == "dense":
            units = draw(st.integers(1, 48))
            bias = draw(st.booleans())
            text = f"dense({units}{'' if bias else ', bias = false'})"
            shapes = {"weight": (units, width)} | ({"bias": (units,)} if bias else {})
            width = units
        elif kind == "activation":
            text, shapes = draw(st.sampled_from(ACTIVATIONS)), {}
        elif kind == "dropout":
            text, shapes = f"dropout({draw(st.sampled_from([0, 0.1, 0.5, 0.9]))})", {}
        elif kind == "batchnorm":
            text, shapes = "batchnorm", {"weight": (width,), "bias": (width,)}
        else:
            pieces = draw(st.sampled_from([p for p in range(1, 5) if width % p == 0]))
            text, shapes = f"maxout({pieces})", {}
            width //= pieces
        expected.append((text, width, shapes))
    return features, expected


@settings(max_examples=60, **SETTINGS)
@given(vector_chains())
def test_random_vector_chains(chain):
    features, steps = chain
    body = " -> ".join(f"{text} as l{i}" for i, (text, _, _) in enumerate(steps))
    model = netlang.compile(f"input x: [{features}]\ny = x -> {body}\n", path="chain.net")
    shapes = model.shapes
    total = 0
    for i, (_, width, params) in enumerate(steps):
        assert shapes[f"l{i}"] == (None, width)
        for name, shape in params.items():
            assert shapes[f"l{i}.{name}"] == shape
            total += math.prod(shape)
    assert model.summary().total_params == total
    assert list(model.outputs.values()) == [(None, steps[-1][1])]
    consistent(model)


# ---- random valid convolution and pooling stacks on images -----------------------------------

def conv_out(size, kernel, stride, pad_total, dilation):
    """torch.nn.Conv2d's documented formula, with the padding of both sides summed."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size, kernel, stride, padding, ceil_mode):
    """torch.nn.MaxPool2d's rule (aten pooling_output_shape)."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@st.composite
def image_stacks(draw):
    h, w, c = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 8))
    start = (h, w, c)
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "activation", "batchnorm", "transpose"]))
        if kind == "conv":
            kernel = draw(st.integers(1, 5))
            stride = draw(st.integers(1, 3))
            dilation = draw(st.integers(1, 2))
            groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
            filters = groups * draw(st.integers(1, 4))
            padding = draw(st.sampled_from(["same", "valid", 0, 1, 2]))
            if padding == "same":
                nh, nw = -(-h // stride), -(-w // stride)
            else:
                total = 0 if padding == "valid" else 2 * padding
                nh = conv_out(h, kernel, stride, total, dilation)
                nw = conv_out(w, kernel, stride, total, dilation)
            if nh < 1 or nw < 1:
                continue  # would not fit: the error cases are tested elsewhere
            text = (f"conv2d({filters}, {kernel}, stride = {stride}, padding = {padding}, "
                    f"dilation = {dilation}, groups = {groups})")
            params = {"weight": (filters, c // groups, kernel, kernel), "bias": (filters,)}
            h, w, c = nh, nw, filters
        elif kind == "transpose":
            kernel, stride = draw(st.integers(1, 4)), draw(st.integers(1, 2))
            padding = draw(st.integers(0, 1))
            output_padding = draw(st.integers(0, stride - 1))
            nh = (h - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1
            nw = (w - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1
            if nh < 1 or nw < 1 or nh > 80 or nw > 80:
                continue
            filters = draw(st.integers(1, 6))
            text = (f"conv_transpose2d({filters}, {kernel}, stride = {stride}, padding = {padding}, "
                    f"output_padding = {output_padding})")
            params = {"weight": (c, filters, kernel, kernel), "bias": (filters,)}
            h, w, c = nh, nw, filters
        elif kind == "pool":
            op = draw(st.sampled_from(["maxpool", "avgpool"]))
            kernel, stride = draw(st.integers(1, 4)), draw(st.integers(1, 3))
            padding = draw(st.integers(0, kernel // 2))
            ceil_mode = draw(st.booleans())
            nh, nw = (pool_out(s, kernel, stride, padding, ceil_mode) for s in (h, w))
            if nh < 1 or nw < 1:
                continue
            text = (f"{op}({kernel}, stride = {stride}, padding = {padding}, "
                    f"ceil_mode = {str(ceil_mode).lower()})")
            params = {}
            h, w = nh, nw
        elif kind == "batchnorm":
            text, params = "batchnorm", {"weight": (c,), "bias": (c,)}
        else:
            text, params = draw(st.sampled_from(["relu", "tanh", "sigmoid", "lrn"])), {}
        steps.append((text, (h, w, c), params))
    end = draw(st.sampled_from(["", "global_avgpool", "flatten"]))
    return start, steps, end


@settings(max_examples=60, **SETTINGS)
@given(image_stacks())
def test_random_image_stacks(stack):
    (h, w, c), steps, end = stack
    body = "".join(f" -> {text} as l{i}" for i, (text, _, _) in enumerate(steps))
    tail = f" -> {end} as last" if end else ""
    model = netlang.compile(f"input x: [{h}, {w}, {c}]\ny = x{body}{tail}\n", path="stack.net")
    shapes = model.shapes
    for i, (_, shape, params) in enumerate(steps):
        assert shapes[f"l{i}"] == (None, *shape), (i, steps[i][0])
        for name, pshape in params.items():
            assert shapes[f"l{i}.{name}"] == pshape
    final = steps[-1][1] if steps else (h, w, c)
    if end == "global_avgpool":
        assert shapes["last"] == (None, final[2])
    elif end == "flatten":
        assert shapes["last"] == (None, math.prod(final))
    consistent(model)


@settings(max_examples=25, **SETTINGS)
@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 3), st.booleans(), st.booleans(),
       st.sampled_from(["rnn", "lstm", "gru"]))
def test_random_recurrent_layers(steps, features, layers, bidirectional, sequences, op):
    units = features % 7 + 1
    model = netlang.compile(
        f"input x: [{steps}, {features}]\ny = x -> {op}({units}, layers = {layers}, "
        f"bidirectional = {str(bidirectional).lower()}, sequences = {str(sequences).lower()})\n",
        path="rnn.net")
    directions = 2 if bidirectional else 1
    width = units * directions
    assert model.shapes["y"] == ((None, steps, width) if sequences else (None, width))
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[op]
    # PyTorch's count: per layer and direction, gates·h·(in + h) weights and 2·gates·h biases.
    expected = sum(directions * (gates * units * ((features if layer == 0 else width) + units)
                                 + 2 * gates * units) for layer in range(layers))
    assert model.summary().total_params == expected
    consistent(model)


# ---- random corruptions of valid sources -----------------------------------------------------

SEEDS = {
    "mlp.net": """\
const hidden = 64
input image: [28, 28, 1]
input label: int32[]
logits = image -> flatten -> dense(hidden) as fc1 -> relu -> dropout(0.2) -> dense(10)
output probs = logits -> softmax
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.1, momentum = 0.9)
  batch_size 32
  epochs 2
  metrics accuracy, top_k(3)
}
""",
    "blocks.net": """\
block residual(filters, stride = 1) {
  input x
  y = x -> conv2d(filters, 3, stride = stride, padding = 1, bias = false) -> batchnorm
  if stride != 1 or x.shape[-1] != filters {
    s = x -> conv2d(filters, 1, stride = stride)
  } else {
    s = x
  }
  output out = y + s -> relu
}
input image: [16, 16, 3]
h = image -> conv2d(8, 3, padding = same) -> residual(8) * 2 as stage1 -> residual(16, stride = 2)
output logits = h -> global_avgpool -> dense(5)
""",
    "merge.net": """\
input a: [8, 8, 4]
input b: [8, 8, 4]
left = a -> conv2d(6, 3, padding = 1) as left_conv
right = (a, b) -> concat(axis = -1) -> conv2d(6, (1, 3), padding = (0, 1))
mixed = left + right
gate = right -> sigmoid
gated = mixed * gate
output y = gated -> maxpool(2, ceil_mode = true) -> flatten -> dense(3)
""",
    "autoencoder.net": """\
const code = 16
input x: [64]
h = x -> dense(code) as encoder -> tanh
r = h -> dense(64, tie = encoder) as decoder -> sigmoid
output r
train {
  loss squared_error(r, x)
  optimizer adam(lr = 1e-3)
  regularize l2(1e-4) on encoder
}
""",
    "sequence.net": """\
input tokens: int32[12]
input next: int32[12]
output logits = tokens -> embedding(50, 8) -> lstm(16, sequences = true, bidirectional = true)
  -> gru(8, sequences = true) -> dense(50)
train {
  loss cross_entropy(logits, next)
}
""",
}
EXAMPLES = {str(p): p.read_text("utf-8") for p in sorted((ROOT / "examples").glob("*.net"))}
SOURCES = {**{f"seed/{name}": text for name, text in SEEDS.items()}, **EXAMPLES}

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d[\d_]*(?:\.\d*)?'
                   r'(?:[eE][+-]?\d+)?|->|\*\*|//|[=!<>]=|\S')
FRAGMENTS = ["(", ")", "[", "]", "{", "}", ",", "->", "*", "**", "=", "-", "+", "/", ".", ":", "0",
             "1", "-1", "2.5", "1e9", "10 ** 40", '"s"', "x", "as", "if", "else", "block", "input",
             "output", "const", "train", "import", "true", "not", "and", "on", "dense", "conv2d",
             "relu", "concat", "shape", "loss", "freeze", "\n", " ", "#", "\x00", "é", "\t", "\ufeff",
             "99999999999999999999999", "int32", "(1, 2)", '"lib.net"']


def test_seeds_compile():
    for name, text in SEEDS.items():
        consistent(netlang.compile(text, path=name))


@st.composite
def corruptions(draw):
    name = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[name]
    for _ in range(draw(st.integers(1, 3))):
        tokens = [m.span() for m in TOKEN.finditer(text)] or [(0, 0)]
        kind = draw(st.sampled_from(["delete char", "insert char", "replace char", "delete token",
                                     "insert fragment", "replace token", "duplicate token",
                                     "swap tokens"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        a, b = tokens[draw(st.integers(0, len(tokens) - 1))]
        c, d = tokens[draw(st.integers(0, len(tokens) - 1))]
        char = draw(st.characters(codec="utf-8", exclude_categories=("Cs",)))
        fragment = draw(st.sampled_from(FRAGMENTS))
        if kind == "delete char":
            text = text[:i] + text[i + 1:]
        elif kind == "insert char":
            text = text[:i] + char + text[i:]
        elif kind == "replace char":
            text = text[:i] + char + text[i + 1:]
        elif kind == "delete token":
            text = text[:a] + text[b:]
        elif kind == "insert fragment":
            text = text[:i] + fragment + text[i:]
        elif kind == "replace token":
            text = text[:a] + fragment + text[b:]
        elif kind == "duplicate token":
            text = text[:a] + text[c:d] + " " + text[a:]
        elif (a, b) < (c, d) and b <= c:  # swap two tokens
            text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    return name, text


@settings(max_examples=200, **SETTINGS)
@given(corruptions())
def test_corrupted_sources_compile_or_raise_a_positioned_netlang_error(case):
    name, text = case
    # Examples compile under their own path, so their imports still resolve.
    path = name if not name.startswith("seed/") else "corrupt.net"
    try:
        model = netlang.compile(text, path=path)
    except NetlangError as error:
        assert isinstance(error.render(), str) and error.diagnostics
        if text.strip(" \t\n\r\f\v\ufeff"):
            assert error.path is not None and error.line is not None and error.column is not None
            assert error.line >= 1 and error.column >= 1
            for diagnostic in error.diagnostics:
                assert diagnostic.loc is not None, diagnostic.message
        return
    # A corruption that still compiles is a valid model like any other.
    consistent(model)
    model.summary().render()


@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.sampled_from(FRAGMENTS + list("abcxyz0123456789_")), max_size=40)
       .map(" ".join))
def test_random_token_soup_never_escapes(text):
    try:
        netlang.compile("input x: [4]\n" + text, path="soup.net")
    except NetlangError as error:
        assert error.line is not None and error.column is not None


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_self_consistent(name):
    consistent(netlang.compile(Path(name)))
