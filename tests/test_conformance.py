"""The back-end conformance suite: every engine against the NumPy reference engine, op by op.

Every registered op that has a forward rule runs, forward and backward, on small shapes, on
every engine: `reference`, `cpu` and `cuda`.  The tiny models are test_gradients.py's cases
(each applies one op, with its non-default arguments, and ends in a loss), so an op gains its
conformance check with its gradient case; a few composite models below add what only shows
with several ops together (fused chains, a 1×1 convolution, a loss whose logits feed a layer).

A case is compared with the reference engine in the same precision: in float64, where only the
order of sums may differ (a tight tolerance), and in float32, the precision models train in.
The reference engine itself is held, in float32, against its own float64.  Compared: the
objective of the training-mode pass, the gradients of every parameter and float input, that
pass's outputs, and the outputs of the evaluation pass (batch norm folded into its product on
the compiled engines).  Building a case's programs with Numba takes a second or two, so on a
compiling engine most variants are marked slow (see DEFAULT_COMPOSITES).

Ops an engine has no kernel for are listed in PENDING with the reason; that engine refuses a
model using one with a one-line error naming it.  Variants an engine gets wrong or refuses
without that error are in KNOWN_GAPS, expected to fail (strictly: a fix makes them pass, and
then the entry must go).

Also here, once for every compiled engine (each engine's tests wrote them out before):
training steps with each optimiser, a model's gradients, forward pass and loss, and dropout
masks with tied weights over several steps.

The cuda cases run on a GPU, or on Numba's simulator in a process of its own (.ci/run):
    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py tests/test_conformance.py
and the other engines' cases in the main pass only (`engines` in conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUDA_SIMULATOR, engines, random_batch
from test_gradients import CASES, Case, compile_case, differentiable_inputs, draw_feeds, labels, unit_interval

import netlang
from netlang.errors import UsageError
from netlang.ops import all_ops
from netlang.pipeline import forward_program, training_program
from netlang.runtime import CpuEngine, CudaEngine, ReferenceEngine, make_engine

ENGINE_CLASSES = {engine.name: engine for engine in (ReferenceEngine, CpuEngine, CudaEngine)}

# Ops an engine cannot run yet, with the reason.  An op that gains its forward rule or kernel
# fails test_every_kernel_is_present_or_pending until it leaves this table.
PENDING: dict = {"reference": {}, "cpu": {}, "cuda": {}}

# A model for each layer whose kernels an engine lacked (the RBM, on CUDA until
# netlang/ops/rbm_cuda.py): every engine must have them or list them in PENDING, and one that
# lists them refuses the model in one line (test_cuda.py also sees an op without a CUDA kernel
# refused); the op of each gradient case, so that the walk leaves out the cases of ops an
# engine has no kernel for.
CASE_OPS = {case.id: op for op, cases in CASES.items() for case in cases}
PENDING_MODELS: dict = {
    "rbm": "input x: [4]\ng = x -> rbm(3) as layer\noutput g\ntrain { loss g }\n",
}

# (engine, case id) → why the engine fails that case today, and the exception it fails with.
KNOWN_GAPS: dict = {}

# Several ops together, as models use them: elementwise chains fused into their products, a
# loss whose logits also feed a layer (not fused with its gradient), soft targets that are not
# distributions, convolutions with padding, strides, dilation, groups and the direct (1×1)
# path, transposed convolutions, pooling with padding and ceil mode.
COMPOSITES = [
    # An RBM as a file writes it: the evaluation pass runs the layer itself, the training pass
    # its rewrite (rbm_chain, rbm_gap); a dense layer shares its weight and hidden bias.
    Case("composite_rbm", """
        input x: [5]
        g = x -> rbm(3, k = 2) as r
        output h = x -> dense(3, share = r) -> sigmoid
        output g
        train { loss g }""", draw={"x": unit_interval}),
    # Gaussian visible units drawn by persistent chains (normal draws; the mean over chains).
    Case("composite_rbm_gaussian", """
        input x: [4]
        g = x -> rbm(3, k = 2, visible = gaussian, persistent = true, chains = 3) as r
        output g
        train { loss g }"""),
    Case("composite_activations", """
        input x: [7]
        input t: [7]
        a = x -> dense(7) -> sigmoid
        b = x -> dense(7) -> tanh
        c = x -> dense(7) -> leaky_relu(0.1)
        d = x -> dense(7) -> elu(0.5)
        e = x -> dense(7) -> relu
        f = x -> dense(7) -> identity
        s = x -> dense(7) -> sign
        h = x -> dense(7) -> threshold(0.2)
        output y = (a * b + c, d + e + f, s + h) -> add
        train { loss mse(y, t) }"""),
    # silu and both GELUs fused into their products' epilogues, one after another in `c`;
    # their gradients fused into the products that compute the incoming gradient.
    Case("composite_smooth_activations", """
        input x: [6]
        input t: [6]
        a = x -> dense(6) -> silu
        b = x -> dense(6) -> gelu
        c = x -> dense(6) -> silu -> gelu(approximate = tanh)
        output y = (a, b, c) -> add -> dense(6)
        train { loss mse(y, t) }"""),
    Case("composite_softmax", """
        input x: [5]
        input t: [4]
        p = x -> dense(4) -> softmax
        q = x -> dense(4) -> log_softmax
        output y = p + q
        train { loss squared_error(y, t) }"""),
    Case("composite_cross_entropy_soft", """
        input x: [5]
        input t: [3]
        output z = x -> dense(3)
        train { loss cross_entropy(z, t, label_smoothing = 0.1) }""",
         draw={"t": unit_interval}),   # rows need not sum to one
    # Recurrent layers stacked as models stack them: a bidirectional LSTM stack with dropout
    # between its layers and initial states, a GRU with lengths reading its sequence, an RNN
    # on top returning its final state.
    Case("composite_recurrent", """
        input x: [5, 3]
        input h: [4, 3]
        input c: [4, 3]
        input n: int32[]
        input y: int32[]
        s = x -> lstm(3, layers = 2, bidirectional = true, dropout = 0.3, sequences = true,
                      h0 = h, c0 = c)
        r = s -> gru(4, sequences = true, lengths = n) -> rnn(3, activation = relu)
        b = x -> gru(2, bidirectional = true)
        output z = (r, b) -> concat -> dense(3)
        train { loss cross_entropy(z, y) }""", draw={"n": labels(6), "y": labels(3)}),
    Case("composite_cross_entropy_unpaired", """
        input x: [5]
        input y: int32[]
        z = x -> dense(3) as a
        output w = z -> relu -> dense(3)
        train { loss cross_entropy(z, y) + cross_entropy(w, y, label_smoothing = 0.2) }""",
         draw={"y": labels(3)}),
    Case("composite_bce", """
        input x: [5]
        input t: [3]
        p = x -> dense(3) -> sigmoid
        output q = x -> dense(3)
        train { loss binary_cross_entropy(p, t) + binary_cross_entropy(q, t, logits = true) }""",
         draw={"t": unit_interval}),
    Case("composite_maxout_permute_hinge", """
        input x: [2, 3]
        input y: int32[]
        output z = x -> permute((1, 0)) -> flatten -> dense(6) -> maxout(2)
        train { loss hinge(z, y, margin = 0.5) }""",
         draw={"y": labels(3)}),
    Case("composite_tied_transpose_concat", """
        input x: [6]
        input t: [6]
        code = x -> dense(4) as enc -> tanh
        wide = (code, x) -> concat
        output y = wide -> dense(4) -> dense(6, tie = enc) -> identity
        train { loss mse(y, t) }"""),
    Case("composite_tensor_math", """
        input x: [3, 4]
        input t: [3, 4]
        h = x -> dense(4)
        centred = h - mean(h, axis = 0, keepdims = true)
        parts = x -> split((1, 3))
        gate = softplus(parts[0]) + sum(square(parts[1]), axis = -1, keepdims = true) / 3
        y = exp(-abs(centred)) * 0.5 + clip(x, -1, 1) * gate - max(h, axis = 0) / (1 + gate)
        output z = sqrt(1 + y ** 2) - 1 / (2 + stop_gradient(sigmoid(x)))
        train { loss mse(z, t) }""", batch=2),
    # softmax and log_softmax along each axis of an example: the last axis's contiguous rows
    # and the strided lanes of the others (the outer axes and the batch on either side).
    Case("composite_softmax_axes", """
        input x: [2, 3, 4]
        input t: [2, 3, 4]
        a = x -> softmax(axis = 0)
        b = x -> softmax(axis = -2)
        c = x -> log_softmax(axis = 1)
        d = x -> log_softmax(axis = 0) -> tanh
        e = x -> softmax
        output y = a * b + c * 0.25 + d - e
        train { loss mse(y, t) }""", batch=2),
    Case("composite_conv_pool", """
        input x: [6, 6, 2]
        input t: [3]
        a = x -> conv2d(3, 3, padding = 1) -> relu -> maxpool(2) -> flatten
        b = x -> conv2d(4, (2, 3), stride = 2, padding = ((1, 0), (0, 1)), dilation = (1, 2),
                        groups = 2) -> tanh -> flatten
        c = x -> maxpool(3, stride = 2, padding = 1, ceil_mode = true) -> flatten
        output y = (a, b, c) -> concat -> dense(3)
        train { loss mse(y, t) }""", batch=2),
    Case("composite_conv_transpose_avgpool", """
        input x: [3, 3, 2]
        input t: [3]
        a = x -> conv2d(4, 1) -> relu -> conv2d(4, 1, groups = 2, bias = false)
        b = a -> conv_transpose2d(2, 3, stride = 2, padding = 1, output_padding = 1) -> tanh
        c = a -> conv_transpose2d(2, (2, 3), stride = 2, output_padding = 1, groups = 2)
        d = b -> avgpool(2, padding = 1, count_include_pad = false) -> flatten
        e = c -> avgpool(3, stride = 2, ceil_mode = true) -> flatten
        f = a -> global_avgpool
        output y = (d, e, f) -> concat -> dense(3)
        train { loss mse(y, t) }""", batch=2),
]

ALL_CASES = [case for cases in CASES.values() for case in cases] + COMPOSITES

# Every case runs in both precisions on every engine.  Where a case's programs are compiled (by
# Numba: the CPU, and CUDA on a GPU; the simulator compiles nothing), a second or two each, the
# default run takes the composites in float32, which run every op again, and each op's first
# case in float64 only for the ops no default composite runs; the rest, each op's other
# variants and the float64 cases of ops a composite covers, is marked slow (.ci/run runs it).
# composite_recurrent and composite_conv_transpose_avgpool are slow too (a minute and 10 s of
# compiling on a cold cache), and so are the recurrent ops' float64 cases (40 s):
# tests/test_recurrent.py compares their CPU training steps with the reference engine in the
# default run.
DEFAULT_COMPOSITES = ({case.id for case in COMPOSITES}
                      - {"composite_recurrent", "composite_conv_transpose_avgpool"})
COVERED_ELSEWHERE = {"rnn", "lstm", "gru"}

# Graph leaves: no kernel, nothing to run.
LEAVES = {"input", "param"}

# (rtol, atol) of an engine against the reference engine in the same precision: only the order
# of sums differs.  In float64 that is held element by element.  In float32 a sum's rounding is
# float32's epsilon times its terms, not times the sum: an element that cancels to a small value
# can differ relatively more than 1e-5 between two orders (composite_conv_pool's 3×3 weight
# gradient: an element of −0.3174 among values up to 56 is 1.1e-5 from float64 on the float32
# reference engine, 2.5e-6 on CUDA, so 1.3e-5 apart), so float32's bar is held at the scale
# of each array.
SAME_PRECISION = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}
# The reference engine in float32 against its float64: float32's own rounding over a few
# operations of O(1) values (max |a − b| ≤ rtol · max |b| + atol over a whole array).
FLOAT32_ROUNDING = (2e-5, 1e-6)


# Composite id → the ops of its graph, read once for the whole collection.
_COMPOSITE_OPS: dict[str, set] = {}


def _case_ops(case) -> set:
    """The ops a case's model uses: its op, or every op of a composite's graph (front end only)."""
    if case.id in CASE_OPS:
        return {CASE_OPS[case.id]}
    if case.id not in _COMPOSITE_OPS:
        graph = netlang.compile(case.source).graph
        _COMPOSITE_OPS[case.id] = {graph.op(node) for node in graph.nodes}
    return _COMPOSITE_OPS[case.id]


def _default_cases() -> dict:
    """The case ids a compiling engine runs by default, per precision (see DEFAULT_COMPOSITES)."""
    covered = set(COVERED_ELSEWHERE)
    for case in COMPOSITES:
        if case.id in DEFAULT_COMPOSITES:
            covered |= _case_ops(case)
    return {"float64": {cases[0].id for op, cases in CASES.items() if op not in covered},
            "float32": DEFAULT_COMPOSITES}


def _walk_params():
    """(case, engine, dtype) for every case an engine runs in that precision, each with the
    engine's skip mark and, for a known gap, a strict expected failure."""
    params = []
    default_cases = _default_cases()
    for engine in engines("reference", "cpu", "cuda"):
        name = engine.values[0]
        compiled = name == "cpu" or (name == "cuda" and not CUDA_SIMULATOR)
        for dtype in ("float64", "float32"):
            if name == "reference" and dtype == "float64":
                continue   # the oracle itself
            for case in ALL_CASES:
                if _case_ops(case) & set(PENDING[name]):
                    continue   # refused in one line: test_pending_ops_are_refused_...
                marks = list(engine.marks)
                if compiled and case.id not in default_cases[dtype]:
                    marks.append(pytest.mark.slow)
                if (name, case.id) in KNOWN_GAPS:
                    reason, error = KNOWN_GAPS[name, case.id]
                    marks.append(pytest.mark.xfail(strict=True, raises=error, reason=reason))
                params.append(pytest.param(case, name, dtype, marks=marks,
                                           id=f"{case.id}-{name}-{dtype}"))
    return params


