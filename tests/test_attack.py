"""Adversarial examples (netlang/attack.py, `Model.attack`, `netlang attack`): FGSM against a
hand computation, PGD's ball and clipping, a tiny trained model, the valid range the data
sets know, and errors in each caller's words."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import engines
from conftest import run_cli as run

import netlang
from netlang.data import Dataset, normalize
from netlang.errors import UsageError

# A linear classifier: logits = x · Wᵀ + b, so the loss gradient has a closed form.
LINEAR = """
input x: [4]
input label: int32[]
output logits = x -> dense(3) as scores
train {
  loss cross_entropy(logits, label)
  batch_size 8
}
"""

# A small net trained in the tests on the blobs set (two classes).
BLOBS = """
input x: [2]
input label: int32[]
output logits = x -> dense(16) as hidden -> relu -> dense(2) as out
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.01)
  batch_size 32
  epochs 20
  metrics accuracy
  data blobs
}
"""



def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("device", engines("reference", "cpu", "cuda"))
def test_fgsm_moves_each_value_by_eps_along_the_sign_of_the_hand_computed_gradient(device):
    model = netlang.compile(LINEAR, dtype="float64")
    model.to(device)
    rng = np.random.default_rng(3)
    weight, bias = model.parameters()["scores.weight"], model.parameters()["scores.bias"]
    weight[...] = rng.normal(size=weight.shape)
    bias[...] = rng.normal(size=bias.shape)
    x = rng.uniform(0.2, 0.8, size=(6, 4))
    y = np.array([0, 1, 2, 0, 1, 2])
    # d(mean cross-entropy)/dx = (softmax(z) - onehot(y)) W / batch
    probabilities = softmax(x @ weight.T + bias)
    gradient = (probabilities - np.eye(3)[y]) @ weight / len(x)
    eps = 0.1
    result = model.attack(x, y, method="fgsm", eps=eps)
    np.testing.assert_allclose(result.adversarial, x + eps * np.sign(gradient), rtol=0,
                               atol=1e-12)
    assert result.steps == 1 and result.step_size == eps and result.clip is None
    assert result.max_perturbation == pytest.approx(eps)
    expected = float((np.argmax(result.adversarial @ weight.T + bias, axis=1) == y).mean())
    assert result.adversarial_accuracy == pytest.approx(expected)
    assert result.accuracy == pytest.approx(float((probabilities.argmax(axis=1) == y).mean()))

    # Clipped into [0.25, 0.75]: what the step pushes past a bound stays on it.
    clipped = model.attack(x, y, method="fgsm", eps=eps, clip=(0.25, 0.75))
    np.testing.assert_allclose(clipped.adversarial,
                               np.clip(x + eps * np.sign(gradient), 0.25, 0.75), atol=1e-12)


@pytest.fixture(scope="module")
def blobs_model():
    model = netlang.compile(BLOBS)
    model.to("reference")
    model.fit(verbose=0)
    return model


def test_attacks_on_a_trained_model_beat_random_signs_and_stay_in_the_ball(blobs_model):
    model = blobs_model
    fgsm = model.attack(data="blobs", method="fgsm", eps=1.5)
    assert fgsm.accuracy > 0.95 and fgsm.examples == 40
    assert fgsm.adversarial_accuracy < fgsm.accuracy - 0.2
    # The direction matters: random signs of the same size barely hurt.
    x = fgsm.adversarial - fgsm.adversarial  # zeros shaped like the inputs
    clean = netlang.train.prepared_data.prepare_data("blobs", model.binding,
                                                     model.train_config).test
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=x.shape).astype(np.float32)
    noisy = model.evaluate({"x": clean["x"] + 1.5 * signs}, clean["label"])["accuracy"]
    assert noisy > fgsm.adversarial_accuracy + 0.2

    pgd = model.attack(data="blobs", method="pgd", eps=1.5, steps=8, clip=(-4.0, 4.0))
    assert (pgd.steps, pgd.step_size) == (8, pytest.approx(2.5 * 1.5 / 8))
    assert pgd.adversarial_accuracy <= fgsm.adversarial_accuracy
    assert pgd.max_perturbation <= 1.5 + 1e-6
    assert pgd.adversarial.min() >= -4.0 and pgd.adversarial.max() <= 4.0
    again = model.attack(data="blobs", method="pgd", eps=1.5, steps=8, clip=(-4.0, 4.0))
    np.testing.assert_array_equal(again.adversarial, pgd.adversarial)   # seeded start
    assert set(pgd.figures()) == {"method", "eps", "steps", "step_size", "clip", "examples",
                                  "accuracy", "adversarial_accuracy", "max_perturbation"}


def test_the_valid_range_comes_from_how_the_data_was_read():
    images = np.arange(2 * 4, dtype=np.uint8).reshape(2, 4) * 30
    labels = np.array([0, 1])
    raw = Dataset(images, labels, images, labels, "tiny", 2)
    assert normalize(raw, "auto").value_range == (0.0, 1.0)      # uint8 scaled: [0, 1]
    assert normalize(raw, "none").value_range == (0.0, 255.0)    # uint8 as it is
    assert normalize(raw, "standardize").value_range is None     # one range per feature
    floats = Dataset(images.astype(np.float32), labels, images.astype(np.float32), labels,
                     "tiny", 2)
    assert normalize(floats, "auto").value_range is None         # nothing known


def test_mnist_is_kept_in_zero_one(mnist_dir, monkeypatch):
    monkeypatch.setenv("NETLANG_DATA", str(mnist_dir.parent))
    model = netlang.compile(LINEAR.replace("[4]", "[28, 28, 1]").replace(
        "x -> dense(3)", "x -> flatten -> dense(10)"))
    model.to("reference")
    result = model.attack(data="mnist", limit=20, method="fgsm", eps=0.3)
    assert result.clip == (0.0, 1.0)
    assert result.adversarial.min() >= 0.0 and result.adversarial.max() <= 1.0


@pytest.mark.parametrize("settings, words", [
    (dict(method="fgm", eps=0.1), "unknown attack `fgm`: use fgsm or pgd"),
    (dict(method="fgsm", eps=0), "`eps=` must be a positive number, got 0"),
    (dict(method="fgsm", eps=0.1, steps=3), "`steps=` and `step_size=` are PGD's"),
    (dict(method="pgd", eps=0.1, steps=0), "`steps=` must be a positive integer, got 0"),
    (dict(method="pgd", eps=0.1, clip=(1, 0)), "`clip=` must have low < high"),
])
def test_bad_settings_are_one_line_errors_in_python_words(settings, words):
    model = netlang.compile(LINEAR)
    model.to("reference")
    with pytest.raises(UsageError) as info:
        model.attack(np.zeros((2, 4), np.float32), np.array([0, 1]), **settings)
    assert words in info.value.message


def test_the_command_reports_both_accuracies_and_writes_the_attacked_inputs(
        blobs_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blobs.net").write_text(BLOBS)
    blobs_model.save(tmp_path / "run")
    code, out, err = run(capsys, "attack", "blobs.net", "--weights", "run", "--data", "blobs",
                         "--method", "pgd", "--eps", "1.5", "--steps", "8", "--clip=-4,4",
                         "--device", "reference", "--json", "-o", "adv.npy")
    assert code == 0, err
    figures = json.loads(out)
    expected = blobs_model.attack(data="blobs", method="pgd", eps=1.5, steps=8,
                                  clip=(-4.0, 4.0))
    assert figures["accuracy"] == pytest.approx(expected.accuracy)
    assert figures["adversarial_accuracy"] == pytest.approx(expected.adversarial_accuracy)
    assert figures["clip"] == [-4.0, 4.0] and figures["data"] == "blobs"
    np.testing.assert_array_equal(np.load("adv.npy"), expected.adversarial)

    code, out, err = run(capsys, "attack", "blobs.net", "--weights", "run", "--data", "blobs",
                         "--method", "fgsm", "--eps", "1.5", "--device", "reference")
    assert code == 0, err
    lines = out.splitlines()
    assert "no known range" in lines[0] and lines[1].startswith("accuracy ")
    assert lines[2].startswith("adversarial accuracy ")

    # The command names its flags where Python names keywords.
    code, _, err = run(capsys, "attack", "blobs.net", "--weights", "run", "--data", "blobs",
                       "--method", "fgsm", "--eps", "0.1", "--steps", "3",
                       "--device", "reference")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--steps and --step-size are PGD's (--method pgd)" in err
    code, _, err = run(capsys, "attack", "blobs.net", "--weights", "run", "--method", "fgsm",
                       "--eps", "0.1", "-o", "adv.png", "--device", "reference")
    assert code == 2 and "end it in .npy" in err
    code, _, err = run(capsys, "attack", "blobs.net", "--weights", "run", "--method", "fgsm",
                       "--eps", "0.1", "--clip", "0,1,2", "--device", "reference")
    assert code == 2 and "--clip 0,1,2: expected LO,HI (such as 0,1) or none" in err
