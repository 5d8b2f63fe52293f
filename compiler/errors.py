"""One exception family. The CLI prints ``str(err)`` on one line and exits with ``err.exit_code``."""

from __future__ import annotations


class DsqcError(Exception):
    """Base of every error dsqc raises on purpose. Exit code 2: the input needs fixing."""

    exit_code = 2


class ModelError(DsqcError):
    """The model file or graph is unusable (corrupt, invalid, cyclic, out of the opset range)."""


class UnsupportedError(DsqcError):
    """A node, op or option the chosen target cannot express."""


class CalibrationError(DsqcError):
    """Calibration or evaluation data do not fit the model (names, shapes, dtypes, NaN, empty)."""


class RecipeError(DsqcError):
    """The TOML recipe or a command-line option is malformed."""


class OutputError(DsqcError):
    """The output folder cannot be written."""


class GateError(DsqcError):
    """A verification gate (--min-sqnr, --max-drop, --require-engine) failed."""


class PassError(DsqcError):
    """A pass broke its stated pre- or post-condition. This is a dsqc bug: exit code 3."""

    exit_code = 3
