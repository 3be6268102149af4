"""A user's own data: `.npz` archives (one input and its targets, or arrays named after a
model's inputs) and CSV tables.

Both formats are untrusted input: every defect is reported as a one-line
`DataError` naming the file, and `.npz` is opened with `allow_pickle=False` so
a data file can never run code.
"""

from __future__ import annotations

import csv
import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from netlang.data.dataset import NamedDataset, check_finite, check_labels, check_targets
from netlang.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# A data set is read whole into memory: an archive member or a CSV file beyond this is refused
# before it is read.
MAX_DATA_BYTES = 8 * 2 ** 30
# Deflate's ratio on real data is under 10:1 (even MNIST's images, mostly zeros, are about 8:1);
# a member of more than _SMALL bytes that claims more is refused as a zip bomb.
MAX_COMPRESSION = 200
_SMALL = 64 * 2 ** 20
SPLITS = ("train", "test")
# How targets are read: integer class indices, or float values of any shape per sample.
TARGET_KINDS = ("labels", "values")


def load_npz(path: str | Path, *, targets: str = "labels", label_shape: tuple = (),
             ids: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`x_train, y_train, x_test, y_test` from an archive written by `np.savez`.

    Inputs keep their dtype (so uint8 images can still be recognised and scaled), or with
    `ids` become int64 ids (token sequences: integer values of any dtype).
    `targets="labels"` reads `y_*` as int64 class indices, `label_shape` of them per sample
    (`()`: one; `(T,)`: one per time step); `"values"` as float32 values of any per-sample
    shape (one-hot rows, class probabilities, regression targets). Extra keys are ignored.
    """
    check_target_kind(targets)
    path = _existing_file(path)
    with _open_npz(path) as archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise DataError(f"{path}: missing key(s) {', '.join(missing)} (found: {found}); "
                            f"expected {', '.join(NPZ_KEYS)}")
        arrays = {key: _read_member(archive, key, path) for key in NPZ_KEYS}
    for key in ("x_train", "x_test"):
        _check_inputs(arrays[key], f"{path}: {key}", least_rank=2)
        if ids:
            arrays[key] = _as_ids(arrays[key], f"{path}: {key}")
    label_shape = tuple(label_shape)
    for key in ("y_train", "y_test"):
        what = f"{path}: {key}"
        if targets == "values":
            arrays[key] = check_targets(arrays[key], what=what)
        elif label_shape and np.ndim(arrays[key]) >= 1 \
                and np.shape(arrays[key])[1:] == label_shape:
            arrays[key] = check_labels(arrays[key].reshape(-1), what=what).reshape(
                arrays[key].shape)
        elif label_shape:
            shape = ", ".join(map(str, label_shape))
            raise DataError(f"{what} must hold {_fmt_shape(label_shape)} class indices per "
                            f"sample, shape (N, {shape}), got shape {np.shape(arrays[key])}")
        elif np.ndim(arrays[key]) == 2 and arrays[key].shape[1] > 1:
            raise DataError(f"{what} must be a 1-D array of class indices, got shape "
                            f"{arrays[key].shape}; one-hot or probability rows need a model "
                            f"whose target input is float, e.g. `input label: "
                            f"[{arrays[key].shape[1]}]`")
        else:
            arrays[key] = check_labels(arrays[key], what=what)
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise DataError(f"{path}: the {split} set is empty")
    for letter in "xy":
        train, test = arrays[f"{letter}_train"], arrays[f"{letter}_test"]
        if train.shape[1:] != test.shape[1:]:
            raise DataError(f"{path}: {letter}_train samples have shape {train.shape[1:]} but "
                            f"{letter}_test samples have shape {test.shape[1:]}")
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def npz_layout(path: str | Path, inputs=None) -> str:
    """How an archive is laid out: "named" (arrays named `<input>_train`/`<input>_test`) or
    "single" (`x_train`, `y_train`, `x_test`, `y_test`).

    With `inputs` (a model's input names) it is named when it holds both arrays of every
    input, or holds no `y_*` array while a model with several inputs, or some array of an
    input, asks for names (`load_named_npz` then says which arrays are missing). Without, it
    is single when it has a `y_*` array or no pairs other than `x_*`.
    """
    path = _existing_file(path)
    with _open_npz(path) as archive:
        keys = list(archive.files)
    has_labels = any(k in keys for k in ("y_train", "y_test"))
    if inputs is not None:
        inputs = tuple(inputs)
        if all(f"{n}_{split}" in keys for n in inputs for split in SPLITS):
            return "named"
        mentioned = any(_input_name(k) in inputs for k in keys)
        return "named" if not has_labels and (len(inputs) > 1 or mentioned) else "single"
    pairs = {_input_name(k) for k in keys} - {None}
    return "single" if has_labels or pairs <= {"x"} else "named"


def load_named_npz(path: str | Path, names=None) -> NamedDataset:
    """Arrays named after a model's inputs: `<name>_train` and `<name>_test` for each name.

    `names` (a model's input names) says which arrays to read: every one must be there, and
    other keys are ignored; without it, every `<name>_train`/`<name>_test` pair is read.
    Dtypes are kept (the model's input types decide how each array is read).
    """
    path = _existing_file(path)
    with _open_npz(path) as archive:
        found = list(archive.files)
        if names is None:
            names = list(dict.fromkeys(n for n in map(_input_name, found) if n is not None))
            if not names:
                raise DataError(f"{path}: expected x_train, y_train, x_test and y_test, or "
                                f"<input>_train and <input>_test for each model input "
                                f"(found: {', '.join(found) or 'none'})")
        else:
            names = list(names)
            missing = [f"{n}_{split}" for n in names for split in SPLITS
                       if f"{n}_{split}" not in found]
            if missing:
                raise DataError(f"{path}: missing {', '.join(missing)}: this model reads "
                                f"<input>_train and <input>_test for each of its inputs "
                                f"({', '.join(names)}); found: {', '.join(found) or 'none'}")
        arrays = {split: {n: _read_member(archive, f"{n}_{split}", path) for n in names
                          if f"{n}_{split}" in found} for split in SPLITS}
    for split in SPLITS:
        for name, array in arrays[split].items():
            # bool is fine here: a yes/no target (`odd`) reads as the labels 0 and 1.
            _check_inputs(array, f"{path}: {name}_{split}", least_rank=1, allow_bool=True)
    return NamedDataset(arrays["train"], arrays["test"], path.stem)


def load_csv(path: str | Path, *, label_column: int | str = 0, header: bool | None = None,
             delimiter: str = ",", targets: str = "labels",
             target_columns: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (N, F) and targets (N,) or (N, target_columns) from a numeric table.

    `header=None` detects a header row: the first row is one when any of its fields
    is not a number. `label_column` is an index (negative counts from the right)
    or, with a header, a column name. Blank lines and `#` comments are skipped.
    `targets="labels"` reads one column of int64 class indices; `"values"` reads
    `target_columns` adjacent columns of float32 values (regression targets, one-hot rows or
    class probabilities): from `label_column` rightwards, or for a negative `label_column`
    the columns that end there (`-1`: the last ones).
    """
    check_target_kind(targets)
    if isinstance(target_columns, bool) or not isinstance(target_columns, (int, np.integer)) \
            or target_columns < 1 or (targets == "labels" and target_columns != 1):
        raise DataError(f"target_columns must be a positive integer (1 for labels), got "
                        f"{target_columns!r}")
    path = _existing_file(path)
    if path.stat().st_size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes; netlang loads data of up to "
                        f"{MAX_DATA_BYTES:,} bytes")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop the BOM Excel writes
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a text file ({_reason(exc)})") from None
    rows = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise DataError(f"{path}: no data rows")
    names = None
    first = _split(rows[0][1], delimiter, f"{path}:{rows[0][0]}")
    is_header = header if header is not None else not all(_is_float(f) for f in first)
    if is_header:
        names = [name.strip() for name in first]
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: a header row but no data rows")
    table = _parse_numbers(rows, path, delimiter)
    width = table.shape[1]
    if width < target_columns + 1:
        needed = "a label column" if targets == "labels" else \
            f"{target_columns} target column{'s' if target_columns > 1 else ''}"
        raise DataError(f"{path}: needs {needed} and at least one feature column, "
                        f"found {width} column(s)")
    column = _label_index(label_column, names, width, path)
    if targets == "labels":
        labels = check_labels(table[:, column], what=f"{path}: label column {column + 1}",
                              line_numbers=np.array([number for number, _ in rows]))
        features = np.delete(table, column, axis=1).astype(np.float32)
        check_finite(features, f"{path}: features")
        return features, labels
    first_column = column - target_columns + 1 \
        if not isinstance(label_column, str) and label_column < 0 else column
    chosen = list(range(first_column, first_column + target_columns))
    if first_column < 0 or chosen[-1] >= width:
        raise DataError(f"{path}: {target_columns} target columns from column "
                        f"{first_column + 1} do not fit in {width} columns")
    values = table[:, chosen]
    check_finite(values, f"{path}: target columns {chosen[0] + 1}-{chosen[-1] + 1}"
                 if target_columns > 1 else f"{path}: target column {column + 1}")
    features = np.delete(table, chosen, axis=1).astype(np.float32)
    check_finite(features, f"{path}: features")
    values = values.astype(np.float32)
    return features, values[:, 0] if target_columns == 1 else values


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    return path


def _open_npz(path: Path):
    """The archive at `path`, opened without pickle; a DataError for anything else."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({_reason(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with keys "
                        f"{', '.join(NPZ_KEYS)} (or <input>_train and <input>_test)")
    return archive


def _check_inputs(x: np.ndarray, what: str, least_rank: int, allow_bool: bool = False) -> None:
    """Real numbers, with a sample axis (and a feature axis where `least_rank` is 2), finite."""
    if not (_is_real_number(x.dtype) or (allow_bool and x.dtype == np.bool_)):
        raise DataError(f"{what} must hold numbers, got dtype {x.dtype}")
    if x.ndim < least_rank:
        shape = "(samples, features...)" if least_rank == 2 else "(samples, ...)"
        raise DataError(f"{what} must have shape {shape}, got rank {x.ndim} shape {x.shape}")
    check_finite(x, what)


def _as_ids(x: np.ndarray, what: str) -> np.ndarray:
    """`x` as int64 ids, or a one-line DataError for values that are not whole numbers."""
    if np.issubdtype(x.dtype, np.floating) and np.any(x != np.round(x)):
        raise DataError(f"{what} must hold integer ids (the model's input is an integer "
                        f"sequence), got non-integer values")
    return x.astype(np.int64)


def _fmt_shape(shape: tuple) -> str:
    return "x".join(map(str, shape))


def _input_name(key: str) -> str | None:
    """`image` for the key `image_train` or `image_test`; None for any other key."""
    stem, _, split = key.rpartition("_")
    return stem if stem and split in SPLITS else None


def check_target_kind(targets: str) -> None:
    """Refuse a `targets` argument that is not one of TARGET_KINDS."""
    if targets not in TARGET_KINDS:
        raise DataError(f"unknown target kind `{targets}` (expected one of "
                        f"{', '.join(TARGET_KINDS)})")


def _read_member(archive, key: str, path: Path) -> np.ndarray:
    _check_member_size(archive, key, path)
    try:
        return archive[key]
    except MemoryError:
        raise DataError(f"{path}: {key} does not fit in memory") from None
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays need pickle, which we refuse
            raise DataError(f"{path}: {key} is an object array; store plain numeric "
                            f"arrays") from None
        raise DataError(f"{path}: cannot read {key} ({_reason(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read {key}, the archive is corrupt "
                        f"({_reason(exc)})") from None


def _check_member_size(archive, key: str, path: Path) -> None:
    """Refuse a member before numpy allocates it: the size its `.npy` header declares must be
    what the member holds (an array claiming shape (2**40, 2) in a few bytes is refused), at
    most MAX_DATA_BYTES, and, where large, compressed no more than MAX_COMPRESSION:1 (a zip
    bomb's ratio; real data sets compress far less)."""
    info = archive.zip.getinfo(key if key in archive.zip.namelist() else f"{key}.npy")
    if info.file_size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {key} is {info.file_size:,} bytes uncompressed; netlang "
                        f"loads data of up to {MAX_DATA_BYTES:,} bytes")
    if info.file_size > _SMALL and info.file_size > MAX_COMPRESSION * max(info.compress_size, 1):
        raise DataError(f"{path}: {key} claims {info.file_size:,} bytes from "
                        f"{info.compress_size:,} compressed, more than a data set compresses "
                        f"({MAX_COMPRESSION}:1); is it a zip bomb?")
    try:
        with archive.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
            header_size = member.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: {key} is not a readable .npy array ({_reason(exc)})") from None
    size = header_size + math.prod(shape) * dtype.itemsize  # Python ints: cannot overflow
    if not dtype.hasobject and size != info.file_size:
        raise DataError(f"{path}: {key} declares shape {shape} of {dtype} ({size:,} bytes with "
                        f"its header) but holds {info.file_size:,} bytes")


def _parse_numbers(rows: list[tuple[int, str]], path: Path, delimiter: str) -> np.ndarray:
    """numpy's C parser for speed; on failure, a Python scan finds the exact line to blame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt([line for _, line in rows], delimiter=delimiter, ndmin=2,
                               dtype=np.float64, quotechar='"', comments=None)
    except ValueError:
        width = len(_split(rows[0][1], delimiter, f"{path}:{rows[0][0]}"))
        for number, line in rows:
            fields = _split(line, delimiter, f"{path}:{number}")
            if len(fields) != width:
                raise DataError(f"{path}:{number}: expected {width} columns like the first row, "
                                f"found {len(fields)}") from None
            for col, field in enumerate(fields, start=1):
                if not _is_float(field):
                    raise DataError(f"{path}:{number}: column {col}: cannot read {field!r} as "
                                    f"a number") from None
        raise DataError(f"{path}: cannot parse as a numeric table") from None
    return table


def _label_index(label_column: int | str, names: list[str] | None, width: int,
                 path: Path) -> int:
    if isinstance(label_column, str):
        if names is None:
            raise DataError(f"{path}: label column `{label_column}` given by name, but the file "
                            f"has no header row")
        if label_column not in names:
            raise DataError(f"{path}: no column named `{label_column}` (columns: "
                            f"{', '.join(names)})")
        return names.index(label_column)
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)) \
            or not -width <= label_column < width:
        raise DataError(f"{path}: label column {label_column!r} is out of range for "
                        f"{width} columns")
    return int(label_column) % width


def _split(line: str, delimiter: str, where: str) -> list[str]:
    """The fields of one CSV line; a DataError at `where` (`path:line`) for a field beyond the
    csv module's limit (128 KiB), which no number needs."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error as exc:
        raise DataError(f"{where}: {_reason(exc)}") from None


def _is_float(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _is_real_number(dtype: np.dtype) -> bool:
    return (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) \
        and dtype != np.bool_


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]
