"""The training loop: fit, evaluate and predict over any engine.

An engine (`netlang.runtime.make_engine`) runs one batch at a time; this module
decides what the batches are and what happens between them:

- `Binding` maps data onto the model's inputs: a data set's `x` goes to the
  model's one data input, its `y` to the input that the model's losses compare
  against (the second operand of a loss).  Models with several data inputs take
  a dict {input name: array} from Python.
- `Trainer` runs epochs: seeded shuffling, the learning-rate schedule,
  validation after each epoch, early stopping, a JSON-lines metrics log,
  checkpoints that resume exactly (weights, optimiser moments, step, epoch,
  position inside the epoch, data order and dropout RNG), and a deferred
  Ctrl-C that stops at a step boundary and saves first.
- `train()` is the whole run as the CLI and `Model.fit` use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from netlang.errors import DataError, UsageError, WeightsError
from netlang.ir.train_config import TrainConfig
from netlang.train.metrics import (CLASS_SCORE_LOSSES, Head, MetricAccumulator, class_rule,
                                   probabilities, top_k_values)
from netlang.train.progress import Progress, auto_log_every
from netlang.train.schedules import learning_rate

METRICS_FILE = "metrics.jsonl"
FINAL_WEIGHTS = "weights.safetensors"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
NORMALIZATION_FILE = "normalization.safetensors"
PLOT_FILE = "curves.png"
STATE_VERSION = 1
# Steps between read-backs of the running loss and accuracy when the engine sums them on the
# device (the CUDA engine): each read-back waits for the device, so the progress bar's figures
# are brought up to date this often, and at the end of each epoch, instead of after each step.
METRICS_EVERY = 50


# ---------------------------------------------------------------------------------------------
# Which data goes to which input


@dataclasses.dataclass
class Binding:
    """How arrays map onto a model's inputs, and which loss the metrics read."""

    inputs: dict            # input name → (per-example shape, is_float)
    data_input: str | None  # receives `x`; None when the model has several data inputs
    label_input: str | None  # receives `y`; None when no input is only a loss target
    head: Head | None       # the loss read for accuracy and probabilities
    losses: list            # [(loss node name, weight)]
    data_inputs: tuple = ()
    label_inputs: tuple = ()

    def check_single(self, what: str = "the command line") -> None:
        """From the CLI a model must have one data input (and at most one label input)."""
        if self.data_input is None:
            names = ", ".join(f"`{n}`" for n in self.data_inputs) or "none"
            raise UsageError(f"this model has several data inputs ({names}); {what} can feed "
                             f"only one: use the Python API with a dict of arrays")
        if len(self.label_inputs) > 1:
            names = ", ".join(f"`{n}`" for n in self.label_inputs)
            raise UsageError(f"this model's losses need several target inputs ({names}); {what} "
                             f"can feed only one label array: use the Python API with a dict")

    @property
    def num_classes(self) -> int | None:
        return self.head.num_classes if self.head is not None and self.head.classify else None


def bind(graph) -> Binding:
    """Work out the data input, the label input and the metrics head of a graph."""
    inputs = {}
    for name, node in graph.graph["inputs"].items():
        t = graph.type_of(node)
        inputs[name] = (tuple(t.shape[1:]), t.is_float)
    loss_nodes = {n for n, _ in graph.graph.get("losses") or []}
    target_only = []
    for name, node in graph.graph["inputs"].items():
        users = set(graph.successors(node))
        if users and users <= loss_nodes:
            target_only.append(name)
    data_inputs = tuple(n for n in inputs if n not in target_only)
    if not data_inputs and len(inputs) == 1:
        data_inputs = tuple(inputs)
    losses, heads = [], []
    for node, weight in graph.graph.get("losses") or []:
        losses.append((graph.nodes[node]["name"], float(weight)))
        prediction, target = graph.operands(node)
        data = graph.nodes[node]
        target_name = graph.nodes[target]["name"] if graph.nodes[target]["op"] == "input" else None
        pred_type, target_type = graph.type_of(prediction), graph.type_of(target)
        units = int(pred_type.shape[-1]) if pred_type.rank >= 1 and pred_type.shape[-1] else 1
        if len(pred_type.shape) <= 1:
            units = 1
        classify = (not target_type.is_float) or (data["op"] in CLASS_SCORE_LOSSES)
        if data["op"] not in CLASS_SCORE_LOSSES and target_type.is_float:
            classify = False  # a regression or reconstruction target
        heads.append(Head(loss=data["name"], kind=data["op"],
                          prediction=graph.nodes[prediction]["name"], target=target_name,
                          units=units, logits=bool(data["attrs"].get("logits", False)),
                          classify=classify))
    head = next((h for h in heads if h.classify), heads[0] if heads else None)
    label_inputs = tuple(target_only)
    label_input = None
    if head is not None and head.target in target_only:
        label_input = head.target
    elif len(target_only) == 1:
        label_input = target_only[0]
    return Binding(inputs=inputs, data_input=data_inputs[0] if len(data_inputs) == 1 else None,
                   label_input=label_input, head=head, losses=losses,
                   data_inputs=data_inputs, label_inputs=label_inputs)


