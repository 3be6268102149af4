"""Issue 18's reproducers for what netlang reads back from disk: a run directory's files and
weights files, broken by accident or on purpose.

Each gives a one-line error and a nonzero exit, or works: never a traceback, a hang (a FIFO
where a file was expected), a read until memory runs out (a symlink to /dev/zero), a
RecursionError (JSON nested 100,000 deep), an OverflowError (a shape of 2**64), or a state
field the trainer would crash on or misuse.  The run they break is one tiny model trained for
one epoch with the NumPy engine; the commands that could hang run in a subprocess with a
timeout, so a hang fails the test instead of stopping the suite.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.errors import DataError, NetlangError, WeightsError
from netlang.train.loop import train
from netlang.train.resume_state import check_training_state
from netlang.train.run_dir import (
    plot_curves,
    read_run,
    saved_class_names,
    saved_vocabulary,
    trim_metrics,
)
from netlang.weights import (
    find_weights,
    load_checkpoint,
    load_weights,
    read_header,
    save_weights,
)
from netlang.weights.safe_read import MAX_JSON_DEPTH, json_depth

ROOT = Path(__file__).resolve().parent.parent

MODEL = """\
input x: [2]
input label: int32[]
output logits = x -> dense(2) -> relu -> dense(2)
train {
  loss cross_entropy(logits, label)
  batch_size 50
  epochs 1
  data blobs
}
"""

DEEP = "[" * 100_000 + "]" * 100_000
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding model.net and run/, the run of one epoch (standardized inputs, so the
    run has a normalization file too)."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "model.net").write_text(MODEL)
    model = netlang.compile(str(folder / "model.net"))
    train(model, out=folder / "run", device="reference", normalize="standardize")
    return folder


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run to break, beside its model.net, with only its committed
    checkpoint kept (so a damaged one has no intact previous one to fall back to)."""
    shutil.copy(trained / "model.net", tmp_path / "model.net")
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    committed = (run / "latest").read_text().strip()
    for older in run.glob("ckpt-*"):
        if older.name != committed:
            shutil.rmtree(older)
    return run


def checkpoint(run: Path) -> Path:
    """The committed checkpoint directory of `run`."""
    return run / (run / "latest").read_text().strip()


def _limit_memory() -> None:
    """Run in the child before it starts: reading /dev/zero until memory runs out (what the
    code before these checks did) ends in a MemoryError at 3 GiB, not in the OOM killer."""
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


