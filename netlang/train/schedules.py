"""Learning-rate schedules: the rate for one optimiser step, from `TrainConfig.schedule`.

The rate is a pure function of the position in the run (epoch and step within
the epoch), never of what happened before, so a resumed run recomputes exactly
the rates the interrupted one would have used.  The names and arguments are
those of `netlang.ops.optim.SCHEDULES`:

- `constant`: the optimiser's `lr` throughout;
- `step(every, gamma)`: multiplied by `gamma` every `every` epochs;
- `exponential(gamma)`: multiplied by `gamma` after every epoch;
- `cosine(min_lr, warmup)`: linear warm-up over `warmup` epochs, then a
  half-cosine from `lr` down to `min_lr` at the end of the run, per step;
- `warmup(epochs)`: a linear ramp from 0 to `lr` over `epochs` epochs, per step
  (the first step already uses a small positive rate), then `lr`.
"""

from __future__ import annotations

import math

from netlang.ir.train_config import Choice, TrainConfig


def learning_rate(schedule: Choice | None, base_lr: float, epoch: int, *, step: int = 0,
                  steps_per_epoch: int = 1, epochs: int | None = None) -> float:
    """The rate for step `step` (0-based) of epoch `epoch` (0-based) of an `epochs`-epoch run."""
    name = schedule.name if schedule is not None else "constant"
    args = schedule.args if schedule is not None else {}
    steps_per_epoch = max(1, int(steps_per_epoch))
    # Fractional epochs: `start` is where this step begins, `end` where it ends.
    start = epoch + step / steps_per_epoch
    end = epoch + (step + 1) / steps_per_epoch
    if name == "constant":
        return float(base_lr)
    if name == "step":
        return float(base_lr * args["gamma"] ** (epoch // args["every"]))
    if name == "exponential":
        return float(base_lr * args["gamma"] ** epoch)
    if name == "warmup":
        return float(base_lr * min(1.0, end / args["epochs"]))
    if name == "cosine":
        warmup = args.get("warmup", 0)
        min_lr = args.get("min_lr", 0.0)
        if warmup and start < warmup:
            return float(base_lr * min(1.0, end / warmup))
        total = (epochs if epochs is not None else epoch + 1) - warmup
        progress = min(1.0, max(0.0, (start - warmup) / total)) if total > 0 else 1.0
        return float(min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule `{name}`")


def step_rate(config: TrainConfig, step_number: int, steps_per_epoch: int) -> float:
    """The rate a run under `config` (its optimiser's `lr`, schedule and epochs) uses at its
    `step_number`-th step (0-based) when each epoch has `steps_per_epoch` steps."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    epoch, step = divmod(int(step_number), steps_per_epoch)
    return learning_rate(config.schedule, config.optimizer.args["lr"], epoch, step=step,
                         steps_per_epoch=steps_per_epoch, epochs=config.epochs)


def depends_on_epochs(schedule: Choice | None) -> bool:
    """Whether the schedule's rate changes over the run (every schedule but `constant`)."""
    return schedule is not None and schedule.name != "constant"


def epoch_rates(schedule: Choice | None, base_lr: float, epochs: int) -> list[float]:
    """The rate at the first step of each epoch (for summaries and plots)."""
    return [learning_rate(schedule, base_lr, e, epochs=epochs) for e in range(epochs)]


def describe(schedule: Choice | None) -> str:
    """`cosine(min_lr=0.0, warmup=2)` — the schedule as the train section would write it."""
    if schedule is None or schedule.name == "constant":
        return "constant"
    args = ", ".join(f"{k}={v}" for k, v in schedule.args.items())
    return f"{schedule.name}({args})"
