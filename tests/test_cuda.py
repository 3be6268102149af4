"""What is the CUDA back end's own: tilings and blocks, trajectories against the CPU, uploads,
device metrics, the generated source, PTX, the simulator's race, the no-GPU error.

Each op's kernels, forward and backward, and the training steps of every optimiser are held
against the reference engine by tests/test_conformance.py, which runs its cuda cases in the
same passes as this file.  Run twice (see tests/conftest.py and docs/cuda.md): in the main
pass the tests that need a GPU skip when there is none, and the rest (generated source, the
no-GPU error, PTX compilation where a CUDA toolkit is installed) run; under
NUMBA_ENABLE_CUDASIM=1 the simulator runs every generated kernel.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import CUDA_SIMULATOR, cuda_runs, random_batch, skip_without_cuda
from test_conformance import COMPOSITES, MODEL

import netlang
from netlang.codegen.cuda import CudaUpdatePlan, GPU, render_program
from netlang.codegen.update import ParamUpdate
from netlang.interp import needed_nodes
from netlang.passes.autodiff import differentiate
from netlang.passes.fusion import plan_fusion
from netlang.passes.memory import plan_buffers
from netlang.passes.training import training_graph

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

needs_cuda = skip_without_cuda()


def _model(sizes, opt="sgd", reg="l2(0.0)", extra=""):
    return netlang.compile(MODEL % {"h": sizes.hidden, "opt": opt, "reg": reg, "extra": extra})


def _batch(seed, n, classes=3):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, classes, n)}


def _close(actual, expected, rtol, atol, what):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _steps_match(reference, gpu, batches, output="z"):
    """Training steps on both engines, batch by batch: equal losses and outputs, then equal
    parameters (read back from the device)."""
    for feeds in batches:
        loss_ref, out_ref = reference.train_step(feeds, 0.05)
        loss_gpu, out_gpu = gpu.train_step(feeds, 0.05)
        assert loss_gpu == pytest.approx(loss_ref, rel=1e-5)
        _close(out_gpu[output], out_ref[output], 1e-4, 1e-5, output)
    for name in reference.params:
        _close(gpu.params[name], reference.params[name], 2e-5, 2e-6, name)


# ---- convolutions in blocks ------------------------------------------------------------------

CONV_POOL = next(case.source for case in COMPOSITES if case.id == "composite_conv_pool")


@needs_cuda
def test_convolutions_in_many_blocks_match_reference(cuda_sizes, monkeypatch):
    # A tiny column budget: one output line per block for the first convolution, blocks of four
    # lines that straddle examples for the grouped one (Ho = 3): im2col, col2im and the weight
    # gradient's accumulation over blocks.
    from netlang.ops import conv_kernels
    from netlang.runtime.cuda import CudaEngine
    from netlang.runtime.reference import ReferenceEngine
    monkeypatch.setattr(conv_kernels, "CUDA_COLUMN_BUDGET", 100)
    model = netlang.compile(CONV_POOL)
    reference = ReferenceEngine(model.graph, seed=5, input_grads=["x"])
    gpu = CudaEngine(model.graph, seed=5, input_grads=["x"])
    feeds = random_batch(model.graph, 2, 4)   # batch 2 on a GPU too: the blocks are the point
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss_gpu, grads_gpu, _ = gpu.gradients(feeds)
    assert loss_gpu == pytest.approx(loss_ref, rel=1e-5)
    for grad in grads_ref:
        _close(grads_gpu[grad], grads_ref[grad], 1e-5, 1e-6, grad)


# ---- whole training runs ----------------------------------------------------------------------

@needs_cuda
def test_xor_and_mlp_loss_trajectories_match_the_cpu(cuda_sizes):
    from netlang.runtime.cpu import CpuEngine
    from netlang.runtime.cuda import CudaEngine
    xor = netlang.compile(os.path.join(ROOT, "examples", "xor.net"))
    truth = {"x": np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
             "target": np.array([0, 1, 1, 0])}
    mlp = netlang.compile(f"""
        input image: [4, 4, 1]
        input label: int32[]
        output logits = image -> flatten -> dense({cuda_sizes.hidden}) -> relu -> dropout(0.25)
          -> dense(3)
        train {{ loss cross_entropy(logits, label)  optimizer sgd(lr = 0.1, momentum = 0.9) }}
    """)
    mlp_batches = [random_batch(mlp.graph, cuda_sizes.batch, s % 2) for s in range(cuda_sizes.run_steps)]
    for model, batches, lr in ((xor, [truth] * cuda_sizes.run_steps, 0.5),
                               (mlp, mlp_batches, 0.05)):
        cpu, gpu = CpuEngine(model.graph, seed=1), CudaEngine(model.graph, seed=1)
        cpu_losses = [cpu.train_step(feeds, lr)[0] for feeds in batches]
        gpu_losses = [gpu.train_step(feeds, lr)[0] for feeds in batches]
        _close(gpu_losses, cpu_losses, 1e-4, 0, "loss trajectory")
        assert gpu_losses[-1] < gpu_losses[0]


NORM_MODEL = """
input x: [4, 4, 3]
input ids: int[5]
input y: int32[]
a = x -> conv2d(4, 3, padding = 1, bias = false) -> batchnorm -> relu -> lrn(3) -> global_avgpool
b = ids -> embedding(4, 3) -> batchnorm(momentum = 0.3) -> flatten
output z = (a, b) -> concat -> dense(3)
train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.1, momentum = 0.9) }
"""


@needs_cuda
def test_batchnorm_lrn_and_embedding_match_reference(cuda_sizes):
    # Training steps (batch statistics, the running statistics moved on the device), then
    # evaluation (the batch norm after the convolution folded into it) and gradients.
    from netlang.runtime.cuda import CudaEngine
    from netlang.runtime.reference import ReferenceEngine
    model = netlang.compile(NORM_MODEL)
    reference = ReferenceEngine(model.graph, seed=6, input_grads=["x"])
    gpu = CudaEngine(model.graph, seed=6, input_grads=["x"])
    for step in range(cuda_sizes.steps):
        feeds = random_batch(model.graph, cuda_sizes.image_batch + 1, step)
        loss_ref, _ = reference.train_step(feeds, 0.1)
        loss_gpu, _ = gpu.train_step(feeds, 0.1)
        assert loss_gpu == pytest.approx(loss_ref, rel=1e-5)
    assert any("running_var" in name for name in reference.params)
    for name in reference.params:
        _close(gpu.params[name], reference.params[name], 1e-4, 1e-6, name)
    feeds = random_batch(model.graph, cuda_sizes.image_batch, 9)
    inputs = {"x": feeds["x"], "ids": feeds["ids"]}
    _close(gpu.forward(inputs)["z"], reference.forward(inputs)["z"], 1e-5, 1e-6, "forward")
    loss_ref, grads_ref, _ = reference.gradients(feeds)
    loss_gpu, grads_gpu, _ = gpu.gradients(feeds)
    assert loss_gpu == pytest.approx(loss_ref, rel=1e-5)
    assert grads_gpu.keys() == grads_ref.keys()
    for grad in grads_ref:
        _close(grads_gpu[grad], grads_ref[grad], 1e-4, 1e-6, grad)


LENET_LIKE = """
input image: [%(size)d, %(size)d, 1]
input label: int32[]
features = image -> conv2d(3, 3, padding = 1) as c1 -> relu -> maxpool(2)
  -> conv2d(4, 2) as c2 -> relu -> maxpool(2)
