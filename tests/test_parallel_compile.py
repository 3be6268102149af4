"""One program compiled in several processes at once (netlang/runtime/parallel_compile.py):
a callee claimed by another process is typed here, awaited, and loaded from the cache it was
saved in; a claimant that died leaves its callee to be compiled here; saves of one function's
entries from processes at once keep every entry; and a model compiled so trains to the same
bits as one compiled in one process, and leaves a cache the next run compiles nothing from."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from numba.core import event, types

from netlang.errors import UsageError
from netlang.runtime import linkage, parallel_compile
from netlang.weights.safetensors_files import load_weights

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="compiling in processes needs fork")

CALLEES = """
from netlang.runtime.linkage import symbol_jit

@symbol_jit
def inner(x):
    return x * 3 + 1

@symbol_jit
def outer(x):
    return inner(x) + inner(x + 1)

@symbol_jit
def mark(a):
    a[0] = 7

@symbol_jit
def marked(a):
    mark(a)
    return a[0]

@symbol_jit
def count(a):
    a[0] += 1
    return a[0]

@symbol_jit
def counted(a):
    count(a)
    return a[0]
"""


@pytest.fixture
def callees(tmp_path, monkeypatch):
    """A module of two functions called by name, cached in the test's folder, freshly
    imported (a unique name per test: Numba's cache is keyed by the module's file)."""
    name = f"nl_parallel_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CALLEES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def _compile_inner_elsewhere(inner, symbol, directory, started):
    """In a forked process: claim `inner`, signal, and only half a second later compile it
    (saved in the cache) and mark it done."""
    session = parallel_compile._Session(directory)
    assert session.claim(symbol)
    started.set()
    time.sleep(0.5)
    inner.compile((types.int64,))
    session.done(symbol)


def test_a_callee_claimed_by_another_process_is_typed_here_and_loaded_from_its_cache(
        callees, tmp_path, monkeypatch):
    directory = str(tmp_path / "claims")
    os.mkdir(directory)
    symbol = linkage._symbol(callees.inner, (types.int64,))
    typed = []
    typed_signature = parallel_compile.typed_signature
    monkeypatch.setattr(parallel_compile, "typed_signature", lambda dispatcher, argtypes: (
        typed.append(dispatcher.py_func.__name__), typed_signature(dispatcher, argtypes))[1])
    context = multiprocessing.get_context("fork")
    started = context.Event()
    claimant = context.Process(target=_compile_inner_elsewhere,
                               args=(callees.inner, symbol, directory, started))
    claimant.start()
    assert started.wait(60)
    parallel_compile._session = parallel_compile._Session(directory)
    try:
        began = time.perf_counter()
        callees.outer.compile((types.int64,))
        waited = time.perf_counter() - began
    finally:
        parallel_compile._session = None
    claimant.join(60)
    assert claimant.exitcode == 0
    assert callees.outer(5) == 16 + 19
    # `inner` was only typed here, then loaded from the claimant's cache entry once done.
    assert typed == ["inner"]
    assert callees.inner.stats.cache_hits[(types.int64,)] == 1
    assert callees.inner.stats.cache_misses[(types.int64,)] == 0
    assert waited > 0.3


def test_a_claim_whose_process_died_is_compiled_here(callees, tmp_path):
    directory = str(tmp_path / "claims")
    os.mkdir(directory)
    symbol = linkage._symbol(callees.inner, (types.int64,))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (Path(directory) / symbol).write_text(str(gone.pid))   # claimed, never done
    parallel_compile._session = parallel_compile._Session(directory)
    try:
        callees.outer.compile((types.int64,))
    finally:
        parallel_compile._session = None
    assert callees.outer(2) == 7 + 10
    assert callees.inner.stats.cache_misses[(types.int64,)] == 1


class _Order(event.Listener):
    """The order of compilations begun and lowerings begun, in this process."""

    def __init__(self):
        self.seen = []

    def on_start(self, ev):
        if ev.kind == "numba:compile":
            self.seen.append(("compile", ev.data["dispatcher"].py_func.__name__))
        elif ev.kind == "numba:run_pass" and ev.data["name"].startswith("native_lowering"):
            self.seen.append(("lower", None))

    def on_end(self, ev):
        pass


def test_a_function_at_the_bottom_of_the_stack_is_lowered_before_it_compiles_its_callees(
        callees, tmp_path):
    """Linking late (netlang/runtime/linkage.py): `marked`'s callee is typed only (here, not
    even typed: it returns nothing) and left unclaimed while `marked` is typed, lowered and
    optimised; only before its code is linked does this process claim `mark` and compile it."""
    directory = str(tmp_path / "claims")
    os.mkdir(directory)
    argtypes = (types.int64[::1],)
    order = _Order()
    parallel_compile._session = parallel_compile._Session(directory)
    try:
        with event.install_listener("numba:compile", order), \
                event.install_listener("numba:run_pass", order):
            callees.marked.compile(argtypes)
        claimant = parallel_compile._session.claimant(linkage._symbol(callees.mark, argtypes))
    finally:
        parallel_compile._session = None
    assert order.seen[:4] == [("compile", "marked"), ("lower", None), ("compile", "mark"),
                              ("lower", None)], order.seen
    assert claimant == os.getpid()
    assert callees.marked(np.zeros(3, np.int64)) == 7


def test_a_callee_linked_late_that_returns_what_its_caller_did_not_expect_is_refused(
        callees, tmp_path, monkeypatch):
    """The types a late callee's calls were lowered with are checked against its code before
    the caller is linked: never a call through a mismatched signature (here `count`, taken
    to return nothing, returns a number)."""
    directory = str(tmp_path / "claims")
    os.mkdir(directory)
    monkeypatch.setattr(parallel_compile, "returns_nothing", lambda function: True)
    parallel_compile._session = parallel_compile._Session(directory)
    try:
        with pytest.raises(RuntimeError, match="not as its caller was lowered"):
            callees.counted.compile((types.int64[::1],))
    finally:
        parallel_compile._session = None


def test_which_functions_return_nothing_is_read_from_their_bytecode():
    def nothing(a):
        a[0] = 1

    def early(a):
        if a[0]:
            return
        a[0] = 1

    def value(a):
        return a[0]

    def maybe(a):
        return a[0] if a[1] else None

    def either(a):
        return a[0] or None

    assert parallel_compile.returns_nothing(nothing)
    assert parallel_compile.returns_nothing(early)
    assert not any(parallel_compile.returns_nothing(f) for f in (value, maybe, either))


def test_waiting_ends_without_a_claim_and_when_a_claim_gets_a_dead_pid(tmp_path):
    session = parallel_compile._Session(str(tmp_path))
    session.wait("never_claimed")   # a session over, its claims gone: nothing to wait for
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "claimed").write_text("")   # created, its pid not written yet
    context = multiprocessing.get_context("fork")
    writer = context.Process(target=lambda: (time.sleep(0.2),
                                             (tmp_path / "claimed").write_text(str(gone.pid))))
    writer.start()
    began = time.perf_counter()
    session.wait("claimed")
    assert 0.15 < time.perf_counter() - began < 30
    writer.join(10)


SAVES = """
import sys
from numba import njit
import netlang.runtime.linkage  # noqa: F401  (installs the lock on Numba's cache saves)
from numba.core import types

