"""No Lark exception leaves the front end: what a transformer method raises leaves as itself."""

import lark
import pytest

from netlang.errors import NetlangSyntaxError
from netlang.frontend.parser import parse
from netlang.frontend.to_ast import ToAst
from netlang.lower import lower_source

SOURCE = 'input x: [2]\noutput y = x -> dense(3)\nconst note = "a string"\n'


def test_a_mistake_found_while_building_the_ast_is_a_syntax_error():
    with pytest.raises(NetlangSyntaxError) as caught:
        parse("const n = 1" + "0" * 100 + "\n", "big.net")
    assert "is too large" in caught.value.message
    assert (caught.value.line, caught.value.column) == (1, 11)


def test_a_fault_in_the_transformer_leaves_unwrapped_with_the_rule_named(monkeypatch):
    def broken(self, children):
        raise ValueError("broken conversion")
    monkeypatch.setattr(ToAst, "string", broken)
    with pytest.raises(ValueError, match="broken conversion") as caught:
        parse(SOURCE, "m.net")
    assert not isinstance(caught.value, lark.exceptions.LarkError)
    assert "raised while converting the grammar rule `string` on line 3" in caught.value.__notes__


def test_the_stack_running_out_in_the_transformer_is_a_diagnostic(monkeypatch):
    def exhausted(self, children):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(ToAst, "string", exhausted)
    with pytest.raises(NetlangSyntaxError, match="nested too deeply"):
        lower_source(SOURCE, "m.net")
