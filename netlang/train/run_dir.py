"""A training run's directory: what is in it, and reading and writing its small files.

    run.json              how the run was started (model, data, overrides, device)
    model.net             the model's source as compiled (the main file)
    metrics.jsonl         one JSON record per epoch
    summary.json          how the run ended, and the test figures
    weights.safetensors   the final weights
    normalization.safetensors   the mean and std of `--normalize standardize`
    vocabulary.json       a text set's characters ↔ ids (netlang.data.Vocabulary)
    classes.json          the class names of an image folder, in label order
    curves.png            `--plot`
    latest, ckpt-*/       checkpoints (netlang.weights.checkpoints)
    .lock                 held by the process writing the run (netlang.train.run_lock)

Everything is written atomically, so an interrupted run leaves the previous version of each
file.  `netlang.load("run/")` compiles the `.net` file run.json names, or `model.net` when
the model was compiled from a string and no file records it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from netlang.data import Vocabulary
from netlang.data.prepare import NORMALIZE_METHODS
from netlang.errors import DataError, UsageError, WeightsError
from netlang.frontend.limits import MAX_SOURCE_BYTES
from netlang.weights import atomic_write
from netlang.weights.checkpoints import LATEST_FILE
from netlang.weights.json_fields import Fields
from netlang.weights.safe_read import (
    METRICS_CAP,
    RUN_CAP,
    check_json_depth,
    parse_json,
    read_json,
    read_text_capped,
)

METRICS_FILE = "metrics.jsonl"
FINAL_WEIGHTS = "weights.safetensors"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
NORMALIZATION_FILE = "normalization.safetensors"
PLOT_FILE = "curves.png"
SOURCE_FILE = "model.net"
VOCABULARY_FILE = "vocabulary.json"
CLASSES_FILE = "classes.json"
# What a writer killed in the middle of a write leaves behind: a checkpoint's temporary
# directory (netlang.weights.checkpoints) and a file's temporary copy (netlang.weights.atomic,
# named `.<file>.<random>.tmp`).
_LEFTOVER = re.compile(r"\.tmp-ckpt-.+|\..+\.[a-z0-9_]+\.tmp")
# A vocabulary lists each symbol once: a few KiB even for every Unicode character used.
VOCABULARY_CAP = 16 * 2**20


def check_run_info(run: Fields) -> None:
    """The fields of a run's description (run.json, and the copy in each checkpoint's state)
    have the types the code that reads them back relies on, and `normalize` is a method
    `prepare_data` knows (else the error would not name the file)."""
    for key in ("model", "source_hash", "data", "device", "engine", "init"):
        run.text(key, optional=True)
    normalize = run.text("normalize", optional=True)
    if normalize is not None and normalize not in NORMALIZE_METHODS:
        raise run.error("normalize", f"one of {', '.join(NORMALIZE_METHODS)}", normalize)
    run.integer("limit", optional=True)
    run.integer("samples", optional=True)
    run.texts("overrides", optional=True)
    compiled = run.object("compile", optional=True)   # {"seconds", "programs": {title: s}}
    if compiled is not None:
        compiled.number("seconds", low=0)
        programs = compiled.object("programs")
        for title in programs.doc:
            programs.number(title, low=0)


def read_run(out) -> dict:
    """The run.json of a run directory ({} when absent); a file that is not a regular file,
    too large, nested too deep or with a field of the wrong type is a one-line WeightsError."""
    path = Path(out) / RUN_FILE
    try:
        run = read_json(path, RUN_CAP, what="run description")
    except FileNotFoundError:
        return {}
    check_run_info(Fields(run, path))
    return run


def write_run(out, info: dict) -> None:
    """Write run.json (atomically, creating the directory): what `--resume` and
    `netlang.load` read back."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write(out / RUN_FILE, lambda f: f.write(data))


def has_run(out) -> bool:
    """Whether `out` already holds a training run, or a saved model: a committed checkpoint
    or final weights.  A run stopped before its first checkpoint holds neither: it is
    `stopped_before_checkpoint`, and a new run may start over in its place."""
    out = Path(out)
    return (out / LATEST_FILE).exists() or (out / FINAL_WEIGHTS).exists()


