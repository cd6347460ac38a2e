"""Small, dependency-free visualisations as HTML strings: they render in a live notebook and in the static
book alike (no JavaScript, no images), and the same inputs always give the same string."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence

# Whitespace tokens would render as nothing; show them as visible symbols instead.
_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def visible_token(token: str) -> str:
    """The token with spaces, newlines, tabs and carriage returns replaced by visible symbols."""
    return "".join(_VISIBLE.get(ch, ch) for ch in token) if token else "∅"


def html_bar_chart(labels: Sequence[str], values: Sequence[float], title: str = "",
                   max_value: float | None = None, value_format: str = "{:.3f}") -> str:
    """A horizontal bar chart in pure HTML/CSS: one row per (label, value), bars scaled to `max_value`
    (default: the largest value). Labels are HTML-escaped and whitespace is made visible."""
    labels, values = list(labels), [float(v) for v in values]
    if len(labels) != len(values):
        raise ValueError(f"labels and values must have the same length, got {len(labels)} and {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("values must be finite and >= 0")
    scale = max(values, default=0.0) if max_value is None else float(max_value)
    rows = []
    for label, value in zip(labels, values):
        width = 0.0 if scale <= 0 else min(100.0, 100.0 * value / scale)
        rows.append(
            '<div style="display:flex;align-items:center;gap:6px;margin:1px 0">'
            '<code style="flex:0 0 7em;text-align:right;white-space:pre;overflow:hidden">'
            f'{html.escape(visible_token(str(label)))}</code>'
            '<div style="flex:1 1 auto;background:#eee;height:14px">'
            f'<div style="width:{width:.1f}%;height:100%;background:#4878a8"></div></div>'
            f'<span style="flex:0 0 4.5em;font-family:monospace;font-size:90%">'
            f'{html.escape(value_format.format(value))}</span></div>')
    heading = f'<div style="font-weight:bold;margin-bottom:4px">{html.escape(title)}</div>' if title else ""
    return f'<div style="max-width:34em;font-size:13px">{heading}{"".join(rows)}</div>'
