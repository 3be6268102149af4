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

import hashlib
import importlib.util
import os
import sys
import threading

import numpy as np

from netlang import __version__
from netlang.codegen.cpu import ParamUpdate, UpdatePlan, render_program, supported
from netlang.config import cache_dir, debug, debug_level, timed
from netlang.errors import DataError
from netlang.interp import needed_nodes
from netlang.ir.train_config import TrainConfig
from netlang.ops.norm import draw_dropout_key
from netlang.passes import after_pass
from netlang.runtime.base import EngineBase
from netlang.passes.autodiff import differentiate
from netlang.passes.fold_batchnorm import fold_batchnorm
from netlang.passes.fusion import plan_fusion
from netlang.passes.memory import plan_buffers
from netlang.passes.training import training_graph

_load_lock = threading.Lock()

# Numba's OpenMP threading layer reads this when it starts (at the first parallel call):
# workers that wait by spinning fight OpenBLAS's spinning threads for the cores, and a
# training step ran 20 times slower beside them.  Waiting passively costs nothing measurable
# here (a worker sleeps only between kernels).  The user's own setting stands.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def cpu_workers() -> int:
    """Worker threads a compiled CPU program splits a batch among: Numba's thread count,
    NUMBA_NUM_THREADS (the cores when unset).  1 compiles serial programs."""
    import numba
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


class Unsupported(Exception):
    """The graph uses an op the CPU back end cannot compile yet."""


_helpers_digest = None


def _helpers_version() -> str:
    """A digest of the runtime modules whose compiled functions generated code calls: Numba's
    cache of a program holds their machine code too, so a change to them is a new program."""
    global _helpers_digest
    if _helpers_digest is None:
        here = os.path.dirname(os.path.abspath(__file__))
        digest = hashlib.sha256()
        for name in ("blas.py", "cnn.py", "random_bits.py", "../ops/norm.py"):
            with open(os.path.join(here, name), "rb") as handle:
                digest.update(handle.read())
        from netlang.runtime.blas import BLAS_ABI  # the library the compiled calls link to
        digest.update(BLAS_ABI.encode())
        _helpers_digest = digest.hexdigest()[:16]
    return _helpers_digest


def load_program(program, title: str = ""):
    """Write a program's source into the kernel cache (once) and import its function, after
    the modules of its worker functions (`program.parts`), which it imports by name."""
    with _load_lock:
        for module_name, source in program.parts:
            _load_module(source, module_name, f"a worker function of {title}")
        module = _load_module(program.source, None, title)
    return getattr(module, program.function)


def _load_module(source: str, module_name: str | None, title: str):
    """The module of `source` (named `module_name`, or after its digest), written to the kernel
    cache under a name that also holds the versions its compiled code depends on: Numba's
    cache beside it keeps compiled code per file, and does not see a change to what the code
    calls."""
    import numba  # noqa: F401  (imported here: netlang's front end never pays for it)
    versions = (f"{__version__}|{numba.__version__}|{np.__version__}|{sys.version_info[:2]}|"
                f"{_helpers_version()}")
    digest = hashlib.sha256((versions + source).encode()).hexdigest()[:24]
    directory = cache_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"nl_{digest}.py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(source)
        os.replace(tmp, path)
    if debug_level() >= 3:
        debug(3, f"generated source for {title} ({path}):\n{source}")
    module_name = module_name or f"netlang_kernels_{digest}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


