"""Data-parallel training over MPI: K processes train one model as one process would.

Under an MPI launcher (`mpiexec -n K netlang train ...`, or a script calling `model.fit`),
`world()` gives the processes (`Ranks`); anywhere else it gives None and mpi4py is never
imported.  Every process holds the whole model and the whole data set, and each training step
goes:

1. every process takes the same global batch (the same seed's shuffle) and computes the
   gradients of its contiguous share of it (`Ranks.bounds`), with its dropout masks drawn as
   those rows of the whole batch's masks (`engine.example_offset`), so that no mask depends
   on K;
2. the gradients, each weighted by its share's size over the batch's (every netlang loss is a
   mean over the batch's examples), are summed with one MPI Allreduce over one contiguous
   buffer, which also carries the share's loss sum (a NaN anywhere stops every process at the
   same step) and whether a process was asked to stop (Ctrl-C, which each process sees at its
   own moment: all stop at the same step, `Trainer.stopping`);
3. every process applies the same optimiser step to the same sum, on the host with the
   reference rule (`EngineBase.apply_gradients`), so the parameters stay identical without
   ever being sent.

The running metrics are summed across the processes when the loop reads them, and a set
evaluated after an epoch is split among them (`evaluate_across`).  Only rank 0 prints and
writes the run directory (netlang/train/loop.py).  A process that waits longer than
NETLANG_MPI_TIMEOUT seconds (default 300) for the others ends the whole job with an error
naming itself (MPI_Abort), and so does an error raised in one process (`Ranks.fail`): the
others would otherwise wait for it forever.

A batch norm normalises with the whole batch's statistics (synchronised batch norm): the
gradient pass sums its per-channel sums across the processes before using them, Σx and Σx²
forward, and Σg and Σg·x too for the input's gradient (netlang/runtime/statistics.py calls
`DataParallelSteps.sum_statistics`), and moves the running statistics by the whole batch's,
alike in every process.

Refused in one line each (`check_supported`), and pending: training phases, and engines other
than the CPU's.
"""

from __future__ import annotations

import functools
import sys
import threading
import time

import numpy as np

from netlang.config import launched_by_mpi, mpi_timeout
from netlang.errors import UsageError
from netlang.runtime.statistics import reduce_statistics_with
from netlang.train.binding import count_examples, take_examples
from netlang.train.evaluation import evaluate
from netlang.train.meters import divergence_error, output_value
from netlang.train.metrics import MetricAccumulator

# The two numbers after the gradients in a step's buffer.
LOSS_SUM, STOP = -2, -1


class RefusedOnEveryProcess(UsageError):
    """A refusal every process makes alike, from the settings and the model alone: each
    raises it, so none waits for another, and it ends them as an ordinary error would."""


class Ranks:
    """The processes MPI started (its world communicator): this one's rank, their number,
    and the collective calls a data-parallel run makes, each watched by a timeout."""

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.timeout = mpi_timeout()
        # When this process began waiting for the others (None: not waiting); a daemon thread
        # ends the job when a wait passes the timeout.  One thread for the run, not a timer
        # per step: a step's collective call costs microseconds.
        self._waiting_since = None
        self._waiting_for = ""
        self._watchdog = threading.Thread(target=self._watch, name="netlang-mpi-watchdog",
                                          daemon=True)
        self._watchdog.start()

    @property
    def root(self) -> bool:
        """Whether this is rank 0, the process that prints and writes files."""
        return self.rank == 0

    def bounds(self, count: int) -> tuple[int, int]:
        """[start, stop) of this process's share of `count` examples: contiguous, in rank
        order, the first `count % size` ranks taking one more."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum(self, buffer: np.ndarray, what: str) -> None:
        """`buffer` (contiguous) summed over every process, in place: MPI Allreduce on the
        buffer itself, never a pickled object."""
        with self._waiting(what):
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)

    def gather(self, value, what: str) -> list:
        """Every process's `value` (a small picklable object), in rank order."""
        with self._waiting(what):
            return self.comm.allgather(value)

    def broadcast_rng(self, rng: np.random.Generator) -> None:
        """Make `rng` rank 0's generator: after a step in which some process had no example,
        and so drew no dropout key."""
        with self._waiting("sharing the dropout generator"):
            state = self.comm.bcast(rng.bit_generator.state, root=0)
        rng.bit_generator.state = state

    def fail(self, error: BaseException) -> None:
        """End the whole job after an error in this process: the others cannot go on alone."""
        self._abort(f"{error} (MPI rank {self.rank} of {self.size}; ending the job)")

    # -- the timeout ---------------------------------------------------------------------------

    def _waiting(self, what: str):
        return _Waiting(self, what)

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.timeout:
                self._abort(f"MPI rank {self.rank} of {self.size} waited {self.timeout:g} s for "
                            f"the other processes while {self._waiting_for}: one of them "
                            f"stopped or hangs; ending the job (NETLANG_MPI_TIMEOUT sets the "
                            f"wait)")

    def _abort(self, message: str) -> None:
        sys.stdout.flush()
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(1)


