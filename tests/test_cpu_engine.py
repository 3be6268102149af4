"""The Numba CPU engine's own: fusion, buffers, the kernel cache, worker threads, the refusal of
ops it has no kernel for, and whole convolutional models against the reference engine.

Each op's kernels, forward and backward, and the training steps of every optimiser are held
against the reference engine by tests/test_conformance.py.
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import pytest
from conftest import random_batch

import netlang
from netlang.errors import UsageError
from netlang.interp import needed_nodes
from netlang.passes.autodiff import differentiate
from netlang.passes.fusion import plan_fusion
from netlang.passes.memory import plan_buffers
from netlang.passes.training import training_graph
from netlang.pipeline import training_program
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


def test_plain_and_momentum_sgd_update_inside_the_weight_gradient_product(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    for optimizer in ("sgd(lr = 0.1)", "sgd(lr = 0.1, momentum = 0.9)"):
        model = netlang.compile(MODEL % (optimizer, "l2(0.0)", ""))
        CpuEngine(model.graph).train_step(_batch(), 0.1)
    sources = [open(p, encoding="utf-8").read() for p in glob.glob(str(tmp_path / "nl_*.py"))]
    fused = [s.count("gemm32(True, False") for s in sources if "def train_step(" in s]
    assert sorted(fused) == [8, 8]  # 4 dense weights, each with a step-1 and a later-step call


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
    # Numba's index sits beside the generated module, or under NUMBA_CACHE_DIR when that is set.
    from numba.core import config as numba_config
    modules = [name[:-3] for name in files if name.endswith(".py")]
    roots = [str(tmp_path)] + ([numba_config.CACHE_DIR] if numba_config.CACHE_DIR else [])
    index_files = [path for root in roots for module in modules
                   for path in glob.glob(os.path.join(root, "**", f"{module}.*.nbi"), recursive=True)]
    assert index_files, "Numba wrote no disk cache"
    CpuEngine(model.graph).train_step(_batch(), 0.01)
    assert sorted(os.listdir(tmp_path)) == files


LRN_MODEL = """
input x: [3, 3, 4]
input y: int32[]
output z = x -> conv2d(4, 1) -> lrn(3) as norm -> flatten -> dense(2)
train { loss cross_entropy(z, y) }
"""


def test_an_op_without_a_cpu_kernel_is_refused_in_one_line_never_run_elsewhere(monkeypatch):
    from netlang.ops import get_op
    from netlang.runtime import make_engine
    model = netlang.compile(LRN_MODEL)
    assert make_engine(model.graph).name == "cpu"
    # Convolutions, pooling and batch norm have CPU kernels.
    cnn = netlang.compile(os.path.join(os.path.dirname(__file__), "..", "examples", "lenet5.net"))
    assert make_engine(cnn.graph).name == "cpu"
    monkeypatch.setattr(get_op("lrn"), "cpu_kernel", None)   # as an op added without one
    with pytest.raises(UsageError) as info:
        make_engine(model.graph)
    message = str(info.value)
    assert "`lrn` (layer `norm`) has no CPU kernel yet; engines that run it: reference" in message
    assert message.endswith('use `device="reference"`') and "\n" not in message
    # The reference engine only when asked for.
    assert make_engine(model.graph, device="reference").name == "reference"
    assert netlang.compile(LRN_MODEL).to("reference").engine_name == "reference"


def test_a_backward_op_without_a_cpu_kernel_is_refused_when_training_starts(monkeypatch):
    from netlang.ops import get_op
    model = netlang.compile(LRN_MODEL)
    monkeypatch.setattr(get_op("lrn_grad"), "cpu_kernel", None)
    engine = CpuEngine(model.graph, seed=0)
    feeds = random_batch(model.graph, 2, 0)
    assert engine.forward(feeds)["z"].shape == (2, 2)   # the forward pass has its kernels
    with pytest.raises(UsageError, match=r"`lrn_grad` \(layer `norm`\) has no CPU kernel yet; "
                                         r"engines that run it: reference"):
        engine.train_step(feeds, 0.1)


@pytest.mark.parametrize("command", [["bench", "--steps", "1"], ["predict", "x.npy"],
                                     ["eval", "--data", "xor"]])
def test_the_commands_refuse_a_layer_without_a_kernel_in_one_line(tmp_path, capsys, command,
                                                                  monkeypatch):
    from netlang.cli import main
    from netlang.ops import get_op
    from netlang.ops.init import initialize
    from netlang.weights import save_weights
    # Every layer has a CPU kernel: take the LSTM's away, as a layer that has none yet.
    monkeypatch.setattr(get_op("lstm"), "cpu_kernel", None)
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "char_lstm.net")
    model = netlang.compile(path)
    weights = tmp_path / "weights.safetensors"
    save_weights(weights, initialize(model.graph, 0, np.float32), {},
                 source_hash=model.source_hash)
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.int64))
    verb, *flags = command
    flags = [str(tmp_path / flag) if flag.endswith(".npy") else flag for flag in flags]
    extra = [] if verb == "bench" else ["--weights", str(weights)]
    code = main([verb, path, *flags, *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("`lstm` (layer `lstm1`) has no CPU kernel yet; engines that run it: reference, "
            "cuda — use --device reference") in err


MODES = """
input x: [6]
input y: int32[]
output z = x -> dense(8) -> batchnorm -> relu -> dropout(0.5) -> dense(8) -> dropout(0.25)
    -> dense(3)
