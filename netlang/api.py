"""The public Python surface: `netlang.compile(...)` and the `Model` it returns."""

from __future__ import annotations

import os

from netlang.bench import bench
from netlang.ir.graph import Graph
from netlang.config import timed
from netlang.data.text import with_bits_per_character
from netlang.lower import lower_source
from netlang.passes import after_pass
from netlang.data.text import Vocabulary
from netlang.runtime import check_device
from netlang.saliency import saliency
from netlang.sampling import TextModel, TextSampler
from netlang.summary import Summary, summarize


class Model:
    """A compiled `.net` model: its graph IR, shapes and summary, and its weights.

    The weights live in an execution engine (`netlang.runtime.make_engine`) that is
    created on first use, seeded by the train section's `seed`: `compile` stays
    fast and never starts NumPy kernels or Numba.  See docs/training.md.
    """

    def __init__(self, graph: Graph, path: str, *, device: str = "cpu"):
        self.graph = graph
        self.path = path
        self.device = device
        self._engine = None
        self._engine_key = None
        # The characters ↔ ids of a character model, as the run that made its weights saved
        # them (`load_weights` reads them); None: the default alphabet (`sample`).
        self.vocabulary = None
        self._sampler = None

    @property
    def inputs(self) -> dict:
        """Input name → full shape (batch dimension first, as None)."""
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["inputs"].items()}

    @property
    def outputs(self) -> dict:
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["outputs"].items()}

    @property
    def shapes(self) -> dict:
        """Every node's name → its inferred full shape."""
        return {d["name"]: d["type"].shape for _, d in self.graph.nodes(data=True)}

    @property
    def train_config(self):
        return self.graph.graph["train"]

    @property
    def source_hash(self) -> str:
        """A hash of the model's source text and its imports, independent of where the file
        lives and how its path was spelled (weights and checkpoints record it)."""
        return self.graph.graph["source_hash"]

    def summary(self) -> Summary:
        return summarize(self.graph)

    def __repr__(self) -> str:
        s = self.summary()
        return f"<netlang.Model {self.path} params={s.total_params:,} outputs={list(self.outputs)}>"

    # -- weights and running ----------------------------------------------------------------

    @property
    def engine(self):
        """The execution engine holding the weights (created on first use)."""
        if self._engine is None:
            from netlang.runtime import make_engine
            from netlang.train.loop import _engine_key
            config = self.train_config
            self._engine = make_engine(self.graph, config, seed=config.seed if config else 0,
                                       device=self.device)
            self._engine_key = _engine_key(config) if config else None
        return self._engine

    @property
    def engine_name(self) -> str:
        """The engine that runs the model: `cpu`, `cuda` or `reference` (`auto` resolved)."""
        return self.engine.name

    @property
    def binding(self):
        from netlang.train.loop import bind
        cached = getattr(self, "_binding", None)
        if cached is None:
            cached = self._binding = bind(self.graph)
        return cached

    def parameters(self) -> dict:
        """Parameter (and buffer) name → NumPy array, in definition order.

        The arrays are the engine's own: writing into them (`p[...] = ...`) changes the model.
        """
        return dict(self.engine.params)

    def to(self, device: str) -> "Model":
        """Run this model on `device` from now on (`cpu`, `cuda`, `auto` or `reference`),
        keeping its weights and the optimiser's state: `model.to("cuda").fit(...)`.  Without a
        GPU, `to("cuda")` raises a UsageError saying so, and the model stays where it was."""
        if self._engine is not None:
            import numpy as np
            from netlang.runtime import make_engine
            old = self._engine
            params = {name: np.array(value) for name, value in old.params.items()}
            engine = make_engine(self.graph, old.config, params, seed=0, device=device,
                                 dtype=old.dtype)
            for name, value in old.optimizer.state.items():
                if name in engine.optimizer.state:
                    engine.optimizer.state[name][...] = value
            engine.optimizer.steps = old.optimizer.steps
            engine.rng.bit_generator.state = old.rng.bit_generator.state
            self._engine = engine
        elif device == "cuda":   # fail now, not at the first use, when there is no GPU
            from netlang.runtime.cuda import cuda_module
            cuda_module()
        else:   # an unknown device fails now too
            check_device(device)
        self.device = device
        return self

    def reset(self, seed: int | None = None) -> "Model":
        """Fresh initial weights (from `seed`, else the train section's seed) and optimiser."""
        from netlang.runtime import make_engine
        from netlang.train.loop import _engine_key
        config = self.train_config
        seed = seed if seed is not None else (config.seed if config else 0)
        self._engine = make_engine(self.graph, config, seed=seed, device=self.device)
        self._engine_key = _engine_key(config) if config else None
        return self

    def _arrays(self, inputs, targets=None, what="inputs"):
        from netlang.train.loop import as_arrays
        return as_arrays(self.binding, inputs, targets, what=what)

    def forward(self, inputs, *, mode: str = "eval") -> dict:
        """Run the model: {output name: array}.

        `inputs` is an array for the model's data input, or a dict {input name: array};
        arrays hold a batch (examples first).
        """
        return self.engine.forward(self._arrays(inputs), mode)

    def gradients(self, inputs, targets=None):
        """(loss, {parameter name: gradient}) on one batch; the weights do not change.

        `targets` is the label array (or a dict of target inputs); in training mode, so
        dropout is active.
        """
        loss, grads, _ = self.engine.gradients(self._arrays(inputs, targets))
        return float(loss), grads

    def fit(self, x=None, y=None, *, data=None, epochs=None, batch_size=None, lr=None,
            optimizer=None, schedule=None, seed=None, val_split=None, early_stopping=None,
            clip_norm=None, settings=(), validation_data=None, out=None, resume=False,
            force=False, shuffle=True, verbose=False, limit=None, normalize="auto",
            checkpoint_every=30.0, plot=False):
        """Train; returns a `History` (one record per epoch: loss, accuracy, val_loss, ...).

        Data: arrays `x` (or a dict of input arrays) and labels `y`; or `data=` a set name
        (`"mnist"`, `"xor"`, `"blobs"`, `"spirals"`), a .npz/.csv path or a Dataset, with
        `limit` examples per split.  Settings override the train section for this call:
        numbers, or strings in train-section syntax (`optimizer="adam(lr=1e-3)"`,
        `schedule="cosine(warmup=2)"`); `settings` takes more as "key=value" strings.
        `out` writes a run directory (weights, checkpoints, metrics.jsonl), `resume=True`
        continues the run in `out`.  Training continues from the current weights; the
        optimiser state carries over between calls unless the optimiser settings change.
        """
        from netlang.runtime import make_engine
        from netlang.train.loop import _engine_key, train
        from netlang.train.overrides import apply_overrides, override_strings
        from netlang.train.progress import Progress, auto_log_every
        overrides = override_strings(
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, schedule=schedule,
            seed=seed, val_split=val_split, early_stopping=early_stopping,
            clip_norm=clip_norm, lr=lr) + list(settings)
        engine = None
        if not resume:
            config = apply_overrides(self.train_config, overrides, self.graph)
            key = _engine_key(config)
            if self._engine is None:
                engine = make_engine(self.graph, config, seed=config.seed, device=self.device)
            elif key != self._engine_key:
                engine = make_engine(self.graph, config, self._engine.params,
                                     seed=config.seed, device=self.device)
            else:
                engine = self._engine
            self._engine, self._engine_key = engine, key
        if resume and out is None:
            raise ValueError("fit(resume=True) needs out=, the run directory to continue")
        progress = Progress(enabled=bool(verbose),
                            log_every=auto_log_every(epochs or self.train_config.epochs))
        history, engine, config = train(
            self, data=data, x=x, y=y, validation_data=validation_data, overrides=overrides,
            out=out, resume=out if resume else None, force=force, device=self.device,
            limit=limit, normalize=normalize, progress=progress, engine=engine,
            checkpoint_every=checkpoint_every, plot=plot, shuffle=shuffle)
        self._engine, self._engine_key = engine, _engine_key(config)
        return history

    def evaluate(self, x=None, y=None, *, data=None, split: str = "test", batch_size: int = 256,
                 limit=None, top_k=(5,)) -> dict:
        """Loss and metrics of the current weights: {"loss", "accuracy", "top_5",
        "confusion" (a list of rows: true class, columns: predicted), "examples", "heads"}.

        "loss" is the train section's weighted sum of the losses; accuracy, top-k and the
        confusion matrix read the first classifying head; "heads" holds every loss's own
        figures by head name (the output it reads): {"op", "target", "weight", "loss", and
        "accuracy" for a head that reads classes, or "mse" for one that predicts values};
        for a text set (`text:PATH`), "bpc": the loss in bits per character.
        Arrays `x`, `y` (dicts for several inputs), or `data=` a set name/path or data set
        (its `split`: "test" or "train").
        """
        from netlang.train.loop import evaluate, prepare_data
        from netlang.train.metrics import top_k_values
        if x is not None and (isinstance(x, str) or hasattr(x, "x_train")):
            data, x = x, None
        per_character = False   # a text set's loss, reported in bits per character too
        if x is not None:
            arrays = self._arrays(x, y, what="evaluation data")
        else:
            spec = data if data is not None else self.train_config.data
            if spec is None:
                raise ValueError("evaluate needs arrays x, y or data=")
            prepared = prepare_data(spec, self.binding, self.train_config, limit=limit)
            arrays = split_of(prepared, split)
            per_character = prepared.per_character
        ks = sorted(set(top_k) | set(top_k_values(self.train_config.metrics)))
        if self.binding.head is not None:
            ks = [k for k in ks if k < self.binding.head.num_classes]
        result = evaluate(self.engine, self.binding, arrays, batch_size, top_k=ks,
                          confusion=True, per_head=True)
        return with_bits_per_character(result) if per_character else result

    def predict(self, x, *, batch_size: int = 256):
        """Class probabilities, shape (examples, classes), for a model with a classification
        loss; otherwise {output name: array}."""
        from netlang.train.loop import predict
        return predict(self.engine, self.binding, self._arrays(x, what="prediction input"),
                       batch_size)

    def saliency(self, x, target=None):
        """The gradient of a class score with respect to the input, shaped like `x`: the
        score is the first output before its softmax (the logit) of each example's top
        class, or of class `target` (an index, or one per example).  `x` is a batch for the
        data input, or a dict {input name: batch} (then a dict of gradients comes back).
        Evaluation mode; the weights do not change.  See netlang/saliency.py."""
        arrays = self._arrays(x, what="saliency input")
        gradients = saliency(self.engine, self.graph, arrays, target).gradients
        return gradients if isinstance(x, dict) else gradients[self.binding.data_input]

    def reconstructions(self, x, path=None):
        """For an autoencoder (a loss compares an output with an input): a uint8 image of
        the first 8 examples of `x` over their reconstructions; written as a PNG to `path`
        when given.  Training writes the same picture to its run directory."""
        from netlang.train.reconstructions import reconstruction_grid
        image = reconstruction_grid(self.engine, self.graph,
                                    self._arrays(x, what="reconstruction input"))
        if path is not None:
            from netlang.train.png import write_png
            write_png(path, image)
        return image

    def sample(self, prime: str = "\n", *, length: int = 200, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               vocabulary: Vocabulary | None = None) -> str:
        """`length` characters a character model writes after `prime`: the prime read one
        character at a time, then each character drawn from softmax(scores / temperature)
        (among the `top_k` most likely when given; temperature 0: the most likely) and fed
        back, each recurrent layer's state carried from one character to the next.  The same
        `seed` gives the same text.  Characters are read and written with `vocabulary`, else
        the one saved with the weights loaded (a run directory's vocabulary.json), else the
        default alphabet.  A prime with a character outside it is a one-line UsageError.
        See netlang/sampling/text.py."""
        engine = self.engine
        if self._sampler is None or self._sampler.source_engine is not engine:
            self._sampler = TextSampler(self.graph, self.binding, engine)
        if vocabulary is None:
            vocabulary = self.vocabulary or Vocabulary.for_text(TextModel.of(self.binding).ids,
                                                                what="sampling")
        return self._sampler.generate(vocabulary, prime, length, temperature=temperature,
                                      top_k=top_k, seed=seed)

    def bench(self, *, batch=None, steps=10, device=None, dtype="float32", seed=0) -> dict:
        """Seconds per batch of the forward pass and the training step on random inputs,
        as `netlang bench --json` prints them (see netlang/bench.py).  A fresh engine runs
        them: the model's weights do not change."""
        return bench(self.graph, batch=batch, steps=steps, device=device or self.device,
                     dtype=dtype, seed=seed, path=self.path)

    def save(self, path) -> str:
        """Write the weights: `path` ending in .safetensors is the file; any other path is a
        directory that gets weights.safetensors, run.json and the model's source (so
        `netlang.load(dir)` works, also for a model compiled from a string)."""
        from netlang.train.run_dir import FINAL_WEIGHTS, save_source, write_run
        from netlang.weights import save_weights
        path = os.fspath(path)
        meta = {"model": self._model_ref()}
        if path.endswith(".safetensors"):
            save_weights(path, self.engine.params, meta, source_hash=self.source_hash)
            return path
        os.makedirs(path, exist_ok=True)
        target = os.path.join(path, FINAL_WEIGHTS)
        save_weights(target, self.engine.params, meta, source_hash=self.source_hash)
        write_run(path, {"model": self._model_ref(), "source_hash": self.source_hash})
        save_source(path, self.graph)
        return target

    def load_weights(self, path, *, force: bool = False, strict: bool = True):
        """Load weights from a .safetensors file or a run directory into this model.

        A file saved from a different model source is refused unless `force`; with
        `strict=False` only the tensors that fit are loaded.  Returns the load report.
        """
        from netlang.train.loop import expected_params
        from netlang.train.run_dir import saved_vocabulary
        from netlang.weights import find_weights, load_weights
        loaded = load_weights(find_weights(path), expected_params(self.graph), strict=strict,
                              source_hash=self.source_hash, force=force)
        params = self.engine.params
        for name, value in loaded.params.items():
            params[name][...] = value
        self.vocabulary = saved_vocabulary(path) or self.vocabulary
        return loaded.report

    def _model_ref(self) -> str:
        return os.path.abspath(self.path) if not self.path.startswith("<") else self.path


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith(".net") or os.path.exists(text)) and "->" not in text


