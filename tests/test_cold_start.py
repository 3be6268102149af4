"""A first run out of the user's way (issue 14): commands that compile nothing never load
Numba; `netlang warmup` fills the caches so that a following `netlang train` compiles
nothing; and the kernel cache survives a process killed while compiling and two processes
compiling the same model at once.

Each run is a process of its own, on a kernel cache in the test's folder (Numba's cache of
the generated programs sits beside them there), serial (NUMBA_NUM_THREADS=1) to keep the
compiles short.
"""

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
from conftest import random_batch, run_cli

import netlang
from netlang import pages
from netlang.data import Dataset, normalize
from netlang.runtime import cpu
from netlang.train.warmup import Warmup

ROOT = Path(__file__).resolve().parent.parent

# A width no other test uses: the generated modules are named by their source.
TINY_NET = """
input x: [2]
input label: int32[]
output logits = x -> dense(17) -> relu -> dense(2)
train {
  loss cross_entropy(logits, label)
  batch_size 16
  epochs 1
}
"""

# With a convolution, whose worker functions the step calls with BLAS held to one thread.
TINY_CONV_NET = """
input x: [6, 6, 1]
input label: int32[]
output logits = x -> conv2d(3, 3) -> relu -> flatten -> dense(2)
train {
  loss cross_entropy(logits, label)
  batch_size 16
  epochs 1
}
"""

PROGRAMS = {"training step", "evaluation", "inference"}


