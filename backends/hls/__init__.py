"""The ``hls`` target: an integer-only C99 project for Vitis/Intel HLS, checked with gcc against
dsqc's integer reference."""

from .backend import HlsBackend
from .profile import HLS_POW2_PROFILE, HLS_PROFILE

__all__ = ["HLS_POW2_PROFILE", "HLS_PROFILE", "HlsBackend"]