def in_subprocess(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """`argv` run by this Python in a process of its own, with memory limited: a hang is a
    failed test (TimeoutExpired), not a stopped suite."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory)


def netlang_cli(*argv, cwd: Path) -> subprocess.CompletedProcess:
    """The command line in a process of its own (see in_subprocess)."""
    return in_subprocess(["-m", "netlang.cli", *argv], cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """A nonzero exit with one line on stderr holding every `expected` piece."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for piece in expected:
        assert piece in lines[0], lines[0]


def resume_error(run: Path) -> str:
    """The one-line error of resuming `run` in this process."""
    model = netlang.compile(str(run.parent / "model.net"))
    with pytest.raises(NetlangError) as info:
        train(model, resume=run, device="reference")
    text = info.value.render()
    assert "\n" not in text
    return text


def replace_with(path: Path, kind: str) -> None:
    """Put a FIFO, or a symlink to /dev/zero, where the file `path` was."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


# ---- files that are not regular files --------------------------------------------------------

@needs_fifo
@pytest.mark.parametrize("where", ["latest", "ckpt/state.json", "ckpt/weights.safetensors"])
def test_a_fifo_in_a_checkpoint_is_refused_not_waited_on(run, where):
    target = run / where.replace("ckpt", checkpoint(run).name)
    replace_with(target, "fifo")
    result = netlang_cli("train", "model.net", "--resume", run, "--device", "reference",
                         cwd=run.parent)
    assert_one_line_error(result, str(target), "is a FIFO")


@needs_fifo
def test_a_fifo_as_run_json_is_refused_not_waited_on(run):
    replace_with(run / "run.json", "fifo")
    np.save(run.parent / "x.npy", np.zeros((1, 2), np.float32))
    result = netlang_cli("predict", "model.net", "--weights", run, "x.npy",
                         "--device", "reference", cwd=run.parent)
    assert_one_line_error(result, "run.json", "is a FIFO")


@needs_dev_zero
@pytest.mark.parametrize("where", ["latest", "ckpt/state.json", "ckpt/weights.safetensors"])
def test_a_symlink_to_dev_zero_is_refused_not_read(run, where):
    target = run / where.replace("ckpt", checkpoint(run).name)
    replace_with(target, "zero")
    result = netlang_cli("train", "model.net", "--resume", run, "--device", "reference",
                         cwd=run.parent)
    assert_one_line_error(result, str(target), "is a character device")


@needs_dev_zero
def test_run_json_linked_to_dev_zero_is_refused(run):
    replace_with(run / "run.json", "zero")
    np.save(run.parent / "x.npy", np.zeros((1, 2), np.float32))
    result = netlang_cli("predict", "model.net", "x.npy", "--weights", run, "--device",
                         "reference", cwd=run.parent)
    assert_one_line_error(result, "run.json", "is a character device")


@needs_fifo
@needs_dev_zero
def test_weights_given_as_a_fifo_or_a_device_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(WeightsError, match="is a FIFO"):
        find_weights(tmp_path / "fifo.safetensors")
    with pytest.raises(WeightsError, match="is a character device"):
        find_weights("/dev/zero")


@needs_fifo
@pytest.mark.parametrize("file, reader", [("model.net", "saved_source"),
                                          ("vocabulary.json", "saved_vocabulary")])
def test_the_saved_source_and_vocabulary_are_refused_as_fifos(run, file, reader):
    if (run / file).exists():
        (run / file).unlink()
    os.mkfifo(run / file)
    result = in_subprocess(["-c", f"from netlang.train.run_dir import {reader}\n"
                            f"{reader}({str(run)!r})"], run.parent)
    assert result.returncode != 0
    assert f"{run / file}: is a FIFO" in result.stderr.splitlines()[-1]


def test_a_pointer_larger_than_its_cap_is_refused(run):
    (run / "latest").write_text("ckpt-" + "0" * 100_000)
    assert "checkpoint pointer is larger than 65,536 bytes" in resume_error(run)


# ---- JSON nested too deep ----------------------------------------------------------------------

def test_json_depth_counts_brackets_outside_strings_only():
    assert json_depth('{"a": [1, {"b": "[[[[\\"]]"}]}') == 3
    assert json_depth(DEEP) == 100_000
    assert json_depth('"[[[["') == 0


def test_deep_state_json_is_a_one_line_error(run):
    (checkpoint(run) / "state.json").write_text(DEEP)
    assert f"at most {MAX_JSON_DEPTH}" in resume_error(run)


def test_deep_run_json_is_a_one_line_error(run):
    (run / "run.json").write_text(DEEP)
    with pytest.raises(WeightsError, match="nested 100000 levels deep"):
        read_run(run)


def test_deep_safetensors_header_is_a_one_line_error(tmp_path):
    header = ('{"__metadata__": ' + DEEP + "}").encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(WeightsError, match="nested 100001 levels deep"):
        read_header(path)


def test_a_deep_vocabulary_is_a_one_line_error(run):
    (run / "vocabulary.json").write_text(DEEP)
    with pytest.raises(DataError, match="vocabulary.json: JSON nested 100000 levels deep"):
        saved_vocabulary(run)


def test_a_deep_metrics_line_is_dropped_on_resume_and_refused_by_the_plot(run):
    log = run / "metrics.jsonl"
    good = log.read_text()
    log.write_text(good + DEEP + "\n")
    with pytest.raises(WeightsError, match=r"metrics.jsonl:2: JSON nested"):
        plot_curves(run)
    trim_metrics(run, 1)
    assert log.read_text() == good


# ---- safetensors headers that do not add up --------------------------------------------------

def safetensors_file(path: Path, header: dict, data: bytes = b"") -> Path:
    """A safetensors file with `header` as written, whatever it claims."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("tensor, expected", [
    ({"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}, "needs 73786976294838206464 "),
    ({"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 4]},
     "needs 73786976294838206464 "),
    ({"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}, "at most 32 dimensions"),
    ({"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}, 'dtype "Q7"'),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, 'dtype ["F32"]'),
])
def test_malformed_safetensors_headers_are_one_line_errors(tmp_path, tensor, expected):
    path = safetensors_file(tmp_path / "w.safetensors", {"w": tensor}, b"\0" * 4)
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    assert expected in info.value.message and "\n" not in info.value.render()


def test_tensors_are_read_from_the_checked_file(tmp_path):
    path = tmp_path / "w.safetensors"
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], np.int64)}
    save_weights(path, values, source_hash="ab")
    params, _ = load_weights(path)
    for name, value in values.items():
        np.testing.assert_array_equal(params[name], value)
        assert params[name].flags.writeable and params[name].dtype == value.dtype


# ---- state.json, field by field ------------------------------------------------------------------

def edit_state(run: Path, edit) -> None:
    """Change the committed checkpoint's state with `edit(state)`; the file is written with
    Python's JSON writer (NaN, Infinity as JSON's extensions)."""
    path = checkpoint(run) / "state.json"
    doc = json.loads(path.read_text())
    edit(doc["state"])
    path.write_text(json.dumps(doc))


def setter(key: str, value):
    """An edit that sets the dotted field `key` to `value`."""
    def edit(state):
        *parents, last = key.split(".")
        for parent in parents:
            state = state[parent]
        state[last] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("optimizer_steps"), 'field "optimizer_steps" is missing'),
    (lambda s: s.pop("epoch"), 'field "epoch" is missing'),
    (setter("epoch", "abc"), 'field "epoch" must be an integer >= 0, not "abc"'),
    (setter("epoch", None), 'field "epoch" must be an integer >= 0, not null'),
    (setter("epoch", float("inf")), 'field "epoch" must be an integer >= 0, not Infinity'),
    (setter("epoch", -5), 'field "epoch" must be an integer >= 0, not -5'),
    (setter("epoch", 2.0), 'field "epoch" must be an integer >= 0, not 2.0'),
    (setter("epoch", 7), 'field "epoch" must be at most the run\'s 1 epochs, not 7'),
    (setter("lr", "abc"), 'field "lr" must be a finite number >= 0, not "abc"'),
    (setter("lr", float("nan")), 'field "lr" must be a finite number >= 0, not NaN'),
    (setter("lr", -0.1), 'field "lr" must be a finite number >= 0, not -0.1'),
    (setter("batch", 10**18), 'field "batch" must be at most the 4 steps taken'),
    (setter("step", -1), 'field "step" must be an integer in [0, 2**63), not -1'),
    (setter("optimizer_steps", True), 'field "optimizer_steps" must be an integer'),
    (setter("shuffle_rng.state.state", 2**300),
     'field "shuffle_rng.state.state" must be an integer in [0, 2**128)'),
    (setter("engine_rng.state.inc", 2), 'field "engine_rng.state.inc" must be odd, not 2'),
    (setter("engine_rng.bit_generator", "os.system"), 'field "engine_rng.bit_generator"'),
    (setter("shuffle_rng", []), 'field "shuffle_rng" must be a JSON object, not []'),
    (setter("epoch_rng", {"bit_generator": "PCG64"}), 'field "epoch_rng.state" is missing'),
    (setter("finished", "yes"), 'field "finished" must be true or false, not "yes"'),
    (setter("early_stopping.bad_epochs", -1), 'field "early_stopping.bad_epochs" must be'),
    (setter("epoch_elapsed", float("-inf")), 'field "epoch_elapsed" must be a finite number'),
    (setter("accumulator", {"loss_sum": 1.0}), 'field "accumulator.examples" is missing'),
    (setter("run.overrides", "epochs=3"), 'field "run.overrides" must be a list of strings'),
    (setter("run.limit", "10"), 'field "run.limit" must be an integer >= 0, not "10"'),
    (lambda s: s.clear(), 'field "version" is missing'),
])
def test_a_malformed_state_field_is_named_on_resume(run, edit, expected):
    edit_state(run, edit)
    message = resume_error(run)
    assert f"{checkpoint(run) / 'state.json'}: {expected}" in message