output logits = features -> flatten -> dense(8) -> relu -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.05, momentum = 0.9)
  regularize l2(5e-4)
}
"""


@needs_cuda
def test_lenet_loss_trajectory_matches_the_cpu(cuda_sizes):
    # LeNet-5 itself on a GPU; under the simulator the same layers on 6×6 images, batch 2.
    from netlang.runtime.cpu import CpuEngine
    from netlang.runtime.cuda import CudaEngine
    if cuda_sizes.simulated:
        model, steps = netlang.compile(LENET_LIKE % {"size": 6}), 4
    else:
        model, steps = netlang.compile(os.path.join(ROOT, "examples", "lenet5.net")), 20
    batches = [random_batch(model.graph, cuda_sizes.image_batch, 1, classes=3)] * steps  # one, learnt
    cpu, gpu = CpuEngine(model.graph, seed=3), CudaEngine(model.graph, seed=3)
    cpu_losses = [cpu.train_step(feeds, 0.05)[0] for feeds in batches]
    gpu_losses = [gpu.train_step(feeds, 0.05)[0] for feeds in batches]
    _close(gpu_losses, cpu_losses, 1e-4, 0, "loss trajectory")
    assert gpu_losses[-1] < gpu_losses[0]
    for name in cpu.params:
        _close(gpu.params[name], cpu.params[name], 1e-4, 1e-6, name)


@needs_cuda
def test_model_to_cuda_keeps_weights_and_optimiser_state(cuda_sizes):
    model = _model(cuda_sizes, "adam(lr = 0.01)")
    feeds = _batch(0, cuda_sizes.batch)
    model.engine.train_step(feeds, 0.01)
    before = {name: value.copy() for name, value in model.parameters().items()}
    moments = {name: value.copy() for name, value in model.engine.optimizer.state.items()}
    assert model.to("cuda") is model and model.engine.name == "cuda"
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[name])
    for name, value in model.engine.optimizer.state.items():
        np.testing.assert_array_equal(value, moments[name])
    # Host writes reach the device: a zeroed weight gives the reference's output.
    model.parameters()["z.weight"][...] = 0
    out = model.engine.forward({"x": feeds["x"]})["z"]
    np.testing.assert_allclose(out, np.broadcast_to(model.parameters()["z.bias"], out.shape))
    model.engine.train_step(feeds, 0.01)
    assert model.to("cpu").engine.name == "cpu"


@needs_cuda
def test_a_data_set_uploaded_once_feeds_the_steps(cuda_sizes):
    from numba import cuda

    from netlang.runtime.cuda import CudaEngine
    model = _model(cuda_sizes)
    host = _batch(3, cuda_sizes.batch)
    on_device = {"x": cuda.to_device(host["x"]), "y": cuda.to_device(host["y"].astype(np.int64))}
    a, b = CudaEngine(model.graph, seed=2), CudaEngine(model.graph, seed=2)
    assert a.train_step(host, 0.1)[0] == b.train_step(on_device, 0.1)[0]


# ---- the training loop: data and running metrics on the device --------------------------------
# `Trainer` uploads the training set once and gathers each batch on the device, and the CUDA
# engine sums the running loss and accuracy there, read back once per log interval.  The host
# path it is compared with is the one an engine without device metrics takes (the CPU's): each
# step's loss and outputs copied back and added up on the host.

LOOP_MODELS = {
    "softmax": """
        input x: [3]
        input y: int32[]
        output z = x -> dense(4) -> relu -> dense(3)
        train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.5, momentum = 0.9) }""",
    "one_hot": """
        input x: [3]
        input y: [3]
        output z = x -> dense(3)
        train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.5) }""",
    "sigmoid": """
        input x: [3]
        input y: int32[]
        output p = x -> dense(3) -> tanh -> dense(1) -> sigmoid
        train { loss binary_cross_entropy(p, y)  optimizer sgd(lr = 1.0) }""",
    "logits": """
        input x: [3]
        input y: int32[]
        output p = x -> dense(1)
        train { loss binary_cross_entropy(p, y, logits = true)  optimizer sgd(lr = 1.0) }""",
}


def _loop_data(name, n=12):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    labels = rng.integers(0, 3 if name in ("softmax", "one_hot") else 2, n)
    return {"x": x, "y": np.eye(3, dtype=np.float32)[labels] if name == "one_hot" else labels}


def _trainer(name, *, metrics_every=2, **options):
    """A Trainer of the CUDA engine over 12 examples in batches of 5 (3 steps an epoch)."""
    import dataclasses

    from netlang.runtime.cuda import CudaEngine
    from netlang.train.loop import Trainer, bind
    model = netlang.compile(LOOP_MODELS[name])
    config = dataclasses.replace(model.train_config, batch_size=5, epochs=2)
    return Trainer(CudaEngine(model.graph, seed=3), bind(model.graph), config,
                   source_hash="test", metrics_every=metrics_every, **options)


def _figures(history):
    return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")}
            for r in history.records]


def _host_path(monkeypatch):
    """The CUDA engine without device metrics (the base engine's answer): the host path."""
    from netlang.runtime.base import EngineBase
    from netlang.runtime.cuda import CudaEngine
    monkeypatch.setattr(CudaEngine, "device_metrics", EngineBase.device_metrics)


class _Copies:
    """Copies between host and device while it is installed: `to_host` (copy_to_host) and
    `to_device` (cuda.to_device, copy_to_device)."""

    def __init__(self, monkeypatch):
        from numba import cuda
        self.to_host = self.to_device = 0
        array = type(cuda.to_device(np.zeros(1)))
        to_host, copy_in, to_device = array.copy_to_host, array.copy_to_device, cuda.to_device

        def counted(function, field):
            def wrapper(*args, **kwargs):
                setattr(self, field, getattr(self, field) + 1)
                return function(*args, **kwargs)
            return wrapper
        monkeypatch.setattr(array, "copy_to_host", counted(to_host, "to_host"))
        monkeypatch.setattr(array, "copy_to_device", counted(copy_in, "to_device"))
        monkeypatch.setattr(cuda, "to_device", counted(to_device, "to_device"))


@needs_cuda
@pytest.mark.parametrize("name", sorted(LOOP_MODELS))
def test_device_metrics_equal_the_host_paths(name, monkeypatch):
    # Softmax cross-entropy with integer and one-hot labels, a sigmoid unit and a logit: loss
    # and accuracy per epoch, summed on the device in the host's order, are the host's exactly.
    device = _figures(_trainer(name).fit(_loop_data(name)))
    _host_path(monkeypatch)
    host = _figures(_trainer(name).fit(_loop_data(name)))
    assert all("accuracy" in record for record in host)
    assert device == host


@needs_cuda
@pytest.mark.parametrize("resident", [True, False], ids=["uploaded", "copied_per_batch"])
def test_metrics_come_back_per_log_interval_and_batches_from_the_uploaded_set(
        resident, monkeypatch):
    from netlang.runtime import cuda as cuda_engine
    if not resident:   # no room for the data set: each step copies its batch in
        monkeypatch.setattr(cuda_engine, "DATA_SET_SHARE", 0.0)
    copies, seen = _Copies(monkeypatch), []

    def count(trainer):
        seen.append((trainer.epoch, copies.to_host, copies.to_device))
    figures = _figures(_trainer("softmax", on_step=count).fit(_loop_data("softmax")))
    # Epoch 2's steps (after epoch 1 allocated the buffers of both batch sizes): the totals
    # come back after steps 2 (every 2 steps) and 3 (the epoch's end), not after each step.
    epoch2 = [(h - h0, d - d0) for (_, h0, d0), (e, h, d) in zip(seen, seen[1:]) if e == 1]
    assert [h for h, _ in epoch2] == [0, 1, 1]
    # In: the epoch's order and the totals to start from, then nothing per step from the set
    # on the device; its two inputs per step otherwise.
    if resident:
        assert [d for _, d in epoch2] == [2, 0, 0]
    else:
        assert [d for _, d in epoch2] == [1 + 2, 2, 2]
    _host_path(monkeypatch)
    assert figures == _figures(_trainer("softmax").fit(_loop_data("softmax")))


@needs_cuda
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_a_diverging_run_is_caught_at_the_read_back_naming_its_step(monkeypatch):
    from netlang.errors import DataError
    data = _loop_data("one_hot")
    data["x"][7] = 3e38   # the second batch's loss overflows (no shuffling)
    messages = []
    for host in (False, True):
        if host:
            _host_path(monkeypatch)
        trainer = _trainer("one_hot", metrics_every=50, shuffle=False)
        with pytest.raises(DataError) as info:
            trainer.fit(data)
        messages.append(str(info.value))
        # Steps completed: the host path stopped in step 2; the device path ran on to its
        # read-back at the epoch's end.
        assert trainer.step == (1 if host else 3)
    assert messages[0] == messages[1]
    assert "\n" not in messages[0] and "training diverged" in messages[0]
    assert "at epoch 1, step 2 " in messages[0]


@needs_cuda
def test_train_on_cuda_from_the_command_line_logs_the_cpus_figures(tmp_path, capsys):
    from netlang.cli import main
    records = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["train", os.path.join(ROOT, "examples", "xor.net"), "--data", "xor",
                     "--epochs", "2", "--device", device, "--out", str(out)]) == 0
        assert "epoch 2/2  loss" in capsys.readouterr().out
        records[device] = [json.loads(line) for line in
                           (out / "metrics.jsonl").read_text().splitlines()]
    for cpu, gpu in zip(records["cpu"], records["cuda"]):
        for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
            assert gpu[key] == pytest.approx(cpu[key], rel=1e-5), key


