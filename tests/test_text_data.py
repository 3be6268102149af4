"""Data for recurrent models: `text:PATH` character corpora (windows, shifted targets, the
vocabulary saved with a run, bits per character), MNIST rows as time steps, and `.npz`
integer sequences with a target per time step (netlang.data.text, netlang.train)."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.data import TextCorpus, Vocabulary, load_dataset
from netlang.data.text import bigram_loss
from netlang.errors import DataError
from netlang.train.prepared_data import prepare_data

# A character model the reference engine runs without recurrent kernels: ids through an
# embedding of the default vocabulary, a score per character at every step.
CHAR_NET = """
input tokens: int32[8]
input next: int32[8]
output logits = tokens -> embedding(96, 16) -> dense(96)
train {
  loss cross_entropy(logits, next)
  optimizer adam(lr = 0.02)
  batch_size 16
  epochs 2
}
"""

ROWS_NET = """
input image: [28, 28]
input label: int32[]
output logits = image -> flatten -> dense(10)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.01)
  batch_size 32
  epochs 1
}
"""

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40   # 1,800 characters


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def model_file(tmp_path: Path, source: str = CHAR_NET, name: str = "char.net") -> Path:
    return write(tmp_path / name, source)


def one_line_error(spec: str, length: int = 8) -> str:
    """The one-line DataError that reading `spec` and cutting it into windows raises."""
    with pytest.raises(DataError) as info:
        corpus = load_dataset(spec)
        corpus.windows(length, corpus.vocabulary(96))
    message = info.value.render()
    assert "\n" not in message, message
    return message


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the vocabulary -------------------------------------------------------------------------

def test_the_default_vocabulary_is_printable_ascii_and_newline_in_96_ids():
    vocab = Vocabulary.for_text(96)
    assert vocab.size == 96 and len(vocab.symbols) == 96
    ids = vocab.encode(" ~A\n")
    assert ids.tolist() == [0, 94, ord("A") - 32, 95] and ids.dtype == np.int64
    assert vocab.decode(vocab.encode("Hello, world!\n")) == "Hello, world!\n"


def test_characters_outside_the_alphabet_read_as_the_unknown_id_a_space():
    vocab = Vocabulary.for_text(96)
    assert vocab.unknown == 0 and vocab.symbols[vocab.unknown] == " "
    assert vocab.encode("caf\u00e9\tok").tolist() == vocab.encode("caf  ok").tolist()
    assert vocab.unknown_characters("caf\u00e9\tok\U0001F600") == 3


def test_a_larger_vocabulary_takes_the_texts_most_frequent_other_characters():
    text = "\u00e9\u00e9\u00e9 \u00e0\u00e0 \u00fc \t"
    vocab = Vocabulary.for_text(98, text)
    assert vocab.symbols[96:] == "\u00e9\u00e0"       # most frequent first; no room for more
    assert vocab.encode("\u00e9\u00e0\u00fc").tolist() == [96, 97, 0]
    wide = Vocabulary.for_text(120, text)
    assert len(wide.symbols) == 100 and wide.size == 120   # é à \t ü: ties by code point
    assert wide.symbols[96:] == "\u00e9\u00e0\t\u00fc"
    assert wide.decode([96, 110]) == "\u00e9\ufffd"      # an id with no character


def test_a_vocabulary_smaller_than_the_alphabet_is_refused():
    with pytest.raises(DataError, match="fewer than the 96"):
        Vocabulary.for_text(64)


def test_the_vocabulary_round_trips_through_json_without_pickle():
    vocab = Vocabulary.for_text(100, "\u00e9\u00e9 \u00df")
    data = json.loads(vocab.to_json())
    assert data["format"] == "netlang-vocabulary" and data["size"] == 100
    again = Vocabulary.from_json(vocab.to_json())
    assert again.symbols == vocab.symbols and again.size == 100 and again.unknown == 0
    with pytest.raises(DataError, match="not a netlang vocabulary"):
        Vocabulary.from_json('{"symbols": "ab"}', what="v.json")


# -- windows and splits -----------------------------------------------------------------------

def test_windows_pair_each_input_with_the_text_shifted_by_one(tmp_path):
    path = write(tmp_path / "c.txt", TEXT)
    corpus = load_dataset(f"text:{path}")
    assert isinstance(corpus, TextCorpus) and corpus.name == "c.txt"
    vocab = corpus.vocabulary(96)
    ds = corpus.windows(8, vocab)
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert x.shape == y.shape == ((len(TEXT) - 1) // 8, 8) and x.dtype == np.int64
    assert vocab.decode(x[0]) == TEXT[:8] and vocab.decode(y[0]) == TEXT[1:9]
    assert vocab.decode(x[1]) == TEXT[8:16]          # one after the other, no overlap
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:-1, -1] == x[1:, 0]).all()
    assert ds.num_classes == 96


def test_the_last_tenth_of_the_windows_is_the_test_split(tmp_path):
    path = write(tmp_path / "c.txt", TEXT)
    corpus = load_dataset(f"text:{path}")
    vocab = corpus.vocabulary(96)
    ds = corpus.windows(8, vocab)
    count = (len(TEXT) - 1) // 8
    assert len(ds.x_test) == math.ceil(count / 10) and len(ds.x_train) == count - len(ds.x_test)
    # The windows cover the text in order: the test windows are its end.
    assert vocab.decode(ds.x_train.reshape(-1)) + vocab.decode(ds.x_test.reshape(-1)) \
        == TEXT[:count * 8]


def test_the_bigram_baseline_is_the_held_out_loss_of_smoothed_pair_counts(tmp_path):
    text = "abcab cabba\n" * 30 + "xyz abc"   # the test split holds pairs training lacks
    corpus = load_dataset(f"text:{write(tmp_path / 'c.txt', text)}")
    windows = corpus.windows(8, corpus.vocabulary(96))
    cut = len(windows.x_train) * 8   # training predicts text[1..cut], testing the rest
    end = cut + len(windows.x_test) * 8
    pairs = collections.Counter(zip(text[:cut], text[1:cut + 1]))
    firsts = collections.Counter(text[:cut])
    for smoothing in (0.1, 1.0):
        expected = -np.mean([math.log((pairs[a, b] + smoothing) / (firsts[a] + 96 * smoothing))
                             for a, b in zip(text[cut:end], text[cut + 1:end + 1])])
        assert bigram_loss(windows, smoothing=smoothing) == pytest.approx(expected, rel=1e-12)
    assert bigram_loss(windows, smoothing=0.1) < math.log(96)   # pairs repeat: below uniform
    with pytest.raises(DataError, match="smoothing must be a number above 0"):
        bigram_loss(windows, smoothing=0)


def test_line_endings_and_a_byte_order_mark_are_normalised(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"\xef\xbb\xbfab\r\ncd\ref")
    assert load_dataset(f"text:{path}").text == "ab\ncd\nef"


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"PK\x03\x04\x00\x00binary", "binary file (it holds NUL bytes)"),
    (b"caf\xe9 au lait, " * 10, "not UTF-8 text (byte 0xe9 at offset 3)"),
    (b"short", "shorter than one window"),
    (b"twelve chars", "only one window long"),
])
def test_a_file_that_cannot_be_read_as_windows_is_a_one_line_error_naming_it(
        tmp_path, content, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    message = one_line_error(f"text:{path}")
    assert str(path) in message and words in message, message


def test_a_missing_text_file_and_an_empty_spec_are_one_line_errors(tmp_path):
    assert "file not found" in one_line_error(f"text:{tmp_path / 'none.txt'}")
    assert "names no file" in one_line_error("text:")


# -- training, the run directory and eval -----------------------------------------------------

def test_training_on_text_saves_the_vocabulary_and_reports_bits_per_character(
        tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", TEXT + "caf\u00e9\n")
    net = model_file(tmp_path)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", net, "--data", f"text:{corpus}", "--device",
                         "reference", "--out", run)
    assert code == 0, err
    assert "c.txt: 1,805 characters as 225 windows of 8 (the last 23" in out
    assert "1 character outside its 96-symbol vocabulary read as ' '" in out
    assert " bpc " in out and " test_bpc " in out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["bpc"] == pytest.approx(record["loss"] / math.log(2))
    assert record["test_bpc"] == pytest.approx(record["test_loss"] / math.log(2))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["bpc"] == pytest.approx(summary["test"]["loss"] / math.log(2))
    saved = Vocabulary.from_json((run / "vocabulary.json").read_text())
    assert saved.symbols == Vocabulary.for_text(96).symbols


def test_eval_reads_another_file_with_the_runs_vocabulary(tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", TEXT + "\u00e9" * 40)
    net = model_file(tmp_path, CHAR_NET.replace("96", "97"))
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", net, "--data", f"text:{corpus}", "--device",
                       "reference", "--out", run, "--epochs", "1")
    assert code == 0, err
    saved = Vocabulary.from_json((run / "vocabulary.json").read_text())
    assert saved.size == 97 and saved.symbols[96] == "\u00e9"   # the run's own extra symbol
    other = write(tmp_path / "other.txt", "\u00fc" * 200 + "\u00e9" * 100)
    code, out, err = cli(capsys, "eval", net, "--weights", run, "--data", f"text:{other}",
                         "--device", "reference", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))
    # With the run's vocabulary `é` keeps id 96; read afresh, `ü` (more frequent) would take it.
    model = netlang.compile(net)
    fresh = prepare_data(f"text:{other}", model.binding, model.train_config)
    kept = prepare_data(f"text:{other}", model.binding, model.train_config, vocabulary=saved)
    assert fresh.vocabulary.symbols[96] == "\u00fc"
    assert (kept.test["tokens"] == 96).all() and not (fresh.test["tokens"] == 96).all()
    code, out, err = cli(capsys, "eval", net, "--weights", run, "--data", f"text:{other}",
                         "--device", "reference")
    assert code == 0, err
    assert "text:" in out and "bpc " in out and "confusion" not in out


def test_model_evaluate_reports_bits_per_character_for_a_text_set(tmp_path):
    corpus = write(tmp_path / "c.txt", TEXT)
    model = netlang.compile(CHAR_NET)
    model.device = "reference"
    model.fit(data=f"text:{corpus}", epochs=1)
    result = model.evaluate(data=f"text:{corpus}")
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))


def test_text_data_needs_an_integer_sequence_input_and_target(tmp_path):
    corpus = write(tmp_path / "c.txt", TEXT)
    model = netlang.compile(ROWS_NET)
    model.device = "reference"
    with pytest.raises(DataError, match="feeds a sequence of character ids"):
        model.fit(data=f"text:{corpus}", epochs=1)


# -- MNIST rows as time steps -----------------------------------------------------------------

@pytest.mark.mnist
def test_mnist_feeds_rows_as_time_steps_and_says_which_shape_it_used(tmp_path, capsys,
                                                                     mnist_dir):
    net = model_file(tmp_path, ROWS_NET, "rows.net")
    code, out, err = cli(capsys, "train", net, "--data", "mnist", "--limit", "64", "--device",
                         "reference", "--out", tmp_path / "run")
    assert code == 0, err
    assert "mnist: samples of shape 28x28x1 read as 28x28 (input `image`)" in out


# -- .npz integer sequences with a target per step --------------------------------------------

def test_npz_integer_sequences_with_a_target_per_time_step(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 96, (80, 8)).astype(np.uint8)    # ids, not pixels
    path = tmp_path / "seq.npz"
    np.savez(path, x_train=tokens[:64], y_train=(tokens[:64] + 1) % 96,
             x_test=tokens[64:], y_test=(tokens[64:] + 1) % 96)
    model = netlang.compile(CHAR_NET)
    model.device = "reference"
    history = model.fit(data=str(path), epochs=3)
    assert history["loss"][-1] < history["loss"][0]
    prepared = prepare_data(str(path), model.binding, model.train_config)
    assert (prepared.train["tokens"] == tokens[:64]).all()       # kept as ids, never scaled
    assert prepared.train["next"].shape == (64, 8)


def test_per_step_targets_of_the_wrong_shape_are_refused_naming_the_array(tmp_path):
    path = tmp_path / "seq.npz"
    x = np.zeros((10, 8), np.int64)
    np.savez(path, x_train=x, y_train=np.zeros((10, 7), np.int64), x_test=x,
             y_test=np.zeros((10, 7), np.int64))
    model = netlang.compile(CHAR_NET)
    model.device = "reference"
    with pytest.raises(DataError, match=r"y_train must hold 8 class indices per sample"):
        model.fit(data=str(path), epochs=1)


def test_a_recurrent_model_trains_on_text_with_the_reference_engine(tmp_path):
    corpus = write(tmp_path / "c.txt", TEXT)
    model = netlang.compile(CHAR_NET.replace("-> dense(96)",
                                             "-> lstm(16, sequences = true) -> dense(96)"))
    model.device = "reference"
    history = model.fit(data=f"text:{corpus}", epochs=3)
    assert history["bpc"][-1] < history["bpc"][0]
    assert history["test_bpc"][-1] == pytest.approx(history["test_loss"][-1] / math.log(2))