# ---- building and feeding a case ---------------------------------------------------------------

def _case_params(graph, rng, dtype) -> dict:
    """Fresh parameters (biases included, not the init schemes' zeros) and buffers that an
    evaluation can read: running variances must be positive, so every buffer is drawn from
    [0.5, 1.5)."""
    params = {name: rng.normal(0.0, 0.6, graph.type_of(node).shape).astype(dtype)
              for name, node in graph.parameters().items()}
    params.update({name: rng.uniform(0.5, 1.5, graph.type_of(node).shape).astype(dtype)
                   for name, node in graph.buffers().items()})
    return params


def _as_dtype(graph, arrays: dict, dtype) -> dict:
    """Float inputs in `dtype`; integer inputs as they are."""
    return {name: value.astype(dtype) if graph.type_of(graph.graph["inputs"][name]).is_float
            else value for name, value in arrays.items()}


def _run(engine_name, graph, params, feeds, dtype, input_grads) -> dict:
    """What a case compares, from one engine: the training-mode pass (objective, gradients,
    outputs), and the evaluation pass's outputs."""
    engine = make_engine(graph, params={k: v.copy() for k, v in params.items()}, seed=7,
                         device=engine_name, dtype=dtype, input_grads=input_grads)
    assert engine.name == engine_name   # never another engine in its place
    loss, grads, outputs = engine.gradients(feeds)
    return {"loss": loss, "grads": grads, "outputs": outputs, "eval": engine.forward(feeds)}


