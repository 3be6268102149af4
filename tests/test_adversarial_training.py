"""Adversarial training (`adversarial fgsm(...)` / `pgd(...)` in a train section,
netlang/train/adversarial.py): one step against the hand-computed mixture, one optimiser step
per batch, robustness gained on a synthetic task, seeds and exact resumption, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import engines

import netlang
from netlang.errors import NetlangError, UsageError
from netlang.train.adversarial import AdversarialSteps
from netlang.train.loop import train
from netlang.train.trainer import TrainingInterrupted

# A linear classifier: logits = x · Wᵀ + b, so every gradient has a closed form.
LINEAR = """
input x: [4]
input label: int32[]
output logits = x -> dense(3) as scores
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.5)
  batch_size 6
  epochs 1
  SETTING
}
"""

# Two classes, s = ±1.  Feature 0 is robust: s + noise 0.4, so an eps of 0.4 cannot flip it
# on its own.  The other 40 are weak: s·0.3 + noise 1 each, together worth a little less than
# the robust one to a plain classifier, and all of them flipped by an eps above 0.3 (Tsipras
# et al., 2019, build the same contrast).  Plain training leans on them; adversarial training
# learns to trust feature 0 more.
WEAK = 40
ROBUST_SOURCE = f"""
input x: [{WEAK + 1}]
input label: int32[]
output logits = x -> dense(2) as out
train {{
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.05)
  batch_size 50
  epochs 8
  SETTING
}}
"""


def robust_task(n: int, seed: int):
    """(x, labels) of the task above."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    s = 2.0 * labels - 1.0
    x = np.empty((n, WEAK + 1))
    x[:, 0] = s + 0.4 * rng.normal(size=n)
    x[:, 1:] = 0.3 * s[:, None] + rng.normal(size=(n, WEAK))
    return x.astype(np.float32), labels


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def linear_gradients(weight, bias, x, y):
    """(∂L/∂W, ∂L/∂b, ∂L/∂x) of the mean cross-entropy of the linear classifier."""
    delta = (softmax(x @ weight.T + bias) - np.eye(3)[y]) / len(x)
    return delta.T @ x, delta.sum(axis=0), delta @ weight


