"""Training phases: named train sections, ordered by `phases alternate(...)` or `sequence(...)`.

Tiny dense models on random arrays: each phase changes only the layers it updates, an
alternation takes its steps in the stated ratio, a sequence runs each stage for its own
epochs, a run interrupted mid-round resumes bit for bit, and a lone phase trains exactly as
the unnamed section would.  The error cases are golden files (tests/errors/phases_*.net).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import straight_and_resumed

import netlang
from netlang.cli import main
from netlang.errors import UsageError
from netlang.frontend.format import format_source
from netlang.frontend.parser import parse
from netlang.runtime import make_engine
from netlang.train.loop import train
from netlang.train.overrides import apply_overrides
from netlang.train.phased import phase_runs
from netlang.train.progress import format_record

TWO_HEADS = """\
input x: [4]
input y: [2]
input t: [3]
shared = x -> dense(3) as A -> tanh
out1 = shared -> dense(2) as B1
out2 = shared -> dense(3) as B2

train {
  batch_size 4
  epochs 2
  optimizer sgd(lr = 0.1, momentum = 0.5)
  phases alternate(first * 2, second)
}

train first {
  loss mse(out1, y)
  update A, B1
}

train second {
  loss mse(out2, t)
  optimizer adam(lr = 0.01)
  freeze A, B1
}
"""

# Pretrain an autoencoder's encoder, then fine-tune a classifier on the encoder's code.
PRETRAIN_FINETUNE = """\
input x: [6]
input label: int32[]
code = x -> dense(4) as enc -> tanh
recon = code -> dense(6) as dec
logits = code -> dense(3) as head
output recon
output logits

train {
  batch_size 8
  epochs 1
  seed 3
  optimizer sgd(lr = 0.05)
  phases sequence(pretrain, finetune)
}

train pretrain {
  loss mse(recon, x)
  update enc, dec
  epochs 2
}

train finetune {
  loss cross_entropy(logits, label)
  update enc, head
  epochs 3
}
"""

PLAIN = """\
input x: [4]
input y: [2]
out = x -> dense(3) -> tanh -> dense(2) as head