def _fit_input(binding: Binding, name: str, array, what: str) -> np.ndarray:
    from netlang.data import fit_to_shape
    if name not in binding.inputs:
        known = ", ".join(f"`{n}`" for n in binding.inputs)
        raise DataError(f"{what}: the model has no input `{name}` (its inputs: {known})")
    shape, is_float = binding.inputs[name]
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == np.bool_):
        raise DataError(f"{what}: input `{name}` needs numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise DataError(f"{what}: input `{name}` needs an array with a sample axis, got a scalar")
    if not shape:  # per-example scalars (labels): one value per sample
        if array.ndim != 1:
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            else:
                raise DataError(f"{what}: input `{name}` takes one value per example, got "
                                f"shape {array.shape}")
    else:
        if array.ndim == 1:
            array = array.reshape(len(array), 1) if shape == (1,) else array
        if array.ndim < 2:
            raise DataError(f"{what}: input `{name}` expects examples of shape {shape}, got an "
                            f"array of shape {array.shape}")
        array = fit_to_shape(array, shape)
    if is_float:
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255.0)
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise DataError(f"{what}: input `{name}` contains NaN or infinite values")
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"{what}: input `{name}` takes integer labels, got non-integer values")
    return array.astype(np.int64)


def as_arrays(binding: Binding, x, y=None, *, what: str = "data") -> dict:
    """{input name: array} from `x` (an array for the data input, or a dict) and `y`."""
    arrays = {}
    if isinstance(x, dict):
        for name, value in x.items():
            arrays[name] = _fit_input(binding, name, value, what)
    elif x is not None:
        if binding.data_input is None:
            names = ", ".join(f"`{n}`" for n in binding.data_inputs)
            raise DataError(f"{what}: the model has several data inputs ({names}); pass a dict "
                            f"{{input name: array}}")
        arrays[binding.data_input] = _fit_input(binding, binding.data_input, x, what)
    if isinstance(y, dict):
        for name, value in y.items():
            arrays[name] = _fit_input(binding, name, value, what)
    elif y is not None and binding.label_input is not None:
        arrays[binding.label_input] = _fit_input(binding, binding.label_input, y, what)
        if binding.head is not None and binding.head.target == binding.label_input \
                and binding.num_classes is not None:
            from netlang.data import check_labels
            check_labels(arrays[binding.label_input].reshape(-1), binding.num_classes,
                         what=f"{what}: labels")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"`{n}` {k}" for n, k in lengths.items())
        raise DataError(f"{what}: inputs have different numbers of examples ({detail})")
    if arrays and not next(iter(lengths.values())):
        raise DataError(f"{what}: no examples")
    return arrays


def _count(arrays: dict) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def _take(arrays: dict, index) -> dict:
    return {name: a[index] for name, a in arrays.items()}


def _check_complete(binding: Binding, arrays: dict, what: str) -> None:
    missing = [n for n in binding.inputs if n not in arrays]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        hint = " (pass the labels as y)" if binding.label_input in missing else ""
        raise DataError(f"{what}: no data for input {names}{hint}")


# ---------------------------------------------------------------------------------------------
# Running batches


def _forward_nodes(engine, feeds: dict, names: list) -> dict:
    """Values of arbitrary graph nodes in evaluation mode (one pass when the engine can)."""
    try:
        return engine.forward(feeds, "eval", outputs=names)
    except TypeError:  # an engine whose forward only returns the declared outputs
        return engine.forward(feeds, "eval")


