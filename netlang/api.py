"""The public Python surface: `netlang.compile(...)` and the `Model` it returns.

What an embedding program uses is documented in docs/embedding.md: the float width
(`compile(..., dtype="float64")`), one optimiser step at a time (`Model.train_step`), gradients
with the outputs (`Model.gradients`), and the weights (`Model.parameters`, `Model.buffers`).
"""

from __future__ import annotations

import os
import typing

import numpy as np

from netlang.bench import bench
from netlang.config import timed
from netlang.data.text import Vocabulary, with_bits_per_character
from netlang.errors import NetlangFileError, UsageError, WeightsError
from netlang.ir.graph import Graph
from netlang.lower import lower_source
from netlang.passes import after_pass
from netlang.runtime import check_device, make_engine
from netlang.runtime.cuda import cuda_module
from netlang.summary import Summary, summarize
from netlang.train.binding import as_arrays, bind, check_complete
from netlang.train.evaluation import check_has_loss, evaluate, predict
from netlang.train.metrics import top_k_values
from netlang.train.overrides import apply_overrides, override_strings
from netlang.train.prepared_data import prepare_data
from netlang.train.progress import Progress, auto_log_every
from netlang.train.run_dir import (
    FINAL_WEIGHTS,
    expected_params,
    read_run,
    save_source,
    saved_class_names,
    saved_source,
    saved_vocabulary,
    start_over,
    write_run,
)
from netlang.train.run_lock import RunLock
from netlang.train.schedules import depends_on_epochs, describe, step_rate
from netlang.weights import atomic_write, find_weights, load_weights, read_header, save_weights
from netlang.weights.checkpoints import LATEST_FILE

# What only some of Model's methods use (adversarial examples, sampling, saliency, reading
# images, ONNX) is imported in those methods: importing it made a warm `netlang.compile` take
# 0.18 s instead of 0.16 s (frozen dataclasses are slow to create).
if typing.TYPE_CHECKING:
    from netlang.attack import AttackResult

# The float widths an engine computes in: parameters, activations and float inputs.
DTYPES = ("float32", "float64")


def _shapes(arrays: dict) -> str:
    return ", ".join(f"{name}: {tuple(np.shape(value))}" for name, value in arrays.items())


class Step(typing.NamedTuple):
    """What `Model.train_step` returns: the batch's loss (before the update, as `fit` logs
    it) and {output name: array} (the outputs in training mode, before the update)."""

    loss: float
    outputs: dict

    def __repr__(self) -> str:
        return f"Step(loss={self.loss:.6g}, outputs={{{_shapes(self.outputs)}}})"


class Gradients(typing.NamedTuple):
    """What `Model.gradients` returns: the batch's loss, {parameter name: gradient} for every
    trainable parameter, and {output name: array}, all from one pass."""

    loss: float
    gradients: dict
    outputs: dict

    def __repr__(self) -> str:
        return (f"Gradients(loss={self.loss:.6g}, gradients={{{_shapes(self.gradients)}}}, "
                f"outputs={{{_shapes(self.outputs)}}})")