train { loss cross_entropy(z, y) }
"""


def test_forward_and_gradients_follow_the_mode_as_the_reference_does():
    model = netlang.compile(MODES)
    reference, compiled = ReferenceEngine(model.graph, seed=5), CpuEngine(model.graph, seed=5)
    compiled.params["batchnorm_1.running_var"][...] = 2.0   # running statistics not the batch's
    reference.params["batchnorm_1.running_var"][...] = 2.0
    feeds = _batch(3)
    x = {"x": feeds["x"]}
    before = {name: value.copy() for name, value in compiled.params.items()}
    for _ in range(2):   # fresh masks at each call, drawn alike from the engines' generators
        in_training = compiled.forward(x, "train")["z"]
        np.testing.assert_allclose(in_training, reference.forward(x, "train")["z"],
                                   rtol=1e-5, atol=1e-6)
    evaluation = compiled.forward(x)["z"]
    np.testing.assert_allclose(evaluation, reference.forward(x)["z"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(in_training, evaluation, atol=1e-3)
    _assert_same_params(before, compiled.params, rtol=0, atol=0)   # a forward changes nothing
    for mode in ("eval", "train"):
        loss_ref, grads_ref, _ = reference.gradients(feeds, mode=mode)
        loss_cpu, grads_cpu, _ = compiled.gradients(feeds, mode=mode)
        assert loss_cpu == pytest.approx(loss_ref, rel=1e-5), mode
        _assert_same_params(grads_ref, grads_cpu, rtol=1e-4, atol=1e-5)
    for engine in (reference, compiled):
        with pytest.raises(UsageError, match="unknown mode `bogus`"):
            engine.forward(x, "bogus")
        with pytest.raises(UsageError, match="unknown mode `bogus`"):
            engine.gradients(feeds, mode="bogus")
    # Through the API: the model's own engine, the CPU's, in training mode.
    api_model = netlang.compile(MODES)
    assert api_model.engine_name == "cpu"
    assert api_model.forward(x, mode="train")["z"].shape == (16, 3)
    with pytest.raises(UsageError, match="unknown mode `bogus`"):
        api_model.forward(x, mode="bogus")


# ---- convolutional networks ---------------------------------------------------------------------
# Each distinct model compiles its programs once (a few seconds each); the models are tiny and
# few, and each covers several kernels.

LENET_LIKE = """
input image: [12, 12, 1]
input label: int32[]
output logits = image
  -> conv2d(4, 5, padding = 2) as conv1 -> relu -> maxpool(2)
  -> conv2d(6, 3) as conv2 -> relu -> maxpool(2)
  -> flatten -> dense(3) as fc
