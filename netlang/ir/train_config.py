"""The training section of a model, as the IR carries it (`graph.graph["train"]`), and its
training phases (`graph.graph["phases"]`).

Every setting has a default, so a file without a `train` section still trains;
the CLI overrides any of them.  A file with named sections (`train generator { ... }`) has
one `Phase` per section, each with its own losses and a TrainConfig that starts from the
unnamed section's; a file without them has one implicit phase, the whole section.
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
    update: tuple | None = None  # the only layers whose parameters change (None: every layer)
    data: str | None = None
    phases: PhaseOrder | None = None  # how named phases take turns (None: no named phases)
    # Adversarial training: `fgsm` or `pgd` with eps, weight (and steps, step_size), or None.
    adversarial: Choice | None = None
    # Augmentations of the training images, applied in order to each batch
    # (netlang/train/augment.py): Choices `crop`, `flip`, `shift`.
    augment: tuple = ()
    # How images of an image folder (or given to `predict`) of another size than the model
    # input are read: "check" refuses them, "resize" resizes them (netlang/data/folders.py).
    image_size: str = "check"
    # Every step's gradient is the sum of this many shards' gradients, each over its own
    # contiguous rows of the batch, added in a fixed tree (netlang/train/shards.py), so
    # that any number of MPI processes dividing it computes the same bits; 1 takes the fused
    # step alone, and one shard per process under MPI.
    gradient_shards: int = 1

    def updates_layer(self, layer: str) -> bool:
        """Whether the parameters of `layer` change in a step under these settings."""
        if layer in self.freeze:
            return False
        return self.update is None or layer in self.update


@dataclasses.dataclass(frozen=True)
class PhaseOrder:
    """`phases alternate(d * 5, g)` or `phases sequence(pretrain, finetune)`.

    `kind` is "alternate" (per round, each phase takes its `steps`) or "sequence" (each
    phase in turn for its own epochs); `steps` holds (phase name, steps per round).
    """

    kind: str
    steps: tuple
    # Where each phase is named in `phases`, for errors found later; not part of the order.
    locations: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass
class Phase:
    """One training phase: its name (None for the implicit phase of a file without named
    sections), its losses [(loss node, weight)], its settings, and its steps per round of an
    alternation (1 otherwise)."""

    name: str | None
    losses: list
    config: TrainConfig
    steps: int = 1
    own: tuple = ()   # the settings its section sets itself (the rest come from the unnamed)

    def settings(self, base: TrainConfig) -> TrainConfig:
        """This phase's settings over `base` (the unnamed section's, `--set` overrides
        applied): what its section sets itself, the rest from `base`."""
        if self.name is None:
            return base
        config = dataclasses.replace(base, phases=None)
        for key in self.own:   # `loss` is the phase's losses, not a setting
            if key == "regularize":
                config.regularizers = list(self.config.regularizers)
            elif key in ("update", "freeze"):   # either one replaces both
                config.update, config.freeze = self.config.update, self.config.freeze
            elif key != "loss":
                setattr(config, key, getattr(self.config, key))
        return config


def phases_of(graph) -> list:
    """The training phases of a lowered graph: its named phases in the order `phases` gives,
    or one implicit phase holding the whole train section (its defaults without one)."""
    return graph.graph.get("phases") or [
        Phase(None, list(graph.graph.get("losses") or []),
              graph.graph.get("train") or TrainConfig())]


def reads_data(graph, losses) -> bool:
    """Whether computing `losses` reads an input that a data set feeds (a noise input, drawn
    afresh, does not count): a phase that does takes the next batch at each of its steps, one
    that does not (a GAN's generator) steps on noise alone."""
    seen, pending = set(), [n for n, _ in losses]
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        data = graph.nodes[node]
        if data["role"] == "input" and data["attrs"].get("noise") is None:
            return True
        pending.extend(graph.operands(node))
    return False


# Scalar settings: name → (type, minimum, maximum, what they mean).
SCALAR_SETTINGS = {
    "batch_size": (int, 1, None, "examples per step"),
    "epochs": (int, 1, None, "passes over the training set"),
    "seed": (int, 0, None, "seed for weights, shuffling and dropout"),
    "val_split": (float, 0.0, 0.99, "fraction of the training set held out for validation"),
    "clip_norm": (float, 0.0, None, "clip the global gradient norm to this value"),
    "early_stopping": (int, 1, None, "stop after this many epochs without validation improvement"),
    "gradient_shards": (int, 1, None, "shards whose gradients make each step's, summed in a "
                                      "fixed tree: the same bits on any number of MPI processes "
                                      "dividing it"),
}
# How images of another size than the model input are read (netlang/data/folders.py).
IMAGE_SIZES = ("check", "resize")
METRICS = ("accuracy", "top_k", "loss", "confusion")
SETTINGS = tuple(SCALAR_SETTINGS) + ("loss", "optimizer", "schedule", "regularize", "metrics",
                                     "freeze", "update", "data", "phases", "adversarial",
                                     "augment", "image_size")
# What a named section (a phase) may set; the rest belongs to the unnamed section alone.
PHASE_SETTINGS = ("loss", "optimizer", "schedule", "regularize", "clip_norm", "update", "freeze",
                  "epochs", "adversarial")
PHASE_ORDERS = ("alternate", "sequence")