def _evaluated_nodes(binding: Binding, arrays: dict) -> list:
    """The nodes `evaluate` computes over `arrays`: the head's prediction, and the losses when
    the arrays hold every input."""
    names = [binding.head.prediction] if binding.head is not None else []
    if all(name in arrays for name in binding.inputs):
        names += [name for name, _ in binding.losses]
    return names


def evaluate(engine, binding: Binding, arrays: dict, batch_size: int = 256, *, top_k=(),
             confusion: bool = True, resident=None) -> dict:
    """Loss and metrics of the current weights over `arrays` (evaluation mode, in order).

    `resident` is the engine's own copy of `arrays` (`engine.upload` with the evaluated nodes
    as `outputs`): the engine is fed its batches instead of copying the host's in, and the
    metrics still read the targets from the host arrays."""
    n = _count(arrays)
    if not n:
        raise DataError("nothing to evaluate: no examples")
    head = binding.head
    has_targets = all(n_ in arrays for n_ in binding.inputs)
    acc = MetricAccumulator(head, top_k=top_k, confusion=confusion)
    names = _evaluated_nodes(binding, arrays)
    for start in range(0, n, batch_size):
        feeds = _take(arrays, slice(start, start + batch_size))
        count = _count(feeds)
        fed = feeds if resident is None else {**feeds,
                                              **resident.examples(start, start + batch_size)}
        values = _forward_nodes(engine, fed, names) if names else {}
        loss = None
        if has_targets and binding.losses:
            if all(name in values for name, _ in binding.losses):
                loss = sum(w * float(values[name]) for name, w in binding.losses)
            else:
                loss = float(engine.loss(fed))
        prediction = values.get(head.prediction) if head is not None else None
        target = feeds.get(head.target) if head is not None and head.target else None
        acc.add(loss, count, prediction, target)
    result = acc.result()
    result["examples"] = n
    return result


def predict(engine, binding: Binding, arrays: dict, batch_size: int = 256):
    """Class probabilities (examples, classes) when the model has a classification loss;
    otherwise {output name: array} of the raw outputs."""
    n = _count(arrays)
    if not n:
        raise DataError("nothing to predict: no examples")
    head = binding.head
    parts = []
    for start in range(0, n, batch_size):
        feeds = _take(arrays, slice(start, start + batch_size))
        if head is not None and head.classify:
            values = _forward_nodes(engine, feeds, [head.prediction])[head.prediction]
            probs = probabilities(head, values)
            parts.append(probs.reshape(np.shape(values)[:-1] + (probs.shape[-1],))
                         if np.ndim(values) > 1 else probs)
        else:
            parts.append(engine.forward(feeds, "eval"))
    if head is not None and head.classify:
        return np.concatenate(parts)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------
