"""The HLS tests reuse the models of ``tests/integer`` (``_integer_models``)."""

from __future__ import annotations

import sys
from pathlib import Path

_INTEGER = str(Path(__file__).resolve().parents[2] / "integer")
if _INTEGER not in sys.path:
    sys.path.insert(0, _INTEGER)
