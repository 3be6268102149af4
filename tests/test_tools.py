"""`netlang bench`, `netlang saliency` and the reconstructions picture of autoencoders.

Shapes are tiny: Numba's compile time dominates, so each compiled engine is built once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as run

import netlang
from netlang.bench import random_feeds
from netlang.errors import UsageError
from netlang.runtime.cpu import CpuEngine
from netlang.runtime.reference import ReferenceEngine
from netlang.train.image_grid import GAP, GAP_LEVEL, as_picture, image_grid
from netlang.train.png import decode_png
from netlang.train.reconstructions import find_reconstruction

ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = {"warmup_s", "median_s", "min_s", "samples_per_s"}
REPORT_KEYS = {"model", "engine", "device", "dtype", "batch", "steps", "forward", "train_step"}

LINEAR = """
input image: [4, 4, 1]
input label: int32[]
output logits = image -> flatten -> dense(3) as scores
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.1)
  batch_size 8
}
"""

# Saliency reads the score before the softmax; no train section: nothing to train.
SOFTMAX_NO_TRAINING = """
input image: [4, 4, 1]
output probs = image -> flatten -> dense(3) as scores -> softmax
"""

CONV = """
input image: [6, 6, 2]
input label: int32[]
output logits = image
  -> conv2d(3, 3, padding = 1) as conv -> relu -> maxpool(2)
  -> batchnorm -> dropout(0.5) -> flatten -> dense(4) as fc
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 1e-3)
  batch_size 4
}
"""

AUTOENCODER = """
input image: [8, 8, 1]
output reconstruction = image
  -> conv2d(2, 3, stride = 2, padding = 1) as enc -> relu
  -> conv_transpose2d(1, 3, stride = 2, padding = 1, output_padding = 1) as dec -> sigmoid
