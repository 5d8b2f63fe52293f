"""Per-target "how to run it": the backend's ``howto`` blocks (the commands a hardware team types, with
this bundle's own file names) rendered here, every string escaped."""

from __future__ import annotations

import re
from html import escape
from typing import Any

from dsqc.backends.registry import Block, get_backend
from dsqc.errors import DsqcError

_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", escape(text, quote=True))


def render_blocks(blocks: list[Block]) -> str:
    """``text`` → a paragraph, ``note`` → a muted one, ``code`` → preformatted; `x` → <code>x</code>."""
    out = []
    for block in blocks:
        if block.kind == "code":
            out.append(f"<pre>{escape(block.text)}</pre>")
        else:
            muted = " class='muted'" if block.kind == "note" else ""
            out.append(f"<p{muted}>{_inline(block.text)}</p>")
    return "".join(out)


def howto_html(report: dict[str, Any]) -> str:
    """HTML for one target's run instructions, from its backend (every file name escaped)."""
    try:
        backend = get_backend(str(report.get("target")))
    except DsqcError:
        return "<p>No instructions for this target (its backend is not installed here).</p>"
    return render_blocks(backend.howto(report))
