"""Data-parallel training across MPI processes (netlang/train/distributed.py).

The tests that start processes run `mpiexec -n 2` (oversubscribed on a small machine, one
Numba thread per process) on tiny models, and skip, saying why, where mpi4py or mpiexec is
absent (`pip install "netlang[mpi]"` brings both).  The others need no MPI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import netlang
from netlang.ops.norm import draw_dropout_key, dropout_key_at, dropout_mask_array
from netlang.ops.norm_loops import dropout_bits
from netlang.train.distributed import combine_results
from netlang.train.shards import Shards, tree_sum

ROOT = Path(__file__).resolve().parent.parent

# SLOW_MPI: the default run keeps one MPI job of each kind (two and more processes training as
# one, a fit under mpiexec, an uneven last batch, shard trees, a killed process, refusals); the
# jobs marked slow (5-9 s each: resuming across process counts, Ctrl-C, batch norm across
# processes, shards within a process, three processes, a hung process) run in .ci/run's slow
# pass.

# An MLP with dropout on three blobs: 1,600 training examples in batches of 16 make 100 steps
# an epoch, 300 in three epochs.
MLP = """
input x: [2]
input label: int32[]
h = x -> dense(16) -> relu -> dropout(0.3) -> dense(16) -> tanh -> dropout(0.2)
output logits = h -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr = 0.01)
  regularize l2(1e-4)
  batch_size 16
  epochs 3
  val_split 0.2
  metrics accuracy
  data blobs
}
"""

# A small CNN with batch norm after its convolution and its dense layer, fitted by `FIT_CNN`
# on random 6×6 images (as many as its third argument says).
BATCHNORM = """
input image: [6, 6, 1]
input label: int32[]
output logits = image
  -> conv2d(4, 3, bias = false) -> batchnorm(momentum = 0.2) -> relu -> maxpool(2)
  -> flatten -> dense(8, bias = false) -> batchnorm -> tanh -> dense(3)
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.05, momentum = 0.9)
  batch_size 16
  epochs 4
  val_split 0.2
  metrics accuracy
}
"""

FIT_CNN = """
import json, os, sys
from pathlib import Path
import numpy as np
import netlang
rng = np.random.default_rng(0)
x = rng.normal(size=(int(sys.argv[3]), 6, 6, 1)).astype(np.float32)
y = ((x[:, :3].sum(axis=(1, 2, 3)) > 0).astype(np.int32)
     + (x[:, :, :3].sum(axis=(1, 2, 3)) > 1).astype(np.int32))
model = netlang.compile(sys.argv[1])
history = model.fit(x, y, verbose=0, settings=sys.argv[4:])
name = os.environ.get("PMI_RANK", "alone")
Path(sys.argv[2], name + ".json").write_text(json.dumps(history["loss"] + history["val_loss"]))
np.savez(Path(sys.argv[2], name + ".npz"), **model.parameters(), **model.buffers())
"""


def find_mpiexec() -> str | None:
    """mpiexec on the PATH, or beside this Python's scripts (where the mpich wheel puts it)."""
    found = shutil.which("mpiexec")
    if found:
        return found
    beside = Path(sysconfig.get_path("scripts")) / "mpiexec"
    return str(beside) if beside.exists() else None


def has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401  (only whether it is installed)
    except ImportError:
        return False
    return True


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not has_mpi4py(),
                               reason="needs mpi4py and mpiexec: pip install \"netlang[mpi]\"")


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Two processes share the machine's cores: one thread each (Numba's and OpenBLAS's).
    env["NUMBA_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def train_command(model: Path, out: Path, *extra) -> list:
    return [sys.executable, "-m", "netlang.cli", "train", str(model), "--samples", "2000",
            "--out", str(out), *map(str, extra)]


def run(command: list, *, processes: int = 1, timeout: float = 300, env=None):
    """(status, stdout, stderr) of `command`, under `mpiexec -n processes` when more than 1."""
    if processes > 1:
        command = [MPIEXEC, "-n", str(processes)] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or environment())
    return done.returncode, done.stdout, done.stderr


def epoch_losses(out: Path) -> list:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["val_loss"], r["accuracy"]) for r in records]


@pytest.fixture
def mlp(tmp_path) -> Path:
    path = tmp_path / "mlp.net"
    path.write_text(MLP)
    return path