@njit(cache=True)
def scaled(x):
    return x * 2

kinds = [types.int8, types.int16, types.int32, types.int64, types.float32, types.float64]
if sys.argv[1] == "check":   # every entry listed, each loading its own signature's code
    index = scaled._cache._cache_file._load_index()
    print(len(index), scaled(3), scaled(2.5))
else:
    scaled.compile((kinds[int(sys.argv[1])],))
"""


def test_saves_of_one_function_from_processes_at_once_keep_every_entry(tmp_path):
    # Six processes each save one signature of the same function into an empty cache, at
    # once.  Numba alone reads, extends and writes the index without a lock: entries got lost,
    # or two signatures were given one data file.
    script = tmp_path / "saves.py"
    script.write_text(SAVES)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for round_ in range(1):
        env["NUMBA_CACHE_DIR"] = str(tmp_path / f"numba{round_}")
        processes = [subprocess.Popen([sys.executable, str(script), str(i)], env=env,
                                      cwd=tmp_path) for i in range(6)]
        assert all(process.wait(120) == 0 for process in processes)
        check = subprocess.run([sys.executable, str(script), "check"], env=env,
                               capture_output=True, text=True, cwd=tmp_path)
        assert check.returncode == 0, check.stderr
        assert check.stdout.split() == ["6", "6", "5.0"], check.stdout


def test_the_process_count_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("NETLANG_COMPILE_PROCESSES", "3")
    assert parallel_compile.compile_processes() == 3
    monkeypatch.setenv("NETLANG_COMPILE_PROCESSES", "0")
    with pytest.raises(UsageError, match="NETLANG_COMPILE_PROCESSES must be a whole number"):
        parallel_compile.compile_processes()
    monkeypatch.delenv("NETLANG_COMPILE_PROCESSES")
    assert 1 <= parallel_compile.compile_processes() <= parallel_compile.MAX_PROCESSES


# -- whole models ----------------------------------------------------------------------------

# Widths and sizes no other test uses: the generated modules are named by their source.
SMALL_MLP = """
input x: [2]
input label: int32[]
output logits = x -> dense(19) -> relu -> dropout(0.25) -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr=0.01)
  batch_size 16
  epochs 2
  seed 3
}
"""

SMALL_CNN = """
input image: [10, 10, 1]
input label: int32[]
output logits = image -> conv2d(5, 3) -> relu -> maxpool(2) -> conv2d(7, 3, padding=1) -> relu
    -> flatten -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr=0.01)
  batch_size 8
  epochs 1
  seed 3
}
"""


def _train(tmp_path: Path, model: Path, name: str, processes: int, data: str) -> tuple:
    """(final weights, run.json of a second run on the same caches) of `netlang train`
    on an empty cache, compiling in `processes` processes."""
    cache = tmp_path / f"cache-{name}"
    env = {**os.environ, "NETLANG_CACHE": str(cache), "NUMBA_NUM_THREADS": "1",
           "NETLANG_COMPILE_PROCESSES": str(processes),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for variable in ("NETLANG_DEBUG", "NUMBA_CACHE_DIR"):
        env.pop(variable, None)
    for out in (name, name + "-again"):
        run = subprocess.run([sys.executable, "-m", "netlang.cli", "train", str(model),
                              "--data", data, "--limit", "64", "--out", str(tmp_path / out)],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
    params, _ = load_weights(tmp_path / name / "weights.safetensors")
    return params, json.loads((tmp_path / (name + "-again") / "run.json").read_text())


def _pictures(tmp_path: Path) -> str:
    """An .npz of 10×10 one-channel pictures whose label is which half is brighter."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("test", 16)):
        label = rng.integers(0, 2, n)
        image = rng.normal(size=(n, 10, 10, 1)).astype(np.float32)
        image[label == 1, :5] += 1.0
        arrays.update({f"image_{split}": image, f"label_{split}": label})
    path = tmp_path / "pictures.npz"
    np.savez(path, **arrays)
    return str(path)