# Training


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised at a step boundary after the checkpoint was saved."""

    def __init__(self, checkpoint: Path | None = None, epoch: int = 0, step: int = 0):
        super().__init__("training interrupted")
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step


@dataclasses.dataclass
class History:
    """What `fit` returns: one record per epoch, plus how the run ended."""

    records: list = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None
    test: dict | None = None
    out: Path | None = None

    def __getitem__(self, key):
        """history["val_loss"] → that metric per epoch."""
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}


class Trainer:
    """Runs epochs of an engine over bound arrays; see the module docstring."""

    def __init__(self, engine, binding: Binding, config: TrainConfig, *, source_hash: str,
                 out: str | os.PathLike | None = None, progress: Progress | None = None,
                 run_info: dict | None = None, checkpoint_every: float = 30.0,
                 shuffle: bool = True, weights_metadata: dict | None = None,
                 eval_batch_size: int | None = None, on_step=None,
                 metrics_every: int = METRICS_EVERY):
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
        self.eval_batch_size = eval_batch_size or max(256, config.batch_size)
        self.on_step = on_step
        self.metrics_every = max(1, int(metrics_every))
        self.top_k = top_k_values(config.metrics)
        self.confusion = "confusion" in config.metrics
        self._stop_requested = False
        self._evaluation_copy = None   # (arrays, the engine's copy of them): see `held`
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
        self.last_lr = float(config.optimizer.args["lr"])

    # -- state ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next step boundary, save a checkpoint and raise TrainingInterrupted."""
        self._stop_requested = True

    def state(self) -> dict:
        from netlang.weights import rng_state_to_json
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
        from netlang.weights import rng_from_json
        state = checkpoint.state
        if state.get("version") != STATE_VERSION:
            raise WeightsError(f"{checkpoint.path}: training state version "
                               f"{state.get('version')!r} is not supported")
        opt = self.engine.optimizer
        saved = checkpoint.optimizer_state
        if set(saved) != set(opt.state):
            raise WeightsError(f"{checkpoint.path}: the saved optimiser state does not fit the "
                               f"`{opt.name}` optimiser (was the optimiser changed?)")
        for name, value in saved.items():
            if opt.state[name].shape != value.shape:
                raise WeightsError(f"{checkpoint.path}: optimiser state `{name}` has shape "
                                   f"{value.shape}, expected {opt.state[name].shape}")
            opt.state[name][...] = value
        opt.steps = int(state["optimizer_steps"])
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

    # -- files ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        if self.out is None:
            return None
        from netlang.weights import save_checkpoint
        return save_checkpoint(self.out, params=self.engine.params,
                               optimizer_state=self.engine.optimizer.state, state=self.state(),
                               source_hash=self.source_hash)

    def save_weights(self) -> Path | None:
        if self.out is None:
            return None
        from netlang.weights import save_weights
        meta = {**self.weights_metadata, "epoch": str(self.epoch), "step": str(self.step)}
        return save_weights(self.out / FINAL_WEIGHTS, self.engine.params, meta,
                            source_hash=self.source_hash)

    def _log(self, record: dict) -> None:
        if self.out is None:
            return
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def trim_log(self) -> None:
        """Drop log records past the checkpoint (written after it, before an interruption)."""
        if self.out is None:
            return
        path = self.out / METRICS_FILE
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("epoch", 0)) <= self.epoch:
                    kept.append(line)
            except (ValueError, AttributeError, TypeError):
                continue
        from netlang.weights import atomic_write
        data = "".join(line + "\n" for line in kept).encode("utf-8")
        atomic_write(path, lambda f: f.write(data))

    # -- the loop ---------------------------------------------------------------------------

    def _lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        return learning_rate(self.config.schedule, self.config.optimizer.args["lr"], epoch,
                             step=step, steps_per_epoch=steps_per_epoch,
                             epochs=self.config.epochs)

    def fit(self, train: dict, val: dict | None = None, *, val_name: str = "val") -> History:
        """Train on `train` ({input: array}) for the configured epochs; validate on `val`."""
        _check_complete(self.binding, train, "training data")
        if val is not None:
            _check_complete(self.binding, val, f"{val_name} data")
        n = _count(train)
        bs = self.config.batch_size
        steps_per_epoch = max(1, math.ceil(n / bs))
        history = History(out=self.out)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        previous = self._install_sigint()
        last_save = time.monotonic()
        try:
            meter = source = None
            while self.epoch < self.config.epochs and not self.finished:
                if source is None:   # once there is an epoch to run (a finished run has none)
                    meter = self._device_meter()
                    source = self._batch_source(train, bs, meter)
                    self._hold_for_evaluation(val)
                record = self._epoch(source, meter, val, val_name, n, bs, steps_per_epoch)
                history.records.append(record)
                last = self.finished or self.epoch >= self.config.epochs
                self.finished = last
                self._log(record)
                self.progress.epoch_end(record, last=last)
                if self.out is not None and (last or time.monotonic() - last_save
                                             >= self.checkpoint_every):
                    self.save_checkpoint()
                    last_save = time.monotonic()
                if self._stop_requested and not last:
                    self._interrupt()
            self.finished = True
            if self.out is not None:
                self.save_weights()
        finally:
            self.progress.close()
            self._restore_sigint(previous)
        history.stopped_early = self.stopped_early
        history.best_epoch = self.best_epoch
        return history

    def _batch_source(self, train: dict, batch_size: int, meter):
        """Where the epochs' batches come from: the training set uploaded once to where the
        engine computes, when it holds it there (the CUDA engine, memory allowing) and the
        metrics are summed there too (`meter`), else the host arrays (metrics summed on the
        host read the labels there)."""
        resident = self.engine.upload(train, batch_size) if meter is not None else None
        return resident if resident is not None else _HostBatches(train)

    def _hold_for_evaluation(self, arrays: dict | None) -> None:
        """Upload the set validated on after each epoch to where the engine computes, when it
        holds data sets there and this one fits: after the training set, whose batches are
        read at every step and so have the first claim on the memory."""
        names = _evaluated_nodes(self.binding, arrays) if arrays is not None else []
        copy = self.engine.upload(arrays, min(self.eval_batch_size, _count(arrays)),
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
        if self.top_k:
            return None
        head, graph = self.binding.head, self.engine.graph
        scores = labels = rule = None
        if head is not None and head.classify and head.target is not None:
            scores = _prediction_output(graph, head.prediction)
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
        from netlang.data import batches
        from netlang.weights import rng_from_json, rng_state_to_json
        epoch = self.epoch
        if self.batch == 0 or self.epoch_rng_state is None:
            self.epoch_rng_state = rng_state_to_json(self.shuffle_rng)
            rng = self.shuffle_rng
        else:  # resuming mid-epoch: replay this epoch's shuffle, then skip what was done
            rng = rng_from_json(self.epoch_rng_state)
        order = list(batches(n, bs, rng if self.shuffle else None))
        if rng is not self.shuffle_rng:
            self.shuffle_rng = rng
        acc = MetricAccumulator(self.binding.head, top_k=self.top_k)
        if self.batch and self.accumulator_state:
            acc.restore(self.accumulator_state)
        metrics = _DeviceMetrics(meter, acc, self.metrics_every) if meter is not None else \
            _HostMetrics(self.engine, self.binding.head, acc)
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
            if metrics.due() or self.batch == len(order) or self._stop_requested:
                running = self._read_metrics(metrics, acc, epoch)
            self.epoch_elapsed = time.perf_counter() - started
            self.progress.step(count, running.get("loss"), running.get("accuracy"))
            if self.on_step is not None:
                self.on_step(self)
            if self._stop_requested and self.batch < len(order):
                self._read_metrics(metrics, acc, epoch)   # a stop asked for since the last read
                self._interrupt()
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr}
        record.update({k: v for k, v in acc.result().items() if k != "confusion"})
        if val is not None:
            result = evaluate(self.engine, self.binding, val, self.eval_batch_size,
                              top_k=self.top_k, confusion=self.confusion,
                              resident=self.held(val))
            for key, value in result.items():
                if key != "examples":
                    record[f"{val_name}_{key}"] = value
        record["time_s"] = round(elapsed, 4)
        record["samples_per_s"] = round(n / elapsed, 1) if elapsed > 0 else None
        if record["samples_per_s"] is None:
            del record["samples_per_s"]
        self.epoch += 1
        self.batch = 0
        self.accumulator_state = None
        self.epoch_elapsed = 0.0
        self._early_stopping(record, val_name if val is not None and val_name == "val" else None)
        return record

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
        raise TrainingInterrupted(path, self.epoch, self.step)

    # Ctrl-C is deferred to the end of the current step, so parameters and optimiser state
    # are never saved half-updated; a second Ctrl-C interrupts at once.
    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop_requested:
                signal.signal(signal.SIGINT, previous if callable(previous)
                              else signal.default_int_handler)
                raise KeyboardInterrupt
            self._stop_requested = True
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:
            return None
        return previous

    def _restore_sigint(self, previous) -> None:
        if previous is not None:
            try:
                signal.signal(signal.SIGINT, previous)
            except ValueError:
                pass


