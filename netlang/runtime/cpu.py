"""The CPU engine: a graph compiled into Numba functions, one per program.

A training step (forward, backward and optimiser update) is one compiled
function; so are an inference pass and a gradient pass.  The generated source
is written to netlang's kernel cache under a name derived from its own hash
(and netlang's, Numba's and NumPy's versions), and compiled with Numba's disk
cache: a second process that builds the same model loads the machine code
instead of compiling it.  Buffers are planned once per batch size and reused by
every step; nothing is allocated in the hot loop (dropout masks are filled in place from a key
drawn per step).

This module and its siblings are the only places netlang imports Numba.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import tempfile
import threading
import types

import numpy as np

from netlang.codegen.cpu import render_program, supported
from netlang.codegen.table import input_dtype, slot_dtype
from netlang.codegen.update import ParamUpdate, UpdatePlan, render_update
from netlang.config import cache_dir, debug, debug_level, private_directory, timed
from netlang.errors import DataError, UsageError
from netlang.ir.train_config import TrainConfig
from netlang.ops.norm import draw_dropout_key, dropout_key_at
from netlang.pages import small_pages
from netlang.pipeline import (
    check_mode,
    forward_program,
    input_gradient_program,
    plan_execution,
    training_program,
)
from netlang.runtime.argument_table import ArgumentTable
from netlang.runtime.base import EngineBase
from netlang.runtime.compilation import ProgramCompilation, ProgramCompilations
from netlang.version import __version__

_load_lock = threading.Lock()


def cpu_workers() -> int:
    """Worker threads a compiled CPU program splits a batch among: Numba's thread count,
    NUMBA_NUM_THREADS (the cores when unset).  1 compiles serial programs."""
    import numba  # kept lazy: importing this module (the API does) never starts Numba
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


_helpers_digest = None


def _helpers_version() -> str:
    """A digest of the runtime modules whose compiled functions generated code calls: Numba's
    cache of a program holds their machine code too, so a change to them is a new program."""
    global _helpers_digest
    if _helpers_digest is None:
        here = os.path.dirname(os.path.abspath(__file__))
        digest = hashlib.sha256()
        for name in ("blas.py", "jit.py", "linkage.py", "workers.py", "cnn.py", "random_bits.py",
                     "recurrent.py", "rbm.py",
                     "../ops/norm.py", "../ops/conv_loops.py", "../ops/pool_loops.py",
                     "../ops/norm_loops.py", "../ops/dense_loops.py", "../ops/recurrent_loops.py",
                     "../ops/rbm_loops.py"):
            with open(os.path.join(here, name), "rb") as handle:
                digest.update(handle.read())
        # The library the compiled calls link to; netlang.runtime.blas imports Numba, kept lazy.
        from netlang.runtime.blas import BLAS_ABI
        digest.update(BLAS_ABI.encode())
        _helpers_digest = digest.hexdigest()[:16]
    return _helpers_digest


def load_program(program, title: str = ""):
    """Write a program's source into the kernel cache (once) and import its function, after
    the modules of its worker functions (`program.parts`), which it imports by name."""
    with _load_lock:
        if program.parts:
            # Kept lazy: importing this module (the API does) never starts Numba.
            from netlang.runtime.linkage import start_thread_pool
            start_thread_pool()
        for module_name, source in program.parts:
            _load_module(source, module_name, f"a worker function of {title}")
        module = _load_module(program.source, None, title)
    return getattr(module, program.function)


def _load_module(source: str, module_name: str | None, title: str):
    """The module of `source` (named `module_name`, or after its digest), written to the kernel
    cache under a name that also holds the versions its compiled code depends on: Numba's
    cache beside it keeps compiled code per file, and does not see a change to what the code
    calls.

    The cache is code, so it is trusted no further than it is checked (docs/compiler.md, The
    kernel cache): its folder must be private to the user; the file is compared with `source`
    before use, and rewritten when it differs (a notice on stderr); and what runs is `source`
    itself, compiled in memory, never the file's text nor a `.pyc` beside it."""
    import numba  # kept lazy: importing this module (the API does) never starts Numba
    versions = (f"{__version__}|{numba.__version__}|{np.__version__}|{sys.version_info[:2]}|"
                f"{_helpers_version()}")
    digest = hashlib.sha256((versions + source).encode()).hexdigest()[:24]
    directory = kernel_cache_dir()
    path = os.path.join(directory, f"nl_{digest}.py")
    _write_verified(path, source)
    if debug_level() >= 3:
        debug(3, f"generated source for {title} ({path}):\n{source}")
    module_name = module_name or f"netlang_kernels_{digest}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    module = types.ModuleType(module_name)
    module.__file__ = path  # Numba's disk cache sits beside the file its functions come from
    # Registered first, as an import does: Numba's cached entries name the module they belong to.
    sys.modules[module_name] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module_name]
        raise
    _drop_unloadable_indexes(module)
    return module


