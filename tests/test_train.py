"""Training: the loop, schedules, metrics, overrides, resume and the Python API.

Small models on the synthetic sets, mostly on the NumPy reference engine so the
suite stays fast on two CPU cores; one test drives the default (compiled) engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang import weights as W
from netlang.errors import DataError, NetlangError, UsageError, WeightsError
from netlang.ir.train_config import Choice
from netlang.ops.optim import OPTIMIZERS
from netlang.train import metrics as M
from netlang.train.loop import TrainingInterrupted, train
from netlang.train.overrides import apply_overrides
from netlang.train.schedules import learning_rate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
XOR_TABLE = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)

# A small classifier for the 2-D sets, with dropout so resume must restore the dropout RNG.
SPIRAL_NET = """
input x: [2]
input label: int32[]
h = x -> dense(16) -> tanh -> dropout(0.1)
output logits = h -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.02)
  schedule cosine(warmup = 1)
  batch_size 16
  epochs 5
  seed 3
  val_split 0.2
  metrics accuracy, top_k(1), confusion
}
"""

BLOB_NET = """
input x: [2]
input label: int32[]
output logits = x -> dense(8) -> relu -> dense(2)
train {
  loss cross_entropy(logits, label)
  batch_size 16
  epochs 3
}
"""


def reference(source_or_path) -> netlang.api.Model:
    model = netlang.compile(source_or_path)
    model.device = "reference"
    return model


def one_line(error: NetlangError) -> str:
    text = error.render()
    assert "\n" not in text and "Traceback" not in text
    return text


# --- learning ---------------------------------------------------------------------------------


def test_xor_net_learns_xor_exactly():
    model = reference(EXAMPLES / "xor.net")
    history = model.fit(data="xor", epochs=400)
    assert history.last["accuracy"] == 1.0
    probs = model.predict(XOR_TABLE)
    assert probs.shape == (4, 2)
    assert probs.argmax(axis=1).tolist() == [0, 1, 1, 0]
    assert np.all(probs.max(axis=1) > 0.9)
    result = model.evaluate("xor")
    assert result["accuracy"] == 1.0 and result["confusion"] == [[2, 0], [0, 2]]


def test_xor_on_the_default_compiled_engine():
    model = netlang.compile(EXAMPLES / "xor.net")  # device "cpu": Numba when it supports it
    model.fit(data="xor", epochs=300)
    assert model.predict(XOR_TABLE).argmax(axis=1).tolist() == [0, 1, 1, 0]


def test_perceptron_separates_blobs():
    model = reference(EXAMPLES / "perceptron.net")
    model.fit(data="blobs", epochs=5)
    assert model.evaluate("blobs")["accuracy"] == 1.0
    assert model.evaluate("blobs", split="train")["accuracy"] == 1.0


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_decreases_the_loss(optimizer):
    model = reference(BLOB_NET)
    before = model.evaluate("blobs")["loss"]
    model.fit(data="blobs", optimizer=optimizer)
    assert model.evaluate("blobs")["loss"] < 0.9 * before


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    def weights(seed):
        model = reference(SPIRAL_NET)
        model.reset(seed)
        model.fit(data="spirals", epochs=2, seed=seed)
        return model.parameters()

    a, b, c = weights(7), weights(7), weights(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_early_stopping_stops_when_validation_loss_stops_improving():
    # A frozen model cannot improve: best at epoch 1, then `patience` epochs without progress.
    source = BLOB_NET.replace("dense(2)", "dense(2) as head").replace(
        "epochs 3", "epochs 20\n  freeze head\n  val_split 0.25\n  early_stopping 2")
    source = source.replace("dense(8) -> relu", "dense(8) as hidden -> relu").replace(
        "freeze head", "freeze head, hidden")
    model = reference(source)
    history = model.fit(data="blobs")
    assert history.stopped_early
    assert len(history) == 3 and history.best_epoch == 1
    assert history.last.get("stopped_early") is True


def test_validation_after_each_epoch_and_history():
    model = reference(SPIRAL_NET)
    history = model.fit(data="spirals")
    assert len(history) == 5
    for record in history.records:
        assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_top_1", "lr"} \
            <= set(record)
        assert 0.0 <= record["val_accuracy"] <= 1.0
        assert record["val_top_1"] == record["val_accuracy"]
        assert np.asarray(record["val_confusion"]).sum() == 64  # 20% of the 320 train
    assert history["epoch"] == [1, 2, 3, 4, 5]


def test_fit_from_arrays_with_validation_data():
    from netlang.data import blobs
    x, y = blobs(120, seed=1)
    model = reference(BLOB_NET)
    history = model.fit(x[:100], y[:100], validation_data=(x[100:], y[100:]), epochs=2)
    assert "val_loss" in history.last
    assert model.evaluate(x[100:], y[100:])["examples"] == 20


# --- resume -----------------------------------------------------------------------------------


def _stop_at(step):
    def hook(trainer):
        if trainer.step == step:
            trainer.request_stop()
    return hook


@pytest.mark.parametrize("stop_step", [23, 32])  # inside epoch 2; exactly at an epoch's end
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, stop_step):
    model = reference(SPIRAL_NET)  # 256 training examples / 16 = 16 steps per epoch
    full, engine_full, _ = train(model, data="spirals", out=tmp_path / "a", device="reference")
    with pytest.raises(TrainingInterrupted) as info:
        train(model, data="spirals", out=tmp_path / "b", device="reference",
              on_step=_stop_at(stop_step))
    assert info.value.checkpoint is not None and info.value.step == stop_step
    resumed, engine_resumed, _ = train(model, resume=tmp_path / "b", device="reference")
    for name, value in engine_full.params.items():
        assert np.array_equal(value, engine_resumed.params[name]), name
    for name, value in engine_full.optimizer.state.items():
        assert np.array_equal(value, engine_resumed.optimizer.state[name]), name

    def strip(path):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            r.pop("time_s"), r.pop("samples_per_s", None)
        return records
    assert strip(tmp_path / "a" / "metrics.jsonl") == strip(tmp_path / "b" / "metrics.jsonl")


def test_resume_refuses_a_changed_model_unless_forced(tmp_path):
    model = reference(SPIRAL_NET)
    with pytest.raises(TrainingInterrupted):
        train(model, data="spirals", out=tmp_path, device="reference", on_step=_stop_at(5))
    changed = reference(SPIRAL_NET.replace("epochs 5", "epochs 5  # a comment"))
    with pytest.raises(WeightsError) as info:
        train(changed, resume=tmp_path, device="reference")
    assert "force=True" in one_line(info.value) and "different model source" in info.value.message
    history, _, _ = train(changed, resume=tmp_path, device="reference", force=True)
    assert history.last["epoch"] == 5


def test_an_existing_run_is_not_overwritten_without_force(tmp_path):
    model = reference(BLOB_NET)
    train(model, data="blobs", out=tmp_path, device="reference", overrides=["epochs=1"])
    with pytest.raises(UsageError) as info:
        train(model, data="blobs", out=tmp_path, device="reference")
    assert "continue it with resume=True, or pass force=True" in one_line(info.value)
    train(model, data="blobs", out=tmp_path, device="reference", force=True,
          overrides=["epochs=1"])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_falls_back_when_the_newest_checkpoint_is_truncated(tmp_path):
    model = reference(BLOB_NET)
    straight, engine_straight, _ = train(model, data="blobs", out=tmp_path / "a",
                                         device="reference")
    train(model, data="blobs", out=tmp_path / "b", device="reference", checkpoint_every=0,
          overrides=["epochs=2"])
    newest = tmp_path / "b" / (tmp_path / "b" / "latest").read_text().strip()
    damaged = newest / "weights.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10])   # a disk that filled up mid-write
    with pytest.warns(W.DamagedCheckpointWarning) as caught:
        resumed, engine_resumed, _ = train(model, resume=tmp_path / "b", device="reference",
                                           overrides=["epochs=3"])
    message = str(caught[0].message)
    assert "\n" not in message and str(damaged) in message and "truncated" in message
    assert resumed["epoch"] == [2, 3]   # from the checkpoint of epoch 1
    for name, value in engine_straight.params.items():
        assert np.array_equal(value, engine_resumed.params[name]), name
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_with_more_epochs_continues(tmp_path):
    model = reference(BLOB_NET)
    train(model, data="blobs", out=tmp_path, device="reference", overrides=["epochs=2"])
    history, _, _ = train(model, resume=tmp_path, device="reference", overrides=["epochs=4"])
    assert history["epoch"] == [3, 4]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_run_directory_contents(tmp_path):
    model = reference(BLOB_NET)
    train(model, data="blobs", out=tmp_path, device="reference")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"weights.safetensors", "latest", "metrics.jsonl", "run.json", "summary.json"} <= names
    from netlang.weights import load_checkpoint, read_header
    _, meta = read_header(tmp_path / "weights.safetensors")
    assert meta["source_hash"] == model.source_hash
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.state["epoch"] == 3 and ckpt.state["finished"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0


def test_source_hash_does_not_depend_on_how_the_path_is_spelled(monkeypatch):
    a = netlang.compile(str(EXAMPLES / "xor.net")).source_hash
    monkeypatch.chdir(EXAMPLES)
    assert netlang.compile("xor.net").source_hash == a
    assert netlang.compile("./xor.net").source_hash == a


# --- schedules --------------------------------------------------------------------------------


def test_schedules():
    lr = 0.1
    assert learning_rate(Choice("constant", {}), lr, 7) == lr
    step = Choice("step", {"every": 2, "gamma": 0.5})
    assert [learning_rate(step, lr, e) for e in range(5)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025])
    exp = Choice("exponential", {"gamma": 0.9})
    assert learning_rate(exp, lr, 3) == pytest.approx(0.1 * 0.9 ** 3)
    cosine = Choice("cosine", {"min_lr": 0.0, "warmup": 0})
    assert learning_rate(cosine, lr, 0, epochs=10) == pytest.approx(0.1)
    assert learning_rate(cosine, lr, 5, epochs=10) == pytest.approx(0.05)
    assert learning_rate(cosine, lr, 9, step=9, steps_per_epoch=10, epochs=10) \
        == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    warm_cos = Choice("cosine", {"min_lr": 0.01, "warmup": 2})
    assert learning_rate(warm_cos, lr, 0, step=0, steps_per_epoch=4, epochs=10) \
        == pytest.approx(0.1 / 8)
    assert learning_rate(warm_cos, lr, 2, epochs=10) == pytest.approx(0.1)
    assert learning_rate(warm_cos, lr, 10, epochs=10) == pytest.approx(0.01)
    warmup = Choice("warmup", {"epochs": 2})
    rates = [learning_rate(warmup, lr, e, step=s, steps_per_epoch=2) for e in range(3)
             for s in range(2)]
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_the_trainer_applies_the_schedule():
    model = reference(BLOB_NET)
    history = model.fit(data="blobs", epochs=4, schedule="step(every=2, gamma=0.1)", lr=0.2)
    assert history["lr"] == pytest.approx([0.2, 0.2, 0.02, 0.02])


# --- metrics ----------------------------------------------------------------------------------


def test_accuracy_top_k_and_confusion_on_hand_made_data():
    scores = np.array([[0.1, 0.7, 0.2],     # predicts 1, label 1
                       [0.5, 0.3, 0.2],     # predicts 0, label 2 (2 ranks 3rd)
                       [0.2, 0.3, 0.5],     # predicts 2, label 1 (1 ranks 2nd)
                       [0.6, 0.1, 0.3]])    # predicts 0, label 0
    labels = np.array([1, 2, 1, 0])
    predicted = scores.argmax(axis=1)
    assert M.accuracy(predicted, labels) == 0.5
    assert M.top_k_accuracy(scores, labels, 1) == 0.5
    assert M.top_k_accuracy(scores, labels, 2) == 0.75
    assert M.top_k_accuracy(scores, labels, 3) == 1.0
    assert M.confusion_matrix(predicted, labels, 3).tolist() == [[1, 0, 0],
                                                                 [0, 1, 1],
                                                                 [1, 0, 0]]
    head = M.Head("ce", "cross_entropy", "logits", "label", 3)
    acc = M.MetricAccumulator(head, top_k=(2,), confusion=True)
    acc.add(1.0, 2, scores[:2], labels[:2])
    state = acc.state()
    again = M.MetricAccumulator(head, top_k=(2,), confusion=True)
    again.restore(json.loads(json.dumps(state)))
    again.add(3.0, 2, scores[2:], labels[2:])
    result = again.result()
    assert result["loss"] == 2.0 and result["accuracy"] == 0.5 and result["top_2"] == 0.75
    assert result["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_single_unit_heads_read_as_two_classes():
    sigmoid = M.Head("bce", "binary_cross_entropy", "p", "t", 1)
    assert M.class_scores(sigmoid, np.array([[0.2], [0.8]])).argmax(axis=1).tolist() == [0, 1]
    logits = M.Head("bce", "binary_cross_entropy", "s", "t", 1, logits=True)
    probs = M.probabilities(logits, np.array([[-2.0], [0.0], [3.0]]))
    assert probs[:, 1] == pytest.approx(1 / (1 + np.exp([2.0, 0.0, -3.0])))
    assert probs.sum(axis=1) == pytest.approx(1.0)


def test_format_confusion():
    text = M.format_confusion([[5, 1], [0, 12]])
    assert text.splitlines()[-1].split() == ["1", "|", "0", "12"]


# --- overrides --------------------------------------------------------------------------------


def test_overrides_use_train_section_syntax():
    model = netlang.compile(EXAMPLES / "mlp.net")
    config = apply_overrides(model.train_config, [
        "optimizer=adam(lr=1e-3, beta2=0.99)", "epochs=2 * 3", "batch-size=classes * 4",
        "schedule=step(every=5, gamma=0.5)", "regularize=l2(1e-4) on logits",
        "metrics=accuracy, top_k(5)", "val_split=0.1", "clip_norm=1.0", "early_stopping=2",
        "seed=9", "data=blobs", "freeze=logits"], model.graph)
    assert config.optimizer.name == "adam" and config.optimizer.args["beta2"] == 0.99
    assert (config.epochs, config.batch_size, config.seed) == (6, 40, 9)
    assert config.schedule == Choice("step", {"every": 5, "gamma": 0.5})
    assert config.regularizers[0].layers == ("logits",)
    assert config.metrics == ("accuracy", "top_5") and config.freeze == ("logits",)
    assert (config.val_split, config.clip_norm, config.early_stopping) == (0.1, 1.0, 2)
    assert config.data == "blobs"
    assert model.train_config.optimizer.name == "sgd"  # the model's own config is untouched
    lr_only = apply_overrides(model.train_config, ["lr=0.5"])
    assert lr_only.optimizer.name == "sgd" and lr_only.optimizer.args["lr"] == 0.5
    cleared = apply_overrides(config, ["clip_norm=none", "regularize=none", "schedule=none"])
    assert cleared.clip_norm is None and cleared.regularizers == []
    assert cleared.schedule.name == "constant"


@pytest.mark.parametrize("text, words", [
    ("epochs=0", "at least 1"),
    ("optimizer=adm", "did you mean `adam`"),
    ("epoch=3", "did you mean `epochs`"),
    ("loss=x", "cannot be overridden"),
    ("freeze=nope", "unknown layer `nope`"),
    ("epochs", "key=value"),
    ("schedule=cosine(min_lr=)", "cannot read"),
    ("lr=-1", "positive"),
    ("optimizer=sgd(momentum=2)", "momentum"),
])
def test_bad_overrides_are_one_line_errors(text, words):
    model = netlang.compile(EXAMPLES / "mlp.net")
    with pytest.raises(UsageError) as info:
        apply_overrides(model.train_config, [text], model.graph)
    assert words in one_line(info.value)


# --- the Python API ---------------------------------------------------------------------------


def test_parameters_are_writable_in_place():
    model = reference(BLOB_NET)
    params = model.parameters()
    assert list(params) == ["dense_1.weight", "dense_1.bias", "logits.weight", "logits.bias"]
    before = model.forward(np.zeros((1, 2)))["logits"]
    old_bias = params["logits.bias"].copy()
    params["logits.bias"][...] = [5.0, -5.0]
    after = model.forward(np.zeros((1, 2)))["logits"]
    assert (after - before)[0] == pytest.approx(np.array([5.0, -5.0]) - old_bias)


def test_gradients_match_finite_differences():
    model = netlang.compile(BLOB_NET, dtype="float64").to("reference")
    x = np.array([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]])
    y = np.array([1, 0, 1])
    loss, grads, _ = model.gradients(x, y)
    assert set(grads) == set(model.parameters())
    params = model.parameters()
    w = params["logits.weight"]
    eps = 1e-3
    w[0, 0] += eps
    up = model.gradients(x, y).loss
    w[0, 0] -= 2 * eps
    down = model.gradients(x, y).loss
    w[0, 0] += eps
    assert grads["logits.weight"][0, 0] == pytest.approx((up - down) / (2 * eps), rel=1e-2,
                                                         abs=1e-4)


def test_save_and_load(tmp_path):
    model = reference(EXAMPLES / "xor.net")
    model.fit(data="xor", epochs=50)
    expected = model.predict(XOR_TABLE)
    file = model.save(tmp_path / "xor.safetensors")
    again = netlang.load(file, device="reference")
    assert np.array_equal(again.predict(XOR_TABLE), expected)
    directory = tmp_path / "saved"
    model.save(directory)
    assert np.array_equal(netlang.load(directory, device="reference").predict(XOR_TABLE),
                          expected)
    explicit = netlang.load(EXAMPLES / "xor.net", weights=directory)  # the default engine
    assert np.allclose(explicit.predict(XOR_TABLE), expected, atol=1e-5)


def test_a_model_compiled_from_a_string_loads_from_its_run_directory(tmp_path):
    model = reference(BLOB_NET)
    model.fit(data="blobs", epochs=1, out=tmp_path / "run")
    model.save(tmp_path / "saved")
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    expected = model.predict(x)
    for directory in (tmp_path / "run", tmp_path / "saved"):
        again = netlang.load(directory, device="reference")
        assert again.source_hash == model.source_hash
        assert np.array_equal(again.predict(x), expected), directory


def test_load_refuses_weights_of_another_model(tmp_path):
    model = reference(BLOB_NET)
    model.save(tmp_path / "w.safetensors")
    other = reference(BLOB_NET.replace("epochs 3", "epochs 4"))
    with pytest.raises(WeightsError) as info:
        other.load_weights(tmp_path / "w.safetensors")
    assert "pass force=True" in one_line(info.value) and "--force" not in one_line(info.value)
    other.load_weights(tmp_path / "w.safetensors", force=True)
    with pytest.raises(WeightsError):
        reference(SPIRAL_NET).load_weights(tmp_path / "w.safetensors", force=True)


def test_models_with_several_inputs_take_dicts():
    source = """
    input a: [2]
    input b: [3]
    input label: int32[]
    output logits = (a, b) -> concat -> dense(2)
    train { loss cross_entropy(logits, label)
            epochs 2 }
    """
    model = reference(source)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(32, 2)), rng.normal(size=(32, 3))
    y = (a[:, 0] > 0).astype(np.int64)
    history = model.fit({"a": a, "b": b}, y)
    assert len(history) == 2
    assert model.predict({"a": a, "b": b}).shape == (32, 2)
    with pytest.raises(DataError) as info:
        model.fit(a, y)
    assert "several data inputs" in one_line(info.value)
    with pytest.raises(DataError) as info:
        model.fit(data="blobs")
    assert "several data inputs" in one_line(info.value)
    assert "<input>_train and <input>_test for each of its inputs (a, b, label)" in \
        one_line(info.value)


def test_autoencoder_trains_without_labels():
    source = """
    input x: [4]
    recon = x -> dense(2) -> tanh -> dense(4)
    output recon
    train { loss squared_error(recon, x)
            optimizer adam(lr = 0.01)
            epochs 3 }
    """
    model = reference(source)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    history = model.fit(x)
    assert "accuracy" not in history.last and history.last["loss"] > 0
    assert set(model.predict(x[:2])) == {"recon"}


def test_data_that_does_not_fit_the_model_is_a_clear_error():
    model = reference(EXAMPLES / "mlp.net")
    with pytest.raises(DataError) as info:
        model.fit(data="xor", epochs=1)
    assert "model input is 28x28x1" in one_line(info.value)
    xor_model = reference(EXAMPLES / "xor.net")
    with pytest.raises(DataError) as info:
        xor_model.fit(np.zeros((4, 2)), np.array([0, 1, 2, 0]))
    assert "out of range" in one_line(info.value)


def test_compile_does_not_create_an_engine():
    model = netlang.compile(EXAMPLES / "xor.net")
    assert model._engine is None


# --- progress ---------------------------------------------------------------------------------


def test_progress_plain_lines_and_tty_bar():
    import io

    from netlang.train.progress import Progress
    out, err = io.StringIO(), io.StringIO()
    plain = Progress(tty=False, stream=err, out=out)
    plain.epoch_start(1, 2, 100)
    plain.step(50, 0.5, 0.75)
    plain.epoch_end({"epoch": 1, "loss": 0.5, "accuracy": 0.75, "samples_per_s": 1000.0})
    assert out.getvalue().startswith("epoch 1/2  loss 0.5000  acc 0.7500")
    assert err.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    bar = Progress(tty=True, stream=err, out=out)
    bar.epoch_start(1, 2, 100)
    bar.step(50, 0.5, 0.75)
    bar.epoch_end({"epoch": 1, "loss": 0.5})
    assert "epoch 1/2" in err.getvalue() and "ex/s" in err.getvalue()
    assert out.getvalue().startswith("epoch 1/2  loss 0.5000")


# --- real MNIST (only where the files are already on disk) ---------------------------------


@pytest.mark.mnist
@pytest.mark.slow
def test_small_mlp_learns_real_mnist(mnist_dir):
    source = """
    input image: [28, 28, 1]
    input label: int32[]
    output logits = image -> flatten -> dense(64) -> relu -> dense(10)
    train {
      loss cross_entropy(logits, label)
      optimizer adam(lr = 2e-3)
      batch_size 64
      epochs 1
    }
    """
    model = reference(source)  # the NumPy engine: no compile time, ~5 s for this epoch
    history = model.fit(data="mnist", limit=6000)
    assert history.last["accuracy"] > 0.7
    assert history.last["test_accuracy"] > 0.85