def _prediction_output(graph, node_name: str) -> str | None:
    """The output holding a node's value (an output of that name, or one that is the node)."""
    if node_name in graph.graph["outputs"]:
        return node_name
    node = graph.node_named(node_name)
    for name, out in graph.graph["outputs"].items():
        if out == node:
            return name
    return None


def _output_value(graph, outputs: dict, node_name: str):
    """The prediction's value from a train step's outputs, if it is one of them."""
    return outputs.get(_prediction_output(graph, node_name))


def _diverged(loss: float, epoch: int, step: int) -> DataError:
    return DataError(f"training diverged: the loss became {loss} at epoch {epoch + 1}, "
                     f"step {step} (try a smaller learning rate, --lr)")


class _HostBatches:
    """An epoch's batches taken from host arrays (the engine copies each in, where it must)."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    def epoch(self, order: list):
        return lambda i: _take(self.arrays, order[i])


class _HostMetrics:
    """Each step's loss and outputs come back, and are added on the host and checked at once:
    engines computing on host arrays, and any engine when metrics need the scores (top-k)."""

    def __init__(self, engine, head, acc: MetricAccumulator):
        self.engine, self.head, self.acc = engine, head, acc

    def start(self) -> None:
        pass

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        loss, outputs = self.engine.train_step(feeds, lr)
        loss = float(loss)
        if not math.isfinite(loss):
            raise _diverged(loss, epoch, number)
        head = self.head
        prediction = _output_value(self.engine.graph, outputs, head.prediction) \
            if head is not None else None
        self.acc.add(loss, count, prediction,
                     feeds.get(head.target) if head is not None and head.target else None)

    def due(self) -> bool:
        return True   # the totals are current after every step

    def read(self, epoch: int) -> None:
        pass


class _DeviceMetrics:
    """The engine sums the loss and the correct predictions on the device (`DeviceMetrics` in
    runtime/cuda.py); they are read back, and the loss checked, every `every` steps and when
    the loop asks (the epoch's end, a stop), not after each step."""

    def __init__(self, meter, acc: MetricAccumulator, every: int):
        self.meter, self.acc, self.every = meter, acc, every
        self.unread = 0   # steps since the last read-back

    def start(self) -> None:
        self.meter.start(self.acc.totals())

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        self.meter.step(feeds, lr, number)
        self.unread += 1

    def due(self) -> bool:
        return self.unread >= self.every

    def read(self, epoch: int) -> None:
        if not self.unread:
            return
        totals, diverged = self.meter.read()
        self.unread = 0
        if diverged is not None:
            step, loss = diverged
            raise _diverged(loss, epoch, step)
        self.acc.set_totals(*totals)


# ---------------------------------------------------------------------------------------------
# Data sets → arrays


@dataclasses.dataclass
class PreparedData:
    train: dict
    val: dict | None
    test: dict | None
    name: str
    num_classes: int | None
    normalization: dict | None = None  # {"mean": ..., "std": ...} when standardized


def prepare_data(spec, binding: Binding, config: TrainConfig, *, limit: int | None = None,
                 normalize: str = "auto", samples: int | None = None,
                 data_dir=None) -> PreparedData:
    """Load `spec` (a data set name or path, or a netlang.data.Dataset) for this model."""
    from netlang import data as D
    if isinstance(spec, D.Dataset):
        ds = spec
    else:
        ds = D.load_dataset(spec, seed=config.seed, samples=samples,
                            num_classes=binding.num_classes if binding.label_input else None,
                            data_dir=data_dir)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"--limit must be a positive integer, got {limit!r}")
        ds = dataclasses.replace(ds, x_train=ds.x_train[:limit], y_train=ds.y_train[:limit],
                                 x_test=ds.x_test[:limit], y_test=ds.y_test[:limit])
    normalization = None
    if normalize not in (None, "auto"):
        before = ds.x_train
        ds = D.normalize(ds, normalize)
        if normalize == "standardize":
            mean = before.mean(axis=0, dtype=np.float64)
            std = before.std(axis=0, dtype=np.float64)
            std[std == 0] = 1.0
            normalization = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    if config.val_split:
        if len(ds.x_train) < 2:
            raise DataError(f"{ds.name}: {len(ds.x_train)} training example(s) cannot be split "
                            f"for validation")
        ds = D.validation_split(ds, config.val_split, config.seed)
    what = ds.name
    train = as_arrays(binding, ds.x_train, ds.y_train, what=f"{what} (train)")
    val = as_arrays(binding, ds.x_val, ds.y_val, what=f"{what} (validation)") \
        if ds.x_val is not None else None
    test = as_arrays(binding, ds.x_test, ds.y_test, what=f"{what} (test)") \
        if ds.x_test is not None and len(ds.x_test) else None
    return PreparedData(train, val, test, ds.name, ds.num_classes, normalization)


