"""Text from a character model: the prime read one character at a time, then each next
character drawn from the model's probabilities and fed back.

A character model, as `text:PATH` data trains one (netlang/data/text.py), reads a sequence of
character ids through one integer input and scores, at each step, the character after it: the
prediction of the loss whose target is the same text shifted by one (`TextModel.of` reads
that from the model's binding).  `TextSampler` compiles the model's step program once
(netlang/pipeline.py `step_program`): one character in, the scores of the next one out, each
recurrent layer's state carried from call to call, so a character costs one step, not a
pass over all the text before it.  The step program runs on the engine of the model's
weights (the same arrays, the same device and dtype).

Each character is drawn from softmax(scores / temperature) over the characters of the
vocabulary (ids without a character are never drawn), among the `top_k` highest scores when
given; temperature 0 takes the highest score (ties: the lowest id).  The draws come from
NumPy's generator seeded with `seed`: the same seed, weights and prime give the same text.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from netlang.data.text import Vocabulary
from netlang.errors import UsageError
from netlang.pipeline import step_program
from netlang.runtime import make_engine
from netlang.train.binding import Binding

# What a character model has to be, for messages that refuse another.
_CHARACTER_MODEL = ("an integer sequence input read by an embedding (`input tokens: "
                    "int32[64]`) and a loss scoring the character after each "
                    "(`loss cross_entropy(logits, next)`)")


@dataclasses.dataclass(frozen=True)
class TextModel:
    """What sampling reads of a character model: the input its text goes to, the node whose
    scores the next character is drawn from, and how many character ids both hold."""

    text_input: str
    prediction: str
    ids: int

    @classmethod
    def of(cls, binding: Binding) -> TextModel:
        """The character model `binding` describes; a one-line UsageError when it is none."""
        text_input, head = binding.data_input, binding.head
        if text_input is None or binding.inputs[text_input][1] \
                or text_input not in binding.id_bounds:
            raise UsageError(f"sampling text needs a character model: {_CHARACTER_MODEL}; "
                             f"this model has no such input, and no noise input to sample "
                             f"from (`input z: [64] ~ normal`)")
        if head is None or not head.classify or head.reading != "scores":
            raise UsageError(f"sampling text needs a character model: {_CHARACTER_MODEL}; "
                             f"this model has no loss that scores characters")
        ids = binding.id_bounds[text_input]
        if head.units != ids:
            raise UsageError(f"sampling feeds each character drawn back to `{text_input}`, "
                             f"which reads {ids} ids, but `{head.prediction}` scores "
                             f"{head.units}")
        return cls(text_input, head.prediction, ids)


class TextSampler:
    """A character model's step program on the engine of its weights, and the text it
    generates (`generate`)."""

    def __init__(self, graph, binding: Binding, engine):
        self.model = TextModel.of(binding)
        self.source_engine = engine
        self.step = step_program(graph, self.model.text_input, [self.model.prediction])
        self.engine = make_engine(self.step.graph, engine.config, engine.params,
                                  device=engine.name, dtype=engine.dtype)
        self._wanted = [self.model.prediction] + [state.output for state in self.step.states]

    def initial_states(self, batch: int = 1) -> dict:
        """Zero states, as the model starts each sequence: {state input name: array}."""
        return {state.input: np.zeros((batch,) + state.shape, dtype=self.engine.dtype)
                for state in self.step.states}

    def advance(self, ids, states: dict) -> tuple[np.ndarray, dict]:
        """One step from `states`, reading the character ids `ids` (one per example): (the
        scores of the next character, (batch, ids) float64; the states after the step)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, 1)
        values = self.engine.forward({self.model.text_input: ids, **states}, "eval",
                                     outputs=self._wanted)
        scores = np.asarray(values[self.model.prediction], dtype=np.float64)
        scores = scores.reshape(len(ids), -1, self.model.ids)[:, -1]
        return scores, {state.input: values[state.output] for state in self.step.states}

    def generate(self, vocabulary: Vocabulary, prime: str, length: int, *,
                 temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """`length` characters that follow `prime` (see the module docstring)."""
        check_options(length, temperature, top_k, self.model.ids, seed)
        if vocabulary.size != self.model.ids:
            raise UsageError(f"the vocabulary has {vocabulary.size} ids, but "
                             f"`{self.model.text_input}` reads {self.model.ids}")
        primed = prime_ids(vocabulary, prime)
        rng = np.random.default_rng(seed)
        states = self.initial_states()
        for character in primed:
            scores, states = self.advance([character], states)
        drawn = []
        for _ in range(length):
            character = draw(scores, temperature, top_k, rng, len(vocabulary.symbols))
            drawn.append(int(character[0]))
            scores, states = self.advance(character, states)
        return vocabulary.decode(np.array(drawn, dtype=np.int64))


def check_options(length, temperature, top_k, ids: int, seed=None) -> None:
    """One-line UsageErrors for a length, temperature, top-k or seed that sampling cannot
    use."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise UsageError(f"the length must be a positive number of characters, got {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"the temperature must be a number of at least 0 (0: always the most "
                         f"likely character), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or not 1 <= top_k <= ids):
        raise UsageError(f"top_k must be a number of characters from 1 to {ids}, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise UsageError(f"the seed must be an integer of at least 0, got {seed!r}")


def prime_ids(vocabulary: Vocabulary, prime: str) -> np.ndarray:
    """The ids of `prime`'s characters; a one-line UsageError for an empty prime or one with a
    character the vocabulary lacks (which the model never read in training)."""
    if not isinstance(prime, str) or not prime:
        raise UsageError("the prime must hold at least one character: sampling continues "
                         "from it")
    known = set(vocabulary.symbols)
    for position, character in enumerate(prime):
        if character not in known:
            raise UsageError(f"the prime's character {position + 1}, {character!r} "
                             f"(U+{ord(character):04X}), is not in the model's vocabulary of "
                             f"{len(vocabulary.symbols)} characters")
    return vocabulary.encode(prime)


def draw(scores: np.ndarray, temperature: float, top_k: int | None, rng,
         characters: int) -> np.ndarray:
    """One id per row of `scores` (batch, ids), among the first `characters` ids (those with
    a character), by temperature and top-k as the module docstring says."""
    scores = np.array(scores, dtype=np.float64)
    scores[:, characters:] = -np.inf
    if top_k is not None and top_k < characters:
        kth = np.sort(scores, axis=1)[:, -top_k, None]
        scores[scores < kth] = -np.inf   # ties with the k-th score stay in
    if temperature == 0:
        return scores.argmax(axis=1)
    weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / temperature)
    cumulative = np.cumsum(weights, axis=1)
    picks = []
    for row, u in zip(cumulative, rng.random(len(scores))):
        # The first id whose cumulative weight exceeds u·total: an id of weight 0 never is.
        index = int(np.searchsorted(row, u * row[-1], side="right"))
        picks.append(min(index, int(np.flatnonzero(np.diff(row, prepend=0.0) > 0)[-1])))
    return np.array(picks, dtype=np.int64)
