"""netlang: a compiler and runtime for a small language that describes neural networks."""

from netlang.errors import NetlangError
from netlang.version import __version__

__all__ = ["NetlangError", "__version__", "compile", "from_state_dict", "import_onnx", "load",
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


def import_onnx(path, output, **options):
    """Read an ONNX model into a .net file at `output` and return it compiled with the ONNX
    model's weights (`weights_out=` saves them as a run directory, `force=` overwrites; see
    netlang.api.import_onnx and docs/interchange.md)."""
    from netlang.api import import_onnx as _import_onnx
    return _import_onnx(path, output, **options)


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
