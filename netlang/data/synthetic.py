"""Small built-in sets for smoke tests and the lectures' toy problems.

The 2-D sets (`xor`, `blobs`, `spirals`) return `x` float32 (N, 2) and `y` int64 (N,);
`first_element`, a sequence task, returns sequences, their lengths and labels.  Every
generator is a pure function of its arguments: the same seed gives the same bytes on every run.
"""

from __future__ import annotations

import numpy as np

from netlang.errors import DataError

Seed = int | np.random.Generator


def xor(repeat: int = 1, *, noise: float = 0.0, seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points (0/1 corners, label = x1 xor x2), `repeat` times in a row.

    Without noise the seed is unused; the order is fixed so that the 4-point set
    is exactly the truth table, the case the perceptron cannot learn.
    """
    _check_count("repeat", repeat, minimum=1)
    _check_noise(noise)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    x = np.tile(corners, (repeat, 1))
    y = np.tile(np.array([0, 1, 1, 0], dtype=np.int64), repeat)
    if noise:
        x = x + _rng(seed).normal(0.0, noise, x.shape)
    return x.astype(np.float32), y


def blobs(n: int = 200, *, noise: float = 0.6, seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters at (-1.5, -1.5) and (1.5, 1.5), always linearly separable.

    Offsets are clipped to length 1.5, which keeps every point on its own side of
    the line x1 + x2 = 0 (each centre lies 2.12 from it), so a perceptron provably
    converges whatever the seed.
    """
    _check_count("n", n, minimum=2)
    _check_noise(noise)
    rng = _rng(seed)
    y = _balanced_labels(n, rng)
    offsets = rng.normal(0.0, noise, (n, 2))
    lengths = np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= np.minimum(1.0, 1.5 / np.maximum(lengths, 1e-12))
    centres = np.where(y[:, None] == 1, 1.5, -1.5)
    return (centres + offsets).astype(np.float32), y


def spirals(n: int = 400, *, turns: float = 1.5, noise: float = 0.05,
            seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals (class 1 is class 0 rotated by 180 degrees), within about [-1, 1]².

    Points are spread evenly along the arc (radius ∝ sqrt of a uniform draw), so the
    dense centre does not dominate; not linearly separable, needs a hidden layer.
    """
    _check_count("n", n, minimum=2)
    _check_noise(noise)
    if not turns > 0:
        raise DataError(f"spirals: turns must be positive, got {turns}")
    rng = _rng(seed)
    y = _balanced_labels(n, rng)
    radius = np.sqrt(rng.uniform(0.0, 1.0, n))
    angle = radius * turns * 2.0 * np.pi + np.pi * y
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x += rng.normal(0.0, noise, x.shape)
    return x.astype(np.float32), y


def first_element(n: int = 2000, *, steps: int = 100, classes: int = 4, shortest: int = 1,
                  seed: Seed = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A long-dependency task: the label is the first symbol of a sequence of random symbols.

    Returns `x` float32 (n, steps, classes + 1), `lengths` int32 (n,) and `y` int64 (n,).  Each
    step before the sequence's length holds one of `classes` symbols, one-hot in the first
    `classes` features; the symbol of step 0 is the label, and only step 0 sets the last
    feature, a start mark.  The later symbols are drawn at random, noise that writes to the same
    features as the label.  Steps at and after the length are zeros (padding, which a recurrent
    layer given `lengths` never reads).  Lengths are drawn uniformly from `shortest` to
    `steps`: `shortest = steps` gives sequences of the full length, whose label lies
    `steps - 1` noise steps behind the last one.
    """
    _check_count("n", n, minimum=1)
    _check_count("steps", steps, minimum=1)
    _check_count("classes", classes, minimum=2)
    _check_count("shortest", shortest, minimum=1)
    if shortest > steps:
        raise DataError(f"shortest must be at most steps ({steps}), got {shortest}")
    rng = _rng(seed)
    symbols = rng.integers(0, classes, (n, steps))
    lengths = rng.integers(shortest, steps + 1, n).astype(np.int32)
    x = np.zeros((n, steps, classes + 1), dtype=np.float32)
    x[np.arange(n)[:, None], np.arange(steps)[None, :], symbols] = 1.0
    x[:, 0, classes] = 1.0
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths, symbols[:, 0].astype(np.int64)


GENERATORS = {"xor": xor, "blobs": blobs, "spirals": spirals}


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Half zeros, half ones, shuffled: any prefix holds both classes in about equal parts."""
    return rng.permutation(np.arange(n, dtype=np.int64) % 2)


def _check_count(what: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_noise(noise: float) -> None:
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise >= 0):
        raise DataError(f"noise must be a finite number >= 0, got {noise!r}")