class CompiledProgram:
    """A program, its compiled function and its buffers (one set per batch size).

    Another target's program (runtime/cuda.py) overrides the hooks: how the source is
    rendered, where buffers live (`allocate`, `fetch`) and what the function is passed."""

    target = "cpu"   # whose workspace rules the buffer plan follows

    def __init__(self, graph, order, keep, dtype, function, title, update=None, mode="eval"):
        self.graph = graph
        absorbed = set(update.absorbed) if update is not None else set()
        keep = [n for n in keep if n not in absorbed]
        fusion = plan_fusion(graph, order, set(keep))
        self.workers = self.worker_count()
        self.buffers = plan_buffers(graph, order, fusion, set(keep), skip=absorbed,
                                    target=self.target, workers=self.workers)
        self.program = self.render(graph, order, fusion, self.buffers, dtype=np.dtype(dtype).name,
                                   function=function, keep=keep, update=update, title=title,
                                   mode=mode)
        self.dtype = dtype
        with timed(f"compile {function}"):
            self.function = load_program(self.program, title)
        self._slot_arrays: dict[int, list] = {}

    # -- what a target overrides ---------------------------------------------------------------

    def render(self, graph, order, fusion, buffers, **options):
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

    def dropout_key(self, engine):
        return draw_dropout_key(engine.rng)

    def scratch(self, key):
        raise KeyError(f"no scratch array {key!r} on this target")

    # -- buffers and calls -----------------------------------------------------------------------

    def slots(self, batch: int) -> list:
        arrays = self._slot_arrays.get(batch)
        if arrays is None:
            arrays = []
            for shape, batched, dtype in self.buffers.slots:
                full = (batch,) + tuple(shape) if batched else tuple(shape)
                # acc64: a kernel's float64 accumulators, whatever the engine's dtype.
                kind = np.float64 if dtype == "acc64" else \
                    self.dtype if dtype.startswith("float") else np.int64
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

    def call(self, engine, feeds: dict, batch: int, lr: float = 0.0, t: int = 0):
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
            elif arg.kind == "key":  # drawn in program order, as the reference draws its masks
                args.append(self.dropout_key(engine))
            elif arg.kind == "scratch":
                args.append(self.scratch(arg.key))
            else:
                args.append(slots[arg.key])
        self.function(*args, float(lr), int(t))


