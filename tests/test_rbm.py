"""Restricted Boltzmann machines and deep belief nets (netlang/ops/rbm.py).

Held here: one CD-1 step against the textbook update ΔW = ε(⟨v h⟩_data − ⟨v h⟩_model) with the
chain's own draws, on the reference and CPU engines; persistent chains that carry over from one
step to the next and through a checkpoint; the Gaussian visible units' gradient against central
differences with the sample held fixed (test_gradients.py checks the binary ones through the
registry); the compiled loop nests against the NumPy reference, and the CPU engine's steps
against the reference's in float32 and float64; a training step that takes each matrix product
once; a tiny RBM whose reconstruction error falls; the deep belief net's phases on tiny
shapes, each stage moving only its RBM; and the errors a user meets.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import straight_and_resumed

import netlang
from netlang.errors import NetlangError
from netlang.ops import rbm as rbm_ops
from netlang.ops.norm import draw_dropout_key
from netlang.ops.norm_loops import uniform_draw
from netlang.ops.rbm_loops import chain_index
from netlang.pipeline import training_program
from netlang.train.loop import train

RBM_SOURCE = """input v: [{visible}]
gap = v -> rbm({hidden}, k = {k}, persistent = {persistent}, chains = {chains}) as r
output gap
train {{
  loss gap
  optimizer sgd(lr = {lr})
  batch_size {batch}
  epochs {epochs}
}}
"""


def rbm_model(visible=6, hidden=4, k=1, persistent="false", chains=3, lr=0.5, batch=5,
              epochs=1, device="reference", dtype="float64"):
    source = RBM_SOURCE.format(visible=visible, hidden=hidden, k=k, persistent=persistent,
                               chains=chains, lr=lr, batch=batch, epochs=epochs)
    return netlang.compile(source, path="rbm.net", dtype=dtype).to(device)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def binary_data(n, visible, seed=0):
    return (np.random.default_rng(seed).random((n, visible)) < 0.4).astype(np.float64)


def textbook_gibbs(v, weight, c, b, key):
    """One Gibbs step written from the definition: h ~ p(h|v), then v ~ p(v|h), with the
    uniform draws the op documents (block 0 for h, block 1 for v; draw index = row·width +
    unit within a block)."""
    rows, visible = v.shape
    hidden = weight.shape[0]
    with np.errstate(over="ignore"):   # the hash wraps around in uint64 by design
        return _textbook_gibbs(v, weight, c, b, key, rows, hidden, visible)


def _textbook_gibbs(v, weight, c, b, key, rows, hidden, visible):
    h = np.zeros((rows, hidden))
    for r in range(rows):
        for j in range(hidden):
            u = uniform_draw(key, np.uint64(chain_index(0, rows, hidden, visible) + r * hidden + j))
            h[r, j] = float(u < sigmoid(v[r] @ weight[j] + c[j]))
    model = np.zeros_like(v)
    for r in range(rows):
        for i in range(visible):
            u = uniform_draw(key, np.uint64(chain_index(1, rows, hidden, visible)
                                            + r * visible + i))
            model[r, i] = float(u < sigmoid(h[r] @ weight[:, i] + b[i]))
    return model


def randomise(model, seed=3):
    """Parameters away from the defaults' zeros and tiny weights, so every term counts."""
    rng = np.random.default_rng(seed)
    params = model.parameters()
    for name, value in params.items():
        value[...] = rng.normal(0.0, 0.5, value.shape)
    return params


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_cd1_step_is_the_textbook_update(device):
    model = rbm_model(device=device)
    v0 = binary_data(5, 6)
    params = randomise(model)
    weight, c, b = (params[f"r.{n}"].copy() for n in ("weight", "bias", "visible_bias"))
    # The step's only draw is the chain's key: take it from a copy of the engine's generator.
    key = draw_dropout_key(copy.deepcopy(model.engine.rng))[0]
    model.train_step({"v": v0})
    vk = textbook_gibbs(v0, weight, c, b, key)
    assert not np.array_equal(vk, v0)   # the chain moved: the negative phase is not the data
    h0, hk = sigmoid(v0 @ weight.T + c), sigmoid(vk @ weight.T + c)
    lr, n = 0.5, len(v0)
    expected = {"weight": weight + lr * (h0.T @ v0 - hk.T @ vk) / n,
                "bias": c + lr * (h0 - hk).mean(axis=0),
                "visible_bias": b + lr * (v0 - vk).mean(axis=0)}
    after = model.parameters()
    for name, value in expected.items():
        np.testing.assert_allclose(after[f"r.{name}"], value, rtol=1e-12, atol=1e-12,
                                   err_msg=name)


