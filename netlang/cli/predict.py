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
from netlang.data.folders import image_paths, is_npy_file, read_image_input
from netlang.errors import DataError, UsageError
from netlang.ir.train_config import IMAGE_SIZES
from netlang.train.evaluation import predict
from netlang.train.overrides import apply_overrides
from netlang.train.run_dir import saved_class_names

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
    if len(args.input) == 1 and is_npy_file(Path(args.input[0])):
        names, x = None, read_input(args.input[0], shape)
    else:
        config = apply_overrides(model.train_config, info.get("overrides") or [], model.graph)
        names = image_paths(args.input)
        x = read_image_input(names, shape, args.image_size or config.image_size)
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