PENDING_MODEL = """
input x: [3, 3, 4]
input y: int32[]
output z = x -> lrn(3) -> flatten -> dense(2)
train { loss cross_entropy(z, y) }
"""


@needs_cuda
def test_models_with_an_op_lacking_a_cuda_kernel_are_refused_naming_it(monkeypatch):
    from netlang.errors import UsageError
    from netlang.ops import get_op
    from netlang.runtime import make_engine
    monkeypatch.setattr(get_op("lrn"), "cuda_kernel", None)   # as an op added without one
    model = netlang.compile(PENDING_MODEL)
    with pytest.raises(UsageError, match="`lrn`"):
        make_engine(model.graph, device="cuda")


# ---- recurrent layers ---------------------------------------------------------------------------
# Each layer with every option its kernels branch on (stacked, bidirectional, sequences or the
# final states, dropout between layers, initial states, lengths from 0 to T), held against the
# CPU engine on the same weights and dropout keys; sizes the simulator runs (T ≤ 4, batch 3,
# units ≤ 5).  The conformance suite holds the same ops against the reference engine.

RECURRENT_MODELS = {
    "lstm": """
        input x: [4, 2]
        input h: [4, 3]
        input c: [4, 3]
        input n: int32[]
        input y: int32[]
        output z = x -> lstm(3, layers = 2, bidirectional = true, dropout = 0.4, h0 = h,
                             c0 = c, lengths = n) -> dense(2)
        train { loss cross_entropy(z, y) }""",
    "gru": """
        input x: [4, 2]
        input h: [4, 3]
        input n: int32[]
        input y: int32[]
        output z = x -> gru(3, layers = 2, bidirectional = true, sequences = true,
                            dropout = 0.3, h0 = h, lengths = n) -> flatten -> dense(2)
        train { loss cross_entropy(z, y) }""",
    "rnn": """
        input x: [4, 2]
        input h: [2, 5]
        input y: int32[]
        s = x -> rnn(5, layers = 2, activation = relu, sequences = true, h0 = h)
        output z = s -> rnn(2, bidirectional = true) -> dense(2)
        train { loss cross_entropy(z, y) }""",
}

