"""Run directories under concurrent writers, kill -9 and signals (netlang/train/run_lock.py,
the start-over rules of netlang/train/run_dir.py, the deferred signals of the trainer).

Every process here is real: a kill is SIGKILL, delivered by the training process to itself at
a chosen call (a driver script wraps one function of netlang with the kill) or by the test at
a random moment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import netlang
from netlang.errors import UsageError
from netlang.train.run_dir import clear_leftovers, start_over
from netlang.train.run_lock import LOCK_FILE, RunLock
from netlang.weights import load_weights

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "xor.net")
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
EPOCHS = 3
# Three epochs of 20 steps on the NumPy engine, a checkpoint after each epoch.
TRAIN = ["train", XOR, "--data", "blobs", "--device", "reference", "--set", "batch_size=8",
         "--optimizer", "adam", "--lr", "0.01", "--checkpoint-every", "0"]

# Runs `netlang` with one function of netlang ("module:function" or "module:Class.method")
# wrapped: at its CALL-th call, the process sends itself SIGNAL (SIGKILL: it dies there;
# SIGINT, SIGTERM: the call goes on after it).
DRIVER = """
import importlib, os, signal, sys
from netlang.cli import main
target, call, signal_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module_name, path = target.split(":")
owner = importlib.import_module(module_name)
*owners, name = path.split(".")
for part in owners:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = 0
def wrapped(*args, **kwargs):
    global calls
    calls += 1
    if calls == call:
        os.kill(os.getpid(), getattr(signal, signal_name))
    return original(*args, **kwargs)
setattr(owner, name, wrapped)
sys.exit(main(sys.argv[4:]))
"""


def netlang_cli(*argv, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlang.cli", *map(str, argv)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def driven(tmp_path, target: str, call: int, signal_name: str, *argv):
    """`netlang *argv` with `target` ("module:function") sending `signal_name` at its
    `call`-th call."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), target, str(call), signal_name,
                           *map(str, argv)], env=ENV, capture_output=True, text=True,
                          timeout=120)


def epochs_logged(out: Path) -> list:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses_logged(out: Path) -> list:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def logged(log: Path) -> int:
    """The lines in the log `log` (0 before it exists)."""
    return len(log.read_text().splitlines()) if log.exists() else 0


