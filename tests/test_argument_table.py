"""A CPU program's arrays passed in one table of addresses and sizes (netlang/codegen/table.py):
the arrays the program makes from it, the host's checks of what enters it, and whole training
steps that replace the arrays they hold."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from numba import njit

import netlang
from netlang.codegen.cpu import ProgramArg
from netlang.errors import UsageError
from netlang.runtime.argument_table import ArgumentTable
from netlang.runtime.cpu import CpuEngine
from netlang.runtime.jit import arrays_at
from netlang.runtime.reference import ReferenceEngine

MODEL = """
input x: [6]
input y: int32[]
h = x -> dense(8) -> relu -> dropout(0.25) -> dense(8) -> tanh
output z = h -> dense(3)
train {
  loss cross_entropy(z, y)
  optimizer adam(lr = 0.01)
}
"""


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, 3, n)}


@njit
def _sum_and_mark(table):
    a, b, c = arrays_at(table, "0:2s;3:1q;5:3d")
    a[1, 2] = 7.0
    return a.shape, b.shape, c.shape, a.sum(), b.sum(), c.sum(), a.strides, c.strides


def test_arrays_at_makes_each_array_of_its_entry_sharing_its_memory():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int64)
    c = np.ones((2, 3, 2), dtype=np.float64)
    table = ArgumentTable([ProgramArg("slot", i) for i in range(3)],
                          [("float32", 2), ("int64", 1), ("float64", 3)]).filled([a, b, c])
    assert list(table[[1, 2, 4, 6, 7, 8]]) == [3, 4, 5, 2, 3, 2]
    shape_a, shape_b, shape_c, sum_a, sum_b, sum_c, strides_a, strides_c = _sum_and_mark(table)
    assert (shape_a, shape_b, shape_c) == (a.shape, b.shape, c.shape)
    assert (strides_a, strides_c) == (a.strides, c.strides)
    assert a[1, 2] == 7.0    # written through the table's view
    assert (sum_a, sum_b, sum_c) == (a.sum(), b.sum(), c.sum())


def test_the_table_refuses_in_one_line_an_array_that_does_not_fit_its_entry():
    table = ArgumentTable([ProgramArg("param", "w"), ProgramArg("input", "x")],
                          [("float32", 2), ("float32", 2)])
    good = np.zeros((3, 4), np.float32)
    table.filled([good, good])
    for bad, words in [(np.zeros((3, 4), np.float64), "float64 array"),
                       (np.zeros((3, 4, 1), np.float32), "of shape (3, 4, 1)"),
                       (np.zeros((4, 3), np.float32).T, "non-contiguous"),
                       ([[0.0]], "a list")]:
        with pytest.raises(UsageError) as error:
            table.filled([bad, good])
        message = str(error.value)
        assert "\n" not in message and "parameter `w`" in message and words in message
    # A parameter is written: a read-only one is refused; an input is only read.
    read_only = np.zeros((3, 4), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(UsageError, match="read-only"):
        table.filled([read_only, good])
    table.filled([good, read_only])


def test_an_entry_is_written_again_for_a_new_array_and_its_memory_cannot_move():
    table = ArgumentTable([ProgramArg("input", "x")], [("float32", 2)])
    first = np.zeros((4, 3), np.float32)
    assert list(table.filled([first])) == [first.ctypes.data, 4, 3]
    second = np.zeros((6, 3), np.float32)
    assert list(table.filled([second])) == [second.ctypes.data, 6, 3]
    # The table holds the array: NumPy will not move its memory by resizing it in place.
    with pytest.raises(ValueError):
        second.resize((100, 3))
    assert second.ctypes.data == table.table[0]


def test_a_copied_table_points_at_the_copied_arrays():
    arrays = [np.zeros((4, 3), np.float32)]
    table = ArgumentTable([ProgramArg("param", "w")], [("float32", 2)])
    table.filled(arrays)
    # A deep copy of an engine copies its arrays and its tables together (one memo).
    copied_table, copied_arrays = copy.deepcopy((table, arrays))
    assert list(copied_table.filled(copied_arrays)) == [copied_arrays[0].ctypes.data, 4, 3]


def test_generated_programs_take_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    engine = CpuEngine(netlang.compile(MODEL).graph, seed=1)
    engine.train_step(_batch(), 0.01)
    step = engine._training()[3]
    assert "def train_step(table, lr, t):" in step.program.source
    assert "= arrays_at(table, " in step.program.source
    signature = next(iter(step.function.overloads))
    assert len(signature) == 3 and signature[0].ndim == 1   # the table, lr, t


def test_a_replaced_parameter_is_the_one_the_next_step_reads():
    graph = netlang.compile(MODEL).graph
    compiled, reference = CpuEngine(graph, seed=3), ReferenceEngine(graph, seed=3)
    compiled.train_step(_batch(0), 0.01)
    reference.train_step(_batch(0), 0.01)
    # Both engines' parameters replaced by new arrays, as a user replacing weights would.
    rng = np.random.default_rng(5)
    for name in compiled.params:
        value = rng.standard_normal(compiled.params[name].shape).astype(np.float32)
        compiled.params[name] = value.copy()
        reference.params[name] = value.copy()
    for seed in (1, 2):
        loss_c, _ = compiled.train_step(_batch(seed), 0.01)
        loss_r, _ = reference.train_step(_batch(seed), 0.01)
        assert loss_c == pytest.approx(loss_r, rel=1e-4)
    for name in compiled.params:
        np.testing.assert_allclose(compiled.params[name], reference.params[name],
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_parameter_replaced_by_one_of_another_dtype_is_refused_in_one_line():
    engine = CpuEngine(netlang.compile(MODEL).graph, seed=3)
    engine.train_step(_batch(), 0.01)
    name = next(iter(engine.params))
    engine.params[name] = engine.params[name].astype(np.float64)
    with pytest.raises(UsageError, match=f"parameter `{name}` is a float64 array"):
        engine.train_step(_batch(), 0.01)


def test_a_deep_copied_engine_trains_its_own_parameters():
    engine = CpuEngine(netlang.compile(MODEL).graph, seed=3)
    engine.train_step(_batch(), 0.01)
    twin = copy.deepcopy(engine)
    before = {name: value.copy() for name, value in engine.params.items()}
    twin.train_step(_batch(1), 0.01)
    assert all(np.array_equal(before[name], engine.params[name]) for name in before)
    assert not all(np.array_equal(before[name], twin.params[name]) for name in before)
