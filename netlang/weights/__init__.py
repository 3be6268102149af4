"""Weights files and training checkpoints.

Weights are stored as safetensors (no pickle: a file from a stranger cannot run code, and
PyTorch users read it directly); a training run directory holds checkpoints that resume
exactly.  The package is laid out in the order the pieces build on each other:

- `atomic`: files that appear whole or not at all;
- `safe_read`: reading back: regular files only, never blocking, sizes capped, JSON nesting
  bounded;
- `json_fields`: a JSON object read back field by field, each failure naming the field;
- `safetensors_files`: reading (every check named) and writing weights files;
- `rng_state`: random generator state as JSON, checked against what each generator accepts;
- `checkpoints`: ckpt-* directories, the `latest` pointer, and the fallback to the previous
  checkpoint when the committed one is damaged.

Every problem with a file on disk raises `WeightsError` with one line naming the file and the
tensor.  The on-disk formats are described for users in docs/weights.md.
"""

from netlang.weights.atomic import atomic_file, atomic_write
from netlang.weights.checkpoints import (
                                         Checkpoint,
                                         DamagedCheckpointWarning,
                                         find_weights,
                                         load_checkpoint,
                                         save_checkpoint,
)
from netlang.weights.rng_state import rng_from_json, rng_state_to_json
from netlang.weights.safetensors_files import (
                                         LoadedWeights,
                                         WeightsReport,
                                         expected_of,
                                         load_weights,
                                         read_header,
                                         save_weights,
)

__all__ = [
    "atomic_file", "atomic_write", "save_weights", "load_weights", "read_header",
    "LoadedWeights", "WeightsReport", "expected_of", "save_checkpoint", "load_checkpoint",
    "Checkpoint", "DamagedCheckpointWarning", "find_weights", "rng_state_to_json",
    "rng_from_json",
]
