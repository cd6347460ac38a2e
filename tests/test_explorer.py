"""The static tree explorer (labkit.reasoning.explorer): valid nested HTML with one element per search node."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given, settings, strategies as st

from labkit.reasoning.explorer import render
from labkit.reasoning.mcts import mcts
from labkit.reasoning.tot import bfs, dfs

VOID = {"br", "hr", "img", "meta", "input", "link"}


class _Tree(HTMLParser):
    """Checks that tags nest properly, counts class="node" elements and records node depths."""

    def __init__(self):
        super().__init__()
        self.stack, self.nodes, self.scripts, self.depths = [], [], 0, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script" or any(k.startswith("on") for k in attrs)
        if tag in VOID:
            return
        if attrs.get("class") == "node":
            self.nodes.append(attrs)
            self.depths[attrs["data-id"]] = sum(1 for t in self.stack if t[1])
        self.stack.append((tag, attrs.get("class") == "node"))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1:]!r}"
        self.stack.pop()


def parse(text):
    p = _Tree()
    p.feed(text)
    p.close()
    assert not p.stack, f"unclosed tags: {p.stack}"
    return p


def propose_bits(s):
    return [s + (0,), s + (1,)] if len(s) < 4 else []


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.sampled_from(["bfs", "dfs", "mcts"]), st.integers(0, 15))
def test_every_node_is_drawn_once_nested_under_its_parent(breadth, kind, goal):
    target = tuple(int(b) for b in f"{goal:04b}")
    value = lambda s: sum(a == b for a, b in zip(s, target)) / 4  # noqa: E731
    if kind == "bfs":
        search = bfs((), propose_bits, value, breadth=breadth, depth=4, is_goal=lambda s: s == target)
    elif kind == "dfs":
        search = dfs((), propose_bits, value, depth=4, is_goal=lambda s: s == target, threshold=0.2 * breadth)
    else:
        search = mcts((), propose_bits, value, depth=4, is_goal=lambda s: s == target, budget=6 * breadth)
    tree = parse(render(search))
    assert len(tree.nodes) == len(search.nodes)
    assert sorted(int(n["data-id"]) for n in tree.nodes) == list(range(len(search.nodes)))
    assert {int(k): d for k, d in tree.depths.items()} == {n.id: n.depth for n in search.nodes}
    assert [n["data-status"] for n in sorted(tree.nodes, key=lambda a: int(a["data-id"]))] == \
        [n.status for n in search.nodes]
    assert tree.scripts == 0
    hidden = parse(render(search, hide=("pruned",)))
    assert len(hidden.nodes) <= len(tree.nodes)
    assert all(n["data-status"] != "pruned" for n in hidden.nodes)


def test_labels_are_escaped():
    search = bfs("<b>", lambda s: ["<script>x</script>"] if s == "<b>" else [], lambda s: 1.0, breadth=1, depth=1)
    text = render(search)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert parse(text).scripts == 0


def test_render_rejects_what_is_not_a_search():
    with pytest.raises(TypeError, match="render expects a tot.Search"):
        render([1, 2, 3])
