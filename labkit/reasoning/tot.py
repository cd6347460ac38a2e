"""Tree of Thoughts (Yao et al. 2023): reasoning as a search over partial solutions ("thoughts").

A problem is a tree. Each node is a state (a partial solution); `propose(state)` lists the states one thought
further; `value(state)` scores how promising a state is. Who proposes and who values is pluggable: a language
model (chapter 11's prompts24), or an exact solver (an oracle: it separates bugs in the search from weakness of
the model). Two ways to walk the tree:

    BFS with breadth b   keep the b best states at each depth (a beam); cost: about b · (children) values per step
    DFS with pruning     go deep along the best child first; drop children whose value is below a threshold;
                         back up when a branch dies; stop at a solution or when the step budget runs out

Both record every node they created (state, value, kept or pruned) in a `Search`, so that `explorer` can draw
the tree and a test can count it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

S = TypeVar("S")


def _check_breadth(breadth: object) -> int:
    if isinstance(breadth, bool) or not isinstance(breadth, int) or breadth < 1:
        raise ValueError(f"breadth must be an int >= 1, got {breadth!r}")
    return breadth


def bfs_step(frontier: Sequence[S], propose: Callable[[S], Sequence[S]], value: Callable[[S], float],
             breadth: int) -> list[S]:
    """One step of ToT-BFS: expand every state of the frontier, score every candidate, keep the best `breadth`.

    The kept candidates come best first; candidates with equal value keep the order they were generated in
    (Python's sort is stable), so a search with a constant value function keeps the first `breadth` proposals."""
    _check_breadth(breadth)
    if isinstance(frontier, (str, bytes)) or not isinstance(frontier, Sequence):
        raise TypeError(f"frontier must be a sequence of states, got {type(frontier).__name__}")
    candidates = [child for state in frontier for child in propose(state)]
    scores = [float(value(c)) for c in candidates]   # the candidates are scored, not their parents
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order[:breadth]]


@dataclass
class Node(Generic[S]):
    """One state the search created. status: "root", "kept" (in the beam / visited), "pruned" (dropped by the
    beam or the threshold), "unvisited" (DFS stopped before reaching it), "solution"."""
    id: int
    parent: int | None
    depth: int
    state: S
    value: float | None
    status: str = "kept"
    visits: int | None = None   # MCTS only: how often the node was on a selected path


@dataclass
class Search(Generic[S]):
    """What a search did: every node it created (node 0 is the root), the goal states it reached (best first for
    BFS, in the order found for DFS), and its cost in calls of propose and value."""
    nodes: list[Node[S]]
    solutions: list[S]
    proposals: int = 0
    evaluations: int = 0
    frontier: list[S] = field(default_factory=list)   # BFS: the last beam, best first, goal or not

    def children(self, node_id: int) -> list[Node[S]]:
        return [n for n in self.nodes if n.parent == node_id]

    @property
    def solved(self) -> bool:
        return bool(self.solutions)


def bfs(root: S, propose: Callable[[S], Sequence[S]], value: Callable[[S], float], *, breadth: int, depth: int,
        is_goal: Callable[[S], bool] = lambda s: True) -> Search[S]:
    """ToT-BFS: `depth` calls of bfs_step from the root, recording the tree. The last beam, best first, is
    filtered by is_goal into `solutions`: solutions[0] is "the first answer", any of them "one of b"."""
    _check_breadth(breadth)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    nodes: list[Node[S]] = [Node(0, None, 0, root, None, "root")]
    cost = {"propose": 0, "value": 0}

    def expand(node: Node[S]) -> list[Node[S]]:
        # children are made (and valued, once each) here; bfs_step then only reads the stored value
        cost["propose"] += 1
        out = []
        for child in propose(node.state):
            cost["value"] += 1
            out.append(Node(len(nodes), node.id, node.depth + 1, child, float(value(child)), "pruned"))
            nodes.append(out[-1])
        return out

    frontier = [nodes[0]]
    for _ in range(depth):
        frontier = bfs_step(frontier, expand, lambda n: n.value, breadth)
        for n in frontier:
            n.status = "kept"
        if not frontier:
            break
    solutions = []
    for n in frontier:
        if n.depth == depth and is_goal(n.state):
            n.status = "solution"
            solutions.append(n.state)
    return Search(nodes, solutions, cost["propose"], cost["value"], [n.state for n in frontier])


def dfs(root: S, propose: Callable[[S], Sequence[S]], value: Callable[[S], float], *, depth: int,
        is_goal: Callable[[S], bool], threshold: float = 0.5, max_steps: int = 100,
        all_solutions: bool = False) -> Search[S]:
    """ToT-DFS: expand the most valued child first, prune children valued below `threshold`, back up when a
    branch is exhausted. A step is one propose call; the search stops after `max_steps` of them, or at the first
    goal at `depth` (unless all_solutions). Children never reached keep status "unvisited"."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    nodes: list[Node[S]] = [Node(0, None, 0, root, None, "root")]
    search = Search(nodes, [])

    def visit(node: Node[S]) -> bool:  # True: stop the whole search
        if node.depth == depth:
            if is_goal(node.state):
                node.status = "solution"
                search.solutions.append(node.state)
                return not all_solutions
            return False
        if search.proposals >= max_steps:
            return True
        search.proposals += 1
        kids = []
        for child in propose(node.state):
            search.evaluations += 1
            v = float(value(child))
            kids.append(Node(len(nodes), node.id, node.depth + 1, child, v,
                             "unvisited" if v >= threshold else "pruned"))
            nodes.append(kids[-1])
        for kid in sorted(kids, key=lambda n: -n.value):  # best first; stable on ties
            if kid.status == "pruned":
                break                                    # sorted, so every later child is below threshold too
            kid.status = "kept"
            if visit(kid):
                return True
        return False

    visit(nodes[0])
    return search
