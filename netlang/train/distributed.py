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
from concurrent.futures import ThreadPoolExecutor

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
        self._received = {}   # receive buffers of tree_sum, by (size, dtype)
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

    def tree_sum(self, buffer: np.ndarray, what: str) -> None:
        """`buffer` (contiguous) summed over every process, in place, along the shards' tree
        (`tree_sum`) with the processes as its leaves: at each level, the sum of an aligned
        block of processes is added to its neighbour block's.  MPI moves the bytes and never
        adds them, so the sum does not depend on how MPI orders a reduction.

        A power-of-two number of processes (`_halving_and_doubling`) sends 2·(K−1)/K of the
        buffer from each, as a ring allreduce does, in 2·log2(K) messages; another number
        sends each block's sum to its left neighbour and rank 0 broadcasts the total."""
        flat = buffer.reshape(-1)
        received = self._receiving(flat)
        with self._waiting(what):
            if self.size & (self.size - 1) == 0:
                self._halving_and_doubling(flat, received)
                return
            rank, distance = self.rank, 1
            while distance < self.size:
                if rank % (2 * distance) == distance:
                    self.comm.Send(flat, dest=rank - distance)
                    break
                if rank + distance < self.size:
                    self.comm.Recv(received, source=rank + distance)
                    np.add(flat, received, out=flat)
                distance *= 2
            self.comm.Bcast(flat, root=0)

    def _receiving(self, flat: np.ndarray) -> np.ndarray:
        """A buffer to receive into, kept per size and type: a fresh one at every step cost
        mlp_500_300's 2 MB sum its page faults (0.62 ms against 0.47 kept, 2 processes)."""
        key = (flat.size, flat.dtype.str)
        if key not in self._received:
            self._received[key] = np.empty_like(flat)
        return self._received[key]

    def _halving_and_doubling(self, flat: np.ndarray, received: np.ndarray) -> None:
        """The tree sum for a power-of-two number of processes (Rabenseifner's allreduce).
        Reduce-scatter by recursive halving, partners 1, 2, 4, ... apart: each pair splits the
        part of the buffer both still hold, each sends the other the half it gives up and adds
        the half it keeps, its block's sum plus the partner block's: the tree's pairs, level by
        level (addition being commutative, either order gives the same bits).  Each process
        then holds 1/K of the total, and the halves are exchanged back (recursive doubling,
        no arithmetic) until every process holds all of it."""
        low, high, exchanges, distance = 0, flat.size, [], 1
        while distance < self.size:
            partner = self.rank ^ distance
            middle = (low + high) // 2
            keep, give = ((low, middle), (middle, high)) if self.rank & distance == 0 else \
                ((middle, high), (low, middle))
            self.comm.Sendrecv(flat[give[0]:give[1]], dest=partner,
                               recvbuf=received[keep[0]:keep[1]], source=partner)
            np.add(flat[keep[0]:keep[1]], received[keep[0]:keep[1]],
                   out=flat[keep[0]:keep[1]])
            exchanges.append((partner, keep, give))
            low, high = keep
            distance *= 2
        for partner, keep, give in reversed(exchanges):
            self.comm.Sendrecv(flat[keep[0]:keep[1]], dest=partner,
                               recvbuf=flat[give[0]:give[1]], source=partner)

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


def check_supported(ranks: Ranks | None, shards: Shards, engine, phased: bool,
                    adversarial: bool = False) -> None:
    """Refuse, in one line, what steps summing shards' gradients do not do yet."""
    where = f"across {ranks.size} MPI processes" if ranks is not None else \
        f"with {shards.count} gradient shards"
    if engine.name != "cpu":
        raise RefusedOnEveryProcess(
            f"training {where} runs on the CPU engine only (the {engine.name} engine's is "
            f"pending): use `device=\"cpu\"`")
    if phased:
        raise RefusedOnEveryProcess(f"training phases {where} are pending: train this model "
                                    f"with `gradient_shards=1` in one process")
    if adversarial:
        raise RefusedOnEveryProcess(f"adversarial training {where} is pending: train this "
                                    f"model with `gradient_shards=1` in one process")


def share_batch_statistics(engine) -> None:
    """Have `engine`'s gradient pass normalise with the whole batch's statistics, summed
    across the shards (before the pass is first compiled): a model without batch norm
    compiles the same pass as alone."""
    engine.statistics_across_processes = bool(engine.graph.buffers())