def check_dtype(dtype) -> str:
    """`dtype` (a name or a NumPy type) as "float32" or "float64"; a UsageError else."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise UsageError(f"unknown dtype `{dtype}`: use float32 or float64")
    return name


class Model:
    """A compiled `.net` model: its graph IR, shapes and summary, and its weights.

    The weights live in an execution engine (`netlang.runtime.make_engine`) that is
    created on first use, seeded by the train section's `seed`, in the model's `dtype`:
    `compile` stays fast and never starts NumPy kernels or Numba.  See docs/training.md and,
    for programs that embed netlang, docs/embedding.md.
    """

    def __init__(self, graph: Graph, path: str, *, device: str = "cpu", dtype="float32"):
        self.graph = graph
        self.path = path
        self.device = device
        self.dtype = check_dtype(dtype)
        self._engine = None
        self._engine_key = None
        # The characters ↔ ids of a character model, as the run that made its weights saved
        # them (`load_weights` reads them); None: the default alphabet (`sample`).
        self.vocabulary = None
        # The names of the classes (an image folder's), from the data trained on or the run
        # whose weights were loaded; None: classes are known by index only.
        self.class_names = None
        self._sampler = None
        self._attacker = None
        self._binding = None

    @property
    def inputs(self) -> dict:
        """Input name → full shape (batch dimension first, as None)."""
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["inputs"].items()}

    @property
    def outputs(self) -> dict:
        """Output name → full shape (batch dimension first, as None)."""
        return {k: self.graph.type_of(v).shape for k, v in self.graph.graph["outputs"].items()}

    @property
    def shapes(self) -> dict:
        """Every node's name → its inferred full shape."""
        return {d["name"]: d["type"].shape for _, d in self.graph.nodes(data=True)}

    @property
    def train_config(self):
        """The train section's settings (a `netlang.ir.train_config.TrainConfig`)."""
        return self.graph.graph["train"]

    @property
    def source_hash(self) -> str:
        """A hash of the model's source text and its imports, independent of where the file
        lives and how its path was spelled (weights and checkpoints record it)."""
        return self.graph.graph["source_hash"]

    def summary(self) -> Summary:
        """The rows and totals `netlang check` prints (a table in a REPL)."""
        return summarize(self.graph)

    def __repr__(self) -> str:
        s = self.summary()
        return f"<netlang.Model {self.path} params={s.total_params:,} outputs={list(self.outputs)}>"

    # -- weights and running ----------------------------------------------------------------

    def _new_engine(self, config, params=None, seed=None):
        """An engine for this model's device and dtype under `config`, remembered as the
        model's, with `params` (else fresh weights from `seed`, else the config's seed)."""
        # Kept lazy, as in `fit`: `netlang check` compiles through this module and never loads
        # the training loop (tests/test_cli.py holds it).
        from netlang.train.loop import engine_settings
        self._engine = make_engine(self.graph, config, params,
                                   seed=seed if seed is not None else (config.seed if config
                                                                       else 0),
                                   device=self.device, dtype=self.dtype)
        self._engine_key = engine_settings(config) if config else None
        return self._engine

    @property
    def engine(self):
        """The execution engine holding the weights (created on first use)."""
        if self._engine is None:
            self._new_engine(self.train_config)
        return self._engine

    @property
    def engine_name(self) -> str:
        """The engine that runs the model: `cpu`, `cuda` or `reference` (`auto` resolved)."""
        return self.engine.name

    @property
    def binding(self):
        """How data arrays feed the model's inputs (`netlang.train.binding.Binding`)."""
        if self._binding is None:
            self._binding = bind(self.graph)
        return self._binding

    def parameters(self) -> dict:
        """Parameter name → NumPy array, trainable and frozen, in definition order; the
        running statistics (batch norm's mean and variance) are `buffers()`.

        The arrays are the engine's own (views, not copies): writing into them (`p[...] = w`)
        changes the model, and training changes them, until `to`, `reset` or a `fit` with
        other optimiser settings gives the model another engine.  Copy them
        (`{k: v.copy() for k, v in model.parameters().items()}`) to keep a snapshot."""
        return self._named(self.graph.parameters())

    def buffers(self) -> dict:
        """Buffer name → NumPy array: the running statistics that training updates without
        gradients (batch norm's `running_mean`, `running_var`); views, as `parameters()`."""
        return self._named(self.graph.buffers())

    def _named(self, names) -> dict:
        params = self.engine.params
        return {name: params[name] for name in params if name in names}

    def to(self, device: str) -> "Model":
        """Run this model on `device` from now on (`cpu`, `cuda`, `auto` or `reference`),
        keeping its weights and the optimiser's state: `model.to("cuda").fit(...)`.  Without a
        GPU, `to("cuda")` raises a UsageError saying so, and the model stays where it was."""
        if self._engine is not None:
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
            cuda_module()
        else:   # an unknown device fails now too
            check_device(device)
        self.device = device
        return self

    def reset(self, seed: int | None = None) -> "Model":
        """Fresh initial weights (from `seed`, else the train section's seed) and optimiser."""
        self._new_engine(self.train_config, seed=seed)
        return self

    def _arrays(self, inputs, targets=None, what="inputs"):
        return as_arrays(self.binding, inputs, targets, what=what, dtype=self.dtype)

    def forward(self, inputs, *, mode: str = "eval") -> dict:
        """Run the model: {output name: array} (fresh arrays).

        `inputs` is an array for the model's data input, or a dict {input name: array};
        arrays hold a batch (examples first).  Float inputs are converted to the model's
        dtype (float32 unless compiled with dtype="float64"; a float64 model keeps float64
        inputs as they are).
        """
        return self.engine.forward(self._arrays(inputs), mode)

    def gradients(self, inputs, targets=None, *, mode: str = "train") -> Gradients:
        """Loss, gradients and outputs of one batch, from one pass: a `Gradients`
        (`loss, grads, outputs = model.gradients(x, y)`); the weights do not change.

        `targets` is the label array (or a dict of target inputs).  `mode="train"` (the
        default) computes what a training step would: dropout active, batch statistics;
        `mode="eval"` the evaluation pass's values.  The gradients are those of the train
        section's objective (the weighted sum of the losses), without its regularisers; the
        arrays are fresh copies.
        """
        arrays = self._arrays(inputs, targets, what="gradient batch")
        check_complete(self.binding, arrays, "gradient batch")
        loss, grads, outputs = self.engine.gradients(arrays, mode)
        return Gradients(float(loss), grads, outputs)

    def train_step(self, inputs, targets=None, *, steps_per_epoch: int | None = None) -> Step:
        """One optimiser step on one batch, exactly as `fit` takes it; returns a `Step`
        (`loss, outputs = model.train_step(x, y)`): the loss and the outputs, in training
        mode, before the update.

        The step follows the engine's train settings (the train section's, or those of the
        last `fit` that changed the optimiser): its optimiser and state, regularisers, gradient
        clipping, dropout and running statistics.  Its learning rate is the schedule's at the
        optimiser's step count (every step since the weights were made, `fit`'s included):
        the k-th call on a fresh model uses the rate `fit` uses at its k-th batch.  A schedule
        that changes the rate (any but `constant`) needs `steps_per_epoch`, the batches in
        one of `fit`'s epochs.  So `n` calls on the batches `fit(shuffle=False)` would take
        give the weights that fit gives.  A non-finite loss is returned as it is (`fit`
        stops the run on one).
        """
        if not self.binding.losses:
            raise UsageError(f"{self.path}: this model has no loss to train: add a `train` "
                             f"section with `loss ...`")
        engine = self.engine
        config = engine.config
        if steps_per_epoch is None:
            if depends_on_epochs(config.schedule):
                raise UsageError(f"the schedule `{describe(config.schedule)}` sets the rate "
                                 f"by epoch: pass steps_per_epoch=, the batches per epoch")
            steps_per_epoch = 1
        elif isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
                or steps_per_epoch < 1:
            raise UsageError(f"steps_per_epoch= must be a positive integer, got "
                             f"{steps_per_epoch!r}")
        arrays = self._arrays(inputs, targets, what="training batch")
        check_complete(self.binding, arrays, "training batch")
        lr = step_rate(config, engine.optimizer.steps, steps_per_epoch)
        loss, outputs = engine.train_step(arrays, lr)
        return Step(float(loss), outputs)

    def fit(self, x=None, y=None, *, data=None, epochs=None, batch_size=None, lr=None,
            optimizer=None, schedule=None, seed=None, val_split=None, early_stopping=None,
            clip_norm=None, gradient_shards=None, settings=(), validation_data=None, out=None,
            resume=False, force=False, shuffle=True, verbose=1, limit=None, normalize="auto",
            checkpoint_every=30.0, plot=False, init=None, init_layers=None):
        """Train; returns a `History` (one record per epoch: loss, accuracy, val_loss, ...).

        Data: arrays `x` (or a dict of input arrays) and labels `y`; or `data=` a set name
        (`"mnist"`, `"xor"`, `"blobs"`, `"spirals"`), a .npz/.csv path or a Dataset, with
        `limit` examples per split.  Settings override the train section for this call:
        numbers, or strings in train-section syntax (`optimizer="adam(lr=1e-3)"`,
        `schedule="cosine(warmup=2)"`); `settings` takes more as "key=value" strings.
        `out` writes a run directory (weights, checkpoints, metrics.jsonl), `resume=True`
        continues the run in `out`.  Training continues from the current weights; the
        optimiser state carries over between calls unless the optimiser settings change.
        Progress is printed to stdout (a line per epoch; a bar on a terminal): `verbose=0`
        prints nothing.  `init=` a run directory or weights file of any model starts each
        layer it holds under the same name and shapes from its weights (transfer learning;
        `init_layers=["a", "b"]` copies those alone, and each must fit); the progress names
        the layers copied and those drawn fresh.  `gradient_shards=S` sums each step's
        gradient from S shards of the batch in a fixed tree, so that a script started by
        `mpiexec -n K` (K dividing S) computes the same bits as one process (docs/scaling.md).
        """
        # Kept lazy: `netlang check` compiles through this module and never loads the training
        # loop (tests/test_cli.py holds it).
        from netlang.train.loop import engine_settings, train
        overrides = override_strings(
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, schedule=schedule,
            seed=seed, val_split=val_split, early_stopping=early_stopping,
            clip_norm=clip_norm, gradient_shards=gradient_shards, lr=lr) + list(settings)
        engine = None
        if not resume:
            config = apply_overrides(self.train_config, overrides, self.graph)
            key = engine_settings(config)
            if self._engine is None:
                engine = self._new_engine(config)
            elif key != self._engine_key:
                engine = self._new_engine(config, self._engine.params)
            else:
                engine = self._engine
        if resume and out is None:
            raise UsageError("fit(resume=True) needs out=, the run directory to continue")
        progress = Progress(enabled=bool(verbose),
                            log_every=auto_log_every(epochs or self.train_config.epochs))
        history, engine, config = train(
            self, data=data, x=x, y=y, validation_data=validation_data, overrides=overrides,
            out=out, resume=out if resume else None, force=force, device=self.device,
            limit=limit, normalize=normalize, progress=progress, engine=engine,
            checkpoint_every=checkpoint_every, plot=plot, shuffle=shuffle, dtype=self.dtype,
            init=init, init_layers=init_layers)
        self._engine, self._engine_key = engine, engine_settings(config)
        self.class_names = history.class_names or self.class_names
        return history

    def evaluate(self, x=None, y=None, *, data=None, split: str = "test", batch_size: int = 256,
                 limit=None, top_k=(5,), settings=()) -> dict:
        """Loss and metrics of the current weights: {"loss", "accuracy", "top_5",
        "confusion" (a list of rows: true class, columns: predicted), "examples", "heads"}.

        "loss" is the train section's weighted sum of the losses; accuracy, top-k and the
        confusion matrix read the first classifying head; "heads" holds every loss's own
        figures by head name (the output it reads): {"op", "target", "weight", "loss", and
        "accuracy" for a head that reads classes, or "mse" for one that predicts values};
        for a text set (`text:PATH`), "bpc": the loss in bits per character.
        Arrays `x`, `y` (dicts for several inputs), or `data=` a set name/path or data set
        (its `split`: "test" or "train"), read with the train section's settings and
        `settings` ("key=value" strings, as `fit` takes them: `["image_size=resize"]`).
        """
        if x is not None and (isinstance(x, str) or hasattr(x, "x_train")):
            data, x = x, None
        check_has_loss(self.binding, self.path)
        per_character = False   # a text set's loss, reported in bits per character too
        if x is not None:
            arrays = self._arrays(x, y, what="evaluation data")
        else:
            spec = data if data is not None else self.train_config.data
            if spec is None:
                raise UsageError("evaluate needs arrays x, y or data=")
            config = apply_overrides(self.train_config, list(settings), self.graph)
            prepared = prepare_data(spec, self.binding, config, limit=limit)
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
        return predict(self.engine, self.binding, self._arrays(x, what="prediction input"),
                       batch_size)

    def predict_images(self, images, *, image_size: str | None = None,
                       batch_size: int = 256):
        """`predict` on image files: `images` is a path or a list of paths to PNG or JPEG
        files and folders of them (searched with their sub-folders, hidden ones skipped).
        Returns (the image paths in the order predicted, predict's result); with class names
        from the run the weights came from in `class_names`.  Each image is decoded to the
        data input's shape, grey or RGB as its channels say, in [0, 1]; `image_size`
        ("check" or "resize", default the train section's) decides what another size gets."""
        if self.binding.data_input is None:
            raise UsageError("this model has several data inputs: predict with a dict of arrays")
        shape, _ = self.binding.inputs[self.binding.data_input]
        from netlang.data.folders import image_paths, read_image_input
        paths = image_paths([images] if isinstance(images, (str, os.PathLike)) else images)
        x = read_image_input(paths, shape, image_size or self.train_config.image_size)
        return paths, self.predict(x, batch_size=batch_size)

    def saliency(self, x, target=None):
        """The gradient of a class score with respect to the input, shaped like `x`: the
        score is the first output before its softmax (the logit) of each example's top
        class, or of class `target` (an index, or one per example).  `x` is a batch for the
        data input, or a dict {input name: batch} (then a dict of gradients comes back).
        Evaluation mode; the weights do not change.  See netlang/saliency.py."""
        from netlang.saliency import saliency
        arrays = self._arrays(x, what="saliency input")
        gradients = saliency(self.engine, self.graph, arrays, target).gradients
        return gradients if isinstance(x, dict) else gradients[self.binding.data_input]

    def attack(self, x=None, y=None, *, data=None, method: str = "fgsm", eps, steps=None,
               step_size=None, clip="auto", split: str = "test", limit=None,
               batch_size: int = 256, seed: int = 0) -> AttackResult:
        """Adversarial examples: each input moved by at most `eps` per value along the sign
        of the loss gradient, and the accuracy before and after (an `AttackResult`:
        `.accuracy`, `.adversarial_accuracy`, `.adversarial`, the attacked inputs).

        `method="fgsm"` takes one step of size eps; `"pgd"` takes `steps` (10) of
        `step_size` (2.5·eps/steps) from a random start in the ball (drawn from `seed`).
        Inputs: arrays `x`, `y`, or `data=` a set name/path or data set (its `split`, the
        first `limit` examples).  `clip=(low, high)` keeps attacked inputs in that range;
        "auto" (the default) is the data set's known range ([0, 1] for images scaled from
        uint8, as MNIST), none for arrays; None: no clipping.  See netlang/attack.py."""
        if x is not None and (isinstance(x, str) or hasattr(x, "x_train")):
            data, x = x, None
        value_range = None
        if x is not None:
            arrays = self._arrays(x, y, what="attack data")
        else:
            spec = data if data is not None else self.train_config.data
            if spec is None:
                raise UsageError("attack needs arrays x, y or data=")
            prepared = prepare_data(spec, self.binding, self.train_config, limit=limit)
            arrays, value_range = split_of(prepared, split), prepared.value_range
        check_complete(self.binding, arrays, "attack data")
        engine = self.engine
        if self._attacker is None or self._attacker.source_engine is not engine:
            from netlang.attack import Attacker
            self._attacker = Attacker(engine, self.graph, self.binding)
        return self._attacker.run(arrays, method=method, eps=eps, steps=steps,
                                  step_size=step_size,
                                  clip=value_range if isinstance(clip, str) and clip == "auto"
                                  else clip, batch_size=batch_size, seed=seed)

    def reconstructions(self, x, path=None):
        """For an autoencoder (a loss compares an output with an input): a uint8 image of
        the first 8 examples of `x` over their reconstructions; written as a PNG to `path`
        when given.  Training writes the same picture to its run directory."""
        from netlang.train.png import write_png
        from netlang.train.reconstructions import reconstruction_grid
        image = reconstruction_grid(self.engine, self.graph,
                                    self._arrays(x, what="reconstruction input"))
        if path is not None:
            write_png(path, image)
        return image

    def sample(self, prime: str | None = None, *, count: int | None = None, output=None,
               length: int = 200, temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, vocabulary: Vocabulary | None = None):
        """Samples from the model, as what it is says.

        A model with noise inputs (`input z: [64] ~ normal`): `count` samples (64 unless
        given) of `output`, else of the one output computed from noise inputs alone, as a
        float32 array (count,) + the output's shape; the same `seed` gives the same samples.
        See netlang/sampling/noise.py.

        A character model: `length` characters written after `prime` (a newline unless
        given): the prime read one character at a time, then each character drawn from
        softmax(scores / temperature) (among the `top_k` most likely when given; temperature
        0: the most likely) and fed back, each recurrent layer's state carried from one
        character to the next.  The same `seed` gives the same text.  Characters are read and
        written with `vocabulary`, else the one saved with the weights loaded (a run
        directory's vocabulary.json), else the default alphabet.  A prime with a character
        outside it is a one-line UsageError.  See netlang/sampling/text.py."""
        from netlang.sampling import NoiseModel, TextModel, TextSampler, draw_samples
        engine = self.engine
        if self.binding.noise_inputs:
            if prime is not None:
                raise UsageError("a prime is for character models; this model samples from "
                                 "its noise inputs")
            model = NoiseModel.of(self.graph, self.binding, output)
            return draw_samples(engine, model, 64 if count is None else count, seed)
        if count is not None or output is not None:
            raise UsageError("`count` and `output` sample a model with noise inputs "
                             "(`input z: [64] ~ normal`); this model has none")
        if self._sampler is None or self._sampler.source_engine is not engine:
            self._sampler = TextSampler(self.graph, self.binding, engine)
        if vocabulary is None:
            vocabulary = self.vocabulary or Vocabulary.for_text(TextModel.of(self.binding).ids,
                                                                what="sampling")
        return self._sampler.generate(vocabulary, "\n" if prime is None else prime, length,
                                      temperature=temperature, top_k=top_k, seed=seed)

    def warmup(self, *, batch: int | None = None, device: str | None = None,
               dtype: str | None = None, processes: int = 1, verbose: int = 0):
        """Compile every program a training run (batches of `batch`, default the train
        section's, in `processes` MPI processes) and inference of this model call into the
        disk caches, without data, so that a later run (`fit`, `netlang train`, in this
        process or another; `mpiexec -n processes`, each with the same NUMBA_NUM_THREADS)
        compiles nothing; returns a `netlang.train.warmup.Warmup` (what was compiled, what
        was already cached, the seconds).  `verbose=1` prints each program's line as it is
        ready."""
        # Kept lazy, as fit's training loop is: `netlang check` never loads the trainer.
        from netlang.train.warmup import warmup
        return warmup(self, batch=batch, device=device or self.device,
                      dtype=dtype or self.dtype, processes=processes,
                      progress=Progress(enabled=bool(verbose)))

    def bench(self, *, batch=None, steps=10, device=None, dtype=None, seed=0) -> dict:
        """Seconds per batch of the forward pass and the training step on random inputs,
        as `netlang bench --json` prints them (see netlang/bench.py), in `dtype` (the
        model's unless given).  A fresh engine runs them: the model's weights do not change."""
        return bench(self.graph, batch=batch, steps=steps, device=device or self.device,
                     dtype=check_dtype(dtype or self.dtype), seed=seed, path=self.path)

    def save(self, path) -> str:
        """Write the weights: `path` ending in .safetensors is the file; any other path is a
        directory that gets weights.safetensors, run.json and the model's source (so
        `netlang.load(dir)` works, also for a model compiled from a string).  Tensors are
        saved in the model's dtype."""
        path = os.fspath(path)
        meta = {"model": self._model_ref()}
        if path.endswith(".safetensors"):
            save_weights(path, self.engine.params, meta, source_hash=self.source_hash)
            return path
        target = os.path.join(path, FINAL_WEIGHTS)
        with RunLock(path):   # never into a run directory that a training run is writing
            if os.path.exists(os.path.join(path, LATEST_FILE)):
                raise UsageError(f"{path} holds a training run, whose last checkpoint loads "
                                 f"before weights saved beside it: save into another "
                                 f"directory or a .safetensors file")
            save_weights(target, self.engine.params, meta, source_hash=self.source_hash)
            write_run(path, {"model": self._model_ref(), "source_hash": self.source_hash})
            save_source(path, self.graph)
        return target

    def export(self, path, *, opset: int | None = None, dynamic_batch: bool = False,
               batch: int = 1) -> str:
        """Write the model's inference pass, with its current weights, as an ONNX file (needs
        the `onnx` package); returns the path.  `opset`: the ONNX opset to write (None:
        netlang.interchange.DEFAULT_OPSET, 17).  Inputs and outputs keep their names and
        layouts (batch first, channels last); the batch axis is `batch` examples, or named
        and free with `dynamic_batch`.  See docs/interchange.md."""
        from netlang.interchange import DEFAULT_OPSET, export_onnx
        return export_onnx(self.graph, self.engine.params, path,
                           opset=DEFAULT_OPSET if opset is None else opset,
                           dynamic_batch=dynamic_batch, batch=batch,
                           doc=self._model_ref())

    def load_weights(self, path, *, force: bool = False, strict: bool = True):
        """Load weights from a .safetensors file or a run directory into this model.

        A file saved from a different model source is refused unless `force`; with
        `strict=False` only the tensors that fit are loaded.  The file's tensors must be in
        the model's dtype.  Returns the load report.
        """
        loaded = load_weights(find_weights(path), expected_params(self.graph, self.dtype),
                              strict=strict, source_hash=self.source_hash, force=force)
        params = self.engine.params
        for name, value in loaded.params.items():
            params[name][...] = value
        self.vocabulary = saved_vocabulary(path) or self.vocabulary
        self.class_names = saved_class_names(path) or self.class_names
        return loaded.report

    def _model_ref(self) -> str:
        return os.path.abspath(self.path) if not self.path.startswith("<") else self.path


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith(".net") or os.path.exists(text)) and "->" not in text