def test_persistent_chains_carry_over_between_steps():
    model = rbm_model(persistent="true", chains=3)
    params = randomise(model)
    model.buffers()["r.chain"][...] = binary_data(3, 6, seed=5)
    data = binary_data(5, 6, seed=1)
    for _ in range(3):
        weight, c, b = (params[f"r.{n}"].copy() for n in ("weight", "bias", "visible_bias"))
        start = model.buffers()["r.chain"].copy()
        key = draw_dropout_key(copy.deepcopy(model.engine.rng))[0]
        model.train_step({"v": data})
        # The chains went on from where the last step left them, not from the data.
        np.testing.assert_array_equal(model.buffers()["r.chain"],
                                      textbook_gibbs(start, weight, c, b, key))
        params = model.parameters()


def test_persistent_chains_survive_a_checkpoint(tmp_path):
    model = rbm_model(persistent="true", chains=4, batch=4, epochs=2, device="cpu",
                      dtype="float32")
    data = {"v": binary_data(12, 6, seed=2).astype(np.float32)}
    full, resumed = straight_and_resumed(model, tmp_path, 4,   # in the second epoch
                                         x=data, device="cpu", evaluate_test=False)
    assert "r.chain" in full.params
    assert np.any(full.params["r.chain"] != 0)
    for name, value in full.params.items():
        assert np.array_equal(value, resumed.params[name]), name


def gap_gradients(g, x, model, weight, c, b, attrs):
    """∂(Σₑ gₑ·gapₑ)/∂(x, W, c, b) as a training step composes them: the gap's own terms
    (rbm_gap_grad) and, through the hidden inputs x·Wᵀ + c and ṽ·Wᵀ + c, the dense products'
    chain rule."""
    pre_x, pre_m = rbm_ops.hidden_inputs(x, weight, c), rbm_ops.hidden_inputs(model, weight, c)

    def part(name):
        return rbm_ops.gap_gradient_reference(name, g, x, model, b, pre_x, pre_m, attrs)

    d_data, d_model = part("data_hidden"), part("model_hidden")
    return {"input": part("input") + d_data @ weight,
            "weight": d_data.T @ x + d_model.T @ model,
            "bias": d_data.sum(axis=0) + d_model.sum(axis=0),
            "visible_bias": part("visible_bias")}


@pytest.mark.parametrize("persistent", [False, True])
def test_gaussian_visible_gradient_with_the_sample_fixed(persistent):
    rng = np.random.default_rng(7)
    attrs = {"visible": "gaussian", "persistent": persistent}
    x, model = rng.normal(size=(4, 5)), rng.normal(size=(3 if persistent else 4, 5))
    weight, c, b = rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=5)
    g = rng.normal(size=4)

    def objective(x_, w_, c_, b_):
        return float(g @ rbm_ops.gap(x_, model, w_, c_, b_, attrs))

    arrays = {"input": x, "weight": weight, "bias": c, "visible_bias": b}
    analytic = gap_gradients(g, x, model, weight, c, b, attrs)
    for part, array in arrays.items():
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            old = array[index]
            array[index] = old + 1e-6
            plus = objective(x, weight, c, b)
            array[index] = old - 1e-6
            minus = objective(x, weight, c, b)
            array[index] = old
            numeric[index] = (plus - minus) / 2e-6
        np.testing.assert_allclose(analytic[part], numeric, rtol=1e-6, atol=1e-8, err_msg=part)


