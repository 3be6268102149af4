"""The op registry and the families of ops that fill it."""

from netlang.ops.registry import OPS, OpDef, ParamSpec, ShapeContext, ShapeProblem, all_ops, get_op

__all__ = ["OPS", "OpDef", "ParamSpec", "ShapeContext", "ShapeProblem", "all_ops", "get_op"]
