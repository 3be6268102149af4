"""Training with several phases: `train NAME { ... }` sections taking turns.

A file with named train sections has one `Phase` per section (`graph.graph["phases"]`,
netlang/lower/train_section.py).  Each phase trains through its own engine: a copy of the
model's graph whose losses are the phase's, with the phase's settings, so its step program is
differentiated only to the parameters it updates, and its optimiser holds only their moments.
The engines share one `params` mapping (on the CUDA engine one DeviceMirror, the arrays on the
device), so a step of one phase is seen by the next.

The order is the unnamed section's `phases`:

- `alternate(a * k, b)`: rounds in which `a` takes k steps, then `b` one; every step takes the
  next batch, and an epoch is one pass of the data, so a round may run on into the next epoch
  (where it stands is part of the checkpoint);
- `sequence(a, b)`: `a` for its own `epochs`, then `b` for its own.

`PhasedTrainer` is the `Trainer` with these epochs; checkpoints hold every phase's optimiser
moments (saved as `PHASE/NAME`), step counts and random generator, and where the round stands,
so a resumed run continues bit for bit.  Each epoch's record holds every phase that stepped
under "phases" ({name: {"loss", "steps", ...}}); its top-level loss and metrics are those of the
last phase that stepped (in an alternation, the last of the round; in a sequence, the stage
that ran).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from netlang.errors import WeightsError
from netlang.interp import needed_nodes
from netlang.ir.train_config import Phase, TrainConfig, phases_of, reads_data
from netlang.train.adversarial import adversarial_steps
from netlang.train.binding import bind
from netlang.train.evaluation import evaluate
from netlang.train.meters import MetricsOnHost
from netlang.train.metrics import MetricAccumulator
from netlang.train.schedules import learning_rate
from netlang.train.trainer import Trainer
from netlang.weights import rng_from_json, rng_state_to_json


def has_phases(graph) -> bool:
    """Whether the model's file has named train sections (phases)."""
    return phases_of(graph)[0].name is not None


@dataclasses.dataclass
class PhaseRun:
    """One phase as a run trains it: the phase, its settings, its engine, and the metrics
    head of its losses."""

    phase: Phase
    config: TrainConfig
    engine: object
    head: object
    reads_data: bool = True   # False: a phase fed by noise inputs alone takes no batch

    @property
    def name(self) -> str:
        """The phase's name."""
        return self.phase.name


def phase_runs(graph, base: TrainConfig, make_engine, params) -> list[PhaseRun]:
    """One PhaseRun per phase of `graph`, in order, their engines sharing the `params` dict
    (the model engine's).  `base` is the unnamed section's settings with any overrides;
    `make_engine(graph, config, params)` makes an engine."""
    runs = []
    for index, phase in enumerate(phases_of(graph)):
        config = phase.settings(base)
        phase_graph = graph.copy()
        phase_graph.graph["losses"] = list(phase.losses)
        phase_graph.graph["train"] = config
        # A step computes only the outputs its losses read: a generator's step does not run
        # the discriminator on the real images.
        needed = set(needed_nodes(graph, [node for node, _ in phase.losses]))
        phase_graph.graph["outputs"] = {name: node for name, node in
                                        graph.graph["outputs"].items() if node in needed}
        engine = make_engine(phase_graph, config, params)
        # Each phase draws its dropout keys from a stream of its own.
        engine.rng = np.random.default_rng([base.seed, 1, index])
        runs.append(PhaseRun(phase, config, engine, bind(phase_graph).head,
                             reads_data(graph, phase.losses)))
    return runs


