"""`netlang eval FILE --weights RUN`: loss, accuracy and confusion matrix of trained weights,
and each head's own loss and metric for a model with several losses.

(The module is not named `eval`, which would shadow the builtin inside this package.)
"""

from __future__ import annotations

import argparse
import json
import sys

from netlang.api import split_of
from netlang.cli.common import DATA_HELP, data_set, positive_int
from netlang.cli.trained import add_weights_arguments, load_model
from netlang.data.text import with_bits_per_character
from netlang.errors import UsageError
from netlang.train.evaluation import check_has_loss, evaluate
from netlang.train.metrics import format_confusion, top_k_values
from netlang.train.overrides import apply_overrides
from netlang.train.prepared_data import prepare_data
from netlang.train.rbm_report import reconstruction_errors, write_rbm_pictures
from netlang.train.run_dir import saved_vocabulary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `netlang eval`."""
    parser.add_argument("file", help="the .net file")
    add_weights_arguments(parser)
    parser.add_argument("--data", type=data_set,
                        help="data set (default: the run's, else the train section's)")
    parser.add_argument("--split", default="test", choices=("test", "train", "val"))
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--limit", type=positive_int, metavar="N")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--pictures", metavar="DIR",
                        help="write pictures of each RBM layer into DIR: filters_LAYER.png "
                             "(its hidden units' weights) and gibbs_LAYER.png (Gibbs chains "
                             "from the split's first examples)")


def run(args: argparse.Namespace) -> int:
    """Evaluate on a split of the data the run trained on (or `--data`), as the run
    prepared it (its overrides, normalisation and synthetic size)."""
    model, run_info = load_model(args)
    binding = model.binding
    check_has_loss(binding, args.file)
    config = apply_overrides(model.train_config, run_info.get("overrides") or [], model.graph)
    spec = args.data or run_info.get("data") or config.data
    if spec is None:
        raise UsageError(f"no data to evaluate on: pass --data ({DATA_HELP})")
    prepared = prepare_data(spec, binding, config, limit=args.limit,
                            normalize=run_info.get("normalize") or "auto",
                            samples=run_info.get("samples"),
                            vocabulary=saved_vocabulary(args.weights))
    arrays = split_of(prepared, args.split)
    ks = top_k_values(config.metrics)
    if binding.head is not None:
        ks = [k for k in ks if k < binding.head.num_classes]
    # A text set's confusion matrix (a row per character) is too wide to read.
    result = evaluate(model.engine, binding, arrays, args.batch_size, top_k=ks,
                      confusion=not prepared.per_character, per_head=True)
    if prepared.per_character:
        result = with_bits_per_character(result)
    reconstruction = reconstruction_errors(model.engine, model.graph, arrays, args.batch_size)
    if reconstruction:   # a model with RBM layers
        result["reconstruction_error"] = reconstruction
    if args.pictures is not None:
        for path in write_rbm_pictures(args.pictures, model.engine, model.graph, arrays):
            print(f"wrote {path}", file=sys.stderr)
    classes = _class_names(prepared, result)
    if args.json:
        named = {"classes": list(classes)} if classes is not None else {}
        print(json.dumps({"data": spec if isinstance(spec, str) else None, "split": args.split,
                          **result, **named}))
        return 0
    heads = result["heads"]
    print(f"{spec} {args.split}: {result['examples']:,} examples")
    if "loss" in result:
        summed = f"  ({_weighted_sum(heads)})" if len(heads) > 1 else ""
        print(f"loss      {result['loss']:.4f}{summed}")
    for phase, loss in result.get("phases", {}).items():   # a model with training phases
        print(f"loss of phase {phase}: {loss:.4f}")
    for layer, error in result.get("reconstruction_error", {}).items():
        print(f"reconstruction error of {layer}: {error:.5f} (mean squared error per visible "
              f"unit, one up-down pass)")
    if "bpc" in result:
        print(f"bpc       {result['bpc']:.4f} (bits per character; the loss is in nats per "
              f"character)")
    if len(heads) > 1:
        print(_head_table(heads))
    else:
        if "accuracy" in result:
            print(f"accuracy  {result['accuracy']:.4f} ({100 * result['accuracy']:.2f}%)")
        for head in heads.values():
            if "mse" in head:
                print(f"mse       {head['mse']:.4f}")
    main = next((name for name, h in binding.heads.items() if h is binding.head), None)
    of_main = f" ({main})" if len(heads) > 1 and main is not None else ""
    for key, value in result.items():
        if key.startswith("top_"):
            print(f"{key + of_main:<9} {value:.4f}")
    if "confusion" in result:
        print(f"confusion matrix{of_main}:")
        print(format_confusion(result["confusion"], classes))
    return 0


def _class_names(prepared, result: dict) -> tuple | None:
    """The names of the classes (an image folder's), when the data has one per row of the
    confusion matrix; None: the classes are shown by index."""
    names = prepared.class_names
    if names is None or len(names) != len(result.get("confusion") or ()):
        return None
    return names


def _weighted_sum(heads: dict) -> str:
    """How the loss sums the heads' losses: `digit_logits + 0.5 × odd_prob`."""
    return " + ".join(name if head["weight"] == 1 else f"{head['weight']:g} × {name}"
                      for name, head in heads.items())


def _head_table(heads: dict) -> str:
    """One line per head: its name, loss op and target, its own loss and metric."""
    rows = [("head", "loss op", "loss", "metric")]
    for name, head in heads.items():
        loss = f"{head['loss']:.4f}" if "loss" in head else "-"
        if "accuracy" in head:
            metric = f"accuracy {head['accuracy']:.4f} ({100 * head['accuracy']:.2f}%)"
        elif "mse" in head:
            metric = f"mse {head['mse']:.4f}"
        else:
            metric = "-"
        target = f"({head['target']})" if head["target"] else ""
        rows.append((name, f"{head['op']}{target}", loss, metric))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                     f"{row[3]}".rstrip() for row in rows)
