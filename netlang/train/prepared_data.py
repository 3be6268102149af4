"""Data sets → arrays: a named or given data set loaded, limited, normalised and split.

`prepare_data` turns what `--data` names (a built-in set, a .npz/.csv file, a `text:PATH`
corpus, a `folder:PATH` of images read at the model input's shape, a `netlang.data.Dataset`, `NamedDataset` or `TextCorpus`) into {input name: array} per
split, bound to the model's inputs: a data set's `x`/`y` to its data input and target, a named
set's arrays each to the input of its name, a corpus's windows to the model's text input (the
integer sequence its embedding reads) and their next characters to its target;
`split_arrays` holds out a validation part of arrays given directly, exactly as
`netlang.data.validation_split` does for a data set.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from netlang.data import Dataset, NamedDataset, TextCorpus, Vocabulary, load_dataset, validation_split
from netlang.data import normalize as normalize_dataset
from netlang.data.prepare import NORMALIZE_METHODS
from netlang.errors import DataError, UsageError
from netlang.ir.train_config import TrainConfig
from netlang.train.binding import Binding, as_arrays, check_examples, count_examples, fit_input, take_examples


@dataclasses.dataclass
class PreparedData:
    """A data set as {input name: array} per split, ready for the trainer."""

    train: dict
    val: dict | None
    test: dict | None
    name: str
    num_classes: int | None
    normalization: dict | None = None  # {"mean": ..., "std": ...} when standardized
    # A text set's characters ↔ ids, saved with the run (netlang.train.run_dir).
    vocabulary: Vocabulary | None = None
    # The loss is a text set's cross-entropy per character: report it in bits too.
    per_character: bool = False
    # What the loader made of the data, worth a line when training starts (a reshape, windows).
    notes: list = dataclasses.field(default_factory=list)
    # Where the data input's values lie by construction ([0, 1]: images scaled from uint8),
    # else None (netlang.data.Dataset.value_range): the range an attack stays within.
    value_range: tuple | None = None
    # The labels' names (an image folder's classes), saved with the run as classes.json.
    class_names: tuple | None = None


def prepare_data(spec, binding: Binding, config: TrainConfig, *, limit: int | None = None,
                 normalize: str = "auto", samples: int | None = None, data_dir=None,
                 vocabulary: Vocabulary | None = None) -> PreparedData:
    """Load `spec` (a data set name or path, a Dataset, NamedDataset or TextCorpus) for this
    model.  `vocabulary` reads a text set as a run did (its saved vocabulary.json); without
    it, a text set is read with the vocabulary of the model's embedding."""
    takes_ids = binding.data_input is not None and not binding.inputs[binding.data_input][1]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"`limit=` must be a positive integer, got {limit!r}")
    if isinstance(spec, (Dataset, NamedDataset, TextCorpus)):
        ds = spec
    else:
        targets = binding.target_kind
        label_shape = binding.inputs[binding.label_input][0] \
            if binding.label_input is not None and targets == "labels" else ()
        ds = load_dataset(spec, seed=config.seed, samples=samples,
                          num_classes=binding.num_classes if binding.label_input else None,
                          targets=targets, inputs=tuple(binding.inputs), data_dir=data_dir,
                          target_columns=binding.target_columns if targets == "values" else 1,
                          label_shape=label_shape, ids=takes_ids,
                          input_shape=binding.inputs[binding.data_input][0]
                          if binding.data_input is not None else None,
                          image_size=config.image_size, limit=limit)
    if isinstance(ds, NamedDataset):
        return _prepare_named(ds, binding, config, limit, normalize)
    if takes_ids and normalize not in (None, "auto", "none"):
        raise UsageError(f"input `{binding.data_input}` takes integer ids, which "
                         f"`normalize=\"{normalize}\"` does not apply to")
    notes = []
    if isinstance(ds, TextCorpus):
        corpus = ds
        ds, vocabulary = _text_windows(corpus, binding, vocabulary)
        notes.append(_describe_windows(corpus, ds, vocabulary))
    else:
        vocabulary = None
    if not binding.single:
        raise DataError(_needs_named_arrays(ds.name, binding))
    if isinstance(spec, str) and spec.strip().lower().endswith(".csv"):
        _check_csv_columns(spec.strip(), ds, binding)
    if ds.class_names is not None:
        notes.append(_describe_classes(ds))
    reshaped = _reshape_note(ds, binding)
    if reshaped:
        notes.append(reshaped)
    if limit is not None:
        ds = dataclasses.replace(ds, x_train=ds.x_train[:limit], y_train=ds.y_train[:limit],
                                 x_test=ds.x_test[:limit], y_test=ds.y_test[:limit])
    normalization = None
    if normalize not in (None, "auto") and not takes_ids:
        before = ds.x_train
        ds = normalize_dataset(ds, normalize)
        if normalize == "standardize":
            mean = before.mean(axis=0, dtype=np.float64)
            std = before.std(axis=0, dtype=np.float64)
            std[std == 0] = 1.0
            normalization = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    if config.val_split and ds.x_val is not None:
        raise DataError(f"{ds.name}: the data has its own validation split (an image folder's "
                        f"val/), which val_split={config.val_split} would replace: set one")
    if config.val_split:
        if len(ds.x_train) < 2:
            raise DataError(f"{ds.name}: {len(ds.x_train)} training example(s) cannot be split "
                            f"for validation")
        ds = validation_split(ds, config.val_split, config.seed)
    what = ds.name
    train = as_arrays(binding, ds.x_train, ds.y_train, what=f"{what} (train)")
    val = as_arrays(binding, ds.x_val, ds.y_val, what=f"{what} (validation)") \
        if ds.x_val is not None else None
    test = as_arrays(binding, ds.x_test, ds.y_test, what=f"{what} (test)") \
        if ds.x_test is not None and len(ds.x_test) else None
    return PreparedData(train, val, test, ds.name, ds.num_classes, normalization,
                        vocabulary=vocabulary, notes=notes,
                        per_character=vocabulary is not None and _loss_per_character(binding),
                        value_range=ds.value_range, class_names=ds.class_names)


