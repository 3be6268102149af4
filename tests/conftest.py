"""Settings shared by the whole suite, applied before any test imports netlang's back ends."""

import os
from pathlib import Path

# Every pass's output is verified in tests (a broken invariant fails where it broke).
os.environ.setdefault("NETLANG_VERIFY", "1")

# Real MNIST, where the checkout has shared/ beside it (CI does); tests that need it skip otherwise.
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if _shared.is_dir():
    os.environ.setdefault("NETLANG_DATA", str(_shared))