class _Waiting:
    """A collective call in progress, for the watchdog (`Ranks._waiting`)."""

    def __init__(self, ranks: Ranks, what: str):
        self.ranks, self.what = ranks, what

    def __enter__(self):
        self.ranks._waiting_for = self.what
        self.ranks._waiting_since = time.monotonic()

    def __exit__(self, *exc):
        self.ranks._waiting_since = None
        return False


@functools.cache
def world() -> Ranks | None:
    """The processes training together when an MPI launcher started more than one (read once
    per process, as MPI itself starts once); None otherwise."""
    if not launched_by_mpi():
        return None
    try:
        # Imported only under a launcher: importing mpi4py.MPI initialises MPI.
        from mpi4py import MPI
    except ImportError:
        raise UsageError("this process was started by an MPI launcher but mpi4py is not "
                         "installed: pip install \"netlang[mpi]\"") from None
    comm = MPI.COMM_WORLD
    return Ranks(comm, MPI) if comm.Get_size() > 1 else None


def across_processes(run):
    """`run` (a training run, taking `ranks=`) given the processes training together when
    there are several (`world()`), an error in any of them ending the job: the others would
    wait for it forever.  Alone, `run` as it is."""
    @functools.wraps(run)
    def run_here(*args, **options):
        ranks = world()
        if ranks is None:
            return run(*args, **options)
        try:
            return run(*args, ranks=ranks, **options)
        except RefusedOnEveryProcess:
            raise
        except Exception as error:   # not Ctrl-C: all processes stop at one step for that
            ranks.fail(error)
    return run_here


def check_batch_size(ranks: Ranks, batch_size: int) -> None:
    """The global batch must split evenly among the processes (a one-line error)."""
    if batch_size % ranks.size:
        raise RefusedOnEveryProcess(
            f"the batch size {batch_size} does not split evenly among {ranks.size} MPI "
            f"processes: choose a multiple of {ranks.size} (`batch_size={ranks.size * 32}`)")


def check_supported(ranks: Ranks, engine, phased: bool, adversarial: bool = False) -> None:
    """Refuse, in one line, what data-parallel training does not do yet."""
    if engine.name != "cpu":
        raise RefusedOnEveryProcess(
            f"training across {ranks.size} MPI processes runs on the CPU engine only (the "
            f"{engine.name} engine's is pending): use `device=\"cpu\"`")
    if phased:
        raise RefusedOnEveryProcess(f"training phases across {ranks.size} MPI processes are "
                                    f"pending: train this model in one process")
    if adversarial:
        raise RefusedOnEveryProcess(f"adversarial training across {ranks.size} MPI processes "
                                    f"is pending: train this model in one process")


def share_batch_statistics(engine) -> None:
    """Have `engine`'s gradient pass normalise with the whole batch's statistics, summed
    across the processes (before the pass is first compiled): a model without batch norm
    compiles the same pass as alone."""
    engine.statistics_across_processes = bool(engine.graph.buffers())


class ShareOfBatches:
    """An epoch's batches taken from host arrays, each process taking its share of each."""

    def __init__(self, arrays: dict, ranks: Ranks):
        self.arrays, self.ranks = arrays, ranks

    def epoch(self, order: list):
        """A function of the step number in the epoch that returns this process's share of
        that step's batch."""
        def take(i):
            start, stop = self.ranks.bounds(len(order[i]))
            return take_examples(self.arrays, order[i][start:stop])
        return take


