"""Inline SVG charts: an activation histogram with its clipping range, and a precision bar."""

from __future__ import annotations

import math
from html import escape
from typing import Any

COLORS = {"int4": "#6a1b9a", "int8": "#1565c0", "fp16": "#ef6c00", "fp32": "#757575"}


def _num(x: float) -> str:
    return f"{x:.4g}"


def histogram_svg(h: dict[str, Any], width: int = 360, height: int = 150) -> str:
    """Bars of ``h["counts"]`` over ``h["range"]`` (log-scaled counts) with the clipping range shaded and
    its two limits drawn as red lines; values outside the range are clipped by the quantizer."""
    counts = [float(c) for c in h["counts"]]
    lo, hi = (float(v) for v in h["range"])
    clip_lo, clip_hi = (float(v) for v in h["clip"])
    pad_l, pad_b, pad_t = 6, 20, 8
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    top = max((math.log10(1 + c) for c in counts), default=1.0) or 1.0

    def x_of(v: float) -> float:
        return pad_l + (v - lo) / (hi - lo) * plot_w if hi > lo else pad_l

    bar_w = plot_w / max(len(counts), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<title>{escape(str(h["tensor"]))}: histogram and clipping range</title>',
             f'<rect x="{x_of(clip_lo):.1f}" y="{pad_t}" width="{max(x_of(clip_hi) - x_of(clip_lo), 1):.1f}" '
             f'height="{plot_h}" fill="#e3f2e6"/>']
    for k, c in enumerate(counts):
        if c <= 0:
            continue
        bar_h = math.log10(1 + c) / top * plot_h
        centre = lo + (k + 0.5) * (hi - lo) / len(counts)
        fill = "#1565c0" if clip_lo <= centre <= clip_hi else "#b3261e"
        parts.append(f'<rect x="{pad_l + k * bar_w:.1f}" y="{pad_t + plot_h - bar_h:.1f}" '
                     f'width="{max(bar_w - 0.6, 0.6):.1f}" height="{bar_h:.1f}" fill="{fill}"/>')
    for v in (clip_lo, clip_hi):
        parts.append(f'<line x1="{x_of(v):.1f}" x2="{x_of(v):.1f}" y1="{pad_t - 2}" y2="{pad_t + plot_h}" '
                     'stroke="#b3261e" stroke-width="1.5" stroke-dasharray="4 2"/>')
    base = pad_t + plot_h
    parts.append(f'<line x1="{pad_l}" x2="{width - pad_l}" y1="{base}" y2="{base}" stroke="#888"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 5}" font-size="10" fill="#555">{_num(lo)}</text>')
    parts.append(f'<text x="{width - pad_l}" y="{height - 5}" font-size="10" fill="#555" '
                 f'text-anchor="end">{_num(hi)}</text>')
    mid = (x_of(clip_lo) + x_of(clip_hi)) / 2
    parts.append(f'<text x="{mid:.1f}" y="{height - 5}" font-size="10" fill="#1b5e20" text-anchor="middle">'
                 f'clip [{_num(clip_lo)}, {_num(clip_hi)}]</text>')
    parts.append("</svg>")
    return "".join(parts)


def precision_bar_svg(histogram: dict[str, int], width: int = 520, height: int = 26) -> str:
    """One stacked bar: how many nodes run in each precision."""
    total = sum(histogram.values()) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img"><title>nodes per precision</title>']
    x = 0.0
    for precision in ("int4", "int8", "fp16", "fp32"):
        count = histogram.get(precision, 0)
        if not count:
            continue
        w = count / total * width
        parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" '
                     f'fill="{COLORS[precision]}"/>')
        if w > 60:
            parts.append(f'<text x="{x + 6:.1f}" y="{height - 8}" font-size="12" fill="#fff">'
                         f'{precision} {count}</text>')
        x += w
    parts.append("</svg>")
    return "".join(parts)