train { loss cross_entropy(logits, label)  optimizer sgd(lr = 0.05, momentum = 0.9) }
"""

RESIDUAL_BN = """
input image: [6, 6, 3]
input label: int32[]
block conv_bn(filters) {
  input x
  output out = x -> conv2d(filters, 3, padding = 1, bias = false) as conv
    -> batchnorm(momentum = 0.2) as bn
}
stem = image -> conv2d(4, 3, padding = 1, bias = false) as stem_conv -> batchnorm as stem_bn -> relu
y = stem -> conv_bn(4) as b1 -> relu -> conv_bn(4) as b2
h = y + stem -> relu
output logits = h -> conv2d(6, 1, stride = 2, bias = false) as proj -> batchnorm as proj_bn -> relu
  -> global_avgpool -> dense(6) -> batchnorm as fc_bn -> relu -> dense(3) as fc
train { loss cross_entropy(logits, label)  optimizer sgd(lr = 0.05, momentum = 0.9, nesterov = true) }
"""

# dec1's output_padding is within its padding (its input gradient is a conv2d); dec2's exceeds
# it (conv_transpose2d_grad_input); dec3 is dilated.
CONV_AUTOENCODER = """
input image: [8, 8, 2]
code = image
  -> conv2d(4, 3, stride = 2, padding = 1) as enc1 -> relu
  -> conv2d(6, 3, stride = 2, padding = 1) as enc2 -> relu
output recon = code
  -> conv_transpose2d(4, 3, stride = 2, padding = 1, output_padding = 1) as dec1 -> relu
  -> conv_transpose2d(3, 2, stride = 2, output_padding = 1) as dec2 -> relu
  -> conv_transpose2d(2, 3, padding = 2, dilation = 2) as dec3 -> sigmoid
  -> avgpool(2, stride = 1) as crop
