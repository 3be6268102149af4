"""Adversarial examples: inputs moved a little in the direction that raises the loss fastest,
and the accuracy that is left (`Model.attack`; `netlang attack`, netlang/cli/attack.py).

Both attacks follow the gradient of the train section's objective (the weighted sum of its
losses, what training minimises) with respect to the data input, each example against its
own label, in evaluation mode (no dropout; batch norm's running statistics), the weights
fixed.  Each moves every input value by at most `eps` (the L∞ ball):

- **FGSM**, the fast gradient sign method (Goodfellow, Shlens and Szegedy, 2015): one step,
  x' = x + eps · sign(∇ₓ L(x, y)).
- **PGD**, projected gradient descent (Madry et al., 2018): from a point drawn uniformly in
  the ball (seeded), `steps` steps x ← x + step_size · sign(∇ₓ L), each followed by the
  projection back into the ball.

`clip` (low, high) is the range the inputs are valid in: every attacked input is clipped
into it after each step (and PGD's random start too), so an attacked image is still an
image.  The data loaders know it where it holds by construction ([0, 1] for images scaled
from uint8: MNIST, uint8 .npz files; `PreparedData.value_range`); elsewhere the caller says.

The gradient comes from a second engine over the same model and weights whose training
program differentiates to the data input (`input_grads`) with every layer frozen, so no
parameter gradient is computed; its weights are refreshed from the model's at each attack.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from netlang.errors import UsageError
from netlang.runtime import make_engine
from netlang.train.binding import count_examples
from netlang.train.evaluation import evaluate

METHODS = ("fgsm", "pgd")
PGD_STEPS = 10           # Madry et al. use 7 to 40 steps; 10 is the usual quick setting
PGD_STEP_FACTOR = 2.5    # step_size = 2.5 · eps / steps: the ball is crossed within the steps


@dataclasses.dataclass
class AttackResult:
    """What an attack found: the accuracy on the clean inputs and on the attacked ones, the
    settings, and the attacked inputs themselves (shaped like the data input's batch)."""

    method: str
    eps: float
    steps: int
    step_size: float
    clip: tuple | None
    examples: int
    accuracy: float
    adversarial_accuracy: float
    max_perturbation: float   # the largest |x' - x| over every value: at most eps
    adversarial: np.ndarray

    def figures(self) -> dict:
        """Everything but the attacked inputs, as `netlang attack --json` prints it."""
        figures = dataclasses.asdict(self)
        del figures["adversarial"]
        figures["clip"] = list(self.clip) if self.clip is not None else None
        return figures

    def __repr__(self) -> str:
        return (f"AttackResult({self.method}, eps={self.eps:g}, accuracy={self.accuracy:.4f}, "
                f"adversarial_accuracy={self.adversarial_accuracy:.4f}, "
                f"examples={self.examples})")


def _positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value <= 0:
        raise UsageError(f"`{what}=` must be a positive number, got {value!r}")
    return float(value)


def check_settings(method: str, eps, steps=None, step_size=None, clip=None) -> tuple:
    """(method, eps, steps, step_size, clip) checked, with PGD's defaults filled in; a
    one-line UsageError names the first bad one."""
    if method not in METHODS:
        raise UsageError(f"unknown attack `{method}`: use {' or '.join(METHODS)}")
    eps = _positive(eps, "eps")
    if method == "fgsm":
        if steps is not None or step_size is not None:
            raise UsageError("FGSM takes one step of size eps: `steps=` and `step_size=` "
                             "are PGD's (`method=\"pgd\"`)")
        steps, step_size = 1, eps
    else:
        if steps is None:
            steps = PGD_STEPS
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise UsageError(f"`steps=` must be a positive integer, got {steps!r}")
        steps = int(steps)
        step_size = PGD_STEP_FACTOR * eps / steps if step_size is None \
            else _positive(step_size, "step_size")
    if clip is not None:
        try:
            low, high = (float(bound) for bound in clip)
        except (TypeError, ValueError):
            raise UsageError(f"`clip=` must be a pair (low, high), got {clip!r}") from None
        if not low < high:
            raise UsageError(f"`clip=` must have low < high, got {clip!r}")
        clip = (low, high)
    return method, eps, steps, step_size, clip


class Attacker:
    """Attacks on one model's engine (`source_engine`), through an engine of its own that
    computes the loss gradient with respect to the data input."""

    def __init__(self, engine, graph, binding):
        if binding.data_input is None or not binding.inputs[binding.data_input][1]:
            raise UsageError("an attack moves one float data input (an image, a feature "
                             "vector); this model's data inputs are several, or integers")
        if binding.head is None or not binding.head.classify:
            raise UsageError("an attack reports the accuracy it leaves: the model needs a "
                             "loss that classifies")
        self.source_engine = engine
        self.binding = binding
        layers = {graph.nodes[node]["layer"] for node in graph.parameters().values()}
        # Every layer frozen: the gradient program differentiates to the input alone.
        config = dataclasses.replace(engine.config, freeze=tuple(sorted(layers)))
        self.engine = make_engine(graph, config, dict(engine.params), device=engine.name,
                                  dtype=engine.dtype, input_grads=(binding.data_input,))

    def gradient(self, arrays: dict) -> np.ndarray:
        """∇ of the objective with respect to the data input, for one batch."""
        _, gradients, _ = self.engine.gradients(arrays, mode="eval")
        return gradients[self.binding.data_input]

    def perturb(self, batch: dict, method: str, eps: float, steps: int, step_size: float,
                clip, rng: np.random.Generator) -> np.ndarray:
        """The data input of one `batch` ({input name: array}, labels included) attacked
        from the weights the attacker's engine holds now; the settings are `check_settings`'s
        and `rng` draws PGD's random start."""
        name = self.binding.data_input
        x = np.asarray(batch[name])
        if method == "pgd":
            moved = _within(x + rng.uniform(-eps, eps, x.shape).astype(x.dtype), x, eps, clip)
        else:
            moved = x
        for _ in range(steps):
            step = step_size * np.sign(self.gradient({**batch, name: moved}))
            moved = _within(moved + step.astype(x.dtype), x, eps, clip)
        return moved

    def refresh_weights(self) -> None:
        """Copy the source engine's current weights into the attacker's engine."""
        for name, value in self.source_engine.params.items():
            if self.engine.params[name] is not value:   # shared arrays need no copy
                self.engine.params[name][...] = value

    def run(self, arrays: dict, *, method: str = "fgsm", eps, steps=None, step_size=None,
            clip=None, batch_size: int = 256, seed: int = 0) -> AttackResult:
        """Attack every example of `arrays` ({input name: array}, labels included) and
        evaluate the model on the clean and the attacked inputs."""
        method, eps, steps, step_size, clip = check_settings(method, eps, steps, step_size,
                                                             clip)
        self.refresh_weights()
        name = self.binding.data_input
        clean = np.asarray(arrays[name])
        rng = np.random.default_rng(seed)
        attacked = np.empty_like(clean)
        for start in range(0, count_examples(arrays), batch_size):
            batch = {key: value[start:start + batch_size] for key, value in arrays.items()}
            attacked[start:start + batch_size] = self.perturb(batch, method, eps, steps,
                                                              step_size, clip, rng)
        engine = self.source_engine
        accuracy = evaluate(engine, self.binding, arrays, batch_size)["accuracy"]
        under_attack = evaluate(engine, self.binding, {**arrays, name: attacked},
                                batch_size)["accuracy"]
        return AttackResult(method, eps, steps, step_size, clip, len(clean), accuracy,
                            under_attack, float(np.abs(attacked - clean).max(initial=0.0)),
                            attacked)


def _within(moved: np.ndarray, x: np.ndarray, eps: float, clip) -> np.ndarray:
    """`moved` projected into the L∞ ball of radius eps around `x`, then into `clip`."""
    moved = np.clip(moved, x - eps, x + eps)
    return moved if clip is None else np.clip(moved, *clip)
