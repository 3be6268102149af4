"""The Python API for programs that embed netlang (docs/embedding.md): the float width, one
optimiser step at a time, gradients with outputs, parameters apart from buffers, progress
printing, the README's snippet, and errors that name Python keywords (flags on the CLI).

Tiny models: most tests run on the NumPy reference engine; the step-for-step comparison with
`fit` runs on the compiled CPU engine too, since that is the engine users get.
"""

from __future__ import annotations

import ast
import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.api import Gradients, Step
from netlang.cli import in_flag_words, main
from netlang.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent

# Dropout, Adam, a cosine schedule with warm-up, an L2 penalty, gradient clipping and a frozen
# layer: every part of the train section a step reads.
STEPPED = """
input x: [3]
input label: int32[]
h = x -> dense(6) as first -> tanh -> dense(5) as second -> relu -> dropout(0.25)
output logits = h -> dense(3) as head
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.05)
  schedule cosine(warmup = 1)
  regularize l2(1e-3)
  clip_norm 0.5
  freeze first
  batch_size 4
  epochs 2
  seed 3
}
"""

# A batch norm (running statistics: buffers) between two dense layers.
NORMED = """
input x: [4]
input label: int32[]
output logits = x -> dense(5) as fc -> batchnorm as bn -> relu -> dense(2) as out
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.1)
  freeze out
  batch_size 4
  epochs 1
}
"""

LINEAR = """
input x: [2]
input y: [1]
output z = x -> dense(1) as fc
train { loss mse(z, y) }
"""


def batch(examples: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(examples, 3)), rng.integers(0, 3, size=examples)


def on(engine: str, source: str, **options) -> netlang.api.Model:
    return netlang.compile(source, **options).to(engine)


# --- dtype ------------------------------------------------------------------------------------


def test_a_float64_model_computes_in_float64_and_keeps_float64_inputs():
    model = on("reference", LINEAR, dtype="float64")
    assert {p.dtype for p in model.parameters().values()} == {np.dtype(np.float64)}
    x = np.array([[1.0, 0.0]])
    nudged = np.array([[1.0 + 1e-12, 0.0]])   # the same number in float32
    z, z_nudged = model.forward(x)["z"], model.forward(nudged)["z"]
    assert z.dtype == np.float64
    weight = model.parameters()["fc.weight"][0, 0]
    assert z_nudged[0, 0] - z[0, 0] == pytest.approx(weight * 1e-12, rel=1e-3)
    # float32 inputs are widened (exactly) for a float64 model
    assert model.forward(x.astype(np.float32))["z"].dtype == np.float64


def test_a_float32_model_converts_float64_inputs():
    model = on("reference", LINEAR)
    assert model.dtype == "float32"
    assert {p.dtype for p in model.parameters().values()} == {np.dtype(np.float32)}
    x = np.array([[1.0, 0.0]])
    out = model.forward(x)["z"]
    assert out.dtype == np.float32
    assert np.array_equal(model.forward(np.array([[1.0 + 1e-12, 0.0]]))["z"], out)


def test_a_float64_model_trains_saves_and_loads_in_float64(tmp_path):
    model = on("reference", LINEAR, dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(8, 2))
    model.fit(x, x[:, :1] - x[:, 1:], epochs=2, verbose=0)
    model.save(tmp_path / "run")   # a directory: the model's source is saved beside
    again = netlang.load(tmp_path / "run", device="reference", dtype="float64")
    assert again.parameters()["fc.weight"].dtype == np.float64
    assert np.array_equal(again.forward(x)["z"], model.forward(x)["z"])


def test_an_unknown_dtype_is_a_one_line_error():
    with pytest.raises(UsageError, match="unknown dtype `float16`: use float32 or float64"):
        netlang.compile(LINEAR, dtype="float16")


# --- train_step against fit -------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_train_steps_give_the_weights_fit_gives_bit_for_bit(engine):
    x, y = batch(12)
    fitted = on(engine, STEPPED)
    fitted.fit(x, y, shuffle=False, verbose=0)   # 2 epochs of 3 batches
    stepped = on(engine, STEPPED)
    frozen = {k: v.copy() for k, v in stepped.parameters().items() if k.startswith("first.")}
    losses = []
    for epoch in range(2):
        for start in range(0, 12, 4):
            step = stepped.train_step(x[start:start + 4], y[start:start + 4], steps_per_epoch=3)
            assert isinstance(step, Step) and step.outputs["logits"].shape == (4, 3)
            losses.append(step.loss)
    assert all(np.isfinite(losses)) and len(set(losses)) == len(losses)
    for name, value in fitted.parameters().items():
        assert np.array_equal(stepped.parameters()[name], value), name
    for name, value in fitted.engine.optimizer.state.items():
        assert np.array_equal(stepped.engine.optimizer.state[name], value), name
    assert fitted.engine.rng.bit_generator.state == stepped.engine.rng.bit_generator.state
    for name, value in frozen.items():   # the frozen layer stayed as it was
        assert np.array_equal(stepped.parameters()[name], value)


