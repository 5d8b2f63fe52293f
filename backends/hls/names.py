"""C identifiers and comment text derived from ONNX names: nothing a node name holds reaches the C as is.

Identifiers keep ``[A-Za-z0-9_]`` only; comments keep a small safe set (no ``*``, ``/*``, ``\\``, ``?``
— so no comment terminator, line splice or trigraph can be formed).
"""

from __future__ import annotations

import re

C_KEYWORDS = frozenset([
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
    "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
    "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
    "volatile", "while", "_Bool", "_Complex", "_Imaginary", "main",
])

# Locals and parameters of the generated code and names from <stdint.h>/<stdio.h>: a top function
# called like one of them would be shadowed (-Wshadow) or clash.
RESERVED = frozenset([
    "x", "y", "a", "b", "p", "c", "o", "i", "v", "acc", "oc", "oy", "ox", "kk", "ic", "ky", "kx", "iy",
    "ix", "best", "sum", "value", "mult", "shift", "zp", "lo", "hi", "dump", "mismatches", "argc", "argv",
    "printf", "fprintf", "fopen", "fclose", "puts", "putchar", "remove", "rename", "stdin", "stdout",
    "stderr", "FILE", "NULL", "EOF",
])
# GCC knows these library functions as builtins even where no header declares them: a top function
# called ``ceil`` or ``abs`` fails -Werror=builtin-declaration-mismatch (a model file named ceil.onnx did)
BUILTINS = frozenset([
    "acos", "asin", "atan", "atan2", "cbrt", "ceil", "copysign", "cos", "cosh", "erf", "erfc", "exp",
    "exp2", "expm1", "fabs", "fdim", "floor", "fma", "fmax", "fmin", "fmod", "frexp", "hypot", "ilogb",
    "ldexp", "lgamma", "llrint", "llround", "log", "log10", "log1p", "log2", "logb", "lrint", "lround",
    "modf", "nan", "nearbyint", "nextafter", "pow", "remainder", "remquo", "rint", "round", "scalbn",
    "sin", "sinh", "sqrt", "tan", "tanh", "tgamma", "trunc", "abs", "labs", "llabs", "div", "ldiv", "exit",
    "abort", "malloc", "calloc", "realloc", "free", "alloca", "memcpy", "memmove", "memset", "memcmp",
    "memchr", "strlen", "strcpy", "strncpy", "strcat", "strncat", "strcmp", "strncmp", "strchr", "strrchr",
    "strstr", "strspn", "strcspn", "strpbrk", "strdup", "strndup", "sprintf", "snprintf", "vprintf",
    "vsprintf", "vsnprintf", "scanf", "sscanf", "fscanf", "fputs", "fputc", "fwrite", "fread", "isalnum",
    "isalpha", "isdigit", "islower", "isupper", "isspace", "isxdigit", "isprint", "tolower", "toupper",
    "ffs", "clz", "ctz", "popcount",
])
_RESERVED_PREFIXES = ("dsqc", "layer", "tb_", "got_", "t_", "in_", "out_", "int", "uint")

_NOT_IDENT = re.compile(r"[^A-Za-z0-9]+")
_NOT_SAFE = re.compile(r"[^A-Za-z0-9 _.,:=+\-]")


def _clean(name: str, max_len: int) -> str:
    return _NOT_IDENT.sub("_", name).strip("_")[:max_len].strip("_")


def identifier(name: str, max_len: int = 32, fallback: str = "x") -> str:
    """A C identifier: runs of other characters become one ``_``; never empty, a keyword or ``dsqc*``."""
    ident = _clean(name, max_len) or fallback
    if ident[0].isdigit() or ident in C_KEYWORDS or ident.lower().startswith("dsqc"):
        ident = f"n_{ident}"
    return ident


def is_reserved(name: str) -> bool:
    return name in RESERVED or name in BUILTINS or name.startswith(_RESERVED_PREFIXES) or name.endswith("_t")


def comment_text(text: str, max_len: int = 80) -> str:
    """Text safe inside ``/* */`` and in Tcl/Markdown: other characters become ``_``."""
    return _NOT_SAFE.sub("_", text)[:max_len]


class Namer:
    """Hands out unique identifiers (``prefix`` + sanitized hint)."""

    def __init__(self) -> None:
        self.taken: set[str] = set(C_KEYWORDS)

    def take(self, prefix: str, hint: str, max_len: int = 24) -> str:
        cleaned = _clean(hint, max_len)
        base = f"{prefix}{cleaned}" if cleaned else prefix.rstrip("_")
        name, index = base, 1
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name
