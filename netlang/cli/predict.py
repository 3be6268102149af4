"""`netlang predict FILE INPUT --weights RUN`: class probabilities for an .npy array or a PNG."""

from __future__ import annotations

import argparse
import json

import numpy as np

from netlang.cli.common import positive_int
from netlang.cli.trained import (
    add_weights_arguments,
    load_model,
    read_input,
    saved_normalization,
    standardized,
)
from netlang.errors import UsageError
from netlang.train.evaluation import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang predict`."""
    parser.add_argument("file", help="the .net file")
    parser.add_argument("input", help="an .npy array (one example or a batch) or a PNG image")
    add_weights_arguments(parser)
    parser.add_argument("--top", type=positive_int, default=10,
                        help="classes listed per example (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the predicted class and the top probabilities per example (or the raw outputs
    of a model without a classification loss)."""
    model, _ = load_model(args)
    binding = model.binding
    if binding.data_input is None:
        raise UsageError("this model has several data inputs; predict from Python with a dict")
    shape, _ = binding.inputs[binding.data_input]
    norm = saved_normalization(args.weights, shape)
    x = standardized(read_input(args.input, shape), norm, shape)
    result = predict(model.engine, binding, {binding.data_input: x})
    if not isinstance(result, np.ndarray):  # no classification loss: raw outputs
        if args.json:
            print(json.dumps({k: v.tolist() for k, v in result.items()}))
        else:
            for name, value in result.items():
                print(f"{name}:")
                print(np.array2string(value, precision=4, suppress_small=True))
        return 0
    probs = result.reshape(len(x), -1, result.shape[-1])[:, -1] if result.ndim > 2 else result
    predicted = probs.argmax(axis=1)
    if args.json:
        print(json.dumps({"predicted": predicted.tolist(),
                          "probabilities": np.round(probs, 6).tolist()}))
        return 0
    top = min(args.top, probs.shape[1])
    for i, row in enumerate(probs):
        order = np.argsort(-row, kind="stable")[:top]
        if len(probs) == 1:
            print(f"predicted class: {int(predicted[i])}")
            print("class  probability")
            for c in order:
                print(f"{int(c):>5}  {row[c]:.4f}")
        else:
            listed = "  ".join(f"{int(c)}: {row[c]:.4f}" for c in order)
            print(f"{i}: class {int(predicted[i])}  ({listed})")
    return 0