def test_a_batch_past_the_end_of_its_epoch_is_refused_on_resume(run):
    # step is raised too, so the check of the batch against the steps taken passes: only
    # the epoch's batch count (160 training examples in batches of 50: 4) can refuse it.
    edit_state(run, lambda s: s.update(batch=10**18, step=10**18))
    message = resume_error(run)
    assert (f'{checkpoint(run) / "state.json"}: field "batch" must be at most the 4 batches '
            f'of an epoch (160 examples in batches of 50), not 1000000000000000000') in message


def test_a_class_names_file_is_read_safely_and_checked(tmp_path):
    run = tmp_path / "run"
    (run / "classes.json").mkdir(parents=True)
    with pytest.raises(DataError, match=r"classes\.json: is a directory, expected a class names "
                                        r"file \(only regular files are read\)$"):
        saved_class_names(run)
    (run / "classes.json").rmdir()
    (run / "classes.json").write_text('{"classes": ["cat", "dog", "cat"]}')
    with pytest.raises(DataError, match=r"classes\.json: `classes` must name each class once, "
                                        r"not `cat` twice$"):
        saved_class_names(run)


def test_epoch_written_as_1e400_is_refused(run):
    path = checkpoint(run) / "state.json"
    doc = json.loads(path.read_text())
    doc["state"]["epoch"] = "EPOCH"
    path.write_text(json.dumps(doc).replace('"EPOCH"', "1e400"))
    assert 'field "epoch" must be an integer >= 0, not Infinity' in resume_error(run)