# -- without MPI ------------------------------------------------------------------------------

def test_a_shifted_key_draws_the_rows_of_the_whole_batch_mask():
    """Rows r0.. of a batch's mask, drawn alone with `dropout_key_at`, are those rows of the
    mask of the whole batch: what makes masks independent of the process count."""
    key = draw_dropout_key(np.random.default_rng(3))
    whole = dropout_bits(key[0], np.arange(64 * 5, dtype=np.uint64)).reshape(64, 5)
    for first_row in (0, 1, 17, 63):
        part = dropout_bits(dropout_key_at(key, first_row * 5)[0],
                            np.arange((64 - first_row) * 5, dtype=np.uint64))
        assert np.array_equal(part.reshape(-1, 5), whole[first_row:])
    assert np.array_equal(dropout_key_at(key, 0), key)   # one process: the key as it was
    # And the reference mask draws exactly these bits.
    mask = dropout_mask_array((64, 5), 0.5, np.random.default_rng(3), np.float64)
    kept = (whole >> np.uint64(32)) >= np.uint64(2 ** 31)
    assert np.array_equal(mask != 0, kept)


def test_results_of_parts_combine_into_the_whole():
    parts = [{"loss": 1.0, "accuracy": 0.5, "examples": 10, "confusion": [[1, 2], [3, 4]],
              "phases": {"a": 2.0}, "heads": {"h": {"op": "cross_entropy", "loss": 1.0}}},
             {"loss": 4.0, "accuracy": 1.0, "examples": 30, "confusion": [[1, 0], [0, 1]],
              "phases": {"a": 6.0}, "heads": {"h": {"op": "cross_entropy", "loss": 2.0}}}]
    whole = combine_results(parts)
    assert whole["examples"] == 40
    assert whole["loss"] == pytest.approx((10 * 1.0 + 30 * 4.0) / 40)
    assert whole["accuracy"] == pytest.approx((5 + 30) / 40)
    assert whole["confusion"] == [[2, 2], [3, 5]]
    assert whole["phases"]["a"] == pytest.approx(5.0)
    assert whole["heads"]["h"] == {"op": "cross_entropy", "loss": pytest.approx(1.75)}


def test_shards_add_in_a_fixed_tree_of_neighbours():
    """(0 + 1) + (2 + 3), and an odd last shard passed up a level: ((0 + 1) + 2).  Values whose
    sum depends on the order in float32 tell the trees apart."""
    values = [np.float32(1e8), np.float32(1.0), np.float32(-1e8), np.float32(1.0)]
    as_arrays = [np.array([v]) for v in values]
    assert tree_sum(as_arrays)[0] == (values[0] + values[1]) + (values[2] + values[3])
    three = [np.array([v]) for v in values[:3]]
    assert tree_sum(three)[0] == (values[0] + values[1]) + values[2]