train { loss squared_error(recon, image)  optimizer adam(lr = 0.01) }
"""


def _train_both(source, steps=3, n=6, rtol=2e-5, atol=2e-6, **engine_args):
    model = netlang.compile(source)
    reference = ReferenceEngine(model.graph, seed=3, **engine_args)
    compiled = CpuEngine(model.graph, seed=3, **engine_args)
    for step in range(steps):
        feeds = random_batch(model.graph, n, step)
        loss_ref, out_ref = reference.train_step(feeds, 0.05)
        loss_cpu, out_cpu = compiled.train_step(feeds, 0.05)
        assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
        for name in out_ref:
            np.testing.assert_allclose(out_cpu[name], out_ref[name], rtol=1e-4, atol=1e-5)
    _assert_same_params(reference.params, compiled.params, rtol=rtol, atol=atol)
    for key in reference.optimizer.state:
        np.testing.assert_allclose(compiled.optimizer.state[key], reference.optimizer.state[key],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    return model, reference, compiled


def _same_gradients(model, reference, compiled, feeds):
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss_cpu, grads_cpu, _ = compiled.gradients(feeds)
    assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
    assert grads_cpu.keys() == grads_ref.keys()
    for name in grads_ref:
        np.testing.assert_allclose(grads_cpu[name], grads_ref[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def _same_forward(model, reference, compiled, feeds):
    inputs = {name: feeds[name] for name in model.graph.graph["inputs"]
              if model.graph.type_of(model.graph.graph["inputs"][name]).is_float}
    out_ref, out_cpu = reference.forward(inputs), compiled.forward(inputs)
    for name in out_ref:
        np.testing.assert_allclose(out_cpu[name], out_ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow   # 13 s of compiling; the default run's composite_conv_pool conformance case
#                     runs these convolutions, pooling and dense layers against the reference
def test_lenet_like_cnn_matches_reference():
    model, reference, compiled = _train_both(LENET_LIKE)
    feeds = random_batch(model.graph, 5, 9)   # another batch size: buffers are per batch size
    _same_gradients(model, reference, compiled, feeds)
    _same_forward(model, reference, compiled, feeds)


@pytest.mark.slow   # 13 s of compiling on a cold cache; batch norm's conformance case is default
def test_residual_batchnorm_running_statistics_and_eval_mode_match_reference():
    model, reference, compiled = _train_both(RESIDUAL_BN)
    running = [n for n in reference.params if n.endswith(("running_mean", "running_var"))]
    assert len(running) == 10
    for name in running:   # the running statistics moved, and alike
        initial = 0.0 if name.endswith("mean") else 1.0
        assert np.abs(compiled.params[name] - initial).max() > 1e-3, name
    feeds = random_batch(model.graph, 5, 9)
    _same_forward(model, reference, compiled, feeds)   # evaluation: running statistics
    before = {name: compiled.params[name].copy() for name in running}
    _same_gradients(model, reference, compiled, feeds)   # batch statistics, no update
    for name in running:
        np.testing.assert_array_equal(compiled.params[name], before[name])


@pytest.mark.slow   # 8-11 s of compiling; conv_transpose's conformance case is default
def test_conv_autoencoder_with_transposed_convolutions_matches_reference():
    model, reference, compiled = _train_both(CONV_AUTOENCODER, rtol=1e-4, atol=1e-5)
    _same_forward(model, reference, compiled, random_batch(model.graph, 3, 9))
    # Adam's update of each of the ten weights and biases is one function, called ten times
    # (codegen's serial_function): compiled once, not ten loops in the step (or in the
    # step's update piece, where the step is cut into pieces: codegen/pieces.py).
    program = compiled._programs["train"][3].program
    updates = [source for _, source in program.parts if "def part(" in source]
    callers = [program.source] + [source for _, source in program.parts if "def piece(" in source]
    calls = [line for source in callers for line in source.splitlines()
             if line.startswith("    parts")]
    assert (len(updates), len(calls)) == (1, 10)
    # Its 4-d and 1-d parameters take flat views (the next test): one compilation.
    module = next(name for name, source in program.parts if "def part(" in source)
    assert len(sys.modules[module].part.overloads) == 1


def test_every_parameters_update_takes_flat_views_so_one_compilation_serves_all_dimensions():
    # The update function is called with flat views of the parameter, its gradient and its
    # optimiser state that the step makes: its argument types are then the same for a
    # convolution's 4-d weight, a dense layer's 2-d one and a 1-d bias, and Numba compiles it
    # once, not once per number of dimensions.  Only the source is generated here.
    step = CpuEngine(netlang.compile(LENET_LIKE.replace("sgd(lr = 0.05, momentum = 0.9)",
                                                        "adam(lr = 0.01)")).graph,
                     seed=0)._training()[3].program
    updates = [source for _, source in step.parts if "def part(" in source]
    assert len(updates) == 1
    flat = {line.split(" = ")[0].strip() for line in step.source.splitlines()
            if line.rstrip().endswith(", ())")}
    calls = [line.strip() for line in step.source.splitlines() if line.startswith("    parts")]
    assert len(calls) == 6   # conv1, conv2 and fc: a weight and a bias each
    for call in calls:
        arrays = [a.strip() for a in call[call.index("(") + 1:-1].split(",")
                  if a.strip() not in ("t", "lr", "clipf")]
        assert arrays and set(arrays) <= flat, call


# A dense net whose update has each part that the update compiled alone (`apply_update`)
# writes: a penalty on the weights, Adam's state, and (the slow case) the global norm's clip.
UPDATED_APART = """
input x: [5]
input label: int32[]
output logits = x -> dense(7) as hidden -> tanh -> dense(3) as out
train { loss cross_entropy(logits, label)  optimizer adam(lr = 0.01, weight_decay = 0.001) }
"""


@pytest.mark.parametrize("clip", ["", pytest.param("  clip_norm 0.05", marks=pytest.mark.slow)],
                         ids=["unclipped", "clipped"])
def test_the_update_applied_to_gradients_computed_apart_is_the_training_steps(clip):
    # A step that sums gradient shards (netlang/train/shards.py, MPI) computes gradients,
    # then applies the training step's own update to them, compiled alone (`apply_update`,
    # codegen/update.py's render_update): the same parameters after three steps.
    graph = netlang.compile(UPDATED_APART.replace(") }", ")" + clip + " }")).graph
    stepped = CpuEngine(graph, seed=3, dtype=np.float64)
    apart = CpuEngine(graph, seed=3, dtype=np.float64)
    for step in range(3):
        feeds = random_batch(graph, 6, step)
        stepped.train_step(feeds, 0.01)
        _, grads, _ = apart.gradients(feeds)
        apart.apply_update(grads, 0.01)
    _assert_same_params(stepped.params, apart.params, rtol=1e-12, atol=1e-15)


def _training_plan(source):
    model = netlang.compile(source)
    graph = training_graph(model.graph)
    grads = differentiate(graph, list(graph.parameters().values()))
    keep = {grads.objective} | {g for g in grads.of.values()}
    order = needed_nodes(graph, keep)
    fusion = plan_fusion(graph, order, keep)
    return graph, order, keep, fusion


def test_convolution_bias_and_activation_are_fused_and_workspaces_are_planned():
    graph, order, keep, fusion = _training_plan(LENET_LIKE)
    relus = [n for n in order if graph.op(n) == "relu"]
    assert [graph.op(fusion.host_of[n]) for n in relus] == ["conv2d", "conv2d"]
    plan = plan_buffers(graph, order, fusion, keep)
    convs = [n for n in order if graph.op(n).startswith("conv2d")]
    assert convs and all(n in plan.workspaces for n in convs)
    for node in convs:
        # A workspace never shares a buffer with its own op's operands or output ...
        busy = {plan.slot_of[plan.root_of[o]] for o in graph.operands(node) if o in plan.root_of}
        busy.add(plan.slot_of[node])
        assert not busy & set(plan.workspaces[node])
    # ... but is reused by later ops: fewer column buffers than convolution kernels.
    columns = {s for n in convs for s in plan.workspaces[n]}
    assert len(columns) < sum(len(plan.workspaces[n]) for n in convs)


@pytest.mark.slow   # 13 s of compiling a convolutional network with batch norm
def test_evaluation_folds_batch_norm_into_the_product_before_it():
    model = netlang.compile("""
        input x: [6, 6, 2]
        input y: int32[]
        a = x -> conv2d(4, 3, padding = 1, bias = false) -> batchnorm -> relu
        b = a -> conv2d(4, 3, padding = 1) as shared
        c = b -> batchnorm
        h = (c, b) -> concat
        output z = h -> flatten -> dense(5) -> batchnorm -> relu -> dense(3)
        train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.1) }
    """)
    reference, compiled = ReferenceEngine(model.graph, seed=1), CpuEngine(model.graph, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(3):  # running statistics and weights away from their initial values
        feeds = {"x": rng.standard_normal((8, 6, 6, 2)).astype(np.float32),
                 "y": rng.integers(0, 3, 8)}
        reference.train_step(feeds, 0.1)
        compiled.train_step(feeds, 0.1)
    x = {"x": rng.standard_normal((5, 6, 6, 2)).astype(np.float32)}
    np.testing.assert_allclose(compiled.forward(x)["z"], reference.forward(x)["z"],
                               rtol=1e-4, atol=1e-5)
    _, _, program = compiled._inference(("z",), False)
    ops = [program.graph.op(n) for n in needed_nodes(program.graph, [model.graph.graph["outputs"]["z"]])]
    # Two folded (the conv's and the dense's); the one after `shared` stays: b has two readers.
    assert ops.count("batchnorm_fold_weight") == 2 and ops.count("batchnorm") == 1


# Every form a convolution's kernels take, in one model: planar (an image of one channel, stride
# 1), direct (1×1), depthwise, grouped, strided and dilated (im2col), transposed with its input
# gradient a convolution (`up`: output_padding within the padding) or a cropped one
# (`up_cropped`: conv_transpose2d_grad_input).
WORKER_CONVS = """
input image: [7, 7, 1]
input label: int32[]
a = image -> conv2d(4, 3, padding = 1) as planar -> relu
b = a -> conv2d(4, 1) as direct -> conv2d(4, 3, groups = 4, padding = same) as depthwise
  -> conv2d(6, (3, 2), stride = 2, dilation = 2, groups = 2, padding = same) as grouped -> tanh
