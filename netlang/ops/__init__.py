"""The op registry: the table of ops, filled by importing every family of ops.

Importing this package registers every op (each family module defines its ops
at import time), so `get_op` and `all_ops` always see the whole table.  Code
outside `netlang.ops` looks ops up here and reads their facts; it never
branches on an op's name.
"""

from netlang.ops import (
    activations,
    conv,
    conv_kernels,
    core,
    dense,
    elementwise,
    loss_terms,
    losses,
    merge,
    noise,
    norm,
    norm_onnx,
    pool,
    rbm,
    rbm_cuda,
    recurrent,
    recurrent_cuda,
    recurrent_kernels,
    reduce,
    reshape,
)
from netlang.ops.registry import (
                                  ONNX_CHANNELS_FIRST,
                                  ONNX_CONSTANT_OPS,
                                  ONNX_INPUTS_READ,
                                  ONNX_READERS,
                                  OPS,
                                  OpDef,
                                  ParamSpec,
                                  ShapeContext,
                                  ShapeProblem,
)


def stated_integer_bounds(graph, node) -> list:
    """For each consumer of integer value `node`: how many values its op says that operand
    takes (`OpDef.integer_bound`: an embedding's vocabulary, a loss's classes), or None where
    it says nothing."""
    bounds = []
    for user in graph.successors(node):
        rule, operands = get_op(graph.op(user)).integer_bound, graph.operands(user)
        bound = None if rule is None else rule(operands.index(node), graph.nodes[user]["attrs"],
                                               [graph.type_of(o) for o in operands])
        bounds.append(None if bound is None else int(bound))
    return bounds


def get_op(name: str) -> OpDef | None:
    """The definition of the op called `name`, or None when no family defines one."""
    return OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    """Every registered op by name, in the order the families define them."""
    return dict(OPS)


def onnx_reader(op_type: str):
    """The rule reading ONNX op `op_type` into netlang layers (`netlang import`), or None."""
    return ONNX_READERS.get(op_type)


def reads_channels_first(op_type: str) -> bool:
    """Whether ONNX op `op_type` reads its first operand channels first, (N, C, ...)."""
    return op_type in ONNX_CHANNELS_FIRST


def onnx_constant_op(op_type: str) -> bool:
    """Whether ONNX op `op_type` computes a constant by nature (read before the others)."""
    return op_type in ONNX_CONSTANT_OPS


def onnx_inputs_read(op_type: str):
    """fn(attribute, constant) → the inputs ONNX op `op_type`'s reader reads, or None: all."""
    return ONNX_INPUTS_READ.get(op_type)


__all__ = ["OPS", "OpDef", "ParamSpec", "ShapeContext", "ShapeProblem", "all_ops", "get_op",
           "onnx_constant_op", "onnx_inputs_read", "onnx_reader", "reads_channels_first",
           "stated_integer_bounds",
           # the families, imported above for the ops they register
           "activations", "conv", "conv_kernels", "core", "dense", "elementwise", "loss_terms",
           "losses", "merge", "noise", "norm", "norm_onnx", "pool", "rbm", "rbm_cuda", "recurrent",
           "recurrent_cuda",
           "recurrent_kernels",
           "reduce", "reshape"]
