"""The LALR tables shipped beside the grammar: matching the grammar, used without a build, and
ignored when they do not match; and the on-disk cache a build writes (another Lark version):
used when trusted, ignored (and rebuilt) otherwise."""

import os
import stat
from pathlib import Path

import lark
import pytest

from netlang.errors import NetlangSyntaxError
from netlang.frontend import parse_tables
from netlang.frontend import parser as P

SOURCE = """
# a comment
input image: [28, 28, 1]
h = image -> conv2d(6, 5, padding = 2) -> relu -> maxpool(2)   # trailing
output logits = h -> flatten -> dense(10)
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh cache location, no parser built yet in this process, and no shipped tables (as
    under a Lark version they were not built for)."""
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    monkeypatch.setattr(parse_tables, "_read_shipped_tables", lambda: None)
    for fn in (parse_tables.parser_tables, parse_tables.plain_parser, P._comment_parser):
        fn.cache_clear()
    yield tmp_path / "parser"
    for fn in (parse_tables.parser_tables, parse_tables.plain_parser, P._comment_parser):
        fn.cache_clear()


def _fresh():
    for fn in (parse_tables.parser_tables, parse_tables.plain_parser, P._comment_parser):
        fn.cache_clear()


def _count_builds(monkeypatch):
    builds = []
    real = lark.Lark.__init__

    def counting(self, *args, **kwargs):
        builds.append(1)
        real(self, *args, **kwargs)
    monkeypatch.setattr(lark.Lark, "__init__", counting)
    return builds


def test_cache_is_written_privately_and_reused(cache_dir, monkeypatch):
    reference = P.parse(SOURCE, "m.net")
    files = list(cache_dir.glob("lalr-*.marshal"))
    assert len(files) == 1
    if hasattr(os, "getuid"):
        assert stat.S_IMODE(cache_dir.stat().st_mode) & 0o077 == 0
        assert stat.S_IMODE(files[0].stat().st_mode) & 0o022 == 0
    assert not list(cache_dir.glob("*.tmp"))

    _fresh()
    builds = _count_builds(monkeypatch)
    assert P.parse(SOURCE, "m.net") == reference
    module, comments = P.parse_with_comments(SOURCE, "m.net")
    assert module == reference
    assert [text for _, _, text in comments] == ["# a comment", "# trailing"]
    assert builds == []  # both parsers came from the cache


def test_cached_parser_reports_the_same_syntax_errors(cache_dir):
    bad = "input x: [2]\ny = x -> dense(3 4)\n"
    with pytest.raises(NetlangSyntaxError) as built:
        P.parse(bad, "bad.net")
    _fresh()
    with pytest.raises(NetlangSyntaxError) as cached:
        P.parse(bad, "bad.net")
    assert cached.value.render() == built.value.render()


@pytest.mark.parametrize("damage", [b"", b"\x00garbage", b"not marshal at all"])
def test_corrupt_cache_is_rebuilt(cache_dir, monkeypatch, damage):
    reference = P.parse(SOURCE, "m.net")
    (path,) = cache_dir.glob("lalr-*.marshal")
    path.write_bytes(damage)
    _fresh()
    builds = _count_builds(monkeypatch)
    assert P.parse(SOURCE, "m.net") == reference
    assert builds  # rebuilt from the grammar
    assert path.read_bytes() != damage  # and the cache repaired


def test_cache_with_another_key_is_ignored(cache_dir, monkeypatch):
    import marshal
    reference = P.parse(SOURCE, "m.net")
    (path,) = cache_dir.glob("lalr-*.marshal")
    record = marshal.loads(path.read_bytes())
    record["key"] = "0" * 64
    path.write_bytes(marshal.dumps(record))
    _fresh()
    builds = _count_builds(monkeypatch)
    assert P.parse(SOURCE, "m.net") == reference
    assert builds


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no file ownership here")
def test_group_writable_cache_is_not_trusted(cache_dir, monkeypatch):
    P.parse(SOURCE, "m.net")
    (path,) = cache_dir.glob("lalr-*.marshal")
    os.chmod(path, 0o666)
    _fresh()
    builds = _count_builds(monkeypatch)
    P.parse(SOURCE, "m.net")
    assert builds
    os.chmod(path, 0o600)
    os.chmod(cache_dir, 0o777)
    _fresh()
    builds.clear()
    P.parse(SOURCE, "m.net")
    assert builds


def test_unwritable_cache_still_parses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NETLANG_CACHE", str(blocker))
    _fresh()
    try:
        assert P.parse(SOURCE, "m.net").items
    finally:
        _fresh()


# -- the shipped tables ----------------------------------------------------------------------

def _shipped_record() -> dict:
    import importlib.resources
    import json
    return json.loads(importlib.resources.files("netlang.grammar")
                      .joinpath(parse_tables.SHIPPED_TABLES).read_text("utf-8"))


def test_the_shipped_tables_are_built_from_this_grammar():
    key = _shipped_record()["key"]
    assert key["grammar"] == parse_tables.shipped_key()["grammar"], \
        "grammar/netlang.lark changed: run `python -m netlang.frontend.parse_tables`"


def test_the_shipped_tables_parse_as_tables_built_now(tmp_path, monkeypatch):
    # Lark numbers the states differently from build to build, so the tables are compared by
    # what they do: every example parses to the same tree, and a syntax error reads the same.
    if _shipped_record()["key"] != parse_tables.shipped_key():
        pytest.skip("the shipped tables were built for another Lark version")
    examples = sorted(Path(__file__).resolve().parent.parent.glob("examples/*.net"))
    sources = [(path.read_text(), path.name) for path in examples] + [(SOURCE, "m.net")]
    bad = "input x: [2]\noutput y = x -> dense(3 ->\n"

    def parsed():
        trees = [P.parse(text, name) for text, name in sources]
        with pytest.raises(NetlangSyntaxError) as error:
            P.parse(bad, "bad.net")
        return trees, str(error.value)

    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    _fresh()
    try:
        shipped = parsed()
        _fresh()
        monkeypatch.setattr(parse_tables, "_read_shipped_tables", lambda: None)
        assert parsed() == shipped
    finally:
        _fresh()


def test_an_empty_cache_parses_with_the_shipped_tables_and_builds_nothing(tmp_path, monkeypatch):
    if _shipped_record()["key"] != parse_tables.shipped_key():
        pytest.skip("the shipped tables were built for another Lark version")
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    _fresh()
    try:
        builds = _count_builds(monkeypatch)
        module = P.parse(SOURCE, "m.net")
        assert builds == [] and not (tmp_path / "parser").exists()
        _fresh()
        monkeypatch.undo()
        monkeypatch.setenv("NETLANG_CACHE", str(tmp_path / "other"))
        monkeypatch.setattr(parse_tables, "_read_shipped_tables", lambda: None)
        assert P.parse(SOURCE, "m.net") == module   # the same tree as the built tables give
    finally:
        _fresh()


def test_shipped_tables_for_another_grammar_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("NETLANG_CACHE", str(tmp_path))
    monkeypatch.setattr(parse_tables, "shipped_key", lambda: {"grammar": "another"})
    _fresh()
    try:
        builds = _count_builds(monkeypatch)
        P.parse(SOURCE, "m.net")
        assert builds and list((tmp_path / "parser").glob("lalr-*.marshal"))
    finally:
        _fresh()
