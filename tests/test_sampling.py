"""Text sampling (`netlang sample`, `Model.sample`): the step program of a character model
(passes/stepping.py) against the whole-sequence forward, and what a trained model writes
(netlang/sampling/text.py), on the reference engine and on the CPU engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.data.text import bigram_loss, read_text
from netlang.errors import UsageError
from netlang.pipeline import step_program
from netlang.runtime import make_engine
from netlang.runtime.cpu import CpuEngine
from netlang.sampling import TextSampler
from netlang.sampling.text import draw

CYCLE = "abc"

# A character model small enough to learn the cycle abcabc... in a few seconds.
CHAR_NET = """
input tokens: int32[8]
input next: int32[8]
output logits = tokens -> embedding(96, 8) -> lstm(16, sequences = true) -> dense(96)
train {
  loss cross_entropy(logits, next)
  optimizer adam(lr = 0.05)
  batch_size 16
  epochs 12
}
"""


def char_net(layers: str, target: str = "int32[7]") -> str:
    """A character model reading 7 ids through `layers`."""
    return f"""
input tokens: int32[7]
input next: {target}
output logits = tokens -> embedding(96, 4) -> {layers} -> dense(96)
train {{
  loss cross_entropy(logits, next)
}}
"""


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the .net file, its run directory) after training on the cycle."""
    where = tmp_path_factory.mktemp("sampling")
    corpus = where / "cycle.txt"
    corpus.write_text(CYCLE * 400, encoding="utf-8")
    net = where / "char.net"
    net.write_text(CHAR_NET, encoding="utf-8")
    run = where / "run"
    assert main(["train", str(net), "--data", f"text:{corpus}", "--device", "reference",
                 "--out", str(run), "--seed", "3"]) == 0
    return net, run


@pytest.fixture(scope="module")
def trained(trained_run):
    net, run = trained_run
    return netlang.load(net, weights=run, device="reference")