# float32's compilations are slow (2 s each): the default run checks the loops in float64.
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("persistent", [False, True])
def test_compiled_loops_match_the_reference(gaussian, persistent, dtype):
    from netlang.runtime import rbm as compiled  # numba is imported by the runtime alone
    rng = np.random.default_rng(11)
    attrs = {"visible": "gaussian" if gaussian else "binary", "persistent": persistent}
    x = rng.random((4, 7)).astype(dtype)
    weight, c, b = (rng.normal(size=shape).astype(dtype) for shape in ((5, 7), (5,), (7,)))
    start = rng.random((3, 7)).astype(dtype) if persistent else x
    key, rows = np.uint64(12345), len(start)
    # Two Gibbs steps as the CPU kernel runs them: its products (here NumPy's), then the loops.
    model, h = start.copy(), np.empty((rows, 5), dtype)
    for s in range(2):
        compiled.draw_hidden(model @ weight.T, c, key, chain_index(2 * s, rows, 5, 7), h)
        compiled.draw_visible(h @ weight, b, key, chain_index(2 * s + 1, rows, 5, 7), gaussian,
                              model)
    np.testing.assert_array_equal(
        model, rbm_ops.gibbs_chain_reference(start, weight, c, b, 2, key, gaussian))
    pre_x, pre_m = rbm_ops.hidden_inputs(x, weight, c), rbm_ops.hidden_inputs(model, weight, c)
    gap = np.empty(4, dtype)
    compiled.free_energy_gap(x, model, b, pre_x, pre_m, gaussian, persistent, gap)
    # Sums in float64, in another order than NumPy's: equal up to that, then one rounding.
    tolerance = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(gap, rbm_ops.gap_from_inputs(x, model, b, pre_x, pre_m, attrs),
                               rtol=tolerance)
    g = rng.normal(size=4).astype(dtype)
    outs = {"input": np.empty_like(x), "visible_bias": np.empty_like(b),
            "data_hidden": np.empty_like(pre_x), "model_hidden": np.empty_like(pre_m)}
    compiled.gradient_input(g, x, b, gaussian, outs["input"])
    compiled.gradient_visible_bias(g, x, model, b, gaussian, persistent, outs["visible_bias"])
    compiled.gradient_data_hidden(g, pre_x, outs["data_hidden"])
    compiled.gradient_model_hidden(g, pre_m, persistent, outs["model_hidden"])
    for part, out in outs.items():
        expected = rbm_ops.gap_gradient_reference(part, g, x, model, b, pre_x, pre_m, attrs)
        np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance,
                                   err_msg=part)


# The default run takes persistent CD-2 on binary units in float64 and Gaussian visible units
# in float32; the other four (2-5 s of compiling each) are slow.
_SLOW_RBM = pytest.mark.slow


@pytest.mark.parametrize("dtype,tolerance,k,persistent,visible", [
    pytest.param("float64", 1e-12, 1, "false", "binary", marks=_SLOW_RBM),
    pytest.param("float32", 1e-5, 1, "false", "binary", marks=_SLOW_RBM),
    ("float64", 1e-12, 2, "true", "binary"),
    pytest.param("float32", 1e-5, 2, "true", "binary", marks=_SLOW_RBM),
    pytest.param("float64", 1e-12, 2, "false", "gaussian", marks=_SLOW_RBM),
    ("float32", 1e-5, 2, "false", "gaussian"),
])
def test_cpu_engine_trains_as_the_reference(dtype, tolerance, k, persistent, visible):
    """Three steps on each engine from the same weights: the CPU's BLAS products in the model's
    dtype and the reference's NumPy ones draw the same samples and reach the same weights."""
    source = RBM_SOURCE.format(visible=6, hidden=4, k=k, persistent=persistent, chains=3,
                               lr=0.5, batch=5, epochs=1)
    source = source.replace("chains = 3)", f"chains = 3, visible = {visible})")
    data = {"v": binary_data(5, 6).astype(dtype)}
    after = {}
    for device in ("reference", "cpu"):
        model = netlang.compile(source, path="rbm.net", dtype=dtype).to(device)
        randomise(model)
        for _ in range(3):
            model.train_step(data)
        after[device] = {**model.parameters(), **model.buffers()}
    for name, value in after["reference"].items():
        assert after["cpu"][name].dtype == np.dtype(dtype), name
        np.testing.assert_allclose(after["cpu"][name], value, rtol=tolerance, atol=tolerance,
                                   err_msg=name)


STACKED_RBM = """input v: [6]
h = v -> dense(5) as below -> sigmoid
gap = h -> rbm(4) as r
output gap
train { loss gap }
"""


@pytest.mark.parametrize("source,upstream_products", [
    (RBM_SOURCE.format(visible=6, hidden=4, k=1, persistent="false", chains=3, lr=0.5, batch=5,
                       epochs=1), 0),
    (STACKED_RBM, 1),   # `below`'s forward product gives the RBM its data
], ids=["rbm", "stacked"])
def test_a_training_step_takes_each_product_once(source, upstream_products):
    # CD-1 that trains the RBM alone: the chain's two products, the hidden inputs of the data
    # and of the sample (dense nodes that the gap and its gradient share) and the weight's
    # gradient through each; no gradient with respect to the RBM's input.
    graph = netlang.compile(source, path="rbm.net").graph
    training = training_program(graph, [n for n in graph.parameters() if n.startswith("r.")])
    step = training.graph
    ops = [step.op(n) for n in training.order]
    assert ops.count("rbm_chain") == 1 and ops.count("rbm_gap") == 1
    assert ops.count("dense") == 2 + upstream_products, ops
    assert ops.count("dense_grad_weight") == 2, ops
    assert "dense_grad_input" not in ops
    parts = {step.nodes[n]["attrs"]["part"] for n in training.order
             if step.op(n) == "rbm_gap_grad"}
    assert parts == {"visible_bias", "data_hidden", "model_hidden"}