def shard_engine(engine):
    """An engine of `engine`'s kind over the same parameters, for a shard's pass on another
    thread: its own buffers, generator and example offset; its own copy of the running
    statistics, which the pass moves as `engine`'s pass moves `engine`'s (those are kept)."""
    buffers = set(engine.graph.buffers())
    params = {name: value.copy() if name in buffers else value
              for name, value in engine.params.items()}
    twin = type(engine)(engine.graph, engine.config, params, dtype=engine.dtype)
    twin.statistics_across_processes = engine.statistics_across_processes
    return twin


class ShareOfBatches:
    """An epoch's batches taken from host arrays, each process taking its shards of each."""

    def __init__(self, arrays: dict, shards: Shards):
        self.arrays, self.shards = arrays, shards

    def epoch(self, order: list):
        """A function of the step number in the epoch that returns this process's shards of
        that step's batch."""
        def take(i):
            start, stop = self.shards.share(len(order[i]))
            return take_examples(self.arrays, order[i][start:stop])
        return take


class Shards:
    """How each batch is cut into gradient shards, and which of them this process computes.

    A batch of N examples is cut into `count` contiguous shards in order, the first N % count
    taking one more example (an empty shard's gradient is zero).  The K processes (one alone)
    take `count / K` consecutive shards each, in rank order, so each process's share of a
    batch is contiguous too.  `count` must be a multiple of K with a power-of-two quotient:
    each process's shards are then one node of the fixed tree in which shards are added
    (`tree_sum`), and the tree's upper levels pair the processes as they pair those nodes."""

    def __init__(self, count: int, ranks: Ranks | None = None):
        self.count = count
        size, rank = (ranks.size, ranks.rank) if ranks is not None else (1, 0)
        self.per_process = count // size
        self.first = rank * self.per_process   # this process's first shard

    def bounds(self, examples: int, shard: int) -> tuple[int, int]:
        """[start, stop) of shard `shard` of a batch of `examples` examples."""
        base, extra = divmod(examples, self.count)
        start = shard * base + min(shard, extra)
        return start, start + base + (1 if shard < extra else 0)

    def mine(self) -> range:
        """The shards this process computes."""
        return range(self.first, self.first + self.per_process)

    def share(self, examples: int, first: int | None = None) -> tuple[int, int]:
        """[start, stop) of the examples of a process's shards (this one's, or those that
        start at shard `first`) in a batch of `examples`."""
        first = self.first if first is None else first
        return (self.bounds(examples, first)[0],
                self.bounds(examples, first + self.per_process - 1)[1])

    def largest(self, examples: int) -> int:
        """The examples of the largest shard of a batch of `examples` (the first)."""
        start, stop = self.bounds(examples, 0)
        return stop - start


def gradient_shards(config, ranks: Ranks | None) -> Shards:
    """The shards of a run's steps: the train section's `gradient_shards`, or, left at 1
    under K processes, one shard per process; refused in one line where the processes cannot
    share them along the tree."""
    size = ranks.size if ranks is not None else 1
    count = config.gradient_shards if config.gradient_shards > 1 else size
    quotient = count // size
    if count % size or (size > 1 and quotient & (quotient - 1)):
        raise RefusedOnEveryProcess(
            f"gradient_shards {count} cannot be shared among {size} MPI processes: each must "
            f"take the same power-of-two number of shards (e.g. `gradient_shards="
            f"{size * (1 << max(0, (quotient - 1).bit_length()))}`, or {size} processes of "
            f"{count} shards: one each)")
    return Shards(count, ranks)


def tree_sum(values: list) -> np.ndarray:
    """The sum of `values` (arrays of one shape, shard order) in the shards' fixed tree:
    neighbours added pairwise, (0 + 1), (2 + 3), ..., an odd last one passed up as it is,
    level after level.  In place: the total is left in values[0]."""
    values = list(values)
    while len(values) > 1:
        for i in range(0, len(values) - 1, 2):
            np.add(values[i], values[i + 1], out=values[i])
        values = values[::2]
    return values[0]


