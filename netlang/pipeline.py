"""The one order of the passes: the programs every engine runs, built from a lowered graph.

An engine runs three kinds of program, and each is the lowered graph put through the passes
in one order, written here and nowhere else:

- a training program (`training_program`): the training-mode rewrite (each dropout becomes a
  product with its mask, passes/training.py), then reverse-mode autodiff (passes/autodiff.py)
  to the trainable parameters and any inputs asked for.  In evaluation mode the rewrite is
  left out: dropout is the identity and batch norm reads its running statistics;
- a forward program (`forward_program`): in evaluation mode the graph as lowered, with each
  batch norm folded into the product before it (passes/fold_batchnorm.py) where the engine
  compiles kernels; in training mode the training rewrite (batch statistics, fresh masks);
- an input-gradient program (`input_gradient_program`): autodiff from one output seeded by a
  cotangent the caller feeds (a vector-Jacobian product, e.g. saliency), in evaluation mode;
- a step program (`step_program`): the model reading one step of a sequence input, its
  recurrent layers' states carried in and out (passes/stepping.py); an engine made on its
  graph runs its forward program, so sampling runs one character per call.

A compiled engine then plans how a program runs (`plan_execution`: fusion, then memory).
Every pass that changes a graph is followed by `after_pass`, which verifies the IR when
NETLANG_VERIFY=1.  The passes stay in netlang/passes/; this module only orders them.
"""

from __future__ import annotations

import dataclasses
import functools

from netlang.config import timed
from netlang.errors import UsageError
from netlang.interp import needed_nodes
from netlang.ir.graph import Graph
from netlang.passes import after_pass
from netlang.passes.autodiff import Gradients, differentiate, differentiate_output
from netlang.passes.fold_batchnorm import fold_batchnorm
from netlang.passes.fusion import FusionPlan, plan_fusion
from netlang.passes.memory import BufferPlan, plan_buffers
from netlang.passes.stepping import StepGraph, step_graph
from netlang.passes.training import training_graph

# What a program computes: "train" with batch statistics and fresh dropout masks, "eval" with
# running statistics and no dropout.
MODES = ("train", "eval")


def check_mode(mode: str) -> str:
    """`mode` when it is one of MODES; a one-line UsageError naming the choices else."""
    if mode not in MODES:
        raise UsageError(f"unknown mode `{mode}`: use \"train\" (batch statistics, dropout) "
                         f"or \"eval\"")
    return mode


def node_of(graph: Graph, name: str) -> int:
    """The node of the output named `name`, else of any node so named (a layer's output)."""
    node = graph.graph["outputs"].get(name)
    if node is None:
        node = graph.node_named(name)
    if node is None:
        raise UsageError(f"the model has no output or layer named `{name}`")
    return node


def _gradient_names(graph: Graph, gradients: Gradients) -> dict:
    """Name → gradient node, for each differentiated node with a path to the root."""
    return {graph.nodes[n]["name"]: g for n, g in gradients.of.items() if g is not None}


@dataclasses.dataclass
class TrainingProgram:
    """A graph differentiated for training, and what a step over it keeps."""
    graph: Graph
    gradients: Gradients   # the objective, and each differentiated node's gradient node
    mode: str

    @functools.cached_property
    def grad_nodes(self) -> dict:
        """Parameter or input name → its gradient node (absent: no path to the objective)."""
        return _gradient_names(self.graph, self.gradients)

    @functools.cached_property
    def kept(self) -> list:
        """The values a step leaves readable: the objective, each loss, each output and each
        gradient."""
        graph = self.graph
        return ([self.gradients.objective] + [n for n, _ in graph.graph["losses"]]
                + list(graph.graph["outputs"].values()) + list(self.grad_nodes.values()))

    @functools.cached_property
    def order(self) -> list:
        """The nodes a step computes, in execution order."""
        return needed_nodes(self.graph, self.kept)


