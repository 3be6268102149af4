"""What training does to a loaded set: scale, split, batch, reshape to the model.

All randomness comes from an explicit seed or generator, so a run can be repeated
(and resumed) exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from netlang.data.dataset import Dataset
from netlang.errors import DataError
from netlang.pages import small_pages

NORMALIZE_METHODS = ("auto", "scale", "standardize", "none")


def normalize(ds: Dataset, method: str = "auto") -> Dataset:
    """A copy of `ds` with float32 inputs.

    `scale` maps uint8 images to [0, 1] (dividing by 255); `standardize` subtracts the
    train set's per-feature mean and divides by its std, applied to every split so
    test data never leaks into the statistics; `auto` scales uint8 and leaves other
    types' values alone; `none` only converts to float32.  The copy's `value_range` is
    where its inputs lie by construction ([0, 1] once uint8 is scaled; None standardized).
    """
    if method not in NORMALIZE_METHODS:
        raise DataError(f"unknown normalization `{method}` (expected one of "
                        f"{', '.join(NORMALIZE_METHODS)})")
    if method == "standardize":
        # Statistics in float64 for accuracy, applied in float32 to halve the temporaries.
        mean = ds.x_train.mean(axis=0, dtype=np.float64)
        std = ds.x_train.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0  # a constant feature (an always-black border pixel) stays 0
        mean32, std32 = mean.astype(np.float32), std.astype(np.float32)

        def convert(x: np.ndarray) -> np.ndarray:
            out = x.astype(np.float32)
            out -= mean32
            out /= std32
            return out
        value_range = None   # each feature's range differs once standardized
    elif method == "scale" or (method == "auto" and ds.x_train.dtype == np.uint8):
        if ds.x_train.dtype != np.uint8:
            raise DataError(f"{ds.name}: `scale` expects uint8 images, got {ds.x_train.dtype} "
                            f"(use `standardize`)")

        def convert(x: np.ndarray) -> np.ndarray:
            out = x.astype(np.float32)
            out /= np.float32(255.0)   # in place: MNIST's 60,000 images are 188 MB in float32
            return out
        value_range = (0.0, 1.0)
    else:
        def convert(x: np.ndarray) -> np.ndarray:
            return x.astype(np.float32)
        value_range = (0.0, 255.0) if ds.x_train.dtype == np.uint8 else ds.value_range
    with small_pages():   # netlang/pages.py: MNIST's first write waited for compaction
        return dataclasses.replace(
            ds, x_train=convert(ds.x_train), x_test=convert(ds.x_test),
            x_val=None if ds.x_val is None else convert(ds.x_val), value_range=value_range)


def train_test_split(x: np.ndarray, y: np.ndarray, test_fraction: float,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split one table in two; both parts keep at least one sample."""
    _check_fraction(test_fraction, "test_fraction")
    n = len(x)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise DataError(f"cannot split {n} samples with test_fraction={test_fraction}: "
                        f"each part needs at least one sample")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def validation_split(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Move a random `fraction` of the train set into `x_val`/`y_val`."""
    x_train, y_train, x_val, y_val = train_test_split(ds.x_train, ds.y_train, fraction, seed)
    return dataclasses.replace(ds, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def batches(n: int, batch_size: int, rng: np.random.Generator | int | None = None, *,
            drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) once, in batches; shuffled when `rng` is given.

    Passing the same Generator across epochs gives a new order per epoch that is
    still fixed by the initial seed; `rng=None` keeps the original order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    if n < 0:
        raise DataError(f"sample count must be >= 0, got {n}")
    if rng is None:
        order = np.arange(n)
    else:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        order = rng.permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def fit_to_shape(x: np.ndarray, shape: Sequence[int | None], *, what: str = "data") -> np.ndarray:
    """Reshape each sample of `x` to a model's input `shape` (784 <-> 28x28x1).

    Only a reshape, never a resize: the per-sample sizes must agree. A leading
    None or -1 batch axis in `shape` is ignored. `what` names the array in errors.
    """
    shape = tuple(shape)
    if len(shape) == x.ndim and shape and shape[0] in (None, -1):
        shape = shape[1:]
    if any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise DataError(f"model input shape {shape} must be positive integers")
    have, want = x.shape[1:], tuple(int(d) for d in shape)
    if have == want:
        return x
    if _size(have) != _size(want):
        raise DataError(f"{what} samples have shape {_fmt(have)} ({_size(have)} values) but "
                        f"the model input is {_fmt(want)} ({_size(want)} values)")
    return x.reshape((len(x),) + want)


def _check_fraction(fraction: float, what: str) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise DataError(f"{what} must be a number strictly between 0 and 1, got {fraction!r}")


def _size(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"