def compile(source_or_path, *, path: str | None = None, dtype="float32") -> Model:
    """Compile `.net` source text, or the file at a path, into a `Model`.

    A `str` that names an existing file or ends in `.net` (and has no newline) is
    read as a path; anything else is source text (`path` then names it in errors).
    `dtype` is the float width the model computes in, "float32" or "float64": its
    parameters, activations and gradients, and the float inputs it is given (converted to
    it).  Raises `netlang.NetlangError`.
    """
    dtype = check_dtype(dtype)
    if isinstance(source_or_path, os.PathLike) or (isinstance(source_or_path, str)
                                                   and _looks_like_path(source_or_path)):
        file_path = os.fspath(source_or_path)
        with timed("front end"):
            graph = after_pass(lower_source(None, file_path), "lower")
        return Model(graph, file_path, dtype=dtype)
    if not isinstance(source_or_path, str):
        raise TypeError("netlang.compile takes a path or .net source text")
    name = path or "<string>"
    if not source_or_path.strip():
        raise NetlangFileError(f"{name} is empty: a model needs at least one `input`", path=name)
    with timed("front end"):
        graph = after_pass(lower_source(source_or_path, name), "lower")
    return Model(graph, name, dtype=dtype)


def split_of(prepared, split: str) -> dict:
    """The arrays of one split ("test", "train" or "val") of prepared data; a UsageError
    names a split the data does not have (`netlang eval --split` reads it too)."""
    table = {"test": prepared.test, "train": prepared.train, "val": prepared.val}
    if split not in table:
        raise UsageError(f"unknown split `{split}` (expected test, train or val)")
    if table[split] is None:
        hint = " (the run has no validation split)" if split == "val" else ""
        raise UsageError(f"the data has no {split} split{hint}")
    return table[split]