def training_program(graph: Graph, trainable=(), input_grads=(),
                     mode: str = "train") -> TrainingProgram:
    """The objective of `graph` (a lowered graph with losses) and its gradients with respect
    to the parameters named in `trainable` and the inputs named in `input_grads`."""
    check_mode(mode)
    if mode == "train":
        with timed("training graph"):
            program = after_pass(training_graph(graph), "training")
    else:
        program = graph.copy()
    with timed("autodiff"):
        wrt = [program.node_named(name) for name in trainable]
        wrt += [program.graph["inputs"][name] for name in input_grads]
        gradients = differentiate(program, wrt)
        after_pass(program, "autodiff")
    return TrainingProgram(program, gradients, mode)


@dataclasses.dataclass
class ForwardProgram:
    """A graph run forward, and the nodes it computes (ids of the lowered graph: every
    rewrite here keeps them)."""
    graph: Graph
    targets: list   # the node of each name asked for, in order
    kept: list      # the targets, then each loss when asked for
    mode: str

    @functools.cached_property
    def order(self) -> list:
        """The nodes the program computes, in execution order."""
        return needed_nodes(self.graph, self.kept)


def forward_program(graph: Graph, names, *, mode: str = "eval", with_losses: bool = False,
                    fold: bool = False) -> ForwardProgram:
    """The forward pass of `graph` computing the outputs (or nodes) `names`, and the losses
    when `with_losses`.  `fold`: batch norm folded into the products before it, for an
    engine that compiles the evaluation program (the reference runs the graph as lowered)."""
    check_mode(mode)
    targets = [node_of(graph, name) for name in names]
    kept = list(targets) + ([n for n, _ in graph.graph["losses"]] if with_losses else [])
    if mode == "train":
        program = after_pass(training_graph(graph), "training")
    elif fold:
        program = after_pass(fold_batchnorm(graph, kept), "fold_batchnorm")
    else:
        program = graph
    return ForwardProgram(program, targets, kept, mode)


@dataclasses.dataclass
class InputGradientProgram:
    """A graph differentiated from one output to every float input (evaluation mode)."""
    graph: Graph
    cotangent: str          # the name of the input that takes the output's cotangent
    gradients: Gradients    # `objective` is the output itself

    @functools.cached_property
    def grad_nodes(self) -> dict:
        """Input name → its gradient node (absent: no path from the input to the output)."""
        return _gradient_names(self.graph, self.gradients)

    @functools.cached_property
    def order(self) -> list:
        """The nodes the program computes, in execution order."""
        return needed_nodes(self.graph, list(self.grad_nodes.values()))


def input_gradient_program(graph: Graph, output: str) -> InputGradientProgram:
    """Σ output · cotangent differentiated to every float input of `graph`; `output` names
    an output or any node."""
    program = graph.copy()
    node = node_of(program, output)
    wrt = [n for n in program.graph["inputs"].values() if program.type_of(n).is_float]
    cotangent, gradients = differentiate_output(program, node, wrt)
    return InputGradientProgram(after_pass(program, "autodiff"), cotangent, gradients)


def step_program(graph: Graph, sequence_input: str, outputs) -> StepGraph:
    """`graph` computing `outputs` (names) at one step of the input `sequence_input`, the
    states of its recurrent layers fed in and given out (passes/stepping.py)."""
    with timed("stepping"):
        step = step_graph(graph, sequence_input, outputs)
    after_pass(step.graph, "stepping")
    return step


def plan_execution(graph: Graph, order, kept, *, skip=(), target: str = "cpu",
                   workers: int = 1) -> tuple[FusionPlan, BufferPlan]:
    """(fusion plan, buffer plan) of a compiled program computing `order` and keeping the
    values of `kept`; `skip`: nodes the program never stores (weight gradients that the
    optimiser update absorbs).  `target` and `workers` size the kernels' workspaces."""
    kept = set(kept)
    fusion = plan_fusion(graph, order, kept)
    buffers = plan_buffers(graph, order, fusion, kept, skip=set(skip), target=target,
                           workers=workers)
    return fusion, buffers
