"""Metrics: loss, accuracy, top-k accuracy and the confusion matrix.

A model's losses say how to read its outputs as classes, each by its op's
`class_reading`: the prediction of a `cross_entropy` or `hinge` loss holds one
score per class ("scores"); a single unit under `binary_cross_entropy` is the
probability of class 1, or its logit ("probability"), and under `squared_error`
or `mse` the value itself ("value").  `Head` records that reading for one loss;
the functions here work on plain arrays so they are easy to test and reuse.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.ops import all_ops, get_op

# The losses whose prediction holds one score per class (their integer targets are labels).
CLASS_SCORE_LOSSES = tuple(name for name, op in all_ops().items() if op.class_reading == "scores")


def compares_prediction(graph, node) -> bool:
    """Whether the loss `node` compares a prediction with a target, as every loss that reads
    classes does (`kl_normal` and a term written as an expression compare none)."""
    return get_op(graph.op(node)).operand_names == ("prediction", "target")


@dataclasses.dataclass(frozen=True)
class Head:
    """How one loss turns its prediction into classes.

    `kind` is the loss's op (its `class_reading` says how the prediction reads
    as classes), `prediction` the node name of the loss's first operand, `target` the
    model input it is compared with (None when the target is not an input),
    `units` the size of the prediction's last axis.
    """

    loss: str
    kind: str
    prediction: str
    target: str | None
    units: int
    logits: bool = False
    classify: bool = True

    @property
    def num_classes(self) -> int:
        """How many classes the prediction tells apart (a single unit: two)."""
        return self.units if self.units > 1 else 2

    @property
    def reading(self) -> str:
        """How the loss reads its prediction: "scores", "probability" or "value"."""
        return get_op(self.kind).class_reading


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def single_unit_threshold(head: Head) -> float:
    """A single unit's class is 1 above this: 0 for logits, 0.5 for a probability or value."""
    return 0.0 if head.reading == "probability" and head.logits else 0.5


def class_scores(head: Head, values: np.ndarray) -> np.ndarray:
    """(positions, classes) scores whose argmax is the predicted class."""
    values = np.asarray(values, dtype=np.float64)
    if head.units == 1:
        v = values.reshape(-1)
        if single_unit_threshold(head) == 0.0:
            return np.stack([np.zeros_like(v), v], axis=1)       # class 1 when s > 0
        return np.stack([1.0 - v, v], axis=1)                    # class 1 when v > 0.5
    return values.reshape(-1, head.units)


def probabilities(head: Head, values: np.ndarray) -> np.ndarray:
    """Class probabilities, one row per example (and time step for sequence outputs)."""
    values = np.asarray(values, dtype=np.float64)
    if head.reading == "scores":
        return _softmax(values.reshape(-1, head.units))
    if head.reading == "probability":
        p = _sigmoid(values) if head.logits else values
        p = np.clip(p, 0.0, 1.0)
        if head.units == 1:
            p = p.reshape(-1)
            return np.stack([1.0 - p, p], axis=1)
        return p.reshape(-1, head.units)  # independent (multi-label) probabilities
    # "value": the outputs are the target values themselves.
    if head.units == 1:
        v = np.clip(values.reshape(-1), 0.0, 1.0)
        return np.stack([1.0 - v, v], axis=1)
    return values.reshape(-1, head.units)


def label_kind(head: Head, integer: bool, shape: tuple) -> str:
    """How a target of this dtype (`integer` or not) and `shape` holds its labels: "index" (the
    labels themselves), "one_hot" (one value per class: the label is the highest) or "binary"
    (class 1 above 0.5)."""
    if integer:
        return "index"
    if head.units > 1 and tuple(shape[-1:]) == (head.units,):
        return "one_hot"
    return "binary"


def labels_of(head: Head, target: np.ndarray) -> np.ndarray:
    """Integer class labels (flattened like `class_scores`) from integer or one-hot targets."""
    target = np.asarray(target)
    kind = label_kind(head, np.issubdtype(target.dtype, np.integer), target.shape)
    if kind == "index":
        return target.reshape(-1).astype(np.int64)
    if kind == "one_hot":
        return target.reshape(-1, head.units).argmax(axis=1)
    return (target.reshape(-1) > 0.5).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ClassRule:
    """`class_scores` and `labels_of` for code that reads one position at a time (the CUDA
    engine's device metrics): the predicted class is the index of the highest of `units`
    scores (the first of equal ones, as argmax takes it) or, for a single unit, 1 when it
    exceeds `threshold`; the label is read as `labels` says (see `label_kind`)."""

    units: int
    threshold: float
    labels: str