@pytest.mark.parametrize("device", engines("reference", "cpu"))
def test_one_step_follows_the_hand_computed_mixture(device):
    eps, mix = 0.15, 0.3
    model = netlang.compile(LINEAR.replace("SETTING", f"adversarial fgsm(eps = {eps}, "
                                                      f"weight = {mix})"), dtype="float64")
    model.to(device)
    rng = np.random.default_rng(5)
    weight, bias = model.parameters()["scores.weight"], model.parameters()["scores.bias"]
    weight[...] = rng.normal(size=weight.shape)
    bias[...] = rng.normal(size=bias.shape)
    w0, b0 = weight.copy(), bias.copy()
    x = rng.uniform(0.0, 1.0, size=(6, 4))
    y = np.array([0, 1, 2, 2, 1, 0])
    model.fit(x, y, verbose=0, shuffle=False)

    _, _, input_gradient = linear_gradients(w0, b0, x, y)
    attacked = x + eps * np.sign(input_gradient)   # arrays are not clipped
    clean_w, clean_b, _ = linear_gradients(w0, b0, x, y)
    attacked_w, attacked_b, _ = linear_gradients(w0, b0, attacked, y)
    lr = 0.5
    np.testing.assert_allclose(weight, w0 - lr * ((1 - mix) * clean_w + mix * attacked_w),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(bias, b0 - lr * ((1 - mix) * clean_b + mix * attacked_b),
                               rtol=0, atol=1e-12)
    # One optimiser step for the batch, not one per pass.
    assert model.engine.optimizer.steps == 1


def test_the_mixed_gradient_matches_central_differences_of_the_mixed_loss():
    """With x_adv held fixed, the step's gradient is that of (1 - w)·L(x) + w·L(x_adv):
    checked against float64 central differences of that loss."""
    eps, mix = 0.2, 0.7
    model = netlang.compile(LINEAR.replace("SETTING", f"adversarial fgsm(eps = {eps}, "
                                                      f"weight = {mix})"), dtype="float64")
    model.to("reference")
    rng = np.random.default_rng(8)
    params = model.parameters()
    for value in params.values():
        value[...] = rng.normal(size=value.shape)
    x = rng.uniform(0.0, 1.0, size=(6, 4))
    y = np.array([2, 1, 0, 0, 1, 2])
    before = {name: value.copy() for name, value in params.items()}
    _, _, input_gradient = linear_gradients(before["scores.weight"], before["scores.bias"], x, y)
    attacked = x + eps * np.sign(input_gradient)

    def mixed_loss():
        return (1 - mix) * model.engine.loss({"x": x, "label": y}) \
            + mix * model.engine.loss({"x": attacked, "label": y})

    numeric = {}
    h = 1e-6
    for name, value in params.items():
        numeric[name] = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            value[index] += h
            up = mixed_loss()
            value[index] -= 2 * h
            down = mixed_loss()
            value[index] += h
            numeric[name][index] = (up - down) / (2 * h)
    model.fit(x, y, verbose=0, shuffle=False)
    for name, value in params.items():   # sgd without momentum: Δ = -lr · gradient
        np.testing.assert_allclose((before[name] - value) / 0.5, numeric[name], rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.parametrize("device", engines("reference", "cpu"))
def test_adversarial_training_keeps_accuracy_under_attack_that_plain_training_loses(device):
    x, y = robust_task(1000, seed=0)
    test_x, test_y = robust_task(1000, seed=1)
    eps = 0.4
    results = {}
    for setting in ("", f"adversarial fgsm(eps = {eps}, weight = 0.5)"):
        model = netlang.compile(ROBUST_SOURCE.replace("SETTING", setting))
        model.to(device)
        model.fit(x, y, verbose=0)
        results[setting] = model.attack(test_x, test_y, method="fgsm", eps=eps)
    plain, adversarial = results.values()
    assert plain.accuracy > 0.95 and adversarial.accuracy > 0.9
    # Measured on both engines: about 0.40 after plain training, 0.90 after adversarial.
    assert plain.adversarial_accuracy < 0.6
    assert adversarial.adversarial_accuracy > plain.adversarial_accuracy + 0.3


def test_a_seed_gives_one_run_and_an_interrupted_run_resumes_exactly(tmp_path):
    x, y = robust_task(300, seed=2)
    source = ROBUST_SOURCE.replace("SETTING", "adversarial pgd(eps = 0.3, steps = 3, "
                                              "weight = 0.5)").replace("epochs 8", "epochs 2")
    model = netlang.compile(source)
    data = {"x": x, "label": y}

    def stop(trainer):
        if trainer.step == 9:   # in the second epoch, mid-way
            trainer.request_stop()

    _, full, _ = train(model, x=data, device="cpu", out=tmp_path / "a", evaluate_test=False)
    _, again, _ = train(model, x=data, device="cpu", out=tmp_path / "b", evaluate_test=False)
    with pytest.raises(TrainingInterrupted):
        train(model, x=data, device="cpu", out=tmp_path / "c", on_step=stop,
              evaluate_test=False)
    _, resumed, _ = train(model, x=data, device="cpu", resume=tmp_path / "c",
                          evaluate_test=False)
    _, other_seed, _ = train(model, x=data, device="cpu", evaluate_test=False,
                             overrides=["seed=1"])
    for name, value in full.params.items():
        assert np.array_equal(value, again.params[name]), name
        assert np.array_equal(value, resumed.params[name]), name
    assert not np.array_equal(full.params["out.weight"], other_seed.params["out.weight"])
    assert full.optimizer.steps == resumed.optimizer.steps == 12   # 6 batches, 2 epochs

    def records(path):
        out = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        for record in out:
            record.pop("time_s"), record.pop("samples_per_s", None), record.pop("compile_s", None)
        return out
    assert records(tmp_path / "a") == records(tmp_path / "c")


def test_pgd_start_is_drawn_from_the_run_generator():
    """Two steps from the same weights but different generator states attack differently:
    PGD's start is random, and it is the run's generator that draws it."""
    # A step too short to reach the ball's corner from the start, where a linear model's
    # attack would end whatever the start.
    model = netlang.compile(LINEAR.replace("SETTING", "adversarial pgd(eps = 0.1, steps = 2, "
                                                      "step_size = 0.01)"), dtype="float64")
    model.to("reference")
    _, engine, config = train(model, x={"x": np.full((6, 4), 0.5), "label": np.zeros(6, int)},
                              device="reference", evaluate_test=False)
    steps = AdversarialSteps(engine, model.binding, config.adversarial, None)
    feeds = {"x": np.full((6, 4), 0.5), "label": np.array([0, 1, 2, 0, 1, 2])}
    state = engine.rng.bit_generator.state
    first = steps.attacked(feeds)
    engine.rng.bit_generator.state = state
    assert np.array_equal(first, steps.attacked(feeds))
    assert not np.array_equal(first, steps.attacked(feeds))
    assert (steps.steps, steps.step_size) == (2, 0.01)
    assert np.abs(first - feeds["x"]).max() <= 0.1 + 1e-12


def test_attacked_inputs_stay_in_the_data_range():
    model = netlang.compile(LINEAR.replace("SETTING", "adversarial fgsm(eps = 0.3)"),
                            dtype="float64")
    _, engine, config = train(model, x={"x": np.full((6, 4), 0.5), "label": np.zeros(6, int)},
                              device="reference", evaluate_test=False)
    steps = AdversarialSteps(engine, model.binding, config.adversarial, (0.0, 1.0))
    x = np.array([[0.0, 1.0, 0.9, 0.1]] * 6)
    attacked = steps.attacked({"x": x, "label": np.array([0, 1, 2, 0, 1, 2])})
    assert attacked.min() >= 0.0 and attacked.max() <= 1.0
    assert np.abs(attacked - x).max() <= 0.3 + 1e-12
    assert steps.weight == 0.5   # the default mixture


@pytest.mark.parametrize("device", engines("cuda"))
def test_the_cuda_engine_refuses_in_one_line(device):
    model = netlang.compile(LINEAR.replace("SETTING", "adversarial fgsm(eps = 0.1)"))
    with pytest.raises(UsageError) as caught:
        train(model, x={"x": np.zeros((6, 4)), "label": np.zeros(6, int)}, device=device,
              evaluate_test=False)
    assert "\n" not in str(caught.value)
    assert "adversarial training runs on the cpu and reference engines" in str(caught.value)


@pytest.mark.parametrize("setting, message", [
    ("adversarial fgsm(eps = 0)", "`eps` must be greater than 0, not 0"),
    ("adversarial fgsm(eps = -0.1)", "`eps` must be greater than 0, not -0.1"),
    ("adversarial fgsm(eps = 0.1, weight = 1.5)", "`weight` must be at most 1, not 1.5"),
    ("adversarial pgd(eps = 0.1, steps = 0)", "`steps` must be at least 1, not 0"),
    ("adversarial bim(eps = 0.1)", "unknown attack `bim`"),
])
def test_bad_settings_are_one_line_errors_at_their_place(setting, message):
    with pytest.raises(NetlangError) as caught:
        netlang.compile(LINEAR.replace("SETTING", setting))
    text = str(caught.value)
    assert message in text
    assert ":10:" in text.splitlines()[0]   # the setting's line


def test_an_integer_data_input_cannot_be_attacked():
    source = """
input tokens: int32[5]
input label: int32[]
output logits = tokens -> embedding(20, 4) -> flatten -> dense(2)
train {
  loss cross_entropy(logits, label)
  adversarial fgsm(eps = 0.1)
}
"""
    with pytest.raises(NetlangError) as caught:
        netlang.compile(source)
    assert "input `tokens` holds integers" in str(caught.value)


def test_set_overrides_it_and_a_phase_may_set_it():
    x, y = robust_task(100, seed=3)
    data = {"x": x, "label": y}
    model = netlang.compile(ROBUST_SOURCE.replace("SETTING", "").replace("epochs 8", "epochs 1"))
    _, _, config = train(model, x=data, device="reference", evaluate_test=False,
                         overrides=["adversarial=pgd(eps = 0.2, steps = 2)"])
    assert config.adversarial.name == "pgd"
    assert config.adversarial.args == {"eps": 0.2, "steps": 2, "step_size": None, "weight": 0.5}
    robust = netlang.compile(ROBUST_SOURCE.replace("SETTING", "adversarial fgsm(eps = 0.3)"))
    _, _, config = train(robust, x=data, device="reference", evaluate_test=False,
                         overrides=["epochs=1", "adversarial=none"])
    assert config.adversarial is None   # the same model trained plainly, for comparison

    # Plain training, then a robust stage: only the second phase's steps attack.
    phased = netlang.compile(ROBUST_SOURCE.replace("SETTING", "phases sequence(plain, robust)")
                             + "train plain {\n  epochs 1\n}\n"
                             + "train robust {\n  epochs 1\n  adversarial fgsm(eps = 0.4)\n}\n")
    attacked = []
    original = AdversarialSteps.attacked

    def spy(self, feeds):
        attacked.append(len(feeds["x"]))
        return original(self, feeds)
    AdversarialSteps.attacked = spy
    try:
        history, _, _ = train(phased, x=data, device="reference", evaluate_test=False)
    finally:
        AdversarialSteps.attacked = original
    assert [record["phase"] for record in history.records] == ["plain", "robust"]
    assert attacked == [50, 50]   # the robust epoch's two batches, and none of plain's


def test_running_statistics_are_refused_from_the_file_and_from_set():
    source = ROBUST_SOURCE.replace("-> dense(2) as out", "-> batchnorm as norm -> dense(2) as out")
    with pytest.raises(NetlangError) as caught:
        netlang.compile(source.replace("SETTING", "adversarial fgsm(eps = 0.1)"))
    assert "running statistics (layer `norm`) is pending" in str(caught.value)
    x, y = robust_task(100, seed=4)
    with pytest.raises(UsageError) as caught:
        train(netlang.compile(source.replace("SETTING", "")), x={"x": x, "label": y},
              device="reference", evaluate_test=False,
              overrides=["adversarial=fgsm(eps = 0.1)"])
    assert "running statistics (layer `norm`) is pending" in str(caught.value)
