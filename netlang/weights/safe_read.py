"""Reading back what a run left on disk, safely: regular files only, sizes capped, JSON bounded.

Every file netlang reads back from a run directory or a weights path (a weights file, a
checkpoint's `state.json`, `latest`, `run.json`, `metrics.jsonl`, the saved model source and
vocabulary) is opened here.  A FIFO would block a plain `open()` until some writer appeared,
and `/dev/zero` (or a symlink to it) would be read until memory runs out, so a file is opened
with O_NONBLOCK, and the opened descriptor -- not the path, which could be swapped between a
check and the open -- must be a regular file.  Small files are read up to a cap per kind of
file; a weights file's own size bounds what is read from it.

JSON read back is checked for nesting before it is parsed: Python's parser recurses once per
level, so a file nested 100,000 deep would end in a RecursionError, and everything that walks
the parsed document afterwards would recurse as deep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, IO, Iterator

import numpy as np

from netlang.errors import NetlangError, WeightsError

# Caps of the small files: far above anything netlang writes (a state.json is a few KiB, with
# a confusion matrix of 1,000 classes a few MiB), far below what would strain memory.
STATE_CAP = 16 * 2**20
RUN_CAP = 16 * 2**20
POINTER_CAP = 64 * 2**10
METRICS_CAP = 256 * 2**20

# Deeper than anything netlang writes (a checkpoint's state is about 5 levels deep).
MAX_JSON_DEPTH = 100

# A JSON string (escapes included), or a run of characters that are neither brackets nor the
# start of a string: removing both leaves only the brackets that structure the document.
_NOT_A_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+', re.DOTALL)
_OPENS = np.frombuffer(b"[{", np.uint8)
_CLOSES = np.frombuffer(b"]}", np.uint8)


def _describe_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, *, error: type[NetlangError] = WeightsError,
                 what: str = "file") -> Iterator[tuple[IO[bytes], int]]:
    """`(binary file, size in bytes)` of `path`, which must be a regular file (a symlink to
    one is followed).  Never blocks: a FIFO, a device, a directory or a socket is a one-line
    `error`; so is a file that cannot be opened.  FileNotFoundError is left to the caller,
    which knows whether a missing file is an error."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is {_describe_kind(info.st_mode)}, expected a {what} "
                        "(only regular files are read)")
        # Reads block as usual from here on (O_NONBLOCK only kept the open from waiting).
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


def read_capped(path: str | os.PathLike, cap: int, *, error: type[NetlangError] = WeightsError,
                what: str = "file") -> bytes:
    """The bytes of the regular file `path`, at most `cap` of them: a longer file is a
    one-line `error` (it is read only to cap + 1 bytes, whatever it claims to hold)."""
    with open_regular(path, error=error, what=what) as (f, _):
        try:
            data = f.read(cap + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise error(f"{path}: {what} is larger than {cap:,} bytes; netlang never writes one "
                    "that large")
    return data


def read_text_capped(path: str | os.PathLike, cap: int, *,
                     error: type[NetlangError] = WeightsError, what: str = "file") -> str:
    """The UTF-8 text of the regular file `path` (see read_capped); text that is not UTF-8 is
    a one-line `error`."""
    data = read_capped(path, cap, error=error, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON `text` nest (brackets inside strings do not
    count), found in one linear pass without recursion."""
    brackets = np.frombuffer(_NOT_A_BRACKET.sub("", text).encode("ascii"), np.uint8)
    if not brackets.size:
        return 0
    # A quote left over (only in text that is not JSON) counts as neither.
    steps = np.isin(brackets, _OPENS).astype(np.int64) - np.isin(brackets, _CLOSES)
    return int(np.cumsum(steps).max())


def check_json_depth(text: str, where: str, *,
                     error: type[NetlangError] = WeightsError) -> None:
    """A one-line `error` when the JSON `text` read from `where` nests deeper than
    MAX_JSON_DEPTH (for a parser of its own that has no bound; parse_json checks it)."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are "
                    "read")


def parse_json(text: str, where: str, *, error: type[NetlangError] = WeightsError,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """The JSON document `text`, read from `where` (a file, or a file and line, for messages):
    nesting deeper than MAX_JSON_DEPTH, or text that is not JSON, is a one-line `error`."""
    check_json_depth(text, where, error=error)
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON: {exc.msg} (line {exc.lineno}, column "
                    f"{exc.colno})") from None
    except ValueError as exc:   # an integer of more digits than Python converts
        raise error(f"{where}: not valid JSON: {exc}") from None


def shown(value: Any, limit: int = 60) -> str:
    """A value read from a JSON document, for a one-line message: written as JSON ("abc",
    null, Infinity), cut to `limit` characters."""
    try:
        text = json.dumps(value, default=repr)
    except (ValueError, RecursionError):   # too many digits, or nested too deep, to write
        return "a value too long to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_json(path: str | os.PathLike, cap: int, *, error: type[NetlangError] = WeightsError,
              what: str = "file") -> Any:
    """The JSON document in the regular file `path` of at most `cap` bytes (see read_capped
    and parse_json).  FileNotFoundError is left to the caller."""
    return parse_json(read_text_capped(path, cap, error=error, what=what), str(path),
                      error=error)