class PhasedTrainer(Trainer):
    """The Trainer over several phases (see the module docstring)."""

    def __init__(self, engine, runs: list[PhaseRun], binding, config: TrainConfig, **options):
        """`engine`: the model's engine, which evaluates; `runs` step over its parameters."""
        self.runs = runs
        self.kind = config.phases.kind
        if self.kind == "sequence":
            total = sum(run.config.epochs for run in runs)
        else:
            total = config.epochs
        super().__init__(engine, binding, dataclasses.replace(config, epochs=total), **options)
        self.turn = 0     # alternation: the phase whose turn it is in the round
        self.taken = 0    # ... and the steps it has taken in this turn
        self.phase_steps = {run.name: 0 for run in runs}   # steps each phase has taken
        self.epoch_start_steps = dict(self.phase_steps)     # ... when the epoch began
        # The phases whose losses an epoch's validation computes: a sequence's stage alone
        # (None: every phase, as the final test does).  A deep belief net's pretraining
        # would otherwise run every RBM's Gibbs chains over the validation set each epoch.
        self.validated_phases = None

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict:
        """The Trainer's state, with every phase's position and random generator."""
        state = super().state()
        state["phases"] = {run.name: {"optimizer_steps": int(run.engine.optimizer.steps),
                                      "engine_rng": rng_state_to_json(run.engine.rng),
                                      "steps": self.phase_steps[run.name],
                                      "epoch_start_steps": self.epoch_start_steps[run.name]}
                           for run in self.runs}
        state["round"] = {"turn": self.turn, "taken": self.taken}
        return state

    def _optimizer_state(self) -> dict:
        return {f"{run.name}/{key}": value for run in self.runs
                for key, value in run.engine.optimizer.state.items()}

    def _restore_optimizers(self, checkpoint) -> None:
        """Every phase's moments (saved as `PHASE/NAME`), step count and position."""
        saved = checkpoint.state.get("phases")
        if not isinstance(saved, dict) or set(saved) != {run.name for run in self.runs}:
            raise WeightsError(f"{checkpoint.path}: the checkpoint's phases do not match the "
                               f"model's ({', '.join(run.name for run in self.runs)})")
        moments = {run.name: {} for run in self.runs}
        for key, value in checkpoint.optimizer_state.items():
            phase, _, name = key.partition("/")
            moments.setdefault(phase, {})[name] = value
        for run in self.runs:
            own = saved[run.name]
            self._restore_optimizer(run.engine.optimizer, checkpoint, moments[run.name])
            run.engine.optimizer.steps = int(own["optimizer_steps"])
            run.engine.rng.bit_generator.state = \
                rng_from_json(own["engine_rng"]).bit_generator.state
            self.phase_steps[run.name] = int(own["steps"])
            self.epoch_start_steps[run.name] = int(own["epoch_start_steps"])
        self.turn = int(checkpoint.state["round"]["turn"])
        self.taken = int(checkpoint.state["round"]["taken"])

    def _stepper(self):
        """Each phase's stepper (its engine, or its adversarial steps under its settings),
        by phase name; the model's engine never steps."""
        self.steppers = {run.name: adversarial_steps(run.engine, bind(run.engine.graph),
                                                     run.config, self.input_range)
                         for run in self.runs}
        return self.engine

    def _device_meter(self):
        """None: each phase's loss comes back after its step (MetricsOnHost), and the batches
        from the host arrays, on every engine; the model's engine, which never steps, has no
        training program to sum on the device."""
        return None

    def _compilations(self, batch: int, evaluated: tuple, eval_batch: int) -> list:
        found = []
        for run in self.runs:
            for compilation in self.steppers[run.name].compilations(batch):
                compilation.title = f"{compilation.title} ({run.name})"
                found.append(compilation)
        # The model's engine evaluates, and never steps: every phase's losses at the end,
        # a sequence stage's own after each of its epochs.
        found += self.engine.compilations(None, evaluated, eval_batch)
        if evaluated and self.kind == "sequence":
            for run in self.runs:
                for compilation in self.engine.compilations(
                        None, self._stage_nodes(evaluated, [run.name]), eval_batch):
                    compilation.title = f"{compilation.title} ({run.name})"
                    found.append(compilation)
        return found

    def _stage_binding(self, phases: list):
        """The binding with only the losses of `phases` among its phases'."""
        return dataclasses.replace(self.binding, phases={
            name: losses for name, losses in self.binding.phases.items() if name in phases})

    def _stage_nodes(self, evaluated: tuple, phases: list) -> tuple:
        """The nodes of `evaluated` that a validation of `phases` alone computes."""
        others = {name for phase, losses in self.binding.phases.items() if phase not in phases
                  for name, _ in losses} - {name for name, _ in self.binding.losses}
        return tuple(name for name in evaluated if name not in others)

    def evaluate(self, arrays: dict, *, confusion: bool) -> dict:
        """The Trainer's evaluation, of the phases in `validated_phases` alone when set
        (phased training runs in one process: `check_supported` refuses ranks)."""
        if self.validated_phases is None:
            return super().evaluate(arrays, confusion=confusion)
        return evaluate(self.engine, self._stage_binding(self.validated_phases), arrays,
                        self.eval_batch_size, top_k=self.top_k, confusion=confusion,
                        resident=self.held(arrays))

    # -- the epochs -------------------------------------------------------------------------

    def _stage(self, epoch: int) -> tuple[list, int]:
        """(the runs that step in `epoch`, the epoch counted within their stage)."""
        if self.kind == "alternate":
            return self.runs, epoch
        start = 0
        for run in self.runs:
            if epoch < start + run.config.epochs:
                return [run], epoch - start
            start += run.config.epochs
        raise AssertionError("unreachable: `fit` runs no epoch past the last stage's")

    def _next_run(self, active: list) -> PhaseRun:
        """The run whose step is next: a sequence's stage, or the alternation's turn."""
        return active[0] if self.kind == "sequence" else active[self.turn]

    def _advance(self, run: PhaseRun) -> None:
        if self.kind == "alternate":
            self.taken += 1
            if self.taken >= run.phase.steps:
                self.turn, self.taken = (self.turn + 1) % len(self.runs), 0

    def _epoch(self, source, meter, val, val_name, n, bs, steps_per_epoch) -> dict:
        """One pass of the data, each step by the phase whose turn it is."""
        epoch = self.epoch
        active, stage_epoch = self._stage(epoch)
        order = self._epoch_order(n, bs)
        accs = {run.name: MetricAccumulator(run.head, top_k=self.top_k) for run in active}
        if self.batch and self.accumulator_state:
            for name, saved in self.accumulator_state.items():
                accs[name].restore(saved)
        meters = {run.name: MetricsOnHost(self.steppers[run.name], run.head, accs[run.name])
                  for run in active}
        if self.batch == 0:
            self.epoch_start_steps = dict(self.phase_steps)
        steps_before = self.epoch_start_steps
        take = source.epoch(order)
        self.progress.epoch_start(epoch + 1, self.config.epochs, n, min(n, self.batch * bs))
        started = time.perf_counter() - self.epoch_elapsed
        lr = self.last_lr
        i = self.batch
        while True:
            run = self._next_run(active)
            if run.reads_data:
                if i >= len(order):
                    break
                feeds, count = take(i), len(order[i])
                i += 1
            elif i >= len(order) and self.turn == 0:
                break   # the data ran out at the end of a round
            else:
                # A phase fed by noise alone (a GAN's generator) takes no batch: it draws a
                # batch's worth of noise; the epoch's last round still ends with its turn.
                feeds, count = run.engine.with_noise({}, count=bs), bs
            lr = learning_rate(run.config.schedule, run.config.optimizer.args["lr"], stage_epoch,
                               step=max(i - 1, 0), steps_per_epoch=steps_per_epoch,
                               epochs=run.config.epochs)
            meters[run.name].step(feeds, count, lr, epoch, i)
            self.last_lr = lr
            self.step += 1
            self.phase_steps[run.name] += 1
            self.batch = i
            self._advance(run)
            self.accumulator_state = {name: acc.state() for name, acc in accs.items()}
            self.epoch_elapsed = time.perf_counter() - started
            self.progress.step(count if run.reads_data else 0,
                               accs[run.name].result().get("loss"),
                               phases={name: acc.result().get("loss")
                                       for name, acc in accs.items()})
            if self.on_step is not None:
                self.on_step(self)
            if self._stop_requested and (self.batch < len(order) or self.turn != 0):
                self._interrupt()
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr}
        stepped = [run for run in active if self.phase_steps[run.name] > steps_before[run.name]]
        if self.kind == "sequence":
            record["phase"] = active[0].name
        if stepped:
            record.update({k: v for k, v in accs[stepped[-1].name].result().items()
                           if k != "confusion"})
        record["phases"] = {run.name: {**{k: v for k, v in accs[run.name].result().items()
                                          if k != "confusion"},
                                       "steps": self.phase_steps[run.name]
                                       - steps_before[run.name]}
                            for run in stepped}
        if self.kind == "sequence":
            self.validated_phases = [active[0].name]
        try:
            self._finish_epoch(record, val, val_name, n, elapsed)
        finally:
            self.validated_phases = None
        return record