def compile(source_or_path, *, path: str | None = None) -> Model:
    """Compile `.net` source text, or the file at a path, into a `Model`.

    A `str` that names an existing file or ends in `.net` (and has no newline) is
    read as a path; anything else is source text.  Raises `netlang.NetlangError`.
    """
    if isinstance(source_or_path, os.PathLike) or (isinstance(source_or_path, str)
                                                   and _looks_like_path(source_or_path)):
        file_path = os.fspath(source_or_path)
        with timed("front end"):
            graph = after_pass(lower_source(None, file_path), "lower")
        return Model(graph, file_path)
    if not isinstance(source_or_path, str):
        raise TypeError("netlang.compile takes a path or .net source text")
    name = path or "<string>"
    if not source_or_path.strip():
        from netlang.errors import NetlangFileError
        raise NetlangFileError(f"{name} is empty: a model needs at least one `input`", path=name)
    with timed("front end"):
        graph = after_pass(lower_source(source_or_path, name), "lower")
    return Model(graph, name)


def split_of(prepared, split: str) -> dict:
    """The arrays of one split ("test", "train" or "val") of prepared data; a UsageError
    names a split the data does not have (`netlang eval --split` reads it too)."""
    from netlang.errors import UsageError
    table = {"test": prepared.test, "train": prepared.train, "val": prepared.val}
    if split not in table:
        raise UsageError(f"unknown split `{split}` (expected test, train or val)")
    if table[split] is None:
        hint = " (the run has no validation split)" if split == "val" else ""
        raise UsageError(f"the data has no {split} split{hint}")
    return table[split]


