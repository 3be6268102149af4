"""Divergence that never shows as NaN: a loss stuck at a clamp.

A loss that clamps its logarithms (binary cross-entropy's `max(log p, -100)`) stays finite
when training blows up: the outputs saturate at 0 or 1, the gradients vanish, and the loss
sits at the clamp for good (XOR at `lr 1e9` reports 50.0000 every epoch and used to exit 0).
The sign, read from the epoch losses alone so it holds for every loss: the loss stopped
changing, bit for bit, for STUCK_EPOCHS epochs, at a value well above the first epoch's (by
more than half its size: CLIMB).  A plateau a model settles on (XOR's two points stuck at 0.5)
lies below where it started, and a run that learns nothing yet (learning rate 0, or XOR's
saddle at ln 2, whose float32 epoch loss can repeat to the bit for epochs before it escapes)
stays where it started; neither is refused.
"""

from __future__ import annotations

from netlang.errors import DataError

STUCK_EPOCHS = 3
CLIMB = 0.5   # how far above the first epoch's loss a stuck loss must be, relative to its size


def check_not_stuck(records: list[dict]) -> None:
    """Raise a one-line DataError when the last STUCK_EPOCHS epoch records (of this run's
    `History`) hold one and the same training loss, well above the first record's."""
    losses = [record.get("loss") for record in records]
    if len(losses) <= STUCK_EPOCHS or any(loss is None for loss in losses):
        return
    last = losses[-STUCK_EPOCHS:]
    if len(set(last)) == 1 and last[0] - losses[0] > CLIMB * abs(losses[0]):
        raise DataError(f"training diverged: the loss has stayed at {last[0]:.4f} for "
                        f"{STUCK_EPOCHS} epochs, up from {losses[0]:.4f} at the start (the "
                        f"outputs saturated at the loss's clamp; try a smaller learning rate, "
                        f"`lr=`)")