def test_train_step_asks_for_the_epoch_length_only_when_the_schedule_needs_it():
    x, y = batch(4)
    with pytest.raises(UsageError, match=r"schedule `cosine\(warmup=1, min_lr=0.0\)` sets the "
                                         r"rate by epoch: pass steps_per_epoch="):
        on("reference", STEPPED).train_step(x, y)
    with pytest.raises(UsageError, match="steps_per_epoch= must be a positive integer"):
        on("reference", STEPPED).train_step(x, y, steps_per_epoch=0)
    constant = on("reference", STEPPED.replace("schedule cosine(warmup = 1)", ""))
    before = constant.parameters()["head.weight"].copy()
    constant.train_step(x, y)
    assert not np.array_equal(constant.parameters()["head.weight"], before)


def test_train_step_refuses_a_model_without_a_loss_and_a_batch_without_labels():
    with pytest.raises(UsageError, match="no loss to train"):
        on("reference", "input x: [2]\noutput y = x -> dense(1)\n").train_step(np.ones((1, 2)))
    x, _ = batch(4)
    with pytest.raises(netlang.NetlangError, match=r"no data for input `label` \(pass the "
                                                   r"labels as y\)"):
        on("reference", STEPPED).train_step(x, steps_per_epoch=1)


# --- gradients --------------------------------------------------------------------------------


def test_gradients_return_loss_gradients_and_outputs_of_one_pass():
    model = on("reference", NORMED, dtype="float64")
    x = np.random.default_rng(2).normal(size=(6, 4))
    y = np.array([0, 1, 1, 0, 1, 0])
    result = model.gradients(x, y)
    assert isinstance(result, Gradients)
    loss, grads, outputs = result   # unpacks like the engines' (loss, gradients, outputs)
    assert loss == result.loss and set(outputs) == {"logits"}
    # training mode: batch statistics, as the loss was computed
    assert np.array_equal(outputs["logits"], model.forward(x, mode="train")["logits"])
    assert set(grads) == {"fc.weight", "fc.bias", "bn.weight", "bn.bias"}   # `out` is frozen
    assert "Gradients(loss=" in repr(result) and "fc.weight: (5, 4)" in repr(result)


def test_every_gradient_matches_float64_central_differences():
    model = on("reference", NORMED, dtype="float64")
    x = np.random.default_rng(3).normal(size=(5, 4))
    y = np.array([0, 1, 1, 0, 1])
    _, grads, _ = model.gradients(x, y)
    params = model.parameters()
    eps = 1e-6
    for name, grad in grads.items():
        value = params[name]
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            up = model.gradients(x, y).loss
            value[index] = saved - eps
            down = model.gradients(x, y).loss
            value[index] = saved
            assert grad[index] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), \
                (name, index)


@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_returned_arrays_are_the_callers_own(engine):
    model = on(engine, LINEAR)
    x = np.array([[1.0, 2.0], [0.5, -1.0]])
    y = np.array([[1.0], [0.0]])
    weights = {k: v.copy() for k, v in model.parameters().items()}
    _, grads, outputs = model.gradients(x, y)
    again = model.gradients(x, y)
    for array in (*grads.values(), *outputs.values()):
        array[...] = 123.0
    assert all(np.array_equal(model.parameters()[k], v) for k, v in weights.items())
    assert not np.array_equal(model.gradients(x, y).outputs["z"], outputs["z"])
    assert np.array_equal(model.gradients(x, y).gradients["fc.weight"],
                          again.gradients["fc.weight"])
    step = model.train_step(x, y)
    step.outputs["z"][...] = 7.0
    assert not np.array_equal(model.forward(x)["z"], step.outputs["z"])


# --- parameters and buffers -------------------------------------------------------------------


