"""An RBM judged on its own (netlang/train/rbm_report.py): the reconstruction error that
`netlang eval` reports, against NumPy written from the definition, for an RBM on the data and
for one stacked on a feature layer; and the pictures (filters, Gibbs samples) that eval's
`--pictures` and training write, decoded back with the sizes their layout gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

import netlang
from netlang.train.png import read_png
from netlang.train.rbm_report import (
    CHAINS,
    GIBBS_SNAPSHOTS,
    reconstruction_errors,
    tile_shape,
    visible_layers,
    write_rbm_pictures,
)
from tests.conftest import run_cli

STACK = """input v: [9]
gap1 = v -> rbm(4, visible = {visible}) as r1
h1 = v -> dense(4, share = r1) as features -> sigmoid
gap2 = h1 -> rbm(5) as r2
train {{
  loss gap1 + gap2
  optimizer sgd(lr = 0.1)
  batch_size 4
  epochs 1
}}
"""


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def stacked(visible="binary"):
    """A two-RBM stack (9 → 4 → 5) with random parameters, on the reference engine."""
    model = netlang.compile(STACK.format(visible=visible), path="stack.net",
                            dtype="float64").to("reference")
    rng = np.random.default_rng(7)
    for name, value in model.parameters().items():
        value[...] = rng.normal(scale=0.8, size=value.shape)
    return model


def test_the_reconstruction_error_is_one_up_down_pass_per_visible_unit():
    model = stacked()
    params = {k: np.array(v) for k, v in model.parameters().items()}
    v = (np.random.default_rng(1).random((11, 9)) < 0.5).astype(np.float64)
    found = reconstruction_errors(model.engine, model.graph, {"v": v}, batch_size=4)

    def error(x, prefix):
        w, c, b = (params[f"{prefix}.{n}"] for n in ("weight", "bias", "visible_bias"))
        h = sigmoid(x @ w.T + c)
        return np.mean((x - sigmoid(h @ w + b)) ** 2)

    h1 = sigmoid(v @ params["r1.weight"].T + params["r1.bias"])   # r2's visible units
    assert set(found) == {"r1", "r2"}
    assert found["r1"] == pytest.approx(error(v, "r1"), rel=1e-12)
    assert found["r2"] == pytest.approx(error(h1, "r2"), rel=1e-12)


def test_gaussian_visible_units_are_reconstructed_by_their_mean():
    model = stacked("gaussian")
    params = {k: np.array(v) for k, v in model.parameters().items()}
    v = np.random.default_rng(2).normal(size=(6, 9))
    found = reconstruction_errors(model.engine, model.graph, {"v": v})
    w, c, b = params["r1.weight"], params["r1.bias"], params["r1.visible_bias"]
    assert found["r1"] == pytest.approx(np.mean((v - (sigmoid(v @ w.T + c) @ w + b)) ** 2),
                                        rel=1e-12)


def test_a_model_without_rbm_layers_has_no_reconstruction_error():
    model = netlang.compile("input x: [3]\noutput y = x -> dense(2)\n", path="m.net")
    assert visible_layers(model.graph) == []
    assert reconstruction_errors(model.engine, model.graph, {"x": np.zeros((2, 3))}) == {}


def test_tiles_are_square_where_the_count_allows():
    assert tile_shape(784) == (28, 28)
    assert tile_shape(500) == (22, 23)
    assert tile_shape(9) == (3, 3)
    assert tile_shape(5) == (2, 3)


def test_pictures_decode_with_the_sizes_of_their_layout(tmp_path):
    model = stacked()
    v = (np.random.default_rng(3).random((12, 9)) < 0.5).astype(np.float64)
    written = write_rbm_pictures(tmp_path / "pictures", model.engine, model.graph, {"v": v})
    names = sorted(path.name for path in written)
    assert names == ["filters_r1.png", "filters_r2.png", "gibbs_r1.png", "gibbs_r2.png"]
    rows = len(GIBBS_SNAPSHOTS)
    # r1: 4 hidden units → a 2×2 grid of 3×3 tiles, 1 pixel apart; r2: 5 hidden units of 4
    # visible → a 3-column grid of 2×2 tiles, two rows.
    assert read_png(tmp_path / "pictures" / "filters_r1.png").shape[:2] == (7, 7)
    assert read_png(tmp_path / "pictures" / "filters_r2.png").shape[:2] == (5, 8)
    # Gibbs chains: a column per chain, a row per snapshot, tiles 2 pixels apart.
    assert read_png(tmp_path / "pictures" / "gibbs_r1.png").shape[:2] == \
        (rows * 3 + (rows - 1) * 2, CHAINS * 3 + (CHAINS - 1) * 2)
    assert read_png(tmp_path / "pictures" / "gibbs_r2.png").shape[:2] == \
        (rows * 2 + (rows - 1) * 2, CHAINS * 2 + (CHAINS - 1) * 2)
    # The top row is the chains' start: the data, drawn black (0) and white (1).
    top = read_png(tmp_path / "pictures" / "gibbs_r1.png")[:3, :3, 0]
    assert np.array_equal(top, (v[0].reshape(3, 3) * 255).astype(np.uint8))


def test_eval_reports_the_reconstruction_error_and_writes_pictures(tmp_path, capsys):
    source = tmp_path / "stack.net"
    source.write_text(STACK.format(visible="binary"))
    rng = np.random.default_rng(4)
    data = tmp_path / "bits.npz"
    np.savez(data, v_train=(rng.random((16, 9)) < 0.5).astype(np.float32),
             v_test=(rng.random((8, 9)) < 0.5).astype(np.float32))
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", source, "--data", data, "--device",
                                "reference", "--out", out)
    assert code == 0, err
    assert (out / "filters_r1.png").is_file() and (out / "gibbs_r2.png").is_file()

    code, stdout, err = run_cli(capsys, "eval", source, "--weights", out, "--device",
                                "reference", "--json", "--pictures", tmp_path / "pictures")
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result["reconstruction_error"]) == {"r1", "r2"}
    assert all(0 < e < 1 for e in result["reconstruction_error"].values())
    assert (tmp_path / "pictures" / "filters_r2.png").is_file()

    code, stdout, err = run_cli(capsys, "eval", source, "--weights", out, "--device",
                                "reference")
    assert code == 0, err
    assert f"reconstruction error of r1: {result['reconstruction_error']['r1']:.5f}" in stdout