def _same_arrays(actual: dict, expected: dict, rtol, atol, what):
    assert actual.keys() == expected.keys(), what
    for name in expected:
        assert np.shape(actual[name]) == np.shape(expected[name]), f"{what} {name}"
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol,
                                   err_msg=f"{what} {name}")


def _close_at_scale(actual: dict, expected: dict, rtol, atol, what):
    assert actual.keys() == expected.keys(), what
    for name in expected:
        a, b = np.asarray(actual[name], np.float64), np.asarray(expected[name], np.float64)
        assert a.shape == b.shape, f"{what} {name}"
        error, scale = float(np.abs(a - b).max(initial=0)), float(np.abs(b).max(initial=0))
        assert error <= rtol * scale + atol, f"{what} {name}: max error {error:.3g} at {scale:.3g}"


def _program_ops(graph) -> dict:
    """{program: (graph, nodes it computes)} of the programs an engine builds from `graph`: the
    training program (differentiated with respect to the parameters and the float inputs) and
    the evaluation program (batch norm folded into the product before it)."""
    training = training_program(graph, graph.parameters(), differentiable_inputs(graph))
    evaluation = forward_program(graph, graph.graph["outputs"], with_losses=True, fold=True)
    return {"training": (training.graph, training.order),
            "evaluation": (evaluation.graph, evaluation.order)}


