"""The generative examples (examples/vae.net, examples/gan.net) and the pictures a run of a
generative model writes: samples.png beside reconstructions.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.sampling import NoiseModel, draw_samples, sample_grid
from netlang.train.binding import bind
from netlang.train.loop import train
from netlang.train.png import decode_png

ROOT = Path(__file__).resolve().parent.parent
VAE = ROOT / "examples" / "vae.net"
GAN = ROOT / "examples" / "gan.net"
# The VAE's test loss after 4 epochs of 10,000 digits (316 steps): measured 137.7 (see the
# test); 543 nats per digit before training.
VAE_BOUND = 150.0

# A VAE in miniature, with its decoder fed the prior as a second output.
TINY_VAE = """\
input x: [4]
input prior: [2] ~ normal
h = x -> dense(6) as enc -> relu
mu = h -> dense(2) as enc_mu
logvar = h -> dense(2) as enc_logvar
output x_hat = sample_normal(mu, logvar) -> dense(4) as dec -> sigmoid
output sample = prior -> dense(4, share = dec) -> sigmoid
train {
  loss binary_cross_entropy(x_hat, x) + kl_normal(mu, logvar)
  optimizer adam(lr = 0.01)
  batch_size 8
  epochs 2
  metrics loss
}
"""


def grid_cells(picture: np.ndarray, cell: int, gap: int = 2) -> tuple[int, int]:
    """(rows, columns) of cells `cell` pixels square in a grid picture with `gap`-pixel gaps."""
    return ((picture.shape[0] + gap) // (cell + gap), (picture.shape[1] + gap) // (cell + gap))


def test_a_run_of_a_model_with_a_noise_output_writes_its_samples(tmp_path):
    model = netlang.compile(TINY_VAE)
    data = {"x": np.random.default_rng(0).uniform(size=(32, 4)).astype(np.float32)}
    _, engine, _ = train(model, x=data, device="reference", out=tmp_path / "run",
                         evaluate_test=False)
    picture = decode_png((tmp_path / "run" / "samples.png").read_bytes())
    # 64 samples of 4 values (a 2×2 square each), 8 to a row.
    assert grid_cells(picture, 2) == (8, 8)
    # The picture is `netlang sample --count 64 --seed 0` of the trained weights.
    samples = draw_samples(engine, NoiseModel.of(model.graph, bind(model.graph)), 64, seed=0)
    expected = sample_grid(samples)
    assert np.array_equal(picture, expected.reshape(picture.shape))
    assert (tmp_path / "run" / "reconstructions.png").exists()


def test_each_noise_output_gets_its_own_samples_picture(tmp_path):
    source = TINY_VAE.replace("output sample = prior -> dense(4, share = dec) -> sigmoid",
                              "output sample = prior -> dense(4, share = dec) -> sigmoid\n"
                              "output code = prior -> square")
    train(netlang.compile(source), x={"x": np.ones((8, 4), np.float32)}, device="reference",
          out=tmp_path, evaluate_test=False)
    assert {p.name for p in tmp_path.glob("samples*.png")} == {"samples_sample.png",
                                                              "samples_code.png"}


def test_a_model_without_noise_inputs_writes_no_samples(tmp_path):
    source = TINY_VAE.replace("input prior: [2] ~ normal\n", "").replace(
        "output sample = prior -> dense(4, share = dec) -> sigmoid\n", "")
    train(netlang.compile(source), x={"x": np.ones((8, 4), np.float32)}, device="reference",
          out=tmp_path, evaluate_test=False)
    assert not list(tmp_path.glob("samples*.png"))


def run(capsys, *argv):
    """(exit status, stdout) of the CLI, in-process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_the_vae_example_learns_digits_from_the_command_line(mnist_dir, tmp_path, capsys,
                                                            monkeypatch):
    """A few hundred steps of examples/vae.net: the negative ELBO falls well below where it
    starts (about 543 nats per digit: 784 · log 2 from a decoder that says 0.5 everywhere),
    and the run pictures its reconstructions and samples."""
    monkeypatch.setenv("NETLANG_DATA", str(mnist_dir.parent))
    run_dir = tmp_path / "vae"
    code, _ = run(capsys, "train", VAE, "--data", "mnist", "--limit", "10000", "--epochs", "4",
                  "--out", run_dir, "-q")
    assert code == 0
    code, out = run(capsys, "eval", VAE, "--weights", run_dir, "--limit", "2000", "--json")
    assert code == 0
    loss = json.loads(out)["loss"]
    assert loss < VAE_BOUND, loss
    assert grid_cells(decode_png((run_dir / "samples.png").read_bytes()), 28) == (8, 8)
    assert grid_cells(decode_png((run_dir / "reconstructions.png").read_bytes()), 28) == (2, 8)
    code, _ = run(capsys, "sample", VAE, "--weights", run_dir, "--count", "10", "--seed", "1",
                  "-o", tmp_path / "digits.npy")
    digits = np.load(tmp_path / "digits.npy")
    assert code == 0 and digits.shape == (10, 784)
    assert 0 <= digits.min() and digits.max() <= 1


@pytest.mark.slow
def test_the_gan_example_trains_and_samples_from_the_command_line(mnist_dir, tmp_path, capsys,
                                                                  monkeypatch):
    """One short epoch of examples/gan.net: both phases step on every round, their losses
    stay finite, and `netlang sample` draws 1000 digits of the trained generator."""
    monkeypatch.setenv("NETLANG_DATA", str(mnist_dir.parent))
    run_dir = tmp_path / "gan"
    code, _ = run(capsys, "train", GAN, "--data", "mnist", "--limit", "3200", "--epochs", "1",
                  "--out", run_dir, "-q")
    assert code == 0
    [record] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {name: phase["steps"] for name, phase in record["phases"].items()} == {
        "discriminator": 50, "generator": 50}
    assert all(np.isfinite(phase["loss"]) for phase in record["phases"].values())
    assert grid_cells(decode_png((run_dir / "samples.png").read_bytes()), 28) == (8, 8)
    code, _ = run(capsys, "sample", GAN, "--weights", run_dir, "--count", "1000", "--seed", "0",
                  "-o", tmp_path / "digits.npy")
    assert code == 0 and np.load(tmp_path / "digits.npy").shape == (1000, 784)
