"""The reference engine: trains and runs a graph on the NumPy interpreter.

Slow but exact, in float32 or float64; the compiled engines are tested
against it step for step.
"""

from __future__ import annotations

import numpy as np

from netlang.interp import ExecContext, execute, needed_nodes
from netlang.ir.graph import Graph
from netlang.ir.train_config import TrainConfig
from netlang.ops import get_op
from netlang.passes.memory import EXTERNAL
from netlang.pipeline import check_mode, forward_program, input_gradient_program, training_program
from netlang.runtime.base import EngineBase


class ReferenceEngine(EngineBase):
    """Runs the pipeline's programs on the NumPy interpreter (netlang/interp.py)."""

    name = "reference"
    kernel_noun = "reference forward"

    @staticmethod
    def missing_kernels(graph, nodes) -> list[str]:
        """Ops among `nodes` with no reference forward (inputs and parameters are fed)."""
        return sorted({graph.op(n) for n in nodes
                       if graph.op(n) not in EXTERNAL and get_op(graph.op(n)).forward_rule is None})

    def __init__(self, graph: Graph, config: TrainConfig | None = None, params: dict | None = None,
                 *, seed: int = 0, dtype=np.float32, input_grads=()):
        super().__init__(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
        self._train = {}     # mode → the training program (see `_training`)
        self._forward = {}   # (names, mode, with losses) → the forward program
        self._vjp = {}       # output name → its input-gradient program (see `vjp`)

    def _training(self, mode: str = "train"):
        """(graph, gradients, order, targets) of the training program in `mode`, built on
        first use: forward-only users never pay for autodiff."""
        if mode not in self._train:
            program = training_program(self.graph, self.trainable, self.input_grads, mode)
            # The differentiated values too: a gradient with no path to the objective is zero,
            # shaped like its value.
            targets = program.kept + list(program.gradients.of)
            self._train[mode] = (program.graph, program.gradients,
                                 needed_nodes(program.graph, targets), targets)
        return self._train[mode]

    def gradients(self, feeds: dict, mode: str = "train"):
        """(loss, name → gradient, outputs) for one batch, fresh arrays; parameters are not
        changed."""
        graph, grads, order, targets = self._training(check_mode(mode))
        ctx = ExecContext(mode=mode, rng=self.rng, dtype=self.dtype)
        values = execute(graph, feeds, self.params, targets, ctx, order=order)
        self._state_updates = ctx.state_updates
        named = {}
        for node, g in grads.of.items():
            name = graph.nodes[node]["name"]
            # No path to the objective: the gradient is zero, shaped like the value itself.
            # Copies: an interpreted value may be a parameter or an input itself, and the
            # caller owns what comes back, as from the compiled engines.
            named[name] = np.array(values[g]) if g is not None else np.zeros_like(values[node])
        outputs = {name: np.array(values[n]) for name, n in graph.graph["outputs"].items()}
        return float(values[grads.objective]), named, outputs

    def train_step(self, feeds: dict, lr: float):
        """One optimiser step on one batch; returns (loss, outputs)."""
        loss, grads, outputs = self.gradients(feeds)
        self.apply_gradients({n: grads[n] for n in self.trainable}, lr)
        for name, value in self._state_updates.items():  # running statistics
            self.params[name][...] = value
        return loss, outputs

    def vjp(self, feeds: dict, output: str, cotangent) -> dict:
        """{input name: gradient of Σ output · cotangent} for one batch, in evaluation mode,
        for each float input that was fed; `output` names an output or any node.  Parameters
        are not changed."""
        if output not in self._vjp:
            self._vjp[output] = input_gradient_program(self.graph, output)
        program = self._vjp[output]
        graph, grads = program.graph, program.gradients
        ctx = ExecContext(mode="eval", rng=self.rng, dtype=self.dtype)
        values = execute(graph, {**feeds, program.cotangent: cotangent}, self.params,
                         list(program.grad_nodes.values()), ctx, order=program.order)
        result = {}
        for node, g in grads.of.items():
            name = graph.nodes[node]["name"]
            if g is not None:
                result[name] = values[g]
            elif name in feeds:  # no path to the output: the gradient is zero
                result[name] = np.zeros(np.shape(feeds[name]), dtype=self.dtype)
        return result

    def _forward_program(self, names: tuple, mode: str, with_losses: bool = False):
        key = (names, mode, with_losses)
        if key not in self._forward:
            self._forward[key] = forward_program(self.graph, names, mode=mode,
                                                 with_losses=with_losses)
        return self._forward[key]

    def forward(self, feeds: dict, mode: str = "eval", outputs=None) -> dict:
        """{name: value} of the outputs (or the nodes named in `outputs`) for one batch; in
        training mode with batch statistics and fresh dropout masks, the running statistics
        left as they are."""
        names = tuple(outputs or self.graph.graph["outputs"])
        program = self._forward_program(names, check_mode(mode))
        ctx = ExecContext(mode=mode, rng=self.rng, dtype=self.dtype)
        values = execute(program.graph, feeds, self.params, program.targets, ctx,
                         order=program.order)
        return {name: np.array(values[node]) for name, node in zip(names, program.targets)}

    def loss(self, feeds: dict) -> float:
        """The objective on one batch in evaluation mode (no dropout)."""
        program = self._forward_program((), "eval", with_losses=True)
        ctx = ExecContext(mode="eval", rng=self.rng, dtype=self.dtype)
        values = execute(program.graph, feeds, self.params, program.kept, ctx,
                         order=program.order)
        return float(sum(w * float(values[n]) for n, w in self.graph.graph["losses"]))
