"""Adversarial training: each step's loss mixes the clean batch and a freshly attacked copy.

`adversarial fgsm(eps = 0.1, weight = 0.5)` (or `pgd(eps, steps, step_size, weight)`) in a
train section makes every step minimise, as Goodfellow, Shlens and Szegedy (2015) do,

    (1 - weight) · L(x, y) + weight · L(x_adv, y)

where x_adv is the batch attacked by netlang/attack.py's `Attacker` from the weights as they
are at that step, clipped into the data's valid range (MNIST: [0, 1]).

Choices, and why:

- **The attack runs in evaluation mode** (no dropout; batch norm would read its running
  statistics), as `netlang attack` does: the inputs are made adversarial to the function that
  is evaluated and attacked after training, each example's attack does not depend on the
  other examples of its batch, and the attack's gradient is not that of one random dropout
  sub-network.  The two loss passes then run in training mode, as any step does.
- **Two gradient passes, summed, then one optimiser step** (`engine.gradients` on the clean
  and on the attacked batch, mixed with the weights, then `engine.apply_gradients`), rather
  than one step on a batch of 2B examples: the losses average over their batch, so a 2B
  batch gives each half the weight 1/2 and no other; per-example weights would need a
  weighted form of every loss op.  Measured on LeNet-5 at weight 1/2, where both are exact
  (docs/training.md "Adversarial training"), the two cost about the same.
- **PGD's random start** is drawn from the stepping engine's generator (the one its dropout
  masks come from), which checkpoints save, so a seed gives one run and a resumed run
  continues it exactly.

The loss a step reports is the mixed loss; its outputs (so the running accuracy) are the
clean batch's.  The engines that run it hold their parameters in host memory (`cpu`,
`reference`); the CUDA engine's is pending and refused in one line.
"""

from __future__ import annotations

from netlang.attack import Attacker, check_settings
from netlang.errors import UsageError

# Engines whose optimiser can step from gradients computed apart (`apply_gradients` works on
# host arrays).
ADVERSARIAL_ENGINES = ("cpu", "reference")


class AdversarialSteps:
    """The steps of one engine under an `adversarial` setting: `train_step(feeds, lr)` as an
    engine's, with the mixed loss (see the module docstring)."""

    def __init__(self, engine, binding, setting, clip):
        """`setting`: the train section's `adversarial` Choice; `clip`: the data's valid range
        (low, high), or None where it has none."""
        if engine.name not in ADVERSARIAL_ENGINES:
            raise UsageError(f"adversarial training runs on the "
                             f"{' and '.join(ADVERSARIAL_ENGINES)} engines (the {engine.name} "
                             f"engine's is pending)")
        buffers = list(engine.graph.buffers().values())
        if buffers:   # a file's `adversarial` line says so at lowering; a `--set` one here
            raise UsageError(f"adversarial training of a model with running statistics (layer "
                             f"`{engine.graph.nodes[buffers[0]]['layer']}`) is pending")
        args = setting.args
        self.method, self.eps, self.steps, self.step_size, self.clip = check_settings(
            setting.name, args["eps"], args.get("steps"), args.get("step_size"), clip)
        self.weight = float(args["weight"])
        self.engine = engine
        self.name = binding.data_input
        self.attacker = Attacker(engine, engine.graph, binding)

    @property
    def graph(self):
        """The stepping engine's graph (what the meters read outputs by)."""
        return self.engine.graph

    def compilations(self, batch: int | None, evaluated: tuple = (),
                     eval_batch: int = 0) -> list:
        """The programs a run calls, to make ready before the first step, as the engine's
        `compilations` lists them, but with the steps' own: the attack's gradient pass
        (evaluation mode) and the loss's (training mode) in place of the training step."""
        if batch is None:
            return self.engine.compilations(None, evaluated, eval_batch)
        return (self.attacker.engine.compilations(batch, gradients_mode="eval")
                + self.engine.compilations(batch, evaluated, eval_batch,
                                           gradients_mode="train"))

    def attacked(self, feeds: dict):
        """The data input of `feeds` attacked from the current weights."""
        self.attacker.refresh_weights()
        return self.attacker.perturb(feeds, self.method, self.eps, self.steps, self.step_size,
                                     self.clip, self.engine.rng)

    def train_step(self, feeds: dict, lr: float):
        """One optimiser step on the mixed loss of one batch; returns (the mixed loss, the
        clean batch's outputs)."""
        attacked = self.attacked(feeds)
        clean_loss, clean_grads, outputs = self.engine.gradients(feeds)
        attacked_loss, attacked_grads, _ = self.engine.gradients({**feeds, self.name: attacked})
        keep = 1.0 - self.weight
        mixed = {name: keep * clean_grads[name] + self.weight * attacked_grads[name]
                 for name in self.engine.trainable}
        self.engine.apply_gradients(mixed, lr)
        return keep * clean_loss + self.weight * attacked_loss, outputs


def adversarial_steps(engine, binding, config, clip):
    """The engine itself where `config` sets no `adversarial` training, else its
    AdversarialSteps: what a training meter calls `train_step` on."""
    if config.adversarial is None:
        return engine
    return AdversarialSteps(engine, binding, config.adversarial, clip)
