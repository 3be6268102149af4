"""`run_workers` (netlang/runtime/workers.py): a kernel's share run once per worker index on
Numba's thread pool, from compiled code, with a failing share reported in one line."""

import numba
import numpy as np
import pytest

from netlang.runtime.linkage import symbol_jit
from netlang.runtime.workers import WORKER_FAILED, run_workers


@symbol_jit(no_cpython_wrapper=True)
def _record(worker, calls, threads, values, scale):
    calls[worker] += 1
    threads[worker] = numba.get_thread_id()
    for i in range(values.shape[1]):
        values[worker, i] = worker * scale + i


@symbol_jit
def _run_two(calls, threads, values):
    run_workers(_record, 2, (calls, threads, values, 10))
    return 0


@symbol_jit
def _run_five(calls, threads, values):
    run_workers(_record, 5, (calls, threads, values, 100))
    return 0


@symbol_jit(no_cpython_wrapper=True)
def _fail_on_one(worker, calls):
    calls[worker] += 1
    if worker == 1:
        raise ValueError("share failed")


@symbol_jit
def _run_failing(calls):
    run_workers(_fail_on_one, 3, (calls,))
    return 0


def _arrays(count):
    return (np.zeros(count, np.int64), np.full(count, -1, np.int64), np.zeros((count, 4)))


def test_each_worker_runs_its_share_once_on_a_thread_of_its_own():
    calls, threads, values = _arrays(2)
    assert _run_two(calls, threads, values) == 0
    assert calls.tolist() == [1, 1]
    np.testing.assert_array_equal(values, [[0, 1, 2, 3], [10, 11, 12, 13]])
    if numba.get_num_threads() >= 2:   # two threads in the pool: the shares ran on both
        assert len(set(threads.tolist())) == 2


def test_more_workers_than_threads_each_run_once():
    calls, threads, values = _arrays(5)
    _run_five(calls, threads, values)
    assert calls.tolist() == [1] * 5
    np.testing.assert_array_equal(values[:, 0], [0, 100, 200, 300, 400])
    assert set(threads.tolist()) <= set(range(numba.get_num_threads()))


def test_a_failing_share_is_reported_once_every_worker_is_done():
    calls = np.zeros(3, np.int64)
    with pytest.raises(RuntimeError) as raised:
        _run_failing(calls)
    assert str(raised.value) == WORKER_FAILED
    assert calls.tolist() == [1, 1, 1]