def _assert_same_training(tmp_path, text: str, data: str) -> None:
    model = tmp_path / "model.net"
    model.write_text(textwrap.dedent(text))
    alone, _ = _train(tmp_path, model, "alone", 1, data)
    shared, again = _train(tmp_path, model, "shared", 2, data)
    assert sorted(alone) == sorted(shared)
    for name in alone:
        assert alone[name].tobytes() == shared[name].tobytes(), name
    # The cache the processes filled together serves the next run whole.
    assert "compile" not in again, again


def test_an_mlp_compiled_in_two_processes_trains_to_the_same_bits(tmp_path):
    _assert_same_training(tmp_path, SMALL_MLP, "blobs")


@pytest.mark.slow   # two cold compiles of a convolutional network
def test_a_cnn_compiled_in_two_processes_trains_to_the_same_bits(tmp_path):
    _assert_same_training(tmp_path, SMALL_CNN, _pictures(tmp_path))


KILLED = """
import sys, netlang
from netlang.runtime.cpu import CpuEngine
from conftest import random_batch
model = netlang.compile(sys.argv[1])
CpuEngine(model.graph).train_step(random_batch(model.graph, 4, 0), 0.01)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_helpers_end_with_a_process_killed_while_compiling(tmp_path):
    model = tmp_path / "killed.net"
    model.write_text(textwrap.dedent(SMALL_CNN).replace("conv2d(5, 3)", "conv2d(6, 3)"))
    env = {**os.environ, "NETLANG_CACHE": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "1",
           "NETLANG_COMPILE_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_CACHE_DIR", None)
    parent = subprocess.Popen([sys.executable, "-c", KILLED, str(model)], env=env)

    def helpers() -> list:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != parent.pid:
                try:
                    status = Path(f"/proc/{entry}/status").read_text()
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(model).encode() in cmdline and "State:\tZ" not in status:
                    found.append(int(entry))
        return found

    deadline = time.monotonic() + 120
    while not helpers() and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert helpers(), "no helper process was started"
    parent.kill()
    parent.wait()
    # At once: a helper left to finish its walk would compile for seconds more.
    deadline = time.monotonic() + 1.0
    while helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helpers() == []