def test_a_bad_state_falls_back_to_the_previous_checkpoint(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    shutil.copy(trained / "model.net", tmp_path / "model.net")
    previous = checkpoint(run).parent / "ckpt-00000000"
    shutil.copytree(checkpoint(run), previous)
    edit_state(run, setter("epoch", -5))
    with pytest.warns(UserWarning, match='field "epoch" must be an integer >= 0'):
        loaded = load_checkpoint(run, check_state=check_training_state)
    assert loaded.path == previous


def test_phase_records_are_checked(run):
    state = json.loads((checkpoint(run) / "state.json").read_text())["state"]
    phase = {"optimizer_steps": 3, "engine_rng": state["engine_rng"], "steps": 3,
             "epoch_start_steps": 0}
    state.update(phases={"d": phase, "g": dict(phase)}, round={"turn": 1, "taken": 0},
                 accumulator=None)
    check_training_state(state, Path("state.json"))   # a well-formed phased state passes
    for key, value, expected in [
            ("steps", -1, 'field "phases.g.steps" must be an integer in [0, '),
            ("epoch_start_steps", 4, 'field "phases.g.epoch_start_steps" must be an integer '
                                     "in [0, 4), not 4"),
            ("engine_rng", None, 'field "phases.g.engine_rng" must be a JSON object, not null')]:
        broken = json.loads(json.dumps(state))
        broken["phases"]["g"][key] = value
        with pytest.raises(WeightsError) as info:
            check_training_state(broken, Path("state.json"))
        assert expected in info.value.message
    broken = json.loads(json.dumps(state))
    broken["round"]["turn"] = 2
    with pytest.raises(WeightsError, match=r'field "round.turn" must be an integer in \[0, 2\)'):
        check_training_state(broken, Path("state.json"))


def test_an_intact_run_still_resumes(run):
    model = netlang.compile(str(run.parent / "model.net"))
    history, _, _ = train(model, resume=run, device="reference", overrides=["epochs=2"])
    assert history["epoch"] == [2]


# ---- run.json and the normalization file -------------------------------------------------------

@pytest.mark.parametrize("edit, expected", [
    (setter("model", 3), 'field "model" must be a string, not 3'),
    (setter("overrides", [1]), 'field "overrides" must be a list of strings, not [1]'),
    (setter("compile", {"seconds": 1.0, "programs": {"train": "slow"}}),
     'field "compile.programs.train" must be a finite number >= 0, not "slow"'),
    (setter("normalize", "bogus"),
     'field "normalize" must be one of auto, scale, standardize, none, not "bogus"'),
])
def test_a_malformed_run_json_field_is_named(run, edit, expected):
    info = json.loads((run / "run.json").read_text())
    edit(info)
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(WeightsError) as error:
        read_run(run)
    assert expected in error.value.message


def test_a_run_json_as_training_writes_it_is_read(run):
    info = json.loads((run / "run.json").read_text())
    info["compile"] = {"seconds": 1.5, "programs": {"training step": 1.25, "evaluation": 0.25}}
    (run / "run.json").write_text(json.dumps(info))
    assert read_run(run) == info


def test_run_json_that_is_not_an_object_is_refused(run):
    (run / "run.json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="the document must be a JSON object, not"):
        read_run(run)


@pytest.mark.parametrize("mean", [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)])
def test_a_normalization_of_the_wrong_shape_is_a_one_line_error(run, mean):
    save_weights(run / "normalization.safetensors", {"mean": mean, "std": np.ones_like(mean)},
                 source_hash="ab")
    np.save(run.parent / "x.npy", np.zeros((1, 2), np.float32))
    result = netlang_cli("predict", "model.net", "--weights", run, "x.npy",
                         "--device", "reference", cwd=run.parent)
    assert_one_line_error(result, "normalization.safetensors: tensor `mean` has shape",
                          "the model's input has 2")


def test_the_saved_normalization_is_still_applied(run):
    np.save(run.parent / "x.npy", np.zeros((1, 2), np.float32))
    result = netlang_cli("predict", "model.net", "--weights", run, "x.npy",
                         "--device", "reference", cwd=run.parent)
    assert result.returncode == 0, result.stderr
