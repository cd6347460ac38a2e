"""Approximate nearest-neighbour search with HNSW (Malkov & Yashunin, "Efficient and robust approximate nearest
neighbor search using Hierarchical Navigable Small World graphs", IEEE TPAMI 2020).

Exact search scores every stored vector: n dot products per query. HNSW instead walks a graph in which each
vector is linked to a few of its near neighbours, and only scores the vectors it walks past:

* **Layers.** Every vector is on layer 0; it is also on layers 1..L, where L is drawn once per vector with
  P(L >= l) = M^-l (L = floor(-ln U * m_L), U uniform, m_L = 1/ln M). Each layer up holds ~1/M of the one below,
  like the levels of a skip list, so the top layers are sparse "express" graphs with long links.
* **Search** starts at the single entry point on the top layer, walks greedily downhill (always to the closest
  neighbour) on each upper layer, and on layer 0 runs a beam search that keeps the `ef` closest vectors found so
  far and expands the closest unexpanded one until none of the candidates can improve the beam.
* **Insertion** is a search for the new vector (with beam `ef_construction`) followed by linking it to M of the
  vectors found, on each of its layers, and linking them back. A full neighbour list (M links on upper layers,
  M0 = 2M on layer 0) is cut back with the same selection rule.
* **Neighbour selection** (the paper's Algorithm 4, the heuristic): take candidates closest first and keep one
  only if it is closer to the new vector than to every neighbour already kept. Near-duplicates in one direction
  are skipped, so links spread out in all directions, which keeps clusters connected to each other. hnswlib
  uses exactly this rule (`getNeighborsByHeuristic2`) without the paper's two options (extendCandidates and
  keepPrunedConnections both off), and so does this module.

Where the paper leaves a choice, this module does what hnswlib 0.8 does (so the two can be compared at equal
M, ef_construction and ef): the new vector gets M links on every layer (layer 0 may grow to M0 through links
back), the next layer's search starts from the closest vector found (not the whole beam), fewer than M
candidates are all kept, and a search with ef < k uses ef = k.

Distances: "cosine" is 1 - <x, q> on unit-length vectors (hnswlib's "cosine" space, the score reported is the
cosine itself); "l2" is the squared Euclidean distance (score = minus it), for pictures in the plane. Vectors are
kept in float64 and each distance is one dot product of its own (never a row of a BLAS matrix product), so the
graph built does not depend on the machine: a near-tie (or an exact one, between repeated vectors) decided
differently elsewhere would change every insertion after it.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence

import numpy as np

from labkit.rag.dense import Results, _check_k

SPACES = ("cosine", "l2")


def _check_int(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {least}, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {name}={value}")
    return int(value)


class HNSW:
    """A hierarchical navigable small-world graph over vectors of one dimension, searched approximately.

    >>> index = HNSW(dim=384, M=16, ef_construction=200, seed=0)
    >>> index.add(vectors, ids)                    # [n, 384] array, one id per row
    >>> index.search(query, k=10, ef=50)           # Results([(id, cosine), ...]), best first

    `graph[l]` maps each vector (by its row number) on layer l to its neighbours on layer l.
    """

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, seed: int = 0, space: str = "cosine"):
        self.dim = _check_int("dim", dim, 1)
        self.M = _check_int("M", M, 2)  # M = 1 would make m_L = 1/ln 1 infinite
        self.M0 = 2 * self.M  # the paper's recommended M_max0 = 2M, and hnswlib's maxM0_
        self.ef_construction = _check_int("ef_construction", ef_construction, 1)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.space = space
        self.m_L = 1 / math.log(self.M)
        self.rng = np.random.default_rng(seed)
        self.vectors = np.empty((0, self.dim))
        self.ids: list[Hashable] = []
        self._row_of: dict[Hashable, int] = {}
        self.graph: list[dict[int, list[int]]] = []  # graph[l][node] = node's neighbours on layer l
        self.entry: int | None = None  # the node on the top layer where every search starts
        self.scored = 0  # distances computed so far (building and searching); set it to 0 to count one search

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_level(self) -> int:
        return len(self.graph) - 1

    # --- distances ------------------------------------------------------------------------------------------

    def _distances(self, q: np.ndarray, nodes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Distance from q to each of `nodes`, all at once (one matrix-vector product)."""
        self.scored += len(nodes)  # how much of the collection a search touches: the point of the index
        x = self.vectors[nodes]
        # one dot product per row (np.vecdot), not a matrix-vector product (x @ q): BLAS's gemv sums a row in an
        # order that depends on the row's place in its block, so two identical stored vectors (the corpus repeats
        # chunks) get distances one ulp apart, and which copy wins the tie changes from call to call and machine
        # to machine (tests/test_rag_hnsw.py checks that the first one added wins)
        if self.space == "cosine":
            return 1.0 - np.vecdot(x, q)
        diff = x - q
        return np.vecdot(diff, diff)

    def _as_vectors(self, x, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{what} must be a [n, {self.dim}] array (the index's dim is {self.dim}), "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what} contain NaN or infinity")
        return a

    # --- building -------------------------------------------------------------------------------------------

    def add(self, vectors, ids: Sequence[Hashable] | None = None) -> HNSW:
        """Insert each row of `vectors` [n, dim] in order, under `ids` (default: 0, 1, ... continuing the count).

        Cosine space refuses an all-zero row (its cosine with anything is undefined) and stores the rows scaled to
        unit length. Ids must be new and unique; the index returns them from search().
        """
        x = self._as_vectors(vectors, "vectors")
        if ids is None:
            ids = list(range(len(self), len(self) + len(x)))
        if isinstance(ids, str) or len(ids) != len(x):
            raise ValueError(f"need one id per vector: {len(x)} vectors, "
                             f"{'a string of' if isinstance(ids, str) else len(ids)} ids")
        ids = list(ids)
        seen: set[Hashable] = set()
        for label in ids:
            if label in self._row_of or label in seen:
                raise ValueError(f"ids must be unique and new; {label!r} is given twice or already in the index")
            seen.add(label)
        if self.space == "cosine":
            norms = np.sqrt(np.vecdot(x, x))
            if (norms == 0).any():
                raise ValueError(f"vector for id {ids[int(np.argmax(norms == 0))]!r} is all zeros: its cosine with "
                                 "anything is undefined")
            x = x / norms[:, None]
        first = len(self)
        self.vectors = np.concatenate([self.vectors, x])
        for offset, label in enumerate(ids):
            self._row_of[label] = first + offset
            self.ids.append(label)
            self._insert(first + offset)
        return self

    def random_level(self) -> int:
        """floor(-ln U * m_L), U uniform on (0, 1]: P(level >= l) = exp(-l / m_L) = M^-l."""
        return int(-math.log(1.0 - self.rng.random()) * self.m_L)

    def _insert(self, node: int) -> None:
        q = self.vectors[node]
        level = self.random_level()
        while len(self.graph) <= level:
            self.graph.append({})
        for layer in range(level + 1):
            self.graph[layer][node] = []
        if self.entry is None:
            self.entry = node
            return
        entry, top = self.entry, self._level_of(self.entry)
        # 1. above the new node's level: greedy descent to a good starting point
        for layer in range(top, level, -1):
            entry = self._greedy(q, entry, layer)
        # 2. on each of its levels: beam search, pick M neighbours, link both ways
        for layer in range(min(level, top), -1, -1):
            found = self._search_layer(q, [entry], self.ef_construction, layer)
            chosen = self._select(q, found, self.M)
            self.graph[layer][node] = [n for _, n in chosen]
            for d, other in chosen:
                self._link(other, node, d, layer)
            entry = chosen[0][1]  # hnswlib starts the next layer from the closest vector kept
        if level > top:
            self.entry = node

    def _level_of(self, node: int) -> int:
        return max(l for l in range(len(self.graph)) if node in self.graph[l])

    def _link(self, node: int, new: int, d: float, layer: int) -> None:
        """Add `new` (at distance d) to node's neighbours on `layer`; on overflow, re-select them with the heuristic."""
        links = self.graph[layer][node]
        capacity = self.M0 if layer == 0 else self.M
        if len(links) < capacity:
            links.append(new)
            return
        candidates = list(zip(self._distances(self.vectors[node], links).tolist(), links)) + [(d, new)]
        self.graph[layer][node] = [n for _, n in self._select(self.vectors[node], sorted(candidates), capacity)]

    def _select(self, q: np.ndarray, candidates: list[tuple[float, int]], m: int) -> list[tuple[float, int]]:
        """The paper's Algorithm 4 (hnswlib's getNeighborsByHeuristic2): from (distance to q, node) pairs sorted
        closest first, keep a candidate only if it is closer to q than to every candidate already kept; at most m.

        A candidate nearer to a kept neighbour than to q is reachable through that neighbour, so linking it
        would add little; skipping it leaves room for links in other directions.
        """
        if len(candidates) <= m:  # hnswlib keeps them all without testing
            return candidates
        kept: list[tuple[float, int]] = []
        for d, c in candidates:
            if len(kept) == m:
                break
            if not kept or (self._distances(self.vectors[c], [n for _, n in kept]) >= d).all():
                kept.append((d, c))
        return kept

    # --- searching ------------------------------------------------------------------------------------------

    def _greedy(self, q: np.ndarray, node: int, layer: int) -> int:
        """Move to the closest neighbour while that gets closer to q (the paper's search with ef = 1)."""
        d = float(self._distances(q, [node])[0])
        while True:
            links = self.graph[layer][node]
            if not links:
                return node
            ds = self._distances(q, links)
            best = int(np.argmin(ds))
            if ds[best] >= d:
                return node
            node, d = links[best], float(ds[best])

    def _search_layer(self, q: np.ndarray, entries: list[int], ef: int, layer: int) -> list[tuple[float, int]]:
        """The paper's Algorithm 2: beam search on one layer; the (distance, node) of the ef closest found, sorted."""
        ds = self._distances(q, entries).tolist()
        visited = set(entries)
        candidates = list(zip(ds, entries))  # min-heap: the closest unexpanded node first
        heapq.heapify(candidates)
        beam = [(-d, n) for d, n in candidates]  # max-heap (negated): the farthest of the ef kept on top
        heapq.heapify(beam)
        while len(beam) > ef:
            heapq.heappop(beam)
        while candidates:
            d, node = heapq.heappop(candidates)
            if d > -beam[0][0]:
                break  # the closest candidate is farther than everything kept: nothing left can improve the beam
            fresh = [n for n in self.graph[layer][node] if n not in visited]
            if not fresh:
                continue
            visited.update(fresh)
            for d_new, n in zip(self._distances(q, fresh).tolist(), fresh):
                if len(beam) < ef or d_new < -beam[0][0]:
                    heapq.heappush(candidates, (d_new, n))
                    heapq.heappush(beam, (-d_new, n))
                    if len(beam) > ef:
                        heapq.heappop(beam)
        return sorted((-negd, n) for negd, n in beam)

    def search(self, query, k: int = 10, ef: int = 10) -> Results:
        """The (about) k nearest stored vectors to `query`: Results([(id, score), ...]) best first.

        ef is the beam width on layer 0 (hnswlib's default is 10 too): larger is slower and more accurate; ef < k
        searches with ef = k, as hnswlib does. The score is the cosine ("cosine") or minus the squared distance
        ("l2"). An all-zero query in cosine space returns an empty result with the reason.
        """
        _check_k(k)
        ef = _check_int("ef", ef, 1)
        q = self._as_query(query)
        if q is None:
            return Results([], reason="query is all zeros: cosine is undefined")
        node = self.entry
        for layer in range(self.max_level, 0, -1):
            node = self._greedy(q, node, layer)
        return self._results(self._search_layer(q, [node], max(ef, k), 0)[:k])

    def exact_search(self, query, k: int = 10) -> Results:
        """Brute force over the same vectors with the same distances: the truth that recall is measured against.

        Ties go to the vector added first, as in search() (whose heaps order equal distances by row).
        """
        _check_k(k)
        q = self._as_query(query)
        if q is None:
            return Results([], reason="query is all zeros: cosine is undefined")
        d = self._distances(q, np.arange(len(self)))
        top = np.argsort(d, kind="stable")[:k]
        return self._results(list(zip(d[top].tolist(), top.tolist())))

    def _as_query(self, query) -> np.ndarray | None:
        """The query as float64 (unit length in cosine space); None for an all-zero cosine query."""
        q = np.asarray(query, dtype=np.float64)
        if q.ndim != 1 or q.shape[0] != self.dim:
            raise ValueError(f"query must be a vector of {self.dim} numbers (the index's dim), got shape {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("query contains NaN or infinity")
        if self.entry is None:
            raise ValueError("the index is empty: add vectors before searching")
        if self.space == "cosine":
            norm = np.sqrt(np.vecdot(q, q))
            return None if norm == 0 else q / norm
        return q

    def _results(self, found: list[tuple[float, int]]) -> Results:
        to_score = (lambda d: 1.0 - d) if self.space == "cosine" else (lambda d: -d)
        return Results([(self.ids[n], float(to_score(d))) for d, n in found])
