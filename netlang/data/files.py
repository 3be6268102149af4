"""A user's own data: `.npz` archives with a fixed train/test layout, and CSV tables.

Both formats are untrusted input: every defect is reported as a one-line
`DataError` naming the file, and `.npz` is opened with `allow_pickle=False` so
a data file can never run code.
"""

from __future__ import annotations

import csv
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from netlang.data.dataset import check_finite, check_labels
from netlang.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`x_train, y_train, x_test, y_test` from an archive written by `np.savez`.

    Inputs keep their dtype (so uint8 images can still be recognised and scaled);
    labels become int64. Extra keys are ignored.
    """
    path = _existing_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({_reason(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with keys "
                        f"{', '.join(NPZ_KEYS)}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise DataError(f"{path}: missing key(s) {', '.join(missing)} (found: {found}); "
                            f"expected {', '.join(NPZ_KEYS)}")
        arrays = {key: _read_member(archive, key, path) for key in NPZ_KEYS}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if not _is_real_number(x.dtype):
            raise DataError(f"{path}: {key} must hold numbers, got dtype {x.dtype}")
        if x.ndim < 2:
            raise DataError(f"{path}: {key} must have shape (samples, features...), got "
                            f"rank {x.ndim} shape {x.shape}")
        check_finite(x, f"{path}: {key}")
    for key in ("y_train", "y_test"):
        arrays[key] = check_labels(arrays[key], what=f"{path}: {key}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise DataError(f"{path}: the {split} set is empty")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train samples have shape {arrays['x_train'].shape[1:]} but "
                        f"x_test samples have shape {arrays['x_test'].shape[1:]}")
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def load_csv(path: str | Path, *, label_column: int | str = 0, header: bool | None = None,
             delimiter: str = ",") -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (N, F) and labels as int64 (N,) from a numeric table.

    `header=None` detects a header row: the first row is one when any of its fields
    is not a number. `label_column` is an index (negative counts from the right)
    or, with a header, a column name. Blank lines and `#` comments are skipped.
    """
    path = _existing_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop the BOM Excel writes
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a text file ({_reason(exc)})") from None
    rows = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise DataError(f"{path}: no data rows")
    names = None
    first = _split(rows[0][1], delimiter)
    is_header = header if header is not None else not all(_is_float(f) for f in first)
    if is_header:
        names = [name.strip() for name in first]
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: a header row but no data rows")
    table = _parse_numbers(rows, path, delimiter)
    if table.shape[1] < 2:
        raise DataError(f"{path}: needs a label column and at least one feature column, "
                        f"found {table.shape[1]} column(s)")
    column = _label_index(label_column, names, table.shape[1], path)
    labels = check_labels(table[:, column], what=f"{path}: label column {column + 1}",
                          line_numbers=np.array([number for number, _ in rows]))
    features = np.delete(table, column, axis=1).astype(np.float32)
    check_finite(features, f"{path}: features")
    return features, labels


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    return path


def _read_member(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays need pickle, which we refuse
            raise DataError(f"{path}: {key} is an object array; store plain numeric "
                            f"arrays") from None
        raise DataError(f"{path}: cannot read {key} ({_reason(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read {key}, the archive is corrupt "
                        f"({_reason(exc)})") from None


def _parse_numbers(rows: list[tuple[int, str]], path: Path, delimiter: str) -> np.ndarray:
    """numpy's C parser for speed; on failure, a Python scan finds the exact line to blame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt([line for _, line in rows], delimiter=delimiter, ndmin=2,
                               dtype=np.float64, quotechar='"', comments=None)
    except ValueError:
        width = len(_split(rows[0][1], delimiter))
        for number, line in rows:
            fields = _split(line, delimiter)
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


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


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
