"""Samples from a generative model: its noise inputs drawn, one of its outputs computed.

A model with noise inputs (`input z: [64] ~ normal`) samples the outputs it computes from them
alone: a GAN's generator, a VAE's decoder fed the prior.  `NoiseModel.of` finds them (the
outputs whose every input is a noise input); the one sampled is the only such output, or the
one named.  `draw_samples` draws `count` of them in batches, in evaluation mode (dropout and the
training-only corruptions pass their input through; `sample_normal` and `bernoulli` still
draw), with the engine's generator set from `seed` for the call and restored after it: the
same seed, weights and count give the same samples on every engine.  `sample_grid` tiles them
into one picture.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from netlang.errors import UsageError
from netlang.train.image_grid import as_picture, display_range, image_grid, to_uint8

# Samples computed per forward pass: a batch's buffers stay small whatever `count` is.
BATCH = 256


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """What sampling reads of a generative model: the output it samples and the noise inputs
    that output is computed from."""

    output: str
    noise_inputs: tuple

    @classmethod
    def of(cls, graph, binding, output: str | None = None) -> NoiseModel:
        """The sampled output (`output`, else the only one computed from noise inputs alone);
        a one-line UsageError when the model has no noise input or no such output, or when
        several are and none is named."""
        if not binding.noise_inputs:
            raise UsageError("sampling needs noise inputs (`input z: [64] ~ normal`) or a "
                             "character model; this model has neither")
        sampled = noise_outputs(graph, binding)
        if output is not None:
            if output not in graph.graph["outputs"]:
                known = ", ".join(f"`{n}`" for n in graph.graph["outputs"])
                raise UsageError(f"the model has no output `{output}` (its outputs: {known})")
            if output not in sampled:
                raise UsageError(f"output `{output}` reads data inputs, not noise inputs alone; "
                                 f"outputs to sample: {_names(sampled) or 'none'}")
            return cls(output, sampled[output])
        if not sampled:
            raise UsageError(f"no output is computed from the noise inputs "
                             f"({_names(binding.noise_inputs)}) alone: nothing to sample")
        if len(sampled) > 1:
            raise UsageError(f"several outputs are computed from noise inputs alone "
                             f"({_names(sampled)}): name one with `output=`")
        name, noise = next(iter(sampled.items()))
        return cls(name, noise)


def noise_outputs(graph, binding) -> dict:
    """{output name: the noise inputs it reads} for each output of `graph` computed from
    noise inputs alone, in the graph's order of outputs."""
    inputs = {node: name for name, node in graph.graph["inputs"].items()}
    sampled = {}
    for name, node in graph.graph["outputs"].items():
        read = {inputs[a] for a in _upstream(graph, node) if a in inputs}
        if read and read <= set(binding.noise_inputs):
            sampled[name] = tuple(n for n in binding.noise_inputs if n in read)
    return sampled


def _upstream(graph, node) -> set:
    """`node` and every node it is computed from."""
    seen, pending = {node}, [node]
    while pending:
        for operand in graph.operands(pending.pop()):
            if operand not in seen:
                seen.add(operand)
                pending.append(operand)
    return seen


def _names(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


def draw_samples(engine, model: NoiseModel, count: int, seed: int | None = None) -> np.ndarray:
    """`count` samples of `model.output`, float32, shaped (count,) + the output's per-example
    shape; drawn as the module's docstring says."""
    if count < 1:
        raise UsageError(f"the number of samples must be at least 1, got {count}")
    saved = engine.rng
    engine.rng = np.random.default_rng([seed if seed is not None
                                        else np.random.SeedSequence().entropy, 2])
    try:
        parts = []
        for start in range(0, count, BATCH):
            feeds = engine.with_noise({}, min(BATCH, count - start))
            parts.append(engine.forward(feeds, "eval", outputs=[model.output])[model.output])
    finally:
        engine.rng = saved
    return np.concatenate(parts).astype(np.float32)


def sample_grid(samples: np.ndarray) -> np.ndarray:
    """The samples as one uint8 picture, as near square as the count allows (see
    netlang/train/image_grid.py for how an example becomes a picture)."""
    low, high = display_range(samples)
    pictures = [to_uint8(as_picture(s), low, high) for s in samples]
    columns = math.ceil(math.sqrt(len(pictures)))
    return image_grid([pictures[i:i + columns] for i in range(0, len(pictures), columns)])
