"""Draw the graph IR with Graphviz: DOT text, and SVG/PNG through Graphviz's `dot` program.

One DOT node per input, layer and loss.  A layer's parameters are folded into its label
(`weight (6, 1, 5, 5)`), or drawn as small nodes of their own with `params=True`.  Edges carry
the shape of the tensor they move.  Block instances become nested clusters, following the
names the front end gives them (`layer1.0.conv2d_1` sits in cluster `layer1` › `layer1.0`).

Names and attribute values come from untrusted `.net` files, so every piece of user text goes
through `_quote`, and DOT identifiers are generated (`n12`, `cluster_3`), never user text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from netlang.errors import UsageError
from netlang.ir.types import format_shape

# What the command line accepts after `-o`, and how each is made.
DOT_SUFFIXES = (".dot", ".gv")
RENDERED_SUFFIXES = {".svg": "svg", ".png": "png"}
GRAPHVIZ_TIMEOUT_S = 300
ATTRS_PER_LINE = 3

_FOLDED_ROLES = ("param", "buffer", "internal")
_DRAWN_ROLES = ("input", "layer", "loss")

_STYLE = {
    "input": {"shape": "box", "style": '"rounded,filled"', "fillcolor": '"#dbeafe"',
              "color": '"#1d4ed8"'},
    "layer": {"shape": "box", "style": '"rounded,filled"', "fillcolor": '"#f8fafc"',
              "color": '"#475569"'},
    "loss": {"shape": "octagon", "style": "filled", "fillcolor": '"#fecaca"', "color": '"#b91c1c"',
             "penwidth": "2"},
    "param": {"shape": "note", "style": "filled", "fillcolor": '"#f1f5f9"', "color": '"#94a3b8"',
              "fontsize": "9"},
}
_OUTPUT_STYLE = {"style": '"rounded,filled,bold"', "fillcolor": '"#fde68a"', "color": '"#b45309"',
                 "penwidth": "2.5"}


def _attr_list(label: str, style: dict) -> str:
    return ", ".join([f"label={label}"] + [f"{k}={v}" for k, v in style.items()])


# --------------------------------------------------------------------------------------------
# Escaping


def _clean(text) -> str:
    """`text` as a str that Graphviz can take: no control characters, no lone surrogates."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(ch if ch == "\n" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else f"\\x{ord(ch):02x}"
                   for ch in text)


def _escape(text) -> str:
    """The body of a quoted DOT string that renders as `text`.

    Backslashes and quotes are backslash-escaped (so neither can end the string or form a
    Graphviz escape such as `\\N`), newlines become `\\n` line breaks, and `&` becomes `&amp;`
    (Graphviz decodes HTML entities in labels, so a name like `&lt;` must not turn into `<`,
    nor an unknown `&x;` reach the SVG as an undefined entity).
    """
    text = _clean(text)
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
    return text.replace("\n", "\\n")


def _quote(text) -> str:
    return f'"{_escape(text)}"'


