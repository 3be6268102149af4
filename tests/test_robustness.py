"""Hostile and degenerate input: every case ends in a NetlangError (or a model), quickly.

Missing, empty, binary, non-UTF-8 files and directories; absurdly deep nesting
and very long files; numbers and repeat counts that would blow up; the CLI's
exit status and stderr; that compiling never imports the code generator's
heavy dependencies; and the examples mutated by hypothesis (tests/mutations.py: op swaps,
huge numbers, deep nesting, text that is not Unicode, import chains), never escaping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import make_import_chain, mutate, op_names

import netlang
from netlang.cli import main
from netlang.errors import NetlangError, NetlangFileError, NetlangImportError, NetlangSyntaxError

ROOT = Path(__file__).resolve().parent.parent
GOOD = "input x: [4]\ny = x -> dense(3) -> relu\n"


def compile_error(source_or_path, **options) -> NetlangError:
    with pytest.raises(NetlangError) as info:
        netlang.compile(source_or_path, **options)
    return info.value


def quick_error(source: str, seconds: float = 5.0) -> NetlangError:
    """The NetlangError `source` raises, with a position, within `seconds`."""
    start = time.perf_counter()
    error = compile_error(source, path="big.net")
    assert time.perf_counter() - start < seconds
    assert error.line is not None and error.column is not None
    return error


# ---- files ---------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "missing.net"
    error = compile_error(path)
    assert isinstance(error, NetlangFileError)
    assert error.path == str(path) and "no such file" in error.message
    assert error.render() == f"error: no such file: {path}"


def test_missing_file_by_string_path(tmp_path):
    error = compile_error(str(tmp_path / "missing.net"))
    assert isinstance(error, NetlangFileError) and "no such file" in error.message


@pytest.mark.parametrize("content", ["", "   \n\t\n  \n", "\ufeff"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.net"
    path.write_text(content, "utf-8")
    error = compile_error(path)
    assert isinstance(error, NetlangFileError) and "empty" in error.message
    assert error.path == str(path)


def test_empty_source_text():
    error = compile_error("  \n\n", path="blank.net")
    assert isinstance(error, NetlangFileError) and "empty" in error.message
    assert error.path == "blank.net"


def test_file_with_only_comments_needs_an_input(tmp_path):
    path = tmp_path / "comments.net"
    path.write_text("# nothing here yet\n", "utf-8")
    error = compile_error(path)
    assert "no `input`" in error.message and (error.line, error.column) == (1, 1)


def test_binary_file(tmp_path):
    path = tmp_path / "model.net"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    error = compile_error(path)
    assert isinstance(error, NetlangFileError) and "binary" in error.message
    assert error.path == str(path)


def test_directory(tmp_path):
    error = compile_error(tmp_path)
    assert isinstance(error, NetlangFileError) and "directory" in error.message
    (tmp_path / "dir.net").mkdir()
    error = compile_error(tmp_path / "dir.net")
    assert isinstance(error, NetlangFileError) and "directory" in error.message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_file_is_not_read_forever():
    start = time.perf_counter()
    error = compile_error(Path("/dev/zero"))
    assert isinstance(error, NetlangFileError) and time.perf_counter() - start < 2


def test_non_utf8_file_points_at_the_bad_byte(tmp_path):
    path = tmp_path / "latin1.net"
    path.write_bytes("input x: [4]\n# café\ny = x -> relu\n".encode("latin-1"))
    error = compile_error(path)
    assert isinstance(error, NetlangFileError) and "UTF-8" in error.message
    assert (error.line, error.column) == (2, 6)
    assert "^" in error.render()


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.net"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert netlang.compile(path).shapes["y"] == (None, 3)
    assert netlang.compile("\ufeff" + GOOD).shapes["y"] == (None, 3)


def test_oversized_file(tmp_path):
    path = tmp_path / "huge.net"
    with open(path, "wb") as handle:
        handle.write(GOOD.encode())
        handle.write(b"#" * (5 * 1024 * 1024) + b"\n")
    error = compile_error(path)
    assert isinstance(error, NetlangFileError) and "bytes" in error.message


def test_control_characters_are_named_not_printed():
    error = compile_error("input x: [4]\x01\n", path="ctl.net")
    assert isinstance(error, NetlangSyntaxError)
    assert "U+0001" in error.message and (error.line, error.column) == (1, 13)


def test_unterminated_string():
    error = compile_error('import "lib.net\ninput x: [4]\n', path="s.net")
    assert "unterminated string" in error.message and (error.line, error.column) == (1, 8)


# ---- nesting -------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "input x: [4]\nconst c = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n",
    "input x: [4]\nconst c = " + "[" * 10_000 + "\n",
    "input x: [4]\nconst c = " + "- " * 10_000 + "1\n",
    "input x: [4]\nconst c = " + "not " * 10_000 + "true\n",
    "input x: [4]\nconst c = " + "2 ** " * 5_000 + "1\n",
    "input x: [4]\nconst c = x" + ".shape" * 5_000 + "\n",
    "input x: [4]\nconst c = (1,)" + "[0]" * 5_000 + "\n",
    "input x: [4]\n" + "if true { " * 5_000 + "y = x" + " }" * 5_000 + "\n",
    "input x: [4]\nconst c = 1" + " + 1" * 5_000 + "\n",
    "input x: [4]\nconst c = true" + " and true" * 5_000 + "\n",
    "input x: [4]\nconst c = 1" + " * 1" * 5_000 + "\n",
], ids=["parens", "brackets", "minus", "not", "power", "attribute", "index", "if", "sum", "and",
        "product"])
def test_deep_nesting_is_refused_quickly(source):
    error = quick_error(source)
    assert isinstance(error, NetlangSyntaxError)
    assert "nested" in error.message or "deep" in error.message


def test_moderate_nesting_still_compiles():
    source = ("input x: [4]\nconst c = " + "(" * 50 + "2" + ")" * 50 + "\n"
              "const d = 1" + " + 1" * 60 + "\n"
              "y = x -> dense(c + d)\n")
    assert netlang.compile(source).shapes["y"] == (None, 63)


def test_deep_blocks_around_long_expressions():
    expression = "1" + " + 0" * 80
    blocks = "".join(
        f"block b{i}(n) {{\n  input x\n  const c = {expression}\n  output y = x -> b{i + 1}(n * c)\n}}\n"
        for i in range(30))
    blocks += "block b30(n) {\n  input x\n  output y = x -> dense(n)\n}\n"
    source = blocks + "input x: [4]\nz = x -> b0(3)\n"
    assert list(netlang.compile(source).outputs.values()) == [(None, 3)]
    # Where Python's stack is too small for it, the outcome is a NetlangError at the statement
    # being compiled, not a RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(260)
    try:
        with pytest.raises(NetlangError) as info:
            netlang.compile(source, path="deep.net")
    finally:
        sys.setrecursionlimit(limit)
    assert "nested too deeply" in info.value.message and info.value.line == source.count("\n")


def test_recursive_blocks():
    error = compile_error("block a(n) {\n input x\n output y = x -> b(n)\n}\n"
                          "block b(n) {\n input x\n output y = x -> a(n)\n}\n"
                          "input x: [4]\nz = x -> a(3)\n", path="rec.net")
    assert "instantiates itself" in error.message


# ---- size ----------------------------------------------------------------------------------

def test_200000_layer_chain():
    error = quick_error("input x: [4]\ny = x" + " -> relu" * 200_000 + "\n")
    assert "too long" in error.message


def test_a_megabyte_of_tokens():
    error = quick_error("input x: [4]\n" + "const c = 1 + 2\n" * 70_000)
    assert "too long" in error.message
    error = quick_error("input x: [4]\n" + "".join(f"const c{i} = {i}\n" for i in range(80_000)))
    assert "too long" in error.message


def test_a_long_valid_chain_compiles():
    start = time.perf_counter()
    model = netlang.compile("input x: [4]\ny = x" + " -> relu" * 5_000 + "\n")
    assert model.shapes["y"] == (None, 4)
    assert time.perf_counter() - start < 10


def test_many_definitions_in_reverse_dependency_order():
    source = "input x: [4]\n" + "".join(f"const c{i + 1} = c{i} + 1\n" for i in reversed(range(3000)))
    model = netlang.compile(source + "const c0 = 1\ny = x -> dense(c3000)\n")
    assert model.shapes["y"] == (None, 3001)


def test_repeats_of_repeats_cannot_explode():
    error = quick_error(textwrap.dedent("""\
        block a(n) {
          input x
          output y = x -> (relu) * 1000
        }
        block b(n) {
          input x
          output y = x -> a(n) * 1000
        }
        input x: [4]
        z = x -> b(4) * 1000
        """), seconds=30)  # a billion layers without the limit; it stops after 20,000
    assert "layers" in error.message


@pytest.mark.parametrize("expression", [
    "10 ** 64 ** 2", "(10 ** 60) * (10 ** 60) * (10 ** 60) * (10 ** 60) * (10 ** 60)",
    "1e308 * 10", "int(1e308 * 10)", "(-8) ** 0.5", "0 ** -1", "1e300 ** 2", "1 / 0", "5 // 0",
    "5 % 0", "round(1e308) * 1e308",
])
def test_numbers_that_would_overflow(expression):
    error = quick_error(f"input x: [4]\nconst c = {expression}\ny = x -> dense(c)\n", seconds=2)
    assert error.line == 2


@pytest.mark.parametrize("digits", [100, 5000])
def test_number_with_too_many_digits(digits):
    error = quick_error("input x: [4]\ntrain {\n  batch_size " + "9" * digits + "\n}\n", seconds=2)
    assert isinstance(error, NetlangSyntaxError) and (error.line, error.column) == (3, 14)
    assert "too large" in error.message and len(error.message) < 100


@pytest.mark.parametrize("source", [
    "input x: [4]\ny = x -> leaky_relu(1e999)\n",
    "input x: [4]\ny = x -> dense(1e999)\n",
    "input x: [4]\ntrain {\n  clip_norm 1e999\n}\n",
    "input x: [4]\ntrain {\n  optimizer sgd(lr = 1e999)\n}\n",
    "input x: [4]\ntrain {\n  optimizer sgd(lr = 2 ** 300)\n}\n",
    "input x: [4]\ntrain {\n  optimizer sgd(lr = round(1e300) ** 64)\n}\n",
    "input x: [2 ** 40]\n",
    "input x: [1e999]\n",
])
def test_infinite_and_huge_values_are_refused(source):
    error = quick_error(source, seconds=2)
    assert error.line is not None


def test_doubling_strings_and_tuples():
    for seed in ('"ab"', "(1, 2)"):
        source = f"input x: [4]\nconst s0 = {seed}\n" + "".join(
            f"const s{i + 1} = s{i} + s{i}\n" for i in range(60))
        error = quick_error(source, seconds=2)
        assert "too long" in error.message


def test_huge_layers_are_refused():
    error = quick_error("input x: [4]\ny = x -> dense(10 ** 12)\n", seconds=2)
    assert "too large" in error.message
    error = quick_error("input x: [100000, 100000, 3]\ny = x -> conv2d(100000, 1)\n", seconds=2)
    assert "too large" in error.message


# ---- imports -------------------------------------------------------------------------------

def test_import_of_a_directory_and_of_a_binary_file(tmp_path):
    (tmp_path / "lib.net").mkdir()
    (tmp_path / "blob.net").write_bytes(b"\x00\x01\x02")
    (tmp_path / "main.net").write_text('import "lib.net"\nimport "blob.net"\ninput x: [4]\n')
    error = compile_error(tmp_path / "main.net")
    assert isinstance(error, NetlangImportError)
    assert [d.loc.line for d in error.diagnostics] == [1, 2]
    assert "directory" in error.diagnostics[0].message and "binary" in error.diagnostics[1].message


def test_self_import(tmp_path):
    (tmp_path / "me.net").write_text('import "me.net"\ninput x: [4]\n')
    error = compile_error(tmp_path / "me.net")
    assert isinstance(error, NetlangImportError) and "import cycle" in error.message


# ---- the command line ----------------------------------------------------------------------

def test_cli_check_reports_errors_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "bad.net"
    path.write_text("input x: [4]\ny = x -> dense(3)\nz = y + x\n")
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}:3:7: error: cannot broadcast (None, 3) from `y` and "
                                   f"(None, 4) from `x`")
    assert "   3 | z = y + x\n" in captured.err and "     |       ^\n" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.net",
    lambda d: d,
    lambda d: (d / "empty.net", (d / "empty.net").write_text(""))[0],
    lambda d: (d / "bin.net", (d / "bin.net").write_bytes(b"\0\0"))[0],
    lambda d: (d / "deep.net", (d / "deep.net").write_text("input x: [4]\nconst c = " + "(" * 9999))[0],
], ids=["missing", "directory", "empty", "binary", "deep"])
def test_cli_check_on_unreadable_files(tmp_path, capsys, make):
    path = make(tmp_path)
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() and "Traceback" not in captured.err
    assert "error:" in captured.err


def test_cli_check_success(tmp_path, capsys):
    path = tmp_path / "ok.net"
    path.write_text(GOOD)
    assert main(["check", str(path)]) == 0
    assert "Total params: 15" in capsys.readouterr().out


def test_cli_as_a_subprocess():
    bad = ROOT / "tests" / "errors" / "unknown_layer.net"
    result = subprocess.run([sys.executable, "-m", "netlang.cli", "check", str(bad)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "unknown layer `maxpol` (did you mean `maxpool`?)" in result.stderr
    assert "Traceback" not in result.stderr


# ---- imports of the package ----------------------------------------------------------------

def test_compiling_does_not_import_numba():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import netlang, netlang.api, netlang.lower, netlang.summary
        for package in ("netlang.frontend", "netlang.ir", "netlang.ops"):
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(module.__path__):
                importlib.import_module(f"{package}.{info.name}")
        model = netlang.compile("input x: [28, 28, 1]\\ny = x -> conv2d(4, 3) -> flatten -> dense(10)\\n")
        model.summary().render()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite"))
        assert not heavy, heavy
        print("ok", len(model.shapes))
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


# ---- every op on every kind of input -------------------------------------------------------

def _input_types():
    for dtype in ("float32", "int32"):
        for dims in ((), (1,), (6,), (3, 4), (4, 4, 2), (2, 3, 4, 5), (1, 1, 1, 1, 1)):
            yield f"{dtype}[{', '.join(map(str, dims))}]"


INPUT_TYPES = list(_input_types())
SAMPLE_ARGUMENTS = {"reshape": ["(-1,)", "(2, -1)", "6", "(1, 1, -1)"],
                    "permute": ["(0,)", "(1, 0)", "(2, 0, 1)", "()"],
                    "slice": ["0, 1", "1, 3, axis = 0"]}


def _layer_and_loss_ops():
    from netlang.ops import all_ops
    return sorted(name for name, op in all_ops().items() if op.role in ("layer", "loss"))


@pytest.mark.parametrize("name", _layer_and_loss_ops())
def test_every_op_on_every_input_type_compiles_or_raises_netlang_error(name):
    """Shape rules see ranks and dtypes they were not written for; none may crash."""
    from netlang.ops import get_op
    op = get_op(name)
    sample = {"int": "2", "float": "0.5", "bool": "true", "int or (int, int)": "1"}
    required = ", ".join(sample.get(a.type.name, "1") for a in op.args if a.required)
    outcomes = set()
    for args in SAMPLE_ARGUMENTS.get(name, [required]):
        for first in INPUT_TYPES:
            if op.role == "loss":
                sources = [f"input a: {first}\ninput b: {second}\np = a -> identity\n"
                           f"train {{\n  loss {name}(a, b)\n}}\n" for second in INPUT_TYPES]
            elif op.arity is None or op.arity == 2:
                sources = [f"input a: {first}\ninput b: {second}\ny = (a, b) -> {name}({args})\n"
                           for second in INPUT_TYPES]
            else:
                sources = [f"input a: {first}\ny = a -> {name}({args})\n"]
            for source in sources:
                try:
                    netlang.compile(source, path="op.net")
                    outcomes.add("ok")
                except NetlangError as error:
                    assert error.line is not None, source
                    outcomes.add("error")
    assert "ok" in outcomes  # the sample arguments are sound: some input fits the op


# ---- mutated examples ----------------------------------------------------------------------

EXAMPLES = {str(p): p.read_text("utf-8") for p in sorted((ROOT / "examples").glob("*.net"))}
OPS = op_names()


@pytest.fixture(scope="module")
def import_chain(tmp_path_factory):
    """The head of a chain of imports longer than the import limit."""
    return make_import_chain(tmp_path_factory.mktemp("chain"))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(EXAMPLES)), st.randoms(use_true_random=False), st.integers(1, 3))
def test_mutated_examples_compile_or_raise_a_printable_positioned_error(import_chain, path, rng,
                                                                         count):
    text = EXAMPLES[path]
    for _ in range(count):
        text = mutate(text, rng, OPS, import_chain)
    start = time.perf_counter()
    try:
        netlang.compile(text, path=path)
    except NetlangError as error:
        rendered = error.render()
        rendered.encode("utf-8")  # printable: no lone surrogate reaches the terminal
        assert "\x1b" not in rendered and "SECRET" not in rendered
        assert error.loc is not None or error.path is not None, rendered
    assert time.perf_counter() - start < 20