class CpuEngine(EngineBase):
    name = "cpu"
    # What another target's engine replaces (runtime/cuda.py): its compiled program, its
    # rendering of the optimiser update, and its list of ops without a kernel.
    program_class = CompiledProgram
    update_plan_class = UpdatePlan
    missing_kernels = staticmethod(supported)

    @classmethod
    def supports(cls, graph) -> bool:
        try:
            train = training_graph(graph)
            losses = train.graph.get("losses")
            nodes = list(train.nodes)
            if losses:
                wrt = list(train.parameters().values())
                differentiate(train, wrt)
                nodes = list(train.nodes)
            return not cls.missing_kernels(train, nodes)
        except Exception:  # any op without a backward or kernel: the reference engine serves
            return False

    def __init__(self, graph, config: TrainConfig | None = None, params: dict | None = None, *,
                 seed: int = 0, dtype=np.float32, input_grads=()):
        super().__init__(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
        self._programs: dict = {}
        self._title = os.path.basename(graph.graph.get("path", "model"))

    # -- programs ---------------------------------------------------------------------------

    def _training(self):
        if "train" not in self._programs:
            with timed("training graph"):
                graph = after_pass(training_graph(self.graph), "training")
            with timed("autodiff"):
                wrt = [graph.node_named(n) for n in self.trainable]
                wrt += [graph.graph["inputs"][n] for n in self.input_grads]
                grads = differentiate(graph, wrt)
                after_pass(graph, "autodiff")
            missing = self.missing_kernels(graph, graph.nodes)
            if missing:
                raise Unsupported(", ".join(missing))
            outputs = list(graph.graph["outputs"].values())
            losses = [n for n, _ in graph.graph["losses"]]
            grad_nodes = {graph.nodes[n]["name"]: g for n, g in grads.of.items() if g is not None}
            keep = [grads.objective] + losses + outputs + list(grad_nodes.values())
            order = needed_nodes(graph, keep)
            updates = [ParamUpdate(name, grad_nodes[name], self.layer_of[name],
                                   graph.nodes[graph.node_named(name)]["attrs"].get("penalise", False))
                       for name in self.trainable if name in grad_nodes]
            plan = self.update_plan_class(graph, order, updates, self.config.optimizer,
                              self.config.regularizers, self.config.clip_norm,
                              np.dtype(self.dtype).name)
            step = self.program_class(graph, order, keep, self.dtype, "train_step",
                                   self._title, update=plan, mode="train")
            self._programs["train"] = (graph, grads, grad_nodes, step, (order, keep))
        return self._programs["train"]

    def _gradient_program(self):
        # Compiled on first use only: training never needs it.
        graph, grads, grad_nodes, _, (order, keep) = self._training()
        if "gradients" not in self._programs:
            self._programs["gradients"] = self.program_class(graph, order, keep, self.dtype,
                                                          "gradients", self._title, mode="train")
        return graph, grads, grad_nodes, self._programs["gradients"]

    def _inference(self, names: tuple, with_losses: bool):
        key = ("infer", names, with_losses)
        if key not in self._programs:
            graph = self.graph
            targets = [graph.graph["outputs"].get(n) or graph.node_named(n) for n in names]
            keep = list(targets)
            if with_losses:
                keep += [n for n, _ in graph.graph["losses"]]
            folded = after_pass(fold_batchnorm(graph, keep), "fold_batchnorm")
            if not self.missing_kernels(folded, needed_nodes(folded, keep)):
                graph = folded  # node ids are kept: targets and losses read the same nodes
            order = needed_nodes(graph, keep)
            missing = self.missing_kernels(graph, order)
            if missing:
                raise Unsupported(", ".join(missing))
            self._programs[key] = (targets, keep, self.program_class(graph, order, keep, self.dtype,
                                                                  "infer", self._title))
        return self._programs[key]

    def _vjp_program(self, output: str):
        if ("vjp", output) not in self._programs:
            graph, cotangent, grads = self._vjp_graph(output)
            grad_nodes = {graph.nodes[n]["name"]: g for n, g in grads.of.items() if g is not None}
            keep = list(grad_nodes.values())
            order = needed_nodes(graph, keep)
            missing = self.missing_kernels(graph, order)
            if missing:
                raise Unsupported(", ".join(missing))
            program = self.program_class(graph, order, keep, self.dtype, "vjp", self._title)
            self._programs[("vjp", output)] = (graph, cotangent, grad_nodes, program)
        return self._programs[("vjp", output)]

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
            value = np.ascontiguousarray(value, dtype=self.dtype if t.is_float else np.int64)
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
        graph, grads, grad_nodes, step, _ = self._training()
        _, batch = self._step(feeds, lr)
        loss = float(step.value(grads.objective, batch))
        outputs = {name: step.value(n, batch).copy() for name, n in graph.graph["outputs"].items()}
        return loss, outputs

    def _step(self, feeds: dict, lr: float) -> tuple[dict, int]:
        """One training step, its loss and outputs left in the step's buffers: (the batch as
        the step took it, its size).  The CUDA engine's device metrics read them there."""
        graph, _, _, step, _ = self._training()
        prepared, batch = self._feeds(graph, feeds, self._input_names(step))
        self.optimizer.steps += 1
        step.call(self, prepared, batch, lr, self.optimizer.steps)
        return prepared, batch

    def gradients(self, feeds: dict, mode: str = "train"):
        graph, grads, grad_nodes, program = self._gradient_program()
        prepared, batch = self._feeds(graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)
        named = {name: program.value(g, batch).copy() for name, g in grad_nodes.items()}
        for name in self.trainable:
            named.setdefault(name, np.zeros_like(self.params[name]))
        outputs = {name: program.value(n, batch).copy() for name, n in graph.graph["outputs"].items()}
        return float(program.value(grads.objective, batch)), named, outputs

    def forward(self, feeds: dict, mode: str = "eval", outputs=None) -> dict:
        names = tuple(outputs or self.graph.graph["outputs"])
        targets, _, program = self._inference(names, with_losses=False)
        prepared, batch = self._feeds(self.graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)
        return {name: program.value(n, batch).copy() for name, n in zip(names, targets)}

    def vjp(self, feeds: dict, output: str, cotangent) -> dict:
        """{input name: gradient of Σ output · cotangent} for one batch, in evaluation mode,
        for each float input that was fed; `output` names an output or any node."""
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
        names = tuple(self.graph.graph["outputs"])
        _, _, program = self._inference(names, with_losses=True)
        prepared, batch = self._feeds(self.graph, feeds, self._input_names(program))
        program.call(self, prepared, batch)
        return float(sum(w * float(program.value(n, batch)) for n, w in self.graph.graph["losses"]))