c = b -> conv_transpose2d(3, 3, stride = 2, padding = 1, output_padding = 1) as up -> relu
  -> conv_transpose2d(2, 2, stride = 2, output_padding = 1) as up_cropped
output logits = c -> flatten -> dense(3) as fc
train { loss cross_entropy(logits, label) }
"""


# Slow both ways (8 and 19 s of compiling): one worker is the default run's every other
# convolution, and three workers split convolutions as two do in tests/test_worker_processes.py.
@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 3])
def test_convolutions_split_among_workers_match_reference(monkeypatch, workers):
    # The batch split into runs of examples, one per worker thread: uneven (5 among 3), and
    # with a worker left no example (2 among 3).  Every form of convolution (WORKER_CONVS), its
    # input gradient (the image's too) and its weight gradient.  float64: the order of the
    # weight gradients' partial sums is the only difference left.
    import netlang.runtime.cpu as cpu
    monkeypatch.setattr(cpu, "cpu_workers", lambda: workers)
    model = netlang.compile(WORKER_CONVS)
    training = training_program(model.graph, model.graph.parameters(), ("image",))
    assert {"conv2d_grad_input", "conv_transpose2d_grad_input", "conv2d_grad_weight"} <= \
        {training.graph.op(n) for n in training.order}
    reference = ReferenceEngine(model.graph, seed=3, dtype=np.float64, input_grads=("image",))
    compiled = CpuEngine(model.graph, seed=3, dtype=np.float64, input_grads=("image",))
    for n in (5, 2):
        feeds = random_batch(model.graph, n, n)
        loss_ref, grads_ref, _ = reference.gradients(feeds)
        loss_cpu, grads_cpu, _ = compiled.gradients(feeds)
        assert loss_cpu == pytest.approx(loss_ref, rel=1e-12)
        _, again, _ = compiled.gradients(feeds)
        for name in grads_ref:
            np.testing.assert_allclose(grads_cpu[name], grads_ref[name], rtol=1e-10,
                                       atol=1e-12, err_msg=name)
            np.testing.assert_array_equal(again[name], grads_cpu[name])   # reproducible
    program = compiled._programs["gradients"]
    assert program.workers == workers
    # One worker: the serial step; several: each convolution a function of its own module,
    # which the step runs on the three workers.
    source = program.program.source
    assert ("def share(" in "".join(text for _, text in program.program.parts)) == (workers == 3)
    assert (", 3, (" in source and "run_workers(" in source) == (workers == 3)
    assert "prange" not in source
    # Views are `reshaped`'s, never Numba's reshape (its checks cost compile time at each), in
    # the program and in the functions it calls (its pieces, where it is cut).
    everything = source + "".join(text for _, text in program.program.parts)
    assert "reshaped(" in everything and ".reshape(" not in everything


def test_reshaped_is_reshapes_view_and_never_reaches_past_the_array():
    # Generated programs make their views with runtime/jit.py's `reshaped` (ProgramWriter.view).
    from numba import njit
    from numba.core.errors import TypingError

    from netlang.runtime.jit import reshaped

    @njit
    def views(a):
        return reshaped(a, (3, 2)), reshaped(a, ()), reshaped(a, (5,)), reshaped(a, (0, 4))

    a = np.arange(24, dtype=np.float32).reshape(2, 2, 6)
    blocks, flat, rows, empty = views(a)
    assert blocks.shape == (4, 3, 2) and blocks.strides == a.reshape(4, 3, 2).strides
    np.testing.assert_array_equal(blocks, a.reshape(4, 3, 2))
    np.testing.assert_array_equal(flat, a.ravel())
    # 24 values as rows of 5: four rows, the last four values left out, never a fifth row.
    assert rows.shape == (4, 5)
    np.testing.assert_array_equal(rows, a.ravel()[:20].reshape(4, 5))
    assert empty.shape == (0, 0, 4)
    blocks[0, 0, 0] = -1
    assert a[0, 0, 0] == -1   # a view, not a copy

    @njit
    def made_inside(n):   # the view keeps the array it views alive
        return reshaped(np.arange(n * 2.0), (2,))
    np.testing.assert_array_equal(made_inside(3), [[0, 1], [2, 3], [4, 5]])

    @njit
    def of_strided(a):
        return reshaped(a[:, ::2], ())
    with pytest.raises(TypingError, match="C-contiguous"):
        of_strided(np.zeros((2, 4)))


def test_every_bias_gradient_calls_column_sums_on_a_flat_view():
    # One compilation of column_sums per dtype, whatever the rank of the gradient: the
    # convolutions' 4-D and the dense layer's 2-D gradients are passed flat.
    import re
    engine = CpuEngine(netlang.compile(LENET_LIKE).graph, seed=0)
    engine.gradients(random_batch(engine.graph, 2, 0))
    source = engine._programs["gradients"].program.source
    flat_views = set(re.findall(r"(\w+) = reshaped\(\w+, \(\)\)", source))
    passed = re.findall(r"column_sums\((\w+), ", source)
    assert len(passed) == 3 and set(passed) <= flat_views


def test_thin_convolutions_of_any_window_share_one_planar_columns():
    # planar_columns is specialised on its input's channel count only (netlang/runtime/cnn.py):
    # one-channel images under a 3×3 and a 5×5 window, of two sizes, use one compilation.
    from numba.core import types

    from netlang.runtime import cnn
    for window, side in ((3, 9), (5, 12)):
        model = netlang.compile(f"""
