"""Where each training step's batch comes from and where its loss and metrics are summed.

The trainer drives one batch source and one meter per epoch, through the same few calls:

- `HostBatches`: batches taken from host arrays (the engine copies each in).  An engine that
  holds the training set itself (`engine.upload`, the CUDA engine) hands out an object with
  the same `epoch(order)` call.
- `MetricsOnHost`: each step's loss and outputs come back and are summed and checked at once.
- `MetricsOnDevice`: the engine sums them on the device and they are read back every few
  steps (`due`/`read`), because each read-back waits for the device.
"""

from __future__ import annotations

import math

from netlang.errors import DataError
from netlang.train.binding import take_examples
from netlang.train.metrics import MetricAccumulator


def prediction_output(graph, node_name: str) -> str | None:
    """The output holding a node's value (an output of that name, or one that is the node)."""
    if node_name in graph.graph["outputs"]:
        return node_name
    node = graph.node_named(node_name)
    for name, out in graph.graph["outputs"].items():
        if out == node:
            return name
    return None


def output_value(graph, outputs: dict, node_name: str):
    """The prediction's value from a train step's outputs, if it is one of them."""
    return outputs.get(prediction_output(graph, node_name))


def divergence_error(loss: float, epoch: int, step: int) -> DataError:
    """The one-line error for a loss that became NaN or infinite (`epoch` counts from 0)."""
    return DataError(f"training diverged: the loss became {loss} at epoch {epoch + 1}, "
                     f"step {step} (try a smaller learning rate, `lr=`)")


class HostBatches:
    """An epoch's batches taken from host arrays (the engine copies each in, where it must)."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    def epoch(self, order: list):
        """A function of the step number in the epoch that returns that step's batch."""
        return lambda i: take_examples(self.arrays, order[i])


class MetricsOnHost:
    """Each step's loss and outputs come back, and are added on the host and checked at once:
    engines computing on host arrays, and any engine when metrics need the scores (top-k)."""

    def __init__(self, engine, head, acc: MetricAccumulator):
        self.engine, self.head, self.acc = engine, head, acc

    def start(self) -> None:
        """Nothing to set up: the totals live in the accumulator."""

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        """One training step on `feeds`; its loss and prediction are added at once."""
        loss, outputs = self.engine.train_step(feeds, lr)
        loss = float(loss)
        if not math.isfinite(loss):
            raise divergence_error(loss, epoch, number)
        head = self.head
        prediction = output_value(self.engine.graph, outputs, head.prediction) \
            if head is not None else None
        self.acc.add(loss, count, prediction,
                     feeds.get(head.target) if head is not None and head.target else None)

    def due(self) -> bool:
        """Always: the totals are current after every step."""
        return True

    def read(self, epoch: int) -> None:
        """Nothing to read back: the totals are on the host already."""


class MetricsOnDevice:
    """The engine sums the loss and the correct predictions on the device (`DeviceMetrics` in
    runtime/cuda.py); they are read back, and the loss checked, every `every` steps and when
    the loop asks (the epoch's end, a stop), not after each step."""

    def __init__(self, meter, acc: MetricAccumulator, every: int):
        self.meter, self.acc, self.every = meter, acc, every
        self.unread = 0   # steps since the last read-back

    def start(self) -> None:
        """Copy the accumulator's totals to the device (zero, or a resumed epoch's)."""
        self.meter.start(self.acc.totals())

    def step(self, feeds: dict, count: int, lr: float, epoch: int, number: int) -> None:
        """One training step on `feeds`; its loss and correct predictions are summed there."""
        self.meter.step(feeds, lr, number)
        self.unread += 1

    def due(self) -> bool:
        """Whether `every` steps have passed since the last read-back."""
        return self.unread >= self.every

    def read(self, epoch: int) -> None:
        """Bring the accumulator up to date from the device, and stop a diverged run."""
        if not self.unread:
            return
        totals, diverged = self.meter.read()
        self.unread = 0
        if diverged is not None:
            step, loss = diverged
            raise divergence_error(loss, epoch, step)
        self.acc.set_totals(*totals)
