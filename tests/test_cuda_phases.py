"""Training phases and RBMs on the CUDA engine, held against the CPU engine.

The phases of a run step the same device arrays in turn (a GAN's alternation, a sequence of
pretraining and fine-tuning, `update` and `freeze`), and the RBM's kernels (netlang/ops/
rbm_cuda.py) draw the CPU engine's Gibbs samples, so a run on `--device cuda` gives the CPU
run's losses and weights, within the float32 tolerance of tests/test_cuda.py's trajectories,
and a resumed run gives the uninterrupted run's weights bit for bit.  The op-by-op checks of
the RBM's kernels are tests/test_conformance.py's.

Like tests/test_cuda.py, these run on a GPU, or on Numba's simulator in a process of their own
(.ci/run):  NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_phases.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import skip_without_cuda
from test_conformance import COMPOSITES
from test_cuda import _compile_launches, needs_nvvm, ptx_arguments
from test_phases import PRETRAIN_FINETUNE, TINY_GAN, TWO_HEADS, classes_data, compile_text, two_head_data

import netlang
from netlang.codegen.cuda import render_program
from netlang.ir.train_config import phases_of
from netlang.pipeline import forward_program, plan_execution
from netlang.runtime import CudaEngine
from netlang.train.loop import train
from netlang.train.trainer import TrainingInterrupted

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")

needs_cuda = skip_without_cuda()

# tests/test_cuda.py's trajectory tolerances: losses, then weights after the run.
LOSS_RTOL = 1e-4
WEIGHT_TOLERANCE = (1e-4, 1e-6)

# A deep belief net in miniature: two RBMs pretrained in turn (the second on the first's hidden
# probabilities, with persistent chains), then the feed-forward net they define, fine-tuned.
TINY_DBN = """\
input x: [6]
input label: int32[]
gap1 = x -> rbm(4, k = 2) as rbm1
h1 = x -> dense(4, share = rbm1) as layer1 -> sigmoid
gap2 = h1 -> rbm(3, persistent = true, chains = 5) as rbm2
h2 = h1 -> dense(3, share = rbm2) as layer2 -> sigmoid
output logits = h2 -> dense(3) as classifier

train {
  batch_size 4
  seed 2
  phases sequence(pretrain1, pretrain2, finetune)
}

train pretrain1 {
  loss gap1
  update rbm1
  optimizer sgd(lr = 0.1, momentum = 0.5)
  epochs 2
}

train pretrain2 {
  loss gap2
  update rbm2
  optimizer sgd(lr = 0.1)
  epochs 1
}