class ShardedSteps:
    """The meter of an epoch whose steps sum shards' gradients (the calls of
    netlang/train/meters.py), in one process (`ranks` None) or several.

    Each step: every shard this process computes is one call of the gradient pass on its rows
    (each product over the batch's axis then runs over the same rows whatever the number of
    processes: OpenBLAS's result for a row depends on how many rows a product has), with the
    dropout generator as it was when the step began and the shard's first example as the
    engine's `example_offset`, so that each shard draws its rows of the whole batch's masks;
    its gradient is weighted by its size over the batch's (every netlang loss is a mean over
    the batch's examples) into a buffer of its own, which also carries the shard's loss sum and
    whether this process was asked to stop.  The buffers are added in the shards' tree
    (`tree_sum`), then across the processes along the same tree (`Ranks.tree_sum`: pairs of
    processes exchanging buffers, never MPI's own reduction, whose order MPI chooses), and
    every process applies the same optimiser step to the same total (`apply_update`: the
    training step's update, compiled, for gradients passed in).  The arithmetic is the same for any number of processes
    dividing the shards: the same seed gives the same bits.  The running metrics are summed
    locally, and across the processes when read.

    With batch norm, each shard's pass normalises with the whole batch's statistics, which it
    sums along the same tree from inside the pass (`sum_statistics`).  A process with several
    shards then runs their passes at once, one thread each (the compiled passes release the
    GIL), each on an engine of its own over the same parameters (`shard_engine`): a pass waits
    there for the others' sums."""

    def __init__(self, engine, head, acc: MetricAccumulator, ranks: Ranks | None, trainer,
                 every: int, shards: Shards):
        self.engine, self.head, self.acc, self.ranks = engine, head, acc, ranks
        self.trainer, self.every, self.shards = trainer, every, shards
        self.shapes, self.spans, size = {}, {}, 0
        for name in engine.trainable:
            value = engine.params[name]
            self.shapes[name], self.spans[name] = value.shape, (size, size + value.size)
            size += value.size
        # One buffer per shard: its weighted gradients, then its loss sum and the stop flag.
        self.buffers = [np.zeros(size + 2, dtype=engine.dtype) for _ in shards.mine()]
        self.base, self.local, self.unread = None, None, 0
        # The shard whose pass runs on this thread: its index among this process's shards and
        # (its examples, the batch's), for sum_statistics.
        self.running = threading.local()
        local = shards.per_process
        self.concurrent = engine.statistics_across_processes and local > 1
        self.engines = [engine] + [shard_engine(engine) for _ in range(local - 1)] \
            if self.concurrent else [engine] * local
        if self.concurrent:
            self.pool = ThreadPoolExecutor(local - 1, thread_name_prefix="netlang-shard")
            self.meeting = threading.Barrier(local)
            self.deposits, self.total = [None] * local, None
        if engine.statistics_across_processes:
            reduce_statistics_with(self.sum_statistics)

    def sum_statistics(self, sums: np.ndarray, rows: int, with_gradients: bool) -> int:
        """A batch norm's per-channel sums over this shard's `rows` rows (Σx, Σx², and
        with_gradients Σg, Σg·x) made the whole batch's, in place, along the shards' tree;
        returns its rows.

        Each shard's g is that of its own mean loss: count/mine times the whole batch's.  Σg
        and Σg·x are scaled by mine·S/count before the sum, so that every shard's count alike
        (S times the batch's), and back after, so that each shard's input gradient stays its
        own loss's, which the step weights by mine/count as it does every gradient.  The scale
        is 1 when the batch splits evenly."""
        mine, count = self.running.share
        weight = mine * self.shards.count / count
        if with_gradients and weight != 1.0:
            sums[2:] *= weight
        if self.concurrent:
            self._meet(sums)
        else:
            self.ranks.tree_sum(sums, "summing batch-norm statistics")
        if with_gradients and weight != 1.0:
            sums[2:] /= weight
        return rows * count // mine

    def _meet(self, sums: np.ndarray) -> None:
        """`sums` of this thread's shard summed with the other threads' shards' in the tree,
        then across the processes by one of the threads, in place."""
        self.deposits[self.running.index] = sums.copy()
        if self.meeting.wait() == 0:   # one thread, whichever arrived last, adds
            total = tree_sum(self.deposits)
            if self.ranks is not None:
                self.ranks.tree_sum(total, "summing batch-norm statistics")
            self.total = total
        self.meeting.wait()
        # The next sums' deposits start only when every thread has arrived again: after this.
        sums[...] = self.total

    def start(self) -> None:
        """The epoch's totals so far (every process restored the same) are the base; each
        process then counts its own shards."""
        self.base = self.acc.state()
        self.local = MetricAccumulator(self.head, top_k=self.acc.top_k)

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        """One step: `feeds`, this process's shards of a batch of `count` examples."""
        engine, shards, ranks = self.engine, self.shards, self.ranks
        if engine.statistics_across_processes and count < shards.count:
            raise RefusedOnEveryProcess(
                f"the last batch of epoch {epoch + 1} has {count} example"
                f"{'s' if count != 1 else ''}, fewer than the {shards.count} gradient shards, "
                f"and batch norm needs statistics from every shard: choose a batch size "
                f"that leaves at least {shards.count} examples in the last batch, or fewer "
                f"shards")
        offset = shards.share(count)[0]
        began = engine.rng.bit_generator.state
        work = [(index, shard, *shards.bounds(count, shard))
                for index, shard in enumerate(shards.mine())]
        def counted(result, start, stop):
            # The shard's outputs are its engine's buffers, which the next pass on that
            # engine overwrites: counted before it.
            if result is not None:
                self._count(*result, stop - start, feeds, start - offset, stop - offset)
        if self.concurrent:   # an engine each
            later = [self.pool.submit(self._shard, began, feeds, offset, count, *item)
                     for item in work[1:]]
            results = [self._shard(began, feeds, offset, count, *work[0])]
            results += [future.result() for future in later]
            for (_, _, start, stop), result in zip(work, results):
                counted(result, start, stop)
        else:
            for item in work:
                counted(self._shard(began, feeds, offset, count, *item), *item[2:])
        total = tree_sum(self.buffers)
        total[STOP] = 1.0 if self.trainer.stop_requested else 0.0
        if ranks is not None:
            ranks.tree_sum(total, f"summing the gradients of step {number} of epoch "
                                  f"{epoch + 1}")
            last_start, last_stop = shards.share(count, shards.count - shards.per_process)
            if last_start == last_stop:
                # the last process had no example, and so drew no dropout key: all take rank 0's
                ranks.broadcast_rng(engine.rng)
        loss = float(total[LOSS_SUM]) / count
        if not np.isfinite(loss):
            raise divergence_error(loss, epoch, number)
        self.trainer.agree_to_stop(bool(total[STOP] > 0))
        engine.apply_update({name: total[a:b].reshape(self.shapes[name])
                             for name, (a, b) in self.spans.items()}, lr)
        self.unread += 1

    def _shard(self, began: dict, feeds: dict, offset: int, count: int, index: int,
               shard: int, start: int, stop: int):
        """The gradients of one shard, weighted, into its buffer: (loss, outputs), or None
        for an empty shard.  Its engine's generator starts where the step's began and ends
        where every shard's ends."""
        buffer, engine = self.buffers[index], self.engines[index]
        if stop == start:
            buffer[:] = 0.0
            return None
        engine.rng.bit_generator.state = began
        engine.example_offset = start
        self.running.index, self.running.share = index, (stop - start, count)
        try:
            loss, grads, outputs = engine.gradients(
                {name: value[start - offset:stop - offset] for name, value in feeds.items()},
                "train", copy=False)
        except BaseException:
            if self.concurrent:   # the other threads would wait for this one's statistics
                self.meeting.abort()
            raise
        finally:
            engine.example_offset = 0
        weight = (stop - start) / count
        for name, (a, b) in self.spans.items():
            np.multiply(grads[name].reshape(-1), weight, out=buffer[a:b])
        buffer[LOSS_SUM] = loss * (stop - start)
        return loss, outputs

    def _count(self, loss: float, outputs: dict, examples: int, feeds: dict, start: int,
               stop: int) -> None:
        """One shard's loss and predictions added to this process's running metrics."""
        head = self.head
        prediction = output_value(self.engine.graph, outputs, head.prediction) \
            if head is not None else None
        target = feeds[head.target][start:stop] if head is not None and head.target else None
        self.local.add(loss, examples, prediction, target)

    def due(self) -> bool:
        """Whether `every` steps have passed since the totals were last summed."""
        return self.unread >= self.every

    def read(self, epoch: int) -> None:
        """The epoch's totals: the base plus every process's own, summed across them."""
        local = self.local
        ks = list(local.top_k)
        counts = np.array([local.loss_sum, local.examples, local.correct, local.positions]
                          + [local.top_correct[k] for k in ks], dtype=np.float64)
        if self.ranks is not None:
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
