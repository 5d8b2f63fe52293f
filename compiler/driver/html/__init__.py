"""``report.html``: one self-contained page (inline CSS, inline SVG, no script, no network) per bundle."""
