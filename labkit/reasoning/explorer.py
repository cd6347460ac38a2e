"""A tree explorer for one search that works without a kernel: the tree as static HTML.

Every node of a `tot.Search` becomes a nested <details> (click to open its children) whose <summary> shows the
state, its value and what the search did with it (kept, pruned, unvisited, solution), coloured. Only HTML and
inline CSS: the published book shows it as it is, with no JavaScript and no running Python.
"""
from __future__ import annotations

import html
from typing import Callable

from labkit.reasoning.tot import Node, Search

COLOURS = {"root": "#444", "kept": "#1f6feb", "pruned": "#999", "unvisited": "#bbb", "solution": "#1a7f37"}

_CSS = ("<style>.tot-tree{font:13px/1.5 monospace}.tot-tree details{margin-left:1.2em}"
        ".tot-tree summary{cursor:pointer}.tot-tree .leaf{margin-left:2.4em}"
        ".tot-tree .badge{display:inline-block;min-width:5.5em;color:#fff;border-radius:3px;padding:0 4px;"
        "margin-right:6px;text-align:center}</style>")


def _line(node: Node, label: Callable[[object], str]) -> str:
    value = "" if node.value is None else f" · value {node.value:.3g}"
    visits = "" if node.visits is None else f" · visits {node.visits}"
    colour = COLOURS.get(node.status, "#444")
    return (f'<span class="badge" style="background:{colour}">{html.escape(node.status)}</span>'
            f"{html.escape(label(node.state))}{value}{visits}")


def render(search: Search, label: Callable[[object], str] = str, open_depth: int = 1,
           hide: tuple[str, ...] = ()) -> str:
    """The search tree as an HTML string. Nodes whose status is in `hide` (e.g. ("pruned",)) are left out, with
    their subtrees; levels above open_depth start open. Each drawn node carries class="node"."""
    if not isinstance(search, Search):
        raise TypeError(f"render expects a tot.Search, got {type(search).__name__}")
    kids: dict[int, list[Node]] = {}
    for n in search.nodes:
        if n.parent is not None:
            kids.setdefault(n.parent, []).append(n)

    def draw(n: Node) -> str:
        below = [draw(c) for c in kids.get(n.id, []) if c.status not in hide]
        attrs = f'class="node" data-id="{n.id}" data-status="{html.escape(n.status)}"'
        if not below:
            return f'<div {attrs}><div class="leaf">{_line(n, label)}</div></div>'
        opened = " open" if n.depth < open_depth else ""
        return f"<details {attrs}{opened}><summary>{_line(n, label)}</summary>{''.join(below)}</details>"

    counts = {}
    for n in search.nodes:
        counts[n.status] = counts.get(n.status, 0) + 1
    legend = " ".join(f'<span class="badge" style="background:{COLOURS.get(s, "#444")}">{html.escape(s)} {c}</span>'
                      for s, c in sorted(counts.items()))
    return f'{_CSS}<div class="tot-tree"><div>{legend}</div>{draw(search.nodes[0])}</div>'
