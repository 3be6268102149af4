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
