"""A training run compiles its programs while its data loads (runtime/compilation.py's
`compile_ahead`, netlang/train/loop.py): helper processes compile the training step and the
evaluation into the disk cache, and the run loads them; a run whose data fails to load
leaves no helper behind.  That the weights are those of a run compiled in one process is
tests/test_parallel_compile.py's comparison, whose two-process runs take this way."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

import netlang
from netlang.errors import DataError
from netlang.runtime import parallel_compile
from netlang.train import loop

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="compiling in processes needs fork")

# Widths no other test uses: the generated modules are named by their source.
MODEL = """
input x: [2]
input label: int32[]
output logits = x -> dense(23) -> relu -> dense(2)
train {
  loss cross_entropy(logits, label)
  optimizer adam(lr=0.01)
  batch_size 16
  epochs 1
  seed 5
}
"""


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NETLANG_COMPILE_PROCESSES", "2")
    path = tmp_path / "ahead.net"
    path.write_text(MODEL)
    return netlang.compile(str(path))


def _watch_compilations(monkeypatch) -> list:
    """The compilations the run hands to `compile_ahead`, as it hands them."""
    handed = []
    start = loop.compile_ahead

    def watched(compilations):
        handed.extend(compilations)
        return start(compilations)
    monkeypatch.setattr(loop, "compile_ahead", watched)
    return handed


def _no_child_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_training_run_compiles_its_programs_while_its_data_loads(model, monkeypatch, tmp_path):
    handed = _watch_compilations(monkeypatch)
    load = loop.prepare_data
    cached_while_loading = []

    def cached() -> bool:
        return all(parallel_compile.in_disk_cache(c._dispatcher, c._signature) for c in handed)

    def slow_loading(*args, **kwargs):
        # Data that takes a while to load: by its end the helpers have compiled both programs
        # into the disk cache, with this process compiling nothing.
        deadline = time.monotonic() + 300
        while not cached() and time.monotonic() < deadline:
            time.sleep(0.05)
        cached_while_loading.append(cached())
        return load(*args, **kwargs)
    monkeypatch.setattr(loop, "prepare_data", slow_loading)

    history, engine, _ = loop.train(model, data="blobs", limit=64, out=tmp_path / "run")
    assert [c.title for c in handed] == ["training step", "evaluation"]
    assert cached_while_loading == [True]
    # Compiled for this run, though not in its way: run.json says so.
    compiled = json.loads((tmp_path / "run" / "run.json").read_text())["compile"]
    assert set(compiled["programs"]) == {"training step", "evaluation"}
    for compilation in handed:   # loaded here, never compiled here
        assert compilation.ready
        assert compilation._dispatcher.stats.cache_misses[compilation._signature] == 0
    record = history.records[-1]   # the step trained, and the evaluation ran on the test split
    assert math.isfinite(record["loss"]) and math.isfinite(record["test_loss"])
    assert parallel_compile._session is None and _no_child_left()


def test_a_run_whose_data_fails_to_load_leaves_no_helper_behind(model, monkeypatch):
    handed = _watch_compilations(monkeypatch)

    def failing(*args, **kwargs):
        raise DataError("blobs: the data could not be read")
    monkeypatch.setattr(loop, "prepare_data", failing)
    with pytest.raises(DataError):
        loop.train(model, data="blobs", limit=64)
    assert handed, "no compilation was started ahead"
    assert parallel_compile._session is None and _no_child_left()


def test_nothing_is_compiled_ahead_for_one_process(model, monkeypatch):
    monkeypatch.setenv("NETLANG_COMPILE_PROCESSES", "1")
    handed = _watch_compilations(monkeypatch)
    seen = []

    def loading(*args, **kwargs):
        seen.append(parallel_compile._session)
        raise DataError("stop here")
    monkeypatch.setattr(loop, "prepare_data", loading)
    with pytest.raises(DataError):
        loop.train(model, data="blobs", limit=64)
    assert handed and seen == [None]
