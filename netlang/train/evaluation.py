"""Evaluation and prediction: the current weights over a whole set, batch by batch.

Both run the engine in evaluation mode, in order, and read what they need by node name:
`evaluate` the metrics head's prediction and the losses (summed by `MetricAccumulator`), and
with `per_head` every head's prediction, scored on its own; `predict` the head's class
probabilities, or the raw outputs of a model without a classification loss.
"""

from __future__ import annotations

import numpy as np

from netlang.errors import DataError, UsageError
from netlang.train.binding import Binding, count_examples, take_examples
from netlang.train.metrics import MetricAccumulator, probabilities, squared_error_sum


def forward_nodes(engine, feeds: dict, names: list) -> dict:
    """Values of arbitrary graph nodes in evaluation mode (one pass when the engine can)."""
    try:
        return engine.forward(feeds, "eval", outputs=names)
    except TypeError:  # an engine whose forward only returns the declared outputs
        return engine.forward(feeds, "eval")


def check_has_loss(binding: Binding, path: str) -> None:
    """A model evaluated has a loss to score its predictions against; one without (an ONNX
    import, which holds the inference pass only) is a one-line UsageError saying what to add."""
    if not binding.losses:
        raise UsageError(f"{path}: this model has no loss to evaluate: declare its target "
                         f"(`input label: int32[]`) and a `train` section with `loss ...` "
                         f"(weights saved before then load with `force=True`)")


def evaluated_nodes(binding: Binding, arrays: dict, *, per_head: bool = False) -> list:
    """The nodes `evaluate` computes over `arrays`: the head's prediction (every head's, with
    `per_head`), and the losses when the arrays hold every input."""
    heads = binding.heads.values() if per_head else \
        ([binding.head] if binding.head is not None else [])
    names = list(dict.fromkeys(head.prediction for head in heads))
    if all(name in arrays for name in binding.inputs):
        names += [name for name, _ in binding.losses]
        names += [name for losses in binding.phases.values() for name, _ in losses
                  if name not in names]
    return names


class HeadScore:
    """One head's loss and metric summed over batches: accuracy for a head that reads classes,
    the mean squared error for one that predicts values (a regression or a reconstruction)."""

    def __init__(self, head, weight: float):
        self.head, self.weight = head, weight
        self.classes = MetricAccumulator(head)
        self.squared_error, self.values = 0.0, 0

    def add(self, loss: float | None, examples: int, prediction, target) -> None:
        """Counts one batch: the head's own (unweighted) loss, its prediction and target."""
        self.classes.add(loss, examples, prediction, target)
        if not self.head.classify and prediction is not None and target is not None:
            total, count = squared_error_sum(prediction, target)
            self.squared_error += total
            self.values += count

    def result(self) -> dict:
        """{"op", "target", "weight", "loss", and "accuracy" or "mse"} as far as counted."""
        out = {"op": self.head.kind, "target": self.head.target, "weight": self.weight}
        out.update(self.classes.result())
        if self.values:
            out["mse"] = self.squared_error / self.values
        return out


def evaluate(engine, binding: Binding, arrays: dict, batch_size: int = 256, *, top_k=(),
             confusion: bool = True, resident=None, per_head: bool = False) -> dict:
    """Loss and metrics of the current weights over `arrays` (evaluation mode, in order).

    The loss is the train section's weighted sum (with named phases, the last phase's, and
    "phases" holds each phase's: {name: loss}); accuracy, top-k and the confusion matrix are
    the metrics head's.  `per_head` adds "heads": {head name: its own loss and metric} (see
    `HeadScore`) for every loss of the model.  `resident` is the engine's own copy of `arrays`
    (`engine.upload` with the evaluated nodes as `outputs`): the engine is fed its batches
    instead of copying the host's in, and the metrics still read the targets from the host
    arrays."""
    n = count_examples(arrays)
    if not n:
        raise DataError("nothing to evaluate: no examples")
    head = binding.head
    has_targets = all(n_ in arrays for n_ in binding.inputs)
    acc = MetricAccumulator(head, top_k=top_k, confusion=confusion)
    weights = dict(binding.losses)
    scores = {name: HeadScore(h, weights[h.loss]) for name, h in binding.heads.items()} \
        if per_head else {}
    names = evaluated_nodes(binding, arrays, per_head=per_head)
    phase_totals = {name: 0.0 for name in binding.phases} if has_targets else {}
    for start in range(0, n, batch_size):
        feeds = take_examples(arrays, slice(start, start + batch_size))
        count = count_examples(feeds)
        fed = feeds if resident is None else {**feeds,
                                              **resident.examples(start, start + batch_size)}
        values = forward_nodes(engine, fed, names) if names else {}
        loss = None
        if has_targets and binding.losses:
            if all(name in values for name, _ in binding.losses):
                loss = sum(w * float(values[name]) for name, w in binding.losses)
            else:
                loss = float(engine.loss(fed))
        for phase, total in phase_totals.items():
            phase_totals[phase] = total + count * sum(w * float(values[name])
                                                      for name, w in binding.phases[phase])
        prediction = values.get(head.prediction) if head is not None else None
        target = feeds.get(head.target) if head is not None and head.target else None
        acc.add(loss, count, prediction, target)
        for score in scores.values():
            own = values.get(score.head.loss)
            score.add(None if own is None else float(own), count,
                      values.get(score.head.prediction),
                      feeds.get(score.head.target) if score.head.target else None)
    result = acc.result()
    result["examples"] = n
    if phase_totals:   # each phase's own loss (the model's `loss` is its last phase's)
        result["phases"] = {phase: total / n for phase, total in phase_totals.items()}
    if per_head:
        result["heads"] = {name: score.result() for name, score in scores.items()}
    return result


def predict(engine, binding: Binding, arrays: dict, batch_size: int = 256):
    """Class probabilities (examples, classes) when the model has a classification loss;
    otherwise {output name: array} of the raw outputs."""
    n = count_examples(arrays)
    if not n:
        raise DataError("nothing to predict: no examples")
    head = binding.head
    parts = []
    for start in range(0, n, batch_size):
        feeds = take_examples(arrays, slice(start, start + batch_size))
        if head is not None and head.classify:
            values = forward_nodes(engine, feeds, [head.prediction])[head.prediction]
            probs = probabilities(head, values)
            parts.append(probs.reshape(np.shape(values)[:-1] + (probs.shape[-1],))
                         if np.ndim(values) > 1 else probs)
        else:
            parts.append(engine.forward(feeds, "eval"))
    if head is not None and head.classify:
        return np.concatenate(parts)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
