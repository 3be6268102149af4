"""Tensor math in the language: what the gradient and conformance walks do not show.

Those walks (tests/test_gradients.py, tests/test_conformance.py) hold every math op's
backward rule against finite differences and every engine against the reference.  Here:
how expressions lower (broadcasting, numbers, calls, `split`), that a chain of elementwise
math runs in one fused loop, that `stop_gradient` blocks its operand's gradient, and a
model written with these ops against PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gradients import random_params, se_model

import netlang
from netlang.errors import NetlangArgumentError, NetlangShapeError
from netlang.interp import needed_nodes
from netlang.passes.fusion import plan_fusion
from netlang.runtime import make_engine
from netlang.runtime.reference import ReferenceEngine


def _ops(graph) -> list[str]:
    return [graph.op(n) for n in graph.topological_order() if graph.op(n) not in ("input", "param")]


def test_a_chain_of_elementwise_math_is_fused_into_one_loop():
    graph = netlang.compile("input x: [6]\noutput y = exp(x) * 0.5 + 1").graph
    order = needed_nodes(graph, [graph.node_named("y")])
    fusion = plan_fusion(graph, order, {graph.node_named("y")})
    computed = [n for n in order if graph.op(n) != "input"]
    assert [graph.op(n) for n in computed] == ["exp", "scale", "add_scalar"]
    host = computed[0]
    assert fusion.epilogue == {host: computed[1:]}     # one loop: exp's, computing all three


def test_the_fused_loop_computes_the_chain():
    graph = netlang.compile("input x: [6]\noutput y = exp(x) * 0.5 + 1").graph
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    for device in ("reference", "cpu"):
        y = make_engine(graph, device=device).forward({"x": x})["y"]
        np.testing.assert_allclose(y, np.exp(x) * 0.5 + 1, rtol=1e-6)


def test_broadcasting_aligns_trailing_axes_and_widens_each_operand_once():
    graph = netlang.compile("input a: [3, 1]\ninput b: [4]\noutput y = a - b").graph
    assert _ops(graph) == ["broadcast_to", "broadcast_to", "subtract"]
    assert graph.type_of(graph.node_named("y")).shape == (None, 3, 4)
    same = netlang.compile("input a: [4]\ninput b: [4]\noutput y = a * b").graph
    assert _ops(same) == ["multiply"]        # equal shapes: nothing to widen


@pytest.mark.parametrize("expression,ops", [
    ("x + 1", ["add_scalar"]), ("1 + x", ["add_scalar"]), ("x - 1", ["add_scalar"]),
    ("1 - x", ["scale", "add_scalar"]), ("2 * x", ["scale"]), ("x / 4", ["scale"]),
    ("1 / x", ["rdivide_scalar"]), ("-x", ["scale"]), ("x ** 2", ["pow"]),
])
def test_arithmetic_with_a_number(expression, ops):
    graph = netlang.compile(f"input x: [3]\noutput y = {expression}").graph
    assert _ops(graph) == ops
    x = np.array([[0.5, 2.0, -4.0]])
    y = ReferenceEngine(graph, dtype=np.float64).forward({"x": x})["y"]
    np.testing.assert_allclose(y, eval(expression, {"x": x}), rtol=1e-15)   # NumPy's reading


def test_reductions_and_slices_in_expressions_and_chains():
    graph = netlang.compile("""
        input x: [2, 3, 4]
        a = sum(x, axis = (0, 2))
        b = x -> mean(axis = 1, keepdims = true)
        c = max(x)
        d = x -> slice(1, 3, axis = 1)
        output a
        output b
        output c
        output d
    """).graph
    x = np.random.default_rng(1).normal(size=(2, 2, 3, 4))
    out = ReferenceEngine(graph, dtype=np.float64).forward({"x": x})
    np.testing.assert_allclose(out["a"], x.sum(axis=(1, 3)))
    np.testing.assert_allclose(out["b"], x.mean(axis=2, keepdims=True))
    np.testing.assert_allclose(out["c"], x.max(axis=-1))
    np.testing.assert_allclose(out["d"], x[:, :, 1:3])


def test_split_gives_a_tuple_of_named_slices():
    model = netlang.compile("""
        input x: [2, 6]
        parts = x -> split((1, 2, 3)) as p
        halves = x -> split(2, axis = 0)
        output y = parts[2] -> sum
        output z = (halves[0], halves[1]) -> add
    """)
    graph = model.graph
    for i, (start, stop) in enumerate([(0, 1), (1, 3), (3, 6)]):
        node = graph.node_named(f"p.{i}")
        assert graph.op(node) == "slice"
        attrs = graph.nodes[node]["attrs"]
        assert (attrs["start"], attrs["stop"]) == (start, stop)
    x = np.random.default_rng(2).normal(size=(3, 2, 6))
    out = ReferenceEngine(graph, dtype=np.float64).forward({"x": x})
    np.testing.assert_allclose(out["y"], x[..., 3:].sum(axis=-1))
    np.testing.assert_allclose(out["z"], x[:, 0:1] + x[:, 1:2])


def test_stop_gradient_blocks_the_gradient():
    """y = x · stop_gradient(x): the gradient is that of x · c with c = x held constant."""
    blocked = netlang.compile(se_model("y = x * stop_gradient(x)", "input x: [4]",
                                       out_shape=[4])).graph
    constant = netlang.compile(se_model("y = x * c", "input x: [4]\ninput c: [4]",
                                        out_shape=[4])).graph
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    _, grads, _ = ReferenceEngine(blocked, dtype=np.float64, input_grads=("x",)).gradients(
        {"x": x, "t": t})
    _, expected, _ = ReferenceEngine(constant, dtype=np.float64, input_grads=("x",)).gradients(
        {"x": x, "c": x, "t": t})
    np.testing.assert_allclose(grads["x"], expected["x"], rtol=1e-15)
    # Not the full derivative 2·x·(x² − t)/batch: the second path is cut.
    assert not np.allclose(grads["x"], 2 * x * (x * x - t) / 2)


def test_an_op_of_two_tensors_is_called_on_both():
    """`sample_normal(mu, logvar)` is the chain `(mu, logvar) -> sample_normal`."""
    head = "input mu: [3]\ninput logvar: [3]\n"
    called = netlang.compile(head + "output z = sample_normal(mu, logvar)").graph
    chained = netlang.compile(head + "output z = (mu, logvar) -> sample_normal").graph
    node = called.graph["outputs"]["z"]
    assert called.nodes[node]["op"] == "sample_normal"
    assert [called.nodes[a]["name"] for a in called.operands(node)] == ["mu", "logvar"]
    feeds = {"mu": np.zeros((2, 3)), "logvar": np.zeros((2, 3))}
    drawn = [ReferenceEngine(g, dtype=np.float64, seed=4).forward(feeds)["z"]
             for g in (called, chained)]
    np.testing.assert_array_equal(drawn[0], drawn[1])


@pytest.mark.parametrize("source,error,column", [
    ("input b: [4]\ny = x - b", NetlangShapeError, 7),           # x: [4, 3]
    ("y = x / 0", NetlangArgumentError, 7),
    ("y = 2 - exp(3)", NetlangArgumentError, 13),
    ("y = sum(x, axis = 2)", NetlangShapeError, 5),
    ("y = sample_normal(x)", NetlangArgumentError, 5),
    ("y = sample_normal(x, 2)", NetlangArgumentError, 22),
])
def test_mistakes_are_reported_where_they_are(source, error, column):
    with pytest.raises(error) as raised:
        netlang.compile("input x: [4, 3]\n" + source)
    assert (raised.value.line, raised.value.column) == (source.count("\n") + 2, column)
    assert "\n" not in str(raised.value).splitlines()[0]


def test_a_math_model_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    graph = netlang.compile("""
        input x: [3, 4]
        input t: [3, 4]
        h = x -> dense(4) as fc
        centred = h - mean(h, axis = 0, keepdims = true)
        scale = sqrt(sum(square(centred), axis = -1, keepdims = true) / 4 + 1e-3)
        gate = x -> slice(0, 1) -> softplus
        y = clip(centred / scale, -1.5, 1.5) * gate + exp(-abs(x)) - max(x, axis = 0) / 2
        output y
        train { loss squared_error(y, t) }
    """).graph
    rng = np.random.default_rng(4)
    params = random_params(graph, rng)
    x, t = rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 3, 4))
    engine = ReferenceEngine(graph, params={k: v.copy() for k, v in params.items()},
                             dtype=np.float64, input_grads=("x",))
    loss, grads, outputs = engine.gradients({"x": x, "t": t})

    tx = torch.tensor(x, requires_grad=True)
    w = torch.tensor(params["fc.weight"], requires_grad=True)
    b = torch.tensor(params["fc.bias"], requires_grad=True)
    h = F.linear(tx, w, b)
    centred = h - h.mean(dim=1, keepdim=True)
    scale = torch.sqrt((centred ** 2).sum(dim=-1, keepdim=True) / 4 + 1e-3)
    gate = F.softplus(tx[..., 0:1])
    y = torch.clamp(centred / scale, -1.5, 1.5) * gate + torch.exp(-tx.abs()) - \
        tx.amax(dim=1, keepdim=True) / 2
    tloss = 0.5 * ((y - torch.tensor(t)) ** 2).sum(dim=(1, 2)).mean()
    tloss.backward()
    np.testing.assert_allclose(outputs["y"], y.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for name, tensor in (("x", tx), ("fc.weight", w), ("fc.bias", b)):
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_an_op_name_may_name_a_value():
    """A VAE's `mean` and `sum` are values; the same words as a call or a step are the ops."""
    model = netlang.compile("""
input x: [6]
mean = x -> dense(4)
sum = x -> dense(4)
output total = mean(mean + sum, axis = -1)
output steps = x -> mean(axis = -1)
""")
    assert model.outputs == {"total": (None,), "steps": (None,)}
    assert [o for o in _ops(model.graph) if o == "mean"] == ["mean", "mean"]
    with pytest.raises(netlang.NetlangError, match="`max` is the name of a built-in"):
        netlang.compile("input x: [2]\nmax = x -> relu\noutput y = max\n")
