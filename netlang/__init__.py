"""netlang: a compiler and runtime for a small language that describes neural networks."""

from netlang.errors import NetlangError
from netlang.version import __version__

__all__ = ["NetlangError", "__version__", "compile", "from_state_dict", "load",
           "weights_to_state_dict"]


def compile(source_or_path, **options):
    """Compile a `.net` file (a path) or `.net` source text into a `Model`; `dtype="float64"`
    computes in double precision (see `netlang.api.compile` and docs/embedding.md)."""
    from netlang.api import compile as _compile
    return _compile(source_or_path, **options)


def load(path, **options):
    """Load a model and its trained weights from a run directory or weights file."""
    from netlang.api import load as _load
    return _load(path, **options)


def weights_to_state_dict(weights):
    """A model's weights (or a mapping name → array) as a PyTorch-style state dict of NumPy
    arrays (see netlang/interchange/state_dict.py and docs/interchange.md)."""
    from netlang.interchange.state_dict import weights_to_state_dict as _to_state_dict
    return _to_state_dict(weights)


def from_state_dict(model, state_dict, **options):
    """Loads a PyTorch-style state dict into `model` (`rename=`, `strict=`); returns the model
    (see netlang/interchange/state_dict.py and docs/interchange.md)."""
    from netlang.interchange.state_dict import from_state_dict as _from_state_dict
    return _from_state_dict(model, state_dict, **options)