train {
  loss binary_cross_entropy(reconstruction, image)
  optimizer adam(lr = 1e-2)
  batch_size 8
  epochs 2
}
"""



def one_line_error(code, err, words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_a_conv_model_from_python():
    model = netlang.compile(CONV)
    before = {name: p.copy() for name, p in model.parameters().items()}
    result = model.bench(batch=4, steps=3)
    assert set(result) == REPORT_KEYS
    assert result["engine"] == "cpu" and result["batch"] == 4 and result["steps"] == 3
    for key in ("forward", "train_step"):
        timing = result[key]
        assert set(timing) == TIMING_KEYS
        assert all(timing[k] > 0 for k in TIMING_KEYS)
        assert timing["min_s"] <= timing["median_s"]
        assert timing["samples_per_s"] == pytest.approx(4 / timing["median_s"])
    # A fresh engine ran the steps: the model's own weights are untouched.
    assert all(np.array_equal(model.parameters()[n], before[n]) for n in before)


def test_bench_cli_json_and_table(tmp_path, capsys):
    path = tmp_path / "linear.net"
    path.write_text(LINEAR)
    code, out, err = run(capsys, "bench", path, "--batch", "16", "--steps", "2", "--json",
                         "--dtype", "float64")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == REPORT_KEYS and result["dtype"] == "float64"
    assert result["batch"] == 16 and set(result["train_step"]) == TIMING_KEYS
    assert result["forward"]["median_s"] > 0 and result["train_step"]["warmup_s"] > 0
    code, out, err = run(capsys, "bench", path, "--steps", "2", "--device", "reference")
    assert code == 0, err
    lines = out.splitlines()
    assert "batch 8" in lines[0] and "reference engine" in lines[0]  # the train section's
    assert lines[2].split()[0] == "forward" and lines[3].startswith("train step")


def test_bench_without_a_train_section_times_the_forward_pass_only(tmp_path, capsys):
    model = netlang.compile(SOFTMAX_NO_TRAINING)
    result = model.bench(batch=2, steps=2, device="reference")
    assert result["train_step"] is None and result["forward"]["median_s"] > 0
    assert result["batch"] == 2
    path = tmp_path / "forward.net"
    path.write_text(SOFTMAX_NO_TRAINING)
    code, out, err = run(capsys, "bench", path, "--steps", "1", "--device", "reference")
    assert code == 0, err
    assert "batch 32" in out and "no train section: forward only" in out


def test_bench_inputs_fit_their_consumers():
    char_model = netlang.compile(ROOT / "examples" / "char_lstm.net")
    feeds = random_feeds(char_model.graph, 64, np.dtype(np.float32), np.random.default_rng(0))
    for name in ("tokens", "next"):   # token ids below the vocabulary, labels below the classes
        assert feeds[name].shape == (64, 64) and feeds[name].dtype.kind == "i"
        assert feeds[name].min() >= 0 and feeds[name].max() < 96 and feeds[name].max() > 50
    lenet = netlang.compile(ROOT / "examples" / "lenet5.net")
    feeds = random_feeds(lenet.graph, 200, np.dtype(np.float64), np.random.default_rng(0))
    assert feeds["image"].shape == (200, 28, 28, 1) and feeds["image"].dtype == np.float64
    assert set(np.unique(feeds["label"])) == set(range(10))


@pytest.mark.parametrize("argv, words", [
    (["bench", "missing.net"], "no such file"),
    (["bench", str(ROOT / "examples" / "xor.net"), "--batch", "0"], "positive integer"),
    (["bench", str(ROOT / "examples" / "xor.net"), "--dtype", "float16"], "invalid choice"),
])
def test_bench_usage_errors(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_bench_api_checks_its_arguments():
    model = netlang.compile(LINEAR)
    with pytest.raises(UsageError, match="steps must be a positive integer"):
        model.bench(steps=0)
    with pytest.raises(UsageError, match="unknown dtype"):
        model.bench(dtype="int8")


# ---------------------------------------------------------------------------------------------
# saliency


@pytest.fixture(scope="module")
def linear_cpu():
    """The linear model on the compiled engine (compiled once for the module)."""
    model = netlang.compile(LINEAR)
    model.engine  # noqa: B018  (creates it: the CPU engine, seed 0)
    return model


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_saliency_of_a_linear_model_is_the_weight_row_of_the_class(device, linear_cpu):
    model = linear_cpu if device == "cpu" else netlang.compile(LINEAR)
    model.device = device
    assert model.engine.name == device
    x = np.random.default_rng(1).random((6, 4, 4, 1)).astype(np.float32)
    weight = model.parameters()["scores.weight"]            # (classes, 16)
    top = model.forward(x)["logits"].argmax(axis=1)
    assert len(set(top)) > 1                                # not one row for every example
    gradient = model.saliency(x)
    assert gradient.shape == x.shape
    np.testing.assert_allclose(gradient.reshape(6, 16), weight[top], rtol=1e-6)
    np.testing.assert_allclose(model.saliency(x, target=2).reshape(6, 16),
                               weight[[2] * 6], rtol=1e-6)
    chosen = [0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose(model.saliency(x, target=chosen).reshape(6, 16),
                               weight[chosen], rtol=1e-6)
    with pytest.raises(UsageError, match="class 3 is out of range"):
        model.saliency(x, target=3)


def test_saliency_reads_the_score_before_the_softmax():
    model = netlang.compile(SOFTMAX_NO_TRAINING)
    model.device = "reference"
    x = np.random.default_rng(2).random((3, 4, 4, 1)).astype(np.float32)
    weight = model.parameters()["scores.weight"]
    top = model.forward(x)["probs"].argmax(axis=1)
    np.testing.assert_allclose(model.saliency(x).reshape(3, 16), weight[top], rtol=1e-6)


def test_saliency_through_convolutions_matches_finite_differences():
    """Float64, evaluation mode (running statistics, no dropout): the compiled engine and
    the reference agree, and both agree with central differences of the chosen score."""
    graph = netlang.compile(CONV).graph
    reference = ReferenceEngine(graph, seed=1, dtype=np.float64)
    compiled = CpuEngine(graph, seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    for engine in (reference, compiled):   # running statistics away from their start values
        engine.params["batchnorm_1.running_mean"][...] = [0.1, 0.2, 0.3]
        engine.params["batchnorm_1.running_var"][...] = [0.5, 1.5, 2.0]
    x = rng.random((3, 6, 6, 2))
    cotangent = np.zeros((3, 4))
    cotangent[np.arange(3), [0, 2, 3]] = 1
    expected = reference.vjp({"image": x}, "logits", cotangent)["image"]
    np.testing.assert_allclose(compiled.vjp({"image": x}, "logits", cotangent)["image"],
                               expected, rtol=1e-10, atol=1e-12)
    eps = 1e-6
    for index in [(0, 0, 0, 0), (1, 2, 3, 1), (2, 5, 4, 0), (2, 3, 3, 1)]:
        example, cls = index[0], [0, 2, 3][index[0]]
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (reference.forward({"image": plus})["logits"][example, cls]
                   - reference.forward({"image": minus})["logits"][example, cls]) / (2 * eps)
        assert expected[index] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert np.abs(expected).max() > 0.01


def test_saliency_cli_writes_the_input_beside_its_map(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_path = tmp_path / "linear.net"
    model_path.write_text(LINEAR)
    model = netlang.compile(model_path)
    model.device = "reference"
    model.reset(seed=3)
    model.save(tmp_path / "run")
    x = np.random.default_rng(4).random((2, 4, 4, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "map.png"
    code, stdout, err = run(capsys, "saliency", model_path, "--weights", tmp_path / "run",
                            tmp_path / "x.npy", "-o", out, "--zoom", "1", "--device",
                            "reference")
    assert code == 0, err
    top = model.forward(x)["logits"].argmax(axis=1)
    assert stdout.splitlines() == [
        f"example 0: class {top[0]} (score "
        f"{model.forward(x)['logits'][0, top[0]]:.4f} in `logits`)",
        f"example 1: class {top[1]} (score "
        f"{model.forward(x)['logits'][1, top[1]]:.4f} in `logits`)", f"wrote {out}"]
    image = decode_png(out.read_bytes())
    assert image.shape == (4 + GAP + 4, 4 + GAP + 4, 1)    # a row per example: input | map
    weight = model.parameters()["scores.weight"]
    for row, (example, cls) in enumerate(zip(x, top)):
        cells = image[row * (4 + GAP):row * (4 + GAP) + 4, :, 0]
        np.testing.assert_array_equal(cells[:, :4], np.rint(example[..., 0] * 255))
        magnitude = np.abs(weight[cls]).reshape(4, 4)
        np.testing.assert_array_equal(cells[:, 4 + GAP:],
                                      np.rint(magnitude / magnitude.max() * 255))
        assert (cells[:, 4:4 + GAP] == GAP_LEVEL).all()
    # The default name, in the working directory, and the default zoom (about 128 pixels).
    code, _, err = run(capsys, "saliency", model_path, "--weights", tmp_path / "run",
                       tmp_path / "x.npy", "--class", "1", "--device", "reference")
    assert code == 0, err
    assert decode_png((tmp_path / "x_saliency.png").read_bytes()).shape[0] == 2 * 128 + 32


def test_saliency_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_path = tmp_path / "linear.net"
    model_path.write_text(LINEAR)
    model = netlang.compile(model_path)
    model.device = "reference"
    model.save(tmp_path / "run")
    base = ["saliency", model_path, "--weights", tmp_path / "run", "--device", "reference"]
    text = tmp_path / "input.txt"
    text.write_text("not an array")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 3)))
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((4, 4, 1), dtype=np.float32))
    for argv, words in (([text], "expected an .npy array or a PNG image"),
                        ([broken], "PNG"),
                        ([wrong], "model input is 4x4x1"),
                        ([tmp_path / "none.npy"], "no such file"),
                        ([good, "--class", "7"], "class 7 is out of range"),
                        ([good, "-o", "map.jpg"], "written as a PNG")):
        code, _, err = run(capsys, *base, *argv)
        one_line_error(code, err, words)
    # An output that is not one score per class has nothing to rank.
    with pytest.raises(UsageError, match="one score per class"):
        netlang.compile(ROOT / "examples" / "conv_autoencoder.net").saliency(
            np.zeros((1, 28, 28, 1)))
    # Integer inputs (token ids) have no gradient.
    tokens = netlang.compile("input tokens: int32[4]\n"
                             "output logits = tokens -> embedding(10, 3) -> flatten -> dense(2)\n")
    tokens.device = "reference"
    with pytest.raises(UsageError, match="float inputs"):
        tokens.saliency(np.zeros((1, 4), dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# reconstructions


def test_autoencoders_are_recognised_from_their_loss():
    found = find_reconstruction(netlang.compile(ROOT / "examples" / "conv_autoencoder.net").graph)
    assert found is not None and found.input == "image" and not found.logits
    tied = find_reconstruction(netlang.compile(ROOT / "examples" / "autoencoder_tied.net").graph)
    assert tied is not None and tied.input == "image"
    for classifier in ("lenet5.net", "mlp.net", "multitask.net", "xor.net"):
        assert find_reconstruction(netlang.compile(ROOT / "examples" / classifier).graph) is None
    # A flattened digit is drawn as a square; other vectors as a strip.
    assert as_picture(np.zeros(784)).shape == (28, 28, 1)
    assert as_picture(np.zeros(5)).shape == (1, 5, 1)
    assert as_picture(np.zeros((3, 2, 4))).shape == (3, 2, 1)


def test_training_an_autoencoder_writes_inputs_over_reconstructions(tmp_path, capsys):
    model_path = tmp_path / "ae.net"
    model_path.write_text(AUTOENCODER)
    rng = np.random.default_rng(0)
    x_train = (rng.random((32, 8, 8, 1)) * 255).astype(np.uint8)
    x_test = (rng.random((12, 8, 8, 1)) * 255).astype(np.uint8)
    data = tmp_path / "images.npz"
    np.savez(data, x_train=x_train, y_train=np.zeros(32, np.int64), x_test=x_test,
             y_test=np.zeros(12, np.int64))
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", model_path, "--data", data, "--out", out,
                            "--device", "reference")
    assert code == 0, err
    picture = out / "reconstructions.png"
    assert f"wrote {picture}" in stdout
    image = decode_png(picture.read_bytes())
    assert image.shape == (8 + GAP + 8, 8 * 8 + 7 * GAP, 1)   # 8 inputs over 8 outputs
    model = netlang.load(out, device="reference")
    inputs = x_test[:8].astype(np.float32) / 255
    outputs = model.forward(inputs)["reconstruction"]
    for i in range(8):
        left = i * (8 + GAP)
        np.testing.assert_array_equal(image[:8, left:left + 8], x_test[i])
        np.testing.assert_array_equal(image[8 + GAP:, left:left + 8],
                                      np.rint(outputs[i] * 255).astype(np.uint8))
    # The same picture from Python.
    again = model.reconstructions(inputs, path=tmp_path / "again.png")
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(decode_png((tmp_path / "again.png").read_bytes()), image)


def test_a_classifier_gets_no_reconstructions(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", ROOT / "examples" / "xor.net", "--epochs", "1",
                       "--out", out, "--device", "reference", "-q")
    assert code == 0, err
    assert not (out / "reconstructions.png").exists()
    with pytest.raises(UsageError, match="reconstructs none of its inputs"):
        netlang.compile(ROOT / "examples" / "xor.net").reconstructions(np.zeros((2, 2)))


def test_image_grid_pads_mixed_cells_and_colour():
    grey = np.full((2, 2, 1), 10, np.uint8)
    rgb = np.full((3, 1, 3), 200, np.uint8)
    grid = image_grid([[grey, rgb], [rgb]], gap=1)
    assert grid.shape == (3 + 1 + 3, 2 + 1 + 1, 3)
    assert (grid[:2, :2] == 10).all() and (grid[:3, 3] == 200).all()
    assert (grid[2, :2] == GAP_LEVEL).all() and (grid[4:, :1] == 200).all()
