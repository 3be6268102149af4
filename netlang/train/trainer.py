"""The trainer: epochs of an engine over bound arrays.

`Trainer` runs epochs: seeded shuffling, the learning-rate schedule, validation after each
epoch, early stopping, a JSON-lines metrics log, checkpoints that resume exactly (weights,
optimiser moments, step, epoch, position inside the epoch, data order and dropout RNG), and
a deferred Ctrl-C (or SIGTERM) that stops at a step boundary and saves first.  Where each step's batch
comes from and where its metrics are summed is `netlang.train.meters`; the run directory's
files are `netlang.train.run_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from netlang.config import debug
from netlang.data import batches
from netlang.data.text import with_bits_per_character
from netlang.errors import WeightsError
from netlang.ir.train_config import TrainConfig
from netlang.runtime.compilation import together
from netlang.train.adversarial import adversarial_steps
from netlang.train.augment import AugmentedBatches, augmenter_for
from netlang.train.binding import Binding, check_complete, count_examples
from netlang.train.distributed import evaluate_across
from netlang.train.divergence import check_not_stuck
from netlang.train.evaluation import evaluate, evaluated_nodes
from netlang.train.meters import HostBatches, MetricsOnDevice, MetricsOnHost, prediction_output
from netlang.train.metrics import MetricAccumulator, class_rule, top_k_values
from netlang.train.progress import Progress
from netlang.train.run_dir import FINAL_WEIGHTS, append_metrics, read_run, trim_metrics, write_run
from netlang.train.schedules import step_rate
from netlang.train.shards import ShardedSteps, ShareOfBatches, gradient_shards
from netlang.weights import rng_from_json, rng_state_to_json, save_checkpoint, save_weights

STATE_VERSION = 1

# Steps between read-backs of the running loss and accuracy when the engine sums them on the
# device (the CUDA engine): each read-back waits for the device, so the progress bar's figures
# are brought up to date this often, and at the end of each epoch, instead of after each step.
METRICS_EVERY = 50
# The signals that stop a run at the next step boundary, after a checkpoint: Ctrl-C, and the
# SIGTERM a cluster's scheduler sends before it kills a job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def evaluation_batch(config: TrainConfig) -> int:
    """The batch a run evaluates in when none is given: at least 256 examples, else the
    training batch (the evaluation compiled ahead of a run is compiled for it too)."""
    return max(256, config.batch_size)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training, raised at a step boundary after the checkpoint
    was saved; `signal` is the signal's number (SIGINT for `request_stop`)."""

    def __init__(self, checkpoint: Path | None = None, epoch: int = 0, step: int = 0,
                 signal_number: int = signal.SIGINT):
        super().__init__("training interrupted")
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        self.signal = signal_number


@dataclasses.dataclass
class History:
    """What `fit` returns: one record per epoch, plus how the run ended."""

    records: list = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    # The signal (SIGINT, SIGTERM) that asked for a stop too late to cut the run short: in
    # its last epoch, or after; the run completed.  None when none came.
    late_signal: int | None = None
    best_epoch: int | None = None
    test: dict | None = None
    out: Path | None = None
    # The labels' names, when the data has them (an image folder's classes).
    class_names: tuple | None = None

    def __getitem__(self, key):
        """history["val_loss"] → that metric per epoch."""
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        """The last epoch's record ({} before the first)."""
        return self.records[-1] if self.records else {}