# ---- the walk ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case,engine_name,dtype", _walk_params())
def test_op_matches_the_reference_engine(case, engine_name, dtype):
    graph = compile_case(case)
    rng = np.random.default_rng(sum(map(ord, case.id)))
    feeds = _as_dtype(graph, draw_feeds(graph, case, rng, case.batch), dtype)
    params = _case_params(graph, rng, dtype)
    inputs = differentiable_inputs(graph)
    actual = _run(engine_name, graph, params, feeds, dtype, inputs)
    if engine_name == "reference":   # float32 against the float64 oracle
        as64 = {name: value.astype(np.float64) for name, value in params.items()}
        expected = _run("reference", graph, as64, _as_dtype(graph, feeds, np.float64),
                        "float64", inputs)
        (rtol, atol), compare = FLOAT32_ROUNDING, _close_at_scale
    else:
        expected = _run("reference", graph, params, feeds, dtype, inputs)
        # Element by element in float64; in float32 each array at its own scale: an element
        # that is the difference of larger terms carries their rounding (a relu RNN's input
        # gradient: the reference's own float32 is 1.2e-6 off its float64 at an element of
        # 0.009 in an array reaching 10, the CPU's 0.7e-6).
        (rtol, atol) = SAME_PRECISION[dtype]
        compare = _same_arrays if dtype == "float64" else _close_at_scale
    assert actual["loss"] == pytest.approx(expected["loss"], rel=rtol, abs=atol), "loss"
    assert set(inputs) <= set(actual["grads"])
    for part in ("grads", "outputs", "eval"):
        compare(actual[part], expected[part], rtol, atol, f"{case.id}: {part}")
        for name, value in actual[part].items():
            assert np.asarray(value).dtype == np.dtype(dtype), f"{part} {name}"


