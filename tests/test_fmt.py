"""`netlang fmt`: canonical, idempotent, meaning-preserving, and it never loses a comment."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netlang
from netlang.cli import main
from netlang.errors import NetlangError
from netlang.frontend import ast
from netlang.frontend.format import MAX_WIDTH, expr, format_source, step
from netlang.frontend.parse_tables import KEYWORDS
from netlang.frontend.parser import parse, parse_with_comments
from netlang.frontend.to_ast import _number

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("**/*.net"))

LIB = """\
# A library: one constant and one block.
const lib_units = 16

block lib_block(units, scale = 1.0) {
  input x
  output out = x -> dense(units) -> relu  # scale is unused
}
"""

# Every construct, with comments in every kind of place.  It compiles (next to LIB).
FULL = """\
# A model that uses every construct.

import "lib.net"  # blocks from the library
const classes = 10  # digits
const width = 2 ** 3 * -(-4)
const half = classes // 2 % 7 - -1
const flag = not (classes > 5 and width <= 32) or classes == 10
const dims = (3, -width, (1,), ())
const name = "tab\\there \\"quoted\\" back\\\\slash"
input image: [28, 28, 1]  # grey levels
input label: int32[]

block head(units, act = true,) {   # header comment
  input x  # the features
  # a leading comment inside a block
  if act and units >= 10 {
    h = x -> dense(units) -> relu
  } else if units < 0 {  # never
    h = x -> dense(-units)
  } else {
    h = x
  }
  output out = h
  # dangling at the end of the block
}

trunk = image  # comment after the source
  -> conv2d(8, 3, padding = 1) as conv1 -> relu # two on one line
  # own line comment between steps
  -> maxpool(2)
  -> flatten



h = trunk -> dense(lib_units * 2) as fc1 -> relu
g = h -> dense(32) as fc2
g2 = g -> dense(32, share = fc2)
deep = h -> lib_block(32) * 2 as stack  # repeat of an imported block
stages = h -> ( dense(32)->relu )*2 as stage -> (dense(32) -> tanh) # grouped steps repeat together
pair = (h, deep) -> concat(axis = -1)
mixed = h + deep * g2
if flag { extra = mixed -> relu } else { extra = mixed }
recon = h -> dense(trunk.shape[0], tie = fc1)
logits = pair -> head(classes) as out_head
output logits
output probs = logits -> softmax

