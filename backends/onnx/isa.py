"""Which int8 instructions the CPU that will run the model has, and what weight range they allow.

ORT's x86 u8s8 GEMM/conv kernels on AVX2 without VNNI multiply-add pairs of u8·s8 products into a
saturating int16 (``vpmaddubsw``): 255·127·2 overflows, 255·64·2 does not, so weights there start at 7
bits ([-64, 64]; measured on the MNIST CNN on an AVX2 CPU: 18.7 dB with 8-bit weights against 38 dB
emulated) and are widened per output channel as far as the calibrated input ranges cannot saturate
the pair sums (``weight_limits.py``).
VNNI (``vpdpbusd``), AMX and ARM's dot-product instructions accumulate in int32 and take full 8-bit
weights; on this project's VNNI machine 7-bit weights cost MiniLM 8.1 vs 15.7 dB and the torchvision
MobileNetV2 graph 32.8 vs 38.1 dB.
"""

from __future__ import annotations

import platform
from pathlib import Path

from dsqc.errors import RecipeError

ISAS = ("avx2", "vnni", "arm64")
WEIGHT_LIMIT = {"avx2": 64, "vnni": 127, "arm64": 127}
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def host_isa(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> str:
    """The build machine's class: ``arm64``, ``vnni`` (x86 with VNNI/AMX) or ``avx2`` (other x86)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "avx2"  # unknown x86: the safe choice (7-bit weights never saturate)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "vnni" if _VNNI_FLAGS & set(flags) else "avx2"


def resolve_isa(value: object) -> tuple[str, str]:
    """``(isa, how it was chosen)`` for the ``-B isa=`` option (default: this machine)."""
    if value is None:
        return host_isa(), "detected on the build machine"
    if value not in ISAS:
        raise RecipeError(f"-B isa={value}: choose one of {', '.join(ISAS)} "
                          "(the CPU that will run the model)")
    return str(value), "-B isa"
