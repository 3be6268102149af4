"""Compilation before the first step: said while it happens, kept out of the epochs' figures.

A training run on the CPU engine compiles its programs (or loads them from Numba's disk cache)
before its first step: it names the programs it compiles and then each one's time, writes the
seconds to run.json and to the first record of metrics.jsonl, and counts only steps in the
epochs' samples/s.  With a warm cache it says nothing about compiling.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import netlang
from netlang.train.progress import Progress

ROOT = Path(__file__).resolve().parent.parent

# Widths used nowhere else in the suite: the generated modules are named by their source, and
# a module another test already imported would be ready in this process, nothing to compile.
# The dropout layer gives the training step a key argument, whose type the compilation must get right.
TINY_NET = """
input x: [2]
input label: int32[]
output logits = x -> dense(11) -> relu -> dropout(0.1) -> dense(2)
train {
  loss cross_entropy(logits, label)
  batch_size 16
  epochs 2
}
"""


def _train_piped(model: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    """`netlang train` in a process of its own, its output piped, on the kernel cache `cache`."""
    env = {**os.environ, "NETLANG_CACHE": str(cache), "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("NETLANG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "netlang.cli", "train", str(model), "--data",
                           "blobs", "--samples", "8000", "--out", str(out), "--force"],
                          env=env, capture_output=True, text=True, timeout=600)


def _records(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_cold_cache_says_what_it_compiles_and_a_warm_one_says_nothing(tmp_path):
    model = tmp_path / "tiny.net"
    model.write_text(TINY_NET.replace("dense(11)", "dense(12)"))   # a process of its own
    cold = _train_piped(model, tmp_path / "cold", tmp_path / "cache")
    assert cold.returncode == 0, cold.stderr
    lines = cold.stdout.splitlines()
    header = lines.index("compiling 2 kernels (training step, evaluation)...")
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2"))
    step_line, evaluation_line = lines[header + 1], lines[header + 2]
    assert header < first_epoch == header + 3, cold.stdout
    assert step_line.startswith("  training step: ") and step_line.endswith("s"), step_line
    assert evaluation_line.startswith("  evaluation: "), evaluation_line
    shown = float(step_line.split(": ")[1][:-1]) + float(evaluation_line.split(": ")[1][:-1])

    compiled = json.loads((tmp_path / "cold" / "run.json").read_text())["compile"]
    assert set(compiled["programs"]) == {"training step", "evaluation"}
    assert compiled["seconds"] == round(sum(compiled["programs"].values()), 3)
    assert abs(compiled["seconds"] - shown) < 0.11   # the printed times are rounded to 0.1 s
    first, second = _records(tmp_path / "cold")
    assert first["compile_s"] == compiled["seconds"] and "compile_s" not in second
    # Epoch 1 times steps alone: its rate is epoch 2's, not a compile-bound fraction of it
    # (with the compile counted, 8,000 examples in a few ms against seconds of compiling).
    assert first["time_s"] < compiled["seconds"]
    assert first["samples_per_s"] > second["samples_per_s"] / 5, (first, second)

    warm = _train_piped(model, tmp_path / "warm", tmp_path / "cache")
    assert warm.returncode == 0, warm.stderr
    assert "compil" not in warm.stdout, warm.stdout
    assert "compile" not in json.loads((tmp_path / "warm" / "run.json").read_text())
    assert all("compile_s" not in record for record in _records(tmp_path / "warm"))


def test_the_programs_made_ready_are_the_ones_the_steps_call(tmp_path, monkeypatch):
    """Made ready for the calls' own argument types: the steps and evaluations after them
    add no second overload, and nothing is compiled twice."""
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path / "cache"))
    model = netlang.compile(TINY_NET)
    history = model.fit(data="blobs", limit=200, val_split=0.25, out=tmp_path / "run")
    engine = model._engine
    evaluations = [entry[2] for key, entry in engine._programs.items() if key[0] == "infer"]
    assert len(evaluations) == 1
    for program in [engine._training()[3]] + evaluations:
        assert len(program.function.overloads) == 1
        # Made ready once: compiled here, or loaded from what a helper process compiled
        # (netlang/runtime/compilation.py), never both.
        stats = program.function.stats
        assert sum(stats.cache_misses.values()) + sum(stats.cache_hits.values()) == 1
    assert history.records[0]["compile_s"] > 0 and "compile_s" not in history.records[1]
    assert history.records[0]["time_s"] < history.records[0]["compile_s"]
    again = model.fit(data="blobs", limit=200, val_split=0.25)   # the same engine: all ready
    assert all("compile_s" not in record for record in again.records)


def test_compiling_lines_on_a_terminal_and_piped():
    piped = io.StringIO()
    progress = Progress(tty=False, out=piped, stream=io.StringIO())
    progress.compiling(["training step", "evaluation"])
    progress.compiled("training step", 12.34)
    progress.compiled("evaluation", 0.5)
    assert piped.getvalue() == ("compiling 2 kernels (training step, evaluation)...\n"
                                "  training step: 12.3s\n  evaluation: 0.5s\n")
    live = io.StringIO()
    progress = Progress(tty=True, out=live, stream=io.StringIO())
    progress.compiling(["training step", "evaluation"])
    assert live.getvalue() == "compiling 2 kernels (training step, evaluation)..."
    progress.compiled("training step", 12.34)
    progress.compiled("evaluation", 0.5)
    assert live.getvalue() == ("compiling 2 kernels (training step, evaluation)... "
                               "training step 12.3s, evaluation 0.5s\n")
    quiet = io.StringIO()
    progress = Progress(enabled=False, out=quiet)
    progress.compiling(["training step"])
    progress.compiled("training step", 1.0)
    assert quiet.getvalue() == ""