train {  # training
  loss cross_entropy(logits, label) + 0.5 * squared_error(recon, trunk)
  optimizer adam(lr=1e-3)  # default betas
  regularize l2(1e-4) on fc1,fc2
  batch_size 32
  epochs 2
  metrics accuracy, top_k(5)
  freeze conv1
}
# the end
"""

GROUPED = "y = x -> (a -> (b # inside a group\n -> c) * 2 as g) * n -> ((d)) -> (e) as f\n"

# Parses but need not compile: odd layouts and comments in awkward places.
ODD = [
    "input x: [4]\ny = x->dense(3)->relu\noutput y",
    "a, b = x -> split  # two targets\n",
    "c = (a < b) < c\nd = (-3) ** 2 + -3 ** 2 + a ** b ** c + (a ** b) ** c\ne = not not a and (b or c)\n",
    "f = x.shape[-1] // 2 + (x.size % 3) * -(y.rank)\ng = (a + b).shape[0]\nh = max(a, b, key = 1)",
    "y = x -> relu() -> f * (n + 1) -> g * (a.b) -> h * (-2) -> k * (1,) as kk",
    "block e() {}\nblock f() {  # only a comment\n}\ntrain {}\nif a {} else {}\n",
    "if a { x = 1 } else { # why\n if b { x = 2 } }\n",
    "if a { x = 1 } # after the if body\n else { x = 2 }\n",
    "if a { x = 1 } else { if b { x = 2 } # after the inner if\n }\n",
    "if a { x = 1 } else if b\n # inside the condition\n == c { x = 2 }\n",
    "y = f(1, # inside the arguments\n 2)\nz = x -> g(1, # inside a step\n 2) -> h\n",
    "block b(p, # inside the parameters\n q) { input x output x }\n",
    "w = # before the source\n x -> relu\n",
    "train {\n  loss mse(a, b) # the loss\n\n\n  # about the optimizer\n  optimizer sgd(lr = 0.1)\n}\n",
    "x = 1 y = 2 # two statements on a line\nz = 3",
    "# only comments\n\n\n# and blank lines\n",
    "",
    "const s = \"a\\\"b(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((\"\n",
    "input x\r\nh = x -> dense(2)  # crlf\r\n",
    "if a {} # between the if body and else\nelse {}\nif b {} else { # in an empty else\n}\n",
    GROUPED,
    "y = x " + "".join(f"-> dense({i}) " for i in range(20)) + "# long chain\n",
]


def comment_texts(source: str) -> list:
    return [text.rstrip() for _, _, text in parse_with_comments(source)[1]]


def check_text(source: str, path: str = "<string>") -> str:
    """The text-level promises: idempotent, same AST, same comments, fits where it can."""
    formatted = format_source(source, path)
    assert format_source(formatted, path) == formatted
    assert parse(formatted, path) == parse(source, path)
    assert comment_texts(formatted) == comment_texts(source)
    assert not re.search(r"[ \t]+$", formatted, re.M), "trailing whitespace"
    assert "\n\n\n" not in formatted and not formatted.startswith("\n")
    return formatted


def graph_facts(model) -> tuple:
    nodes = sorted((d["name"], d["op"], tuple(d["type"].shape),
                    tuple(model.graph.nodes[i]["name"] for i in d["inputs"]))
                   for _, d in model.graph.nodes(data=True))
    return json.dumps(model.summary().to_json(), sort_keys=True), nodes


def check_compiles_same(original: pathlib.Path, formatted: pathlib.Path) -> None:
    try:
        before = netlang.compile(original)
    except NetlangError:  # a library of blocks, say: then the copy must fail too
        with pytest.raises(NetlangError):
            netlang.compile(formatted)
        return
    assert graph_facts(netlang.compile(formatted)) == graph_facts(before)


@pytest.fixture(scope="module")
def formatted_examples(tmp_path_factory):
    """A formatted copy of the whole examples tree, so imports resolve to formatted libraries."""
    copy = tmp_path_factory.mktemp("fmt") / "examples"
    shutil.copytree(ROOT / "examples", copy)
    for path in copy.glob("**/*.net"):
        path.write_text(format_source(path.read_text("utf-8"), str(path)), "utf-8")
    return copy


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_examples_round_trip(example, formatted_examples):
    check_text(example.read_text("utf-8"), str(example))
    check_compiles_same(example, formatted_examples / example.relative_to(ROOT / "examples"))


def test_full_source_round_trip(tmp_path):
    (tmp_path / "lib.net").write_text(LIB)
    (tmp_path / "full.net").write_text(FULL)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "lib.net").write_text(check_text(LIB))
    formatted = check_text(FULL)
    (tmp_path / "out" / "full.net").write_text(formatted)
    check_compiles_same(tmp_path / "full.net", tmp_path / "out" / "full.net")


def test_full_source_canonical_form():
    formatted = format_source(FULL)
    assert "block head(units, act = true) {  # header comment\n  input x  # the features\n" in formatted
    assert "  } else if units < 0 {  # never\n" in formatted
    assert "const width = 2 ** 3 * --4\n" in formatted  # numbers as written: `-(-4)` is `--4`
    assert "optimizer adam(lr = 1e-3)  # default betas\n" in formatted
    assert "  regularize l2(1e-4) on fc1, fc2\n" in formatted
    assert "if flag {\n  extra = mixed -> relu\n} else {\n  extra = mixed\n}\n" in formatted
    assert ("stages = h -> (dense(32) -> relu) * 2 as stage -> dense(32) -> tanh"
            "  # grouped steps repeat together\n") in formatted
    # A chain keeps the author's breaks between steps; comments stay where they were.
    assert ("trunk = image  # comment after the source\n"
            "  -> conv2d(8, 3, padding = 1) as conv1 -> relu  # two on one line\n"
            "  # own line comment between steps\n"
            "  -> maxpool(2)\n") in formatted
    # Groups get one blank line; a run of blank lines collapses to one.
    assert 'import "lib.net"  # blocks from the library\n\nconst classes' in formatted
    assert "  -> flatten\n\nh = trunk" in formatted
    assert formatted.endswith("}\n# the end\n")


@pytest.mark.parametrize("source", ODD)
def test_odd_sources_round_trip(source):
    check_text(source)


def test_long_chains_break_and_short_ones_do_not():
    formatted = format_source(ODD[-1])
    lines = formatted.splitlines()
    assert lines[0] == "y = x" and all(line.startswith("  -> dense(") for line in lines[1:])
    assert lines[-1].endswith("  # long chain")
    assert format_source("y = x->dense(3)\n") == "y = x -> dense(3)\n"
    block = format_source("block b() { input x\n output y = x" + " -> relu" * 12 + " }")
    assert all(len(line) <= MAX_WIDTH for line in block.splitlines())
    assert "\n  output y = x\n    -> relu\n" in block


@pytest.mark.parametrize("source, expected", [
    ("((a + b)) * c", "(a + b) * c"),
    ("a + (b * c)", "a + b * c"),
    ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "a - b - c"),
    ("a / (b * c) // d % e", "a / (b * c) // d % e"),
    ("(a ** b) ** c", "(a ** b) ** c"),
    ("a ** (b ** c)", "a ** b ** c"),
    ("a ** (-b)", "a ** -b"),
    ("-(a ** b)", "-a ** b"),
    ("(-a) ** b", "(-a) ** b"),
    ("(-2) ** b", "(-2) ** b"),
    ("- - x", "--x"),
    ("a - (-2)", "a - -2"),
    ("not (a == b)", "not a == b"),
    ("(not a) == b", "(not a) == b"),
    ("(a < b) == (c < d)", "(a < b) == (c < d)"),
    ("(a and b) or c", "a and b or c"),
    ("a and (b or c)", "a and (b or c)"),
    ("not (a and b)", "not (a and b)"),
    ("(x).shape[(0)]", "x.shape[0]"),
    ("(-x).shape", "(-x).shape"),
    ("(2).x + (1.5).y", "(2).x + (1.5).y"),
    ("( 1 , )", "(1,)"),
    ("(1,2,)", "(1, 2)"),
    ("max(a=1,b = 2 ,)", "max(a = 1, b = 2)"),
    (r'"a\tb\\c\"d\qe"', r'"a\tb\\c\"dqe"'),  # `\q` is `q`
    ('"a\tb"', r'"a\tb"'),  # a raw tab comes out escaped
    ("1_000.0e-3 + .5", "1_000.0e-3 + .5"),
])
def test_expressions_print_with_minimal_parentheses(source, expected):
    assert format_source(f"const c = {source}") == f"const c = {expected}\n"


def test_trailing_comments_line_up_within_a_run():
    source = "y = x\n  -> dense(1) # a\n  -> relu\n  -> dense(100)   # b\nz = 1 # c\n"
    assert format_source(source) == ("y = x\n  -> dense(1)    # a\n  -> relu\n"
                                     "  -> dense(100)  # b\nz = 1  # c\n")


def test_comments_that_have_no_place_move_before_their_statement():
    assert format_source(ODD[10]) == ("# inside the arguments\ny = f(1, 2)\n"
                                      "z = x  # inside a step\n  -> g(1, 2) -> h\n")
    assert format_source(ODD[6]).startswith("if a {\n  x = 1\n} else {  # why\n  if b {")


def test_groups_print_canonically():
    source = "y = x->( conv2d(6,5)->relu )*3 as stage->((dense(3)))->(relu)*(n+1)\n"
    assert format_source(source) == \
        "y = x -> (conv2d(6, 5) -> relu) * 3 as stage -> dense(3) -> (relu) * (n + 1)\n"
    # Plain parentheses change nothing, so the canonical form drops them.
    assert format_source("y = x -> (a -> (b -> c)) -> d\n") == "y = x -> a -> b -> c -> d\n"
    # A group prints on one line; a comment inside it moves to the part before the group.
    assert format_source(GROUPED) == ("y = x  # inside a group\n"
                                      "  -> (a -> (b -> c) * 2 as g) * n -> d -> (e) as f\n")


def test_invalid_source_raises_the_parse_error():
    with pytest.raises(NetlangError, match="unexpected"):
        format_source("input x: [2\n", "bad.net")


# Expressions from random trees: printing then parsing gives the same tree back.

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True).filter(
    lambda s: s not in KEYWORDS)
NUMBER_TEXTS = st.from_regex(
    r"([0-9][0-9_]{0,3}(\.[0-9_]{0,3})?|\.[0-9][0-9_]{0,3})([eE][+-]?[0-9]{1,2})?", fullmatch=True)
# No lone surrogate or NUL: no source text may hold one (netlang/frontend/limits.py), and no
# escape writes one, so no string value has one.
STRINGS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                  max_size=8)
BINARY_OPS = ("or", "and", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "//", "%", "**")


def negate(node):
    """What the parser makes of `-node`: a number literal keeps its sign."""
    if isinstance(node, ast.Number):
        return ast.Number(-node.value, "-" + node.text)
    return ast.UnaryOp("-", node)


def _args(values):
    return st.lists(st.tuples(st.one_of(st.none(), NAMES), values), max_size=3).map(
        lambda items: tuple(ast.Arg(name, value) for name, value in items))


LEAVES = st.one_of(NAMES.map(ast.Name), NUMBER_TEXTS.map(lambda t: ast.Number(_number(t), t)),
                   STRINGS.map(ast.String), st.booleans().map(ast.Bool))


def _compound(children):
    return st.one_of(
        st.builds(ast.BinOp, st.sampled_from(BINARY_OPS), children, children),
        st.builds(ast.UnaryOp, st.just("not"), children),
        children.map(negate),
        st.builds(ast.Attribute, children, NAMES),
        st.builds(ast.Index, children, children),
        st.builds(ast.Call, NAMES, _args(children)),
        st.lists(children, max_size=3).map(lambda items: ast.Tuple(tuple(items))),
    )


EXPRESSIONS = st.recursive(LEAVES, _compound, max_leaves=12)
STEPS = st.builds(ast.Step, NAMES, st.one_of(st.none(), _args(EXPRESSIONS)),
                  st.one_of(st.none(), EXPRESSIONS), st.one_of(st.none(), NAMES))
# A group always has a repeat or a label: plain parentheses leave no group in the AST.
STEPS_AND_GROUPS = st.recursive(STEPS, lambda steps: st.builds(
    ast.Group, st.lists(steps, min_size=1, max_size=3).map(tuple),
    st.one_of(st.none(), EXPRESSIONS), st.one_of(st.none(), NAMES)).filter(
    lambda group: group.repeat is not None or group.label is not None), max_leaves=6)


# Example counts sized to the default run's ten minutes (each run draws new examples): 120, 60
# and 80 took 1.4, 5.0 and 3.6 s on a two-core machine that runs the suite in ten minutes.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS)
def test_random_expressions_reparse_equal(tree):
    module = parse(f"const c = {expr(tree)}")
    assert module.items[0].value == tree


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS, st.lists(STEPS_AND_GROUPS, min_size=1, max_size=4))
def test_random_chains_reparse_equal(source, steps):
    text = f"y = {expr(source)} -> " + " -> ".join(step(s) for s in steps)
    assert parse(text).items == (ast.Assign((ast.Name("y"),), ast.Chain(source, tuple(steps))),)
    check_text(text)


# Comments dropped at random into whitespace: every one survives, and the promises hold.

def _gaps(source: str) -> list:
    """Offsets of whitespace outside strings and comments, where a comment may go."""
    taken = set()
    for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*', source):
        taken.update(range(m.start(), m.end()))
    return [i for i, ch in enumerate(source) if ch in " \n" and i not in taken]


FUZZED = [FULL, LIB, *ODD[5:15], *(path.read_text("utf-8") for path in EXAMPLES)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZED).flatmap(lambda source: st.tuples(
    st.just(source), st.dictionaries(st.sampled_from(_gaps(source)), st.booleans(), max_size=12))))
def test_random_comment_placement(case):
    source, gaps = case
    pieces, last = [], 0
    for n, gap in enumerate(sorted(gaps)):  # own line, or trailing what comes before
        pieces += [source[last:gap], f"{chr(10) if gaps[gap] else ' '}# c{n}\n"]
        last = gap + 1
    check_text("".join(pieces) + source[last:])


# The command line

UGLY = "input x:[3]\ny=x->dense(2)   # two\n"
PRETTY = "input x: [3]\n\ny = x -> dense(2)  # two\n"


def test_cli_prints(tmp_path, capsys):
    path = tmp_path / "m.net"
    path.write_text(UGLY)
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == PRETTY
    assert path.read_text() == UGLY


def test_cli_check(tmp_path, capsys):
    path = tmp_path / "m.net"
    path.write_text(UGLY)
    assert main(["fmt", "--check", str(path)]) == 1
    assert "would be reformatted" in capsys.readouterr().err
    path.write_text(PRETTY)
    assert main(["fmt", "--check", str(path)]) == 0


def test_cli_write(tmp_path):
    path = tmp_path / "m.net"
    path.write_text(UGLY)
    assert main(["fmt", "-w", str(path)]) == 0
    assert path.read_text() == PRETTY
    assert main(["fmt", "--check", str(path)]) == 0


def test_cli_reports_syntax_errors(tmp_path, capsys):
    path = tmp_path / "bad.net"
    path.write_text("input x: [3\n")
    assert main(["fmt", str(path)]) == 2
    assert "bad.net:" in capsys.readouterr().err


def test_the_examples_are_in_canonical_form():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "examples"
    for path in sorted(root.rglob("*.net")):
        source = path.read_text(encoding="utf-8")
        assert format_source(source, str(path)) == source, f"{path.name}: run `netlang fmt -w`"


def test_author_line_breaks_between_steps_are_kept():
    source = ("input x: [4, 4, 1]\n\n"
              "y = x\n"
              "  -> conv2d(2, 3, padding = 1) -> relu -> maxpool(2)\n"
              "  -> flatten -> dense(3)\n")
    assert format_source(source) == source
    one_line = "input x: [4]\n\ny = x -> dense(3) -> relu\n"
    assert format_source(one_line) == one_line
