"""Compiled programs call the shared loop nests and their worker functions by a bound name
instead of carrying a copy of their code (netlang/runtime/linkage.py), and a later process
binds those names before it loads a program from the cache, or compiles the program afresh
when it cannot."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = """
input x: [6, 6, 2]
input y: int32[]
output z = x -> conv2d(3, 3, padding = 1) -> relu -> maxpool(2) -> flatten -> dense(3)
train { loss cross_entropy(z, y)  optimizer sgd(lr = 0.1, momentum = 0.9) }
"""

# Two training steps of MODEL on two worker threads: the weights bit for bit, whether the
# step was compiled or loaded, and (when compiled) which functions its machine code defines.
CHILD = r"""
import hashlib, json, sys
import numpy as np
import netlang
from netlang.runtime import make_engine

model = netlang.compile(sys.argv[1])
engine = make_engine(model.graph, seed=0)
rng = np.random.default_rng(0)
feeds = {"x": rng.random((8, 6, 6, 2), dtype=np.float32), "y": rng.integers(0, 3, 8)}
for _ in range(2):
    engine.train_step(feeds, 0.1)
step = engine._training()[3].function
(signature, result), = step.overloads.items()
digest = hashlib.sha256(b"".join(engine.params[name].tobytes()
                                 for name in sorted(engine.params))).hexdigest()
defined = [line.split("@", 1)[1].split("(", 1)[0] for line in
           result.library.get_llvm_str().splitlines() if line.startswith("define ")]
print(json.dumps({"weights": digest, "compiled": step.stats.cache_misses[signature] > 0,
                  "defined": defined}))
"""


def _train(tmp_path) -> dict:
    model = tmp_path / "tiny.net"
    model.write_text(MODEL)
    env = dict(os.environ, NETLANG_CACHE=str(tmp_path / "kernels"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), NUMBA_NUM_THREADS="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, str(model)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_programs_call_shared_code_by_name_and_load_it_back_or_recompile(tmp_path):
    cold = _train(tmp_path)
    assert cold["compiled"]
    # The step's own code, and none of the worker shares' or loop nests' it calls.
    copied = [name for name in cold["defined"]
              if any(part in name for part in ("im2col", "maxpool", "gemm32", "share"))]
    assert not copied, f"the training step carries copies of {copied}"

    warm = _train(tmp_path)
    assert not warm["compiled"] and warm["weights"] == cold["weights"]

    # A program whose list of callees is missing or unreadable is compiled afresh, never linked
    # against names nothing binds; the results stay bit for bit the same.
    lists = [path for path in glob.glob(str(tmp_path / "**" / "*.callees"), recursive=True)
             if os.path.basename(path).startswith("nl_")]
    assert lists
    for path in lists:
        os.unlink(path)
    again = _train(tmp_path)
    assert again["compiled"] and again["weights"] == cold["weights"]
    for path in lists:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write('{"netlang_fn_0": ["netlang.runtime.cnn", "no_such_function", "x"]}')
    garbled = _train(tmp_path)
    assert garbled["compiled"] and garbled["weights"] == cold["weights"]
    # Compiled afresh, the program's list is its own again (a stale name left in it made
    # every later process compile the program again), and the next process loads it.
    healed = _train(tmp_path)
    assert not healed["compiled"] and healed["weights"] == cold["weights"]


def test_a_function_compiled_for_compiled_callers_only_refuses_a_call_from_python():
    """The loop nests and products are compiled without the wrapper Python calls through
    (only generated code calls them): from Python, Numba would call through a null pointer and
    crash the process; instead the call is refused in one line."""
    from netlang.runtime import blas, cnn
    for kernel, arguments in ((cnn.column_sums, (np.ones((4, 3)), np.zeros(3))),
                              (blas.gemm32, (False, False, 1.0, np.ones((2, 2), np.float32),
                                             np.ones((2, 2), np.float32), 0.0,
                                             np.zeros((2, 2), np.float32)))):
        with pytest.raises(TypeError, match="compiled for compiled callers only") as refused:
            kernel(*arguments)
        assert "\n" not in str(refused.value)
