"""dsqc's CLI, paused at a chosen point until a signal arrives: the signal cases of the corpus.

    python -m tests.corpus._pausing_cli calibration|write MARKER dsqc-args...

``calibration``: the first ONNX Runtime run (the first calibration batch) writes MARKER and waits.
``write``: the first ``onnx.save_model`` writes its file into the staging folder, then MARKER, then
waits. Only the timing is arranged; everything else is the real build, so the test sees what a
user's Ctrl-C or ``kill`` at that moment leaves behind.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any


def _pause(marker: Path) -> None:
    marker.write_text("paused\n")
    time.sleep(60)  # a signal interrupts this; 60 s without one fails the test by timeout


def main(argv: list[str]) -> int:
    phase, marker, args = argv[0], Path(argv[1]), argv[2:]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN; the test stands for a Ctrl-C at a terminal, so take the terminal's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if phase == "calibration":
        import onnxruntime as ort

        run = ort.InferenceSession.run

        def paused_run(self: ort.InferenceSession, *a: Any, **k: Any) -> Any:
            _pause(marker)
            return run(self, *a, **k)

        ort.InferenceSession.run = paused_run  # type: ignore[method-assign]
    elif phase == "write":
        import onnx

        save = onnx.save_model

        def paused_save(*a: Any, **k: Any) -> None:
            save(*a, **k)
            _pause(marker)

        onnx.save_model = paused_save
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    from dsqc.driver.cli import main as dsqc_main

    return dsqc_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
