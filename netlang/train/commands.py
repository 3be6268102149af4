"""The `netlang train`, `netlang eval` and `netlang predict` commands.

`netlang.cli` registers them (`add_commands`); errors are `NetlangError`s that
the CLI prints as one line with exit status 2.  Ctrl-C during training saves a
checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from netlang.errors import DataError, UsageError

DEVICES = ("cpu", "cuda", "auto", "reference")
NORMALIZE = ("auto", "scale", "standardize", "none")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got `{text}`") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _number(text: str) -> str:
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got `{text}`") from None
    return text


def add_commands(sub) -> None:
    train = sub.add_parser(
        "train", help="train a model; writes weights, checkpoints and a metrics log",
        description="Train a .net model. Any train-section setting can be overridden with a "
                    "named flag or with --set key=value (train-section syntax). An "
                    "autoencoder (a loss comparing an output with an input) also gets "
                    "reconstructions.png in the run directory: test inputs over their "
                    "reconstructions.")
    train.add_argument("file", help="the .net file")
    train.add_argument("--data", help="mnist, xor, blobs, spirals, FILE.npz or FILE.csv "
                                      "(default: the train section's `data`)")
    train.add_argument("--epochs", type=positive_int, help="passes over the training set")
    train.add_argument("--batch-size", type=positive_int, help="examples per step")
    train.add_argument("--lr", type=_number, help="learning rate (keeps the optimiser)")
    train.add_argument("--optimizer", help="e.g. sgd, adam or \"adam(lr=1e-3, beta2=0.99)\"")
    train.add_argument("--schedule", help="e.g. \"step(every=5, gamma=0.5)\", cosine, "
                                          "\"warmup(epochs=2)\"")
    train.add_argument("--seed", type=int, help="seed for weights, shuffling and dropout")
    train.add_argument("--val-split", type=_number,
                       help="fraction of the training set held out for validation")
    train.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                       help="stop after this many epochs without validation improvement")
    train.add_argument("--clip-norm", type=_number, help="clip the global gradient norm")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       dest="settings",
                       help="override any train-section setting, e.g. --set "
                            "\"regularize=l2(1e-4)\" (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<model name>)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    train.add_argument("--force", action="store_true",
                       help="resume although the .net file changed, or overwrite an "
                            "existing run")
    train.add_argument("--device", choices=DEVICES,
                       help="cpu (default; compiled with Numba), cuda, auto or reference "
                            "(NumPy); --resume keeps the run's device unless given")
    train.add_argument("--limit", type=positive_int, metavar="N",
                       help="use only the first N examples of each split")
    train.add_argument("--samples", type=positive_int,
                       help="size of a synthetic data set (xor, blobs, spirals)")
    train.add_argument("--normalize", choices=NORMALIZE, default="auto",
                       help="input scaling (auto: uint8 images to [0, 1])")
    train.add_argument("--plot", action="store_true", help="write curves.png (needs matplotlib)")
    train.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                       help="save a checkpoint at the end of an epoch at most this often "
                            "(always at the end and on Ctrl-C)")
    train.add_argument("--log-every", type=positive_int, metavar="EPOCHS",
                       help="print every Nth epoch (default: every epoch, or ~50 lines for "
                            "long runs)")
    train.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    train.set_defaults(run=cmd_train)

    ev = sub.add_parser("eval", help="evaluate trained weights: loss, accuracy, confusion matrix")
    ev.add_argument("file", help="the .net file")
    ev.add_argument("--weights", required=True, help="a run directory or .safetensors file")
    ev.add_argument("--data", help="data set (default: the run's, else the train section's)")
    ev.add_argument("--split", default="test", choices=("test", "train", "val"))
    ev.add_argument("--batch-size", type=positive_int, default=256)
    ev.add_argument("--limit", type=positive_int, metavar="N")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.add_argument("--force", action="store_true", help="use weights of a changed .net file")
    ev.add_argument("--device", default="cpu", choices=DEVICES)
    ev.set_defaults(run=cmd_eval)

    pr = sub.add_parser("predict", help="class probabilities for an input (.npy or .png)")
    pr.add_argument("file", help="the .net file")
    pr.add_argument("input", help="an .npy array (one example or a batch) or a PNG image")
    pr.add_argument("--weights", required=True, help="a run directory or .safetensors file")
    pr.add_argument("--top", type=positive_int, default=10,
                    help="classes listed per example (default 10)")
    pr.add_argument("--json", action="store_true", help="print the results as JSON")
    pr.add_argument("--force", action="store_true", help="use weights of a changed .net file")
    pr.add_argument("--device", default="cpu", choices=DEVICES)
    pr.set_defaults(run=cmd_predict)


# ---------------------------------------------------------------------------------------------


def compile_model(path):
    from netlang.api import compile as compile_model
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    return compile_model(path)


def _overrides(args) -> list:
    named = [("epochs", args.epochs), ("batch_size", args.batch_size),
             ("optimizer", args.optimizer), ("schedule", args.schedule), ("seed", args.seed),
             ("val_split", args.val_split), ("early_stopping", args.early_stopping),
             ("clip_norm", args.clip_norm)]
    out = [f"{key}={value}" for key, value in named if value is not None]
    out += list(args.settings)
    if args.lr is not None:
        out.append(f"lr={args.lr}")
    return out


def cmd_train(args) -> int:
    from netlang.train.loop import TrainingInterrupted, train
    from netlang.train.overrides import split_override
    from netlang.train.progress import Progress, auto_log_every
    model = compile_model(args.file)
    overrides = _overrides(args)
    for text in overrides:
        split_override(text)  # a bad key fails before any data is loaded
    out = args.out
    if out is None and args.resume is None:
        out = os.path.join("runs", Path(args.file).stem)
    from netlang.train.overrides import apply_overrides
    epochs = apply_overrides(model.train_config, [o for o in overrides
                                                  if o.startswith("epochs=")]).epochs
    progress = Progress(enabled=not args.quiet,
                        log_every=args.log_every or auto_log_every(epochs))
    run_dir = Path(out if out is not None else args.resume)
    try:
        history, engine, config = train(
            model, data=args.data, overrides=overrides, out=out, resume=args.resume,
            force=args.force, device=args.device, limit=args.limit, normalize=args.normalize,
            samples=args.samples, progress=progress, checkpoint_every=args.checkpoint_every,
            plot=args.plot, cli=True)
    except TrainingInterrupted as stop:
        where = f"epoch {stop.epoch + 1}" if stop.checkpoint else ""
        print(f"interrupted at {where}: checkpoint saved in {run_dir}; continue with "
              f"`netlang train {args.file} --resume {run_dir}`", file=sys.stderr)
        return 130
    if history.test is not None:
        t = history.test
        parts = [f"test: loss {t['loss']:.4f}"] if "loss" in t else ["test:"]
        if "accuracy" in t:
            parts.append(f"accuracy {t['accuracy']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in t.items() if k.startswith("top_")]
        parts.append(f"({t['examples']:,} examples)")
        print("  ".join(parts))
    print(f"saved weights to {run_dir / 'weights.safetensors'}")
    return 0


def _run_info(weights) -> dict:
    from netlang.train.loop import read_run
    path = Path(weights)
    if path.is_dir():
        return read_run(path)
    if path.parent.is_dir() and path.name == "weights.safetensors":
        return read_run(path.parent)
    return {}


def load_model(args):
    """(model, run info) with the weights of `--weights` loaded."""
    model = compile_model(args.file)
    model.device = args.device
    model.load_weights(args.weights, force=args.force)
    return model, _run_info(args.weights)


def cmd_eval(args) -> int:
    from netlang.api import _split_of
    from netlang.train.loop import evaluate, prepare_data
    from netlang.train.metrics import format_confusion, top_k_values
    from netlang.train.overrides import apply_overrides
    model, run = load_model(args)
    binding = model.binding
    binding.check_single()
    config = apply_overrides(model.train_config, run.get("overrides") or [], model.graph)
    spec = args.data or run.get("data") or config.data
    if spec is None:
        raise UsageError("no data to evaluate on: pass --data (mnist, xor, blobs, spirals, "
                         "FILE.npz or FILE.csv)")
    prepared = prepare_data(spec, binding, config, limit=args.limit,
                            normalize=run.get("normalize") or "auto",
                            samples=run.get("samples"))
    arrays = _split_of(prepared, args.split)
    ks = top_k_values(config.metrics)
    if binding.head is not None:
        ks = [k for k in ks if k < binding.head.num_classes]
    result = evaluate(model.engine, binding, arrays, args.batch_size, top_k=ks, confusion=True)
    if args.json:
        print(json.dumps({"data": spec if isinstance(spec, str) else None, "split": args.split,
                          **result}))
        return 0
    print(f"{spec} {args.split}: {result['examples']:,} examples")
    if "loss" in result:
        print(f"loss      {result['loss']:.4f}")
    if "accuracy" in result:
        print(f"accuracy  {result['accuracy']:.4f} ({100 * result['accuracy']:.2f}%)")
    for key, value in result.items():
        if key.startswith("top_"):
            print(f"{key:<9} {value:.4f}")
    if "confusion" in result:
        print("confusion matrix:")
        print(format_confusion(result["confusion"]))
    return 0


def read_input(path, shape) -> "np.ndarray":
    """A batch for one model input from an .npy file or a PNG image."""
    import numpy as np
    from netlang.data import fit_to_shape
    from netlang.train.png import PNG_SIGNATURE, image_to_input, read_png
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


def saved_normalization(weights):
    """The mean/std a run standardized its inputs with, if it did."""
    from netlang.train.loop import NORMALIZATION_FILE
    from netlang.weights import load_weights
    path = Path(weights)
    directory = path if path.is_dir() else path.parent
    file = directory / NORMALIZATION_FILE
    if not file.is_file():
        return None
    params, _ = load_weights(file)
    return params


def cmd_predict(args) -> int:
    import numpy as np
    from netlang.train.loop import predict
    model, _ = load_model(args)
    binding = model.binding
    if binding.data_input is None:
        raise UsageError("this model has several data inputs; predict from Python with a dict")
    shape, _ = binding.inputs[binding.data_input]
    x = read_input(args.input, shape)
    norm = saved_normalization(args.weights)
    if norm is not None:
        x = (x - norm["mean"].reshape(shape)) / norm["std"].reshape(shape)
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