def test_every_op_with_a_forward_rule_is_in_a_conformance_case():
    covered = set()
    for case in ALL_CASES:
        for graph, nodes in _program_ops(compile_case(case)).values():
            covered |= {graph.op(n) for n in nodes}
    with_forward = {name for name, op in all_ops().items() if op.forward_rule is not None}
    missing = sorted(with_forward - covered)
    assert not missing, f"ops no conformance case runs (give them a case in test_gradients.py's " \
                        f"CASES): {missing}"
    expanded = {name for name, op in all_ops().items() if op.expand_rule is not None}
    assert set(all_ops()) - with_forward - LEAVES - expanded <= set(PENDING_MODELS)


@pytest.mark.parametrize("engine_name", sorted(PENDING))
def test_every_kernel_is_present_or_pending(engine_name):
    # Asked of the engine's class, not run: the main pass checks the cuda table without a GPU.
    engine = ENGINE_CLASSES[engine_name]
    lacking = set()
    for case in ALL_CASES:
        for graph, nodes in _program_ops(compile_case(case)).values():
            lacking |= set(engine.missing_kernels(graph, nodes))
    for op, source in PENDING_MODELS.items():
        graph = netlang.compile(source).graph
        lacking |= set(engine.missing_kernels(graph, list(graph.nodes)))
    pending = PENDING[engine_name]
    assert not lacking - set(pending), f"{engine_name} has no kernel for " \
        f"{sorted(lacking - set(pending))}: write one, or list it in PENDING with the reason"
    assert not set(pending) - lacking, f"{engine_name} now has kernels for " \
        f"{sorted(set(pending) - lacking)}: remove them from PENDING"
    assert all(op in all_ops() and reason for op, reason in pending.items())


@pytest.mark.parametrize("engine_name", engines("reference", "cpu", "cuda"))
def test_pending_ops_are_refused_in_one_line_naming_them(engine_name):
    for op in sorted(set(PENDING[engine_name]) & set(PENDING_MODELS)):
        graph = netlang.compile(PENDING_MODELS[op]).graph
        feeds = random_batch(graph, 2, 0)
        with pytest.raises(UsageError, match=f"`{op}` \\(layer `layer`\\)") as refused:
            engine = make_engine(graph, device=engine_name)
            engine.gradients(feeds)
        assert "\n" not in str(refused.value)


# ---- the smooth activations against PyTorch, on every engine ----------------------------------

