"""The reference engine: trains and runs a graph on the NumPy interpreter.

Slow but exact, in float32 or float64; the compiled engines are tested
against it step for step.
"""

from __future__ import annotations

import numpy as np

from netlang.interp import ExecContext, execute, needed_nodes
from netlang.ir.graph import Graph
from netlang.ir.train_config import TrainConfig
from netlang.passes import after_pass
from netlang.runtime.base import EngineBase
from netlang.passes.autodiff import differentiate
from netlang.passes.training import training_graph
from netlang.train.optimizers import regularizer_gradient


class ReferenceEngine(EngineBase):
    name = "reference"

    def __init__(self, graph: Graph, config: TrainConfig | None = None, params: dict | None = None,
                 *, seed: int = 0, dtype=np.float32, input_grads=()):
        super().__init__(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
        self._train = None
        self._vjp = {}  # output name → its differentiated graph (see `vjp`)

    # The training graph is built on first use: forward-only users never pay for autodiff.
    def _training(self):
        if self._train is None:
            graph = after_pass(training_graph(self.graph), "training")
            wrt = [graph.node_named(n) for n in self.trainable]
            wrt += [graph.graph["inputs"][n] for n in self.input_grads]
            grads = differentiate(graph, wrt)
            after_pass(graph, "autodiff")
            targets = [grads.objective] + [g for g in grads.of.values() if g is not None]
            targets += list(grads.of)  # the differentiated values too: zero gradients take their shape
            targets += [n for n, _ in graph.graph["losses"]]
            targets += list(graph.graph["outputs"].values())
            self._train = (graph, grads, needed_nodes(graph, targets), targets)
        return self._train

    def gradients(self, feeds: dict, mode: str = "train"):
        """(loss, name → gradient) for one batch; parameters are not changed."""
        graph, grads, order, targets = self._training()
        ctx = ExecContext(mode=mode, rng=self.rng, dtype=self.dtype)
        values = execute(graph, feeds, self.params, targets, ctx, order=order)
        self._state_updates = ctx.state_updates
        named = {}
        for node, g in grads.of.items():
            name = graph.nodes[node]["name"]
            # No path to the objective: the gradient is zero, shaped like the value itself.
            named[name] = values[g] if g is not None else np.zeros_like(values[node])
        outputs = {name: values[n] for name, n in graph.graph["outputs"].items()}
        return float(values[grads.objective]), named, outputs

    def train_step(self, feeds: dict, lr: float):
        """One optimiser step on one batch; returns (loss, outputs)."""
        loss, grads, outputs = self.gradients(feeds)
        grads = {n: grads[n] for n in self.trainable}
        for name in self.trainable:
            node = self.graph.node_named(name)
            penalty = regularizer_gradient(self.config.regularizers, self.layer_of[name],
                                           self.graph.nodes[node]["attrs"].get("penalise", False),
                                           self.params[name])
            if penalty is not None:
                grads[name] = grads[name] + penalty
        if self.config.clip_norm:
            norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
            if norm > self.config.clip_norm:
                factor = self.config.clip_norm / (norm + 1e-6)
                grads = {n: g * factor for n, g in grads.items()}
        self.optimizer.step(self.params, grads, lr)
        for name, value in self._state_updates.items():  # running statistics
            self.params[name][...] = value
        return loss, outputs

    def vjp(self, feeds: dict, output: str, cotangent) -> dict:
        """{input name: gradient of Σ output · cotangent} for one batch, in evaluation mode,
        for each float input that was fed; `output` names an output or any node.  Parameters
        are not changed."""
        if output not in self._vjp:
            self._vjp[output] = self._vjp_graph(output)
        graph, seed, grads = self._vjp[output]
        ctx = ExecContext(mode="eval", rng=self.rng, dtype=self.dtype)
        values = execute(graph, {**feeds, seed: cotangent}, self.params,
                         [g for g in grads.of.values() if g is not None], ctx)
        result = {}
        for node, g in grads.of.items():
            name = graph.nodes[node]["name"]
            if g is not None:
                result[name] = values[g]
            elif name in feeds:  # no path to the output: the gradient is zero
                result[name] = np.zeros(np.shape(feeds[name]), dtype=self.dtype)
        return result

    def forward(self, feeds: dict, mode: str = "eval", outputs=None) -> dict:
        names = outputs or list(self.graph.graph["outputs"])
        nodes = [self.graph.graph["outputs"].get(n) or self.graph.node_named(n) for n in names]
        ctx = ExecContext(mode=mode, rng=self.rng, dtype=self.dtype)
        values = execute(self.graph, feeds, self.params, nodes, ctx)
        return {name: values[node] for name, node in zip(names, nodes)}

    def loss(self, feeds: dict) -> float:
        """The objective on one batch in evaluation mode (no dropout)."""
        graph, grads, _, _ = self._training()
        ctx = ExecContext(mode="eval", rng=self.rng, dtype=self.dtype)
        return float(execute(graph, feeds, self.params, [grads.objective], ctx)[grads.objective])
