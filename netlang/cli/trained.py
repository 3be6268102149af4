"""What the commands that use trained weights share (`eval`, `predict`, `saliency`): the
model with its weights, the run that made them, and model inputs read from files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from netlang.api import Model
from netlang.cli.common import add_device, compile_model
from netlang.data import fit_to_shape
from netlang.errors import DataError, WeightsError
from netlang.train.png import PNG_SIGNATURE, image_to_input, read_png
from netlang.train.run_dir import NORMALIZATION_FILE, read_run
from netlang.weights import load_weights, read_header


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """`--weights`, `--force` and `--device`: how a command picks trained weights to run."""
    parser.add_argument("--weights", required=True, help="a run directory or .safetensors file")
    parser.add_argument("--force", action="store_true", help="use weights of a changed .net file")
    add_device(parser, default="cpu")


def load_model(args: argparse.Namespace) -> tuple[Model, dict]:
    """(model, run info) for `args.file` with the weights of `--weights` loaded."""
    model = compile_model(args.file)
    model.device = args.device
    model.load_weights(args.weights, force=args.force)
    return model, run_info(args.weights)


def run_info(weights) -> dict:
    """The run.json of the run that wrote `weights` (a run directory or the final weights
    file inside one); {} for a weights file of its own."""
    path = Path(weights)
    if path.is_dir():
        return read_run(path)
    if path.parent.is_dir() and path.name == "weights.safetensors":
        return read_run(path.parent)
    return {}


def read_input(path, shape) -> np.ndarray:
    """A batch for one model input from an .npy file or a PNG image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == PNG_SIGNATURE:
        return image_to_input(read_png(path), tuple(shape), str(path))[None]
    if path.suffix.lower() != ".npy" and not magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: expected an .npy array or a PNG image")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.number)
                                                  or array.dtype == np.bool_):
        raise DataError(f"{path}: needs a numeric array, got {getattr(array, 'dtype', '?')}")
    size = int(np.prod(shape)) if shape else 1
    if array.shape == tuple(shape) or (array.ndim <= max(1, len(shape)) and array.size == size):
        array = array.reshape((1,) + tuple(shape))  # a single example
    elif array.ndim >= 2:
        array = fit_to_shape(array, shape)
    else:
        raise DataError(f"{path}: array of shape {array.shape} does not fit the model input "
                        f"{tuple(shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return array.astype(np.float32)


def saved_normalization(weights, shape) -> dict | None:
    """The mean/std a run standardized its inputs with, if it did: each must hold one value
    per element of an input of `shape` (a one-line WeightsError otherwise)."""
    path = Path(weights)
    directory = path if path.is_dir() else path.parent
    file = directory / NORMALIZATION_FILE
    if not file.exists():   # only when absent: a FIFO or a device there is refused below
        return None
    stored = _normalization_shapes(file, math.prod(shape))
    params, _ = load_weights(file, {name: (stored[name], np.float32) for name in stored})
    return params


def _normalization_shapes(file: Path, size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of `mean` and `std` in the normalization file, each holding `size` values
    (the data set's shape of an example, which the model's input may reshape)."""
    entries, _ = read_header(file)
    shapes = {}
    for name in ("mean", "std"):
        if name not in entries:
            raise WeightsError(f"{file}: tensor `{name}` is missing")
        shape, _ = entries[name]
        if math.prod(shape) != size:
            raise WeightsError(f"{file}: tensor `{name}` has shape {shape}, {math.prod(shape)} "
                               f"values; the model's input has {size}")
        shapes[name] = shape
    return shapes


def standardized(x: np.ndarray, norm: dict | None, shape) -> np.ndarray:
    """`x` standardized as the run's training inputs were (unchanged when they were not)."""
    if norm is None:
        return x
    return (x - norm["mean"].reshape(shape)) / norm["std"].reshape(shape)