def kernel_cache_dir() -> str:
    """The kernel cache folder, created private (0700); a UsageError when it is not private."""
    directory = cache_dir()
    try:
        problem = private_directory(directory)
    except OSError as exc:
        raise UsageError(f"cannot create the kernel cache {directory}: {exc.strerror or exc}") \
            from None
    if problem is not None:
        raise UsageError(f"the kernel cache {directory} {problem}; netlang runs what it holds, "
                         f"so make it yours alone (chmod 700) or set NETLANG_CACHE to another "
                         f"folder")
    return directory


def _write_verified(path: str, source: str) -> None:
    """Make the file at `path` hold exactly `source`: anything else there (unreadable, cut
    short, changed) is a cache miss, rewritten atomically, with a one-line notice."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == source:
                return
        print(f"netlang: kernel cache file {path} did not match its source; rebuilt",
              file=sys.stderr)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        print(f"netlang: kernel cache file {path} could not be read; rebuilt", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".nl-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(source)
        os.replace(tmp, path)  # a concurrent reader sees the old file or the new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _drop_unloadable_indexes(module) -> None:
    """Numba's cache of each function of `module` (its index and the entries it lists), read
    as Numba will read it; a cache that fails to load (corrupt, cut short) loses its index, so
    Numba compiles the function afresh instead of raising from deep inside its loader.  (Numba
    0.68's `_load_index` and `_load_data`; netlang.runtime.compilation reads the index too.)
    Reading an entry twice costs little beside rebuilding it: it is a few pickled bytes."""
    for value in list(vars(module).values()):
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
        if cache_file is None or not hasattr(cache_file, "_load_index"):
            continue
        try:
            for data_name in cache_file._load_index().values():
                cache_file._load_data(data_name)
        except Exception:  # whatever a damaged pickle raises: the entry is a cache miss
            print(f"netlang: Numba's cache of {value.__name__} in {cache_file._index_path} could "
                  f"not be read; recompiling", file=sys.stderr)
            with contextlib.suppress(OSError):
                os.unlink(cache_file._index_path)


class CompiledProgram:
    """A program, its compiled function and its buffers (one set per batch size).

    Another target's program (runtime/cuda.py) overrides the hooks: how the source is
    rendered, where buffers live (`allocate`, `fetch`) and what the function is passed."""

    target = "cpu"   # whose workspace rules the buffer plan follows

    def __init__(self, graph, order, keep, dtype, function, title, update=None, mode="eval",
                 statistics_across_processes=False):
        self.graph = graph
        absorbed = set(update.absorbed) if update is not None else set()
        keep = [n for n in keep if n not in absorbed]
        self.workers = self.worker_count()
        fusion, self.buffers = plan_execution(graph, order, keep, skip=absorbed,
                                              target=self.target, workers=self.workers)
        self.program = self.render(graph, order, fusion, self.buffers, dtype=np.dtype(dtype).name,
                                   function=function, keep=keep, update=update, title=title,
                                   mode=mode,
                                   # Only the CPU renderer sums statistics across processes.
                                   **({"statistics_across_processes": True}
                                      if statistics_across_processes else {}))
        self.dtype = dtype
        with timed(f"import {function}"):   # Numba compiles at the first call (see compilation)
            self.function = load_program(self.program, title)
        # A CPU program takes its arrays in one table (netlang/codegen/table.py).
        self._table = ArgumentTable(self.program.args, self.program.layouts) \
            if self.program.layouts is not None else None
        self._slot_arrays: dict[int, list] = {}
        self._ready_batches: set[int] = set()   # batch sizes `call` made the function ready for

    # -- what a target overrides ---------------------------------------------------------------

    def render(self, graph, order, fusion, buffers, **options):
        """The program's source (codegen's Program), rendered for this target."""
        return render_program(graph, order, fusion, buffers, **options, workers=self.workers)

    def worker_count(self) -> int:
        """Threads the program's kernels split a batch among (see `cpu_workers`)."""
        return cpu_workers()

    def allocate(self, array: np.ndarray):
        """A buffer as the compiled function takes it."""
        return array

    def fetch(self, array) -> np.ndarray:
        """A buffer's contents as a host array (a view, where it lives on the host)."""
        return array

    def engine_arrays(self, engine) -> tuple:
        """(parameters, optimiser state) as the compiled function takes them."""
        return engine.params, engine.optimizer.state

    def dropout_key(self, engine, node):
        """The key of the mask `node` for one call, drawn from the engine's generator and
        moved to the engine's first example (`example_offset`), so that a process computing
        part of a batch draws its rows of the whole batch's mask."""
        key = draw_dropout_key(engine.rng)
        if not engine.example_offset:
            return key
        per_example = math.prod(self.graph.type_of(node).shape[1:])
        return dropout_key_at(key, engine.example_offset * per_example)

    def scratch(self, key):
        """The target's scratch array `key` (the CPU's programs take none)."""
        raise KeyError(f"no scratch array {key!r} on this target")

    # -- buffers and calls -----------------------------------------------------------------------

    def slots(self, batch: int) -> list:
        """The program's buffers for a batch of `batch` examples, allocated on first use."""
        arrays = self._slot_arrays.get(batch)
        if arrays is None:
            arrays = []
            with small_pages():   # see netlang/pages.py: a first step waited for compaction
                for shape, batched, dtype in self.buffers.slots:
                    full = (batch,) + tuple(shape) if batched else tuple(shape)
                    kind = slot_dtype(dtype, np.dtype(self.dtype).name)
                    arrays.append(self.allocate(np.zeros(full, dtype=kind)))
            if len(self._slot_arrays) > 4:  # a few batch sizes at most (the last, partial batch)
                self._slot_arrays.pop(next(iter(self._slot_arrays)))
            self._slot_arrays[batch] = arrays
        return arrays

    def slot_index(self, node) -> int:
        """The slot holding a kept node's value (its root's, for a view of it)."""
        return self.buffers.slot_of[self.buffers.root_of.get(node, node)]

    def value(self, node, batch: int) -> np.ndarray:
        """A kept node's value after a call, shaped as its type says."""
        array = self.fetch(self.slots(batch)[self.slot_index(node)])
        t = self.graph.type_of(node)
        if not t.shape:
            return array.reshape(())
        return array.reshape(((batch,) + tuple(t.shape[1:])) if t.batched else t.shape)

    def arguments(self, engine, feeds: dict, batch: int, lr: float, t: int, key) -> list:
        """What the compiled function is passed for one call on prepared `feeds` of `batch`
        examples; `key(node)` gives the dropout mask `node`'s key, in program order."""
        slots = self.slots(batch)
        params, state = self.engine_arrays(engine)
        args = []
        for arg in self.program.args:
            if arg.kind == "input":
                args.append(feeds[arg.key])
            elif arg.kind == "param":
                args.append(params[arg.key])
            elif arg.kind == "state":
                args.append(state[arg.key])
            elif arg.kind == "key":
                args.append(key(arg.key))
            elif arg.kind == "scratch":
                args.append(self.scratch(arg.key))
            else:
                args.append(slots[arg.key])
        passed = [self._table.filled(args)] if self._table is not None else args
        return passed + [float(lr), int(t)]

    def call(self, engine, feeds: dict, batch: int, lr: float = 0.0, t: int = 0):
        """Run the program once on prepared `feeds` (learning rate `lr`, step number `t` for
        an update); its kept values are then readable with `value`."""
        # Keys drawn in program order, as the reference draws its masks.
        arguments = self.arguments(engine, feeds, batch, lr, t,
                                   lambda node: self.dropout_key(engine, node))
        if batch not in self._ready_batches:
            self.make_ready(arguments)
            self._ready_batches.add(batch)
        self.function(*arguments)

    def make_ready(self, arguments) -> None:
        """Compile (or load) the function for `arguments`' types before its first call, as a
        `ProgramCompilation` does: compiled afresh, in several processes (see netlang/runtime/
        parallel_compile.py), not by Numba's compile-on-call in this one."""
        self._compilation("", arguments).run()

    def _compilation(self, title: str, arguments):
        """The compilation of the function for calls with `arguments`: of each of its pieces,
        for the arguments the program passes it, where it is a Python function that calls
        them (netlang/codegen/pieces.py)."""
        if not self.program.pieces:
            return ProgramCompilation(title, self.function, arguments)
        arrays = ["table"] if self._table is not None else \
            [f"a{i}" for i in range(len(self.program.args))]
        position = {name: i for i, name in enumerate(arrays + ["lr", "t"])}
        # The largest pieces first (by the arrays they read: ResNet-18's update reads 188 and
        # took 2 s to compile), so that the processes, each claiming the next piece no one has,
        # end together on small ones: in program order ResNet-18's update came last, and one
        # process compiled it while the other had nothing left.
        pieces = sorted(self.program.pieces, key=lambda piece: -piece[2])
        return ProgramCompilations(title, [
            ProgramCompilation(title, self.function.__globals__[name],
                               [arguments[position[parameter]] for parameter in parameters])
            for name, parameters, _ in pieces])

    def compilation(self, engine, batch: int, title: str) -> ProgramCompilation | None:
        """This program made ready, before its first call, for calls on batches of `batch`
        examples (a smaller last batch has the same argument types): see
        netlang/runtime/compilation.py.  The arguments are the first call's, with zeros for
        the inputs and a key that draws nothing from the engine's generator."""
        feeds = {}
        for arg in self.program.args:
            if arg.kind == "input":
                t = self.graph.type_of(self.graph.graph["inputs"][arg.key])
                feeds[arg.key] = np.zeros((batch,) + tuple(t.shape[1:]),
                                          input_dtype(t, self.dtype))
        # A key of the type the engine draws, from a generator of its own: the engine's stays
        # where it is, so a seeded run draws the same masks as it did without this.
        unused_key = draw_dropout_key(np.random.default_rng(0))
        arguments = self.arguments(engine, feeds, batch, 0.0, 0, lambda node: unused_key)
        return self._compilation(title, arguments)


