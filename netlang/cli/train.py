"""`netlang train FILE`: train a model, writing weights, checkpoints and a metrics log.

Ctrl-C (or SIGTERM) saves a checkpoint and exits with status 130 (143), naming the command
that resumes; after the final checkpoint, the run is complete: it says so in one line, with
the same status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from netlang.cli import in_flag_words
from netlang.cli.common import DATA_HELP, NORMALIZE, add_device, compile_model, data_set, number, positive_int
from netlang.ir.train_config import IMAGE_SIZES
from netlang.train.distributed import RefusedOnEveryProcess, world
from netlang.train.loop import train
from netlang.train.overrides import apply_overrides, split_override
from netlang.train.progress import Progress, auto_log_every
from netlang.train.trainer import TrainingInterrupted

# A command stopped by a signal exits with 128 plus the signal's number, as the shell reports a
# process the signal killed: 130 after Ctrl-C, 143 after SIGTERM.
SIGNALLED = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang train`: one per common train-section setting, and `--set`."""
    parser.description = (
        "Train a .net model. Any train-section setting can be overridden with a named flag or "
        "with --set key=value (train-section syntax). An autoencoder (a loss comparing an "
        "output with an input) also gets reconstructions.png in the run directory: test "
        "inputs over their reconstructions.")
    parser.add_argument("file", help="the .net file")
    parser.add_argument("--data", type=data_set,
                        help=f"{DATA_HELP} (default: the train section's `data`)")
    parser.add_argument("--epochs", type=positive_int, help="passes over the training set")
    parser.add_argument("--batch-size", type=positive_int, help="examples per step")
    parser.add_argument("--lr", type=number, help="learning rate (keeps the optimiser)")
    parser.add_argument("--optimizer", help="e.g. sgd, adam or \"adam(lr=1e-3, beta2=0.99)\"")
    parser.add_argument("--schedule", help="e.g. \"step(every=5, gamma=0.5)\", cosine, "
                                           "\"warmup(epochs=2)\"")
    parser.add_argument("--seed", type=int, help="seed for weights, shuffling and dropout")
    parser.add_argument("--val-split", type=number,
                        help="fraction of the training set held out for validation")
    parser.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                        help="stop after this many epochs without validation improvement")
    parser.add_argument("--clip-norm", type=number, help="clip the global gradient norm")
    parser.add_argument("--gradient-shards", type=positive_int, metavar="S",
                        help="sum each step's gradient from S shards of the batch in a fixed "
                             "tree: mpiexec -n K (K dividing S) then gives one process's bits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings",
                        help="override any train-section setting, e.g. --set "
                             "\"regularize=l2(1e-4)\" (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<model name>)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    parser.add_argument("--init", metavar="RUN",
                        help="start from the weights of another run (a run directory or "
                             ".safetensors file, of any model): each layer held there under "
                             "the same name and shapes is copied (transfer learning)")
    parser.add_argument("--init-layers", metavar="A,B", dest="init_layers",
                        help="with --init: copy these layers alone; each must fit")
    parser.add_argument("--force", action="store_true",
                        help="resume although the .net file changed, or overwrite an "
                             "existing run")
    add_device(parser, help="cpu (default; compiled with Numba), cuda, auto or reference "
                            "(NumPy); --resume keeps the run's device unless given")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="use only the first N examples of each split")
    parser.add_argument("--samples", type=positive_int,
                        help="size of a synthetic data set (xor, blobs, spirals, first_element)")
    parser.add_argument("--image-size", choices=IMAGE_SIZES,
                        help="images of a folder:PATH set of another size than the model "
                             "input: check (refuse them, the default) or resize them")
    parser.add_argument("--normalize", choices=NORMALIZE, default="auto",
                        help="input scaling (auto: uint8 images to [0, 1])")
    parser.add_argument("--plot", action="store_true",
                        help="write curves.png (needs matplotlib)")
    parser.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                        help="save a checkpoint at the end of an epoch at most this often "
                             "(always at the end and on Ctrl-C)")
    parser.add_argument("--log-every", type=positive_int, metavar="EPOCHS",
                        help="print every Nth epoch (default: every epoch, or ~50 lines for "
                             "long runs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The train-section overrides the flags ask for, as `key=value` strings (named flags
    first, then `--set`s, then `--lr`, which run.json records in this order)."""
    named = [("epochs", args.epochs), ("batch_size", args.batch_size),
             ("optimizer", args.optimizer), ("schedule", args.schedule), ("seed", args.seed),
             ("val_split", args.val_split), ("early_stopping", args.early_stopping),
             ("clip_norm", args.clip_norm), ("gradient_shards", args.gradient_shards),
             ("image_size", args.image_size)]
    out = [f"{key}={value}" for key, value in named if value is not None]
    out += list(args.settings)
    if args.lr is not None:
        out.append(f"lr={args.lr}")
    return out


def run(args: argparse.Namespace) -> int:
    """Train, print the progress and the test figures; 130 after Ctrl-C, 143 after SIGTERM."""
    model = compile_model(args.file)
    overrides = overrides_of(args)
    for text in overrides:
        split_override(text)  # a bad key fails before any data is loaded
    out = args.out
    if out is None and args.resume is None:
        out = os.path.join("runs", Path(args.file).stem)
    epochs = apply_overrides(model.train_config, [o for o in overrides
                                                  if o.startswith("epochs=")]).epochs
    progress = Progress(enabled=not args.quiet,
                        log_every=args.log_every or auto_log_every(epochs),
                        wording=lambda text: in_flag_words(text, args))
    run_dir = Path(out if out is not None else args.resume)
    try:
        history, _, _ = train(
            model, data=args.data, overrides=overrides, out=out, resume=args.resume,
            force=args.force, device=args.device, limit=args.limit, normalize=args.normalize,
            samples=args.samples, progress=progress, checkpoint_every=args.checkpoint_every,
            plot=args.plot, init=args.init, init_layers=args.init_layers)
    except RefusedOnEveryProcess:
        if not prints_here():   # said once, by rank 0
            return 1
        raise
    except TrainingInterrupted as stop:
        if not prints_here():
            return SIGNALLED + stop.signal
        where = f"epoch {stop.epoch + 1}" if stop.checkpoint else ""
        print(f"interrupted at {where}: checkpoint saved in {run_dir}; continue with "
              f"`netlang train {args.file} --resume {run_dir}`", file=sys.stderr)
        return SIGNALLED + stop.signal
    status = 0 if history.late_signal is None else SIGNALLED + history.late_signal
    if not prints_here():
        return status
    if history.test is not None:
        print(test_line(history.test))
    print(f"saved weights to {run_dir / 'weights.safetensors'}")
    if history.late_signal is not None:
        print("interrupted after the final checkpoint; the run is complete", file=sys.stderr)
    return status


def prints_here() -> bool:
    """Whether this process prints: the only one, or rank 0 of several under MPI."""
    ranks = world()
    return ranks is None or ranks.root


def test_line(test: dict) -> str:
    """The one line of test-set figures printed after training."""
    parts = [f"test: loss {test['loss']:.4f}"] if "loss" in test else ["test:"]
    if "bpc" in test:
        parts.append(f"bpc {test['bpc']:.4f}")
    if "accuracy" in test:
        parts.append(f"accuracy {test['accuracy']:.4f}")
    parts += [f"{k} {v:.4f}" for k, v in test.items() if k.startswith("top_")]
    parts.append(f"({test['examples']:,} examples)")
    return "  ".join(parts)
