"""Gradient shards: each step's gradient summed from fixed parts of the batch in a fixed
order, so that the number of processes computing them does not change a bit.

A batch is cut into S gradient shards (`Shards`: the train section's `gradient_shards`, or,
left at 1 under K MPI processes, one per process), and each training step goes
(`ShardedSteps`):

1. every process takes the same global batch (the same seed's shuffle) and computes the
   gradients of its consecutive shards, one gradient pass per shard on its rows alone, with
   its dropout masks drawn as those rows of the whole batch's masks (`engine.example_offset`),
   so that no mask depends on K;
2. each shard's gradients, weighted by its size over the batch's (every netlang loss is a mean
   over the batch's examples), fill a buffer that also carries the shard's loss sum (a NaN
   anywhere stops every process at the same step) and whether a process was asked to stop
   (Ctrl-C, which each process sees at its own moment: all stop at the same step,
   `Trainer.stopping`); the buffers are added in a fixed tree of the shards (`tree_sum`),
   inside the process and then across the processes (`Ranks.tree_sum`,
   netlang/train/distributed.py), never in an order MPI chooses;
3. every process applies the same optimiser step to the same sum (the training step's update,
   compiled alone: `CpuEngine.apply_update`), so the parameters stay identical without ever
   being sent.

One process with S > 1 takes the same steps, and computes the bits K processes sharing the S
shards compute; with S = 1 it runs the fused training step instead (netlang/train/meters.py).

A batch norm normalises with the whole batch's statistics (synchronised batch norm): the
gradient pass sums its per-channel sums over the shards along the same tree before using them,
Σx and Σx² forward, and Σg and Σg·x too for the input's gradient (netlang/runtime/statistics.py
calls `ShardedSteps.sum_statistics`), and moves the running statistics by the whole batch's,
alike in every process.  A process with several shards runs their passes at once, one thread
each, meeting at every batch norm.

On the CUDA engine each shard's pass runs on the process's GPU (GPU rank mod the GPUs of its
machine, `use_gpu_of_process`), its gradients are copied into pinned host memory, summed on the
host along the tree, and the update runs on the host copy of the parameters (compiled for the
CPU), which the next pass copies up again.

Refused in one line each (`check_supported`), and pending: training phases, adversarial
training, batch norm on the CUDA engine, and the reference engine.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from netlang.runtime.statistics import reduce_statistics_with
from netlang.train.binding import take_examples
from netlang.train.distributed import Ranks, RefusedOnEveryProcess, contiguous_part
from netlang.train.meters import divergence_error, output_value
from netlang.train.metrics import MetricAccumulator

# The two numbers after the gradients in a shard's buffer.
LOSS_SUM, STOP = -2, -1


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
        return contiguous_part(examples, self.count, shard)

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
        fitting = size * (1 << (quotient - 1).bit_length()) if quotient else size
        raise RefusedOnEveryProcess(
            f"gradient_shards {count} cannot be shared among {size} MPI processes: each must "
            f"take the same power-of-two number of shards (`gradient_shards={fitting}`, or "
            f"{count} processes of one shard each)")
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


def check_supported(ranks: Ranks | None, shards: Shards, engine, phased: bool,
                    adversarial: bool = False) -> None:
    """Refuse, in one line, what steps summing shards' gradients do not do yet."""
    where = f"across {ranks.size} MPI processes" if ranks is not None else \
        f"with {shards.count} gradient shards"
    if engine.name not in ("cpu", "cuda"):
        raise RefusedOnEveryProcess(
            f"training {where} runs on the CPU and CUDA engines (the {engine.name} engine's "
            f"is pending): use `device=\"cpu\"`")
    if engine.name == "cuda" and engine.graph.buffers():
        raise RefusedOnEveryProcess(
            f"batch norm {where} on the CUDA engine is pending (its kernels do not sum "
            f"statistics across shards yet): use `device=\"cpu\"`")
    if phased:
        raise RefusedOnEveryProcess(f"training phases {where} are pending: train this model "
                                    f"with `gradient_shards=1` in one process")
    if adversarial:
        raise RefusedOnEveryProcess(f"adversarial training {where} is pending: train this "
                                    f"model with `gradient_shards=1` in one process")


def prepare_for_shards(ranks: Ranks | None, shards: Shards, engine, phased: bool,
                       adversarial: bool) -> None:
    """What a run whose steps sum shards' gradients does to `engine` before its programs are
    made (`train`, and `warmup` planning one): refuse what it does not do yet, in one line,
    and have the gradient pass share batch statistics."""
    if shards.count > 1:
        check_supported(ranks, shards, engine, phased, adversarial)
        share_batch_statistics(engine)


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

    def close(self) -> None:
        """Stop the shards' threads and uninstall the batch-statistics hook: a gradient pass
        called after training is one process's again."""
        if self.concurrent:
            self.pool.shutdown()
        if self.engine.statistics_across_processes:
            reduce_statistics_with(None)

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
