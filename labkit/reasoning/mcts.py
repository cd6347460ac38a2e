"""Monte-Carlo tree search (UCT) over the same thoughts as Tree of Thoughts, with the same value function.

ToT-BFS spends its value calls level by level: every child of every kept state is scored. MCTS spends them
where the tree looks best so far, and keeps some for the less visited branches. Each iteration

    select    from the root, go to the child maximising  UCT = W/N + c · sqrt(ln N_parent / N)
              (mean value + exploration bonus) until a node that has not been expanded
    expand    propose its children and score each with value() (one value call each); a new child starts
              with N = 1, W = its value
    backup    add the best child's value to W and 1 to N on every node of the path

The value function stands in for the random rollouts of classical MCTS (a rollout would cost several model
calls; AlphaGo Zero replaced rollouts by a value network the same way). c = 0 is greedy best-first descent; a
larger c spends more calls on branches valued lower, which pays when the value function is noisy and costs
calls when it is exact. The search stops at a goal state at full depth, when the next expansion would pass
`budget` value calls, or when the tree is exhausted; it records its tree as a `tot.Search` for the explorer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from labkit.reasoning.tot import Node, Search

S = TypeVar("S")


@dataclass
class _Tree(Generic[S]):
    node: Node[S]
    total: float = 0.0                      # W: sum of backed-up values
    visits: int = 0                         # N
    children: list["_Tree[S]"] | None = None  # None: not expanded yet
    exhausted: bool = False                 # nothing left to expand below this node


def uct(total: float, visits: int, parent_visits: int, c: float) -> float:
    """The UCT score of a child: its mean value plus c · sqrt(ln N_parent / N)."""
    return total / visits + c * math.sqrt(math.log(parent_visits) / visits)


def mcts(root: S, propose: Callable[[S], Sequence[S]], value: Callable[[S], float], *, depth: int,
         is_goal: Callable[[S], bool], budget: int, c: float = 1.0) -> Search[S]:
    """UCT search for a goal state at `depth`, spending at most `budget` value calls (one per scored child).
    Deterministic: ties in UCT go to the child proposed first."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (value calls), got {budget!r}")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0:
        raise ValueError(f"c (the exploration weight) must be a number >= 0, got {c!r}")
    nodes: list[Node[S]] = [Node(0, None, 0, root, None, "root", 1)]
    search = Search(nodes, [])
    top = _Tree(nodes[0], visits=1)

    while not top.exhausted and not search.solutions:
        path = [top]
        while path[-1].children is not None:              # select
            parent = path[-1]
            live = [ch for ch in parent.children if not ch.exhausted]
            path.append(max(live, key=lambda ch: uct(ch.total, ch.visits, parent.visits, c)))
        leaf = path[-1]
        states = list(propose(leaf.node.state)) if leaf.node.depth < depth else []
        if search.evaluations + len(states) > budget:
            break                                         # this expansion would overspend
        search.proposals += leaf.node.depth < depth
        leaf.children = []
        for state in states:                              # expand: score every child once
            search.evaluations += 1
            v = float(value(state))
            node = Node(len(nodes), leaf.node.id, leaf.node.depth + 1, state, v, "unvisited", 1)
            nodes.append(node)
            leaf.children.append(_Tree(node, total=v, visits=1, exhausted=node.depth == depth))
            if node.depth == depth and is_goal(state):
                node.status = "solution"
                search.solutions.append(state)
        if leaf is not top:
            leaf.node.status = "kept"
        best = max((ch.total for ch in leaf.children), default=0.0)
        for t in path:                                    # backup
            t.total += best
            t.visits += 1
            t.node.visits = t.visits
        for t in reversed(path):                          # exhausted: expanded, and every child exhausted
            t.exhausted = all(ch.exhausted for ch in t.children)
    return search
