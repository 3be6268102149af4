"""Each renderer's table of scalar spellings (constants and math functions in templates).

The op and optimiser templates write math through the table they are handed (`c.exp(x)`,
`k.math.sqrt(x)`); the CPU table spells NumPy, the CUDA table numba.cuda device code.  These
tests evaluate both spellings of every entry and check that each renderer's programs carry
only their own spelling: no text of one renderer is rewritten into another's.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import netlang
from netlang.codegen import cpu, cuda, update
from netlang.codegen.spelling import CpuSpelling, CudaSpelling
from netlang.interp import needed_nodes
from netlang.passes.autodiff import differentiate
from netlang.passes.fusion import plan_fusion
from netlang.passes.memory import plan_buffers
from netlang.passes.training import training_graph

CPU, CUDA = CpuSpelling(), CudaSpelling()
FUNCTIONS = sorted(name for name, _ in inspect.getmembers(CpuSpelling, inspect.isfunction)
                   if not name.startswith("_"))
# Arguments each function is defined for, some written as expressions with nested parentheses.
ARGUMENTS = {"log": ["a", "a * (b + 1.0)"], "sqrt": ["a", "a * (b + 1.0)"],
             "log1p": ["a", "-a * (b - 1.5)"], "divide": [("a", "b"), ("a - b", "b * (a + 1.0)")]}
# The functions of two operands (the others take one).
BINARY = {"divide"}
VALUES = [dict(a=0.75, b=2.0), dict(a=1.5, b=0.25), dict(a=0.5, b=3.0)]


def _evaluate(text: str, values: dict, renderer: str) -> float:
    """A rendered scalar expression's value, in the namespace its renderer's source gives it:
    NumPy and the float type `F`, which every generated module defines, and the table's own
    imports."""
    table = CPU if renderer == "cpu" else CUDA
    names = {"np": np, "F": np.float64}
    exec("\n".join(table.imports), names)
    if renderer == "cuda":
        del names["np"]   # a CUDA kernel calls no NumPy function
    return float(eval(text, names, dict(values)))


def test_the_cuda_table_spells_every_function_of_the_cpu_table_its_own_way():
    assert set(FUNCTIONS) >= {"exp", "expm1", "log", "log1p", "tanh", "sqrt", "sign", "erf"}
    for name in FUNCTIONS:
        operands = ("x", "y") if name in BINARY else ("x",)
        assert getattr(CudaSpelling, name) is not getattr(CpuSpelling, name), name
        assert "np." not in getattr(CUDA, name)(*operands), name
        assert "math." not in getattr(CPU, name)(*operands), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_both_spellings_of_a_function_compute_the_same_value(name):
    for argument in ARGUMENTS.get(name, ["a", "a * (b - 1.0)", "-(a - (b - a))"]):
        for values in VALUES:
            operands = argument if name in BINARY else (argument,)
            on_cpu = _evaluate(getattr(CPU, name)(*operands), values, "cpu")
            on_cuda = _evaluate(getattr(CUDA, name)(*operands), values, "cuda")
            assert on_cuda == pytest.approx(on_cpu, rel=1e-12), (name, argument, values)


@pytest.mark.parametrize("a,b,c", [(2.0, 1.0, 3.0), (2.0, 3.0, 1.0), (2.0, 1.0, 1.0),
                                   (-0.5, 1.0, 3.0)])
def test_cuda_sign_of_an_expression_with_nested_parentheses(a, b, c):
    # The regular expression that once rewrote CPU text for CUDA skipped this call.
    text = CUDA.sign("a * (b - c)")
    assert "np." not in text
    assert _evaluate(text, dict(a=a, b=b, c=c), "cuda") == np.sign(a * (b - c))
    # An operand of lower precedence than a comparison is grouped, not split by it.
    both = CUDA.sign("a if a > b else c")
    assert _evaluate(both, dict(a=a, b=b, c=c), "cuda") == np.sign(a if a > b else c)
    assert CUDA.sign("f3[i]") == "(1.0 if f3[i] > 0 else (-1.0 if f3[i] < 0 else 0.0))"


def test_constants_are_spelt_by_each_table():
    assert CPU(0.5) == CUDA(0.5) == "F(0.5)"
    assert CPU(2) == "F(2.0)" and CPU(True) == "True"
    assert CPU(math.inf) == "F(np.inf)" and CPU(-math.inf) == "F(-np.inf)"
    assert CUDA(math.inf) == "F(math.inf)" and CUDA(-math.inf) == "F(-math.inf)"


MODEL = """
input x: [5]
input t: [3]
h = x -> dense(4) -> elu(0.5) -> dense(4) -> gelu -> tanh -> dense(3) -> sigmoid
s = x -> dense(3) -> log_softmax
output y = h + s
train {
  loss binary_cross_entropy(h, t) + mse(y, t)
  optimizer adam
  regularize elastic_net(l1 = 1e-4, l2 = 1e-3)
  clip_norm 1.0
}
"""


def _training_step_source(graph, target: str) -> str:
    """The source of `graph`'s training step as `target`'s renderer writes it (not compiled),
    with the sources of the functions it calls from modules of their own (worker functions,
    each parameter's update: `Program.parts`)."""
    render, plan_class = {"cpu": (cpu.render_program, update.UpdatePlan),
                          "cuda": (cuda.render_program, cuda.CudaUpdatePlan)}[target]
    graph = training_graph(graph)
    grads = differentiate(graph, list(graph.parameters().values()))
    grad_nodes = {graph.nodes[n]["name"]: g for n, g in grads.of.items() if g is not None}
    keep = [grads.objective] + [n for n, _ in graph.graph["losses"]] + \
        list(graph.graph["outputs"].values()) + list(grad_nodes.values())
    order = needed_nodes(graph, keep)
    config = graph.graph["train"]
    updates = [update.ParamUpdate(name, g, graph.nodes[graph.node_named(name)]["layer"],
                               graph.nodes[graph.node_named(name)]["attrs"].get("penalise", False))
               for name, g in grad_nodes.items()]
    plan = plan_class(graph, order, updates, config.optimizer, config.regularizers,
                      config.clip_norm, "float32")
    fusion = plan_fusion(graph, order, set(keep))
    buffers = plan_buffers(graph, order, fusion, set(keep), target=target)
    program = render(graph, order, fusion, buffers, dtype="float32", function="train_step",
                     keep=keep, update=plan, mode="train")
    return "\n".join([program.source] + [source for _, source in getattr(program, "parts", ())])


def test_each_renderers_programs_carry_only_its_own_spelling():
    """The training step of a model whose templates call every math function: NumPy's
    functions in the CPU's source, `math`'s in the CUDA kernels."""
    graph = netlang.compile(MODEL).graph
    cpu_text, cuda_text = (_training_step_source(graph, target) for target in ("cpu", "cuda"))
    for function in ("exp", "expm1", "log", "log1p", "tanh", "sqrt", "sign"):
        assert f"np.{function}(" in cpu_text, function
        assert f"np.{function}(" not in cuda_text, function
    for function in ("exp", "expm1", "log", "log1p", "tanh", "sqrt", "erf"):
        assert f"math.{function}(" in cuda_text, function
    assert "(1.0 if " in cuda_text   # sign, inline
    assert "np.divide(" in cpu_text and "np.divide(" not in cuda_text   # adam's update
    assert "math." not in cpu_text
    # NumPy has no erf: the CPU's is Python's, imported by name at the top of the program.
    assert " erf(" in cpu_text and "\nfrom math import erf\n" in cpu_text
