"""Training: the run (`train()`), its epochs, batches, metrics, schedules, progress and run folder.

The optimisers' update rules are not here: they are defined once in netlang.ops.optim and
rendered into each compiled training step.
"""
