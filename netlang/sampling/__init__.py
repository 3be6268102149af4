"""Sampling from trained models: what `netlang sample` and `Model.sample` run.

What a model samples follows from its inputs and losses, as `netlang train` reads its data
(netlang/train/binding.py):

- a character model, an integer sequence input read by an embedding and a loss scoring the
  character after each step, generates text (text.py): the prime read one character at a
  time, each recurrent layer's state carried from step to step (passes/stepping.py), then
  each next character drawn and fed back;
- a model with noise inputs (a generator) will draw `count` samples of its output from
  seeded noise: pending (issue 12).  `TextModel.of` refuses such a model now, in one line
  that says so.
"""

from netlang.sampling.text import TextModel, TextSampler

__all__ = ["TextModel", "TextSampler"]
