"""The schema of the training state a checkpoint saves, checked field by field on resume.

`Trainer.state()` (and `PhasedTrainer.state()`, which adds the phases) writes the state that
netlang/weights/checkpoints.py stores in each checkpoint's state.json.  A resumed run reads
every field back; a file edited by hand or damaged could otherwise hand the trainer an epoch
of "abc" (a ValueError), a missing optimizer step count (a KeyError), an epoch of -5 (the run
trains epochs -4 to 4) or a generator state of 2**300 (an OverflowError inside NumPy).  Here
each field is checked once, in one place, and a failure names the file and the field:

    runs/mlp/ckpt-00000003/state.json: field "epoch" must be an integer >= 0, not "abc"

`load_checkpoint(check_state=check_training_state)` runs the check while it decides whether
the committed checkpoint is intact, so a state that fails counts as damage: the previous
checkpoint is used when it passes.
"""

from __future__ import annotations

from pathlib import Path

from netlang.train.run_dir import check_run_info
from netlang.weights.json_fields import Fields
from netlang.weights.rng_state import check_rng_state

# Step counters are int64 on the devices that count them.
_MAX_STEPS = 2**63


def _check_accumulator(fields: Fields) -> None:
    """An epoch's running totals (`MetricAccumulator.state()`)."""
    fields.number("loss_sum", finite=False)   # a diverged epoch's sum is saved as it was
    for key in ("examples", "positions", "correct"):
        fields.integer(key)
    top = fields.object("top_correct")
    for k in top.doc:
        if not k.isdigit():
            raise top.error(top.name(k), "a field named by a whole number (the k of top-k)", k)
        top.integer(k)
    matrix = fields.raw("matrix", optional=True)
    if matrix is not None and not (
            isinstance(matrix, list) and all(isinstance(row, list) and len(row) == len(matrix)
                                             for row in matrix)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for row in matrix for v in row)):
        raise fields.error(fields.name("matrix"), "a square list of lists of counts", matrix)


def _check_phases(state: Fields) -> None:
    """Each phase's position and generator, and the alternation's turn (PhasedTrainer)."""
    phases = state.objects("phases")
    for phase in phases.values():
        phase.integer("optimizer_steps", 0, _MAX_STEPS)
        check_rng_state(phase.raw("engine_rng", optional=False), state.where,
                        phase.name("engine_rng"))
        steps = phase.integer("steps", 0, _MAX_STEPS)
        phase.integer("epoch_start_steps", 0, steps + 1)
    turns = state.object("round")
    turns.integer("turn", 0, max(len(phases), 1))
    turns.integer("taken")
    accumulators = state.objects("accumulator", optional=True)
    for accumulator in (accumulators or {}).values():
        _check_accumulator(accumulator)


def check_training_state(state: dict, where: Path) -> None:
    """`state`, read from the state file `where`, is a training state the trainer can continue
    from; otherwise a one-line WeightsError naming the field."""
    fields = Fields(state, where)
    fields.integer("version", low=1)
    epochs = fields.integer("epochs")
    epoch = fields.integer("epoch")
    if epoch > epochs:
        raise fields.error("epoch", f"at most the run's {epochs} epochs", epoch)
    step = fields.integer("step", 0, _MAX_STEPS, high_text="2**63")
    # Each batch of an epoch is a step: the position in the epoch never passes the steps.
    batch = fields.integer("batch")
    if batch > step:
        raise fields.error("batch", f"at most the {step} steps taken", batch)
    fields.integer("optimizer_steps", 0, _MAX_STEPS, high_text="2**63")
    for key in ("shuffle_rng", "engine_rng"):
        check_rng_state(fields.raw(key, optional=False), where, key)
    if fields.raw("epoch_rng", optional=True) is not None:
        check_rng_state(fields.doc["epoch_rng"], where, "epoch_rng")
    fields.number("epoch_elapsed", low=0, optional=True)
    fields.number("lr", low=0, optional=True)
    early = fields.object("early_stopping", optional=True)
    if early is not None:
        early.number("best", optional=True)
        early.integer("best_epoch", optional=True)
        early.integer("bad_epochs", optional=True)
    fields.boolean("finished", optional=True)
    fields.boolean("stopped_early", optional=True)
    run = fields.object("run", optional=True)
    if run is not None:
        check_run_info(run)
    if "phases" in state:
        _check_phases(fields)
    else:
        accumulator = fields.object("accumulator", optional=True)
        if accumulator is not None:
            _check_accumulator(accumulator)
