"""The records loaders produce (`Dataset`, and `NamedDataset` for several inputs), and the
checks of labels and target values every loader uses."""

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
    `y_*` hold int64 class indices in 0..num_classes-1, or float32 target values (one-hot
    rows, class probabilities, regression targets: any per-sample shape), for which
    `num_classes` is None. `x_val`/`y_val` are set by `validation_split`. `value_range`
    is (low, high) when every input value lies there by construction (images scaled from
    uint8 to [0, 1]), else None: what an attack keeps its inputs within. `class_names` name
    the labels (an image folder's class folders), else None. Frozen so that
    helpers return new records instead of editing one a caller still holds (the arrays
    themselves are shared, not copied).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int | None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    value_range: tuple[float, float] | None = None
    class_names: tuple[str, ...] | None = None

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
            if y.shape[1:] != self.y_train.shape[1:]:
                raise DataError(f"{self.name}: {split} targets have shape {y.shape[1:]} but "
                                f"train targets have shape {self.y_train.shape[1:]}")

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


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class NamedDataset:
    """Train and test arrays by model input name, for models with several inputs.

    `train` and `test` map each input's name to its arrays (one sample per row), as an
    .npz archive holding `<name>_train` and `<name>_test` stores them; targets are inputs
    like any other, so they are named too. Dtypes are kept as stored: the model's input
    types decide how each array is read (binding.py). Frozen like `Dataset`.
    """

    train: dict
    test: dict
    name: str

    def __post_init__(self) -> None:
        if set(self.train) != set(self.test):
            unpaired = [f"{n}_train" if n in self.train else f"{n}_test"
                        for n in sorted(set(self.train) ^ set(self.test))]
            raise DataError(f"{self.name}: {', '.join(unpaired)} without its counterpart "
                            f"(every input needs <input>_train and <input>_test)")
        if not self.train:
            raise DataError(f"{self.name}: no arrays")
        for split, arrays in (("train", self.train), ("test", self.test)):
            first = next(iter(arrays))
            for name, array in arrays.items():
                if array.ndim < 1:
                    raise DataError(f"{self.name}: {name}_{split} must have a sample axis, "
                                    f"got a scalar")
                if len(array) != len(arrays[first]):
                    raise DataError(f"{self.name}: {name}_{split} has {len(array)} samples "
                                    f"but {first}_{split} has {len(arrays[first])}")
            if not len(arrays[first]):
                raise DataError(f"{self.name}: the {split} set is empty")
        for name, array in self.train.items():
            if array.shape[1:] != self.test[name].shape[1:]:
                raise DataError(f"{self.name}: {name}_train samples have shape "
                                f"{array.shape[1:]} but {name}_test samples have shape "
                                f"{self.test[name].shape[1:]}")

    @property
    def names(self) -> tuple[str, ...]:
        """The input names the arrays are for."""
        return tuple(self.train)

    def __repr__(self) -> str:  # arrays summarised, as Dataset's
        parts = ", ".join(f"{n}={self.train[n].shape}/{self.test[n].shape}" for n in self.train)
        return f"NamedDataset(name={self.name!r}, {parts})"


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


def check_targets(y: np.ndarray, *, what: str = "targets") -> np.ndarray:
    """`y` as float32 target values (one-hot rows, probabilities or regression targets, one
    per sample), or a one-line DataError naming the first bad value."""
    y = np.asarray(y)
    if y.ndim < 1:
        raise DataError(f"{what} must have a sample axis, got a scalar")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number) \
            or np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"{what} must hold real numbers, got dtype {y.dtype}")
    check_finite(y, what)
    return y.astype(np.float32)


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
