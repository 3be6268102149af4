"""The examples with several inputs and heads trained from the command line, on .npz archives
that name one array per input, and `netlang eval` reporting every head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from netlang.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MULTITASK = EXAMPLES / "multitask.net"
TWO_STREAM = EXAMPLES / "two_stream.net"


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the CLI, in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def digits(n: int, seed: int, split: str) -> dict:
    """Stand-ins for MNIST: a bright band whose row says the digit."""
    rng = np.random.default_rng(seed)
    digit = rng.integers(0, 10, n)
    image = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for i, d in enumerate(digit):
        image[i, 2 * d:2 * d + 3] = 250
    return {f"image_{split}": image, f"digit_{split}": digit, f"odd_{split}": digit % 2 == 1}


def pictures(n: int, seed: int, split: str) -> dict:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 5, n)
    meta = rng.normal(size=(n, 8)).astype(np.float32)
    meta[np.arange(n), label] += 3
    return {f"image_{split}": rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
            f"meta_{split}": meta, f"label_{split}": label}


@pytest.fixture
def multitask_data(tmp_path) -> Path:
    path = tmp_path / "digits.npz"
    np.savez(path, **digits(24, 0, "train"), **digits(12, 1, "test"))
    return path


def test_multitask_trains_from_the_cli_and_eval_reports_both_heads(multitask_data, tmp_path,
                                                                  capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", MULTITASK, "--data", multitask_data, "--epochs", 2,
                            "--limit", 16, "--batch-size", 8, "--device", "reference",
                            "--out", out)
    assert code == 0, err
    assert "epoch 2/2" in stdout and "test: loss" in stdout
    assert json.loads((out / "run.json").read_text())["data"] == str(multitask_data)

    code, stdout, err = run(capsys, "eval", MULTITASK, "--weights", out, "--device",
                            "reference", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["examples"] == 12 and set(result["heads"]) == {"digit_logits", "odd_prob"}
    digit, odd = result["heads"]["digit_logits"], result["heads"]["odd_prob"]
    assert (digit["op"], digit["target"], digit["weight"]) == ("cross_entropy", "digit", 1.0)
    assert (odd["op"], odd["target"], odd["weight"]) == ("binary_cross_entropy", "odd", 0.5)
    assert 0 <= digit["accuracy"] <= 1 and 0 <= odd["accuracy"] <= 1
    assert result["accuracy"] == digit["accuracy"]
    assert result["loss"] == pytest.approx(digit["loss"] + 0.5 * odd["loss"], rel=1e-4)

    code, stdout, err = run(capsys, "eval", MULTITASK, "--weights", out, "--device",
                            "reference", "--split", "train")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"{multitask_data} train: 24 examples"  # eval takes no --limit from the run
    assert lines[1].startswith("loss ") and lines[1].endswith("(digit_logits + 0.5 × odd_prob)")
    assert lines[2].split() == ["head", "loss", "op", "loss", "metric"]
    assert lines[3].split()[:2] == ["digit_logits", "cross_entropy(digit)"]
    assert lines[4].split()[:2] == ["odd_prob", "binary_cross_entropy(odd)"]
    assert all(" accuracy " in line for line in lines[3:5])
    assert "confusion matrix (digit_logits):" in lines


def test_two_stream_trains_from_the_cli(tmp_path, capsys):
    data = tmp_path / "pictures.npz"
    np.savez(data, **pictures(16, 0, "train"), **pictures(8, 1, "test"))
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", TWO_STREAM, "--data", data, "--epochs", 1,
                            "--batch-size", 8, "--device", "reference", "--out", out, "-q")
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", TWO_STREAM, "--weights", out, "--device",
                            "reference")
    assert code == 0, err
    assert stdout.startswith(f"{data} test: 8 examples\nloss ")
    assert "accuracy " in stdout and "confusion matrix:" in stdout


@pytest.mark.parametrize("model, arrays, words", [
    (MULTITASK, {**digits(4, 0, "train"), **digits(2, 1, "test"), "odd_train": None,
                 "odd_test": None},
     "bad.npz: missing odd_train, odd_test: this model reads <input>_train and <input>_test "
     "for each of its inputs (image, digit, odd); found: image_train, digit_train, image_test, "
     "digit_test"),
    (TWO_STREAM, {**pictures(4, 0, "train"), **pictures(2, 1, "test"),
                  "meta_train": np.zeros((4, 5)), "meta_test": np.zeros((2, 5))},
     "bad: meta_train: `meta` samples have shape 5 (5 values) but the model input is 8"),
    (TWO_STREAM, {**pictures(4, 0, "train"), **pictures(2, 1, "test"),
                  "label_test": np.zeros(3, int)},
     "bad: label_test has 3 samples but image_test has 2"),
    (TWO_STREAM, {"x_train": np.zeros((4, 8)), "y_train": np.zeros(4, int),
                  "x_test": np.zeros((2, 8)), "y_test": np.zeros(2, int)},
     "bad holds one input array and one label array, but this model has several data inputs "
     "(`image`, `meta`): use an .npz that holds <input>_train and <input>_test for each of "
     "its inputs (image, meta, label)"),
])
def test_named_array_errors_are_one_line(model, arrays, words, tmp_path, capsys):
    data = tmp_path / "bad.npz"
    np.savez(data, **{k: v for k, v in arrays.items() if v is not None})
    code, _, err = run(capsys, "train", model, "--data", data, "--device", "reference",
                       "--out", tmp_path / "run")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
