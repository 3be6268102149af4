"""What every engine holds: parameters, the optimiser's state, the random generator.

Engines differ in how they run a step; their state is the same, so checkpoints,
resume and the Python API treat every engine alike.  An engine refuses a graph
with an op it has no kernel for, in one line that names the engines that run it
(`require_kernels`): none falls back on another quietly.
"""

from __future__ import annotations

import numpy as np

from netlang.errors import DataError, UsageError
from netlang.ir.train_config import TrainConfig
from netlang.ops.init import initialize
from netlang.ops.noise import noise_input_array
from netlang.ops.norm import draw_dropout_key
from netlang.ops.optim import Optimizer, regularizer_gradient


class EngineBase:
    """The state every engine holds.  Each engine class adds how it runs a program, and a
    static `missing_kernels(graph, nodes)`: the ops among `nodes` it cannot run (sorted
    names; empty when it runs them all), which `require_kernels` reads."""

    name = "base"             # what --device, `model.to` and run.json call the engine
    kernel_noun = "kernel"    # what the engine lacks for an op it cannot run, in errors
    needs_gpu = False         # whether errors suggest it last (not every machine can run it)

    @classmethod
    def require_kernels(cls, graph, nodes) -> None:
        """Nothing when this engine runs every op among `nodes`; else a one-line UsageError
        naming the first op it cannot run, that op's layer and the engines that do run it."""
        for node in nodes:
            if not cls.missing_kernels(graph, [node]):
                continue
            data = graph.nodes[node]
            runners = sorted((engine for engine in _engine_classes()
                              if engine is not cls and not engine.missing_kernels(graph, [node])),
                             key=lambda engine: engine.needs_gpu)
            where = f"`{data['op']}` (layer `{data['layer']}`) has no {cls.kernel_noun} yet"
            if not runners:
                raise UsageError(f"{where}, and no engine runs it yet")
            raise UsageError(f"{where}; engines that run it: "
                             f"{', '.join(engine.name for engine in runners)} — use "
                             f"`device=\"{runners[0].name}\"`")

    def __init__(self, graph, config: TrainConfig | None = None, params: dict | None = None, *,
                 seed: int = 0, dtype=np.float32, input_grads=()):
        self.require_kernels(graph, graph.topological_order())
        self.graph = graph
        self.config = config or graph.graph.get("train") or TrainConfig()
        self.dtype = np.dtype(dtype).type
        # Parameters and buffers by name; the engine updates these arrays in place.
        self.params = params if params is not None else initialize(graph, seed, dtype)
        self.rng = np.random.default_rng([seed, 1])  # dropout masks: a stream apart from init's
        # The batch's first example is this example of a larger batch, which other processes
        # compute the rest of (netlang/train/shards.py): dropout masks are drawn as that
        # batch's rows, so that they do not depend on how many processes share it.
        self.example_offset = 0
        # Batch statistics are those of that larger batch: the training-mode gradient pass
        # sums them across the processes (netlang/runtime/statistics.py), and moves the
        # running statistics.  Set before the pass is first compiled.
        self.statistics_across_processes = False
        self.layer_of = {graph.nodes[n]["name"]: graph.nodes[n]["layer"]
                         for n in list(graph.parameters().values()) + list(graph.buffers().values())}
        self.trainable = [name for name, node in graph.parameters().items()
                          if self.config.updates_layer(graph.nodes[node]["layer"])]
        self.input_grads = tuple(input_grads)
        self.optimizer = Optimizer(self.config.optimizer, {n: self.params[n] for n in self.trainable})
        # Noise inputs (`input z: [64] ~ normal`): name → {"distribution": ..., its arguments}.
        self.noise_inputs = {name: graph.nodes[node]["attrs"]["noise"]
                             for name, node in graph.graph["inputs"].items()
                             if graph.nodes[node]["attrs"].get("noise") is not None}

    def with_noise(self, feeds: dict, count: int | None = None) -> dict:
        """`feeds` with every noise input it lacks drawn afresh: one key per noise input (in
        the order the file declares them) from the engine's generator, as a dropout mask takes
        one, so draws follow the seed and the calls before; example e's element j is draw
        e · size + j of the key's stream (netlang/ops/noise.py `noise_input_array`), the same on
        every engine.  The batch has as many examples as the other feeds, or `count` when
        nothing else is fed (a generator reads noise alone)."""
        missing = [name for name in self.noise_inputs if name not in feeds]
        if not missing:
            return feeds
        if count is None:
            fed = list(feeds.values())
            if not fed:
                raise DataError(f"no batch size for noise input `{missing[0]}`: nothing else is "
                                f"fed, so say how many examples to draw")
            count = int(fed[0].shape[0] if hasattr(fed[0], "shape") else len(fed[0]))
        drawn = dict(feeds)
        for name in missing:
            shape = (count,) + tuple(self.graph.type_of(self.graph.graph["inputs"][name]).shape[1:])
            drawn[name] = noise_input_array(self.noise_inputs[name], shape,
                                            draw_dropout_key(self.rng)[0], self.dtype)
        return drawn

    def apply_gradients(self, grads: dict, lr: float) -> None:
        """One optimiser step from gradients computed apart ({parameter name: gradient}, as
        `gradients` returns them), on parameters in host memory: the regularisers' penalties
        added, the global norm clipped, then the optimiser's reference rule, in place.  The
        reference engine's steps take it; on the CPU engine, adversarial training
        (netlang/train/adversarial.py) takes it for gradients mixed from two passes (a step
        summing gradient shards takes the CPU engine's compiled `apply_update`)."""
        grads = {n: grads[n] for n in self.trainable}
        for name in self.trainable:
            node = self.graph.node_named(name)
            penalty = regularizer_gradient(self.config.regularizers, self.layer_of[name],
                                           self.graph.nodes[node]["attrs"].get("penalise", False),
                                           self.params[name])
            if penalty is not None:
                grads[name] = grads[name] + penalty
        if self.config.clip_norm:
            norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum())
                                     for g in grads.values())))
            if norm > self.config.clip_norm:
                factor = self.config.clip_norm / (norm + 1e-6)
                grads = {n: g * factor for n, g in grads.items()}
        self.optimizer.step(self.params, grads, lr)

    # The training loop's hooks for an engine whose memory is not the host's (runtime/cuda.py);
    # engines that compute on host arrays keep the defaults: nothing to upload, and each step's
    # loss and outputs are read on the host as they are.

    def upload(self, arrays: dict, batch_size: int, outputs=None):
        """A data set held where the engine computes, or None (the loop then feeds batches
        from the host arrays).  Without `outputs`, the training set: its `epoch(order)` serves
        each epoch's batches to the steps.  With `outputs` (the output or node names an
        evaluation computes), a set evaluated in order: its `examples(start, stop)` are a
        batch's inputs for `forward`."""
        return None

    def compilations(self, batch: int | None, evaluated: tuple = (), eval_batch: int = 0,
                     gradients_mode: str | None = None) -> list:
        """The programs a training run calls, each a `ProgramCompilation`
        (netlang/runtime/compilation.py) that makes it ready before the first step: the
        training step for batches of `batch` examples (None: no training step, for an engine
        that only evaluates while others step), or the gradient pass in `gradients_mode`
        when the run's steps call `gradients` instead, and the evaluation pass computing the
        nodes `evaluated` for batches of `eval_batch`.  None for an engine that compiles
        nothing."""
        return []

    def device_metrics(self, scores: str | None = None, labels: str | None = None, rule=None):
        """Running training metrics kept where the steps run, or None (see runtime/cuda.py)."""
        return None


def _engine_classes() -> list:
    """Every engine class defined so far (netlang.runtime imports them all), in the order
    they were defined."""
    found, pending = [], list(EngineBase.__subclasses__())
    while pending:
        engine = pending.pop(0)
        if engine not in found:
            found.append(engine)
            pending.extend(engine.__subclasses__())
    return found