input image: [{side}, {side}, 1]
input label: int32[]
output logits = image -> conv2d(3, {window}) -> relu -> flatten -> dense(2)
train {{ loss cross_entropy(logits, label) }}
""")
        engine = CpuEngine(model.graph, seed=0, dtype=np.float64)
        assert np.isfinite(engine.gradients(random_batch(model.graph, 2, 0))[0])
    one_channel = [signature for signature in cnn.planar_columns.overloads
                   if signature[0].dtype == types.float64
                   and signature[7] == types.IntegerLiteral(1)]
    assert len(one_channel) == 1
    assert not any(isinstance(t, types.Literal) for t in one_channel[0][8:])


def test_programs_share_the_modules_of_their_equal_worker_functions(monkeypatch):
    # The evaluation program's forward convolutions are the training step's, compiled once;
    # renaming the layers or changing the rest of the model leaves their modules alone.
    import netlang.runtime.cpu as cpu
    monkeypatch.setattr(cpu, "cpu_workers", lambda: 2)

    def parts(source):
        """The worker modules of a model's gradient program and of its evaluation program."""
        engine = CpuEngine(netlang.compile(source).graph, seed=0)
        feeds = random_batch(engine.graph, 3, 0)
        engine.gradients(feeds)
        engine.forward(feeds)
        _, _, evaluation = engine._inference(("logits",), with_losses=False)
        return (dict(engine._programs["gradients"].program.parts),
                dict(evaluation.program.parts))

    training, evaluation = parts(LENET_LIKE)
    assert evaluation and set(evaluation) < set(training)
    assert all(source.count("def share(") == 1 for source in training.values())
    training_renamed, _ = parts(LENET_LIKE.replace("conv1", "first_conv")
                                .replace("dense(3)", "dense(5)"))
    assert set(evaluation) < set(training_renamed)
    assert all(name in sys.modules for name in evaluation)   # loaded under those names