RECURRENT_CLASSIFIER = """
input x: [4, 3]
input y: int32[]
output z = x -> lstm(5) -> dense(3)
train { loss cross_entropy(z, y)  optimizer adam(lr = 0.05) }
"""


def _recurrent_feeds(graph, seed, batch=3):
    """A batch of a recurrent model: lengths of 0 (all padding), the whole sequence, and
    between."""
    feeds = random_batch(graph, batch, seed)
    if "n" in feeds:
        feeds["n"] = np.array([0, 4, 2][:batch])
    return feeds


def _near_at_scale(actual, expected, what):
    """Float32's bar against another engine: each array within 1e-5 of its largest value
    (only the order of sums differs; test_conformance.py's SAME_PRECISION)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    error, scale = np.abs(actual - expected).max(), np.abs(expected).max()
    assert error <= 1e-5 * scale + 1e-6, f"{what}: max error {error:.3g} at {scale:.3g}"


@needs_cuda
@pytest.mark.parametrize("kind", sorted(RECURRENT_MODELS))
def test_recurrent_layers_forward_and_gradients_match_the_cpu(kind):
    from netlang.runtime.cpu import CpuEngine
    from netlang.runtime.cuda import CudaEngine
    graph = netlang.compile(RECURRENT_MODELS[kind]).graph
    states = [name for name in ("x", "h", "c") if name in graph.graph["inputs"]]
    cpu = CpuEngine(graph, seed=4, input_grads=states)
    gpu = CudaEngine(graph, seed=4, input_grads=states,
                     params={name: np.array(value) for name, value in cpu.params.items()})
    feeds = _recurrent_feeds(graph, 2)
    # The training-mode pass: dropout masks from the same keys, gradients through time.
    loss_cpu, grads_cpu, outputs_cpu = cpu.gradients(feeds)
    loss_gpu, grads_gpu, outputs_gpu = gpu.gradients(feeds)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
    assert grads_gpu.keys() == grads_cpu.keys() and set(states) <= set(grads_gpu)
    for name in grads_cpu:
        _near_at_scale(grads_gpu[name], grads_cpu[name], name)
    _near_at_scale(outputs_gpu["z"], outputs_cpu["z"], "training-mode output")
    inputs = {name: value for name, value in feeds.items() if name != "y"}
    _near_at_scale(gpu.forward(inputs)["z"], cpu.forward(inputs)["z"], "evaluation output")


@needs_cuda
def test_a_tiny_lstm_classifier_trains_step_for_step_as_on_the_cpu(cuda_sizes):
    from netlang.runtime.cpu import CpuEngine
    from netlang.runtime.cuda import CudaEngine
    graph = netlang.compile(RECURRENT_CLASSIFIER).graph
    cpu, gpu = CpuEngine(graph, seed=8), CudaEngine(graph, seed=8)
    _steps_match(cpu, gpu, [random_batch(graph, 3, step) for step in range(cuda_sizes.steps)])


@needs_cuda
def test_recurrent_lengths_outside_the_sequence_are_a_one_line_error():
    from netlang.errors import DataError
    from netlang.runtime.cuda import CudaEngine
    graph = netlang.compile(RECURRENT_MODELS["gru"]).graph
    feeds = _recurrent_feeds(graph, 1)
    feeds["n"] = np.array([1, 5, 2])
    with pytest.raises(DataError, match="`lengths` holds 5, outside 0..4") as refused:
        CudaEngine(graph, seed=0).gradients(feeds)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("kind", sorted(RECURRENT_MODELS))
def test_recurrent_time_loops_launch_one_kernel_per_step_and_allocate_nothing(kind):
    # Forward and back through time, each layer and direction: a host loop over the steps
    # whose body launches one fused kernel; states and gates live in planned buffers.
    graph, program = _render(RECURRENT_MODELS[kind], update=False)
    host = program.source.split(f"def {program.function}")[1].splitlines()
    loops = [i for i, line in enumerate(host) if re.match(r"\s*for s\d+ in range\(4\):", line)]
    cells = sum(node["attrs"]["layers"] * (2 if node["attrs"]["bidirectional"] else 1)
                for _, node in graph.nodes(data=True) if node["op"] == kind)
    assert len(loops) == 2 * cells
    for start in loops:
        depth = len(host[start]) - len(host[start].lstrip())
        body = itertools.takewhile(lambda line: len(line) - len(line.lstrip()) > depth,
                                   host[start + 1:])
        assert sum(bool(re.search(r"\bk\d+\[", line)) for line in body) == 1
    for allocation in ("device_array", "to_device", "np.zeros", "np.empty"):
        assert allocation not in program.source


# ---- no GPU needed ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [os.path.join("examples", "lenet5.net"),
                                  os.path.join("benchmarks", "vgg_small.net")])
def test_lenet_and_the_vgg_stack_have_no_pending_op(path):
    from netlang.runtime.cuda import CudaEngine
    model = netlang.compile(os.path.join(ROOT, path))
    assert CudaEngine.pending_ops(model.graph) == []


def _render(source, *, update=True, opt_args=None):
    model = netlang.compile(source)
    graph = training_graph(model.graph)
    grads = differentiate(graph, list(graph.parameters().values()))
    grad_nodes = {graph.nodes[n]["name"]: g for n, g in grads.of.items() if g is not None}
    keep = [grads.objective] + [n for n, _ in graph.graph["losses"]] + \
        list(graph.graph["outputs"].values()) + list(grad_nodes.values())
    order = needed_nodes(graph, keep)
    config = graph.graph["train"]
    plan = None
    if update:
        updates = [ParamUpdate(name, g, graph.nodes[graph.node_named(name)]["layer"],
                               graph.nodes[graph.node_named(name)]["attrs"].get("penalise", False))
                   for name, g in grad_nodes.items()]
        plan = CudaUpdatePlan(graph, order, updates, config.optimizer, config.regularizers,
                              config.clip_norm, "float32")
        keep = [n for n in keep if n not in plan.absorbed]
    fusion = plan_fusion(graph, order, set(keep))
    buffers = plan_buffers(graph, order, fusion, set(keep),
                           skip=set(plan.absorbed) if plan else set(), target="cuda")
    program = render_program(graph, order, fusion, buffers, dtype="float32",
                             function="train_step", keep=keep, update=plan, mode="train")
    program.buffers = buffers
    return graph, program


@pytest.mark.parametrize("source", ["""
        input zq_input: [3]
        input zq_label: int32[]
        zq_hidden = zq_input -> dense(4) as zq_layer -> relu -> dropout(0.5)
        output zq_out = zq_hidden -> dense(2) as zq_last
        train { loss cross_entropy(zq_out, zq_label)  optimizer adam  clip_norm 1.0 }
    """, """
        input zq_image: [6, 6, 2]
        input zq_label: int32[]
        zq_maps = zq_image -> conv2d(4, 3, groups = 2) as zq_conv -> batchnorm as zq_norm -> relu
          -> maxpool(2) -> conv_transpose2d(2, 2, stride = 2) as zq_up -> lrn(3)
        output zq_out = zq_maps -> global_avgpool -> dense(2) as zq_last
        train { loss cross_entropy(zq_out, zq_label) }
    """], ids=["dense", "conv"])
def test_user_names_reach_generated_cuda_source_only_in_comments(source):
    _, program = _render(source)
    assert "@cuda.jit" in program.source
    for line in program.source.splitlines():
        assert "zq_" not in line.split("#", 1)[0]


def test_user_names_reach_the_training_loops_metrics_source_only_in_comments():
    from netlang.codegen.cuda import render_metrics
    from netlang.train.metrics import ClassRule
    program = render_metrics(loss_slot=0, scores_slot=1, labels="zq_label",
                             rule=ClassRule(3, 0.5, "index"), title="zq_model.net")
    assert "zq_model" in program.source   # the header's comment
    for line in program.source.splitlines():
        assert "zq_" not in line.split("#", 1)[0]


def test_cuda_program_fuses_epilogues_and_absorbs_sgd_updates():
    _, program = _render("""
        input x: [5]
        input y: int32[]
        output z = x -> dense(4) -> relu -> dense(3)
        train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.1, momentum = 0.9) }
    """)
    source = program.source
    # Forward products end in the bias and relu; the relu gradient ends the input gradient.
    assert source.count(f"cuda.shared.array(({GPU.tile}, {GPU.tile + 1}), _FT)") // 2 == 2 + 1 + 2 * 2
    assert "relu" not in source.split("def train_step")[1].replace("# relu", "")
    # Two weights, each with a step-1 and a later-step product into its momentum buffer.
    host = source.split("def train_step")[1]
    assert host.count("if t == 1:") == 2
    assert "math.exp" in source and "np.exp" not in source


@needs_cuda
@pytest.mark.parametrize("geometry", [
    dict(wide_from=10 ** 9),                                  # one output a thread, always
    dict(wide_tile=4, micro=2, depth=4, wide_from=1),         # register tiles, always
    dict(wide_tile=8, micro=2, depth=4, wide_from=1),         # two loads a thread, depth < edge
    dict(wide_tile=8, micro=4, depth=2, wide_from=1),         # four loads, a shallow tile
    dict(wide_tile=4, micro=2, depth=4, wide_from=4),         # both, by the output's size
], ids=["narrow", "wide", "wide_two_loads", "wide_shallow", "by_size"])
def test_both_matrix_product_tilings_match_reference(geometry, monkeypatch):
    # Odd sizes, so every tile has a ragged edge, through each operand transposed or not
    # (forward, input and weight gradients), a fused bias and relu, and the momentum update the
    # weight gradient's product performs (α and β).
    import netlang.runtime.cuda as runtime
    from netlang.codegen.cuda import SIMULATOR
    from netlang.runtime.reference import ReferenceEngine
    base = SIMULATOR if CUDA_SIMULATOR else GPU
    geometry = dataclasses.replace(base, tile=4, **geometry)
    monkeypatch.setattr(runtime, "launch_options",
                        lambda: {"geometry": geometry, "cache": False})
    model = netlang.compile("""
        input x: [9]
        input y: int32[]
        output z = x -> dense(11) -> relu -> dense(5)
        train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.1, momentum = 0.9) }
    """)
    reference, gpu = ReferenceEngine(model.graph, seed=2), runtime.CudaEngine(model.graph, seed=2)
    _steps_match(reference, gpu, [random_batch(model.graph, 7, step, classes=5)
                                  for step in range(2)])


@needs_cuda
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_the_matrix_product_alone_matches_numpy_in_both_tilings(trans_a, trans_b, monkeypatch):
    # Single rows and columns, a depth of one, and sizes just past a tile's edge.
    from numba import cuda

    from netlang.codegen.cuda import SIMULATOR, render_product
    from netlang.runtime.cpu import load_program
    geometry = dataclasses.replace(SIMULATOR if CUDA_SIMULATOR else GPU, wide_tile=8,
                                   micro=2, depth=4)
    program = render_product(trans_a=trans_a, trans_b=trans_b, geometry=geometry, cache=False)
    product = load_program(program, "a matrix product")
    rng = np.random.default_rng(0)
    for m, n, k in [(1, 1, 1), (9, 1, 5), (1, 10, 3), (9, 10, 1), (17, 6, 9)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
        for wide_from in (1, 10 ** 9):
            monkeypatch.setitem(product.__globals__, "_WIDE_FROM", wide_from)
            out = cuda.to_device(np.full((m, n), np.nan, np.float32))
            product(cuda.to_device(a), cuda.to_device(b), out)
            _close(out.copy_to_host(), expected, 1e-5, 1e-6, f"{m}×{n}×{k}, wide from {wide_from}")


BLOCK_SUM = """
@cuda.jit
def block_sum(x, out):
    part = cuda.shared.array(8, float64)
    part[cuda.threadIdx.x] = x[cuda.threadIdx.x]
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        total = 0.0
        for i in range(8):
            total += part[i]
        out[0] = total