# Values from 0 out to where float32's e^-x overflows (x < -88) and the products saturate.
SMOOTH_X = np.concatenate([np.linspace(-6.0, 6.0, 25), [-100.0, -90.0, -30.0, 30.0, 90.0,
                                                        100.0, -1e-3, 1e-3]]).reshape(-1, 1)
# (rtol, atol) against torch: in float64 only the last bits of exp, erf and tanh differ; in
# float32 the engines' bar against the reference (1 + erf(x/√2) cancels for x ≲ −4, so a value
# of 1e-6 there keeps only a few bits, in torch's float32 as in ours).
TORCH_TOLERANCE = {"float64": (1e-12, 1e-14), "float32": SAME_PRECISION["float32"]}


# e^-x overflowing to inf is the path under test; the simulator computes `math.exp` as a Python
# float and NumPy warns when it becomes an infinite float32 (a GPU and the CPU say nothing).
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("engine_name", engines("reference", "cpu", "cuda"))
def test_smooth_activations_match_torch(engine_name, dtype):
    """silu and gelu (exact and tanh) forward and gradient against torch.nn.functional, at
    large magnitudes too (no inf − inf or 0 · inf there)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    graph = netlang.compile("""
        input a: [1]
        input b: [1]
        input c: [1]
        input t: [3]
        p = a -> silu
        q = b -> gelu
        r = c -> gelu(approximate = tanh)
        output y = (p, q, r) -> concat
        train { loss squared_error(y, t) }""").graph
    x = SMOOTH_X.astype(dtype)
    feeds = {"a": x, "b": x, "c": x, "t": np.zeros((len(x), 3), dtype)}
    engine = make_engine(graph, device=engine_name, dtype=getattr(np, dtype),
                         input_grads=("a", "b", "c"))
    _, grads, outputs = engine.gradients(feeds)

    inputs = {name: torch.tensor(x, requires_grad=True) for name in "abc"}
    y = torch.cat([F.silu(inputs["a"]), F.gelu(inputs["b"]),
                   F.gelu(inputs["c"], approximate="tanh")], dim=1)
    (0.5 * (y ** 2).sum() / len(x)).backward()   # squared_error against t = 0
    rtol, atol = TORCH_TOLERANCE[dtype]
    np.testing.assert_allclose(outputs["y"], y.detach().numpy(), rtol=rtol, atol=atol)
    for name, value in inputs.items():
        assert np.isfinite(grads[name]).all(), name
        np.testing.assert_allclose(grads[name], value.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


# ---- training steps, once for every compiled engine --------------------------------------------

MODEL = """
input x: [6]
input y: int32[]
h = x -> dense(%(h)d) -> relu -> dense(%(h)d) -> tanh
h2 = h -> dense(%(h)d) -> sigmoid
output z = (h2 + h, h) -> concat -> dense(3)
train {
  loss cross_entropy(z, y) + 0.5 * squared_error(h2, y)
  optimizer %(opt)s
  regularize %(reg)s
  %(extra)s
}
"""


class Sizes:
    """A compiled engine's training comparison: batch, steps, hidden units, and the tolerance
    (rtol, atol) of the parameters after the steps.

    The CPU takes four steps and allows the parameters 1e-4: RMSprop's first steps move every
    weight by about lr·10 whatever its gradient's size, so a tiny gradient's rounding (which
    differs between BLAS kernels: AMD's and Intel's builds of OpenBLAS differ by 6e-5 here after
    four steps) shows.  CUDA's steps (two under the simulator) meet 2e-5."""

    def __init__(self, engine_name, cuda_sizes):
        if engine_name == "cuda":
            self.batch, self.steps, self.hidden = cuda_sizes.batch, cuda_sizes.steps, cuda_sizes.hidden
            self.params = (2e-5, 2e-6)
        else:
            self.batch, self.steps, self.hidden = 16, 4, 8
            self.params = (1e-4, 1e-5)


def _mlp(sizes, opt="sgd", reg="l2(0.0)", extra=""):
    return netlang.compile(MODEL % {"h": sizes.hidden, "opt": opt, "reg": reg, "extra": extra})


def _mlp_batch(seed, n):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, 3, n)}


