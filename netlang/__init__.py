"""netlang: a compiler and runtime for a small language that describes neural networks."""

from netlang.errors import NetlangError
from netlang.version import __version__

__all__ = ["NetlangError", "__version__", "compile", "load"]


def compile(source_or_path, **options):
    """Compile a `.net` file (a path) or `.net` source text into a `Model`; `dtype="float64"`
    computes in double precision (see `netlang.api.compile` and docs/embedding.md)."""
    from netlang.api import compile as _compile
    return _compile(source_or_path, **options)


def load(path, **options):
    """Load a model and its trained weights from a run directory or weights file."""
    from netlang.api import load as _load
    return _load(path, **options)
