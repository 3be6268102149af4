"""Front-end speed: parse + lower + shape inference per example, and `netlang check` start-up.

    python benchmarks/frontend.py [--runs N] [--process-runs N] [files...]

For every examples/**/*.net (or the files given) it times `netlang.compile(path)` in-process:
one warm-up, then the median of N runs.  Then it times `netlang check examples/resnet18.net`
as a whole process against `python -c "import torch"` (median of 5 each).

Goals (issue): ResNet-18 and GoogLeNet compile in under 50 ms each in-process, and the `check`
process is faster than importing torch.  Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_MS = 50.0
GOAL_MODELS = ("resnet18", "googlenet")


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_compile(files, runs: int):
    import netlang
    rows = []
    first = None
    for path in files:
        rel = os.path.relpath(path, ROOT)
        try:
            start = time.perf_counter()
            model = netlang.compile(str(path))  # warm-up (the first one also builds the parser)
            warm = (time.perf_counter() - start) * 1000
            if first is None:
                first = (rel, warm)
            ms = _median_ms(lambda: netlang.compile(str(path)), runs)
        except netlang.NetlangError as exc:
            rows.append((rel, None, None, f"error: {exc.message}"))
            continue
        nodes = sum(1 for _, d in model.graph.nodes(data=True) if d["role"] in ("layer", "loss"))
        rows.append((rel, ms, nodes, ""))
    return rows, first


def _check_command():
    script = shutil.which("netlang")
    # Prefer the installed entry point when it runs this checkout; else run the module directly.
    if script:
        probe = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [script]
    return [sys.executable, "-c", "import sys; from netlang.cli import main; sys.exit(main())"]


def _process_ms(argv, runs: int, env=None) -> float:
    subprocess.run(argv, capture_output=True, check=False, env=env, cwd=ROOT)  # warm the OS caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, check=False, env=env, cwd=ROOT)
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr.decode()[-2000:]}")
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=".net files (default: examples/**/*.net)")
    parser.add_argument("--runs", type=int, default=20, help="in-process runs per file (median)")
    parser.add_argument("--process-runs", type=int, default=5, help="process runs (median)")
    args = parser.parse_args(argv)

    files = [Path(f) for f in args.files] or sorted((ROOT / "examples").glob("**/*.net"))
    if not files:
        print("no .net files found under examples/")
        return 1
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    print(f"netlang front end: parse + lower + infer, median of {args.runs} runs after a warm-up")
    rows, first = bench_compile(files, args.runs)
    width = max(len(r[0]) for r in rows)
    print(f"{'file':<{width}}  {'nodes':>5}  {'ms':>8}")
    print("-" * (width + 17))
    for rel, ms, nodes, note in rows:
        if ms is None:
            print(f"{rel:<{width}}  {'':>5}  {'':>8}  {note}")
        else:
            print(f"{rel:<{width}}  {nodes:>5}  {ms:>8.2f}")
    if first:
        print(f"(first compile in this process, {first[0]}: {first[1]:.1f} ms)")

    verdicts = []
    by_stem = {Path(r[0]).stem: r for r in rows}
    for stem in GOAL_MODELS:
        row = by_stem.get(stem)
        if row is None or row[1] is None:
            verdicts.append((f"{stem} compiles in < {GOAL_MS:.0f} ms", None,
                             "not measured (no examples/" + stem + ".net)" if row is None
                             else f"not measured ({row[3]})"))
        else:
            verdicts.append((f"{stem} compiles in < {GOAL_MS:.0f} ms", row[1] < GOAL_MS,
                             f"{row[1]:.2f} ms"))

    print()
    target = ROOT / "examples" / "resnet18.net"
    check_ms = torch_ms = None
    if target.exists():
        command = _check_command() + ["check", os.path.relpath(target, ROOT)]
        check_ms = _process_ms(command, args.process_runs, env)
        print(f"`netlang check examples/resnet18.net` process: {check_ms:8.1f} ms "
              f"(median of {args.process_runs}; {' '.join(command[:1])})")
    else:
        print("examples/resnet18.net is missing: `netlang check` process not timed")
    python_ms = _process_ms([sys.executable, "-c", "pass"], args.process_runs, env)
    print(f"`python -c pass` process:                   {python_ms:8.1f} ms")
    if importlib.util.find_spec("torch") is None:
        print("`python -c 'import torch'`: torch is not installed here; comparison skipped")
        verdicts.append(("`netlang check` faster than `import torch`", None, "torch not installed"))
    else:
        torch_ms = _process_ms([sys.executable, "-c", "import torch"], args.process_runs, env)
        print(f"`python -c 'import torch'` process:         {torch_ms:8.1f} ms")
        if check_ms is None:
            verdicts.append(("`netlang check` faster than `import torch`", None, "check not timed"))
        else:
            verdicts.append(("`netlang check` faster than `import torch`", check_ms < torch_ms,
                             f"{check_ms:.1f} ms vs {torch_ms:.1f} ms"))

    print()
    print("goals:")
    for what, met, detail in verdicts:
        mark = "met   " if met else ("MISSED" if met is False else "skip  ")
        print(f"  [{mark}] {what}: {detail}")
    return 1 if any(met is False for _, met, _ in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
