"""`netlang attack FILE --weights RUN --method fgsm|pgd --eps E`: the accuracy of trained
weights on clean inputs and on adversarial examples made from them (netlang.attack)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from netlang.api import split_of
from netlang.attack import Attacker, METHODS, PGD_STEPS, PGD_STEP_FACTOR
from netlang.cli.common import DATA_HELP, data_set, number, positive_int
from netlang.cli.trained import add_weights_arguments, load_model
from netlang.errors import UsageError
from netlang.train.overrides import apply_overrides
from netlang.train.prepared_data import prepare_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang attack`."""
    parser.description = (
        "Move each input by at most EPS per value along the sign of the loss gradient "
        "(FGSM: one step; PGD: several, from a random start, kept within EPS), keeping it in "
        "its valid range, and report the accuracy before and under the attack.")
    parser.add_argument("file", help="the .net file")
    add_weights_arguments(parser)
    parser.add_argument("--data", type=data_set,
                        help=f"{DATA_HELP} (default: the run's, else the train section's)")
    parser.add_argument("--split", default="test", choices=("test", "train", "val"))
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--eps", type=number, required=True,
                        help="the largest change of each input value")
    parser.add_argument("--steps", type=positive_int,
                        help=f"PGD's steps (default {PGD_STEPS})")
    parser.add_argument("--step-size", type=number,
                        help=f"PGD's step (default {PGD_STEP_FACTOR} × eps / steps)")
    parser.add_argument("--clip", metavar="LO,HI",
                        help="the inputs' valid range (default: the data set's known range, "
                             "[0,1] for images scaled from uint8 such as MNIST; `none`: no "
                             "clipping)")
    parser.add_argument("--seed", type=int, default=0, help="PGD's random start")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="attack only the first N examples")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("-o", "--output", metavar="FILE.npy",
                        help="write the attacked inputs (float32, one example per row)")


def clip_range(text: str | None, known) -> tuple | None:
    """`--clip`'s range: `LO,HI`, `none`, or (not given) the data set's known range."""
    if text is None:
        return known
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise UsageError(f"--clip {text}: expected LO,HI (such as 0,1) or none") from None
    return low, high


def run(args: argparse.Namespace) -> int:
    """Attack a split of the data the run trained on (or `--data`), prepared as the run
    prepared it; print the accuracies; write the attacked inputs with `-o`."""
    if args.output is not None and Path(args.output).suffix.lower() != ".npy":
        raise UsageError(f"-o {args.output}: the attacked inputs are written as an .npy array "
                         f"(end it in .npy)")
    model, run_info = load_model(args)
    config = apply_overrides(model.train_config, run_info.get("overrides") or [], model.graph)
    spec = args.data or run_info.get("data") or config.data
    if spec is None:
        raise UsageError(f"no data to attack: pass --data ({DATA_HELP})")
    prepared = prepare_data(spec, model.binding, config, limit=args.limit,
                            normalize=run_info.get("normalize") or "auto",
                            samples=run_info.get("samples"))
    arrays = split_of(prepared, args.split)
    clip = clip_range(args.clip, prepared.value_range)
    attacker = Attacker(model.engine, model.graph, model.binding)
    result = attacker.run(arrays, method=args.method, eps=float(args.eps), steps=args.steps,
                          step_size=None if args.step_size is None else float(args.step_size),
                          clip=clip, batch_size=args.batch_size, seed=args.seed)
    if args.output is not None:
        np.save(args.output, result.adversarial.astype(np.float32))
    if args.json:
        print(json.dumps({"data": spec if isinstance(spec, str) else None, "split": args.split,
                          **result.figures()}))
        return 0
    settings = f"{result.method} eps {result.eps:g}"
    if result.method == "pgd":
        settings += f", {result.steps} steps of {result.step_size:g}"
    kept = (f"inputs kept in [{result.clip[0]:g}, {result.clip[1]:g}]" if result.clip
            else "inputs not clipped: the data has no known range (--clip LO,HI sets one)")
    print(f"{spec} {args.split}: {result.examples:,} examples; {settings}; {kept}")
    print(f"accuracy              {result.accuracy:.4f} ({100 * result.accuracy:.2f}%)")
    print(f"adversarial accuracy  {result.adversarial_accuracy:.4f} "
          f"({100 * result.adversarial_accuracy:.2f}%)")
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0
