"""Grammar-aware fuzzing of the front end: N mutated examples, each compiled under a time and
memory cap, and the outcomes counted.

    python benchmarks/fuzz.py [--cases N] [--seed S] [--timeout SECONDS] [--memory-mb MB]
                              [--workers W] [--show K]

Each case is an examples/*.net file with one to three mutations (tests/mutations.py: edits of
characters and tokens, op swaps, huge numbers, deep nesting, text that is not Unicode, import
chains and imports of files that are not netlang's), compiled by `netlang.compile` in a worker
process whose address space is capped (RLIMIT_AS).  Outcomes:

- ok: it compiled; error: a NetlangError with a position (or a whole-file error);
- escape: any other exception (a traceback a user would see), or a NetlangError without a
  position for text that is not blank;
- hang: no answer within the timeout (the worker is killed and restarted);
- blow-up: a MemoryError, or the worker died (the memory cap killed it).

Exit status 1 when any case escaped, hung or blew up; the first `--show` of each are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mutations import make_import_chain, mutate, op_names  # noqa: E402  (tests/ on the path)


def worker(memory_mb: int) -> None:
    """Compile the cases read from stdin (one JSON line each: path, text); answer each with a
    JSON line (outcome, detail)."""
    limit = memory_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import netlang
    from netlang.errors import NetlangError
    for line in sys.stdin:
        case = json.loads(line)
        try:
            netlang.compile(case["text"], path=case["path"])
            answer = ("ok", "")
        except NetlangError as error:
            rendered = error.render()
            positioned = error.loc is not None or error.path is not None
            unsafe = "\x1b" in rendered or "SECRET" in rendered \
                or any("\ud800" <= ch <= "\udfff" for ch in rendered)
            answer = ("error", "") if positioned and not unsafe else \
                ("escape", f"{'unsafe' if unsafe else 'no position'}: {rendered[:200]}")
        except MemoryError:
            answer = ("blow-up", "MemoryError")
        except RecursionError as error:
            answer = ("escape", f"RecursionError: {str(error)[:200]}")
        except Exception as error:  # the escapes this script exists to count
            answer = ("escape", f"{type(error).__name__}: {str(error)[:200]}")
        print(json.dumps(answer), flush=True)


class Worker:
    """A worker process, restarted after a hang or a death."""

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.process = None

    def start(self) -> None:
        """A fresh worker, this checkout's netlang on its path."""
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--memory-mb", str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=env)

    def run(self, path: str, text: str, timeout: float) -> tuple[str, str, float]:
        """(outcome, detail, seconds) of one case."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        start = time.perf_counter()
        try:
            self.process.stdin.write(json.dumps({"path": path, "text": text}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.process = None
            return "blow-up", "the worker died", 0.0
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        seconds = time.perf_counter() - start
        if not ready:
            self.process.kill()
            self.process.wait()
            self.process = None
            return "hang", f"no answer in {timeout:g} s", seconds
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.process = None
            return "blow-up", "the worker died (memory cap?)", seconds
        outcome, detail = json.loads(line)
        return outcome, detail, seconds

    def stop(self) -> None:
        """End the worker."""
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait()


def cases(count: int, seed: int, chain: Path):
    """`count` (path, text, kinds) cases: an example with one to three mutations."""
    rng = random.Random(seed)
    examples = sorted((ROOT / "examples").glob("*.net"))
    sources = {str(p): p.read_text("utf-8") for p in examples}
    ops = op_names()
    for _ in range(count):
        path = rng.choice(sorted(sources))
        text = sources[path]
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng, ops, chain)
        yield path, text


def main() -> int:
    """Run the fuzzing; print the counts and the first failures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--show", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.memory_mb)
        return 0
    counts: Counter = Counter()
    shown: Counter = Counter()
    slowest = (0.0, "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        chain = make_import_chain(Path(scratch) / "chain")
        runner = Worker(args.memory_mb)
        try:
            for path, text in cases(args.cases, args.seed, chain):
                outcome, detail, seconds = runner.run(path, text, args.timeout)
                counts[outcome] += 1
                slowest = max(slowest, (seconds, path))
                if outcome in ("escape", "hang", "blow-up") and shown[outcome] < args.show:
                    shown[outcome] += 1
                    print(f"{outcome}: {path}: {detail}\n  case: {text[:300]!r}")
        finally:
            runner.stop()
    total = sum(counts.values())
    print(f"{total} cases in {time.perf_counter() - start:.0f} s (seed {args.seed}, timeout "
          f"{args.timeout:g} s, memory cap {args.memory_mb} MB): "
          + ", ".join(f"{counts[k]} {k}" for k in ("ok", "error", "escape", "hang", "blow-up"))
          + f"; slowest case {slowest[0]:.1f} s ({Path(slowest[1]).name})")
    return 1 if counts["escape"] or counts["hang"] or counts["blow-up"] else 0


if __name__ == "__main__":
    sys.exit(main())
