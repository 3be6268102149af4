"""`netlang graph`: DOT text for the graph IR, and SVG/PNG through Graphviz when it is installed."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest

import netlang
from netlang.cli import main
from netlang.errors import UsageError
from netlang.ir.dot import to_dot, write_graph
from netlang.ir.graph import Graph
from netlang.ir.types import TensorType, format_shape

LENET = """
input image: [28, 28, 1]
input label: int32[]
features = image -> conv2d(6, 5, padding = 2) -> relu -> maxpool(2)
  -> conv2d(16, 5) -> relu -> maxpool(2)
logits = features -> flatten -> dense(120) as fc1 -> relu -> dense(84) -> relu -> dense(10)
output logits
train {
  loss cross_entropy(logits, label)
  optimizer sgd(lr = 0.05)
}
"""

BLOCKS = """
block residual(filters) {
  input x
  y = x -> conv2d(filters, 3, padding = 1) -> relu
  output out = y + x
}
input image: [8, 8, 4]
h = image -> residual(4) * 2 as layer1 -> global_avgpool
output probs = h -> dense(3) -> softmax
"""

HOSTILE_NAMES = [
    'in"put',
    'back\\slash',
    'new\nline',
    'quote"];\n  evil [label="x',
    '\\"; } digraph x { ',
    'trailing\\',
    'amp&lt;&bogus;<b>',
    'tab\tctrl\x01nul\x00',
    '\\N\\G\\l',
]

QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _unescape(body: str) -> str:
    """A quoted DOT string's body back to the text our escaping started from."""
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out).replace("&amp;", "&")


def _structure(dot: str) -> str:
    """The DOT text with every quoted string replaced by `"S"`; nothing else may be in quotes."""
    return QUOTED.sub('"S"', dot)


def _labels(dot: str) -> list[str]:
    return [_unescape(m.group(1)[1:-1]) for m in re.finditer(r'label=("(?:[^"\\\n]|\\.)*")', dot)]


def _compile(tmp_path, source, name="model.net"):
    path = tmp_path / name
    path.write_text(source)
    return path, netlang.compile(str(path))


# --------------------------------------------------------------------------------------------
# DOT text


def test_dot_has_every_layer_and_edge_shapes(tmp_path):
    _, model = _compile(tmp_path, LENET)
    dot = to_dot(model.graph)
    assert dot.startswith("digraph netlang {") and dot.rstrip().endswith("}")
    g = model.graph
    labels = "\n".join(_labels(dot))
    for node, data in g.nodes(data=True):
        if data["role"] in ("layer", "input", "loss"):
            assert data["name"] in labels, data["name"]
            assert format_shape(data["type"].shape) in labels
    # Parameters are folded into their layer's label, not drawn.
    assert "weight (6, 1, 5, 5)" in labels
    assert "weight (120, 400)" in labels
    assert not any(line.startswith("conv2d_1.weight") for line in labels.splitlines())
    # One edge per data operand, labelled with the tensor's shape.
    edges = re.findall(r'(n\d+) -> (n\d+) \[label="([^"]*)"', dot)
    data_edges = [(s, t) for t, d in g.nodes(data=True) if d["role"] != "param"
                  for s in d["inputs"] if g.nodes[s]["role"] not in ("param", "buffer")]
    assert len(edges) == len(data_edges)
    assert {e[2] for e in edges} >= {"(None, 28, 28, 1)", "(None, 28, 28, 6)", "(None, 400)",
                                     "(None, 10)", "int32 (None,)"}
    # Outputs and losses stand out.
    logits_line = next(line for line in dot.splitlines() if 'label="logits\\n' in line)
    assert "penwidth" in logits_line and "output" in logits_line
    loss_line = next(line for line in dot.splitlines() if "cross_entropy_1" in line)
    assert "octagon" in loss_line


def test_dot_clusters_block_instances(tmp_path):
    _, model = _compile(tmp_path, BLOCKS)
    dot = to_dot(model.graph)
    assert 'label="layer1"' in dot and 'label="layer1.0"' in dot and 'label="layer1.1"' in dot
    # layer1.0 is nested inside layer1.
    lines = dot.splitlines()
    outer = next(i for i, line in enumerate(lines) if 'label="layer1";' in line)
    inner = next(i for i, line in enumerate(lines) if 'label="layer1.0";' in line)
    assert outer < inner
    depth = 0
    for line in lines[outer - 1:inner]:
        depth += line.count("{") - line.count("}")
    assert depth >= 2
    assert dot.count("subgraph cluster_") == 3
    # The residual's add (named after the block's output) has both of its inputs drawn.
    add_id = re.search(r'(n\d+) \[label="layer1\.0\.out\\nadd', dot).group(1)
    assert len(re.findall(rf"-> {add_id} ", dot)) == 2


def test_dot_params_as_nodes(tmp_path):
    _, model = _compile(tmp_path, LENET)
    dot = to_dot(model.graph, params=True)
    labels = "\n".join(_labels(dot))
    assert "conv2d_1.weight" in labels and "fc1.bias" in labels
    assert re.search(r'n\d+ -> n\d+ \[label="\(6, 1, 5, 5\)", style=dashed', dot)