def _pair(engine_name, graph, seed, **options):
    """The reference engine and `engine_name`'s, from the same seed."""
    engine = make_engine(graph, seed=seed, device=engine_name, **options)
    assert engine.name == engine_name
    return make_engine(graph, seed=seed, device="reference", **options), engine


def _same_params(actual, expected, rtol, atol):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("engine_name", engines("cpu", "cuda"))
# Two of SGD's four (3-5 s of compiling each) are slow: the default run's nesterov case has
# momentum, weight decay, a penalty and clipping, its plain case the update inside the products.
@pytest.mark.parametrize("optimizer,regularizer,extra", [
    pytest.param("sgd(lr = 0.1)", "l1(1e-3)", "", marks=pytest.mark.slow),
    # No penalty or clipping: the weight gradients' products perform the update themselves.
    ("sgd(lr = 0.1)", "l2(0.0)", ""),
    pytest.param("sgd(lr = 0.1, momentum = 0.9, dampening = 0.1)", "l2(0.0)", "",
                 marks=pytest.mark.slow),
    ("sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 1e-3)", "l2(1e-3)",
     "clip_norm 0.5"),
    ("adam(lr = 0.01)", "elastic_net(l1 = 1e-4, l2 = 1e-3)", ""),
    ("adamw(lr = 0.01)", "l2(0.0)", "clip_norm 1.0"),
    ("adagrad(lr = 0.1)", "l2(1e-4)", ""),
    ("rmsprop(lr = 0.001)", "l2(1e-4)", ""),
])
def test_training_steps_match_reference(engine_name, optimizer, regularizer, extra, cuda_sizes):
    sizes = Sizes(engine_name, cuda_sizes)
    model = _mlp(sizes, optimizer, regularizer, extra)
    reference, engine = _pair(engine_name, model.graph, 4)
    _same_params(engine.params, reference.params, 0, 0)   # the same initial values
    for step in range(sizes.steps):
        feeds = _mlp_batch(step, sizes.batch)
        loss_ref, out_ref = reference.train_step(feeds, 0.05)
        loss, out = engine.train_step(feeds, 0.05)
        assert loss == pytest.approx(loss_ref, rel=1e-5)
        np.testing.assert_allclose(out["z"], out_ref["z"], rtol=1e-4, atol=1e-5)
    _same_params(engine.params, reference.params, *sizes.params)
    for key in reference.optimizer.state:   # read back from the device on CUDA
        np.testing.assert_allclose(engine.optimizer.state[key], reference.optimizer.state[key],
                                   rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("engine_name", engines("cpu", "cuda"))
def test_gradients_forward_and_loss_of_a_model_match_reference(engine_name, cuda_sizes):
    model = _mlp(Sizes(engine_name, cuda_sizes))
    reference, engine = _pair(engine_name, model.graph, 1)
    feeds = _mlp_batch(7, 7)   # an odd batch size, unlike the steps': buffers are per batch size
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss, grads, _ = engine.gradients(feeds)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    _same_params(grads, grads_ref, 1e-4, 1e-6)
    np.testing.assert_allclose(engine.forward({"x": feeds["x"]})["z"],
                               reference.forward({"x": feeds["x"]})["z"], rtol=1e-5, atol=1e-6)
    assert engine.loss(feeds) == pytest.approx(reference.loss(feeds), rel=1e-5)


@pytest.mark.parametrize("engine_name", engines("cpu", "cuda"))
def test_dropout_masks_and_tied_weights_match_reference(engine_name):
    # Each step draws new masks from the engine's key stream: the reference's masks.
    model = netlang.compile("""
        input image: [4, 4, 1]
        code = image -> flatten -> dense(6) as encoder -> sigmoid -> dropout(0.5)
        output recon = code -> dense(16, tie = encoder) -> sigmoid -> reshape((4, 4, 1))
        train { loss binary_cross_entropy(recon, image)  optimizer sgd(lr = 0.5, momentum = 0.5) }
    """)
    reference, engine = _pair(engine_name, model.graph, 2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        feeds = {"image": rng.random((8, 4, 4, 1), dtype=np.float32)}
        loss_ref, _ = reference.train_step(feeds, 0.5)
        loss, _ = engine.train_step(feeds, 0.5)
        assert loss == pytest.approx(loss_ref, rel=1e-5)
    _same_params(engine.params, reference.params, 2e-5, 2e-6)