def _env(cache: Path) -> dict:
    env = {**os.environ, "NETLANG_CACHE": str(cache), "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("NETLANG_DEBUG", "NUMBA_CACHE_DIR"):   # Numba's cache beside the kernels
        env.pop(name, None)
    return env


def _netlang(cache: Path, *argv) -> list:
    return [sys.executable, "-m", "netlang.cli", *map(str, argv)]


def _run(cache: Path, *argv) -> subprocess.CompletedProcess:
    return subprocess.run(_netlang(cache, *argv), env=_env(cache), capture_output=True,
                          text=True, timeout=600)


def _warmup_report(cache: Path, model: Path) -> dict:
    done = _run(cache, "warmup", model, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _compile_lines(stdout: str) -> list:
    """A training run's lines about compiling (`compiling 2 kernels (...)`, `compiled ...`)."""
    return [line for line in stdout.splitlines() if line.lstrip().startswith("compil")]


def _model(tmp_path: Path) -> Path:
    model = tmp_path / "tiny.net"
    model.write_text(TINY_NET)
    return model


# -- what never loads Numba ----------------------------------------------------------------

NUMBA_FREE = """
import contextlib, io, sys
from netlang.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
loaded = [name for name in ("numba", "llvmlite") if name in sys.modules]
assert not loaded, f"{sys.argv[1:]} imported {loaded}"
assert code in (0, None), code
"""


def test_import_netlang_loads_neither_numba_nor_the_compiler_stack():
    done = subprocess.run([sys.executable, "-c",
                           "import sys, netlang; loaded = [m for m in ('numba', 'llvmlite', "
                           "'networkx', 'lark') if m in sys.modules]; assert not loaded, loaded"],
                          env=_env(ROOT / "unused"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_api_leaves_what_only_some_methods_use_to_those_methods():
    # Model's adversarial examples, sampling, saliency and ONNX, and MNIST's downloader
    # (urllib.request: http.client, ssl, email), are imported where they are used: a process
    # that compiles and trains a model loads none of them.
    unused = ("urllib.request", "netlang.interchange", "netlang.attack", "netlang.sampling",
              "netlang.saliency")
    done = subprocess.run([sys.executable, "-c",
                           f"import sys, netlang.api; loaded = [m for m in {unused!r} "
                           "if m in sys.modules]; assert not loaded, loaded"],
                          env=_env(ROOT / "unused"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["check", "examples/mlp.net"], ["fmt", "examples/lenet5.net"],
                                  ["--help"], ["train", "--help"], ["warmup", "--help"]])
def test_commands_that_compile_nothing_never_import_numba(argv, tmp_path):
    done = subprocess.run([sys.executable, "-c", NUMBA_FREE, *argv], cwd=ROOT,
                          env=_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


# -- warmup --------------------------------------------------------------------------------

@pytest.mark.slow   # two processes, one compiling three programs: about 20 s on a loaded machine
def test_after_warmup_a_training_run_compiles_nothing(tmp_path):
    model, cache = _model(tmp_path), tmp_path / "cache"
    warm = _run(cache, "warmup", model)
    assert warm.returncode == 0, warm.stderr
    lines = warm.stdout.splitlines()
    assert {line.split(" in ")[0] for line in lines[:-1]} == \
        {f"compiled {title}" for title in PROGRAMS}, warm.stdout
    assert lines[-1].startswith("compiled 3 programs in ") and "batch 16, 1 worker)" in lines[-1]

    run = _run(cache, "train", model, "--data", "blobs", "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    assert not _compile_lines(run.stdout), run.stdout
    assert "compile" not in json.loads((tmp_path / "run" / "run.json").read_text())
    # Evaluating the trained weights writes nothing new into the cache: its programs were there.
    cached = sorted(path.name for path in cache.rglob("*"))
    evaluated = _run(cache, "eval", model, "--weights", tmp_path / "run", "--data", "blobs")
    assert evaluated.returncode == 0, evaluated.stderr
    assert sorted(path.name for path in cache.rglob("*")) == cached
    assert _warmup_report(cache, model)["compiled"] == {}


def test_a_warmup_that_compiled_nothing_says_what_the_cache_held():
    report = Warmup(compiled={}, loaded=["training step", "evaluation"], seconds=2.34,
                    engine="cpu", batch=32, workers=2)
    assert report.lines() == ["training step: already in the cache",
                              "evaluation: already in the cache",
                              "nothing to compile: 2 programs loaded from the cache in 2.3s "
                              "(cpu engine, batch 32, 2 workers)"]


def test_warmup_refuses_an_engine_that_compiles_nothing(capsys):
    code, out, err = run_cli(capsys, "warmup", "examples/xor.net", "--device", "reference")
    assert code == 2 and not out and len(err.splitlines()) == 1
    assert "the reference engine has no programs to compile ahead of time" in err


# -- a warm process ------------------------------------------------------------------------

WARM_STEP = """
import os, sys, numpy as np, netlang
from conftest import random_batch
from netlang.codegen import cpu, pieces
from netlang.runtime.cpu import CpuEngine
if os.environ.get("CUT_AT"):   # programs cut into pieces: Python functions calling them
    pieces.PIECE_LINES = cpu.PIECE_LINES = int(os.environ["CUT_AT"])
first = netlang.compile(sys.argv[1])
loss, _ = CpuEngine(first.graph).train_step(random_batch(first.graph, 16, 0), 0.01)
print(repr(float(loss)), "numba.np.arraymath" in sys.modules)
if len(sys.argv) > 2:   # then a model that must be compiled, in the same process
    other = netlang.compile(sys.argv[2])
    CpuEngine(other.graph).train_step(random_batch(other.graph, 16, 0), 0.01)
    print("compiled", "numba.np.arraymath" in sys.modules)
"""


# A program in pieces is slow (8 s): tests/test_pieces.py runs cut programs by default.
@pytest.mark.parametrize("cut_at", [None, pytest.param(12, marks=pytest.mark.slow)],
                         ids=["whole", "in pieces"])
def test_a_warm_process_loads_its_programs_without_the_compilers_registries(tmp_path, cut_at):
    """Programs loaded from the cache need none of the registries Numba's compiler loads
    (a third of a warm start when they imported SciPy's BLAS table); a program compiled
    afterwards in the same process loads them then (netlang/runtime/linkage.py's
    `_LoadingCache`).  A program cut into pieces calls them, and the BLAS thread count's
    setter, from Python."""
    model, other = tmp_path / "warm.net", tmp_path / "other.net"
    net = TINY_CONV_NET if cut_at else TINY_NET.replace("dense(17)", "dense(13)")
    model.write_text(net)
    other.write_text(TINY_NET.replace("dense(17)", "dense(11)"))
    # Two worker threads: a step with worker functions sets BLAS's thread count.
    cut = {"CUT_AT": str(cut_at), "NUMBA_NUM_THREADS": "2"} if cut_at else {}
    env = {**_env(tmp_path / "cache"), **cut,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}

    def step(*models) -> list:
        done = subprocess.run([sys.executable, "-c", WARM_STEP, *map(str, models)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    cold = step(model)
    warm = step(model, other)
    assert warm[0] == cold[0]   # the same loss, to the last digit
    assert warm[1:] == ["False", "compiled", "True"], warm


COLD_STEP = """
import sys, numpy as np, netlang, numba
from conftest import random_batch
from netlang.runtime import blas
from netlang.runtime.cpu import CpuEngine
model = netlang.compile(sys.argv[1])
CpuEngine(model.graph).train_step(random_batch(model.graph, 16, 0), 0.01)
import numba.np.arraymath
print(blas.ILP64, "numba.np.linalg" in sys.modules, "scipy.linalg" in sys.modules,
      numba.np.arraymath._HAVE_BLAS)

@numba.njit
def inner(a, b):
    return np.dot(a, b)

print(inner(np.arange(3.0), np.arange(3.0)), "scipy.linalg" in sys.modules)
"""


def test_a_cold_process_compiles_without_importing_scipys_linear_algebra(tmp_path):
    """Numba's registries, loaded by the first compilation, probe SciPy's BLAS by importing
    `scipy.linalg` (0.2-0.35 s in every compile process); netlang's compiled code calls none
    of it, so the probe's flag is set as it would be without the import
    (runtime/parallel_compile.py's `defer_scipy_blas_probe`), and Numba still imports SciPy
    for code that needs it, here `np.dot`."""
    model = tmp_path / "cold.net"
    model.write_text(TINY_NET.replace("dense(17)", "dense(9)"))
    env = {**_env(tmp_path / "cache"), "NETLANG_COMPILE_PROCESSES": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", COLD_STEP, str(model)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    if printed[0] == "False":
        pytest.skip("NumPy brings no OpenBLAS of its own here: netlang's products use SciPy's")
    assert printed[1:] == ["True", "False", "True", "5.0", "True"], printed


def test_buffers_are_allocated_without_asking_for_huge_pages(monkeypatch):
    """A program's buffers come from small pages (netlang/pages.py: where the kernel has no huge
    page free, it compacts memory at the first write to each), and NumPy's setting is restored
    after them; so do a data set's scaled images."""
    calls = []
    real = pages._set_madvise_hugepage

    def recorded(enabled):
        calls.append(enabled)
        return real(enabled)

    monkeypatch.setattr(pages, "_set_madvise_hugepage", recorded)
    before = real(True)
    try:
        model = netlang.compile(TINY_NET.replace("dense(17)", "dense(13)"))
        engine = cpu.CpuEngine(model.graph)
        engine.train_step(random_batch(model.graph, 16, 0, classes=2), 0.01)
        assert calls and calls[0::2] == [False] * (len(calls) // 2)   # off, then back on
        assert calls[1::2] == [True] * (len(calls) // 2)
        assert real(before) is True   # restored
        calls.clear()
        images = Dataset(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, np.int64),
                         np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int64), "tiny", 2)
        assert normalize(images, "scale").x_train.dtype == np.float32
        assert calls == [False, True] and real(before) is True
    finally:
        real(before)


# -- the cache under a killed process and concurrent ones --------------------------------------

def _kill_when(process: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL `process` as soon as `ready()` holds; fails when it ended before that."""
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in 300 s"
        time.sleep(0.05)
    assert process.poll() is None, f"the process ended before it could be killed ({what})"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.slow   # three compiles of the tiny model
@pytest.mark.parametrize("moment", ["source written", "first program cached"])
def test_a_process_killed_while_compiling_leaves_a_cache_the_next_run_uses(tmp_path, moment):
    model, cache = _model(tmp_path), tmp_path / "cache"
    numba_files = cache / "__pycache__"

    def ready():
        if moment == "source written":   # Numba is compiling the first program
            return any(cache.glob("nl_*.py"))
        # One program's index written, others to come (a program's, not one of the functions
        # it calls from modules of their own: worker functions, parameter updates).
        return any(path for entry in ("train_step", "infer")
                   for path in numba_files.glob(f"nl_*.{entry}-*.nbi"))
    process = subprocess.Popen(_netlang(cache, "warmup", model), env=_env(cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(process, ready, moment)

    after = _warmup_report(cache, model)
    assert set(after["compiled"]) | set(after["loaded"]) == PROGRAMS
    if moment == "first program cached":
        assert after["loaded"], after   # what the killed process finished is used
    again = _warmup_report(cache, model)
    assert again["compiled"] == {} and set(again["loaded"]) == PROGRAMS, again


@pytest.mark.slow   # two compiles at once
def test_two_processes_compiling_into_one_empty_cache_both_succeed_and_leave_it_sound(tmp_path):
    model, cache = _model(tmp_path), tmp_path / "cache"
    both = [subprocess.Popen(_netlang(cache, "warmup", model, "--json"), env=_env(cache),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    reports = []
    for process in both:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert "did not match" not in err and "could not be read" not in err, err
        reports.append(json.loads(out))
    assert all(set(r["compiled"]) | set(r["loaded"]) == PROGRAMS for r in reports)

    run = _run(cache, "train", model, "--data", "blobs", "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    assert not _compile_lines(run.stdout) and "recompiling" not in run.stderr, run.stdout
    assert "compile" not in json.loads((tmp_path / "run" / "run.json").read_text())