# Two 3×3 convolutions of different image sizes and channel counts: one window.
SAME_WINDOW = """
input image: [8, 8, 3]
input label: int32[]
output logits = image
  -> conv2d(4, 3, padding = 1) as first -> relu -> maxpool(2)
  -> conv2d(6, 3, padding = 1) as second -> relu
  -> flatten -> dense(3) as fc
train { loss cross_entropy(logits, label)  optimizer sgd(lr = 0.05) }
"""


def test_layers_with_one_window_share_their_compiled_code(monkeypatch):
    # Convolutions that differ only in their sizes call one worker function (the sizes are
    # its parameters) and one compilation of im2col and col2im (specialised on the window
    # alone), and still compute what the reference does.
    import netlang.runtime.cpu as cpu
    from netlang.runtime import cnn
    monkeypatch.setattr(cpu, "cpu_workers", lambda: 2)
    compiled = gradients_as_the_reference(SAME_WINDOW, seed=2, batch=5)
    program = compiled._programs["gradients"].program
    lines = program.source.splitlines()
    calls = [line for line in lines if line.startswith("    run_workers(shares")]
    imported = [line for line in lines if " import share as " in line]
    # Forward, weight gradient of both, the second's input gradient: 5 calls, 3 functions.
    assert (len(calls), len(imported), len(program.parts)) == (5, 3, 3)

    assert len(stride_signatures(cnn.im2col)) == 1
    assert len(stride_signatures(cnn.col2im)) == 1


