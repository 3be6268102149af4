"""Compiling ahead of time: every program a training run and inference of a model call, made
ready in the disk caches without data (`netlang warmup`, `Model.warmup`).

A first run of a model compiles its programs (the training step, the evaluation pass, the
inference pass) before it computes anything: seconds to a minute on the CPU engine
(docs/training.md, "First run and compile time").  `warmup` builds the engine a run would
build, asks the trainer a run would make for the programs its epochs call (as
`Trainer._make_programs_ready` does before the first step), adds the passes that `evaluate`
(one head, and every head) and `predict` call, and makes each ready: Numba compiles it into
its disk cache, or finds it there.  A later process on the same caches (NETLANG_CACHE,
NUMBA_CACHE_DIR), the same worker count (NUMBA_NUM_THREADS) and the same settings then loads
them and compiles nothing.

A run of several processes under MPI calls other programs than a run alone: each process's
gradient pass on its share of the batch, then the optimiser's update compiled alone
(netlang/train/shards.py).  `processes=K` makes those ready, planned as rank 0 of K
processes would plan them (`PlannedProcesses`); a later `mpiexec -n K netlang train` whose
processes have the same NUMBA_NUM_THREADS loads them.  So does a train section's
`gradient_shards` in one process.

What is not covered, and compiles on first use: the pictures a generative model's run writes
(samples, reconstructions), the input-gradient passes of `saliency` and `attack`, and a
run whose `--set` overrides change the optimiser or its settings (they are other programs).
The CUDA engine compiles each kernel at its first launch, so it has nothing to warm up yet
(pending, as is making its programs ready before a run's first step).
"""

from __future__ import annotations

import dataclasses
import time

from netlang.errors import UsageError
from netlang.runtime import make_engine
from netlang.runtime.compilation import together
from netlang.runtime.cpu import cpu_workers
from netlang.train.binding import bind
from netlang.train.evaluation import evaluated_nodes
from netlang.train.overrides import apply_overrides, override_strings
from netlang.train.phased import PhasedTrainer, has_phases, phase_runs
from netlang.train.shards import gradient_shards, prepare_for_shards
from netlang.train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class PlannedProcesses:
    """Rank 0 of the `size` MPI processes of a run to come, as far as planning its programs
    goes (what `gradient_shards`, `check_supported` and the Trainer read of a run's
    `netlang.train.distributed.Ranks`): no communicator, nothing exchanged."""

    size: int
    rank: int = 0
    root: bool = True


@dataclasses.dataclass
class Warmup:
    """What `warmup` made ready: `compiled` {program title: seconds} the programs it compiled,
    `loaded` the titles Numba's disk cache already held, `seconds` the whole wall time (the
    engine's construction included), and the run's `engine`, `batch`, `workers` and MPI
    `processes`."""

    compiled: dict
    loaded: list
    seconds: float
    engine: str
    batch: int
    workers: int
    processes: int = 1

    @staticmethod
    def line(title: str, seconds: float | None) -> str:
        """One program's line: compiled in `seconds`, or (None) found in the cache."""
        return f"{title}: already in the cache" if seconds is None else \
            f"compiled {title} in {seconds:.1f}s"

    def lines(self) -> list[str]:
        """The report `netlang warmup` prints: a line per program, then the total."""
        found = [self.line(title, seconds) for title, seconds in self.compiled.items()]
        found += [self.line(title, None) for title in self.loaded]
        total = (f"compiled {len(self.compiled)} program{'s' * (len(self.compiled) != 1)} in "
                 f"{self.seconds:.1f}s" if self.compiled else
                 f"nothing to compile: {len(self.loaded)} program"
                 f"{'s' * (len(self.loaded) != 1)} loaded from the cache in {self.seconds:.1f}s")
        processes = f", {self.processes} processes" if self.processes > 1 else ""
        return found + [f"{total} ({self.engine} engine, batch {self.batch}, "
                        f"{self.workers} worker{'s' * (self.workers != 1)}{processes})"]

    def to_json(self) -> dict:
        """The report as plain data."""
        return dataclasses.asdict(self)


def warmup(model, *, batch: int | None = None, device: str = "cpu",
           dtype: str = "float32", processes: int = 1, progress=None) -> Warmup:
    """Make every program a training run of `model` (a netlang.api.Model) with batches of
    `batch` (default: the train section's) in `processes` MPI processes, and its inference,
    call ready in the disk caches; `progress` (a netlang.train.progress.Progress) is told
    each program's line as it is made ready (`Warmup.line`)."""
    if not isinstance(processes, int) or processes < 1:
        raise UsageError(f"processes must be a whole number of at least 1, not {processes!r}")
    start = time.perf_counter()
    ranks = PlannedProcesses(processes) if processes > 1 else None
    binding = bind(model.graph)
    config = apply_overrides(model.train_config, override_strings(batch_size=batch),
                             model.graph)
    engine = make_engine(model.graph, config, seed=config.seed, device=device, dtype=dtype)
    batch = config.batch_size
    compilations = []   # (title, ProgramCompilation)
    if binding.losses:
        runs = phase_runs(model.graph, config, lambda graph, settings, shared: make_engine(
            graph, settings, shared, seed=config.seed, device=device, dtype=dtype),
            engine.params) if has_phases(model.graph) else None
        # As `train` does (netlang/train/loop.py), refusing alike.
        prepare_for_shards(ranks, gradient_shards(config, ranks), engine, runs is not None,
                           config.adversarial is not None)
        # The trainer `train` makes, without data: a data set's valid range only bounds
        # adversarial examples, which the compiled programs take as any input.
        options = {"source_hash": model.source_hash, "ranks": ranks}
        trainer = PhasedTrainer(engine, runs, binding, config, **options) if runs is not None \
            else Trainer(engine, binding, config, **options)
        every_input = dict.fromkeys(binding.inputs)
        evaluated = tuple(evaluated_nodes(binding, every_input))
        # The programs a run's epochs call, as Trainer._make_programs_ready lists them.
        compilations += [(c.title, c) for c in
                         trainer._compilations(batch, evaluated, trainer.eval_batch_size)]
        per_head = tuple(evaluated_nodes(binding, every_input, per_head=True))
        compilations += [("evaluation per head", c) for c in
                         engine.compilations(None, per_head, trainer.eval_batch_size)]
    predicted = (binding.head.prediction,) if binding.head is not None and \
        binding.head.classify else tuple(model.graph.graph["outputs"])
    compilations += [("inference", c) for c in engine.compilations(None, predicted, batch)]
    if not compilations:
        raise UsageError(f"the {engine.name} engine has no programs to compile ahead of "
                         f"time: the reference engine compiles nothing, and the CUDA engine's "
                         f"kernels compile at their first launch (warming them up is pending)")
    compiled, loaded = {}, []
    # One set of helper processes compiles for all of them (netlang/runtime/compilation.py).
    with together([compilation for _, compilation in compilations]):
        for title, compilation in compilations:
            if compilation.ready:   # the same program as one before it (one head: per head)
                continue
            seconds, was_compiled = compilation.run()
            if was_compiled:
                compiled[title] = round(seconds, 3)
            else:
                loaded.append(title)
            if progress is not None:   # as each finishes: a convolutional model takes minutes
                progress.message(Warmup.line(title, seconds if was_compiled else None))
    workers = cpu_workers() if engine.name == "cpu" else 1
    return Warmup(compiled, loaded, round(time.perf_counter() - start, 3), engine.name, batch,
                  workers, processes)
