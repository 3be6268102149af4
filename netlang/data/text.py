"""Character corpora (`text:PATH`): a UTF-8 file read as windows of character ids.

A corpus becomes training data in two steps, because the window length and the number of ids
are the model's, not the file's: `read_text` reads the file (`load_dataset("text:PATH")`
returns the `TextCorpus`), and `TextCorpus.windows(length, vocabulary)` cuts it into examples:

- windows of `length` ids, one after the other without overlap (window i starts at character
  i·length), each paired with the same window shifted by one character, the characters that
  follow, as its targets.  Every character is predicted once per epoch; overlapping windows
  would add no text, only repeat each character's gradient, and the trainer shuffles the
  windows each epoch (seeded), so nothing about the windows depends on the seed;
- the last tenth of the windows (at least one), the end of the file, is the test split.

`Vocabulary` maps characters to ids and back; its JSON form is saved with a training run, so
that evaluation and sampling read and write text as the run did.

`bigram_loss` is the baseline a character model has to beat: the held-out loss, in the same
nats per character on the same windows, of predicting each character from the one before it
alone (benchmarks/char_bigram.py prints it for a corpus).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from netlang.data.dataset import Dataset
from netlang.errors import DataError

# How a spec names a corpus: `text:PATH`.
TEXT_PREFIX = "text:"
# The default alphabet: printable ASCII (32 ' ' .. 126 '~', id = code - 32), then newline (95).
DEFAULT_SYMBOLS = "".join(chr(code) for code in range(32, 127)) + "\n"
# Characters outside the alphabet (a tab, an accented letter) read as a space: with 96 ids the
# alphabet fills `vocab = 96` exactly, and a space is the least disruptive stand-in.
UNKNOWN_ID = DEFAULT_SYMBOLS.index(" ")
# Shown for an id that has no character (beyond the alphabet of a larger vocabulary).
NO_SYMBOL = "\ufffd"
# The share of the windows, at the end of the file, held out as the test split.
TEST_FRACTION = 0.1
VOCABULARY_FORMAT = "netlang-vocabulary"
VOCABULARY_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """Characters ↔ ids for a model whose embedding reads `size` ids.

    `symbols[i]` is the character of id i; characters outside `symbols` encode as `unknown`
    (the space's id in the default alphabet).  The default alphabet is `DEFAULT_SYMBOLS`, 96
    characters; a model with more ids gets the corpus's most frequent other characters after
    them (`for_text`), and ids beyond those are never produced by `encode` (`decode` shows them
    as U+FFFD).  A model with fewer than 96 ids cannot read the alphabet and is refused.
    """

    symbols: str
    size: int
    unknown: int = UNKNOWN_ID

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols):
            raise DataError("vocabulary: a character appears twice in its symbols")
        if not self.symbols or len(self.symbols) > self.size:
            raise DataError(f"vocabulary: {len(self.symbols)} symbols do not fit {self.size} ids")
        if not 0 <= self.unknown < len(self.symbols):
            raise DataError(f"vocabulary: the unknown id {self.unknown} names no symbol")
        codes = np.array([ord(c) for c in self.symbols], dtype=np.int64)
        table = np.full(int(codes.max()) + 1, self.unknown, dtype=np.int64)
        table[codes] = np.arange(len(codes))
        object.__setattr__(self, "_ids_by_code", table)   # frozen: set once, here

    @classmethod
    def for_text(cls, size: int, text: str = "", *, what: str = "text data") -> Vocabulary:
        """The vocabulary of a model with `size` ids: the default alphabet, then (when `size`
        exceeds 96) the characters of `text` outside it, most frequent first (ties by code
        point), as many as fit."""
        if size < len(DEFAULT_SYMBOLS):
            raise DataError(f"{what}: the model reads {size} character ids, fewer than the "
                            f"{len(DEFAULT_SYMBOLS)} of the text alphabet (printable ASCII and "
                            f"newline): give its embedding a vocab of at least "
                            f"{len(DEFAULT_SYMBOLS)}")
        counts = collections.Counter(c for c in text if c not in DEFAULT_SYMBOLS)
        extra = sorted(counts, key=lambda c: (-counts[c], ord(c)))[:size - len(DEFAULT_SYMBOLS)]
        return cls(DEFAULT_SYMBOLS + "".join(extra), size)

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`'s characters (int64), `unknown` for those outside the alphabet."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        table = self._ids_by_code
        ids = np.full(len(codes), self.unknown, dtype=np.int64)
        known = codes < len(table)
        ids[known] = table[codes[known]]
        return ids

    def decode(self, ids) -> str:
        """The text of `ids` (any integer array); an id without a character reads as U+FFFD,
        one outside 0..size-1 is a DataError."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0
                         or ids.max() >= self.size):
            raise DataError(f"vocabulary: ids must be integers in 0..{self.size - 1}")
        return "".join(self.symbols[i] if i < len(self.symbols) else NO_SYMBOL
                       for i in ids.tolist())

    def unknown_characters(self, text: str) -> int:
        """How many characters of `text` lie outside the alphabet (and read as `unknown`)."""
        alphabet = set(self.symbols)
        return sum(count for c, count in collections.Counter(text).items()
                   if c not in alphabet)

    def to_json(self) -> str:
        """The vocabulary as a JSON document (what a run directory's vocabulary.json holds)."""
        return json.dumps({"format": VOCABULARY_FORMAT, "version": VOCABULARY_VERSION,
                           "size": self.size, "unknown": self.unknown,
                           "symbols": self.symbols}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, what: str = "vocabulary") -> Vocabulary:
        """The vocabulary `to_json` wrote; a one-line DataError naming `what` otherwise."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{what}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != VOCABULARY_FORMAT:
            raise DataError(f"{what}: not a netlang vocabulary")
        if data.get("version") != VOCABULARY_VERSION:
            raise DataError(f"{what}: vocabulary version {data.get('version')!r} is not "
                            f"supported")
        symbols, size, unknown = data.get("symbols"), data.get("size"), data.get("unknown")
        if not isinstance(symbols, str) or not _is_count(size) or not _is_count(unknown):
            raise DataError(f"{what}: needs `symbols` (a string), `size` and `unknown` "
                            f"(integers)")
        return cls(symbols, size, unknown)

    def __repr__(self) -> str:  # 96 symbols would flood a terminal
        return f"Vocabulary(size={self.size}, symbols={len(self.symbols)}, unknown={self.unknown})"


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class TextCorpus:
    """A text file's characters (newlines as `\\n`), not yet cut into windows.

    `name` is the file's name, as messages and the data set name show it.
    """

    text: str
    path: Path

    @property
    def name(self) -> str:
        """The file's name, e.g. `shakespeare.txt`."""
        return self.path.name

    def vocabulary(self, size: int) -> Vocabulary:
        """The vocabulary a model with `size` ids reads this corpus with (`Vocabulary.for_text`)."""
        return Vocabulary.for_text(size, self.text, what=str(self.path))

    def windows(self, length: int, vocabulary: Vocabulary) -> Dataset:
        """Windows of `length` ids as inputs, the next character of each as its targets (int64
        arrays of shape (windows, length)); the last tenth of the windows is the test set (see
        the module docstring).  A file too short for a window to train on and one to test on
        is a one-line DataError naming it."""
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise DataError(f"{self.path}: the window length must be a positive integer, got "
                            f"{length!r}")
        ids = vocabulary.encode(self.text)
        count = (len(ids) - 1) // length
        if count < 2:
            window = length + 1
            shorter = "shorter than one window" if count == 0 else "only one window long"
            raise DataError(f"{self.path}: {len(self.text):,} characters is {shorter}: the "
                            f"model reads {length} characters and predicts the one after each "
                            f"({window} characters a window), and needs a window to train on "
                            f"and one to test on ({length + window} characters at least)")
        x = ids[:count * length].reshape(count, length)
        y = ids[1:count * length + 1].reshape(count, length)
        held = math.ceil(count * TEST_FRACTION)
        return Dataset(x[:-held], y[:-held], x[-held:], y[-held:], self.name, vocabulary.size)

    def __repr__(self) -> str:  # the text itself would flood a terminal
        return f"TextCorpus({str(self.path)!r}, characters={len(self.text):,})"


