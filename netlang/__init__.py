"""netlang: a compiler and runtime for a small language that describes neural networks."""

__version__ = "0.1.0"

from netlang.errors import NetlangError  # noqa: E402

__all__ = ["NetlangError", "__version__", "compile", "load"]


def compile(source_or_path, **options):
    """Compile a `.net` file (a path) or `.net` source text into a `Model`."""
    from netlang.api import compile as _compile
    return _compile(source_or_path, **options)


def load(path, **options):
    """Load a model and its trained weights from a run directory or weights file."""
    from netlang.api import load as _load
    return _load(path, **options)
