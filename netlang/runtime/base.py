"""What every engine holds: parameters, the optimiser's state, the random generator.

Engines differ in how they run a step; their state is the same, so checkpoints,
resume and the Python API treat every engine alike.
"""

from __future__ import annotations

import numpy as np

from netlang.ir.train_config import TrainConfig
from netlang.ops.init import initialize
from netlang.train.optimizers import Optimizer


class EngineBase:
    name = "base"

    def __init__(self, graph, config: TrainConfig | None = None, params: dict | None = None, *,
                 seed: int = 0, dtype=np.float32, input_grads=()):
        self.graph = graph
        self.config = config or graph.graph.get("train") or TrainConfig()
        self.dtype = np.dtype(dtype).type
        # Parameters and buffers by name; the engine updates these arrays in place.
        self.params = params if params is not None else initialize(graph, seed, dtype)
        self.rng = np.random.default_rng([seed, 1])  # dropout masks: a stream apart from init's
        frozen = set(self.config.freeze)
        self.layer_of = {graph.nodes[n]["name"]: graph.nodes[n]["layer"]
                         for n in list(graph.parameters().values()) + list(graph.buffers().values())}
        self.trainable = [name for name, node in graph.parameters().items()
                          if graph.nodes[node]["layer"] not in frozen]
        self.input_grads = tuple(input_grads)
        self.optimizer = Optimizer(self.config.optimizer, {n: self.params[n] for n in self.trainable})

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

    def device_metrics(self, scores: str | None = None, labels: str | None = None, rule=None):
        """Running training metrics kept where the steps run, or None (see runtime/cuda.py)."""
        return None

    def _vjp_graph(self, output: str):
        """(graph, cotangent input name, Gradients): a copy of the graph differentiated from
        `output` (an output's or any node's name) to every float input, for `vjp`."""
        from netlang.passes import after_pass
        from netlang.passes.autodiff import differentiate_output
        graph = self.graph.copy()
        node = graph.graph["outputs"].get(output)
        if node is None:
            node = graph.node_named(output)
        if node is None:
            from netlang.errors import UsageError
            raise UsageError(f"the model has no output or layer named `{output}`")
        wrt = [n for n in graph.graph["inputs"].values() if graph.type_of(n).is_float]
        cotangent, grads = differentiate_output(graph, node, wrt)
        return after_pass(graph, "autodiff"), cotangent, grads