def reconstruction_error(params, v):
    """Mean squared error of the mean-field reconstruction σ(σ(v Wᵀ + c) W + b)."""
    weight, c, b = (params[f"r.{n}"].astype(np.float64) for n in ("weight", "bias",
                                                                   "visible_bias"))
    return float(np.square(v - sigmoid(sigmoid(v @ weight.T + c) @ weight + b)).mean())


@pytest.mark.parametrize("persistent", ["false", "true"])
def test_a_tiny_rbm_learns_to_reconstruct(persistent):
    # Three 12-pixel prototypes, each pixel flipped with probability 0.05.
    rng = np.random.default_rng(0)
    prototypes = (rng.random((3, 12)) < 0.5).astype(np.float32)
    data = prototypes[rng.integers(0, 3, 300)]
    data = np.abs(data - (rng.random(data.shape) < 0.05)).astype(np.float32)
    model = rbm_model(visible=12, hidden=6, persistent=persistent, chains=20, lr=0.5, batch=20,
                      epochs=10, device="cpu", dtype="float32")
    before = reconstruction_error(model.parameters(), data)
    model.fit({"v": data}, verbose=0)
    after = reconstruction_error(model.parameters(), data)
    # 0.25 at the start; about 0.065 after these 150 steps, CD-1 and persistent alike.
    assert after < 0.4 * before, (before, after)


DBN = """
input x: [8]
input label: int32[]
gap1 = x -> rbm(6) as rbm1
h1 = x -> dense(6, share = rbm1) as layer1 -> sigmoid
gap2 = h1 -> rbm(5, persistent = true, chains = 4) as rbm2
h2 = h1 -> dense(5, share = rbm2) as layer2 -> sigmoid
output logits = h2 -> dense(3) as head
output gap1
output gap2

train {
  batch_size 4
  optimizer sgd(lr = 0.1)
  phases sequence(rbm1_phase, rbm2_phase, finetune)
}

train rbm1_phase {
  loss gap1
  update rbm1
  epochs 1
}

train rbm2_phase {
  loss gap2
  update rbm2
  epochs 1
}

train finetune {
  loss cross_entropy(logits, label)
  update rbm1, rbm2, head
  epochs 2
}
"""


def changed(before, after):
    return {name.split(".")[0] for name in before if not np.array_equal(before[name], after[name])}


def test_dbn_phases_pretrain_each_rbm_then_fine_tune():
    model = netlang.compile(DBN, path="dbn.net")
    rng = np.random.default_rng(4)
    data = {"x": (rng.random((12, 8)) < 0.5).astype(np.float32),
            "label": rng.integers(0, 3, 12).astype(np.int32)}
    seen = []
    history, _, _ = train(model, x=data, device="cpu", evaluate_test=False,
                          on_step=lambda trainer: seen.append(
                              {n: v.copy() for n, v in trainer.engine.params.items()}))
    assert [r["phase"] for r in history.records] == ["rbm1_phase", "rbm2_phase", "finetune",
                                                     "finetune"]
    # Three batches an epoch: steps 1-3 pretrain rbm1, 4-6 rbm2 (its chains too), then both
    # RBMs' shared weights and the head are fine-tuned by backpropagation.
    assert changed(seen[0], seen[2]) == {"rbm1"}
    assert changed(seen[2], seen[5]) == {"rbm2"}
    assert changed(seen[5], seen[-1]) == {"rbm1", "rbm2", "head"}
    # Fine-tuning moves the dense layers' share of each RBM, not the visible biases.
    for name in ("rbm1.visible_bias", "rbm2.visible_bias", "rbm2.chain"):
        assert np.array_equal(seen[5][name], seen[-1][name]), name
    assert all(np.isfinite(r["loss"]) for r in history.records)


@pytest.mark.parametrize("source,message", [
    ("input x: [4]\ng = x -> rbm(3) as r\noutput h = x -> dense(2, share = r)\n",
     "cannot share the weight of `r`"),
    ("input x: [4]\ninput t: int32[2]\ng = x -> rbm(3) as r\n"
     "output h = t -> embedding(3, 4, share = r)\n",
     "cannot share parameters with `r`: it is a `rbm`"),
    ("input x: [2, 2]\noutput g = x -> rbm(3)\n", "`rbm` expects a batch of feature vectors"),
    ("input x: [4]\noutput g = x -> rbm(3, visible = ising)\n", "visible"),
])
def test_errors_point_at_their_cause(source, message):
    with pytest.raises(NetlangError, match=message) as raised:
        netlang.compile(source, path="bad.net")
    assert "bad.net:" in str(raised.value)