class DataParallelSteps:
    """The meter of a data-parallel epoch (the calls of netlang/train/meters.py): each step's
    gradients summed across the processes and applied alike by all (see the module
    docstring); the metrics summed locally, and across the processes when read."""

    def __init__(self, engine, head, acc: MetricAccumulator, ranks: Ranks, trainer, every: int):
        self.engine, self.head, self.acc, self.ranks = engine, head, acc, ranks
        self.trainer, self.every = trainer, every
        self.shapes, self.spans, size = {}, {}, 0
        for name in engine.trainable:
            value = engine.params[name]
            self.shapes[name], self.spans[name] = value.shape, (size, size + value.size)
            size += value.size
        # One buffer for the whole step: the gradients, then the loss sum and the stop flag.
        # The scaling benchmark compares it with buckets (benchmarks/scaling.py).
        self.buffer = np.zeros(size + 2, dtype=engine.dtype)
        self.base, self.local, self.unread = None, None, 0
        # (this process's examples, the batch's) of the step in progress, for sum_statistics.
        self.share = (0, 0)
        if engine.statistics_across_processes:
            reduce_statistics_with(self.sum_statistics)

    def sum_statistics(self, sums: np.ndarray, rows: int, with_gradients: bool) -> int:
        """A batch norm's per-channel sums over this process's `rows` rows (Σx, Σx², and
        with_gradients Σg, Σg·x) made the whole batch's, in place; returns its rows.

        Each process's g is that of its own share's mean loss: count/mine times the whole
        batch's.  Σg and Σg·x are scaled by mine·K/count before the sum, so that every
        process's count alike (K times the batch's), and back after, so that each process's
        input gradient stays its own loss's, which the step weights by mine/count as it does
        every gradient.  The scale is 1 when the batch splits evenly."""
        mine, count = self.share
        weight = mine * self.ranks.size / count
        if with_gradients and weight != 1.0:
            sums[2:] *= weight
        self.ranks.sum(sums, "summing batch-norm statistics")
        if with_gradients and weight != 1.0:
            sums[2:] /= weight
        return rows * count // mine

    def start(self) -> None:
        """The epoch's totals so far (every process restored the same) are the base; each
        process then counts its own shares."""
        self.base = self.acc.state()
        self.local = MetricAccumulator(self.head, top_k=self.acc.top_k)

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        """One step: this process's share `feeds` of a batch of `count` examples."""
        start, stop = self.ranks.bounds(count)
        mine, buffer, engine = stop - start, self.buffer, self.engine
        if count < self.ranks.size and engine.statistics_across_processes:
            raise RefusedOnEveryProcess(
                f"the last batch of epoch {epoch + 1} has {count} example"
                f"{'s' if count != 1 else ''}, fewer than the {self.ranks.size} MPI processes, "
                f"and batch norm needs statistics from every process: choose a batch size "
                f"that leaves at least {self.ranks.size} examples in the last batch, or fewer "
                f"processes")
        outputs = None
        if mine:
            engine.example_offset = start
            self.share = (mine, count)
            loss, grads, outputs = engine.gradients(feeds, "train")
            weight = mine / count
            for name, (a, b) in self.spans.items():
                np.multiply(grads[name].reshape(-1), weight, out=buffer[a:b])
            buffer[LOSS_SUM] = loss * mine
        else:
            buffer[:] = 0.0
        buffer[STOP] = 1.0 if self.trainer.stop_requested else 0.0
        self.ranks.sum(buffer, f"summing the gradients of step {number} of epoch {epoch + 1}")
        if count < self.ranks.size:   # some process drew no dropout key this step
            self.ranks.broadcast_rng(engine.rng)
        total = float(buffer[LOSS_SUM]) / count
        if not np.isfinite(total):
            raise divergence_error(total, epoch, number)
        self.trainer.agree_to_stop(bool(buffer[STOP] > 0))
        engine.apply_gradients({name: buffer[a:b].reshape(self.shapes[name])
                                for name, (a, b) in self.spans.items()}, lr)
        if mine:
            head = self.head
            prediction = output_value(engine.graph, outputs, head.prediction) \
                if head is not None else None
            self.local.add(loss, mine, prediction,
                           feeds.get(head.target) if head is not None and head.target else None)
        self.unread += 1

    def due(self) -> bool:
        """Whether `every` steps have passed since the totals were last summed."""
        return self.unread >= self.every

    def read(self, epoch: int) -> None:
        """The epoch's totals: the base plus every process's own, summed across them."""
        local = self.local
        ks = list(local.top_k)
        counts = np.array([local.loss_sum, local.examples, local.correct, local.positions]
                          + [local.top_correct[k] for k in ks], dtype=np.float64)
        self.ranks.sum(counts, "summing the running metrics")
        base = self.base
        self.acc.restore({
            "loss_sum": base["loss_sum"] + counts[0],
            "examples": base["examples"] + int(counts[1]),
            "correct": base["correct"] + int(counts[2]),
            "positions": base["positions"] + int(counts[3]),
            "top_correct": {str(k): base["top_correct"].get(str(k), 0) + int(counts[4 + i])
                            for i, k in enumerate(ks)},
            "matrix": base["matrix"]})
        self.unread = 0


def evaluate_across(ranks: Ranks, engine, binding, arrays: dict, batch_size: int,
                    **options) -> dict:
    """`evaluate` over `arrays`, each process evaluating a contiguous share and the results
    combined (`combine_results`): what one process evaluating it all would give, up to the
    order of the sums."""
    start, stop = ranks.bounds(count_examples(arrays))
    mine = evaluate(engine, binding, take_examples(arrays, slice(start, stop)), batch_size,
                    **options) if stop > start else None
    return combine_results([r for r in ranks.gather(mine, "evaluating") if r is not None])


def combine_results(results: list) -> dict:
    """One `evaluate` result from those of disjoint parts of a set: "examples" added, the
    confusion matrix added, every other figure averaged weighted by examples (each is a mean
    over examples, or over a fixed number of positions per example), the rest (names) kept."""
    weights = [r["examples"] for r in results]
    total = sum(weights)

    def combine(values: list, key: str | None = None):
        first = values[0]
        if key == "examples":
            return total
        if key == "confusion":
            return np.sum([np.asarray(v) for v in values], axis=0).tolist()
        if isinstance(first, dict):
            return {k: combine([v[k] for v in values], k) for k in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return sum(w * v for w, v in zip(weights, values)) / total
        return first
    return combine(results)