def _hostile_graph():
    g = Graph()
    x = g.add_op("input", (), {"shape": (None, 3)}, TensorType((None, 3)), name=HOSTILE_NAMES[0],
                 role="input")
    g.graph["inputs"][HOSTILE_NAMES[0]] = x
    previous = x
    for i, name in enumerate(HOSTILE_NAMES[1:]):
        w = g.add_op("param", (), {"shape": (3, 3)}, TensorType((3, 3)), name=f"{name}.weight",
                     role="param", layer=name)
        previous = g.add_op("dense", (previous, w), {"units": 3, "note": name}, TensorType((None, 3)),
                            name=name)
    block_layer = g.add_op("relu", (previous,), {}, TensorType((None, 3)),
                           name='blk"\\.0\n.relu_1')
    g.graph["outputs"]['out"\\put'] = block_layer
    g.graph["path"] = 'dir/we"ird\\name.net'
    return g


@pytest.mark.parametrize("params", [False, True])
def test_dot_escapes_hostile_names(params):
    g = _hostile_graph()
    dot = to_dot(g, params=params)
    # No raw newline inside a quoted string, and outside quoted strings only DOT structure.
    structure = _structure(dot)
    assert '"' not in structure.replace('"S"', "")
    for line in structure.splitlines():
        assert re.fullmatch(r'[\w\s\[\]=,;{}>.\-#"]*', line), line
    assert "evil" not in structure and "digraph x" not in structure
    assert structure.count("{") == structure.count("}")
    # Every name comes back intact from its label.
    texts = "\n".join(_labels(dot))
    for name in HOSTILE_NAMES:
        clean = name.replace("\t", "\\x09").replace("\x01", "\\x01").replace("\x00", "\\x00")
        assert clean in texts, name
    assert 'out"\\put' in texts


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("params", [False, True])
def test_graphviz_accepts_hostile_names(params):
    dot = to_dot(_hostile_graph(), params=params)
    result = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    root = ElementTree.fromstring(result.stdout)
    text = "".join(root.itertext())
    assert "evil" in text  # drawn as text inside a label, not as a node of its own
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "evil" not in titles
    node_ids = [t for t in titles if t and re.fullmatch(r"n\d+", t)]
    expected = len(HOSTILE_NAMES) + 1 + (len(HOSTILE_NAMES) - 1 if params else 0)
    assert len(node_ids) == expected


# --------------------------------------------------------------------------------------------
# Files and the command line


def test_cli_graph_writes_dot(tmp_path, capsys):
    path, _ = _compile(tmp_path, LENET)
    out = tmp_path / "out.dot"
    assert main(["graph", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph netlang {") and "conv2d_1" in text and "(None, 400)" in text
    assert str(out) in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_graph_svg_without_graphviz(tmp_path, capsys, monkeypatch):
    path, _ = _compile(tmp_path, LENET)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    out = tmp_path / "out.svg"
    assert main(["graph", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "Graphviz" in err and "graphviz" in err and ".dot" in err
    assert not out.exists()


def test_cli_graph_unknown_extension(tmp_path, capsys):
    path, _ = _compile(tmp_path, LENET)
    assert main(["graph", str(path), "-o", str(tmp_path / "out.pdf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".dot" in err and ".svg" in err


def test_cli_graph_unwritable_path(tmp_path, capsys):
    path, _ = _compile(tmp_path, LENET)
    assert main(["graph", str(path), "-o", str(tmp_path / "missing" / "out.dot")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err


def test_graphviz_failure_is_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho 'Error: something broke' >&2\necho second line >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: str(fake))
    _, model = _compile(tmp_path, LENET)
    with pytest.raises(UsageError) as info:
        write_graph(model.graph, tmp_path / "out.svg")
    assert "Error: something broke" in info.value.message and "second" not in info.value.message


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_cli_graph_svg_and_png(tmp_path):
    path, _ = _compile(tmp_path, BLOCKS)
    svg, png = tmp_path / "out.svg", tmp_path / "out.png"
    assert main(["graph", str(path), "-o", str(svg)]) == 0
    root = ElementTree.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "layer1.0.conv2d_1" in "".join(root.itertext())
    assert main(["graph", str(path), "-o", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_graph_params_flag_draws_parameter_nodes(tmp_path):
    from netlang.cli import main
    model = tmp_path / "m.net"
    model.write_text("input x: [4]\noutput y = x -> dense(3) as fc\n")
    plain, detailed = tmp_path / "plain.dot", tmp_path / "params.dot"
    assert main(["graph", str(model), "-o", str(plain)]) == 0
    assert main(["graph", str(model), "-o", str(detailed), "--params"]) == 0
    assert "fc.weight" not in plain.read_text().split("label=")[0]
    assert detailed.read_text().count("->") > plain.read_text().count("->")
