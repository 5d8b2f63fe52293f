"""Prepare the project's own real-data cases (MiniLM, the MNIST CNN) in the project venv:
``python -m tools.bench.real.prepare_own``."""

from __future__ import annotations

import logging
import sys

from tools.bench.real import own
from tools.bench.real.store import real_dir

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[prepare %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    own.prepare_mnist(real_dir())
    own.prepare_minilm(real_dir())
    sys.exit(0)