def assert_same_run(out: Path, reference: Path) -> None:
    """`out` ended as the uninterrupted run `reference` did: each epoch logged once, with the
    same losses, and bit-identical final weights."""
    assert epochs_logged(out) == list(range(1, EPOCHS + 1))
    assert losses_logged(out) == losses_logged(reference)
    a, _ = load_weights(out / "weights.safetensors")
    b, _ = load_weights(reference / "weights.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not leftovers(out)


def leftovers(out: Path) -> list:
    """The temporary directories and files of writes in `out` that never finished."""
    return [p.name for p in out.iterdir() if p.name.startswith(".tmp") or
            p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = netlang_cli(*TRAIN, "--epochs", EPOCHS, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


# -- the lock -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        result = netlang_cli(*TRAIN, "--epochs", 1, "--out", out)
        model = netlang.compile(XOR)
        model.device = "reference"
        # Other descriptors of this very process are refused too.
        with pytest.raises(UsageError, match="in use by another netlang process"):
            model.save(out)
        with pytest.raises(UsageError, match="in use by another netlang process"):
            model.fit(data="xor", epochs=1, out=out, verbose=0)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]   # nothing written
    assert result.returncode == 2
    assert result.stderr == (f"error: {out} is in use by another netlang process (pid "
                             f"{os.getpid()}): wait for it to finish, or write this run into "
                             f"another directory\n")
    assert netlang_cli(*TRAIN, "--epochs", 1, "--out", out).returncode == 0   # released


def test_saving_into_a_training_runs_directory_is_refused(tmp_path):
    # Its last checkpoint loads before a weights.safetensors beside it: the weights saved
    # there would never be the ones loaded.
    model = netlang.compile(XOR)
    model.device = "reference"
    model.fit(data="xor", epochs=1, out=tmp_path / "run", verbose=0)
    with pytest.raises(UsageError, match=r"run holds a training run, whose last checkpoint "
                                         r"loads before weights saved beside it"):
        model.save(tmp_path / "run")
    model.save(tmp_path / "saved")   # a directory of its own, or a file, is written
    model.save(tmp_path / "run" / "copy.safetensors")


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = ("import os, signal, sys\nfrom netlang.train.run_lock import RunLock\n"
              "RunLock(sys.argv[1]).acquire()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", holder, str(out)], env=ENV, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert (out / LOCK_FILE).read_text().strip().isdigit()   # the dead holder's pid
    with RunLock(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_run_refused_before_writing_leaves_no_directory(tmp_path):
    missing = tmp_path / "nowhere" / "run"
    result = netlang_cli(*TRAIN, "--resume", missing)
    assert result.returncode == 2 and "no such checkpoint directory" in result.stderr
    assert not (tmp_path / "nowhere").exists()
    with RunLock(tmp_path / "kept"):
        (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert (tmp_path / "kept" / "notes.txt").exists()


def test_two_writers_started_at_once(tmp_path, uninterrupted):
    """Exactly one trains; the other is refused at once; the run is the winner's, whole."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "netlang.cli", *TRAIN, "--epochs", str(EPOCHS),
               "--samples", "4000", "--out", str(out)]
    writers = [subprocess.Popen(command + ["--seed", str(seed)], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed in (1, 2)]
    results = [(writer, *writer.communicate(timeout=120)) for writer in writers]
    codes = sorted(writer.returncode for writer, _, _ in results)
    assert codes == [0, 2], [err for _, _, err in results]
    refused = next(err for writer, _, err in results if writer.returncode == 2)
    # Refused by the lock while the other trains, or (a loaded machine can start the loser
    # after the winner has finished) by the run the winner left: either way one line.
    assert len(refused.splitlines()) == 1 and (
        "is in use by another netlang process" in refused
        or "already holds a training run" in refused), refused
    assert epochs_logged(out) == list(range(1, EPOCHS + 1))
    seed = next(o.split("=")[1] for o in json.loads((out / "run.json").read_text())["overrides"]
                if o.startswith("seed="))
    alone = tmp_path / "alone"
    assert netlang_cli(*TRAIN, "--epochs", EPOCHS, "--samples", "4000", "--seed", seed,
                       "--out", alone).returncode == 0
    a, _ = load_weights(out / "weights.safetensors")
    b, _ = load_weights(alone / "weights.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- kill -9 --------------------------------------------------------------------------------


def test_killed_before_the_first_checkpoint_a_plain_restart_starts_over(tmp_path,
                                                                         uninterrupted):
    out = tmp_path / "run"
    killed = driven(tmp_path, "netlang.train.trainer:save_checkpoint", 1, "SIGKILL",
                    *TRAIN, "--epochs", EPOCHS, "--out", out)
    assert killed.returncode == -signal.SIGKILL
    assert epochs_logged(out) == [1] and not (out / "latest").exists()
    again = netlang_cli(*TRAIN, "--epochs", EPOCHS, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "stopped before its first checkpoint; starting over" in again.stdout
    assert_same_run(out, uninterrupted)


def test_killed_before_the_first_checkpoint_resume_starts_from_the_beginning(tmp_path,
                                                                              uninterrupted):
    out = tmp_path / "run"
    killed = driven(tmp_path, "netlang.train.trainer:save_checkpoint", 1, "SIGKILL",
                    *TRAIN, "--epochs", EPOCHS, "--out", out)
    assert killed.returncode == -signal.SIGKILL
    # The run's settings come from its run.json, as they would from a checkpoint.
    resumed = netlang_cli("train", XOR, "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "stopped before its first checkpoint; training it again from the beginning" \
        in resumed.stdout
    assert_same_run(out, uninterrupted)


# (function wrapped, its call that kills): checkpoint files are written by write_bytes, three
# to a checkpoint's temporary directory and then `latest`, the commit: four per epoch.
KILL_POINTS = {
    "inside the second checkpoint's files": ("netlang.weights.checkpoints:write_bytes", 6),
    "before the second checkpoint's commit": ("netlang.weights.checkpoints:write_bytes", 8),
    "after the final checkpoint": ("netlang.train.trainer:save_weights", 1),
}


# The default run kills the run inside a checkpoint's files; the other two moments (3-4 s of a
# run each) are slow.
@pytest.mark.parametrize("moment", [
    moment if moment == "inside the second checkpoint's files"
    else pytest.param(moment, marks=pytest.mark.slow) for moment in KILL_POINTS])
def test_killed_at_a_checkpoint_resume_ends_as_an_uninterrupted_run(tmp_path, uninterrupted,
                                                                    moment):
    out = tmp_path / "run"
    target, call = KILL_POINTS[moment]
    killed = driven(tmp_path, target, call, "SIGKILL", *TRAIN, "--epochs", EPOCHS,
                    "--out", out)
    assert killed.returncode == -signal.SIGKILL
    assert bool(leftovers(out)) == moment.startswith("inside")
    refused = netlang_cli(*TRAIN, "--epochs", EPOCHS, "--out", out)
    assert refused.returncode == 2 and "already holds a training run" in refused.stderr
    assert not leftovers(out)   # the next writer cleared them, even one then refused
    resumed = netlang_cli("train", XOR, "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_killed_at_random_moments_resume_or_restart_ends_as_an_uninterrupted_run(tmp_path):
    """kill -9 from outside at random moments of a run (starting up, before the first
    checkpoint, between and inside checkpoints), then go on: `--resume` where a checkpoint
    was committed, a plain restart where none was; the run ends as if never killed."""
    settings = [*TRAIN, "--samples", "4000", "--epochs", "6"]   # 400 steps an epoch
    reference = tmp_path / "uninterrupted"
    assert netlang_cli(*settings, "--out", reference).returncode == 0
    moments = random.Random(18)
    out = tmp_path / "run"
    log = out / "metrics.jsonl"
    killed = []   # (epochs logged, a checkpoint committed) when each kill came
    while len(killed) < 6:
        command = ["train", XOR, "--resume", out] if (out / "latest").exists() \
            else [*settings, "--out", out]
        run = subprocess.Popen([sys.executable, "-m", "netlang.cli", *map(str, command)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        # Wait for this many more epochs in the log (0-2: in its start-up, before the first
        # checkpoint, or later), then a moment more.
        lines = logged(log) + moments.randrange(0, 3)
        deadline = time.monotonic() + 60
        while run.poll() is None and time.monotonic() < deadline and logged(log) < lines:
            time.sleep(0.002)
        time.sleep(moments.uniform(0, 0.3))
        run.kill()
        _, err = run.communicate(timeout=60)
        assert run.returncode in (0, -signal.SIGKILL), err
        if run.returncode == -signal.SIGKILL:
            killed.append((logged(log), (out / "latest").exists()))
        else:   # finished before the kill: start a new run over it
            start_over(out)
    final = ["train", XOR, "--resume", out] if (out / "latest").exists() \
        else [*settings, "--out", out]
    result = netlang_cli(*final)
    assert result.returncode == 0, result.stderr
    assert epochs_logged(out) == list(range(1, 7))
    assert losses_logged(out) == losses_logged(reference)
    a, _ = load_weights(out / "weights.safetensors")
    b, _ = load_weights(reference / "weights.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    print("kills (epochs logged, checkpoint committed):", killed)


def test_the_next_writer_clears_what_a_killed_one_left(tmp_path):
    out = tmp_path / "run"
    (out / ".tmp-ckpt-abc123").mkdir(parents=True)
    (out / ".tmp-ckpt-abc123" / "weights.safetensors").write_bytes(b"half")
    (out / ".run.json.k3x_9q0z.tmp").write_text("{")
    for kept in ("notes.txt", ".hidden", "ckpt.tmp"):
        (out / kept).write_text("mine")
    clear_leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == [".hidden", "ckpt.tmp", "notes.txt"]


def test_starting_over_removes_the_old_runs_checkpoints_first(tmp_path):
    out = tmp_path / "run"
    (out / "ckpt-00000020").mkdir(parents=True)
    # The old run's class names, vocabulary and normalization go too: a new run on other data
    # writes none, and predict would read the old ones as its own.
    for name in ("latest", "weights.safetensors", "metrics.jsonl", "summary.json",
                 "run.json", "classes.json", "vocabulary.json", "normalization.safetensors"):
        (out / name).write_text("old")
    start_over(out)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


# -- signals --------------------------------------------------------------------------------


# When a signal comes too late to cut a run short: after its last step, as its final
# checkpoint is saved; and after the test figures, as the summary is written.
LATE = {"final checkpoint": ("netlang.train.trainer:save_checkpoint", EPOCHS),
        "summary": ("netlang.train.loop:write_summary", 1)}


@pytest.mark.parametrize("moment", LATE)
@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_after_the_last_step_says_the_run_is_complete(tmp_path, uninterrupted,
                                                               signal_name, status, moment):
    out = tmp_path / "run"
    target, call = LATE[moment]
    result = driven(tmp_path, target, call, signal_name, *TRAIN, "--epochs", EPOCHS,
                    "--out", out)
    assert result.returncode == status, result.stderr
    assert result.stderr == "interrupted after the final checkpoint; the run is complete\n"
    assert "saved weights to" in result.stdout and (out / "summary.json").exists()
    assert_same_run(out, uninterrupted)


def test_a_signal_during_training_saves_and_exits_with_the_signals_status(tmp_path,
                                                                           uninterrupted):
    out = tmp_path / "run"
    # SIGTERM (a scheduler's) inside the first epoch: a checkpoint, then 143.
    stopped = driven(tmp_path, "netlang.train.trainer:Trainer._lr", 5, "SIGTERM", *TRAIN,
                     "--epochs", EPOCHS, "--out", out)
    assert stopped.returncode == 143, stopped.stderr
    assert "checkpoint saved" in stopped.stderr and "--resume" in stopped.stderr
    resumed = netlang_cli("train", XOR, "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def test_a_signal_once_the_command_has_finished_keeps_its_status(tmp_path):
    """Ctrl-C just after the last line: Python's shutdown is not interrupted (it used to end
    killed by SIGINT, status -2, without a word)."""
    run = subprocess.Popen([sys.executable, "-m", "netlang.cli", *TRAIN, "--epochs", "1",
                            "--out", str(tmp_path / "run")], env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    for line in run.stdout:
        if line.startswith("saved weights"):
            time.sleep(0.05)
            run.send_signal(signal.SIGINT)
            break
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0 and err == "", err