train {
  batch_size 4
  epochs 2
  optimizer adam(lr = 0.01)
  loss mse(out, y)
"""


def compile_text(text: str, name: str = "model.net"):
    return netlang.compile(text, path=name)


def two_head_data(n: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4)).astype(np.float32),
            "y": rng.normal(size=(n, 2)).astype(np.float32),
            "t": rng.normal(size=(n, 3)).astype(np.float32)}


def classes_data(n: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 6)) * 0.3 + np.eye(3, 6)[label] * 2.0
    return {"x": x.astype(np.float32), "label": label.astype(np.int32)}


def layer_params(engine, layer: str) -> dict:
    return {name: engine.params[name].copy() for name in engine.params
            if engine.layer_of[name] == layer}


def changed_layers(before: dict, after: dict, layer_of: dict) -> set:
    return {layer_of[name] for name in before if not np.array_equal(before[name], after[name])}


# -- the language ---------------------------------------------------------------------------

def test_named_sections_parse_and_format_back():
    module = parse(TWO_HEADS, "two.net")
    names = [item.name.id if item.name else None for item in module.items
             if type(item).__name__ == "Train"]
    assert names == [None, "first", "second"]
    text = format_source(TWO_HEADS, "two.net")
    assert "train first {" in text and "train second {" in text
    assert parse(text, "two.net") == module
    assert format_source(text, "two.net") == text


def test_phases_inherit_the_unnamed_section():
    graph = compile_text(TWO_HEADS).graph
    first, second = graph.graph["phases"]
    assert (first.name, first.steps, second.name, second.steps) == ("first", 2, "second", 1)
    assert first.config.optimizer.name == "sgd" and first.config.optimizer.args["momentum"] == 0.5
    assert second.config.optimizer.name == "adam"
    assert first.config.batch_size == second.config.batch_size == 4
    assert first.config.update == ("A", "B1") and second.config.freeze == ("A", "B1")
    # The model's own loss (what evaluation reports as `loss`) is the last phase's.
    assert graph.graph["losses"] == second.losses
    # `--set` changes the unnamed section, and so every phase that does not set it itself.
    changed = apply_overrides(graph.graph["train"], ["optimizer=sgd(lr=0.3)", "epochs=5"], graph)
    assert first.settings(changed).optimizer.args["lr"] == 0.3
    assert second.settings(changed).optimizer.name == "adam"
    assert second.settings(changed).epochs == 5


def test_a_phase_program_differentiates_only_its_parameters():
    model = compile_text(TWO_HEADS)
    engine = make_engine(model.graph, model.train_config, device="reference")
    first, second = phase_runs(model.graph, model.train_config, lambda graph, config, params:
                               make_engine(graph, config, params, device="reference"),
                               engine.params)
    assert first.engine.params is second.engine.params is engine.params
    assert sorted(first.engine.layer_of[name] for name in first.engine.trainable) == \
        ["A", "A", "B1", "B1"]
    assert sorted(second.engine.layer_of[name] for name in second.engine.trainable) == \
        ["B2", "B2"]
    graph, gradients, order, _ = second.engine._training("train")
    assert {graph.nodes[node]["name"] for node in gradients.of} == set(second.engine.trainable)
    # No backward node of another layer (autodiff walked only what it needed), and no
    # forward node of the other head (its output is not one this phase's loss reads).
    loss_layer = graph.nodes[second.phase.losses[0][0]]["layer"]
    added = [node for node in order if node not in model.graph.nodes]
    assert {graph.nodes[node]["layer"] for node in added} <= {"B2", loss_layer, "objective"}
    assert "B1" not in {graph.nodes[node]["layer"] for node in order}
    assert list(second.engine.graph.graph["outputs"]) == ["B2"]


# -- alternation ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_alternation_keeps_its_ratio_and_each_phase_changes_only_its_layers(device):
    model = compile_text(TWO_HEADS)
    seen = []

    def watch(trainer):
        stepped = [name for name, count in trainer.phase_steps.items()
                   if count != (seen[-1][1][name] if seen else 0)]
        seen.append((stepped[0], dict(trainer.phase_steps),
                     {name: value.copy() for name, value in trainer.engine.params.items()}))

    history, engine, _ = train(model, x=two_head_data(18), device=device, evaluate_test=False,
                               on_step=watch, overrides=["epochs=3"])
    # 18 examples in batches of 4: 5 steps an epoch, and the rounds run on across epochs.
    order = [name for name, _, _ in seen]
    assert order == (["first", "first", "second"] * 5)[:15]
    assert [r["phases"]["first"]["steps"] for r in history.records] == [4, 3, 3]
    assert [r["phases"]["second"]["steps"] for r in history.records] == [1, 2, 2]
    layer_of = engine.layer_of
    for (_, _, before), (name, _, after) in zip(seen, seen[1:]):
        expected = {"first": {"A", "B1"}, "second": {"B2"}}[name]
        assert changed_layers(before, after, layer_of) == expected, name
    for record in history.records:
        assert record["loss"] == record["phases"]["second"]["loss"]
    line = format_record(history.records[0], 3)
    assert "loss[first]" in line and "loss[second]" in line


def test_cpu_and_reference_phases_agree():
    model = compile_text(TWO_HEADS)
    _, cpu, _ = train(model, x=two_head_data(), device="cpu", evaluate_test=False)
    _, ref, _ = train(model, x=two_head_data(), device="reference", evaluate_test=False)
    for name, value in ref.params.items():
        np.testing.assert_allclose(cpu.params[name], value, rtol=1e-5, atol=1e-6)


# A GAN in miniature: the generator's phase reads noise alone, so it takes no batch.
TINY_GAN = """\
input real: [3]
input z: [2] ~ normal
fake = z -> dense(3) as G
real_score = real -> dense(1) as D
fake_score = fake -> dense(1, share = D)
output fake

train {
  batch_size 4
  epochs 2
  seed 5
  optimizer adam(lr = 0.01)
  phases alternate(discriminator, generator)
}

train discriminator {
  loss softplus(-real_score) + softplus(fake_score)
  update D
}

train generator {
  loss softplus(-fake_score)
  update G
}
"""


def test_a_phase_fed_by_noise_alone_takes_no_batch():
    model = compile_text(TINY_GAN)
    runs = {run.name: run.reads_data for run in phase_runs(
        model.graph, model.graph.graph["train"],
        lambda graph, settings, shared: make_engine(graph, settings, shared), None)}
    assert runs == {"discriminator": True, "generator": False}
    seen = []
    data = {"real": np.random.default_rng(0).normal(2.0, 0.5, (10, 3)).astype(np.float32)}
    history, engine, _ = train(model, x=data, device="cpu", evaluate_test=False,
                               on_step=lambda trainer: seen.append(
                                   (trainer.batch, dict(trainer.phase_steps))))
    # 10 examples, batches of 4: 3 batches an epoch, each followed by a generator step.
    assert [r["phases"][name]["steps"] for r in history.records
            for name in ("discriminator", "generator")] == [3, 3, 3, 3]
    assert [batch for batch, _ in seen[:6]] == [1, 1, 2, 2, 3, 3]
    assert all(np.isfinite(r["loss"]) for r in history.records)


@pytest.mark.parametrize("stop_step", [3, 6])   # after a batch, at an epoch's end
def test_a_noise_phase_resumes_bit_for_bit(tmp_path, stop_step):
    model = compile_text(TINY_GAN)
    data = {"real": np.random.default_rng(1).normal(2.0, 0.5, (10, 3)).astype(np.float32)}
    full, resumed = straight_and_resumed(model, tmp_path, stop_step, x=data, device="cpu",
                                         evaluate_test=False)
    for name, value in full.params.items():
        assert np.array_equal(value, resumed.params[name]), name


# -- sequence -------------------------------------------------------------------------------

def test_sequence_pretrains_then_fine_tunes():
    model = compile_text(PRETRAIN_FINETUNE)
    seen = []
    history, engine, _ = train(
        model, x=classes_data(), device="reference", evaluate_test=False,
        validation_data=classes_data(24, seed=1),
        on_step=lambda trainer: seen.append(
            {name: value.copy() for name, value in trainer.engine.params.items()}))
    assert [r["phase"] for r in history.records] == ["pretrain"] * 2 + ["finetune"] * 3
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4, 5]
    assert all(set(r["phases"]) == {r["phase"]} for r in history.records)
    assert all(r["phases"][r["phase"]]["steps"] == 4 for r in history.records)
    # Pretraining never moves the classifier's head, fine-tuning never the decoder.
    assert changed_layers(seen[0], seen[7], engine.layer_of) == {"enc", "dec"}
    assert changed_layers(seen[7], seen[-1], engine.layer_of) == {"enc", "head"}
    # Each epoch validates its stage's own loss (not the other stages': a deep belief net's
    # would run every RBM's chains); the model's loss is the last phase's.
    assert [set(r["val_phases"]) for r in history.records] == \
        [{"pretrain"}] * 2 + [{"finetune"}] * 3
    last = history.records[-1]
    assert last["val_loss"] == pytest.approx(last["val_phases"]["finetune"])
    assert last["val_accuracy"] > 0.9
    first_finetune, last_finetune = history.records[2]["loss"], history.records[-1]["loss"]
    assert last_finetune < first_finetune


def test_a_lone_phase_trains_as_the_unnamed_section_does():
    """The phase machinery adds nothing of its own: one phase in a sequence, setting nothing,
    gives the weights of the same file without phases, bit for bit."""
    plain = compile_text(PLAIN + "}\n")
    phased = compile_text(PLAIN + "  phases sequence(only)\n}\n\ntrain only {\n}\n")
    data = two_head_data()
    data = {"x": data["x"], "y": data["y"]}
    _, a, _ = train(plain, x=data, device="cpu", evaluate_test=False)
    _, b, _ = train(phased, x=data, device="cpu", evaluate_test=False)
    for name, value in a.params.items():
        assert np.array_equal(value, b.params[name]), name
    assert plain.graph.graph["phases"][0].name is None


# -- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("stop_step", [2, 5, 6])   # in a round, at an epoch's end, both
def test_resume_mid_round_matches_an_uninterrupted_run(tmp_path, stop_step):
    model = compile_text(TWO_HEADS)
    data = two_head_data(18)
    full, resumed = straight_and_resumed(model, tmp_path, stop_step, x=data, device="cpu",
                                         evaluate_test=False)
    for name, value in full.params.items():
        assert np.array_equal(value, resumed.params[name]), name

    def records(path):
        out = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        for record in out:
            record.pop("time_s"), record.pop("samples_per_s", None), record.pop("compile_s", None)
        return out
    assert records(tmp_path / "a") == records(tmp_path / "b")
    saved = json.loads(next((tmp_path / "b").glob("ckpt-*/state.json")).read_text())["state"]
    assert set(saved["phases"]) == {"first", "second"}


# -- the surfaces: --set, the command line, the Python API ----------------------------------

def test_update_in_the_unnamed_section_and_from_set():
    model = compile_text(PLAIN.replace("out = x -> dense(3) -> tanh -> dense(2) as head",
                                       "out = x -> dense(3) as body -> tanh -> dense(2) as head")
                         + "  update head\n}\n")
    data = two_head_data()
    data = {"x": data["x"], "y": data["y"]}
    _, engine, _ = train(model, x=data, device="reference", evaluate_test=False)
    assert {engine.layer_of[name] for name in engine.trainable} == {"head"}
    _, engine, _ = train(model, x=data, device="reference", evaluate_test=False,
                         overrides=["update=none"])
    assert {engine.layer_of[name] for name in engine.trainable} == {"body", "head"}
    _, engine, _ = train(model, x=data, device="reference", evaluate_test=False,
                         overrides=["update=body"])
    assert {engine.layer_of[name] for name in engine.trainable} == {"body"}
    with pytest.raises(UsageError, match="unknown training setting `phases`"):
        apply_overrides(model.train_config, ["phases=sequence(a)"], model.graph)


def test_train_and_eval_print_each_phase(tmp_path, capsys):
    (tmp_path / "seq.net").write_text(PRETRAIN_FINETUNE)
    train_set, test_set = classes_data(32), classes_data(16, seed=1)
    np.savez(tmp_path / "seq.npz", x_train=train_set["x"], y_train=train_set["label"],
             x_test=test_set["x"], y_test=test_set["label"])
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "seq.net"), "--data", str(tmp_path / "seq.npz"),
                 "--out", str(run), "--device", "reference"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("epoch 1/5  pretrain:  loss[pretrain] ") for line in lines)
    assert any(line.startswith("epoch 5/5  finetune:  loss[finetune] ") for line in lines)
    assert main(["eval", str(tmp_path / "seq.net"), "--weights", str(run), "--device",
                 "reference", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["phases"]) == {"pretrain", "finetune"}
    assert result["loss"] == pytest.approx(result["phases"]["finetune"])


def test_fit_trains_the_phases():
    model = compile_text(TWO_HEADS)
    history = model.fit(x=two_head_data(), verbose=0, epochs=1)
    assert set(history.last["phases"]) == {"first", "second"}
    before = {name: value.copy() for name, value in model.engine.params.items()}
    model.fit(x=two_head_data(), verbose=0, epochs=1)   # goes on from the trained weights
    assert any(not np.array_equal(before[name], model.engine.params[name]) for name in before)
    assert set(model.evaluate(x=two_head_data())["phases"]) == {"first", "second"}


def test_check_names_each_phase_and_counts_what_no_phase_updates():
    summary = netlang.summary.summarize(compile_text(TWO_HEADS.replace("update A, B1",
                                                                       "update B1")).graph)
    assert summary.phases == {"first": ["mse(B1, y)"], "second": ["mse(B2, t)"]}
    assert summary.non_trainable_params == 4 * 3 + 3   # layer A: no phase updates it
    assert "Losses of phase first: mse(B1, y)" in summary.render()
