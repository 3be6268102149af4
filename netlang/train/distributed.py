"""Data-parallel training over MPI: K processes train one model as one process would.

Under an MPI launcher (`mpiexec -n K netlang train ...`, or a script calling `model.fit`),
`world()` gives the processes (`Ranks`); anywhere else it gives None and mpi4py is never
imported.  Every process holds the whole model and the whole data set, computes its gradient
shards of each batch, and the shards' sums are added across the processes along the shards'
fixed tree (`Ranks.tree_sum`), so that K processes compute one process's bits when they share
its shards (netlang/train/shards.py, which describes the step).

The running metrics are summed across the processes when the loop reads them, and a set
evaluated after an epoch is split among them (`evaluate_across`).  Only rank 0 prints and
writes the run directory (netlang/train/loop.py).  A process that waits longer than
NETLANG_MPI_TIMEOUT seconds (default 300) for the others ends the whole job with an error
naming itself (MPI_Abort), and so does an error raised in one process (`Ranks.fail`): the
others would otherwise wait for it forever.
"""

from __future__ import annotations

import functools
import sys
import threading
import time

import numpy as np

from netlang.config import launched_by_mpi, mpi_timeout
from netlang.errors import UsageError
from netlang.train.binding import count_examples, take_examples
from netlang.train.evaluation import evaluate

# Seconds an aborting process waits after writing its error, so the launcher reads it first.
ABORT_GRACE_S = 1.0


def contiguous_part(count: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` of `count` items cut into `parts` contiguous parts in
    order, the first `count % parts` taking one more: a process's share of a set, a shard of a
    batch."""
    base, extra = divmod(count, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


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
        """[start, stop) of this process's share of `count` examples (`contiguous_part`)."""
        return contiguous_part(count, self.size, self.rank)

    def sum(self, buffer: np.ndarray, what: str) -> None:
        """`buffer` (contiguous) summed over every process, in place: MPI Allreduce on the
        buffer itself, never a pickled object."""
        with self._waiting(what):
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)

    def tree_sum(self, buffer: np.ndarray, what: str) -> None:
        """`buffer` (contiguous) summed over every process, in place, along the shards' tree
        (netlang/train/shards.py `tree_sum`) with the processes as its leaves: at each level, the sum of an aligned
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
        # The launcher forwards this process's output through a pipe; Abort tears the job
        # down at once, and on a loaded machine the message was lost before it was read.
        time.sleep(ABORT_GRACE_S)
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
