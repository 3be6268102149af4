"""Sampling ops and noise inputs (netlang/ops/noise.py): the draws' distributions, the same
draws on every engine from the same seed, noise inputs in the language and in the data
binding, and `netlang sample` for a model with noise inputs.  The ops' gradients are checked
in test_gradients.py and their kernels against the reference in test_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import engines, straight_and_resumed

import netlang
from netlang.cli import main
from netlang.errors import DataError, UsageError
from netlang.frontend.format import format_source
from netlang.ops.noise import masking_array, normal_array, uniform_array
from netlang.ops.norm import dropout_mask_array
from netlang.runtime import make_engine
from netlang.train.png import read_png

# Every sampling op and a noise input, each an output of its own, so each draw is compared.
# The ops read |x| (x is positive): computed exactly on every engine, so any difference is the
# draws', and not a view of an input, which a compiled engine cannot return as an output.
ALL_DRAWS = """
input x: [6]
input z: [5] ~ normal(mean = 1, std = 2)
input u: [3] ~ uniform(low = -1, high = 1)
ax = x -> abs
output a = ax -> gaussian_noise(0.5)
output b = ax -> masking_noise(0.3)
output c = (x, ax) -> sample_normal
output d = ax -> bernoulli
output e = z -> dense(2)
output f = u -> dense(2)
"""

GENERATOR = """
input z: [4] ~ normal
input x: [3]
input t: [3]
output image = z -> dense(16) -> sigmoid
h = x -> dense(4)
q = h + z
output y = q -> dense(3)
train { loss mse(y, t) }
"""


# -- the draws ---------------------------------------------------------------------------------

def test_draws_follow_their_distributions():
    normal = normal_array((400, 500), key=7, mean=1.0, std=2.0, dtype=np.float64)
    assert abs(normal.mean() - 1.0) < 0.02 and abs(normal.std() - 2.0) < 0.02
    # Box–Muller's tails: the share beyond two standard deviations is the normal's 4.55%.
    assert abs(np.mean(np.abs(normal - 1.0) > 4.0) - 0.0455) < 0.002
    uniform = uniform_array((400, 500), key=8, low=-1.0, high=3.0, dtype=np.float64)
    assert uniform.min() > -1.0 and uniform.max() < 3.0 and abs(uniform.mean() - 1.0) < 0.01
    mask = masking_array((400, 500), key=9, p=0.3, dtype=np.float32)
    assert set(np.unique(mask)) == {0.0, 1.0} and abs(1 - mask.mean() - 0.3) < 0.005


def test_draws_are_elementwise_functions_of_key_and_index():
    """Element i depends on (key, i) alone: a longer draw begins with the shorter one, and
    another key gives other values."""
    short, long = normal_array((10,), key=3), normal_array((4, 10), key=3)
    np.testing.assert_array_equal(long.reshape(-1)[:10], short)
    assert not np.array_equal(normal_array((10,), key=4), short)


def test_dropout_masks_are_unchanged():
    """The generator was generalised for the noise ops; dropout's masks must not move (these
    figures are those of the code before the noise ops)."""
    mask = dropout_mask_array((5, 40), 0.3, np.random.default_rng(11), np.float32)
    kept = round(float(mask.sum()) * 0.7)
    assert kept == 132
    assert np.flatnonzero(mask.reshape(-1) == 0)[:12].tolist() == [8, 14, 16, 19, 20, 22, 23,
                                                                   24, 27, 31, 33, 35]


def _draws(engine_name: str, dtype: str, seed: int, mode: str = "train") -> dict:
    model = netlang.compile(ALL_DRAWS)
    engine = make_engine(model.graph, seed=seed, device=engine_name, dtype=dtype)
    x = np.random.default_rng(0).uniform(0.1, 0.9, (5, 6)).astype(dtype)
    return engine.forward({"x": x}, mode)


@pytest.mark.parametrize("engine_name", engines("cpu", "cuda"))
def test_every_engine_draws_what_the_reference_draws(engine_name):
    """The same seed gives the same draws on every engine: in float32 to the last bit; in
    float64 to the last bits of the C library's log and cos (NumPy's and the compiled code's
    may round one ulp apart)."""
    for mode in ("train", "eval"):
        expected, actual = _draws("reference", "float32", 5, mode), _draws(engine_name,
                                                                           "float32", 5, mode)
        for name in "abcd":
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name} {mode}")
        for name in "ef":   # a product after the draw: the order of its sums may differ
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, err_msg=name)
    expected, actual = _draws("reference", "float64", 5), _draws(engine_name, "float64", 5)
    for name in "abcd":
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-14, atol=1e-14)


def test_draws_are_reproducible_per_seed_and_training_only_where_said():
    first, again, other = _draws("reference", "float32", 5), _draws("reference", "float32", 5), \
        _draws("reference", "float32", 6)
    for name in "abcdef":
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name]), name
    evaluation = _draws("reference", "float32", 5, "eval")
    x = np.random.default_rng(0).uniform(0.1, 0.9, (5, 6)).astype(np.float32)
    np.testing.assert_array_equal(evaluation["a"], x)   # the corruptions: training only
    np.testing.assert_array_equal(evaluation["b"], x)
    assert set(np.unique(first["d"])) <= {0.0, 1.0}
    assert np.any(first["b"] == 0) and np.all((first["b"] == 0) | (first["b"] == x))


def test_bernoulli_draws_with_the_given_probability():
    model = netlang.compile("input p: [1000]\noutput d = p -> bernoulli")
    engine = make_engine(model.graph, seed=1, device="reference")
    probabilities = np.array([[0.0], [0.2], [0.9], [1.0]]).repeat(1000, axis=1)
    drawn = engine.forward({"p": probabilities.astype(np.float32)})["d"].mean(axis=1)
    assert drawn[0] == 0.0 and drawn[3] == 1.0
    assert abs(drawn[1] - 0.2) < 0.04 and abs(drawn[2] - 0.9) < 0.03


# -- noise inputs ------------------------------------------------------------------------------

def test_noise_inputs_keep_their_distribution_through_fmt():
    source = "input z: [8] ~ normal(std = 0.5)\ninput u: [2]   ~   uniform\n" \
             "output y = z -> dense(2)\noutput w = u -> dense(2)\n"
    formatted = format_source(source)
    assert "input z: [8] ~ normal(std = 0.5)\n" in formatted
    assert "input u: [2] ~ uniform\n" in formatted
    attrs = netlang.compile(formatted).graph
    z = attrs.nodes[attrs.graph["inputs"]["z"]]["attrs"]["noise"]
    assert z == {"distribution": "normal", "mean": 0.0, "std": 0.5}


def test_a_noise_input_is_drawn_never_fed():
    model = netlang.compile(GENERATOR)
    model.device = "reference"
    assert model.binding.noise_inputs == {"z": (4,)} and "z" not in model.binding.inputs
    assert model.binding.data_input == "x"
    with pytest.raises(DataError, match="input `z` is a noise input, drawn afresh") as info:
        model.forward({"x": np.ones((2, 3)), "z": np.ones((2, 4))})
    assert "\n" not in info.value.render()
    first = model.forward({"x": np.ones((2, 3))})["y"]
    assert not np.array_equal(first, model.forward({"x": np.ones((2, 3))})["y"])  # fresh draws
    # Each call's draw follows the engine's generator: a fresh engine repeats the sequence.
    assert np.array_equal(first, model.reset(0).forward({"x": np.ones((2, 3))})["y"])


def test_a_model_with_noise_and_data_inputs_trains():
    model = netlang.compile(GENERATOR)
    rng = np.random.default_rng(0)
    history = model.fit(x=rng.random((64, 3)), y=rng.random((64, 3)), epochs=1, batch_size=16)
    assert np.isfinite(history.records[-1]["loss"])


def test_bench_draws_noise_inputs_from_their_distribution():
    model = netlang.compile(GENERATOR)
    assert model.bench(batch=4, steps=1, device="reference")["batch"] == 4


# -- sampling ----------------------------------------------------------------------------------

def test_sample_draws_the_output_computed_from_noise_alone():
    model = netlang.compile(GENERATOR)
    model.device = "reference"
    samples = model.sample(count=5, seed=3)
    assert samples.shape == (5, 16) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, model.sample(count=5, seed=3))
    assert not np.array_equal(samples, model.sample(count=5, seed=4))
    with pytest.raises(UsageError, match="output `y` reads data inputs"):
        model.sample(count=2, output="y")


def test_sample_needs_one_output_from_noise_alone_or_a_name():
    two = netlang.compile("input z: [2] ~ uniform\noutput a = z -> dense(3)\n"
                          "output b = z -> dense(4)\n")
    with pytest.raises(UsageError, match="several outputs .*`a`, `b`.*`output=`"):
        two.sample(count=2)
    assert two.sample(count=2, output="b").shape == (2, 4)
    plain = netlang.compile("input x: [2]\noutput y = x -> dense(2)\n")
    with pytest.raises(UsageError, match="this model has none"):
        plain.sample(count=2)


def test_netlang_sample_writes_an_array_and_a_grid(tmp_path, capsys):
    net = tmp_path / "generator.net"
    net.write_text("input z: [8] ~ normal\noutput image = z -> dense(784) -> sigmoid\n")
    model = netlang.compile(str(net))
    weights = model.save(tmp_path / "weights.safetensors")
    array = tmp_path / "samples.npy"
    base = ["sample", str(net), "--weights", str(weights), "--seed", "5"]
    assert main(base + ["--count", "6", "-o", str(array)]) == 0
    samples = np.load(array)
    assert samples.shape == (6, 784) and samples.dtype == np.float32
    assert main(base + ["--count", "6", "-o", str(tmp_path / "again.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), samples)
    assert main(base + ["--count", "10", "-o", str(tmp_path / "grid.png")]) == 0
    grid = read_png(tmp_path / "grid.png")
    assert grid.shape[:2] == (3 * 28 + 2 * 2, 4 * 28 + 3 * 2)   # 10 samples: 3 rows of 4
    capsys.readouterr()
    assert main(base) == 2   # no -o: a one-line error
    error = capsys.readouterr().err.strip()
    assert "-o samples.npy" in error and "\n" not in error


def test_netlang_sample_refuses_a_model_without_noise_in_one_line(tmp_path, capsys):
    net = tmp_path / "plain.net"
    net.write_text("input x: [2]\noutput y = x -> dense(2)\n")
    weights = netlang.compile(str(net)).save(tmp_path / "w.safetensors")
    assert main(["sample", str(net), "--weights", str(weights), "--count", "3",
                 "-o", str(tmp_path / "s.npy")]) == 2
    error = capsys.readouterr().err.strip()
    assert "noise inputs" in error and "\n" not in error
    assert main(["sample", str(net), "--weights", str(weights)]) == 2
    error = capsys.readouterr().err.strip()
    assert "needs a character model" in error and "no noise input" in error
    assert "\n" not in error


def test_netlang_sample_names_its_flag_when_several_outputs_read_noise(tmp_path, capsys):
    net = tmp_path / "two.net"
    net.write_text("input z: [2] ~ uniform\noutput a = z -> dense(3)\noutput b = z -> dense(4)\n")
    weights = netlang.compile(str(net)).save(tmp_path / "w.safetensors")
    base = ["sample", str(net), "--weights", str(weights), "-o", str(tmp_path / "s.npy")]
    assert main(base) == 2
    error = capsys.readouterr().err.strip()
    assert "several outputs" in error and "--output" in error and "\n" not in error
    assert main(base + ["--output", "b", "--count", "3"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 4)


def test_a_denoising_autoencoder_learns_on_the_cpu_engine():
    """Gaussian corruption in training, the clean input the target: the loss falls, and
    evaluation (no corruption) reconstructs better than the first epoch trained."""
    model = netlang.compile("""
        input image: [64]
        output out = image -> gaussian_noise(0.3) -> dense(16) -> relu -> dense(64) -> sigmoid
        train {
          loss binary_cross_entropy(out, image)
          optimizer adam(lr = 0.01)
          batch_size 32
          seed 3
        }""")
    rng = np.random.default_rng(0)
    prototypes = rng.random((4, 64)) < 0.5   # four binary patterns, each example one of them
    images = prototypes[rng.integers(0, 4, 512)].astype(np.float32)
    history = model.fit(x=images, epochs=8)
    losses = [record["loss"] for record in history.records]
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.evaluate(x=images)["loss"] < losses[0]


NOISY_SPIRALS = """
input x: [2]
input label: int32[]
input z: [3] ~ normal(std = 0.1)
h = x -> gaussian_noise(0.05) -> dense(8) -> tanh
mu = h -> dense(3)
logvar = h -> dense(3)
code = (mu, logvar) -> sample_normal
s = code + z
output logits = s -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.02)
  batch_size 16
  epochs 2
  seed 3
  val_split 0.2
}
"""


def test_resume_draws_what_the_uninterrupted_run_draws(tmp_path):
    """Noise inputs and sampling ops draw from the engine's generator, which checkpoints hold:
    a run stopped inside epoch 2 and resumed ends with the uninterrupted run's weights."""
    model = netlang.compile(NOISY_SPIRALS)
    model.device = "reference"
    full, resumed = straight_and_resumed(model, tmp_path, 21, data="spirals",
                                         device="reference")
    for name, value in full.params.items():
        assert np.array_equal(value, resumed.params[name]), name
