"""The grammar and the Lark parsers built from it, their LALR tables cached on disk.

Building the LALR tables from the grammar takes 0.2-0.5 s, far more than parsing a
model, so the tables are cached on disk: serialized by Lark, written with `marshal`
(plain data; nothing in the file is ever run), in a private per-user directory,
under a name that hashes the grammar text, the Lark and Python versions and the
options.  Lark's own `cache=True` is not used: it unpickles a predictably named file
in the shared temp directory.  Any problem with the cache (unwritable home, a
corrupt or foreign file) just means building the tables anew.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import marshal
import os
import sys
import tempfile

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
    """Lark's serialized parser (data, memo): from the disk cache, else built and cached."""
    cached = _read_cached_tables()
    if cached is not None:
        return cached
    built = lark.Lark(grammar_text(), **_LARK_OPTIONS)
    data, memo = built.memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])
    _write_cached_tables(data, memo)
    return data, memo


def load_parser(**runtime_options) -> lark.Lark:
    """A Lark LALR parser for the grammar; `runtime_options` such as `lexer_callbacks`."""
    try:
        data, memo = parser_tables()
        return lark.Lark._load_from_dict(data, memo, **runtime_options)
    except Exception:  # a Lark whose serialization differs: build directly, as before
        return lark.Lark(grammar_text(), **_LARK_OPTIONS, **runtime_options)