def continues_cycle(prime: str, text: str) -> bool:
    start = (CYCLE.index(prime[-1]) + 1) % len(CYCLE)
    expected = (CYCLE * (len(text) // len(CYCLE) + 2))[start:start + len(text)]
    return text == expected


# -- the step program --------------------------------------------------------------------------

@pytest.mark.parametrize("layers, target", [
    ("lstm(6, layers = 2, sequences = true)", "int32[7]"),
    ("gru(5, sequences = true) -> dropout(0.3)", "int32[7]"),
    ("rnn(4, sequences = true) -> tanh -> rnn(3, activation = relu, sequences = true)",
     "int32[7]"),
    ("lstm(5, sequences = true) -> gru(3)", "int32[]"),   # the last step's state feeds the head
])
def test_the_step_program_after_n_steps_equals_the_sequence_forward_at_step_n(layers, target):
    model = netlang.compile(char_net(layers, target))
    engine = make_engine(model.graph, device="reference", dtype=np.float64, seed=1)
    sampler = TextSampler(model.graph, model.binding, engine)
    ids = np.random.default_rng(0).integers(0, 96, size=(3, 7))
    full = engine.forward({"tokens": ids}, "eval")["logits"]
    states = sampler.initial_states(3)
    for t in range(7):
        scores, states = sampler.advance(ids[:, t], states)
        if full.ndim == 3:   # a score per step
            np.testing.assert_allclose(scores, full[:, t], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, full.reshape(3, -1, 96)[:, -1], rtol=0, atol=1e-12)


def test_the_step_program_carries_each_layers_states_and_needs_no_recurrent_kernel():
    model = netlang.compile(char_net("lstm(6, layers = 2, sequences = true) -> gru(3, "
                                     "sequences = true)"))
    step = step_program(model.graph, "tokens", ["logits"])
    assert [(s.input, s.shape) for s in step.states] == [
        ("lstm_1.h0", (2, 6)), ("lstm_1.c0", (2, 6)), ("gru_1.h0", (1, 3))]
    assert step.graph.type_of(step.graph.graph["inputs"]["tokens"]).shape == (None, 1)
    assert not step.graph.graph["losses"] and "next" not in step.graph.graph["inputs"]
    # Written with dense, gates and sums: any engine that runs those runs the step.
    assert CpuEngine.missing_kernels(step.graph, list(step.graph.nodes)) == []


@pytest.mark.parametrize("layers, target, words", [
    ("lstm(4, bidirectional = true, sequences = true)", "int32[7]",
     "`lstm` with `bidirectional = true` reads the sequence backwards too"),
    ("flatten -> dense(8)", "int32[]", "`flatten` (layer `flatten_1`) mixes the steps"),
    ("lstm(4, sequences = true) -> softmax(axis = 0)", "int32[7]", "`softmax` (layer"),
])
def test_a_model_that_cannot_run_one_step_at_a_time_is_refused_in_one_line(layers, target,
                                                                           words):
    model = netlang.compile(char_net(layers, target))
    with pytest.raises(UsageError) as info:
        step_program(model.graph, "tokens", ["logits"])
    message = info.value.render()
    assert words in message and "\n" not in message, message


def test_a_model_that_is_not_a_character_model_is_refused_in_one_line():
    model = netlang.compile("input x: [2]\ninput y: int32[]\noutput p = x -> dense(2)\n"
                            "train {\n  loss cross_entropy(p, y)\n}\n")
    model.device = "reference"
    with pytest.raises(UsageError, match="needs a character model.*no noise input to sample"):
        model.sample("a")


# -- drawing -----------------------------------------------------------------------------------

def test_a_temperature_near_zero_draws_the_argmax_as_temperature_zero_does():
    scores = np.random.default_rng(1).normal(size=(50, 96))
    rng = np.random.default_rng(2)
    assert (draw(scores, 0, None, rng, 96) == scores.argmax(axis=1)).all()
    assert (draw(scores, 1e-6, None, rng, 96) == scores.argmax(axis=1)).all()
    assert (draw(scores, 5.0, 1, rng, 96) == scores.argmax(axis=1)).all()   # top-1


def test_draws_follow_the_tempered_probabilities_within_top_k_and_the_alphabet():
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(3)
    picks = np.array([draw(scores, 1.0, None, rng, 4)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(picks, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05],
                               atol=0.03)
    picks = np.array([draw(scores, 1.0, 2, rng, 4)[0] for _ in range(2000)])
    assert set(picks) == {0, 1}
    np.testing.assert_allclose((picks == 0).mean(), 0.5 / 0.8, atol=0.04)
    assert set(draw(np.zeros((200, 4)), 1.0, None, rng, 2)) <= {0, 1}   # ids with characters


def test_on_an_untrained_model_a_tiny_temperature_writes_what_temperature_zero_does():
    model = netlang.compile(char_net("gru(8, sequences = true)"))
    model.device = "reference"
    assert model.sample("hello", length=20, temperature=1e-6, seed=4) == \
        model.sample("hello", length=20, temperature=0)


# -- a trained model ---------------------------------------------------------------------------

def test_a_model_trained_on_a_cycle_continues_it(trained):
    assert continues_cycle("ab", trained.sample("ab", length=30, temperature=0))
    assert continues_cycle("bcab", trained.sample("bcab", length=30, seed=0))
    assert continues_cycle("c", trained.sample("c", length=30, seed=1, top_k=2))


def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(trained):
    hot = dict(length=60, temperature=4.0)
    first = trained.sample("abc", seed=7, **hot)
    assert trained.sample("abc", seed=7, **hot) == first
    assert trained.sample("abc", seed=8, **hot) != first
    assert not continues_cycle("abc", first)   # hot enough that the seed matters


def test_the_length_is_the_number_of_characters_written(trained):
    for length in (1, 17):
        assert len(trained.sample("a", length=length, seed=0)) == length
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UsageError, match="length must be a positive number"):
            trained.sample("a", length=bad)


@pytest.mark.parametrize("options, words", [
    (dict(temperature=-1.0), "temperature must be a number of at least 0"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(top_k=0), "top_k must be a number of characters from 1 to 96"),
    (dict(top_k=97), "top_k must be"),
    (dict(seed=-1), "seed must be an integer of at least 0"),
])
def test_options_sampling_cannot_use_are_one_line_errors(trained, options, words):
    with pytest.raises(UsageError, match=words):
        trained.sample("a", length=3, **options)


def test_a_prime_outside_the_vocabulary_or_empty_is_a_one_line_error(trained):
    with pytest.raises(UsageError) as info:
        trained.sample("ab\u00e9c", length=3)
    message = info.value.render()
    assert "character 3, '\u00e9' (U+00E9), is not in the model's vocabulary of 96" in message
    assert "\n" not in message
    with pytest.raises(UsageError, match="prime must hold at least one character"):
        trained.sample("", length=3)


def test_netlang_sample_prints_the_prime_and_its_continuation(trained_run, capsys):
    net, run = trained_run
    code, out, err = cli(capsys, "sample", net, "--weights", run, "--device", "reference",
                         "--prime", "bc", "--length", "10", "--temperature", "0")
    assert code == 0, err
    assert out == "bcabcabcabca\n"
    code, again, _ = cli(capsys, "sample", net, "--weights", run, "--device", "reference",
                         "--prime", "a", "--length", "40", "--temperature", "3", "--seed", "5")
    assert code == 0 and len(again) == 1 + 40 + 1
    assert cli(capsys, "sample", net, "--weights", run, "--device", "reference", "--prime",
               "a", "--length", "40", "--temperature", "3", "--seed", "5")[1] == again


# -- the CPU engine -----------------------------------------------------------------------------

@pytest.mark.slow   # 10-13 s of compiling; the CLI sampling test below runs the CPU engine too
def test_on_the_cpu_engine_the_step_program_after_n_steps_equals_the_sequence_forward():
    # The CPU engine runs the step program (dense layers, gates and sums) with its own kernels
    # and the whole sequence with its recurrent kernels: two paths that must agree.
    model = netlang.compile(char_net("lstm(6, layers = 2, sequences = true) -> gru(5, "
                                     "sequences = true)"))
    engine = make_engine(model.graph, device="cpu", seed=1)
    sampler = TextSampler(model.graph, model.binding, engine)
    assert isinstance(sampler.engine, CpuEngine)
    ids = np.random.default_rng(0).integers(0, 96, size=(3, 7))
    full = engine.forward({"tokens": ids}, "eval")["logits"]
    states = sampler.initial_states(3)
    for t in range(7):
        scores, states = sampler.advance(ids[:, t], states)
        np.testing.assert_allclose(scores, full[:, t], rtol=1e-4, atol=1e-5)


def test_netlang_sample_on_the_cpu_engine_writes_what_the_reference_engine_writes(
        trained_run, capsys):
    net, run = trained_run
    code, out, err = cli(capsys, "sample", net, "--weights", run, "--device", "cpu",
                         "--prime", "bc", "--length", "10", "--temperature", "0")
    assert code == 0, err
    assert out == "bcabcabcabca\n"
    argv = ["sample", net, "--weights", run, "--prime", "ca", "--length", "25", "--seed", "2"]
    assert cli(capsys, *argv, "--device", "cpu")[1] == \
        cli(capsys, *argv, "--device", "reference")[1]


# A character model small enough to train on this repository's documentation in a minute.
DOCS_NET = """
input tokens: int32[64]
input next: int32[64]
output logits = tokens -> embedding(96, 32) -> lstm(128, sequences = true) -> dense(96)
train {
  loss cross_entropy(logits, next)
  optimizer adam(lr = 5e-3)
  clip_norm 5
  batch_size 32
  epochs 3
}
"""


@pytest.mark.slow
def test_a_character_lstm_trained_on_the_docs_beats_the_bigram_and_samples_on_the_cpu(
        tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    corpus = tmp_path / "corpus.txt"   # as docs/training.md makes it: README.md docs/*.md
    corpus.write_text("".join(path.read_text(encoding="utf-8") for path in
                              [root / "README.md", *sorted((root / "docs").glob("*.md"))]),
                      encoding="utf-8")
    net = tmp_path / "docs_lstm.net"
    net.write_text(DOCS_NET, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", str(net), "--data", f"text:{corpus}", "--out", str(run), "-q"]) == 0
    text = read_text(f"text:{corpus}")
    bigram = bigram_loss(text.windows(64, text.vocabulary(96)), smoothing=0.1)
    model = netlang.load(net, weights=run)
    held_out = model.evaluate(data=f"text:{corpus}")["loss"]
    assert held_out < bigram - 0.2, (held_out, bigram)
    capsys.readouterr()
    code, out, err = cli(capsys, "sample", net, "--weights", run, "--prime", "The model ",
                         "--length", "120", "--seed", "3")
    assert code == 0, err
    # 120 characters, then a newline unless the last of them is one.
    assert out.startswith("The model ") and len(out) - len("The model ") in (120, 121)


def test_netlang_sample_refuses_bad_input_in_one_line(trained_run, capsys):
    net, run = trained_run
    code, _, err = cli(capsys, "sample", net, "--weights", run, "--device", "reference",
                       "--prime", "\u00e9")
    assert code == 2 and err.count("\n") == 1 and "not in the model's vocabulary" in err
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(net), "--weights", str(run), "--length", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--length: expected a positive integer" in err
    assert err.count("\n") == 1
    code, _, err = cli(capsys, "sample", net, "--weights", run, "--device", "reference",
                       "--top-k", "500")
    assert code == 2 and "top_k must be" in err and err.count("\n") == 1