def test_parameters_hold_no_buffers_and_buffers_hold_the_running_statistics():
    model = on("reference", NORMED)
    params, buffers = model.parameters(), model.buffers()
    assert list(params) == ["fc.weight", "fc.bias", "bn.weight", "bn.bias", "out.weight",
                            "out.bias"]   # the frozen layer's too
    assert list(buffers) == ["bn.running_mean", "bn.running_var"]
    before = {k: v.copy() for k, v in buffers.items()}
    frozen = params["out.weight"].copy()
    x = np.random.default_rng(4).normal(3.0, 1.0, size=(4, 4))
    model.train_step(x, [0, 1, 0, 1])
    # views: the step's updates show in the arrays handed out before it
    assert not np.array_equal(buffers["bn.running_mean"], before["bn.running_mean"])
    assert np.array_equal(params["out.weight"], frozen)
    buffers["bn.running_var"][...] = 4.0   # writing into a view changes the model
    assert np.array_equal(model.buffers()["bn.running_var"], np.full(5, 4.0, np.float32))


# --- fit's progress -------------------------------------------------------------------------


def test_fit_prints_its_progress_unless_verbose_is_0(capsys):
    x, y = batch(8)
    model = on("reference", STEPPED)
    model.fit(x, y, epochs=1)
    out = capsys.readouterr().out
    assert "training <string> on the reference engine" in out
    assert re.search(r"^epoch 1/1  loss \d", out, re.M)
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr() == ("", "")


# --- the README -------------------------------------------------------------------------------


def test_the_readme_python_snippet_runs_as_written(mnist_dir, tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"## From Python\n\n```python\n(.*?)```", text, re.S)[1]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)   # the snippet's paths are relative (it saves run/)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert "epoch 1/1" in capsys.readouterr().out   # fit printed its progress
    assert namespace["outputs"]["logits"].shape == (4, 10)
    again = netlang.load("run/")
    assert np.array_equal(again.predict(namespace["x"]), namespace["model"].predict(namespace["x"]))


# --- errors: Python keywords in the API, flags on the command line ----------------------------


NO_DATA = """
input x: [2]
input y: int32[]
output z = x -> dense(2)
train { loss cross_entropy(z, y) }
"""


@pytest.mark.parametrize("keywords,cli,python_words,cli_words", [
    ({}, [], "pass `data=` (mnist", "pass --data (mnist"),
    ({"data": "xor", "lr": -1}, ["--data", "xor", "--lr", "-1"],
     "training setting `lr`: the learning rate must be", "--set lr: the learning rate must"),
    ({"data": "xor", "settings": ["epochs"]}, ["--data", "xor", "--set", "epochs"],
     "training setting `epochs`: expected key=value", "--set epochs: expected key=value"),
])
def test_errors_name_keywords_in_python_and_flags_on_the_command_line(
        tmp_path, capsys, keywords, cli, python_words, cli_words):
    path = tmp_path / "nodata.net"
    path.write_text(NO_DATA)
    with pytest.raises(netlang.NetlangError) as info:
        on("reference", str(path)).fit(verbose=0, **keywords)
    assert python_words in str(info.value) and "--" not in str(info.value)
    assert main(["train", str(path), "--device", "reference", "--out",
                 str(tmp_path / "run"), "-q", *cli]) == 2
    err = capsys.readouterr().err
    assert cli_words in err and len(err.strip().splitlines()) == 1, err


def test_flag_words_cover_every_way_the_api_names_a_keyword():
    train_args = Namespace(force=False, data=None, epochs=None, device="cpu", settings=[],
                           lr=None, plot=False, normalize="auto", limit=None)
    cases = {
        "pass `epochs=N` to train longer": "pass --epochs N to train longer",
        'use `device="reference"`': "use --device reference",
        "`plot=True`: no epochs logged yet": "--plot: no epochs logged yet",
        "`limit=` must be a positive integer": "--limit must be a positive integer",
        'which `normalize="standardize"` does not': "which --normalize standardize does not",
        "error: training setting `lr=-1`: bad": "error: --set lr=-1: bad",
        "error: unknown training setting `foo`": "error: unknown training setting `foo`",
    }
    for api, flags in cases.items():
        assert in_flag_words(api, train_args) == flags
        assert in_flag_words(api, Namespace()) == api   # a command without the flag


def _messages(tree: ast.AST):
    """The string parts of the first argument of every `...Error(...)` call and every
    `.message(...)` call: what a Python caller reads."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            if name.endswith("Error") or name == "message":
                for part in ast.walk(node.args[0]):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        yield node.lineno, part.value


def test_no_message_outside_the_cli_names_a_command_line_flag():
    offenders = []
    for path in sorted((ROOT / "netlang").rglob("*.py")):
        if "cli" in path.relative_to(ROOT / "netlang").parts:
            continue
        for line, text in _messages(ast.parse(path.read_text(encoding="utf-8"))):
            if re.search(r"(?<![\w-])--[a-z]", text):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)
