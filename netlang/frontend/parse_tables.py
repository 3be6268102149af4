"""The grammar and the Lark parsers built from it, their LALR tables cached on disk.

Building the LALR tables from the grammar takes 0.2-0.5 s, far more than parsing a
model (0.5 s where `interegular` is installed: Lark then checks every pair of terminals for
collisions), so the tables come built:

- **shipped** beside the grammar (`grammar/netlang.lalr.json`, installed with it), built
  for one Lark version: JSON (plain data; nothing in the file is ever run), with its key
  (the grammar's digest, Lark's version, the options) checked before use.  A grammar edit
  must rebuild it, `python -m netlang.frontend.parse_tables` (tests/test_parser_tables.py
  fails until then); another Lark version builds its own tables, and caches them:
- **cached** on disk: serialized by Lark, written with `marshal`, in a private per-user
  directory, under a name that hashes the grammar text, the Lark and Python versions and the
  options.  Lark's own `cache=True` is not used: it unpickles a predictably named file in
  the shared temp directory.  Any problem with the cache (unwritable home, a corrupt or
  foreign file) just means building the tables anew.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import marshal
import os
import sys
import tempfile
from pathlib import Path

import lark

from netlang.config import owned_privately, parser_cache_dir, private_directory

KEYWORDS = ("import", "const", "input", "output", "block", "train", "if", "else", "as", "on",
            "and", "or", "not", "true", "false")


@functools.lru_cache(maxsize=None)
def grammar_text() -> str:
    """The text of `netlang.lark`, read from inside the installed package."""
    return importlib.resources.files("netlang.grammar").joinpath("netlang.lark").read_text("utf-8")


_LARK_OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}
_CACHE_FORMAT = 1


@functools.lru_cache(maxsize=None)
def plain_parser() -> lark.Lark:
    """The parser for the grammar, built once per process (comments dropped)."""
    return load_parser()


def _parser_cache_path():
    directory = parser_cache_dir()
    if not os.path.isabs(directory):  # no home directory to be found: no cache
        raise OSError("no cache directory")
    key = hashlib.sha256("\0".join([
        grammar_text(), lark.__version__, sys.version, repr(sorted(_LARK_OPTIONS.items())),
        str(_CACHE_FORMAT)]).encode("utf-8")).hexdigest()
    return directory, os.path.join(directory, f"lalr-{key[:40]}.marshal"), key


def _read_cached_tables():
    try:
        directory, path, key = _parser_cache_path()
        if not owned_privately(os.stat(directory)):
            return None
        with open(path, "rb") as handle:
            if not owned_privately(os.fstat(handle.fileno())):
                return None
            blob = handle.read()
        record = marshal.loads(blob)
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        return record["data"], record["memo"]
    except Exception:  # missing, unreadable, truncated or foreign: build the tables instead
        return None


def _write_cached_tables(data, memo) -> None:
    try:
        directory, path, key = _parser_cache_path()
        if private_directory(directory) is not None:
            return
        blob = marshal.dumps({"key": key, "data": data, "memo": memo})
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lalr-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except Exception:  # a read-only or full disk only costs the next process the build
        pass


@functools.lru_cache(maxsize=None)
def parser_tables():
    """Lark's serialized parser (data, memo): the shipped tables, else from the disk cache,
    else built and cached."""
    found = _read_shipped_tables()
    if found is None:
        found = _read_cached_tables()
    if found is None:
        found = _built_tables()
        _write_cached_tables(*found)
    return found


def _built_tables():
    built = lark.Lark(grammar_text(), **_LARK_OPTIONS)
    return built.memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])


# -- the tables shipped beside the grammar ----------------------------------------------------

SHIPPED_TABLES = "netlang.lalr.json"
_SHIPPED_FORMAT = 1


def shipped_key() -> dict:
    """What the shipped tables were built from; they serve only a match."""
    return {"grammar": hashlib.sha256(grammar_text().encode("utf-8")).hexdigest(),
            "lark": lark.__version__, "options": repr(sorted(_LARK_OPTIONS.items())),
            "format": _SHIPPED_FORMAT}


def _read_shipped_tables():
    try:
        text = importlib.resources.files("netlang.grammar").joinpath(SHIPPED_TABLES) \
            .read_text("utf-8")
        record = json.loads(text)
        if record.get("key") != shipped_key():
            return None
        return _decoded(record["data"]), _decoded(record["memo"])
    except Exception:  # missing or damaged: the cache, or a build, serves instead
        return None


def shipped_tables_text() -> str:
    """The text of the shipped tables, built afresh for the grammar and this Lark."""
    data, memo = _built_tables()
    return json.dumps({"key": shipped_key(), "data": _encoded(data), "memo": _encoded(memo)},
                      separators=(",", ":"), sort_keys=True) + "\n"


def _encoded(value):
    """Lark's tables as JSON: its dicts keyed by integers as lists of pairs, tuples tagged."""
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _encoded(item) for key, item in value.items()}
        return {"__pairs__": [[_encoded(key), _encoded(item)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encoded(item) for item in value]}
    if isinstance(value, list):
        return [_encoded(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"Lark's tables hold a {type(value).__name__}")


def _decoded(value):
    if isinstance(value, dict):
        if len(value) == 1 and "__pairs__" in value:
            return {_decoded(key): _decoded(item) for key, item in value["__pairs__"]}
        if len(value) == 1 and "__tuple__" in value:
            return tuple(_decoded(item) for item in value["__tuple__"])
        return {key: _decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


if __name__ == "__main__":   # rebuild the shipped tables after a grammar edit
    target = Path(__file__).resolve().parents[2] / "grammar" / SHIPPED_TABLES
    target.write_text(shipped_tables_text(), encoding="utf-8")
    print(f"wrote {target}")


def load_parser(**runtime_options) -> lark.Lark:
    """A Lark LALR parser for the grammar; `runtime_options` such as `lexer_callbacks`."""
    try:
        data, memo = parser_tables()
        return lark.Lark._load_from_dict(data, memo, **runtime_options)
    except Exception:  # a Lark whose serialization differs: build directly, as before
        return lark.Lark(grammar_text(), **_LARK_OPTIONS, **runtime_options)
