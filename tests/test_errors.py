"""Golden tests for error messages.

Each `tests/errors/<case>.net` is a broken model whose first line names the
error class it must raise (`# expect: NetlangShapeError`); `<case>.err` holds
the exact rendering: `path:line:col: error: message`, the source line, a caret
under the culprit, notes and block-instantiation traces.  Files are compiled
by their path relative to the repository root, so the goldens show
`tests/errors/<case>.net`.  Files under `tests/errors/lib/` are only imported.

    NETLANG_UPDATE_GOLDEN=1 python -m pytest tests/test_errors.py

rewrites the `.err` files from the current output (review the diff!).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import netlang
from netlang import errors as E

ROOT = Path(__file__).resolve().parent.parent
ERRORS = ROOT / "tests" / "errors"
CASES = sorted(p.stem for p in ERRORS.glob("*.net"))
UPDATE = os.environ.get("NETLANG_UPDATE_GOLDEN") == "1"

HEADER = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+):(?P<column>\d+): error: .+$")
CARET = re.compile(r"^ +\| +\^+$")


def compile_case(name: str) -> E.NetlangError:
    relative = f"tests/errors/{name}.net"
    cwd = os.getcwd()
    os.chdir(ROOT)  # so the path, and every path in the messages, is relative
    try:
        netlang.compile(relative)
    except E.NetlangError as error:
        return error
    finally:
        os.chdir(cwd)
    pytest.fail(f"{relative} compiled without an error")


def expected_class(name: str) -> type:
    first = (ERRORS / f"{name}.net").read_text("utf-8").splitlines()[0]
    match = re.fullmatch(r"# expect: (\w+)", first)
    assert match, f"{name}.net must start with `# expect: <error class>`"
    return getattr(E, match.group(1))


def test_there_are_cases():
    assert len(CASES) >= 30
    for name in CASES:
        assert (ERRORS / f"{name}.err").exists() or UPDATE, f"{name}.net has no {name}.err golden"


@pytest.mark.parametrize("name", CASES)
def test_error_matches_golden(name):
    error = compile_case(name)
    rendered = error.render() + "\n"
    golden = ERRORS / f"{name}.err"
    if UPDATE:
        golden.write_text(rendered, "utf-8")
    assert rendered == golden.read_text("utf-8")


@pytest.mark.parametrize("name", CASES)
def test_error_class_and_position(name):
    error = compile_case(name)
    assert type(error) is expected_class(name)
    assert isinstance(error, netlang.NetlangError)
    lines = error.render().splitlines()
    header = HEADER.match(lines[0])
    assert header, lines[0]
    # The exception's attributes describe the first diagnostic, as rendered.
    assert (header["path"], int(header["line"]), int(header["column"])) == \
        (error.path, error.line, error.column)
    assert error.path.startswith("tests/errors/")
    # Every diagnostic shows its source line and a caret under the culprit, at its column.
    for diagnostic in error.diagnostics:
        text = diagnostic.render().splitlines()
        assert HEADER.match(text[0]), text[0]
        source_line, caret = text[1], text[2]
        assert source_line.startswith(f"{diagnostic.loc.line:>4} | ")
        assert CARET.match(caret), caret
        # The caret stands under the character at the diagnostic's column (long lines are
        # shown as a window around it).
        whole = Path(ROOT, diagnostic.loc.path).read_text("utf-8").splitlines()[diagnostic.loc.line - 1]
        shown = source_line.split(" | ", 1)[1]
        offset = caret.index("^") - (caret.index("|") + 2)
        assert shown in whole
        assert whole.index(shown) + offset == diagnostic.loc.column - 1
        if diagnostic.loc.column <= len(whole):  # else: just past the end, as at the end of a file
            assert shown[offset] == whole[diagnostic.loc.column - 1]


def test_golden_files_are_not_orphans():
    for golden in ERRORS.glob("*.err"):
        assert golden.stem in CASES, f"{golden.name} has no .net file"


# ---- properties the goldens are chosen to show; checked here so they cannot silently drift --

def test_suggestions():
    assert "(did you mean `maxpool`?)" in compile_case("unknown_layer").message
    assert "(did you mean `bias`?)" in compile_case("unknown_argument").message
    assert "(did you mean `image`?)" in compile_case("unknown_name").message
    assert "(did you mean `output`?)" in compile_case("syntax_misspelt_keyword").message
    assert "(did you mean `same`?)" in compile_case("wrong_enum_word").message
    assert "(did you mean `int32`?)" in compile_case("unknown_dtype").message


def test_syntax_error_carets():
    error = compile_case("syntax_misspelt_keyword")
    assert (error.line, error.column) == (3, 1)  # the misspelt word, not what follows it
    error = compile_case("syntax_missing_paren")
    assert "the `(` on line 3, column 20 is not closed" in error.render()
    error = compile_case("syntax_stray_character")
    assert (error.line, error.column) == (3, 20)


def test_shape_mismatch_names_both_shapes_and_layers():
    message = compile_case("shape_add_mismatch").message
    assert "(None, 128) from `wide`" in message and "(None, 64) from `narrow`" in message
    message = compile_case("shape_concat_mismatch").message
    assert "from `branch_a`" in message and "from `branch_b`" in message
    message = compile_case("shape_conv_on_vector").message
    assert "(None, 256) from `fc`" in message


def test_nested_block_error_shows_the_instantiation_chain():
    error = compile_case("nested_block_error")
    assert error.line == 5  # inside `bottleneck`
    (diagnostic,) = error.diagnostics  # both repeats fail the same way: reported once
    whats = [what for what, _ in diagnostic.trace]
    assert whats == ["block `bottleneck` instantiated as `stage1.y.0`",
                     "block `stage` instantiated as `stage1`"]
    assert [where.line for _, where in diagnostic.trace] == [10, 14]


def test_multiple_errors_are_reported_in_source_order():
    error = compile_case("multiple_errors")
    assert [(d.loc.line, d.kind) for d in error.diagnostics] == \
        [(5, "argument"), (6, "name"), (7, "argument"), (8, "name")]
    assert [d.loc.line for d in error.diagnostics] == sorted(d.loc.line for d in error.diagnostics)


def test_train_section_errors_are_all_reported():
    error = compile_case("train_bad_settings")
    assert [d.loc.line for d in error.diagnostics] == [7, 8, 9, 10, 11, 12, 13, 14]


def test_import_errors_point_into_the_right_file():
    error = compile_case("import_broken")
    assert error.path == "tests/errors/lib/broken.net"
    (diagnostic,) = error.diagnostics
    ((what, where),) = diagnostic.trace
    assert (where.path, where.line, where.column) == ("tests/errors/import_broken.net", 2, 1)
    error = compile_case("import_cycle")
    assert "import cycle" in error.message
    assert "import_cycle.net → cycle_b.net → import_cycle.net" in error.message
    error = compile_case("import_missing")
    assert (error.line, error.column) == (2, 1)


def test_errors_from_source_text_carry_the_given_path():
    with pytest.raises(E.NetlangNameError) as info:
        netlang.compile("input x: [3]\ny = x -> rleu\n", path="model.net")
    assert (info.value.path, info.value.line, info.value.column) == ("model.net", 2, 10)
    assert info.value.render().startswith("model.net:2:10: error: unknown layer `rleu`")


def test_errors_in_an_imported_file_take_the_place_of_the_import():
    error = compile_case("import_errors_in_order")
    assert [(d.loc.path.rsplit("/", 1)[-1], d.loc.line) for d in error.diagnostics] == \
        [("import_errors_in_order.net", 3), ("bad_const.net", 2), ("import_errors_in_order.net", 5)]
    assert "unknown name `hieght` (did you mean `height`?)" in error.diagnostics[1].message


def test_error_in_an_imported_block_points_at_its_instantiation():
    error = compile_case("imported_block_error")
    assert (error.path, error.line) == ("tests/errors/lib/residual.net", 6)
    (diagnostic,) = error.diagnostics
    ((what, where),) = diagnostic.trace
    assert what == "block `residual` instantiated as `block2`"
    assert (where.path, where.line, where.column) == ("tests/errors/imported_block_error.net", 4, 47)


def test_independent_syntax_errors_are_reported_together():
    error = compile_case("syntax_multiple_errors")
    assert [(d.loc.line, d.loc.column) for d in error.diagnostics] == [(4, 25), (9, 31), (12, 9), (13, 15)]
    assert all(d.kind == "syntax" for d in error.diagnostics)


def test_syntax_recovery_adds_nothing_inside_an_unfinished_statement():
    # The unclosed block swallows the rest of the file: one error, not one per line.
    assert len(compile_case("syntax_unclosed_block").diagnostics) == 1
    # Lines of an unindented block body are not taken for top-level statements.
    source = "block b(n) {\ninput x\ny = x -> dense(n\noutput y\n}\ninput x: [4]\nz = x -> b(3)\n"
    with pytest.raises(E.NetlangSyntaxError) as info:
        netlang.compile(source, path="m.net")
    assert [d.loc.line for d in info.value.diagnostics] == [4]
