"""Front-end speed: parse + lower + shape inference per example, and `netlang check` start-up.

    python benchmarks/frontend.py [--runs N] [--process-runs N] [files...]

For every examples/**/*.net (or the files given) it times `netlang.compile(path)` in-process:
one warm-up, then the median of N runs.  Then it times `netlang check examples/resnet18.net`
as a whole process against `python -c "import torch"` (median of 5 each).  The check runs this
checkout's code (`python -c "from netlang.cli import main; ..."` with PYTHONPATH set to it);
`--script` runs the installed `netlang` entry point instead.

Wall-clock time is what the goals are about; CPU time (user + system) is printed beside it,
because on a busy machine wall time mostly measures the other processes.

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


def _median_ms(fn, runs: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of `runs` calls."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    return statistics.median(wall), statistics.median(cpu)


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
            ms, cpu = _median_ms(lambda: netlang.compile(str(path)), runs)
        except netlang.NetlangError as exc:
            message = exc.message.splitlines()[0]
            note = ("skipped: a library of blocks, no `input`" if "defines no `input`" in message
                    else f"error: {message}")
            rows.append((rel, None, None, None, note))
            continue
        nodes = sum(1 for _, d in model.graph.nodes(data=True) if d["role"] in ("layer", "loss"))
        rows.append((rel, ms, cpu, nodes, ""))
    return rows, first


def _check_command(use_script: bool):
    script = shutil.which("netlang") if use_script else None
    if use_script and not script:
        print("(no `netlang` script on PATH: running this checkout with python -c)")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from netlang.cli import main; sys.exit(main())"]


def _children_cpu_ms() -> float:
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def _process_ms(argv, runs: int, env=None) -> tuple[float, float]:
    """Median wall and CPU milliseconds of running `argv` as a process."""
    subprocess.run(argv, capture_output=True, check=False, env=env, cwd=ROOT)  # warm the OS caches
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), _children_cpu_ms()
        result = subprocess.run(argv, capture_output=True, check=False, env=env, cwd=ROOT)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append(_children_cpu_ms() - start_cpu)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr.decode()[-2000:]}")
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=".net files (default: examples/**/*.net)")
    parser.add_argument("--runs", type=int, default=20, help="in-process runs per file (median)")
    parser.add_argument("--process-runs", type=int, default=5, help="process runs (median)")
    parser.add_argument("--script", action="store_true",
                        help="time the installed `netlang` script rather than this checkout")
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
    print(f"{'file':<{width}}  {'layers':>6}  {'wall ms':>8}  {'cpu ms':>8}")
    print("-" * (width + 30))
    for rel, ms, cpu, nodes, note in rows:
        if ms is None:
            print(f"{rel:<{width}}  {'':>6}  {'':>8}  {'':>8}  {note}")
        else:
            print(f"{rel:<{width}}  {nodes:>6}  {ms:>8.2f}  {cpu:>8.2f}")
    if first:
        print(f"(first compile in this process, {first[0]}, with imports and parser set-up: "
              f"{first[1]:.1f} ms)")

    verdicts = []
    by_stem = {Path(r[0]).stem: r for r in rows}
    for stem in GOAL_MODELS:
        row = by_stem.get(stem)
        if row is None or row[1] is None:
            verdicts.append((f"{stem} compiles in < {GOAL_MS:.0f} ms", None,
                             "not measured (no examples/" + stem + ".net)" if row is None
                             else f"not measured ({row[4]})"))
        else:
            verdicts.append((f"{stem} compiles in < {GOAL_MS:.0f} ms", row[1] < GOAL_MS,
                             f"{row[1]:.2f} ms wall, {row[2]:.2f} ms cpu"))

    print()
    target = ROOT / "examples" / "resnet18.net"
    check_ms = torch_ms = None
    print(f"processes, median of {args.process_runs}:{'':20}{'wall ms':>9}  {'cpu ms':>8}")
    if target.exists():
        command = _check_command(args.script) + ["check", os.path.relpath(target, ROOT)]
        check_ms, check_cpu = _process_ms(command, args.process_runs, env)
        print(f"  netlang check examples/resnet18.net{'':8}{check_ms:9.1f}  {check_cpu:8.1f}")
    else:
        print("  examples/resnet18.net is missing: `netlang check` process not timed")
    python_ms, python_cpu = _process_ms([sys.executable, "-c", "pass"], args.process_runs, env)
    print(f"  python -c pass{'':29}{python_ms:9.1f}  {python_cpu:8.1f}")
    if importlib.util.find_spec("torch") is None:
        print("  python -c 'import torch': torch is not installed here; comparison skipped")
        verdicts.append(("`netlang check` faster than `import torch`", None, "torch not installed"))
    else:
        torch_ms, torch_cpu = _process_ms([sys.executable, "-c", "import torch"],
                                          args.process_runs, env)
        print(f"  python -c 'import torch'{'':19}{torch_ms:9.1f}  {torch_cpu:8.1f}")
        if check_ms is None:
            verdicts.append(("`netlang check` faster than `import torch`", None, "check not timed"))
        else:
            verdicts.append(("`netlang check` faster than `import torch`", check_ms < torch_ms,
                             f"{check_ms:.1f} ms vs {torch_ms:.1f} ms wall "
                             f"({check_cpu:.1f} vs {torch_cpu:.1f} ms cpu)"))

    print()
    print("goals:")
    for what, met, detail in verdicts:
        mark = "met   " if met else ("MISSED" if met is False else "skip  ")
        print(f"  [{mark}] {what}: {detail}")
    return 1 if any(met is False for _, met, _ in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