def import_onnx(path, output, *, weights_out=None, force: bool = False,
                device: str = "cpu") -> Model:
    """Read the ONNX model at `path` into a .net file written at `output` (canonical form),
    and return it compiled with the ONNX model's weights, to run on `device`; `weights_out`
    also saves them as a run directory (or .safetensors file) that `--weights` takes.  An
    existing `output` or `weights_out` is kept unless `force`.  Needs the `onnx` package; see
    docs/interchange.md."""
    output = os.fspath(output)
    if os.path.isdir(output):
        raise UsageError(f"{output}: a folder, not a .net file to write")
    # Checked before anything is written, so a failure leaves no .net file without weights.
    files = [output] + ([os.fspath(weights_out)] if weights_out is not None
                        and os.fspath(weights_out).endswith(".safetensors") else [])
    for file in files:
        folder, name = os.path.split(file)
        if folder and not os.path.isdir(folder):
            raise UsageError(f"{folder}: no such folder to write {name} in")
    for target in (output, weights_out):
        if target is not None and os.path.exists(target) and not force:
            raise UsageError(f"{os.fspath(target)} exists: `force=True` overwrites it")
    from netlang.interchange import from_state_dict, onnx_to_source
    source, weights = onnx_to_source(path)
    atomic_write(output, lambda f: f.write(source.encode()))
    model = compile(output)
    model.device = "reference"   # holds the weights; compiles no kernels
    from_state_dict(model, weights)
    if weights_out is not None:
        if os.path.isdir(weights_out):
            # A training run there (forced over) goes first: its checkpoints would load before
            # the weights saved here, and its class names would name another model's classes.
            with RunLock(weights_out):
                start_over(weights_out)
        model.save(weights_out)
    return model.to(device)


def load(path, *, weights=None, force: bool = False, strict: bool = True,
         device: str = "cpu", dtype="float32") -> Model:
    """A compiled model with trained weights.

    - `load("run/")` or `load("model.safetensors")`: the model recorded when the run or
      file was saved (its .net path, or for a model compiled from a string the source saved
      in the run directory), with those weights;
    - `load("model.net", weights="run/")`: this model, with the weights of a run directory
      or .safetensors file.

    Weights saved from a different model source are refused unless `force=True`; `dtype`
    is the model's float width, the one its weights were saved in.
    """
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
            model = compile(source, path=model_path or None, dtype=dtype)
        elif from_string:
            raise WeightsError(f"{path}: does not record which .net file it belongs to; use "
                               f"netlang.load(model_path, weights={path!r})")
        elif not os.path.exists(model_path):
            raise WeightsError(f"{path}: was trained from {model_path}, which no longer exists; "
                               f"use netlang.load(model_path, weights={path!r})")
        else:
            model = compile(model_path, dtype=dtype)
    else:
        model = compile(path, dtype=dtype)
    model.device = device
    model.load_weights(weights, force=force, strict=strict)
    return model