def is_text_spec(spec) -> bool:
    """Whether a data spec names a character corpus (`text:PATH`)."""
    return isinstance(spec, str) and spec.strip().lower().startswith(TEXT_PREFIX)


def read_text(spec: str) -> TextCorpus:
    """The corpus a `text:PATH` spec names (or a plain path): UTF-8, newlines normalised.

    Empty files, binary files (NUL bytes, or bytes that are not UTF-8) and missing ones are
    one-line DataErrors naming the file.
    """
    raw_path = spec.strip()
    if is_text_spec(raw_path):
        raw_path = raw_path[len(TEXT_PREFIX):].strip()
    if not raw_path:
        raise DataError(f"`{spec}` names no file: write text:PATH")
    path = Path(raw_path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: empty file, no text to read")
    if b"\0" in data:
        raise DataError(f"{path}: a binary file (it holds NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")   # -sig: drop the byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}): a binary file, or text in another encoding") from None
    if not text:
        raise DataError(f"{path}: empty file, no text to read")
    return TextCorpus(text.replace("\r\n", "\n").replace("\r", "\n"), path)


def with_bits_per_character(figures: dict) -> dict:
    """`figures` with `bpc` beside each loss (`loss`, `val_loss`, `test_loss`): a text set's
    loss is its cross-entropy in nats per character, which is this many bits."""
    out = dict(figures)
    for key, value in figures.items():
        if key == "loss" or key.endswith("_loss"):
            out[key[:-len("loss")] + "bpc"] = value / math.log(2)
    return out


def bigram_loss(windows: Dataset, *, smoothing: float = 0.5) -> float:
    """The test split's cross-entropy, in nats per character, of a bigram model counted on the
    training split of `windows` (what `TextCorpus.windows` returns).

    Each window's character pairs (input id, target id) are what the character model is scored
    on, so both losses average over the same predictions.  P(next | current) is the training
    count of the pair plus `smoothing`, over the count of `current` plus `smoothing` times the
    number of ids (`windows.num_classes`): additive smoothing, so that a pair the training
    split never shows costs a finite loss, as it does a model's softmax.
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) \
            or not math.isfinite(smoothing) or smoothing <= 0:
        raise DataError(f"bigram smoothing must be a number above 0, got {smoothing!r}")
    ids = windows.num_classes
    counts = np.zeros((ids, ids), dtype=np.float64)
    np.add.at(counts, (windows.x_train.reshape(-1), windows.y_train.reshape(-1)), 1.0)
    log_probability = np.log(counts + smoothing) \
        - np.log(counts.sum(axis=1, keepdims=True) + smoothing * ids)
    current, following = windows.x_test.reshape(-1), windows.y_test.reshape(-1)
    return float(-log_probability[current, following].mean())


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