# ---------------------------------------------------------------------------------------------
# A whole run


def read_run(out) -> dict:
    """The run.json of a run directory ({} when absent)."""
    path = Path(out) / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read run description: {exc}") from None


def write_run(out, info: dict) -> None:
    from netlang.weights import atomic_write
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write(out / RUN_FILE, lambda f: f.write(data))


def has_run(out) -> bool:
    out = Path(out)
    return (out / "latest").exists() or (out / FINAL_WEIGHTS).exists() \
        or (out / METRICS_FILE).exists()


def plot_curves(out, records=None) -> str:
    """Write out/curves.png from the metrics log; returns a one-line message."""
    out = Path(out)
    if records is None:
        path = out / METRICS_FILE
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()] if path.exists() else []
    if not records:
        return "--plot: no epochs logged yet, nothing to plot"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot needs matplotlib (pip install 'netlang[plot]'); no plot written"
    epochs = [r["epoch"] for r in records]
    metrics = [m for m in ("loss", "accuracy") if any(m in r for r in records)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for prefix, label in (("", "train"), ("val_", "validation"), ("test_", "test")):
            ys = [r.get(prefix + metric) for r in records]
            if any(y is not None for y in ys):
                ax.plot(epochs, [np.nan if y is None else y for y in ys], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    target = out / PLOT_FILE
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return f"wrote {target}"


def expected_params(graph, dtype=np.float32) -> dict:
    """{name: (shape, dtype)} of every parameter and buffer, for checking weights files."""
    out = {}
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        if data["role"] in ("param", "buffer"):
            out[data["name"]] = (tuple(data["attrs"]["shape"]), np.dtype(dtype))
    return out


def split_arrays(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, validation) exactly as `netlang.data.validation_split` splits a data set."""
    n = _count(arrays)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise UsageError(f"val_split must be a number strictly between 0 and 1, got {fraction!r}")
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        raise DataError(f"cannot hold out {fraction} of {n} examples for validation: each part "
                        f"needs at least one example")
    order = np.random.default_rng(seed).permutation(n)
    return _take(arrays, order[n_val:]), _take(arrays, order[:n_val])


def _engine_key(config: TrainConfig):
    """The settings an engine is built with; other settings can change between fits."""
    return (config.optimizer, list(config.regularizers), config.clip_norm, tuple(config.freeze))


def train(model, *, data=None, x=None, y=None, validation_data=None, overrides=(), out=None,
          resume=None, force: bool = False, device: str | None = None,
          limit: int | None = None,
          normalize: str = "auto", samples: int | None = None, data_dir=None,
          progress: Progress | None = None, engine=None, checkpoint_every: float = 30.0,
          plot: bool = False, shuffle: bool = True, on_step=None, cli: bool = False,
          evaluate_test: bool = True):
    """One training run of `model` (a netlang.api.Model); returns (history, engine, config).

    Data comes from `data` (a set name, a path or a Dataset; falls back to the train
    section's `data`) or from arrays `x`/`y`.  `out` is the run directory (weights,
    checkpoints, metrics.jsonl); `resume` a run directory to continue from.
    """
    from netlang.runtime import make_engine
    from netlang.train.overrides import apply_overrides
    from netlang.weights import load_checkpoint, save_weights

    progress = progress or Progress(enabled=False)
    binding = bind(model.graph)
    if not binding.losses:
        raise UsageError(f"{model.path}: this model has no loss to train: add a `train` section "
                         f"with `loss ...`")
    checkpoint = None
    saved = {}
    overrides = list(overrides)
    if resume is not None:
        resume = Path(resume)
        checkpoint = load_checkpoint(resume, source_hash=model.source_hash, force=force,
                                     expected=expected_params(model.graph))
        saved = dict(checkpoint.state.get("run") or {})
        overrides = list(saved.get("overrides") or []) + overrides
        data = data if data is not None or x is not None else saved.get("data")
        limit = limit if limit is not None else saved.get("limit")
        samples = samples if samples is not None else saved.get("samples")
        if normalize in (None, "auto"):
            normalize = saved.get("normalize") or "auto"
        out = Path(out) if out is not None else resume
        device = device or saved.get("device")
    device = device or "cpu"
    if device == "cuda":   # before the data is loaded: no GPU is a one-line error at once
        from netlang.runtime.cuda import cuda_module
        cuda_module()
    config = apply_overrides(model.train_config, overrides, model.graph)
    if out is not None:
        out = Path(out)
        if checkpoint is None and has_run(out):
            if not force:
                raise UsageError(f"{out} already holds a training run: continue it with "
                                 f"--resume {out}, or pass --force to start over")
            for name in (METRICS_FILE, SUMMARY_FILE):
                try:
                    (out / name).unlink()
                except FileNotFoundError:
                    pass

    # Data.
    if cli:
        binding.check_single()
    if x is not None:
        if isinstance(x, str) or hasattr(x, "x_train"):
            data, x = x, None
    if x is not None:
        train_arrays = as_arrays(binding, x, y, what="training data")
        prepared = PreparedData(train_arrays, None, None, "arrays", binding.num_classes)
        if validation_data is None and config.val_split:
            prepared.train, prepared.val = split_arrays(train_arrays, config.val_split,
                                                        config.seed)
        spec = None
    else:
        spec = data if data is not None else config.data
        if spec is None:
            raise UsageError("no training data: pass --data (mnist, xor, blobs, spirals, "
                             "FILE.npz or FILE.csv) or add `data ...` to the train section")
        prepared = prepare_data(spec, binding, config, limit=limit, normalize=normalize,
                                samples=samples, data_dir=data_dir)
    if validation_data is not None:
        if isinstance(validation_data, dict):
            prepared.val = as_arrays(binding, validation_data, what="validation data")
        else:
            vx, vy = validation_data
            prepared.val = as_arrays(binding, vx, vy, what="validation data")

    # Engine.
    if checkpoint is not None:
        engine = make_engine(model.graph, config, checkpoint.params, seed=config.seed,
                             device=device)
    elif engine is None:
        engine = make_engine(model.graph, config, seed=config.seed, device=device)
    run_info = {"model": os.path.abspath(model.path) if not model.path.startswith("<")
                else model.path, "source_hash": model.source_hash,
                "data": spec if isinstance(spec, str) else None, "limit": limit,
                "samples": samples, "normalize": normalize, "overrides": overrides,
                "device": device}
    from netlang import __version__
    trainer = Trainer(engine, binding, config, source_hash=model.source_hash, out=out,
                      progress=progress, run_info=run_info, checkpoint_every=checkpoint_every,
                      shuffle=shuffle, on_step=on_step,
                      weights_metadata={"model": str(run_info["model"]),
                                        "netlang_version": __version__})
    if checkpoint is not None:
        trainer.restore(checkpoint)
        trainer.trim_log()
        if trainer.finished and not trainer.stopped_early and config.epochs > trainer.epoch:
            trainer.finished = False  # resumed with more epochs than the run had
        if trainer.finished:
            progress.message(f"{resume}: training already finished at epoch {trainer.epoch}"
                             + (" (stopped early)" if trainer.stopped_early else
                                "; pass --epochs N to train longer"))
        else:
            progress.message(f"resuming {resume} at epoch {trainer.epoch + 1}"
                             + (f", step {trainer.batch + 1} of the epoch" if trainer.batch
                                else ""))
    if out is not None:
        write_run(out, run_info)
        if prepared.normalization is not None:
            save_weights(out / NORMALIZATION_FILE, prepared.normalization,
                         source_hash=model.source_hash)
    val, val_name = prepared.val, "val"
    if val is None and prepared.test is not None:
        val, val_name = prepared.test, "test"
    history = trainer.fit(prepared.train, val, val_name=val_name)
    if evaluate_test and prepared.test is not None:
        history.test = evaluate(engine, binding, prepared.test, trainer.eval_batch_size,
                                top_k=trainer.top_k, confusion=True,
                                resident=trainer.held(prepared.test))
    if out is not None:
        summary = {"epochs": trainer.epoch, "steps": trainer.step,
                   "stopped_early": trainer.stopped_early, "best_epoch": trainer.best_epoch,
                   "data": run_info["data"]}
        if history.test is not None:
            summary["test"] = history.test
        data_bytes = (json.dumps(summary, indent=2) + "\n").encode("utf-8")
        from netlang.weights import atomic_write
        atomic_write(out / SUMMARY_FILE, lambda f: f.write(data_bytes))
        from netlang.train.reconstructions import write_reconstructions
        pictured = write_reconstructions(out, engine, model.graph, prepared)  # autoencoders
        if pictured is not None:
            progress.message(f"wrote {pictured}")
        if plot:
            progress.message(plot_curves(out))
    return history, engine, config