def class_rule(head: Head, integer: bool, shape: tuple) -> ClassRule:
    """The rule for `head` with a target input of this dtype and per-example `shape`."""
    return ClassRule(head.units, single_unit_threshold(head), label_kind(head, integer, shape))


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of predictions equal to their label."""
    predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
    return float((predicted == labels).mean()) if labels.size else float("nan")


def squared_error_sum(prediction: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """(sum of squared differences, how many values): a head that predicts values (a
    regression or a reconstruction) is scored by their ratio summed over batches, the mean
    squared error."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    return float(np.square(prediction - target).sum()), int(target.size)


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per example: is the label among the `k` highest scores? Ties count in the label's favour."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    own = np.take_along_axis(scores, labels[:, None], axis=1)
    return (scores > own).sum(axis=1) < k


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of examples whose label is among their `k` highest scores."""
    correct = top_k_correct(scores, labels, k)
    return float(correct.mean()) if correct.size else float("nan")


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with one row per true class and one column per predicted class."""
    predicted = np.asarray(predicted).reshape(-1).astype(np.int64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def top_k_values(metrics) -> list[int]:
    """The k of every `top_k` metric in a train section's `metrics` list (`top_5` → 5)."""
    return sorted({int(m[4:]) for m in metrics if m.startswith("top_") and m[4:].isdigit()})


class MetricAccumulator:
    """Sums a metric over batches: loss weighted by batch size, counts for the rest.

    Its `state()` is plain JSON, so an interrupted epoch resumes with its running
    totals intact.
    """

    def __init__(self, head: Head | None = None, *, top_k=(), confusion: bool = False):
        self.head = head
        self.top_k = tuple(top_k)
        self.confusion = confusion
        self.loss_sum = 0.0
        self.examples = 0
        self.positions = 0
        self.correct = 0
        self.top_correct = {k: 0 for k in self.top_k}
        self.matrix = None

    def add(self, loss: float | None, examples: int, prediction=None, target=None) -> None:
        """Counts one batch: its mean loss over `examples`, and its predictions against the
        target where the head classifies."""
        if loss is not None:
            self.loss_sum += float(loss) * examples
            self.examples += examples
        if self.head is None or not self.head.classify or prediction is None or target is None:
            return
        scores = class_scores(self.head, prediction)
        labels = labels_of(self.head, target)
        predicted = scores.argmax(axis=1)
        self.positions += labels.size
        self.correct += int((predicted == labels).sum())
        for k in self.top_k:
            self.top_correct[k] += int(top_k_correct(scores, labels, k).sum())
        if self.confusion:
            m = confusion_matrix(predicted, labels, self.head.num_classes)
            self.matrix = m if self.matrix is None else self.matrix + m

    def totals(self) -> tuple:
        """(loss sum, examples, correct, positions): what a device sums for the loop
        (runtime/cuda.py DeviceMetrics), started from these and read back into `set_totals`."""
        return self.loss_sum, self.examples, self.correct, self.positions

    def set_totals(self, loss_sum: float, examples, correct, positions) -> None:
        """Takes the totals a device summed (the inverse of `totals`)."""
        self.loss_sum = float(loss_sum)
        self.examples, self.correct, self.positions = int(examples), int(correct), int(positions)

    def result(self) -> dict:
        """The metrics so far: loss, accuracy, top-k and the confusion matrix, where counted."""
        out = {}
        if self.examples:
            out["loss"] = self.loss_sum / self.examples
        if self.positions:
            out["accuracy"] = self.correct / self.positions
            for k in self.top_k:
                out[f"top_{k}"] = self.top_correct[k] / self.positions
            if self.matrix is not None:
                out["confusion"] = self.matrix.tolist()
        return out

    def state(self) -> dict:
        """The running totals as plain JSON (for a checkpoint)."""
        return {"loss_sum": self.loss_sum, "examples": self.examples,
                "positions": self.positions, "correct": self.correct,
                "top_correct": {str(k): v for k, v in self.top_correct.items()},
                "matrix": None if self.matrix is None else self.matrix.tolist()}

    def restore(self, state: dict) -> None:
        """Takes back the totals `state` returned."""
        self.loss_sum = float(state["loss_sum"])
        self.examples = int(state["examples"])
        self.positions = int(state["positions"])
        self.correct = int(state["correct"])
        self.top_correct = {k: int(state["top_correct"].get(str(k), 0)) for k in self.top_k}
        matrix = state.get("matrix")
        self.matrix = None if matrix is None else np.asarray(matrix, dtype=np.int64)


def format_confusion(matrix, labels=None) -> str:
    """The confusion matrix as an aligned text table (rows: true class, columns: predicted)."""
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    labels = [str(i) for i in range(n)] if labels is None else [str(x) for x in labels]
    width = max(max(len(x) for x in labels), len(str(int(matrix.max()) if matrix.size else 0)))
    head = " " * (width + 3) + " ".join(f"{x:>{width}}" for x in labels)
    lines = ["true \\ predicted", head]
    for label, row in zip(labels, matrix):
        lines.append(f"{label:>{width}} | " + " ".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)