def stopped_before_checkpoint(out) -> bool:
    """Whether `out` holds a training run that stopped (killed, or crashed) before it
    committed a checkpoint: it wrote run.json or a log line, and no checkpoint or weights."""
    out = Path(out)
    return not has_run(out) and ((out / RUN_FILE).exists() or (out / METRICS_FILE).exists())


def clear_leftovers(out) -> None:
    """Remove what a writer killed in the middle of a write left in `out`: temporary
    checkpoint directories and temporary copies of files.  Called with the run directory
    locked (netlang.train.run_lock), when no other process can be writing them."""
    for entry in Path(out).iterdir():
        if _LEFTOVER.fullmatch(entry.name):
            _remove(entry)


def pyplot():
    """matplotlib's pyplot, drawing to files; a one-line UsageError naming the package to
    install when matplotlib is missing (a run with --plot asks for it before training)."""
    try:   # imported here: matplotlib is an optional dependency (netlang[plot])
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError:
        raise UsageError("plot=True needs matplotlib, which is not installed: "
                         "pip install 'netlang[plot]'") from None
    return matplotlib.pyplot


def plot_curves(out, records=None) -> str:
    """Write out/curves.png from the metrics log; returns a one-line message."""
    out = Path(out)
    if records is None:
        records = [_plotted(record, where) for where, record in _metrics_records(out)]
    if not records:
        return "`plot=True`: no epochs logged yet, nothing to plot"
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    metrics = [m for m in ("loss", "accuracy") if any(m in r for r in records)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for prefix, label in (("", "train"), ("val_", "validation"), ("test_", "test")):
            ys = [r.get(prefix + metric) for r in records]
            if any(y is not None for y in ys):
                ax.plot(epochs, [np.nan if y is None else y for y in ys], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    target = out / PLOT_FILE
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return f"wrote {target}"


def expected_params(graph, dtype=np.float32) -> dict:
    """{name: (shape, dtype)} of every parameter and buffer, for checking weights files."""
    out = {}
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        if data["role"] in ("param", "buffer"):
            out[data["name"]] = (tuple(data["attrs"]["shape"]), np.dtype(dtype))
    return out


def start_over(out) -> None:
    """Remove what the run that a new one starts over in `out` (after `--force`, or after
    it stopped before its first checkpoint) produced: its checkpoints, final weights, log,
    summary, curves, class names, vocabulary and normalization, so that none of it is taken
    for the new run's (which writes the last three only for data that has them).  The `latest` pointer
    goes first: a process killed during the removal leaves a run with no checkpoint, which
    starts over again."""
    out = Path(out)
    for name in (LATEST_FILE, FINAL_WEIGHTS, METRICS_FILE, SUMMARY_FILE, PLOT_FILE,
                 CLASSES_FILE, VOCABULARY_FILE, NORMALIZATION_FILE):
        (out / name).unlink(missing_ok=True)
    for entry in out.iterdir():
        if entry.name.startswith("ckpt-") and entry.is_dir():
            _remove(entry)


def _remove(entry: Path) -> None:
    """Delete a file or a directory tree (a symlink is removed, never followed)."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def append_metrics(out, record: dict) -> None:
    """Add one epoch's record to metrics.jsonl."""
    with open(Path(out) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")


def _metrics_records(out) -> list[tuple[str, object]]:
    """`(file:line, record)` of each non-blank line of metrics.jsonl ([] when there is
    none); a line that is not JSON, or nested too deep, is a one-line WeightsError."""
    path = Path(out) / METRICS_FILE
    try:
        text = read_text_capped(path, METRICS_CAP, what="metrics log")
    except FileNotFoundError:
        return []
    return [(f"{path}:{number}", parse_json(line, f"{path}:{number}"))
            for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _plotted(record, where: str) -> dict:
    """A metrics record with the fields plot_curves draws checked: an epoch number, and
    numbers (NaN and infinity included: a diverged run draws its curve too) or null."""
    fields = Fields(record, where)
    fields.integer("epoch", low=1)
    for prefix in ("", "val_", "test_"):
        for metric in ("loss", "accuracy"):
            fields.number(prefix + metric, optional=True, finite=False)
    return record


def trim_metrics(out, epoch: int) -> None:
    """Drop the records of epochs after `epoch` from metrics.jsonl: a resumed run logged them
    after its last checkpoint, before it was interrupted, and logs them again.  A line that
    is not a record with an integer epoch (a line cut short by a crash) is dropped too."""
    path = Path(out) / METRICS_FILE
    try:
        text = read_text_capped(path, METRICS_CAP, what="metrics log")
    except FileNotFoundError:
        return
    kept = []
    for line in text.splitlines():
        try:
            record = parse_json(line, str(path))
        except WeightsError:   # a line cut short by a crash, or garbage: dropped
            continue
        logged = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(logged, int) and not isinstance(logged, bool) and logged <= epoch:
            kept.append(line)
    data = "".join(line + "\n" for line in kept).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_summary(out, summary: dict) -> None:
    """Write summary.json: how the run ended (epochs, steps, early stopping, test figures)."""
    data = (json.dumps(summary, indent=2) + "\n").encode("utf-8")
    atomic_write(Path(out) / SUMMARY_FILE, lambda f: f.write(data))


def save_source(out, graph) -> None:
    """Write the model's main source text to model.net, so that a model compiled from a
    string (which no .net file records) can be loaded from its run directory again."""
    text = graph.graph["sources"][graph.graph["path"]]
    data = text.encode("utf-8")
    atomic_write(Path(out) / SOURCE_FILE, lambda f: f.write(data))


def saved_source(out) -> str | None:
    """The source text `save_source` wrote into `out`, or None when there is none."""
    try:
        return read_text_capped(Path(out) / SOURCE_FILE, MAX_SOURCE_BYTES,
                                what="saved model source")
    except FileNotFoundError:
        return None


def save_vocabulary(out, vocabulary: Vocabulary) -> None:
    """Write vocabulary.json: how the run read its text set, so that evaluating on another
    file (and sampling) maps characters to ids as training did."""
    data = vocabulary.to_json().encode("utf-8")
    atomic_write(Path(out) / VOCABULARY_FILE, lambda f: f.write(data))


def saved_vocabulary(weights) -> Vocabulary | None:
    """The vocabulary a run saved: `weights` is its directory, or a weights file in it; None
    when there is none (a run on other data, or a weights file of its own)."""
    path = Path(weights)
    file = (path if path.is_dir() else path.parent) / VOCABULARY_FILE
    try:
        text = read_text_capped(file, VOCABULARY_CAP, error=DataError, what="vocabulary")
    except FileNotFoundError:
        return None
    check_json_depth(text, str(file), error=DataError)   # from_json's parser has no bound
    return Vocabulary.from_json(text, what=str(file))


def save_class_names(out, names) -> None:
    """Write classes.json: the names of the labels 0, 1, ... (an image folder's class
    folders), which `netlang predict` prints instead of indices."""
    data = (json.dumps({"classes": list(names)}, indent=2) + "\n").encode("utf-8")
    atomic_write(Path(out) / CLASSES_FILE, lambda f: f.write(data))


def saved_class_names(weights) -> tuple[str, ...] | None:
    """The class names a run saved: `weights` is its directory, or a weights file in it; None
    when there are none (a run on data without names, or a weights file of its own)."""
    path = Path(weights)
    file = (path if path.is_dir() else path.parent) / CLASSES_FILE
    try:
        document = read_json(file, VOCABULARY_CAP, error=DataError, what="class names file")
    except FileNotFoundError:
        return None
    names = document.get("classes") if isinstance(document, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{file}: `classes` must be a list of names")
    if len(set(names)) != len(names):   # a prediction named twice could be either class
        twice = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{file}: `classes` must name each class once, not `{twice}` twice")
    return tuple(names)
