"""Data sets for training: one entry point, `load_dataset(spec)`, and the helpers training uses.

A spec is a built-in name (`mnist`, `xor`, `blobs`, `spirals`, `first_element`), a path to a
`.npz` or `.csv` file, `text:PATH`, a character corpus, or `folder:PATH`, a folder of images
in a sub-folder per class (netlang.data.folders). Every loaded set comes back
the same way: float32 inputs with the sample axis first (channels last for images), int64
labels and a class count (or, from files, float32 target values), so the trainer never
cares where the data came from. An `.npz` whose arrays are named after a model's inputs
(`<input>_train`, `<input>_test`) comes back as a `NamedDataset`, for models with
several inputs; a corpus as a `TextCorpus`, which a model cuts into windows of its sequence
length (netlang.data.text).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from netlang.data.dataset import Dataset, NamedDataset, check_labels, check_targets, infer_num_classes
from netlang.data.files import TARGET_KINDS, check_target_kind, load_csv, load_named_npz, load_npz, npz_layout
from netlang.data.folders import IMAGE_SIZES, is_folder_spec, load_image_folder, read_images
from netlang.data.idx import parse_idx, read_idx
from netlang.data.mnist import load_mnist
from netlang.data.prepare import batches, fit_to_shape, normalize, train_test_split, validation_split
from netlang.data.synthetic import blobs, first_element, spirals, xor
from netlang.data.text import TextCorpus, Vocabulary, is_text_spec, read_text
from netlang.errors import DataError, did_you_mean

__all__ = [
    "BUILTIN_SETS", "Dataset", "IMAGE_SIZES", "NamedDataset", "TARGET_KINDS", "TextCorpus", "Vocabulary",
    "batches", "blobs", "check_labels", "check_targets", "first_element", "fit_to_shape",
    "load_csv",
    "load_dataset", "load_image_folder", "load_mnist", "load_named_npz", "load_npz",
    "normalize", "parse_idx",
    "read_idx", "read_images", "read_text", "spirals", "train_test_split", "validation_split", "xor",
]

# Default sizes of the synthetic sets (all samples, before the train/test split).
SYNTHETIC_SAMPLES = {"xor": 4, "blobs": 200, "spirals": 400, "first_element": 2500}
BUILTIN_SETS = ("mnist", *SYNTHETIC_SAMPLES)
# The arrays of `first_element`, by the input names a model gives them
# (examples/long_dependency_lstm.net): sequences, their lengths, the class of the first step.
FIRST_ELEMENT_INPUTS = ("sequence", "length", "label")
FILE_SUFFIXES = (".npz", ".csv")


def load_dataset(spec: str, *, seed: int = 0, samples: int | None = None,
                 test_fraction: float = 0.2, num_classes: int | None = None,
                 label_column: int | str = 0, header: bool | None = None,
                 targets: str = "labels", target_columns: int = 1, inputs=None,
                 label_shape: tuple = (), ids: bool = False,
                 data_dir: str | Path | None = None,
                 allow_download: bool = True, input_shape=None,
                 image_size: str = "check",
                 limit: int | None = None) -> Dataset | NamedDataset | TextCorpus:
    """Load the set named by `spec`, ready to train on (`text:PATH`: a `TextCorpus`, ready to
    be cut into a model's windows).

    `seed` fixes synthetic data and every shuffle; `samples` sizes a synthetic set;
    `test_fraction` splits sets that come as one table (synthetic, CSV); `num_classes`
    checks labels against a model's output count instead of inferring it;
    `label_column`/`header` read CSV; `targets` ("labels" or "values") and `target_columns`
    say how a file's targets are read (see `load_csv`, `load_npz`); `inputs` (a model's input
    names) lets an .npz hold one array per input (see `_from_npz`); `label_shape` is the
    per-example shape of an .npz's integer labels (`(T,)`: a label per time step); `ids` reads
    an .npz's inputs as int64 ids (token sequences), neither scaled nor made float;
    `data_dir`/`allow_download` locate MNIST; `input_shape` (the model input's shape) and
    `image_size` ("check" or "resize") say how a `folder:PATH` set's images are read (see
    `load_image_folder`); `limit` keeps MNIST's first `limit` examples of each split, taken
    before its images are scaled: a short run (`netlang train --limit`) then does not convert
    all 70,000 of them (half a second).  The built-in sets always have labels.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data set name (expected one of {', '.join(BUILTIN_SETS)}, "
                        f"a .npz/.csv path, text:PATH or folder:PATH)")
    check_target_kind(targets)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    spec = spec.strip()
    name = spec.lower()
    if is_text_spec(spec):
        return read_text(spec)
    if is_folder_spec(spec):
        ds = load_image_folder(spec, input_shape=input_shape, image_size=image_size)
    elif name == "mnist":
        ds = _mnist(data_dir, allow_download, limit)
    elif name in SYNTHETIC_SAMPLES:
        ds = _synthetic(name, samples, seed, test_fraction)
    elif name.endswith(".npz"):
        ds = _from_npz(Path(spec), targets, inputs, tuple(label_shape), ids)
    elif name.endswith(FILE_SUFFIXES):
        ds = _from_csv(Path(spec), seed, test_fraction, label_column, header, targets,
                       target_columns)
    elif Path(spec).exists():
        raise DataError(f"{spec}: unsupported data file type `{Path(spec).suffix}` "
                        f"(expected .npz or .csv; a character corpus is read as text:{spec}, "
                        f"a folder of images as folder:{spec})")
    else:
        raise DataError(f"unknown data set `{spec}`{did_you_mean(name, BUILTIN_SETS)} "
                        f"(expected one of {', '.join(BUILTIN_SETS)}, a .npz/.csv path or "
                        f"text:PATH)")
    if num_classes is not None and isinstance(ds, Dataset) and ds.num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
        # Named classes (an image folder's) are the model's: more would be labels out of
        # range, fewer a run whose names `netlang predict` refuses.
        if ds.class_names is not None and len(ds.class_names) != num_classes:
            names = ", ".join(ds.class_names[:10]) + (", ..." if len(ds.class_names) > 10 else "")
            raise DataError(f"{ds.name}: {len(ds.class_names)} classes ({names}), but the "
                            f"model predicts {num_classes}")
        for split, y in (("train", ds.y_train), ("test", ds.y_test)):
            check_labels(y.reshape(-1), num_classes, what=f"{ds.name} {split} labels")
        ds = dataclasses.replace(ds, num_classes=int(num_classes))
    return ds


