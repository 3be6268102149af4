"""The Numba CPU engine against the NumPy reference engine, step for step."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import netlang
from netlang.interp import needed_nodes
from netlang.ops.registry import all_ops
from netlang.passes.autodiff import differentiate
from netlang.passes.fusion import plan_fusion
from netlang.passes.memory import plan_buffers
from netlang.passes.training import training_graph
from netlang.runtime.cpu import CpuEngine
from netlang.runtime.reference import ReferenceEngine

MODEL = """
input x: [6]
input y: int32[]
h = x -> dense(8) -> relu -> dense(8) -> tanh
h2 = h -> dense(8) -> sigmoid
output z = (h2 + h, h) -> concat -> dense(3)
train {
  loss cross_entropy(z, y) + 0.5 * squared_error(h2, y)
  optimizer %s
  regularize %s
  %s
}
"""


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, 3, n)}


def _assert_same_params(a, b, rtol=2e-5, atol=2e-6):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("optimizer,regularizer,extra", [
    ("sgd(lr = 0.1)", "l1(1e-3)", ""),
    # No penalty or clipping: the weight gradients' products perform the update themselves.
    ("sgd(lr = 0.1)", "l2(0.0)", ""),
    ("sgd(lr = 0.1, momentum = 0.9, dampening = 0.1)", "l2(0.0)", ""),
    ("sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 1e-3)", "l2(1e-3)", "clip_norm 0.5"),
    ("adam(lr = 0.01)", "elastic_net(l1 = 1e-4, l2 = 1e-3)", ""),
    ("adamw(lr = 0.01)", "l2(0.0)", "clip_norm 1.0"),
    ("adagrad(lr = 0.1)", "l2(1e-4)", ""),
    ("rmsprop(lr = 0.001)", "l2(1e-4)", ""),
])
def test_training_steps_match_reference(optimizer, regularizer, extra):
    model = netlang.compile(MODEL % (optimizer, regularizer, extra))
    reference = ReferenceEngine(model.graph, seed=4)
    compiled = CpuEngine(model.graph, seed=4)
    _assert_same_params(reference.params, compiled.params, rtol=0, atol=0)
    for step in range(4):
        feeds = _batch(step)
        loss_ref, out_ref = reference.train_step(feeds, 0.05)
        loss_cpu, out_cpu = compiled.train_step(feeds, 0.05)
        assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
        np.testing.assert_allclose(out_cpu["z"], out_ref["z"], rtol=1e-4, atol=1e-5)
    _assert_same_params(reference.params, compiled.params)
    for key in reference.optimizer.state:
        np.testing.assert_allclose(compiled.optimizer.state[key], reference.optimizer.state[key],
                                   rtol=1e-4, atol=1e-6, err_msg=key)


def test_plain_and_momentum_sgd_update_inside_the_weight_gradient_product(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    for optimizer in ("sgd(lr = 0.1)", "sgd(lr = 0.1, momentum = 0.9)"):
        model = netlang.compile(MODEL % (optimizer, "l2(0.0)", ""))
        CpuEngine(model.graph).train_step(_batch(), 0.1)
    sources = [open(p, encoding="utf-8").read() for p in glob.glob(str(tmp_path / "nl_*.py"))]
    fused = [s.count("gemm32(True, False") for s in sources]
    assert sorted(fused) == [8, 8]  # 4 dense weights, each with a step-1 and a later-step call


def test_gradients_forward_and_loss_match_reference():
    model = netlang.compile(MODEL % ("sgd", "l2(0.0)", ""))
    reference = ReferenceEngine(model.graph, seed=1)
    compiled = CpuEngine(model.graph, seed=1)
    feeds = _batch(7, n=5)  # an odd batch size: buffers are planned per batch size
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss_cpu, grads_cpu, _ = compiled.gradients(feeds)
    assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
    for name in grads_ref:
        np.testing.assert_allclose(grads_cpu[name], grads_ref[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(compiled.forward({"x": feeds["x"]})["z"],
                               reference.forward({"x": feeds["x"]})["z"], rtol=1e-5, atol=1e-6)
    assert compiled.loss(feeds) == pytest.approx(reference.loss(feeds), rel=1e-5)


def test_dropout_masks_and_tied_weights_match_reference():
    model = netlang.compile("""
        input image: [4, 4, 1]
        code = image -> flatten -> dense(6) as encoder -> sigmoid -> dropout(0.5)
        output recon = code -> dense(16, tie = encoder) -> sigmoid -> reshape((4, 4, 1))
        train { loss binary_cross_entropy(recon, image)  optimizer sgd(lr = 0.5, momentum = 0.5) }
    """)
    reference = ReferenceEngine(model.graph, seed=2)
    compiled = CpuEngine(model.graph, seed=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        feeds = {"image": rng.random((8, 4, 4, 1), dtype=np.float32)}
        loss_ref, _ = reference.train_step(feeds, 0.5)
        loss_cpu, _ = compiled.train_step(feeds, 0.5)
        assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
    _assert_same_params(reference.params, compiled.params)


def test_dense_bias_and_activation_are_fused_into_the_product():
    model = netlang.compile("""
        input x: [5]
        input y: int32[]
        output z = x -> dense(4) -> relu -> dense(3)
        train { loss cross_entropy(z, y) }
    """)
    graph = training_graph(model.graph)
    grads = differentiate(graph, list(graph.parameters().values()))
    keep = {grads.objective} | {g for g in grads.of.values()}
    order = needed_nodes(graph, keep)
    fusion = plan_fusion(graph, order, keep)
    relu = next(n for n in order if graph.op(n) == "relu")
    assert graph.op(fusion.host_of[relu]) == "dense"
    relu_grad = next(n for n in order if graph.op(n) == "relu_grad")
    assert graph.op(fusion.host_of[relu_grad]) == "dense_grad_input"
    ce_grad = next(n for n in order if graph.op(n) == "cross_entropy_grad")
    assert graph.op(fusion.paired[ce_grad]) == "cross_entropy"


def test_memory_plan_never_shares_a_buffer_between_live_values():
    model = netlang.compile(MODEL % ("sgd", "l2(0.0)", ""))
    graph = training_graph(model.graph)
    grads = differentiate(graph, list(graph.parameters().values()))
    keep = {grads.objective} | {g for g in grads.of.values()}
    order = needed_nodes(graph, keep)
    position = {n: i for i, n in enumerate(order)}
    fusion = plan_fusion(graph, order, keep)
    plan = plan_buffers(graph, order, fusion, keep)
    live = {}
    for node in order:
        root = plan.root_of.get(node)
        if root is None:
            continue
        start, end = live.get(root, (position[node], position[node]))
        end = max(end, position[node], len(order) if node in keep else 0)
        for consumer in graph.successors(node):
            if consumer in position:
                end = max(end, position[consumer])
        live[root] = (min(start, position[node]), end)
    by_slot = {}
    for root, interval in live.items():
        by_slot.setdefault(plan.slot_of[root], []).append(interval)
    for intervals in by_slot.values():
        intervals.sort()
        for (s1, e1), (s2, e2) in zip(intervals, intervals[1:]):
            assert s2 > e1, "two values live at once in one buffer"
    assert len(plan.slots) < len(live), "no buffer was reused"


def test_user_names_reach_generated_code_only_in_comments(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    model = netlang.compile("""
        input zq_input: [3]
        input zq_label: int32[]
        output zq_out = zq_input -> dense(2) as zq_layer
        train { loss cross_entropy(zq_out, zq_label) }
    """)
    engine = CpuEngine(model.graph)
    engine.train_step({"zq_input": np.ones((2, 3), np.float32), "zq_label": np.array([0, 1])}, 0.1)
    sources = glob.glob(str(tmp_path / "nl_*.py"))
    assert sources
    for path in sources:
        for line in open(path, encoding="utf-8"):
            code = line.split("#", 1)[0]
            assert "zq_" not in code


def test_a_second_engine_reuses_the_compiled_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    model = netlang.compile(MODEL % ("adam", "l2(0.0)", ""))
    CpuEngine(model.graph).train_step(_batch(), 0.01)
    files = sorted(os.listdir(tmp_path))
    index_files = glob.glob(str(tmp_path / "**" / "*.nbi"), recursive=True)
    assert index_files, "Numba wrote no disk cache"
    CpuEngine(model.graph).train_step(_batch(), 0.01)
    assert sorted(os.listdir(tmp_path)) == files


# Ops whose CPU kernels arrive with later issues; the reference engine runs them meanwhile.
PENDING_CPU = {
    "conv2d", "conv_transpose2d", "maxpool", "avgpool", "global_avgpool", "batchnorm", "lrn",
    "conv2d_grad_input", "conv2d_grad_weight", "conv_transpose2d_grad_input", "maxpool_grad",
    "avgpool_grad", "global_avgpool_grad", "batchnorm_grad_input", "batchnorm_grad_weight",
    "lrn_grad",
    "rnn", "lstm", "gru", "permute", "maxout", "maxout_grad", "hinge", "hinge_grad",
}


def test_every_trainable_op_has_a_cpu_kernel_or_is_listed_pending():
    missing = []
    for name, op in all_ops().items():
        if name in ("input", "param", "dropout_mask"):
            continue
        has_kernel = op.cpu_view or op.cpu_expr is not None or op.cpu_kernel is not None
        if not has_kernel and name not in PENDING_CPU:
            missing.append(name)
        if has_kernel and name in PENDING_CPU:
            missing.append(f"{name} (has a kernel: remove it from PENDING_CPU)")
    assert not missing, missing


def test_models_with_pending_ops_fall_back_to_the_reference_engine():
    from netlang.runtime import make_engine
    model = netlang.compile("""
        input x: [6]
        input y: int32[]
        output z = x -> dense(6) -> maxout(2)
        train { loss hinge(z, y) }
    """)
    assert make_engine(model.graph).name == "reference"
    plain = netlang.compile(MODEL % ("sgd", "l2(0.0)", ""))
    assert make_engine(plain.graph).name == "cpu"
    # A CNN trains (its ops have reference forward and backward rules) but has no CPU kernels yet.
    cnn = netlang.compile(os.path.join(os.path.dirname(__file__), "..", "examples", "lenet5.net"))
    assert make_engine(cnn.graph).name == "reference"


def test_soft_cross_entropy_targets_match_reference():
    model = netlang.compile("""
        input x: [4]
        input target: [3]
        output z = x -> dense(3)
        train { loss cross_entropy(z, target, label_smoothing = 0.1) }
    """)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((6, 4)).astype(np.float32),
             "target": rng.random((6, 3)).astype(np.float32)}  # rows need not sum to one
    _, grads_ref, _ = ReferenceEngine(model.graph, seed=0).gradients(feeds)
    _, grads_cpu, _ = CpuEngine(model.graph, seed=0).gradients(feeds)
    for name in grads_ref:
        np.testing.assert_allclose(grads_cpu[name], grads_ref[name], rtol=1e-4, atol=1e-6)