def test_shards_cut_a_batch_in_order_and_each_process_takes_consecutive_ones():
    shards = Shards(4)
    assert [shards.bounds(10, j) for j in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [shards.bounds(2, j) for j in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert shards.share(10) == (0, 10) and list(shards.mine()) == [0, 1, 2, 3]

    class Second:   # rank 1 of 2
        rank, size = 1, 2
    second = Shards(4, Second())
    assert list(second.mine()) == [2, 3] and second.share(10) == (6, 10)
    assert second.share(10, first=0) == (0, 6)


@pytest.mark.slow   # see SLOW_MPI
def test_one_process_with_shards_trains_as_the_fused_step(tmp_path, mlp):
    """`gradient_shards=2` in one process: two gradient passes, their tree sum and the host
    update, where the fused step computes the same figures in another order."""
    fused, sharded = tmp_path / "fused", tmp_path / "sharded"
    status, _, err = run(train_command(mlp, fused, "--epochs", 1))
    assert status == 0, err
    status, _, err = run(train_command(mlp, sharded, "--epochs", 1, "--set",
                                       "gradient_shards=2"))
    assert status == 0, err
    for whole, parts in zip(epoch_losses(fused), epoch_losses(sharded), strict=True):
        assert parts == pytest.approx(whole, rel=1e-5)


@pytest.mark.slow   # see SLOW_MPI
def test_a_model_trained_in_shards_takes_gradients_as_one_process_afterwards(tmp_path):
    """After `fit` with 2 shards (their passes meeting at each batch norm on threads), the
    model's own gradient pass is one process's again: no shard waits for another."""
    path = tmp_path / "bn.net"
    path.write_text(BATCHNORM)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=40).astype(np.int32)
    model = netlang.compile(str(path))
    model.fit(x, y, epochs=1, verbose=0, val_split=0, gradient_shards=2)
    gradients = model.gradients(x[:8], y[:8], mode="train")
    assert all(np.isfinite(g).all() for g in gradients.gradients.values())


def test_a_process_outside_mpiexec_never_imports_mpi4py(tmp_path, mlp):
    code = ("import sys, netlang\n"
            f"netlang.compile({str(mlp)!r}).fit(data='blobs', epochs=1, verbose=0, "
            "limit=64, settings=['val_split=0'])\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\n")
    env = {k: v for k, v in environment().items()
           if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")}
    status, out, err = run([sys.executable, "-c", code], env=env)
    assert status == 0, err


# -- two processes -----------------------------------------------------------------------------

@needs_mpi
def test_after_a_warmup_for_two_processes_their_run_compiles_nothing(tmp_path, mlp):
    """`netlang warmup --processes 2` compiles what each of two MPI processes calls (its
    gradient pass and the update, not the training step): their run then loads everything
    (run.json records no compiling)."""
    env = {**environment(), "NETLANG_CACHE": str(tmp_path / "cache"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    status, out, err = run([sys.executable, "-m", "netlang.cli", "warmup", str(mlp),
                            "--processes", "2", "--json"], env=env)
    assert status == 0, err
    assert {"gradient pass", "optimiser update"} <= set(json.loads(out)["compiled"]), out
    status, out, err = run(train_command(mlp, tmp_path / "run", "--epochs", "1"), processes=2,
                           env=env)
    assert status == 0, err
    assert "compile" not in json.loads((tmp_path / "run" / "run.json").read_text()), out


@needs_mpi
def test_two_processes_train_as_one(tmp_path, mlp):
    """300 steps of an MLP with dropout and an L2 penalty: the per-epoch losses of 2 processes
    are one process's to 1e-5; only rank 0 printed and wrote the run directory."""
    one, two = tmp_path / "one", tmp_path / "two"
    status, out, err = run(train_command(mlp, one))
    assert status == 0, err
    status, out, err = run(train_command(mlp, two), processes=2)
    assert status == 0, err
    for single, shared in zip(epoch_losses(one), epoch_losses(two), strict=True):
        assert shared == pytest.approx(single, rel=1e-5)
    assert out.count("epoch 1/3") == 1 and out.count("saved weights") == 1, out
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    records = (two / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 3   # one writer: no record twice
    test_one = json.loads((one / "summary.json").read_text())["test"]
    test_two = json.loads((two / "summary.json").read_text())["test"]
    assert test_two["examples"] == test_one["examples"]
    assert test_two["loss"] == pytest.approx(test_one["loss"], rel=1e-5)


FIT = """
import json, os, sys
from pathlib import Path
import numpy as np
import netlang
rng = np.random.default_rng(0)
x = rng.normal(size=(480, 2)).astype(np.float32)
y = (x[:, 0] * x[:, 1] > 0).astype(np.int32) + (x[:, 0] > 1)
history = netlang.compile(sys.argv[1]).fit(x, y, epochs=2, verbose=0, val_split=0.25)
# A file per process: the processes' printed lines may interleave.
Path(sys.argv[2], os.environ.get("PMI_RANK", "alone")).write_text(
    json.dumps(history["loss"] + history["val_loss"]))
"""


@needs_mpi
def test_fit_under_mpiexec_trains_as_one_process(tmp_path, mlp):
    """`Model.fit` in a script started by mpiexec: every process's history is one process's."""
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    status, out, err = run([sys.executable, str(script), str(mlp), str(tmp_path)])
    assert status == 0, err
    single = json.loads((tmp_path / "alone").read_text())
    status, out, err = run([sys.executable, str(script), str(mlp), str(tmp_path)], processes=2)
    assert status == 0, err
    for rank in ("0", "1"):
        assert json.loads((tmp_path / rank).read_text()) == pytest.approx(single, rel=1e-5)


@needs_mpi
def test_a_last_batch_of_one_example_leaves_a_process_idle_and_in_step(tmp_path, mlp):
    """301 blobs leave 241 to train on: each epoch's last batch has 1 example, so rank 1 has
    none and draws no dropout key; it must still take the sum, and rank 0's generator.  One
    process with 2 shards (the second empty) ends with the same bits."""
    one, two = tmp_path / "one", tmp_path / "two"
    losses = []
    for out, processes in ((one, 1), (two, 2)):
        status, _, err = run([sys.executable, "-m", "netlang.cli", "train", str(mlp),
                              "--samples", "301", "--val-split", "0", "--epochs", "2",
                              "--set", "gradient_shards=2", "--out", str(out)],
                             processes=processes)
        assert status == 0, err
        records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        losses.append([value for r in records for value in (r["loss"], r["test_loss"])])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert_same_bits(weights(one), weights(two))


@needs_mpi
@pytest.mark.slow   # see SLOW_MPI
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes(tmp_path, mlp, first, then):
    """Two epochs with `first` processes, resumed for a third with `then`: the losses of an
    uninterrupted run in one process, to 1e-5."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    status, _, err = run(train_command(mlp, straight))
    assert status == 0, err
    status, _, err = run(train_command(mlp, split, "--epochs", 2), processes=first)
    assert status == 0, err
    status, out, err = run([sys.executable, "-m", "netlang.cli", "train", str(mlp),
                            "--resume", str(split), "--epochs", "3"], processes=then)
    assert status == 0, err
    assert out.count("resuming") == 1
    for whole, resumed in zip(epoch_losses(straight), epoch_losses(split), strict=True):
        assert resumed == pytest.approx(whole, rel=1e-5)


@needs_mpi
@pytest.mark.slow   # see SLOW_MPI
def test_ctrl_c_stops_every_process_at_one_step_and_one_process_resumes(tmp_path, mlp):
    """Ctrl-C to mpiexec (which passes it to both processes, each at its own moment): one
    message, status 130, and a checkpoint mid-epoch that one process resumes to the losses of
    a run never interrupted."""
    split, straight = tmp_path / "split", tmp_path / "straight"
    job = subprocess.Popen([MPIEXEC, "-n", "2"] + train_command(mlp, split, "--epochs", 1000),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=environment())
    try:
        deadline = time.monotonic() + 240
        while not (split / "metrics.jsonl").exists():   # an epoch is done
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, err
    assert err.count("interrupted at epoch") == 1, err
    epoch = int(err.split("interrupted at epoch ")[1].split(":")[0])
    status, out, err = run([sys.executable, "-m", "netlang.cli", "train", str(mlp),
                            "--resume", str(split), "--epochs", str(epoch + 1)])
    assert status == 0, err
    status, _, err = run(train_command(mlp, straight, "--epochs", epoch + 1))
    assert status == 0, err
    for whole, resumed in zip(epoch_losses(straight), epoch_losses(split), strict=True):
        assert resumed == pytest.approx(whole, rel=1e-5)


@needs_mpi
def test_a_batch_the_processes_cannot_share_is_refused(tmp_path, mlp):
    status, _, err = run(train_command(mlp, tmp_path / "run", "--batch-size", 15), processes=2)
    assert status != 0
    assert "error: the batch size 15 does not split evenly among 2 MPI processes" in err


@needs_mpi
@pytest.mark.slow   # see SLOW_MPI
def test_batch_norm_across_processes_trains_as_one_process(tmp_path):
    """324 steps of a CNN with two batch norms, each process normalising with the whole
    batch's statistics: 2 processes' per-epoch losses are one process's to 1e-5, and so
    are their weights and running statistics, alike in both processes.  1,604 images leave
    1,283 to train on: each epoch ends with a batch of 3, which the processes share 2 and 1
    (`ShardedSteps.sum_statistics` weights their Σg)."""
    model, script = tmp_path / "bn.net", tmp_path / "fit.py"
    model.write_text(BATCHNORM)
    script.write_text(FIT_CNN)
    for processes in (1, 2):
        status, _, err = run([sys.executable, str(script), str(model), str(tmp_path), "1604"],
                             processes=processes)
        assert status == 0, err
    single = json.loads((tmp_path / "alone.json").read_text())
    alone = np.load(tmp_path / "alone.npz")
    ranks = [np.load(tmp_path / f"{rank}.npz") for rank in (0, 1)]
    assert any("running_var" in name for name in alone.files)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == pytest.approx(single,
                                                                                  rel=1e-5)
    for name in alone.files:
        assert np.array_equal(ranks[0][name], ranks[1][name]), name
        np.testing.assert_allclose(ranks[0][name], alone[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


@needs_mpi
@pytest.mark.slow   # see SLOW_MPI
@pytest.mark.parametrize("shards, images", [(2, 1604), (4, 1605)])
def test_batch_norm_with_shards_gives_the_bits_of_one_process(tmp_path, shards, images):
    """The CNN with two batch norms, 162 float32 steps, each epoch's last batch of 3 or 4
    images (shards of 2 and 1 examples, or 1 each): one process with `shards` gradient shards
    (their passes on threads of their own, meeting at each batch norm) and 2 processes with as
    many end with the same bits in every weight and running statistic."""
    model, script = tmp_path / "bn.net", tmp_path / "fit.py"
    model.write_text(BATCHNORM.replace("epochs 4", "epochs 2"))
    script.write_text(FIT_CNN)
    for processes in (1, 2):
        status, _, err = run([sys.executable, str(script), str(model), str(tmp_path),
                              str(images), f"gradient_shards={shards}"], processes=processes)
        assert status == 0, err
    alone = np.load(tmp_path / "alone.npz")
    for rank in (0, 1):
        assert_same_bits(dict(alone), dict(np.load(tmp_path / f"{rank}.npz")))
    assert json.loads((tmp_path / "0.json").read_text())[:2] == \
        json.loads((tmp_path / "alone.json").read_text())[:2]


@needs_mpi
@pytest.mark.slow   # see SLOW_MPI
def test_batch_norm_refuses_a_last_batch_that_leaves_a_process_none(tmp_path):
    """1,601 images leave 1,281 to train on, and a last batch of 1: the other process would
    have no statistics to contribute."""
    model, script = tmp_path / "bn.net", tmp_path / "fit.py"
    model.write_text(BATCHNORM)
    script.write_text(FIT_CNN)
    status, _, err = run([sys.executable, str(script), str(model), str(tmp_path), "1601"],
                         processes=2)
    assert status != 0
    assert ("the last batch of epoch 1 has 1 example, fewer than the 2 gradient shards, "
            "and batch norm needs statistics from every shard") in err


def weights(run: Path) -> dict:
    return {name: np.asarray(value) for name, value in load_file(run / "weights.safetensors").items()}


def assert_same_bits(one: dict, other: dict) -> None:
    assert sorted(one) == sorted(other)
    for name in one:
        assert np.array_equal(one[name], other[name]), \
            (name, float(np.abs(one[name] - other[name]).max()))


@needs_mpi
@pytest.mark.parametrize("processes, shards", [
    (2, None), pytest.param(2, 4, marks=pytest.mark.slow), pytest.param(3, 3, marks=pytest.mark.slow)])
def test_processes_compute_the_bits_of_one_process_with_as_many_shards(tmp_path, mlp,
                                                                          processes, shards):
    """240 float32 steps of the MLP with dropout and an L2 penalty: K processes and one
    process with the same gradient shards end with bit-identical weights and the same
    training losses (the default: one shard per process; 2 processes of 2 shards each; 3
    processes, whose tree sum ends in a broadcast)."""
    count = shards or processes
    batch = ("--batch-size", 16 if processes == 2 else 18)   # 18: shards of 6, 6, 6; the last batch 6, 5, 5
    single, shared = tmp_path / "one", tmp_path / "shared"
    status, _, err = run(train_command(mlp, single, *batch, "--set",
                                       f"gradient_shards={count}"))
    assert status == 0, err
    extra = ("--set", f"gradient_shards={shards}") if shards else ()
    status, _, err = run(train_command(mlp, shared, *batch, *extra), processes=processes)
    assert status == 0, err
    assert_same_bits(weights(single), weights(shared))
    # The training loss and accuracy of each epoch, alike too.
    losses = [[(r[0], r[2]) for r in epoch_losses(run_dir)] for run_dir in (single, shared)]
    assert losses[0] == losses[1]


TREE = """
import numpy as np
from netlang.train.distributed import world
from netlang.train.shards import tree_sum
ranks = world()
rng = np.random.default_rng(7)
for size in (1, 3, 10, 1001):   # fewer elements than processes, odd halves, a long buffer
    values = [rng.normal(size=size).astype(np.float32) * np.float32(10.0) ** rng.integers(
        -4, 8, size=size).astype(np.float32) for _ in range(ranks.size)]
    expected = tree_sum([value.copy() for value in values])
    mine = values[ranks.rank].copy()
    ranks.tree_sum(mine, "testing")
    assert np.array_equal(mine, expected), (size, ranks.rank)
"""


@needs_mpi
@pytest.mark.parametrize("processes", [2, 3, 4])
def test_the_processes_sum_along_the_shards_tree(tmp_path, processes):
    """`Ranks.tree_sum` of K processes' buffers is `tree_sum` of the K buffers in one process,
    bit for bit, on values spread over 12 decades (where the order of a sum shows): recursive
    halving and doubling for 2 and 4, sums sent left and a broadcast for 3."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    status, _, err = run([sys.executable, str(script)], processes=processes)
    assert status == 0, err


@needs_mpi
def test_shards_the_processes_cannot_share_along_the_tree_are_refused(tmp_path, mlp):
    status, _, err = run(train_command(mlp, tmp_path / "run", "--set", "gradient_shards=6"),
                         processes=2)
    assert status != 0
    assert "error: gradient_shards 6 cannot be shared among 2 MPI processes" in err


@needs_mpi
@pytest.mark.slow   # three MPI jobs on the CUDA simulator: two minutes
def test_cuda_processes_train_as_cpu_processes_and_as_one_cuda_process(tmp_path, mlp):
    """`--device cuda` under mpiexec, on the CUDA simulator (kernels run as Python, so 10 steps
    on 200 blobs): each process's shard on its GPU (GPU rank mod 1 here), gradients through
    pinned host memory, the tree sum and the update on the host.  The losses are the CPU
    processes' to rounding (other kernels), and the weights one CUDA process's with 2 shards,
    bit for bit.  Measured only under the simulator: no GPU on this machine."""
    env = {**environment(), "NUMBA_ENABLE_CUDASIM": "1"}
    short = ("--samples", 200, "--epochs", 1, "--val-split", 0)
    runs = {"cuda2": ("cuda", 2, ()), "cpu2": ("cpu", 2, ()),
            "cuda1": ("cuda", 1, ("--gradient-shards", 2))}
    for name, (device, processes, extra) in runs.items():
        status, _, err = run(train_command(mlp, tmp_path / name, *short, "--device", device,
                                           *extra), processes=processes, timeout=900, env=env)
        assert status == 0, err
    cuda_losses, cpu_losses = ([json.loads(line)["loss"] for line in
                                (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                               for name in ("cuda2", "cpu2"))
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-5)
    assert_same_bits(weights(tmp_path / "cuda1"), weights(tmp_path / "cuda2"))


KILLABLE = """
import os, sys
from pathlib import Path
Path(sys.argv[1], os.environ["PMI_RANK"]).write_text(str(os.getpid()))
from netlang.cli import main
sys.exit(main(sys.argv[2:]))
"""


@needs_mpi
@pytest.mark.parametrize("fault", ["killed", pytest.param("hung", marks=pytest.mark.slow)])
def test_a_process_that_dies_or_hangs_ends_the_job_with_an_error(tmp_path, mlp, fault):
    """Rank 1 killed while training: MPICH's mpiexec ends the job at once.  Rank 1 stopped
    (SIGSTOP: alive, but never answering): rank 0 gives up after NETLANG_MPI_TIMEOUT seconds
    and ends the job with an error naming itself."""
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**environment(), "NETLANG_MPI_TIMEOUT": "5"}
    command = [MPIEXEC, "-n", "2", sys.executable, str(script), str(pids), "train", str(mlp),
               "--samples", "2000", "--epochs", "1000", "--out", str(tmp_path / "run")]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "metrics.jsonl").exists():   # training has started
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.kill(int((pids / "1").read_text()),
                signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        started = time.monotonic()
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert time.monotonic() - started < 60
    if fault == "hung":
        # Where rank 0 waits depends on when rank 1 stopped: summing a step's gradients, or
        # combining an epoch's evaluation.
        assert "error: MPI rank 0 of 2 waited 5 s for the other processes while " in err, \
            (job.returncode, out, err)
