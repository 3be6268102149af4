"""An imported model's layers written as a .net file a person can read, and its weights.

Layers that feed exactly one single-operand layer are written as chains
(`image -> conv2d(6, 5) as conv1 -> relu -> maxpool(2)`); a value gets a name only where the
file needs one (read twice, merged with others, or an output).  Names come from the ONNX graph:
inputs and outputs keep theirs, a layer with weights is called after its initializers
(`conv1.weight` → `as conv1`), a named intermediate value after its ONNX tensor; each is made a
netlang identifier, unique, and a name that had to change is listed in a comment at the top.
The text is put in canonical form (`netlang fmt`) before it is returned.
"""

from __future__ import annotations

import re

from netlang.frontend.format import format_source
from netlang.interchange.onnx_import_graph import ImportedModel, Layer, arguments_written
from netlang.ops import all_ops

# Words a name cannot be: the language's keywords (grammar/netlang.lark).
KEYWORDS = {"and", "as", "block", "const", "else", "false", "if", "import", "input", "not", "on",
            "or", "output", "train", "true"}


class Names:
    """Netlang identifiers for ONNX names: sanitised, unique, and never a keyword or an op."""

    def __init__(self, changed: list):
        self.taken = set(KEYWORDS) | set(all_ops())
        self.changed = changed   # (what, ONNX name, netlang name) of each name made anew

    def make(self, onnx_name: str, what: str | None = None, clash: str = "") -> str:
        """A fresh identifier for `onnx_name` (with `clash` appended where it is taken, and
        then numbered); `what` (input, output, layer) records a change of name for the
        comment."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", onnx_name) or "value"
        if base[0].isdigit():
            base = f"v{base}"
        if base in self.taken:
            base += clash
        name, count = base, 1
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        if what is not None and name != onnx_name:
            self.changed.append((what, onnx_name, name))
        return name


def _literal(value) -> str:
    """A value as .net source: numbers, booleans, bare words, tuples."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _call(layer: Layer, name: str | None) -> str:
    positional, keywords = arguments_written(layer.op, layer.args)
    args = [_literal(v) for v in positional] + [f"{k} = {_literal(v)}" for k, v in keywords.items()]
    text = layer.op + (f"({', '.join(args)})" if args else "")
    return text + (f" as {name}" if name else "")


def write_source(model: ImportedModel, origin: str, opset: int) -> tuple[str, dict]:
    """The .net text of `model` (in canonical form) and its weights, name → array, as the
    compiled file names them."""
    layers = model.layers
    readers: dict[int, list[int]] = {}
    for index, layer in enumerate(layers):
        for operand in layer.operands:
            readers.setdefault(operand, []).append(index)
    # A value needs a name where it is an input or an output, read twice, or merged.
    named = {index for index, layer in enumerate(layers) if layer.op == "input"}
    named |= set(model.outputs.values())
    named |= {operand for layer in layers for operand in layer.operands
              if len(layer.operands) > 1 or len(readers[operand]) > 1 or layer.expression}

    # Layers and values share one namespace (a layer without `as` is named after the value it
    # computes), so a value named after its layer is `conv2_out`.
    changed: list = []
    layer_names = value_names = Names(changed)
    value_name: dict[int, str] = {}
    for index, layer in enumerate(layers):
        if layer.op == "input":
            value_name[index] = value_names.make(layer.source, "input")
    declared = {}   # layer → the output it is declared as (`output logits = ...`)
    for output, index in model.outputs.items():
        if index not in value_name:
            value_name[index] = value_names.make(output, "output")
            declared[index] = output
    # Inputs and outputs are the model's interface: they keep their names, and a layer whose
    # name they took (netlang names an unnamed layer after its value) yields.
    layer_name, weights = {}, {}
    for index, layer in enumerate(layers):
        if layer.weights:
            layer_name[index] = layer_names.make(layer.name_hint, "layer", clash="_layer")
            for param, array in layer.weights.items():
                weights[f"{layer_name[index]}.{param}"] = array
    for index in sorted(named - set(value_name)):
        # The ONNX tensor's name, less the op netlang's export appends (`block1/Relu`).
        value_name[index] = value_names.make(layers[index].source.rsplit("/", 1)[0],
                                             clash="_out")

    def chain(index: int) -> str:
        steps = []
        while True:
            layer = layers[index]
            operands = layer.operands
            if layer.expression:   # tensor math starts a chain: its operands are named
                start = layer.expression.format(*(value_name[o] for o in operands))
                return " -> ".join([start, *reversed(steps)])
            steps.append(_call(layer, layer_name.get(index)))
            if len(operands) == 1 and operands[0] not in value_name:
                index = operands[0]
                continue
            start = value_name[operands[0]] if len(operands) == 1 else \
                "(" + ", ".join(value_name[o] for o in operands) + ")"
            return " -> ".join([start, *reversed(steps)])

    lines = [f"# Imported from {origin} (ONNX opset {opset}) by `netlang import`."]
    if changed:
        lines.append("# ONNX names renamed (not netlang identifiers, or taken):")
        lines.extend(f"#   {what} `{onnx_name}` is `{name}`" for what, onnx_name, name in changed)
    lines.append("")
    for index, layer in enumerate(layers):
        if layer.op == "input":
            dtype = "" if layer.dtype == "float32" else layer.dtype
            shape = ", ".join(str(size) for size in layer.shape)
            note = f"  # {layer.note}" if layer.note else ""
            lines.append(f"input {value_name[index]}: {dtype}[{shape}]{note}")
    lines.append("")
    for index, layer in enumerate(layers):
        if layer.op == "input" or index not in value_name:
            continue
        keyword = "output " if index in declared else ""
        lines.append(f"{keyword}{value_name[index]} = {chain(index)}")
    for output, index in model.outputs.items():
        if declared.get(index) != output:
            lines.append(f"output {value_names.make(output, 'output')} = {value_name[index]}")
    return format_source("\n".join(lines) + "\n"), weights