def gradients_as_the_reference(text: str, seed: int, batch: int):
    """The float64 CPU engine of the model `text`, after checking that its loss and gradients
    on a random batch are the reference engine's (same seed)."""
    model = netlang.compile(text)
    reference = ReferenceEngine(model.graph, seed=seed, dtype=np.float64)
    compiled = CpuEngine(model.graph, seed=seed, dtype=np.float64)
    feeds = random_batch(model.graph, batch, 1)
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss_cpu, grads_cpu, _ = compiled.gradients(feeds)
    assert loss_cpu == pytest.approx(loss_ref, rel=1e-12)
    for name in grads_ref:
        np.testing.assert_allclose(grads_cpu[name], grads_ref[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    return compiled


def stride_signatures(dispatcher):
    """The compiled signatures of im2col or col2im (`dispatcher`) in float64 for strides and
    dilations of 1, one group: their kernel sizes and paddings plain values, not literals."""
    return [sig for sig in dispatcher.overloads
            if str(sig[0].dtype) == "float64"
            and [getattr(t, "literal_value", None) for t in sig[-9:]] == [None, None, 1, 1, 1, 1,
                                                                           None, None, 1]]


# Convolutions of stride 1 with three windows: 3×3 with padding 1, 5×5 with padding 2, 3×3
# without (the last two take input gradients, through col2im).
TWO_KERNEL_SIZES = """
input image: [9, 9, 3]
input label: int32[]
output logits = image
  -> conv2d(4, 3, padding = 1) as first -> relu
  -> conv2d(5, 5, padding = 2) as second -> relu
  -> conv2d(3, 3) as third -> relu
  -> flatten -> dense(3) as fc
train { loss cross_entropy(logits, label)  optimizer sgd(lr = 0.05) }
"""


@pytest.mark.slow   # a CNN compiled in float64 for one check
def test_convolutions_of_one_stride_share_im2col_and_col2im_whatever_their_kernel_size():
    # im2col and col2im are specialised on strides, dilations and groups only
    # (runtime/cnn.py): 3×3 and 5×5 windows of stride 1 share one compilation of each.  The
    # weights' reordering is compiled once for every size.
    from netlang.runtime import cnn
    gradients_as_the_reference(TWO_KERNEL_SIZES, seed=4, batch=4)
    assert len(stride_signatures(cnn.im2col)) == 1
    assert len(stride_signatures(cnn.col2im)) == 1
    for reorder in (cnn.weight_to_rows, cnn.rows_to_weight):
        float64 = [sig for sig in reorder.overloads if str(sig[0].dtype) == "float64"]
        assert len(float64) == 1 and not any(hasattr(t, "literal_value") for t in float64[0])