def _label(lines) -> str:
    """A quoted multi-line label; each line escaped on its own."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


# --------------------------------------------------------------------------------------------
# Label text


def _compact(value):
    """(3, 3) → 3 and ((1, 1), (1, 1)) → 1, so the usual square cases read short."""
    if isinstance(value, (tuple, list)):
        items = [_compact(v) for v in value]
        if items and all(item == items[0] for item in items) and not isinstance(items[0], tuple):
            return items[0] if len(items) > 1 else tuple(items)
        return tuple(items)
    return value


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        inner = ", ".join(_format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)


def _defaults(op_name: str) -> dict:
    """Argument name → default value (raw and converted) for an op, from the registry."""
    try:
        from netlang.ops import get_op
        op = get_op(op_name)
    except Exception:  # a hand-built graph may name ops the registry does not know
        return {}
    out = {}
    for arg in getattr(op, "args", ()) or ():
        default = getattr(arg, "default", None)
        options = [default]
        try:
            options.append(arg.type.convert(default))
        except Exception:
            pass
        out[arg.name] = [_compact(v) for v in options]
    return out


def _key_attrs(op_name: str, attrs: dict) -> list[str]:
    """`k=v` for the attributes worth showing: not None, not the default, not all-zero padding."""
    defaults = _defaults(op_name)
    shown = []
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        compact = _compact(value)
        if key in defaults and compact in defaults[key]:
            continue
        if key == "padding" and compact in (0, "valid"):
            continue
        shown.append(f"{key}={_format_value(compact)}")
    return shown


def _chunks(items, size):
    return [", ".join(items[i:i + size]) for i in range(0, len(items), size)]


def _shape(graph, node) -> str:
    type_ = graph.nodes[node].get("type")
    if type_ is None:
        return "?"
    text = format_shape(type_.shape)
    dtype = getattr(type_, "dtype", "float32")
    return text if dtype == "float32" else f"{dtype} {text}"


def _param_lines(graph, layer_name: str, operands) -> list[str]:
    """How a layer's folded parameter operands read inside its label.

    Own parameters of one shape and kind share a line (`weight, bias (64,)`); shared, tied
    and other derived operands get a line each that says where they come from.
    """
    lines: list[str] = []
    groups: dict = {}  # (shape, kind) → index into lines, for this layer's own parameters
    names: dict = {}
    for operand in operands:
        data = graph.nodes[operand]
        local = str(data.get("name", operand)).rsplit(".", 1)[-1]
        shape = _shape(graph, operand)
        kind = " buffers" if data.get("role") == "buffer" else ""
        if data.get("role") == "internal":
            sources = [str(graph.nodes[s].get("name", s)) for s in data.get("inputs", ())]
            what = str(data.get("op", "?")) + (f" of {', '.join(sources)}" if sources else "")
            lines.append(f"{local.removesuffix('_tied')} {shape} = {what}")
        elif data.get("layer") != layer_name:
            lines.append(f"{local} {shape}{kind} shared with {data.get('layer')}")
        elif (shape, kind) in groups:
            index = groups[(shape, kind)]
            names[index].append(local)
            lines[index] = f"{', '.join(names[index])} {shape}{kind}"
        else:
            groups[(shape, kind)] = len(lines)
            names[len(lines)] = [local]
            lines.append(f"{local} {shape}{kind}")
    return lines


# --------------------------------------------------------------------------------------------
# DOT


def to_dot(graph, *, params: bool = False, title: str | None = None) -> str:
    """The graph as Graphviz DOT text.  `params=True` draws parameters as nodes of their own."""
    nodes = graph.nodes
    outputs: dict = {}
    for out_name, node in graph.graph.get("outputs", {}).items():
        outputs.setdefault(node, []).append(out_name)
    loss_weights = {node: weight for node, weight in graph.graph.get("losses", [])}
    drawn_roles = _DRAWN_ROLES + (_FOLDED_ROLES if params else ())
    try:
        order = graph.topological_order()
    except Exception:  # a cyclic or hand-built graph still draws, in creation order
        order = sorted(nodes, key=str)
    drawn = [n for n in order if nodes[n].get("role", "layer") in drawn_roles]
    ids = {node: f"n{i}" for i, node in enumerate(drawn)}

    # Cluster tree: the dotted prefixes of each node's (layer) name.
    root: dict = {"children": {}, "nodes": []}
    for node in drawn:
        data = nodes[node]
        role = data.get("role", "layer")
        owner = str(data.get("layer") or data.get("name", "")) if role in _FOLDED_ROLES else \
            str(data.get("name", ""))
        parts = owner.split(".")[:-1]
        where = root
        for depth in range(len(parts)):
            prefix = ".".join(parts[:depth + 1])
            where = where["children"].setdefault(prefix, {"children": {}, "nodes": []})
        where["nodes"].append(node)

    def node_line(node) -> str:
        data = nodes[node]
        role = data.get("role", "layer")
        name = str(data.get("name", node))
        op = str(data.get("op", "?"))
        if role in _FOLDED_ROLES:
            lines = [name, f"{op} {_shape(graph, node)}" if role == "internal"
                     else f"{role} {_shape(graph, node)}"]
            return f"{ids[node]} [{_attr_list(_label(lines), _STYLE['param'])}];"
        lines = [name]
        if role == "input":
            lines.append(f"input {_shape(graph, node)}")
        else:
            head = op
            if role == "loss" and node in loss_weights and loss_weights[node] != 1:
                head = f"{op} × {_format_value(float(loss_weights[node]))}"
            attrs = _key_attrs(op, data.get("attrs") or {})
            chunks = _chunks(attrs, ATTRS_PER_LINE)
            if chunks and len(head) + len(chunks[0]) <= 48:
                lines.append(f"{head}  {chunks.pop(0)}")
            else:
                lines.append(head)
            lines.extend(chunks)
            if not params:
                lines.extend(_param_lines(graph, name, [o for o in data.get("inputs", ())
                                                        if nodes[o].get("role") in _FOLDED_ROLES]))
            lines.append(f"→ {_shape(graph, node)}")
        for out_name in outputs.get(node, ()):
            lines.append("output" if str(out_name) == name else f"output {out_name}")
        style = dict(_STYLE.get(role, _STYLE["layer"]))
        if node in outputs:
            style.update(_OUTPUT_STYLE)
        return f"{ids[node]} [{_attr_list(_label(lines), style)}];"

    out = ["digraph netlang {"]
    graph_label = title if title is not None else os.path.basename(str(graph.graph.get("path") or ""))
    attrs = ['rankdir=TB', 'newrank=true', 'fontname="Helvetica"', 'fontsize=11']
    if graph_label:
        attrs += [f"label={_quote(graph_label)}", 'labelloc=t']
    out.append("  graph [" + ", ".join(attrs) + "];")
    out.append('  node [fontname="Helvetica", fontsize=10];')
    out.append('  edge [fontname="Helvetica", fontsize=9, color="#64748b"];')

    counter = [0]

    def emit(tree, indent):
        pad = "  " * indent
        for node in tree["nodes"]:
            out.append(pad + node_line(node))
        for prefix, child in tree["children"].items():
            counter[0] += 1
            out.append(f"{pad}subgraph cluster_{counter[0]} {{")
            out.append(f'{pad}  label={_quote(prefix)}; style="rounded,dashed"; color="#94a3b8";')
            emit(child, indent + 1)
            out.append(pad + "}")

    emit(root, 1)

    for node in drawn:
        for position, source in enumerate(nodes[node].get("inputs", ())):
            if source not in ids:
                continue  # a folded parameter
            style = ', style=dashed, color="#94a3b8"' if nodes[source].get("role") in _FOLDED_ROLES \
                else ""
            out.append(f"  {ids[source]} -> {ids[node]} "
                       f"[label={_quote(_shape(graph, source))}{style}];")
    out.append("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Files


def write_graph(graph, path, *, params: bool = False) -> str | None:
    """Write the graph to `path`: `.dot`/`.gv` as DOT text, `.svg`/`.png` drawn by Graphviz.

    `-` writes DOT to standard output.  Returns a one-line message for the user.
    Raises UsageError for an unknown extension, a missing or failing Graphviz, or a path
    that cannot be written.
    """
    path = os.fspath(path)
    if path == "-":
        sys.stdout.write(to_dot(graph, params=params))
        return None
    suffix = os.path.splitext(path)[1].lower()
    if suffix in DOT_SUFFIXES:
        data = to_dot(graph, params=params).encode("utf-8")
    elif suffix in RENDERED_SUFFIXES:
        data = _render(to_dot(graph, params=params), RENDERED_SUFFIXES[suffix])
    else:
        raise UsageError(f"cannot tell how to draw {path!r}: use a .dot, .svg or .png file name")
    from netlang.weights import atomic_write
    try:
        atomic_write(path, lambda handle: handle.write(data))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return f"wrote {path}"


def _render(dot_text: str, fmt: str) -> bytes:
    program = shutil.which("dot")
    if program is None:
        raise UsageError(f"drawing .{fmt} needs Graphviz's `dot` program: install the `graphviz` "
                         f"package (apt install graphviz / brew install graphviz), or write .dot")
    try:
        result = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                                capture_output=True, timeout=GRAPHVIZ_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"Graphviz's `dot` took longer than {GRAPHVIZ_TIMEOUT_S} s to draw "
                         f"the graph; write .dot instead") from None
    except OSError as exc:
        raise UsageError(f"cannot run Graphviz's `dot` ({program}): {exc.strerror or exc}") from None
    if result.returncode != 0 or not result.stdout:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        first = lines[0].strip() if lines else f"exit status {result.returncode}"
        raise UsageError(f"Graphviz's `dot` failed to draw .{fmt}: {first}")
    return result.stdout