def _mnist(data_dir: str | Path | None, allow_download: bool, limit: int | None) -> Dataset:
    m = load_mnist(data_dir, allow_download=allow_download)
    kept = slice(None, limit)
    ds = Dataset(m.x_train[kept, ..., None], m.y_train[kept].astype(np.int64),
                 m.x_test[kept, ..., None], m.y_test[kept].astype(np.int64), "mnist", 10)
    return normalize(ds, "scale")


# A synthetic set is made whole in memory: ten million 2-D points are 80 MB of float32.
MAX_SAMPLES = 10_000_000


def _synthetic(name: str, samples: int | None, seed: int,
               test_fraction: float) -> Dataset | NamedDataset:
    n = SYNTHETIC_SAMPLES[name] if samples is None else samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLES:
        raise DataError(f"{name}: samples must be an integer from 1 to {MAX_SAMPLES:,}, got {n!r}")
    if name == "first_element":
        return _first_element(n, seed, test_fraction)
    if name == "xor":
        # Four points cannot be split: train on the repeated table, test on the table itself.
        x, y = xor(repeat=math.ceil(n / 4), seed=seed)
        x_test, y_test = xor(seed=seed)
        return Dataset(x, y, x_test, y_test, name, 2)
    x, y = (blobs if name == "blobs" else spirals)(n, seed=seed)
    return Dataset(*train_test_split(x, y, test_fraction, seed), name, 2)


def _first_element(n: int, seed: int, test_fraction: float) -> NamedDataset:
    """`first_element` sequences of 100 steps: the test split all full length, the training
    split of lengths from 1 to 100, so that training sees the dependency at every distance
    (from PyTorch's initial weights an LSTM does not learn it from 100-step sequences alone,
    and the Elman RNN not even with the shorter ones: examples/long_dependency_lstm.net)."""
    tested = max(1, int(round(n * test_fraction)))
    if n - tested < 1:
        raise DataError(f"first_element: {n} samples leave none to train on after the test "
                        f"split of {test_fraction}")
    rng = np.random.default_rng(seed)
    splits = [first_element(n - tested, seed=rng),
              first_element(tested, shortest=100, seed=rng)]
    train, test = ({name: array for name, array in zip(FIRST_ELEMENT_INPUTS, split)}
                   for split in splits)
    return NamedDataset(train, test, "first_element")


def _from_npz(path: Path, targets: str, inputs, label_shape: tuple,
              ids: bool) -> Dataset | NamedDataset:
    """The archive's layout (`npz_layout`) decides its reading: arrays named after the model's
    `inputs` (every `<name>_train`/`<name>_test` pair when `inputs` is None), or `x_train`,
    `y_train`, `x_test`, `y_test`."""
    if npz_layout(path, inputs) == "named":
        return load_named_npz(path, inputs)   # which arrays are missing, when any is
    x_train, y_train, x_test, y_test = load_npz(path, targets=targets, label_shape=label_shape,
                                                ids=ids)
    ds = Dataset(x_train, y_train, x_test, y_test, path.stem,
                 infer_num_classes(y_train, y_test) if targets == "labels" else None)
    # uint8 images to [0, 1]; everything else just to float32; ids stay ids.
    return ds if ids else normalize(ds, "auto")


def _from_csv(path: Path, seed: int, test_fraction: float, label_column: int | str,
              header: bool | None, targets: str, target_columns: int) -> Dataset:
    x, y = load_csv(path, label_column=label_column, header=header, targets=targets,
                    target_columns=target_columns)
    x_train, y_train, x_test, y_test = train_test_split(x, y, test_fraction, seed)
    ds = Dataset(x_train, y_train, x_test, y_test, path.stem,
                 infer_num_classes(y_train, y_test) if targets == "labels" else None)
    return normalize(ds, "auto")