class Trainer:
    """Runs epochs of an engine over bound arrays; see the module docstring."""

    def __init__(self, engine, binding: Binding, config: TrainConfig, *, source_hash: str,
                 out: str | os.PathLike | None = None, progress: Progress | None = None,
                 run_info: dict | None = None, checkpoint_every: float = 30.0,
                 shuffle: bool = True, weights_metadata: dict | None = None,
                 eval_batch_size: int | None = None, on_step=None,
                 metrics_every: int = METRICS_EVERY, per_character: bool = False,
                 input_range: tuple | None = None, ranks=None):
        self.engine = engine
        self.binding = binding
        self.config = config
        self.source_hash = source_hash
        self.out = Path(out) if out is not None else None
        self.progress = progress or Progress(enabled=False)
        self.run_info = dict(run_info or {})
        self.checkpoint_every = checkpoint_every
        self.shuffle = shuffle
        self.weights_metadata = dict(weights_metadata or {})
        self.eval_batch_size = eval_batch_size or evaluation_batch(config)
        self.on_step = on_step
        self.metrics_every = max(1, int(metrics_every))
        self.per_character = per_character   # a text set's loss: each record adds its bits
        self.input_range = input_range   # the data's valid range: adversarial inputs stay in it
        # The MPI processes this one trains with (netlang.train.distributed.Ranks), or None.
        self.ranks = ranks
        # How each step's batch is cut into gradient shards (one: the fused step).
        self.shards = gradient_shards(config, ranks)
        self._sharded = None   # the ShardedSteps of the run's epochs, made at the first
        self.top_k = top_k_values(config.metrics)
        self.confusion = "confusion" in config.metrics
        self._stop_requested = False
        self.stop_signal = signal.SIGINT   # what asked for the stop (see `deferred_signals`)
        # With other processes, the stop they all agreed to at the last step (see `stopping`).
        self._stop_agreed = False
        self._evaluation_copy = None   # (arrays, the engine's copy of them): see `held`
        self.compiled = None   # {"seconds", "programs": {title: seconds}} this process compiled
        # Position in the run; replaced by `restore`.
        self.epoch = 0            # epochs completed
        self.batch = 0            # batches completed in the current epoch
        self.step = 0             # optimiser steps in total
        self.shuffle_rng = np.random.default_rng([config.seed, 2])
        self.epoch_rng_state = None  # the shuffle RNG as it was when the current epoch began
        self.accumulator_state = None
        self.epoch_elapsed = 0.0
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0
        self.finished = False
        self.stopped_early = False
        self.restored_from = None   # the state.json `restore` read, named if its position is wrong
        self.last_lr = float(config.optimizer.args["lr"])
        # What takes each step: the engine, or its adversarial steps (train/adversarial.py).
        self.stepper = self._stepper()
        # The train section's `augment` of the training images (train/augment.py), or None.
        self.augmenter = augmenter_for(config, binding, ranks)

    # -- state ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next step boundary, save a checkpoint and raise TrainingInterrupted."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        """Whether a stop was asked for (Ctrl-C, `request_stop`) and not yet carried out."""
        return self._stop_requested

    def agree_to_stop(self, agreed: bool) -> None:
        """What the processes training together agreed at this step: whether any of them was
        asked to stop (netlang/train/distributed.py sums the requests with the gradients)."""
        self._stop_agreed = agreed

    def stopping(self) -> bool:
        """Whether to stop at this step boundary: when asked to, or, with other processes,
        when they all agreed to at the last step, since each sees its Ctrl-C at its own moment
        and all must stop at the same step."""
        return self._stop_requested if self.ranks is None else self._stop_agreed

    def state(self) -> dict:
        """Everything a checkpoint needs to continue exactly, as JSON-able values."""
        return {
            "version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "epochs": self.config.epochs,
            "optimizer_steps": int(self.engine.optimizer.steps),
            "shuffle_rng": rng_state_to_json(self.shuffle_rng),
            "epoch_rng": self.epoch_rng_state,
            "engine_rng": rng_state_to_json(self.engine.rng),
            "accumulator": self.accumulator_state, "epoch_elapsed": self.epoch_elapsed,
            "lr": self.last_lr,
            "early_stopping": {"best": self.best, "best_epoch": self.best_epoch,
                               "bad_epochs": self.bad_epochs},
            "finished": self.finished, "stopped_early": self.stopped_early,
            "run": self.run_info,
        }

    def restore(self, checkpoint) -> None:
        """Continue from a `netlang.weights.Checkpoint` (its params are already in the engine)."""
        state = checkpoint.state
        if state.get("version") != STATE_VERSION:
            raise WeightsError(f"{checkpoint.path}: training state version "
                               f"{state.get('version')!r} is not supported")
        self._restore_optimizers(checkpoint)
        self.restored_from = Path(checkpoint.path) / "state.json"
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), \
            int(state["step"])
        self.shuffle_rng = rng_from_json(state["shuffle_rng"])
        self.epoch_rng_state = state.get("epoch_rng")
        self.engine.rng.bit_generator.state = rng_from_json(state["engine_rng"]).bit_generator.state
        self.accumulator_state = state.get("accumulator")
        self.epoch_elapsed = float(state.get("epoch_elapsed") or 0.0)
        early = state.get("early_stopping") or {}
        self.best, self.best_epoch = early.get("best"), early.get("best_epoch")
        self.bad_epochs = int(early.get("bad_epochs") or 0)
        self.last_lr = float(state.get("lr") or self.last_lr)
        self.finished = bool(state.get("finished"))
        self.stopped_early = bool(state.get("stopped_early"))
        if self.stopped_early:
            self.finished = True

    @staticmethod
    def _restore_optimizer(opt, checkpoint, saved: dict) -> None:
        """Put the saved moments `saved` ({state name: array}) into the optimiser `opt`."""
        if set(saved) != set(opt.state):
            raise WeightsError(f"{checkpoint.path}: the saved optimiser state does not fit the "
                               f"`{opt.name}` optimiser (was the optimiser changed?)")
        for name, value in saved.items():
            if opt.state[name].shape != value.shape:
                raise WeightsError(f"{checkpoint.path}: optimiser state `{name}` has shape "
                                   f"{value.shape}, expected {opt.state[name].shape}")
            opt.state[name][...] = value

    def _restore_optimizers(self, checkpoint) -> None:
        """The optimiser's moments and step count, from `checkpoint`."""
        self._restore_optimizer(self.engine.optimizer, checkpoint, checkpoint.optimizer_state)
        self.engine.optimizer.steps = int(checkpoint.state["optimizer_steps"])

    def _optimizer_state(self) -> dict:
        """The optimiser moments a checkpoint saves: {state name: array}."""
        return self.engine.optimizer.state

    def _compilations(self, batch: int, evaluated: tuple, eval_batch: int) -> list:
        """The programs the epochs call (see `EngineBase.compilations`): with gradient shards
        (other processes, or `gradient_shards`), the gradient pass of a shard instead of the
        training step."""
        if self.shards.count == 1:
            return self.stepper.compilations(batch, evaluated, eval_batch)
        shards = [self.engine.gradient_compilation(self.shards.largest(batch)),
                  self.engine.update_compilation()]
        # None: a program made ready at its first call (the CUDA engine's kernels).
        return [compilation for compilation in shards if compilation is not None] + \
            self.engine.compilations(None, evaluated, eval_batch)

    def _stepper(self):
        """What `train_step` is called on: the engine, or under an `adversarial` setting its
        AdversarialSteps (netlang/train/adversarial.py)."""
        return adversarial_steps(self.engine, self.binding, self.config, self.input_range)

    # -- files ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of the whole training state in the run directory (None without one)."""
        if self.out is None:
            return None
        return save_checkpoint(self.out, params=self.engine.params,
                               optimizer_state=self._optimizer_state(), state=self.state(),
                               source_hash=self.source_hash)

    def save_weights(self) -> Path | None:
        """The current weights as the run's weights.safetensors (None without a directory)."""
        if self.out is None:
            return None
        meta = {**self.weights_metadata, "epoch": str(self.epoch), "step": str(self.step)}
        return save_weights(self.out / FINAL_WEIGHTS, self.engine.params, meta,
                            source_hash=self.source_hash)

    def _log(self, record: dict) -> None:
        if self.out is not None:
            append_metrics(self.out, record)

    def trim_log(self) -> None:
        """Drop log records past the checkpoint (written after it, before an interruption)."""
        if self.out is not None:
            trim_metrics(self.out, self.epoch)

    # -- the loop ---------------------------------------------------------------------------

    def _lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        return step_rate(self.config, epoch * steps_per_epoch + step, steps_per_epoch)

    def fit(self, train: dict, val: dict | None = None, *, val_name: str = "val") -> History:
        """Train on `train` ({input: array}) for the configured epochs; validate on `val`."""
        check_complete(self.binding, train, "training data")
        if val is not None:
            check_complete(self.binding, val, f"{val_name} data")
        n = count_examples(train)
        bs = self.config.batch_size
        steps_per_epoch = max(1, math.ceil(n / bs))
        self._check_position(steps_per_epoch, n, bs)
        history = History(out=self.out)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        last_save = time.monotonic()
        with self.deferred_signals(), contextlib.closing(self.progress), self._closing_shards():
            meter = source = None
            compile_logged = False
            while self.epoch < self.config.epochs and not self.finished:
                if source is None:   # once there is an epoch to run (a finished run has none)
                    meter = self._device_meter()
                    source = self._batch_source(train, bs, meter)
                    self._hold_for_evaluation(val)
                    self._make_programs_ready(min(n, bs), val)
                record = self._epoch(source, meter, val, val_name, n, bs, steps_per_epoch)
                if self.compiled is not None and not compile_logged:
                    record["compile_s"] = self.compiled["seconds"]
                    compile_logged = True
                history.records.append(record)
                check_not_stuck(history.records)
                last = self.finished or self.epoch >= self.config.epochs
                self.finished = last
                self._log(record)
                self.progress.epoch_end(record, last=last)
                if self.out is not None and (last or time.monotonic() - last_save
                                             >= self.checkpoint_every):
                    self.save_checkpoint()
                    last_save = time.monotonic()
                if self.stopping() and not last:
                    self._interrupt()
            self.finished = True
            if self.out is not None:
                self.save_weights()
        history.stopped_early = self.stopped_early
        history.best_epoch = self.best_epoch
        return history

    def _check_position(self, steps_per_epoch: int, n: int, bs: int) -> None:
        """A restored position inside the epoch is one of its batches: the state file's check
        (train/resume_state.py) cannot know how many an epoch has, which the data sets here."""
        if self.restored_from is not None and self.batch > steps_per_epoch:
            raise WeightsError(f'{self.restored_from}: field "batch" must be at most the '
                               f"{steps_per_epoch} batches of an epoch ({n:,} examples in "
                               f"batches of {bs}), not {self.batch}")

    def _make_programs_ready(self, batch: int, val: dict | None) -> None:
        """Compile (or load from the cache) every program the epochs call, before the first
        step, so the epochs' samples/s and ETA count steps alone: first the line naming the
        programs to compile, then each one's time.  What was compiled, and for how long, is
        kept in `compiled` (None when nothing was), which the first record of the log and
        run.json get."""
        evaluated = tuple(evaluated_nodes(self.binding, val)) if val is not None else ()
        eval_batch = min(self.eval_batch_size, count_examples(val)) if val is not None else 0
        pending = [compilation for compilation in self._compilations(batch, evaluated, eval_batch)
                   if not compilation.ready]   # ready: compiled by an earlier fit of this engine
        self.compiled = None
        announced = [compilation.title for compilation in pending
                     if compilation.needs_compiling]
        if announced:
            self.progress.compiling(announced)
        programs = {}
        # One set of helper processes compiles for all of them (netlang/runtime/compilation.py).
        with together(pending):
            for compilation in pending:
                seconds, was_compiled = compilation.run()
                if compilation.title in announced:
                    self.progress.compiled(compilation.title, seconds)
                elif was_compiled:   # its cache entry failed to load
                    self.progress.message(f"compiled {compilation.title} in {seconds:.1f}s")
                else:
                    debug(1, f"{compilation.title}: loaded in {seconds * 1000:.1f} ms")
                if was_compiled:
                    programs[compilation.title] = round(seconds, 3)
        if programs:
            self.compiled = {"seconds": round(sum(programs.values()), 3), "programs": programs}
            if self.out is not None:
                write_run(self.out, {**read_run(self.out), "compile": self.compiled})

    def _batch_source(self, train: dict, batch_size: int, meter):
        """Where the epochs' batches come from: the training set uploaded once to where the
        engine computes, when it holds it there (the CUDA engine, memory allowing) and the
        metrics are summed there too (`meter`), else the host arrays (metrics summed on the
        host read the labels there).  Augmented batches are made on the host, from the host
        arrays."""
        if self.ranks is not None:
            return ShareOfBatches(train, self.shards)
        if self.augmenter is not None:
            return AugmentedBatches(train, self.augmenter, lambda: self.epoch)
        resident = self.engine.upload(train, batch_size) if meter is not None else None
        return resident if resident is not None else HostBatches(train)

    def _hold_for_evaluation(self, arrays: dict | None) -> None:
        """Upload the set validated on after each epoch to where the engine computes, when it
        holds data sets there and this one fits: after the training set, whose batches are
        read at every step and so have the first claim on the memory."""
        names = evaluated_nodes(self.binding, arrays) if arrays is not None else []
        copy = self.engine.upload(arrays, min(self.eval_batch_size, count_examples(arrays)),
                                  outputs=tuple(names)) if names else None
        self._evaluation_copy = (arrays, copy) if copy is not None else None

    def held(self, arrays: dict):
        """The engine's copy of `arrays` (for `evaluate`'s `resident`) when this run holds
        one: the set it validates on, once training has started; else None."""
        if self._evaluation_copy is not None and self._evaluation_copy[0] is arrays:
            return self._evaluation_copy[1]
        return None

    def _device_meter(self):
        """The engine's running metrics on the device (`engine.device_metrics`) for this head,
        or None: each step's loss and outputs then come back to the host.  That is so on
        engines that compute on host arrays, with top-k metrics (they need the scores), and
        for a head whose labels do not line up with its scores one for one."""
        if self.top_k or self.stepper is not self.engine or self.shards.count > 1:
            return None
        head, graph = self.binding.head, self.engine.graph
        scores = labels = rule = None
        if head is not None and head.classify and head.target is not None:
            scores = prediction_output(graph, head.prediction)
        if scores is not None:
            shape, is_float = self.binding.inputs[head.target]
            rule = class_rule(head, not is_float, shape)
            predicted = graph.type_of(graph.graph["outputs"][scores])
            labelled = math.prod(shape) // (rule.units if rule.labels == "one_hot" else 1)
            if not predicted.batched or math.prod(predicted.shape[1:]) // rule.units != labelled:
                return None
            labels = head.target
        return self.engine.device_metrics(scores, labels, rule)

    def _read_metrics(self, metrics, acc, epoch: int) -> dict:
        """The running totals brought up to date (a read-back, where the device sums them):
        the state a checkpoint saves, and the running figures."""
        metrics.read(epoch)
        self.accumulator_state = acc.state()
        return acc.result()

    def _epoch(self, source, meter, val, val_name, n, bs, steps_per_epoch) -> dict:
        epoch = self.epoch
        order = self._epoch_order(n, bs)
        acc = MetricAccumulator(self.binding.head, top_k=self.top_k)
        if self.batch and self.accumulator_state:
            acc.restore(self.accumulator_state)
        if self.shards.count > 1:
            metrics = self._sharded_steps(acc)
        elif meter is not None:
            metrics = MetricsOnDevice(meter, acc, self.metrics_every)
        else:
            metrics = MetricsOnHost(self.stepper, self.binding.head, acc)
        metrics.start()
        take = source.epoch(order)
        done = min(n, self.batch * bs)
        self.progress.epoch_start(epoch + 1, self.config.epochs, n, done)
        started = time.perf_counter() - self.epoch_elapsed
        running = acc.result()
        lr = self._lr(epoch, self.batch, steps_per_epoch)
        for i in range(self.batch, len(order)):
            count = len(order[i])
            lr = self._lr(epoch, i, steps_per_epoch)
            metrics.step(take(i), count, lr, epoch, i + 1)
            self.last_lr = lr
            self.step += 1
            self.batch = i + 1
            if metrics.due() or self.batch == len(order) or self.stopping():
                running = self._read_metrics(metrics, acc, epoch)
            self.epoch_elapsed = time.perf_counter() - started
            self.progress.step(count, running.get("loss"), running.get("accuracy"))
            if self.on_step is not None:
                self.on_step(self)
            if self.stopping() and self.batch < len(order):
                self._read_metrics(metrics, acc, epoch)   # a stop asked for since the last read
                self._interrupt()
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr}
        record.update({k: v for k, v in acc.result().items() if k != "confusion"})
        self._finish_epoch(record, val, val_name, n, elapsed)
        return record

    @contextlib.contextmanager
    def _closing_shards(self):
        """The sharded steps' threads and batch-statistics hook released when the epochs end,
        by an error too."""
        try:
            yield
        finally:
            if self._sharded is not None:
                self._sharded.close()
                self._sharded = None

    def _sharded_steps(self, acc: MetricAccumulator) -> ShardedSteps:
        """The meter of an epoch whose steps sum shards' gradients, made once for the run (its
        buffers, and with batch norm its shard engines and threads) and given `acc`."""
        if self._sharded is None:
            self._sharded = ShardedSteps(self.engine, self.binding.head, acc, self.ranks, self,
                                         self.metrics_every, self.shards)
        self._sharded.acc = acc
        return self._sharded

    def _epoch_order(self, n: int, bs: int) -> list:
        """The batches of the current epoch (index arrays), in the order its steps take them:
        the epoch's shuffle, replayed from its saved start when resuming mid-epoch."""
        if self.batch == 0 or self.epoch_rng_state is None:
            self.epoch_rng_state = rng_state_to_json(self.shuffle_rng)
            rng = self.shuffle_rng
        else:  # resuming mid-epoch: replay this epoch's shuffle, then skip what was done
            rng = rng_from_json(self.epoch_rng_state)
        order = list(batches(n, bs, rng if self.shuffle else None))
        if rng is not self.shuffle_rng:
            self.shuffle_rng = rng
        return order

    def _finish_epoch(self, record: dict, val, val_name: str, n: int, elapsed: float) -> None:
        """Complete an epoch's `record` (validation, timing, early stopping) and move the
        position to the start of the next epoch."""
        if val is not None:
            result = self.evaluate(val, confusion=self.confusion)
            for key, value in result.items():
                if key != "examples":
                    record[f"{val_name}_{key}"] = value
        if self.per_character:
            record.update(with_bits_per_character(record))
        record["time_s"] = round(elapsed, 4)
        record["samples_per_s"] = round(n / elapsed, 1) if elapsed > 0 else None
        if record["samples_per_s"] is None:
            del record["samples_per_s"]
        self.epoch += 1
        self.batch = 0
        self.accumulator_state = None
        self.epoch_elapsed = 0.0
        self._early_stopping(record, val_name if val is not None and val_name == "val" else None)

    def evaluate(self, arrays: dict, *, confusion: bool) -> dict:
        """`evaluate` over `arrays` with the current weights; split among the processes when
        there are several."""
        if self.ranks is not None:
            return evaluate_across(self.ranks, self.engine, self.binding, arrays,
                                   self.eval_batch_size, top_k=self.top_k, confusion=confusion)
        return evaluate(self.engine, self.binding, arrays, self.eval_batch_size,
                        top_k=self.top_k, confusion=confusion, resident=self.held(arrays))

    def _early_stopping(self, record: dict, val_name: str | None) -> None:
        key = f"{val_name}_loss" if val_name else "loss"
        value = record.get(key)
        if value is None:
            return
        if self.best is None or value < self.best:
            self.best, self.best_epoch, self.bad_epochs = float(value), record["epoch"], 0
            if self.config.early_stopping:
                record["best"] = True
        else:
            self.bad_epochs += 1
        patience = self.config.early_stopping
        if patience and self.bad_epochs >= patience:
            self.finished = self.stopped_early = True
            record["stopped_early"] = True
            self.progress.message(
                f"early stopping: {key} has not improved for {patience} epoch"
                f"{'s' if patience != 1 else ''} (best {self.best:.4f} at epoch "
                f"{self.best_epoch})")

    def _interrupt(self):
        path = self.save_checkpoint()
        if self.out is not None:
            self.save_weights()
        raise TrainingInterrupted(path, self.epoch, self.step, self.stop_signal)

    # Ctrl-C, and SIGTERM (what a cluster's scheduler sends), are deferred to the end of the
    # current step, so parameters and optimiser state are never saved half-updated; a second
    # signal interrupts at once.
    @contextlib.contextmanager
    def deferred_signals(self):
        """Within the block, SIGINT and SIGTERM ask for a stop (`stop_signal` records which)
        instead of interrupting; a second one raises KeyboardInterrupt at once.  Outside the
        main thread, where Python cannot handle signals, nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

        def handler(signum, frame):
            if self._stop_requested:
                for number, action in previous.items():
                    signal.signal(number, action if action is not None else signal.SIG_DFL)
                raise KeyboardInterrupt
            self._stop_requested = True
            self.stop_signal = signum

        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, action in previous.items():
                # None: a handler installed outside Python, which cannot be put back.
                signal.signal(signum, action if action is not None else signal.SIG_DFL)