class CpuEngine(EngineBase):
    """Runs the pipeline's programs compiled with Numba: one function per program, built on
    first use and kept (a training step, a gradient pass per mode, an evaluation pass per
    set of outputs and mode, an input-gradient pass per output)."""

    name = "cpu"
    kernel_noun = "CPU kernel"
    # What another target's engine replaces (runtime/cuda.py): its compiled program, its
    # rendering of the optimiser update, and which ops it has kernels for.
    program_class = CompiledProgram
    update_plan_class = UpdatePlan
    missing_kernels = staticmethod(supported)

    def __init__(self, graph, config: TrainConfig | None = None, params: dict | None = None, *,
                 seed: int = 0, dtype=np.float32, input_grads=()):
        super().__init__(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
        self._programs: dict = {}
        self._title = os.path.basename(graph.graph.get("path", "model"))

    @classmethod
    def pending_ops(cls, graph) -> list[str]:
        """Ops of the model's training step (its forward pass, for a model without a loss)
        that this engine has no kernel for."""
        if not graph.graph.get("losses"):
            return cls.missing_kernels(graph, list(graph.nodes))
        program = training_program(graph, list(graph.parameters()))
        return cls.missing_kernels(program.graph, list(program.graph.nodes))

    # -- programs ---------------------------------------------------------------------------

    def _training(self):
        """(graph, gradients, name → gradient node, the compiled step, (order, kept)) of the
        training step, compiled on first use."""
        if "train" not in self._programs:
            program = training_program(self.graph, self.trainable, self.input_grads)
            graph, grad_nodes, keep, order = (program.graph, program.grad_nodes, program.kept,
                                              program.order)
            self.require_kernels(graph, order)
            updates = [ParamUpdate(name, grad_nodes[name], self.layer_of[name],
                                   graph.nodes[graph.node_named(name)]["attrs"].get("penalise", False))
                       for name in self.trainable if name in grad_nodes]
            plan = self.update_plan_class(graph, order, updates, self.config.optimizer,
                                          self.config.regularizers, self.config.clip_norm,
                                          np.dtype(self.dtype).name)
            step = self.program_class(graph, order, keep, self.dtype, "train_step",
                                      self._title, update=plan, mode="train")
            self._programs["train"] = (graph, program.gradients, grad_nodes, step, (order, keep))
        return self._programs["train"]

    def _gradient_program(self, mode: str = "train"):
        """(graph, gradients, name → gradient node, the compiled gradient pass) in `mode`.
        Compiled on first use only: training never needs it.  In training mode it runs the
        training step's graph, without the update."""
        if mode == "train":
            key = "gradients"
            graph, grads, grad_nodes, _, (order, keep) = self._training()
        else:
            key = ("gradients", mode)
            if ("differentiated", mode) not in self._programs:
                program = training_program(self.graph, self.trainable, self.input_grads, mode)
                self.require_kernels(program.graph, program.order)
                self._programs[("differentiated", mode)] = program
            program = self._programs[("differentiated", mode)]
            graph, grads, grad_nodes, order, keep = (program.graph, program.gradients,
                                                     program.grad_nodes, program.order,
                                                     program.kept)
        across = mode == "train" and self.statistics_across_processes
        if across:
            key = "gradients across processes"
        if key not in self._programs:
            self._programs[key] = self.program_class(
                graph, order, keep, self.dtype, "gradients", self._title, mode=mode,
                **({"statistics_across_processes": True} if across else {}))
        return graph, grads, grad_nodes, self._programs[key]

    def _inference(self, names: tuple, with_losses: bool, mode: str = "eval"):
        """(target nodes, kept nodes, the compiled forward pass) computing the outputs (or
        nodes) `names`, and the losses when `with_losses`, in `mode`."""
        key = ("infer", names, with_losses, mode)
        if key not in self._programs:
            program = forward_program(self.graph, names, mode=mode, with_losses=with_losses,
                                      fold=True)
            self.require_kernels(program.graph, program.order)
            compiled = self.program_class(program.graph, program.order, program.kept,
                                          self.dtype, "infer", self._title, mode=mode)
            self._programs[key] = (program.targets, program.kept, compiled)
        return self._programs[key]

    def _vjp_program(self, output: str):
        """(graph, the cotangent input's name, name → gradient node, the compiled pass)."""
        if ("vjp", output) not in self._programs:
            program = input_gradient_program(self.graph, output)
            self.require_kernels(program.graph, program.order)
            compiled = self.program_class(program.graph, program.order,
                                          list(program.grad_nodes.values()), self.dtype, "vjp",
                                          self._title)
            self._programs[("vjp", output)] = (program.graph, program.cotangent,
                                               program.grad_nodes, compiled)
        return self._programs[("vjp", output)]

    def compilations(self, batch: int | None, evaluated: tuple = (), eval_batch: int = 0,
                     gradients_mode: str | None = None) -> list:
        """The training step, for batches of `batch` examples (None: an engine that only
        evaluates), and the evaluation pass that computes the nodes `evaluated` (none: no
        evaluation), for batches of `eval_batch`, each as a `ProgramCompilation` to make ready
        before the first step.  With `gradients_mode` ("train" or "eval") the gradient pass
        in that mode takes the training step's place: a run whose steps call `gradients`
        (adversarial training) never calls the step."""
        if batch is None:
            found = []
        elif gradients_mode is not None:
            found = [self._gradient_program(check_mode(gradients_mode))[3].compilation(
                self, batch, f"gradient pass ({gradients_mode})")]
        else:
            found = [self._training()[3].compilation(self, batch, "training step")]
        if evaluated:
            evaluation = self._inference(tuple(evaluated), with_losses=False)[2]
            found.append(evaluation.compilation(self, eval_batch, "evaluation"))
        return [compilation for compilation in found if compilation is not None]

    def _update_program(self):
        """(the compiled update, its Program, gradient node → parameter name): the training
        step's update applied to gradients passed in (`apply_update`)."""
        if "update" not in self._programs:
            graph, _, grad_nodes, _, _ = self._training()
            updates = [ParamUpdate(name, grad_nodes[name], self.layer_of[name],
                                   graph.nodes[graph.node_named(name)]["attrs"].get("penalise", False))
                       for name in self.trainable if name in grad_nodes]
            program = render_update(graph, updates, self.config.optimizer,
                                    self.config.regularizers, self.config.clip_norm,
                                    np.dtype(self.dtype).name)
            function = load_program(program, f"{self._title} update")
            self._programs["update"] = (function, ArgumentTable(program.args, program.layouts),
                                        {u.grad: u.name for u in updates})
        return self._programs["update"]

    def apply_update(self, grads: dict, lr: float) -> None:
        """One optimiser step from gradients computed apart ({parameter name: gradient}),
        compiled: the training step's own update (penalties, clipping, the optimiser's rule;
        codegen/update.py `render_update`), one loop per parameter, where the host rule
        (`apply_gradients`) makes several NumPy passes (for mlp_500_300, 0.33 ms a step).  A
        step summing shards' gradients takes it (netlang/train/shards.py)."""
        function, arguments = self._update_arguments(grads)
        self.optimizer.steps += 1
        function(*arguments, float(lr), int(self.optimizer.steps))

    def _update_arguments(self, grads: dict) -> tuple:
        """(the compiled update, what it is passed before `lr` and `t`: its table) for
        `grads`."""
        function, table, names = self._update_program()
        state = self.optimizer.state
        return function, [table.filled([
            self.params[arg.key] if arg.kind == "param" else state[arg.key]
            if arg.kind == "state" else np.ascontiguousarray(grads[names[arg.key]], self.dtype)
            for arg in table.args])]

    def update_compilation(self) -> ProgramCompilation:
        """The compiled update (`apply_update`) made ready before the first step."""
        function, arguments = self._update_arguments(
            {name: np.zeros_like(self.params[name]) for name in self.trainable})
        return ProgramCompilation("optimiser update", function, arguments + [0.0, 0])

    def gradient_compilation(self, batch: int) -> ProgramCompilation | None:
        """The training-mode gradient pass (`gradients`) made ready for batches of `batch`
        examples: a step's that sums gradient shards (netlang/train/shards.py), whose update
        waits for the other processes' gradients.  None where the program is made ready at its
        first call (the CUDA engine's)."""
        return self._gradient_program("train")[3].compilation(self, batch, "gradient pass")

    # -- feeding ----------------------------------------------------------------------------

    def _feeds(self, graph, feeds: dict, needed) -> tuple[dict, int]:
        prepared, batch = {}, None
        for name in needed:
            node = graph.graph["inputs"][name]
            if name not in feeds:
                raise DataError(f"no data for input `{name}`")
            t = graph.type_of(node)
            value = np.asarray(feeds[name])
            if value.shape[1:] != tuple(t.shape[1:]):
                raise DataError(f"input `{name}` expects examples of shape {tuple(t.shape[1:])}, "
                                f"got {value.shape[1:]}")
            value = np.ascontiguousarray(value, dtype=input_dtype(t, self.dtype))
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise DataError(f"inputs disagree on the batch size: {batch} and {value.shape[0]}")
            prepared[name] = value
        return prepared, batch or 0

    @staticmethod
    def _input_names(program) -> list:
        return [a.key for a in program.program.args if a.kind == "input"]

    # -- the engine surface -----------------------------------------------------------------

    def train_step(self, feeds: dict, lr: float):
        """One optimiser step on one batch; returns (loss, outputs)."""
        graph, grads, grad_nodes, step, _ = self._training()
        _, batch = self._step(feeds, lr)
        loss = float(step.value(grads.objective, batch))
        outputs = {name: step.value(n, batch).copy() for name, n in graph.graph["outputs"].items()}
        return loss, outputs

    def _step(self, feeds: dict, lr: float) -> tuple[dict, int]:
        """One training step, its loss and outputs left in the step's buffers: (the batch as
        the step took it, its size).  The CUDA engine's device metrics read them there."""
        feeds = self.with_noise(feeds)
        graph, _, _, step, _ = self._training()
        prepared, batch = self._feeds(graph, feeds, self._input_names(step))
        self.optimizer.steps += 1
        step.call(self, prepared, batch, lr, self.optimizer.steps)
        return prepared, batch

    def gradients(self, feeds: dict, mode: str = "train", copy: bool = True):
        """(loss, name → gradient, outputs) for one batch, in `mode`; parameters (and the
        running statistics) are not changed, but for a data-parallel run's training-mode pass
        (`statistics_across_processes`), which moves the running statistics.  With `copy`
        False, the gradients and outputs are the pass's own buffers, valid until its next call:
        a step summing shards' gradients (netlang/train/shards.py) reads them at once, and
        copying 2 MB of gradients a call, with the page faults of fresh arrays, cost it more
        than the pass itself."""
        feeds = self.with_noise(feeds)
        graph, grads, grad_nodes, program = self._gradient_program(check_mode(mode))
        prepared, batch = self._feeds(graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)

        def read(node):
            value = program.value(node, batch)
            return value.copy() if copy else value
        named = {name: read(g) for name, g in grad_nodes.items()}
        for name in self.trainable:
            if name not in named:   # no path to the objective: zero
                named[name] = np.zeros_like(self.params[name])
        outputs = {name: read(n) for name, n in graph.graph["outputs"].items()}
        return float(program.value(grads.objective, batch)), named, outputs

    def forward(self, feeds: dict, mode: str = "eval", outputs=None) -> dict:
        """{name: value} of the outputs (or the nodes named in `outputs`) for one batch; in
        training mode with batch statistics and fresh dropout masks (a key drawn per mask, as
        the reference draws them), the running statistics left as they are."""
        feeds = self.with_noise(feeds)
        names = tuple(outputs or self.graph.graph["outputs"])
        targets, _, program = self._inference(names, with_losses=False, mode=check_mode(mode))
        prepared, batch = self._feeds(self.graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)
        return {name: program.value(n, batch).copy() for name, n in zip(names, targets)}

    def vjp(self, feeds: dict, output: str, cotangent) -> dict:
        """{input name: gradient of Σ output · cotangent} for one batch, in evaluation mode,
        for each float input that was fed; `output` names an output or any node."""
        feeds = self.with_noise(feeds)
        graph, seed, grad_nodes, program = self._vjp_program(output)
        prepared, batch = self._feeds(graph, {**feeds, seed: cotangent},
                                      self._input_names(program))
        program.call(self, prepared, batch)
        result = {name: program.value(g, batch).copy() for name, g in grad_nodes.items()}
        for name, node in graph.graph["inputs"].items():
            if name in feeds and name not in result and graph.type_of(node).is_float:
                # No path to the output: the gradient is zero.
                result[name] = np.zeros(np.shape(feeds[name]), dtype=self.dtype)
        return result

    def loss(self, feeds: dict) -> float:
        """The objective on one batch in evaluation mode (no dropout)."""
        feeds = self.with_noise(feeds)
        names = tuple(self.graph.graph["outputs"])
        _, _, program = self._inference(names, with_losses=True)
        prepared, batch = self._feeds(self.graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)
        return float(sum(w * float(program.value(n, batch)) for n, w in self.graph.graph["losses"]))