def _text_windows(corpus: TextCorpus, binding: Binding,
                  vocabulary: Vocabulary | None) -> tuple[Dataset, Vocabulary]:
    """The corpus cut into windows for this model: as long as its text input's sequence, read
    with `vocabulary` (or its embedding's), each paired with the next characters as targets."""
    text_input, target = binding.data_input, binding.label_input
    if text_input is None or target is None or binding.inputs[text_input][1] \
            or binding.inputs[target][1]:
        listed = ", ".join(f"`{name}` {'float' if is_float else 'int'}{list(shape)}"
                           for name, (shape, is_float) in binding.inputs.items())
        raise DataError(f"{corpus.name}: text data feeds a sequence of character ids to one "
                        f"integer input and the characters after them to an integer target "
                        f"(e.g. `input tokens: int32[64]`, `input next: int32[64]`); this "
                        f"model's inputs: {listed}")
    shape = binding.inputs[text_input][0]
    if len(shape) != 1 or binding.inputs[target][0] != shape:
        raise DataError(f"{corpus.name}: text data needs a sequence input and a target of the "
                        f"same length, e.g. int32[64]; input `{text_input}` is "
                        f"int32{list(shape)} and target `{target}` "
                        f"int32{list(binding.inputs[target][0])}")
    size = binding.id_bounds.get(text_input)
    if size is None:
        raise DataError(f"{corpus.name}: input `{text_input}` feeds no layer that reads ids "
                        f"below a vocabulary size (an embedding), so the text's characters "
                        f"have no ids")
    if vocabulary is None:
        vocabulary = corpus.vocabulary(size)
    elif vocabulary.size != size:
        raise DataError(f"{corpus.name}: the run's vocabulary has {vocabulary.size} ids, but "
                        f"input `{text_input}` reads {size}")
    return corpus.windows(shape[0], vocabulary), vocabulary


def _describe_windows(corpus: TextCorpus, ds: Dataset, vocabulary: Vocabulary) -> str:
    """`x.txt: 12,345 characters as 192 windows of 64 (the last 20 to test); 3 characters
    outside its 96-symbol vocabulary read as ' '`."""
    length = ds.x_train.shape[1]
    line = (f"{corpus.name}: {len(corpus.text):,} characters as "
            f"{len(ds.x_train) + len(ds.x_test):,} windows of {length} (the last "
            f"{len(ds.x_test):,} to test)")
    unknown = vocabulary.unknown_characters(corpus.text)
    if unknown:
        stand_in = vocabulary.symbols[vocabulary.unknown]
        line += (f"; {unknown:,} character{'s' if unknown != 1 else ''} outside its "
                 f"{len(vocabulary.symbols)}-symbol vocabulary read as {stand_in!r}")
    return line


def _describe_classes(ds: Dataset) -> str:
    """`shapes: 90 training images of 12x12x1 in 3 classes (bar, column, square), 30 to test`."""
    names = ", ".join(ds.class_names[:10]) + (", ..." if len(ds.class_names) > 10 else "")
    line = (f"{ds.name}: {len(ds.x_train):,} training images of "
            f"{_shape_text(ds.x_train.shape[1:])} in {len(ds.class_names)} classes ({names})")
    if ds.x_val is not None:
        line += f", {len(ds.x_val):,} to validate"
    return line + f", {len(ds.x_test):,} to test"