"""


@pytest.mark.skipif(not CUDA_SIMULATOR, reason="the simulator's own threads")
def test_simulated_threads_of_a_block_share_one_shared_array(monkeypatch):
    # The simulator creates a block's shared array on first use by looking it up and storing
    # it in two steps; threads arriving together each made their own, so a reduction read an
    # uninitialised copy (a wrong loss once in ~50 runs).  Widening that window with a slow
    # allocation made the race certain before netlang serialised the allocation.
    import time

    from numba import cuda, float64

    from netlang.runtime.cuda import cuda_module
    cuda_module()   # installs the serialised allocation

    # The kernel's module must name `cuda` globally: that is the name the simulator swaps.
    namespace = {"cuda": cuda, "float64": float64}
    exec(compile(BLOCK_SUM, "block_sum_kernel", "exec"), namespace)
    block_sum = namespace["block_sum"]

    allocate = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.002)
        return allocate(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    x, out = np.arange(1.0, 9.0), np.zeros(1)
    for _ in range(3):
        block_sum[1, 8](x, out)
        assert out[0] == 36.0


def test_cuda_without_a_gpu_is_a_one_line_error():
    if cuda_runs():
        pytest.skip("a GPU (or the simulator) is present")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, "-m", "netlang.cli", "train", os.path.join(ROOT, "examples", "xor.net"),
         "--data", "xor", "--epochs", "1", "--device", "cuda"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no CUDA GPU" in lines[0] and "NUMBA_ENABLE_CUDASIM=1" in lines[0]
    assert "Traceback" not in result.stderr


# ---- PTX: every generated kernel compiles for a real GPU -------------------------------------
# The simulator does not type-check.  Where numba-cuda and a CUDA toolkit's NVVM are installed
# (pip install "netlang[cuda]"), every kernel of a few programs is compiled to PTX with the
# argument types the host function passes it (recorded by running the host function on NumPy
# arrays with launches replaced by a recorder), no GPU needed.

PTX_MODELS = [MODEL % {"h": 8, "opt": "adam", "reg": "elastic_net(l1 = 1e-4, l2 = 1e-3)",
                       "extra": "clip_norm 1.0"},
              MODEL % {"h": 8, "opt": "sgd(momentum = 0.9)", "reg": "l2(0.0)", "extra": ""}] + \
    [case.source for case in COMPOSITES] + [LENET_LIKE % {"size": 12}, NORM_MODEL, """
        input image: [4, 4, 1]
        code = image -> flatten -> dense(6) as encoder -> sigmoid -> dropout(0.5)
        output recon = code -> dense(16, tie = encoder) -> sigmoid -> reshape((4, 4, 1))
        train { loss binary_cross_entropy(recon, image)  optimizer rmsprop(momentum = 0.5) }"""] + \
    [RECURRENT_MODELS[kind] for kind in sorted(RECURRENT_MODELS)]   # tanh and relu, c0, masks


def _ptx_toolkit():
    if CUDA_SIMULATOR:
        return None
    try:
        import numba_cuda  # noqa: F401  (Numba's own, deprecated numba.cuda needs a driver here)
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return cuda
    except Exception:
        return None


needs_nvvm = pytest.mark.skipif(_ptx_toolkit() is None, reason="no numba-cuda and CUDA toolkit "
                                "(NVVM) here: pip install 'netlang[cuda]' to compile the "
                                "kernels to PTX")


def _compile_launches(program, args, tmp_path, name):
    """Runs a program's host function on NumPy `args` (then `lr`, `t`) with every launch
    recorded, and compiles each launched kernel to PTX with the argument types it was given."""
    import importlib.util

    from numba import typeof
    cuda = _ptx_toolkit()
    path = tmp_path / "kernels.py"
    path.write_text(program.source.replace("'cache': True", ""))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, geometry):
            return lambda *args: launches.append((self.kernel, tuple(typeof(a) for a in args)))

    for kernel in [n for n in vars(module) if n.startswith("k") and n[1:].isdigit()]:
        setattr(module, kernel, Recorder(getattr(module, kernel)))
    # Twice: the matrix products' kernels with each tiling (the host picks one by size).
    for module._WIDE_FROM in (0, 10 ** 9):
        getattr(module, program.function)(*args)
    assert launches
    for kernel, types in dict.fromkeys(launches):
        ptx, _ = cuda.compile_ptx(kernel.py_func, types, cc=(8, 0))
        assert ".entry" in ptx


def ptx_arguments(graph, program, batch: int = 3) -> list:
    """Zero NumPy arrays (and a key) for a program's host function, as the engine passes them:
    inputs of `batch` examples, parameters, optimiser state and planned buffers."""
    args = []
    for arg in program.args:
        if arg.kind == "input":
            t = graph.type_of(graph.graph["inputs"][arg.key])
            args.append(np.zeros((batch,) + tuple(t.shape[1:]),
                                 np.float32 if t.is_float else np.int64))
        elif arg.kind in ("param", "state"):
            name = arg.key.rsplit(".", 1)[0] if arg.kind == "state" else arg.key
            args.append(np.zeros(graph.type_of(graph.node_named(name)).shape, np.float32))
        elif arg.kind == "key":
            args.append(np.uint64(7))
        elif arg.kind == "scratch":
            args.append(np.zeros(1, np.float64))
        else:
            shape, batched, dtype = _slot(program, arg.key)
            args.append(np.zeros(((batch,) if batched else ()) + tuple(shape), dtype))
    return args


@needs_nvvm
@pytest.mark.parametrize("index", range(len(PTX_MODELS)))
def test_every_generated_kernel_compiles_to_ptx(index, tmp_path):
    graph, program = _render(PTX_MODELS[index])
    _compile_launches(program, ptx_arguments(graph, program) + [0.1, 1], tmp_path,
                      f"ptx_{index}")


@needs_nvvm
@pytest.mark.parametrize("labels", ["index", "one_hot", "binary"])
@pytest.mark.parametrize("units", [1, 3])
def test_the_training_loops_kernels_compile_to_ptx(units, labels, tmp_path):
    # The device metrics after a step (scores, labels as each rule reads them) and the gather
    # of a batch from a data set on the device.
    from netlang.codegen.cuda import METRIC_TOTALS, render_gather, render_metrics
    from netlang.train.metrics import ClassRule
    program = render_metrics(loss_slot=0, scores_slot=1, labels="y",
                             rule=ClassRule(units, 0.5, labels))
    target = np.zeros((4, units) if labels == "one_hot" else (4,),
                      np.int64 if labels == "index" else np.float32)
    values = {"scratch": np.zeros(len(METRIC_TOTALS)), "input": target}
    slots = {0: np.zeros(1, np.float32), 1: np.zeros((4, units), np.float32)}
    args = [values.get(arg.kind) if arg.kind != "slot" else slots[arg.key]
            for arg in program.args]
    _compile_launches(program, args + [4, 1], tmp_path, f"metrics_{units}_{labels}")
    for data in (np.zeros((9, 2, 3), np.float32), np.zeros(9, np.int64)):
        out = np.zeros((4,) + data.shape[1:], data.dtype)
        _compile_launches(render_gather(), [data, np.arange(9), 2, out], tmp_path, "gather")


def _slot(program, index):
    shape, batched, dtype = program.buffers.slots[index]
    kind = np.float64 if dtype == "acc64" else np.int64 if dtype == "int64" else np.float32
    return shape, batched, kind


# ---- evaluation on the device ------------------------------------------------------------------
# `Trainer` uploads the validation set once, after the training set, and each epoch's
# evaluation feeds the engine views of it; the metrics read the targets from the host arrays.
# Compared with the same run whose validation set does not fit, evaluated from batches copied in.

def _validation_data():
    """Seven examples for the softmax loop model: batches of 3, 3 and 1 (`_validating_trainer`),
    in float32 and int64, as the engine takes them (copies in are views of these arrays)."""
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((7, 3)).astype(np.float32), "y": rng.integers(0, 3, 7)}


def _validating_trainer(epochs=2, metrics=("accuracy",)):
    import dataclasses

    from netlang.runtime.cuda import CudaEngine
    from netlang.train.loop import Trainer, bind
    model = netlang.compile(LOOP_MODELS["softmax"])
    config = dataclasses.replace(model.train_config, batch_size=5, epochs=epochs,
                                 metrics=metrics)
    return Trainer(CudaEngine(model.graph, seed=3), bind(model.graph), config,
                   source_hash="test", eval_batch_size=3)


def _no_room_for_validation(monkeypatch):
    """Free device memory of twice the training set: the training set takes all of
    DATA_SET_SHARE, and the validation set, smaller as it is, no longer fits beside it."""
    from numba import cuda

    from netlang.runtime.cuda import DATA_SET_SHARE
    train = _loop_data("softmax")
    room = (train["x"].nbytes + train["y"].astype(np.int64).nbytes) / DATA_SET_SHARE
    monkeypatch.setattr(type(cuda.current_context()), "get_memory_info",
                        lambda context: (room, room))


def _copies_in(monkeypatch, arrays) -> list:
    """The number of examples in each copy of (rows of) `arrays` to the device from now on."""
    from numba import cuda
    copies, to_device = [], cuda.to_device

    def recorded(array, *args, **kwargs):
        if any(np.shares_memory(array, data) for data in arrays.values()):
            copies.append(len(array))
        return to_device(array, *args, **kwargs)
    monkeypatch.setattr(cuda, "to_device", recorded)
    return copies


@needs_cuda
@pytest.mark.parametrize("metrics", [("accuracy",), ("accuracy", "top_2", "confusion")],
                         ids=["device_metrics", "top_k_on_the_host"])
def test_validation_from_the_device_gives_the_figures_of_batches_copied_in(
        metrics, monkeypatch):
    from netlang.runtime import cuda as cuda_engine
    validation = _validation_data()
    copies, figures = _copies_in(monkeypatch, validation), []
    for resident in (True, False):
        if not resident:   # no room for any data set
            monkeypatch.setattr(cuda_engine, "DATA_SET_SHARE", 0.0)
        copies.clear()
        trainer = _validating_trainer(metrics=metrics)
        figures.append(_figures(trainer.fit(_loop_data("softmax"), validation)))
        assert (copies == [7, 7]) == resident   # x and y uploaded whole, or batch by batch
    assert all("val_loss" in record and "val_accuracy" in record for record in figures[1])
    if "confusion" in metrics:
        assert all("val_confusion" in r and "val_top_2" in r for r in figures[1])
    assert figures[0] == figures[1]


@needs_cuda
@pytest.mark.parametrize("resident", [True, False], ids=["uploaded", "copied_per_batch"])
def test_validation_inputs_are_copied_in_once_per_run(resident, monkeypatch):
    if not resident:
        _no_room_for_validation(monkeypatch)
    validation = _validation_data()
    copies = _copies_in(monkeypatch, validation)
    _validating_trainer(epochs=3).fit(_loop_data("softmax"), validation)
    # x and y: once each for the run, or once per batch (3, 3, 1) of each epoch's evaluation.
    assert copies == ([7, 7] if resident else [3, 3, 3, 3, 1, 1] * 3)
