"""`netlang train`, `netlang eval` and `netlang predict` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as run

import netlang
from netlang.errors import UsageError
from netlang.train.png import decode_png, encode_png, image_to_input

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "xor.net")

# A 4x4 grey "image" classifier: class 1 when the top half is brighter than the bottom.
IMAGE_NET = """
input image: [4, 4, 1]
input label: int32[]
output logits = image -> flatten -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.05)
  batch_size 16
  epochs 15
}
"""



def image_data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 100, (n, 4, 4, 1)).astype(np.uint8)
    x[y == 1, :2] += 150
    x[y == 0, 2:] += 150
    return x, y


@pytest.fixture
def image_model(tmp_path):
    model = tmp_path / "image.net"
    model.write_text(IMAGE_NET)
    x_train, y_train = image_data(128, 0)
    x_test, y_test = image_data(32, 1)
    data = tmp_path / "images.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return model, data


def test_train_eval_predict_xor(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", XOR, "--data", "xor", "--epochs", "400", "--out",
                            out, "--device", "reference", "--log-every", "100")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "training xor.net on the reference engine"   # the engine used
    assert lines[1].startswith("epoch   1/400  loss ")  # plain lines: not a terminal
    assert json.loads((out / "run.json").read_text())["engine"] == "reference"
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == \
        ["1/400", "100/400", "200/400", "300/400", "400/400"]
    assert "test: loss" in stdout and "accuracy 1.0000" in stdout
    assert {"weights.safetensors", "latest", "metrics.jsonl", "run.json"} <= \
        {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 400 and records[-1]["epoch"] == 400
    assert {"loss", "accuracy", "test_loss", "test_accuracy", "lr"} <= set(records[-1])

    code, stdout, _ = run(capsys, "eval", XOR, "--weights", out, "--json", "--device",
                          "reference")
    assert code == 0
    result = json.loads(stdout)
    assert result["accuracy"] == 1.0 and 0 <= result["loss"] < 0.2
    assert result["confusion"] == [[2, 0], [0, 2]] and result["examples"] == 4

    code, stdout, _ = run(capsys, "eval", XOR, "--weights", out / "weights.safetensors")
    assert code == 0 and "accuracy  1.0000" in stdout and "confusion matrix" in stdout

    one = tmp_path / "one.npy"
    np.save(one, np.array([0.0, 1.0], dtype=np.float32))
    code, stdout, _ = run(capsys, "predict", XOR, "--weights", out, one)
    assert code == 0 and stdout.splitlines()[0] == "predicted class: 1"
    batch = tmp_path / "batch.npy"
    np.save(batch, np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32))
    code, stdout, _ = run(capsys, "predict", XOR, "--weights", out, batch, "--json")
    result = json.loads(stdout)
    assert result["predicted"] == [0, 1, 1, 0]
    assert np.allclose(np.sum(result["probabilities"], axis=1), 1.0)


def test_train_and_predict_a_png(image_model, tmp_path, capsys):
    model, data = image_model
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", model, "--data", data, "--out", out,
                            "--device", "reference", "--set", "val_split=0.25",
                            "--set", "metrics=accuracy, confusion")
    assert code == 0, err
    assert "val_acc" in stdout
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_accuracy"] > 0.9 and "val_confusion" in record
    top_bright = np.zeros((4, 4), dtype=np.uint8)
    top_bright[:2] = 230
    png = tmp_path / "digit.png"
    png.write_bytes(encode_png(top_bright))
    code, stdout, _ = run(capsys, "predict", model, "--weights", out, png, "--json")
    assert code == 0 and json.loads(stdout)["predicted"] == [1]
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(encode_png(np.repeat(255 - top_bright[..., None], 3, axis=-1)))
    code, stdout, _ = run(capsys, "predict", model, "--weights", out, rgb)
    assert code == 0 and stdout.splitlines()[0] == "predicted class: 0"
    code, stdout, _ = run(capsys, "eval", model, "--weights", out, "--json", "--split", "val")
    assert code == 0 and json.loads(stdout)["examples"] == 32


def test_same_seed_same_weights_from_the_cli(tmp_path, capsys):
    from netlang.weights import load_weights
    for name in ("a", "b"):
        code, _, err = run(capsys, "train", XOR, "--data", "blobs", "--epochs", "2",
                           "--seed", "5", "--optimizer", "adam", "--lr", "0.01",
                           "--out", tmp_path / name, "--device", "reference", "-q")
        assert code == 0, err
    a, _ = load_weights(tmp_path / "a" / "weights.safetensors")
    b, _ = load_weights(tmp_path / "b" / "weights.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    run_info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run_info["overrides"] == ["epochs=2", "optimizer=adam", "seed=5", "lr=0.01"]


def test_resume_refuses_a_changed_file_unless_forced(tmp_path, capsys):
    model = tmp_path / "xor.net"
    model.write_text(Path(XOR).read_text())
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", model, "--epochs", "3", "--out", out, "--device",
                       "reference")
    assert code == 0, err
    code, _, err = run(capsys, "train", model, "--epochs", "3", "--out", out)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    model.write_text(Path(XOR).read_text() + "\n# changed\n")
    code, _, err = run(capsys, "train", model, "--resume", out, "--epochs", "5")
    assert code == 2 and "different model source" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    code, stdout, err = run(capsys, "train", model, "--resume", out, "--epochs", "5",
                            "--force", "--device", "reference")
    assert code == 0, err
    assert "resuming" in stdout and "epoch 5/5" in stdout
    code, _, err = run(capsys, "eval", model, "--weights", out, "--json")
    assert code == 0, err  # the forced run now belongs to the changed source
    model.write_text(Path(XOR).read_text() + "\n# changed again\n")
    code, _, err = run(capsys, "eval", model, "--weights", out)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "eval", model, "--weights", out, "--force", "--json")
    assert code == 0, err


@pytest.mark.parametrize("argv, words", [
    (["train", XOR, "--epochs", "0"], "positive integer"),
    (["train", XOR, "--bogus"], "unrecognized arguments"),
    (["train", XOR, "--set", "foo=1"], "unknown training setting"),
    (["train", XOR, "--set", "epochs"], "key=value"),
    (["train", XOR, "--optimizer", "adm"], "did you mean `adam`"),
    (["train", XOR, "--data", "nope"], "unknown data set `nope`"),
    (["train", XOR, "--data", "mnist.npz"], "not found"),
    (["train", str(ROOT / "examples" / "mlp.net"), "--data", "xor"], "model input is 28x28x1"),
    (["train", str(ROOT / "examples" / "multitask.net"), "--data", "xor"], "several target"),
    (["train", "missing.net"], "no such file"),
    (["train", XOR, "--device", "tpu"], "invalid choice"),
    (["train", XOR, "--resume", "/nonexistent/run"], "no such checkpoint directory"),
    (["eval", XOR], "--weights"),
    (["eval", XOR, "--weights", "/nonexistent"], "no such weights file"),
    (["predict", XOR, "--weights", "/nonexistent", "x.npy"], "no such weights file"),
])
def test_bad_usage_is_one_line_and_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert words in lines[0] and "Traceback" not in err


def test_predict_input_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", XOR, "--epochs", "1", "--out", out, "--device", "reference",
               "-q")[0] == 0
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5)))
    text = tmp_path / "input.txt"
    text.write_text("1,2")
    big = tmp_path / "big.png"
    big.write_bytes(encode_png(np.zeros((8, 8), dtype=np.uint8)))
    for path, words in ((wrong, "model input is 2"), (text, "expected an .npy array"),
                        (big, "a flat input of 2 values"), (tmp_path / "none.npy", "no such file")):
        code, _, err = run(capsys, "predict", XOR, "--weights", out, path)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_plot_without_matplotlib_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    code, stdout, err = run(capsys, "train", XOR, "--epochs", "2", "--out", tmp_path / "r",
                            "--device", "reference", "--plot")
    assert code == 2 and stdout == "" and not (tmp_path / "r").exists()
    assert err == "error: --plot needs matplotlib, which is not installed: pip install " \
                  "'netlang[plot]'\n"
    model = netlang.compile(XOR)
    model.device = "reference"
    with pytest.raises(UsageError) as info:
        model.fit(data="xor", epochs=2, out=tmp_path / "r", plot=True)
    assert "plot=True needs matplotlib" in str(info.value) and not (tmp_path / "r").exists()


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_exactly(tmp_path):
    """A real SIGINT to a training process; the resumed run equals an uninterrupted one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = [sys.executable, "-m", "netlang.cli", "train", XOR, "--data", "blobs", "--device",
            "reference", "--set", "batch_size=8", "--optimizer", "adam", "--lr", "0.01"]
    out = tmp_path / "run"
    proc = subprocess.Popen(base + ["--epochs", "100000", "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        log = out / "metrics.jsonl"
        while time.monotonic() < deadline and not (log.exists() and log.stat().st_size):
            time.sleep(0.05)
        assert log.exists(), "training did not start"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    state = json.loads((out / (out / "latest").read_text().strip() / "state.json").read_text())
    epochs = state["state"]["epoch"] + 2
    resumed = subprocess.run(base[:3] + ["train", XOR, "--resume", str(out), "--epochs",
                                         str(epochs)], env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run(base + ["--epochs", str(epochs), "--out", str(tmp_path / "fresh")],
                           env=env, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    from netlang.weights import load_weights
    a, _ = load_weights(out / "weights.safetensors")
    b, _ = load_weights(tmp_path / "fresh" / "weights.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_png_decoder_handles_every_filter_and_colour_type():
    rng = np.random.default_rng(0)
    for channels, colour in ((1, 0), (2, 4), (3, 2), (4, 6)):
        image = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
        assert np.array_equal(decode_png(encode_png(image)), image)
        assert np.array_equal(decode_png(_filtered_png(image, colour)), image)


def _filtered_png(image, colour):
    """A PNG whose scanlines use filters 1-4 in turn (encode_png only writes filter 0)."""
    import struct
    import zlib
    h, w, c = image.shape
    rows = image.reshape(h, w * c).astype(np.int32)
    raw = bytearray()
    prev = np.zeros(w * c, dtype=np.int32)
    for y in range(h):
        kind = 1 + y % 4
        line = rows[y]
        a = np.concatenate([np.zeros(c, np.int32), line[:-c]])
        cc = np.concatenate([np.zeros(c, np.int32), prev[:-c]])
        if kind == 1:
            pred = a
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (a + prev) >> 1
        else:
            p = a + prev - cc
            pa, pb, pc = np.abs(p - a), np.abs(p - prev), np.abs(p - cc)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, cc))
        raw += bytes([kind]) + ((line - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = line

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))


def test_png_to_model_input():
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 16
    x = image_to_input(grey, (4, 4, 1))
    assert x.shape == (4, 4, 1) and x.dtype == np.float32 and x.max() <= 1.0
    assert image_to_input(grey, (16,)).shape == (16,)
    rgb = np.repeat(grey, 3, axis=-1)
    assert np.allclose(image_to_input(rgb, (4, 4, 1)), x, atol=1 / 255)
    assert image_to_input(grey, (4, 4, 3)).shape == (4, 4, 3)
