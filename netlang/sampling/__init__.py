"""Sampling from trained models: what `netlang sample` and `Model.sample` run.

What a model samples follows from its inputs and losses, as `netlang train` reads its data
(netlang/train/binding.py):

- a character model, an integer sequence input read by an embedding and a loss scoring the
  character after each step, generates text (text.py): the prime read one character at a
  time, each recurrent layer's state carried from step to step (passes/stepping.py), then
  each next character drawn and fed back;
- a model with noise inputs (a generator, `input z: [64] ~ normal`) draws `count` samples of
  the output it computes from them alone (noise.py).
"""

from netlang.sampling.noise import NoiseModel, draw_samples, sample_grid
from netlang.sampling.text import TextModel, TextSampler

__all__ = ["NoiseModel", "TextModel", "TextSampler", "draw_samples", "sample_grid"]
