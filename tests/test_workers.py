"""`run_workers` (netlang/runtime/workers.py): a kernel's share run once per worker index on
Numba's thread pool, from compiled code, with a failing share reported in one line."""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

from netlang.runtime.linkage import start_thread_pool, symbol_jit
from netlang.runtime.workers import WORKER_FAILED, run_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `_record` calls numba.get_thread_id, whose machine code also needs the pool's names bound:
# read back from Numba's cache, nothing in Numba starts the pool for it.
start_thread_pool()


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


# A module of its own, in a folder of its own: its functions' cache entries are new, so the
# first process compiles them and the second reads them back, the pool not started by anyone.
CACHED = textwrap.dedent("""
    import numpy as np
    from netlang.runtime.linkage import symbol_jit
    from netlang.runtime.workers import run_workers

    @symbol_jit(no_cpython_wrapper=True)
    def share(worker, out):
        out[worker] = 10 * worker + 1

    @symbol_jit
    def run(out):
        run_workers(share, 4, (out,))
        return 0
    """)

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import cached_workers
    out = np.zeros(4, np.int64)
    cached_workers.run(out)
    print(out.tolist(), sum(cached_workers.run.stats.cache_hits.values()))
    """)


def test_a_function_that_runs_workers_loads_from_the_cache_in_a_fresh_process(tmp_path):
    # Its machine code calls the pool's entry points, bound once the pool has started: the
    # function's list of callees says so, and loading it starts the pool first (without that
    # entry, the second process died of a segfault).
    (tmp_path / "cached_workers.py").write_text(CACHED)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    printed = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        printed.append(done.stdout.split("]")[-1].strip())
        assert done.stdout.startswith("[1, 11, 21, 31]")
    assert printed == ["0", "1"]   # compiled, then read back from the cache
