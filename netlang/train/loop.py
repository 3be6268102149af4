"""A whole training run, as `netlang train` and `Model.fit` use it: `train()`.

`train()` puts the pieces together: it binds the data to the model's inputs
(`netlang.train.binding`), loads and splits a data set (`netlang.train.prepared_data`), makes
or restores the engine, runs the `Trainer` (`netlang.train.trainer`), evaluates the test set
(`netlang.train.evaluation`) and writes the run directory (`netlang.train.run_dir`).

The names other modules import from here (`evaluate`, `predict`, `bind`, `read_run`, ...) are
re-exported until their importers move to the modules that define them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from netlang.data.text import with_bits_per_character
from netlang.errors import UsageError
from netlang.ir.train_config import TrainConfig
from netlang.runtime import make_engine
from netlang.runtime.compilation import compile_ahead, stop_ahead
from netlang.train.binding import Binding, as_arrays, bind
from netlang.train.distributed import across_processes, check_batch_size
from netlang.train.evaluation import evaluate, evaluated_nodes, predict
from netlang.train.overrides import apply_overrides
from netlang.train.phased import PhasedTrainer, has_phases, phase_runs
from netlang.train.prepared_data import PreparedData, prepare_data, split_arrays
from netlang.train.progress import Progress
from netlang.train.rbm_report import write_rbm_pictures
from netlang.train.reconstructions import write_reconstructions, write_samples
from netlang.train.resume_state import check_training_state
from netlang.train.run_dir import (
    FINAL_WEIGHTS,
    NORMALIZATION_FILE,
    clear_leftovers,
    expected_params,
    has_run,
    plot_curves,
    pyplot,
    read_run,
    save_class_names,
    save_source,
    save_vocabulary,
    saved_vocabulary,
    start_over,
    stopped_before_checkpoint,
    write_run,
    write_summary,
)
from netlang.train.run_lock import RunLock
from netlang.train.shards import gradient_shards, prepare_for_shards
from netlang.train.trainer import History, Trainer, TrainingInterrupted, evaluation_batch
from netlang.train.transfer import transfer_weights
from netlang.version import __version__
from netlang.weights import load_checkpoint, save_weights

__all__ = [
    "train", "engine_settings", "Binding", "bind", "as_arrays", "evaluate", "predict",
    "PreparedData", "prepare_data", "split_arrays", "read_run", "write_run", "FINAL_WEIGHTS",
    "NORMALIZATION_FILE", "expected_params", "plot_curves", "History", "Trainer",
    "TrainingInterrupted",
]


def engine_settings(config: TrainConfig) -> tuple:
    """The settings an engine is built with; other settings can change between fits (a
    model keeps its engine, and its optimiser state, while these stay the same)."""
    return (config.optimizer, list(config.regularizers), config.clip_norm, tuple(config.freeze))


def holding_the_run_directory(run):
    """`run` (`train`) with the directory it writes locked for its whole length (RunLock),
    and what a writer killed there left cleared first: `out`, or the run `resume` continues
    in place.  Under MPI only rank 0 writes, so only it locks."""
    @functools.wraps(run)
    def locked(model, *, out=None, resume=None, ranks=None, **options):
        directory = out if out is not None else resume
        if directory is None or (ranks is not None and not ranks.root) \
                or (out is None and not Path(resume).is_dir()):   # `run` refuses it, in a line
            return run(model, out=out, resume=resume, ranks=ranks, **options)
        with RunLock(directory):
            clear_leftovers(directory)
            return run(model, out=out, resume=resume, ranks=ranks, **options)
    return locked


def ending_compilation_ahead(run):
    """`run` (train), after which the helpers that compile its programs ahead
    (`_compile_ahead`) are ended, whatever happened: an error loading the data, or
    an interruption, leaves none behind in the calling process."""
    @functools.wraps(run)
    def ending(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            stop_ahead()
    return ending


def _compile_ahead(engine, binding: Binding, config: TrainConfig, one_process: bool, *,
                   evaluating: bool) -> None:
    """Start compiling, in helper processes, the programs a run of `engine` calls: its
    training step and, when it will have a set to validate on (`evaluating`: a data set's
    test split, a validation split or set), the evaluation of the predictions and losses; for
    batches of the configured size (the same compiled code serves any size).  Only for a CPU
    run of one process and one training step (no phases, no adversarial steps), whose
    programs these are; a guess that proves wrong costs helper time only (the set holds no
    labels: see runtime/compilation.py's `compile_ahead`)."""
    if not one_process or engine.name != "cpu" or config.adversarial is not None:
        return
    evaluated = tuple(evaluated_nodes(binding, dict.fromkeys(binding.inputs))) \
        if evaluating else ()
    compile_ahead(engine.compilations(config.batch_size, evaluated, evaluation_batch(config)))


@across_processes
@holding_the_run_directory
@ending_compilation_ahead
def train(model, *, data=None, x=None, y=None, validation_data=None, overrides=(), out=None,
          resume=None, force: bool = False, device: str | None = None,
          limit: int | None = None,
          normalize: str = "auto", samples: int | None = None, data_dir=None,
          progress: Progress | None = None, engine=None, checkpoint_every: float = 30.0,
          plot: bool = False, shuffle: bool = True, on_step=None,
          evaluate_test: bool = True, dtype: str = "float32", init=None, init_layers=None,
          ranks=None):
    """One training run of `model` (a netlang.api.Model); returns (history, engine, config).

    Data comes from `data` (a set name, a path or a Dataset; falls back to the train
    section's `data`) or from arrays `x`/`y`.  `out` is the run directory (weights,
    checkpoints, metrics.jsonl); `resume` a run directory to continue from.  `dtype` is the
    float width of an engine made here, and of arrays `x`/`y` (data sets are converted as
    the engine takes each batch).  `init` (a run directory or weights file) starts the
    weights from another run's layers, `init_layers` naming which (netlang.train.transfer).
    Under an MPI launcher with several processes, they train together (`ranks`, given by
    `across_processes`): only rank 0 prints and writes files, and an error in one ends them all.
    """
    if ranks is not None and not ranks.root:
        progress, plot = None, False
    progress = progress or Progress(enabled=False)
    if plot:
        pyplot()   # a missing matplotlib is said now, not after the training it would end
    binding = bind(model.graph)
    if not binding.losses:
        raise UsageError(f"{model.path}: this model has no loss to train: add a `train` section "
                         f"with `loss ...`")
    checkpoint = None
    saved = {}
    overrides = list(overrides)
    if init is None and init_layers is not None:
        raise UsageError("`init_layers=` picks layers of `init=`, the weights to start from: "
                         "pass `init=` too")
    if init is not None and resume is not None:
        raise UsageError("`init=` starts a run from another run's weights and `resume=` "
                         "continues a run from its own: pass one of them")
    if init is not None and out is not None \
            and Path(out).resolve() in (Path(init).resolve(), *Path(init).resolve().parents):
        raise UsageError(f"`init=` reads {init}, inside the run directory {out} that this run "
                         f"writes: give the new run another `out=`")
    if resume is not None:
        resume = Path(resume)
        if stopped_before_checkpoint(resume):   # killed before it saved anything to resume
            progress.message(f"{resume}: the run stopped before its first checkpoint; "
                             f"training it again from the beginning")
            saved = read_run(resume)
        else:
            checkpoint = load_checkpoint(resume, source_hash=model.source_hash, force=force,
                                         expected=expected_params(model.graph),
                                         check_state=check_training_state)
            saved = dict(checkpoint.state.get("run") or {})
        overrides = list(saved.get("overrides") or []) + overrides
        data = data if data is not None or x is not None else saved.get("data")
        limit = limit if limit is not None else saved.get("limit")
        samples = samples if samples is not None else saved.get("samples")
        if normalize in (None, "auto"):
            normalize = saved.get("normalize") or "auto"
        out = Path(out) if out is not None else resume
        device = device or saved.get("device")
    device = device or "cpu"
    if device == "cuda":   # before the data is loaded: no GPU is a one-line error at once
        # Imported here: the CUDA runtime, and the code generators it brings, load only for
        # a CUDA run.
        from netlang.runtime.cuda import cuda_module, use_gpu_of_process
        cuda_module()
        if ranks is not None:   # one process per GPU, before anything is put on one
            use_gpu_of_process(ranks.rank)
    config = apply_overrides(model.train_config, overrides, model.graph)
    shards = gradient_shards(config, ranks)   # a one-line refusal before the data is loaded
    if ranks is not None:
        check_batch_size(ranks, config.batch_size)
        if not ranks.root:
            out = None
    if out is not None:
        out = Path(out)
        if checkpoint is None and has_run(out):
            if not force:
                raise UsageError(f"{out} already holds a training run: continue it with "
                                 f"resume=True, or pass force=True to start over")
            start_over(out)
        elif checkpoint is None and stopped_before_checkpoint(out):
            if resume is None or out != resume:   # a resumed one said so above
                progress.message(f"{out}: the run there stopped before its first checkpoint; "
                                 f"starting over")
            start_over(out)

    if x is not None and (isinstance(x, str) or hasattr(x, "x_train")):
        data, x = x, None   # a data set's name or a Dataset passed as `x`
    if x is None and data is None and config.data is None:
        raise UsageError("no training data: pass `data=` (mnist, xor, blobs, spirals, "
                         "first_element, FILE.npz, FILE.csv, text:FILE.txt or "
                         "folder:PATH) or add "
                         "`data ...` to the train section")

    # Engine.
    if checkpoint is not None:
        engine = make_engine(model.graph, config, checkpoint.params, seed=config.seed,
                             device=device, dtype=dtype)
    elif engine is None:
        engine = make_engine(model.graph, config, seed=config.seed, device=device, dtype=dtype)
    # Weights from another run first: the phases' engines and optimisers hold these arrays.
    transfer = None
    if init is not None:
        transfer = transfer_weights(model.graph, engine.params, init, init_layers)
    # A file with named train sections: one engine per phase steps, over the same parameters;
    # the model's engine evaluates.
    runs = phase_runs(model.graph, config, lambda graph, settings, shared: make_engine(
        graph, settings, shared, seed=config.seed, device=device, dtype=dtype),
        engine.params) if has_phases(model.graph) else None
    prepare_for_shards(ranks, shards, engine, runs is not None, config.adversarial is not None)
    # The programs compile in helper processes while the data loads: a cold cache's compile
    # time spent beside it, not after it (the first step waits for what is left).
    _compile_ahead(engine, binding, config, runs is None and shards.count == 1,
                   evaluating=x is None or validation_data is not None or bool(config.val_split))

    # Data.
    if x is not None:
        train_arrays = as_arrays(binding, x, y, what="training data", dtype=dtype)
        prepared = PreparedData(train_arrays, None, None, "arrays", binding.num_classes)
        if validation_data is None and config.val_split:
            prepared.train, prepared.val = split_arrays(train_arrays, config.val_split,
                                                        config.seed)
        spec = None
    else:
        spec = data if data is not None else config.data
        prepared = prepare_data(spec, binding, config, limit=limit, normalize=normalize,
                                samples=samples, data_dir=data_dir,
                                vocabulary=saved_vocabulary(resume) if resume else None)
    if validation_data is not None:
        if isinstance(validation_data, dict):
            prepared.val = as_arrays(binding, validation_data, what="validation data",
                                    dtype=dtype)
        else:
            vx, vy = validation_data
            prepared.val = as_arrays(binding, vx, vy, what="validation data", dtype=dtype)

    run_info = {"model": os.path.abspath(model.path) if not model.path.startswith("<")
                else model.path, "source_hash": model.source_hash,
                "data": spec if isinstance(spec, str) else None, "limit": limit,
                "samples": samples, "normalize": normalize, "overrides": overrides,
                "device": device, "engine": engine.name}
    if transfer is not None:
        run_info["init"] = str(transfer.source)
    progress.message(f"training {Path(model.path).name} on the {engine.name} engine")
    for line in transfer.lines(config.freeze) if transfer is not None else ():
        progress.message(line)
    for note in prepared.notes:
        progress.message(note)
    options = dict(source_hash=model.source_hash, out=out, progress=progress,
                   run_info=run_info, checkpoint_every=checkpoint_every, shuffle=shuffle,
                   on_step=on_step, per_character=prepared.per_character,
                   input_range=prepared.value_range,
                   weights_metadata={"model": str(run_info["model"]),
                                     "netlang_version": __version__}, ranks=ranks)
    trainer = PhasedTrainer(engine, runs, binding, config, **options) if runs is not None \
        else Trainer(engine, binding, config, **options)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        trainer.trim_log()
        if trainer.finished and not trainer.stopped_early and \
                trainer.config.epochs > trainer.epoch:
            trainer.finished = False  # resumed with more epochs than the run had
        if trainer.finished:
            progress.message(f"{resume}: training already finished at epoch {trainer.epoch}"
                             + (" (stopped early)" if trainer.stopped_early else
                                "; pass `epochs=N` to train longer"))
        else:
            progress.message(f"resuming {resume} at epoch {trainer.epoch + 1}"
                             + (f", step {trainer.batch + 1} of the epoch" if trainer.batch
                                else ""))
    if out is not None:
        write_run(out, run_info)   # run.json: the model, the data, the device
        save_source(out, model.graph)
        if prepared.vocabulary is not None:
            save_vocabulary(out, prepared.vocabulary)
        if prepared.class_names is not None:
            save_class_names(out, prepared.class_names)
        if prepared.normalization is not None:
            save_weights(out / NORMALIZATION_FILE, prepared.normalization,
                         source_hash=model.source_hash)
    val, val_name = prepared.val, "val"
    if val is None and prepared.test is not None:
        val, val_name = prepared.test, "test"
    try:
        history = trainer.fit(prepared.train, val, val_name=val_name)
    finally:
        # The engine outlives the run (`Model.gradients` after `fit`): its gradient passes
        # are one process's again.
        engine.statistics_across_processes = False
    history.class_names = prepared.class_names
    # The run is complete (its final checkpoint saved): a signal from here on cannot cut it
    # short, and waits for the test figures and the summary (a second one stops at once).
    with trainer.deferred_signals():
        if evaluate_test and prepared.test is not None:
            history.test = trainer.evaluate(prepared.test, confusion=True)
            if prepared.per_character:
                history.test = with_bits_per_character(history.test)
        if out is not None:
            summary = {"epochs": trainer.epoch, "steps": trainer.step,
                       "stopped_early": trainer.stopped_early,
                       "best_epoch": trainer.best_epoch, "data": run_info["data"]}
            if history.test is not None:
                summary["test"] = history.test
            write_summary(out, summary)
            # Autoencoders get reconstructions, generative models samples.
            pictured = write_reconstructions(out, engine, model.graph, prepared)
            if pictured is not None:
                progress.message(f"wrote {pictured}")
            for pictured in write_samples(out, engine, model.graph, binding):
                progress.message(f"wrote {pictured}")
            # RBM layers: their filters and Gibbs chains.
            pictured_set = next((a for a in (prepared.test, prepared.val, prepared.train) if a),
                                None)
            if pictured_set is not None:
                for pictured in write_rbm_pictures(out, engine, model.graph, pictured_set):
                    progress.message(f"wrote {pictured}")
            if plot:
                progress.message(plot_curves(out))
    if trainer.stop_requested:
        history.late_signal = trainer.stop_signal
    return history, engine, config
