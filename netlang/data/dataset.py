"""The `Dataset` record every loader produces, and the label check every loader uses."""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.errors import DataError

# Labels this large are almost surely a regression target or an id column, not classes.
MAX_CLASSES = 100_000


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Dataset:
    """Train and test arrays with their name and class count.

    `x_*` hold one sample per row (any per-sample shape, channels last for images);
    `y_*` hold int64 class indices in 0..num_classes-1. `x_val`/`y_val` are set by
    `validation_split`. Frozen so that helpers return new records instead of
    editing one a caller still holds (the arrays themselves are shared, not copied).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self) -> None:
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None or self.y_val is not None:
            splits.append(("validation", self.x_val, self.y_val))
        for split, x, y in splits:
            if x is None or y is None:
                raise DataError(f"{self.name}: {split} set needs both inputs and labels")
            if x.ndim < 2:
                raise DataError(f"{self.name}: {split} inputs must have a sample axis and at "
                                f"least one feature axis, got shape {x.shape}")
            if len(x) != len(y):
                raise DataError(f"{self.name}: {split} set has {len(x)} samples but "
                                f"{len(y)} labels")
            if x.shape[1:] != self.x_train.shape[1:]:
                raise DataError(f"{self.name}: {split} samples have shape {x.shape[1:]} but "
                                f"train samples have shape {self.x_train.shape[1:]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (28, 28, 1) for MNIST."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:  # arrays summarised: a full dump would flood a terminal
        parts = [f"name={self.name!r}", f"num_classes={self.num_classes}",
                 f"train={self.x_train.shape}", f"test={self.x_test.shape}"]
        if self.x_val is not None:
            parts.append(f"val={self.x_val.shape}")
        return f"Dataset({', '.join(parts)}, dtype={self.x_train.dtype})"


def check_labels(y: np.ndarray, num_classes: int | None = None, *, what: str = "labels",
                 line_numbers: np.ndarray | None = None) -> np.ndarray:
    """`y` as int64 class indices, or a one-line DataError naming the first bad label.

    Integral floats (as a CSV yields) are accepted; with `num_classes=None` labels
    must lie in 0..MAX_CLASSES-1. `line_numbers` (one per label) make messages point
    at a text file's lines instead of array indices.
    """
    def at(i: int) -> str:
        return f"on line {line_numbers[i]}" if line_numbers is not None else f"at index {i}"

    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of class indices, got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{what} must be numeric class indices, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"{what} must be real class indices, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{what}: label {y[i]} {at(i)} is not an integer class index")
    limit = MAX_CLASSES if num_classes is None else num_classes
    bad = (y < 0) | (y >= limit)
    if bad.any():
        i = int(np.argmax(bad))
        expected = f"0..{limit - 1}"
        raise DataError(f"{what}: label {_fmt(y[i])} {at(i)} is out of range "
                        f"(expected {expected})")
    return y.astype(np.int64)


def infer_num_classes(*label_arrays: np.ndarray) -> int:
    """One more than the largest label seen; at least 2, since one class cannot be classified."""
    largest = max((int(y.max()) for y in label_arrays if y.size), default=0)
    return max(2, largest + 1)


def check_finite(x: np.ndarray, what: str) -> None:
    """NaN or inf in inputs would silently poison every weight they touch."""
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(~np.isfinite(x))), x.shape))
        raise DataError(f"{what} contains a non-finite value ({x[index]}) at index {index}")


def _fmt(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
