"""`netlang predict FILE INPUT... --weights RUN`: class probabilities for an .npy array, or for
image files and folders of images, by class name when the run saved its classes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from netlang.cli.common import positive_int
from netlang.cli.trained import (
    add_weights_arguments,
    load_model,
    read_input,
    saved_normalization,
    standardized,
)
from netlang.data.folders import IMAGE_SUFFIXES, image_shape, read_images
from netlang.errors import DataError, UsageError
from netlang.ir.train_config import IMAGE_SIZES
from netlang.train.evaluation import predict
from netlang.train.overrides import apply_overrides
from netlang.train.png import PNG_SIGNATURE
from netlang.train.run_dir import saved_class_names

# The bytes that open every .npy file (numpy.lib.format), and every JPEG (its SOI marker and
# the first byte of the next marker).
NPY_SIGNATURE = b"\x93NUMPY"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DEFAULT_TOP_K = 10   # classes listed per example when --top-k is not given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang predict`."""
    parser.add_argument("file", help="the .net file")
    parser.add_argument("input", nargs="+",
                        help="an .npy array (one example or a batch), or image files (.png, "
                             ".jpg) and folders of them")
    add_weights_arguments(parser)
    parser.add_argument("--top-k", "--top", dest="top", type=positive_int,
                        metavar="K", help="classes listed per example (default 10)")
    parser.add_argument("--image-size", choices=IMAGE_SIZES,
                        help="an image of another size than the model input: check (refuse "
                             "it) or resize it; default: the run's setting (check)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the predicted class and the top probabilities per example (or the raw outputs
    of a model without a classification loss)."""
    model, info = load_model(args)
    binding = model.binding
    if binding.data_input is None:
        raise UsageError("this model has several data inputs; predict from Python with a dict")
    shape, _ = binding.inputs[binding.data_input]
    if len(args.input) == 1 and _is_array(Path(args.input[0])):
        names, x = None, read_input(args.input[0], shape)
    else:
        config = apply_overrides(model.train_config, info.get("overrides") or [], model.graph)
        names = image_paths(args.input)
        x = read_images(names, image_shape(names[0], shape, args.image_size
                                           or config.image_size),
                        args.image_size or config.image_size).reshape((len(names),) + shape)
    x = standardized(x, saved_normalization(args.weights, shape), shape)
    result = predict(model.engine, binding, {binding.data_input: x})
    if not isinstance(result, np.ndarray):  # no classification loss: raw outputs
        if args.top is not None:
            raise UsageError("--top-k lists classes, and this model has no classification "
                             "loss: its outputs are printed whole")
        if args.json:
            print(json.dumps({k: v.tolist() for k, v in result.items()}))
        else:
            for name, value in result.items():
                print(f"{name}:")
                print(np.array2string(value, precision=4, suppress_small=True))
        return 0
    probs = result.reshape(len(x), -1, result.shape[-1])[:, -1] if result.ndim > 2 else result
    classes = saved_class_names(args.weights)
    if classes is not None and len(classes) != probs.shape[1]:
        raise DataError(f"{args.weights}: the run names {len(classes)} classes but the model "
                        f"predicts {probs.shape[1]}")
    label = (lambda c: classes[c]) if classes is not None else int
    predicted = probs.argmax(axis=1)
    top = min(args.top or DEFAULT_TOP_K, probs.shape[1])
    orders = [np.argsort(-row, kind="stable")[:top] for row in probs]
    if args.json:
        result = {"predicted": predicted.tolist(), "probabilities": np.round(probs, 6).tolist()}
        if classes is not None:
            result["classes"] = list(classes)
        result["top"] = [{**({"file": str(names[i])} if names is not None else {}),
                          "predicted": label(int(predicted[i])),
                          "top_k": [{"class": label(int(c)),
                                     "probability": round(float(probs[i, c]), 6)}
                                    for c in order]}
                         for i, order in enumerate(orders)]
        print(json.dumps(result))
        return 0
    for i, (row, order) in enumerate(zip(probs, orders)):
        if len(probs) == 1:
            print(f"predicted class: {label(int(predicted[i]))}")
            width = max(5, *(len(str(label(int(c)))) for c in order))
            print(f"{'class':>{width}}  probability")
            for c in order:
                print(f"{label(int(c))!s:>{width}}  {row[c]:.4f}")
        else:
            listed = "  ".join(f"{label(int(c))}: {row[c]:.4f}" for c in order)
            name = names[i] if names is not None else i
            print(f"{name}: {label(int(predicted[i]))}  ({listed})")
    return 0


def image_paths(inputs) -> list[Path]:
    """The image files `inputs` name: files as given, and the .png/.jpg/.jpeg files in each
    folder and its sub-folders (hidden ones skipped), sorted by path."""
    paths = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path}: no .png or .jpg images in this folder")
            paths.extend(found)
        elif not path.is_file():
            raise DataError(f"{path}: no such file")
        elif _is_array(path):
            raise DataError(f"{path}: an .npy array is predicted on its own, not among images")
        elif path.suffix.lower() not in IMAGE_SUFFIXES and not _has_image_signature(path):
            raise DataError(f"{path}: expected an .npy array or a PNG or JPEG image")
        else:
            paths.append(path)
    return paths


def _has_image_signature(path: Path) -> bool:
    """Whether the file at `path` opens as a PNG or a JPEG does (whatever its name)."""
    with open(path, "rb") as f:
        start = f.read(len(PNG_SIGNATURE))
    return start.startswith((PNG_SIGNATURE, JPEG_SIGNATURE))


def _is_array(path: Path) -> bool:
    """Whether `path` is an .npy array (by its suffix or NumPy's signature), which `read_input`
    reads; anything else is read as an image, whose reader names a file that is neither."""
    if path.suffix.lower() == ".npy":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(NPY_SIGNATURE)) == NPY_SIGNATURE