def _loss_per_character(binding: Binding) -> bool:
    """Whether the model's loss, over a text set, is the cross-entropy per character: one loss,
    unweighted, that reads class scores against the text's targets."""
    head = binding.head
    return len(binding.losses) == 1 and binding.losses[0][1] == 1.0 and head is not None \
        and head.classify and head.reading == "scores" and head.target == binding.label_input


def _reshape_note(ds: Dataset, binding: Binding) -> str | None:
    """`mnist: samples of shape 28x28x1 read as 28x28 (input `image`)`, when the data input's
    samples are reshaped to fit it (the sizes agree; otherwise fit_input refuses them)."""
    if binding.data_input is None:
        return None
    have, want = tuple(ds.x_train.shape[1:]), binding.inputs[binding.data_input][0]
    if not want or have == want or math.prod(have) != math.prod(want):
        return None
    return (f"{ds.name}: samples of shape {_shape_text(have)} read as {_shape_text(want)} "
            f"(input `{binding.data_input}`)")


def _shape_text(shape: tuple) -> str:
    return "x".join(map(str, shape))


def _needs_named_arrays(name: str, binding: Binding) -> str:
    """Why one input array and one target array cannot feed this model, and what can."""
    if binding.data_input is None:
        several = "data inputs", binding.data_inputs
    else:
        several = "target inputs", binding.label_inputs
    listed = ", ".join(f"`{n}`" for n in several[1])
    return (f"{name} holds one input array and one label array, but this model has several "
            f"{several[0]} ({listed}): use an .npz that holds <input>_train and <input>_test "
            f"for each of its inputs ({', '.join(binding.inputs)})")


def _check_csv_columns(path: str, ds: Dataset, binding: Binding) -> None:
    """A table whose width does not add up to the model's target and input, said in columns
    (the sample-shape message fit_input would give counts values, not columns)."""
    targets = binding.target_columns if binding.target_kind == "values" else 1
    features = ds.x_train.shape[1]
    wanted = math.prod(binding.inputs[binding.data_input][0])
    if features != wanted:
        target = f"the target `{binding.label_input}`" if binding.label_input else "the labels"
        raise DataError(f"{path}: a row has {features + targets} columns: {targets} for "
                        f"{target} and {features} features, but input `{binding.data_input}` "
                        f"takes {wanted} values (expected {wanted + targets} columns)")


def _prepare_named(ds: NamedDataset, binding: Binding, config: TrainConfig,
                   limit: int | None, normalize: str) -> PreparedData:
    """A named set's arrays fitted to the inputs of their names, each error naming the array
    (`meta_train`); the validation part held out of the train split as `split_arrays` does."""
    missing = [n for n in binding.inputs if n not in ds.train]
    if missing:
        raise DataError(f"{ds.name}: no arrays for input(s) {', '.join(missing)}: this model "
                        f"reads <input>_train and <input>_test for each of its inputs "
                        f"({', '.join(binding.inputs)}); found: {', '.join(ds.names)}")
    if normalize not in (None, *NORMALIZE_METHODS):
        raise DataError(f"unknown normalization `{normalize}` (expected one of "
                        f"{', '.join(NORMALIZE_METHODS)})")
    if normalize == "standardize":
        raise UsageError(f"{ds.name}: `normalize=\"standardize\"` works on one input (x_train); "
                         f"standardize named arrays before saving them")
    splits = {}
    for split, arrays in (("train", ds.train), ("test", ds.test)):
        fitted = {}
        for name in binding.inputs:
            array = arrays[name][:limit] if limit is not None else arrays[name]
            is_float = binding.inputs[name][1]
            if is_float and array.dtype != np.uint8 and normalize == "scale" \
                    and name in binding.data_inputs:
                raise DataError(f"{ds.name}: `scale` expects uint8 images, got {array.dtype} "
                                f"in {name}_{split} (use `auto` or `none`)")
            if is_float and array.dtype == np.uint8 and normalize == "none":
                array = array.astype(np.float32)   # fit_input scales only uint8
            fitted[name] = fit_input(binding, name, array, f"{ds.name}: {name}_{split}")
        check_examples(binding, fitted, f"{ds.name} ({split})")
        splits[split] = fitted
    val = None
    if config.val_split:
        splits["train"], val = split_arrays(splits["train"], config.val_split, config.seed)
    return PreparedData(splits["train"], val, splits["test"], ds.name, binding.num_classes)


def split_arrays(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, validation) exactly as `netlang.data.validation_split` splits a data set."""
    n = count_examples(arrays)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise UsageError(f"val_split must be a number strictly between 0 and 1, got {fraction!r}")
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        raise DataError(f"cannot hold out {fraction} of {n} examples for validation: each part "
                        f"needs at least one example")
    order = np.random.default_rng(seed).permutation(n)
    return take_examples(arrays, order[n_val:]), take_examples(arrays, order[:n_val])