def load(path, *, weights=None, force: bool = False, strict: bool = True,
         device: str = "cpu") -> Model:
    """A compiled model with trained weights.

    - `load("run/")` or `load("model.safetensors")`: the model recorded when the run or
      file was saved (its .net path, or for a model compiled from a string the source saved
      in the run directory), with those weights;
    - `load("model.net", weights="run/")`: this model, with the weights of a run directory
      or .safetensors file.

    Weights saved from a different model source are refused unless `force=True`.
    """
    from netlang.errors import UsageError, WeightsError
    from netlang.train.run_dir import read_run, saved_source
    from netlang.weights import find_weights, read_header
    path = os.fspath(path)
    if weights is None:
        if path.endswith(".net") and not os.path.isdir(path):
            raise UsageError(f"load({path!r}) needs weights=: a run directory or .safetensors "
                             f"file")
        weights = path
        model_path = None
        if os.path.isdir(path):
            model_path = read_run(path).get("model")
        if model_path is None:
            _, metadata = read_header(find_weights(path))
            model_path = metadata.get("model")
        from_string = not model_path or model_path.startswith("<")
        source = saved_source(path) if from_string and os.path.isdir(path) else None
        if source is not None:   # a model compiled from a string: its source was saved
            model = compile(source, path=model_path or None)
        elif from_string:
            raise WeightsError(f"{path}: does not record which .net file it belongs to; use "
                               f"netlang.load(model_path, weights={path!r})")
        elif not os.path.exists(model_path):
            raise WeightsError(f"{path}: was trained from {model_path}, which no longer exists; "
                               f"use netlang.load(model_path, weights={path!r})")
        else:
            model = compile(model_path)
    else:
        model = compile(path)
    model.device = device
    model.load_weights(weights, force=force, strict=strict)
    return model
