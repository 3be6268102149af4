"""The training section of a model, as the IR carries it (`graph.graph["train"]`).

Every setting has a default, so a file without a `train` section still trains;
the CLI overrides any of them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Choice:
    """A named optimizer, schedule or regularizer with its checked arguments."""

    name: str
    args: dict
    layers: tuple = ()  # regularizers only: the layers they apply to (empty: every weight)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a `train` section, with the default used when the file leaves it out.

    `regularizers` holds Choices; `freeze` names layers whose parameters are not updated;
    `data` names a dataset (`mnist`, `"text:input.txt"`).
    """

    optimizer: Choice = dataclasses.field(default_factory=lambda: Choice("sgd", {
        "lr": 0.01, "momentum": 0.0, "nesterov": False, "dampening": 0.0, "weight_decay": 0.0}))
    schedule: Choice = dataclasses.field(default_factory=lambda: Choice("constant", {}))
    regularizers: list = dataclasses.field(default_factory=list)
    batch_size: int = 32
    epochs: int = 10
    seed: int = 0
    val_split: float = 0.0
    clip_norm: float | None = None
    early_stopping: int | None = None  # patience in epochs
    metrics: tuple = ("accuracy",)
    freeze: tuple = ()
    data: str | None = None


# Scalar settings: name → (type, minimum, maximum, what they mean).
SCALAR_SETTINGS = {
    "batch_size": (int, 1, None, "examples per step"),
    "epochs": (int, 1, None, "passes over the training set"),
    "seed": (int, 0, None, "seed for weights, shuffling and dropout"),
    "val_split": (float, 0.0, 0.99, "fraction of the training set held out for validation"),
    "clip_norm": (float, 0.0, None, "clip the global gradient norm to this value"),
    "early_stopping": (int, 1, None, "stop after this many epochs without validation improvement"),
}
METRICS = ("accuracy", "top_k", "loss", "confusion")
SETTINGS = tuple(SCALAR_SETTINGS) + ("loss", "optimizer", "schedule", "regularize", "metrics",
                                     "freeze", "data")