train finetune {
  loss cross_entropy(logits, label)
  update rbm1, rbm2, classifier
  optimizer adam(lr = 0.01)
  epochs 1
}
"""

# One RBM with Gaussian visible units (standardised data), CD-2.
GAUSSIAN_RBM = """\
input x: [5]
gap = x -> rbm(3, k = 2, visible = gaussian) as rbm
train {
  loss gap
  optimizer sgd(lr = 0.01)
  batch_size 3
  epochs 2
  seed 4
}
"""


def unit_classes(n: int = 12, seed: int = 0) -> dict:
    """classes_data's inputs squashed into [0, 1]: binary visible units read them as
    probabilities."""
    data = classes_data(n, seed)
    return {"x": 1.0 / (1.0 + np.exp(-data["x"])), "label": data["label"]}


def gan_data(n: int = 10) -> dict:
    return {"real": np.random.default_rng(1).normal(2.0, 0.5, (n, 3)).astype(np.float32)}


def gaussian_data(n: int = 7) -> dict:
    return {"x": np.random.default_rng(3).normal(size=(n, 5)).astype(np.float32)}


# (model, its data, its validation data or None): an alternation fed by noise alone in one
# phase, an alternation with `update` and `freeze` and an optimiser per phase, a sequence
# validated after each epoch (each phase's loss on the set the model's engine holds), and the
# RBMs.
RUNS = {
    "gan": (TINY_GAN, gan_data, None),
    "two_heads": (TWO_HEADS, lambda: two_head_data(12), None),
    "pretrain_finetune": (PRETRAIN_FINETUNE, lambda: classes_data(16),
                          lambda: classes_data(8, seed=1)),
    "dbn": (TINY_DBN, unit_classes, None),
    "gaussian_rbm": (GAUSSIAN_RBM, gaussian_data, None),
}


def _run(name: str, device: str, **options):
    source, data, validation = RUNS[name]
    if validation is not None:
        options["validation_data"] = validation()
    return train(compile_text(source, f"{name}.net"), x=data(), device=device,
                 evaluate_test=False, **options)


def _phase_losses(history) -> list:
    """(epoch, phase, loss) of every phase that stepped, then of every phase validated."""
    stepped = [(record["epoch"], phase, values["loss"]) for record in history.records
               for phase, values in sorted(record.get("phases", {"": record}).items())]
    validated = [(record["epoch"], f"val {phase}", loss) for record in history.records
                 for phase, loss in sorted(record.get("val_phases", {}).items())]
    return stepped + validated


@needs_cuda
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_run_on_cuda_matches_the_cpu_engine(name):
    cpu_history, cpu, _ = _run(name, "cpu")
    gpu_history, gpu, _ = _run(name, "cuda")
    assert gpu.name == "cuda"
    expected, actual = _phase_losses(cpu_history), _phase_losses(gpu_history)
    assert [key[:2] for key in actual] == [key[:2] for key in expected]
    np.testing.assert_allclose([loss for *_, loss in actual], [loss for *_, loss in expected],
                               rtol=LOSS_RTOL, err_msg=f"{name}: losses")
    assert set(gpu.params) == set(cpu.params)
    rtol, atol = WEIGHT_TOLERANCE
    for param, value in cpu.params.items():
        np.testing.assert_allclose(gpu.params[param], value, rtol=rtol, atol=atol,
                                   err_msg=f"{name}: {param}")


@needs_cuda
@pytest.mark.parametrize("name, stop_step", [
    ("gan", 3),                  # between the discriminator's step and the generator's
    ("two_heads", 5),            # at the end of an epoch, mid-round
    ("pretrain_finetune", 6),    # in the first stage's second epoch
    ("dbn", 8),                  # in the persistent RBM's stage: its chains are checkpointed
])
def test_a_resumed_cuda_run_matches_the_uninterrupted_one(tmp_path, name, stop_step):
    def stop(trainer):
        if trainer.step == stop_step:
            trainer.request_stop()

    _, full, _ = _run(name, "cuda", out=tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        _run(name, "cuda", out=tmp_path / "b", on_step=stop)
    _, resumed, _ = _run(name, "cuda", resume=tmp_path / "b")
    for param, value in full.params.items():
        assert np.array_equal(value, resumed.params[param]), f"{name}: {param}"


def test_the_rbm_examples_have_every_cuda_kernel():
    # Asked of the engine's class, without a GPU: each phase's training step as phase_runs
    # builds it (netlang/train/phased.py), and the unnamed section's.
    for file in ("rbm.net", "dbn.net"):
        graph = netlang.compile(os.path.join(EXAMPLES, file)).graph
        for phase in phases_of(graph):
            phase_graph = graph.copy()
            if phase.name is not None:
                phase_graph.graph["losses"] = list(phase.losses)
            assert CudaEngine.pending_ops(phase_graph) == [], (file, phase.name)


@needs_nvvm
@pytest.mark.parametrize("case", [case for case in COMPOSITES if case.id.startswith("composite_rbm")],
                         ids=lambda case: case.id)
def test_the_rbm_layers_evaluation_kernels_compile_to_ptx(case, tmp_path):
    # The training step's kernels (rbm_chain, rbm_gap, rbm_gap_grad) are among test_cuda.py's
    # PTX models (the conformance composites); the evaluation pass runs the layer itself.
    graph = netlang.compile(case.source).graph
    program = forward_program(graph, list(graph.graph["outputs"]))
    fusion, buffers = plan_execution(program.graph, program.order, program.kept, target="cuda")
    rendered = render_program(program.graph, program.order, fusion, buffers, dtype="float32",
                              function="infer", keep=program.kept)
    rendered.buffers = buffers
    _compile_launches(rendered, ptx_arguments(program.graph, rendered) + [0.1, 1], tmp_path,
                      case.id)
