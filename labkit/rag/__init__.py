"""Chapter 12: retrieval-augmented generation — every stage from scratch.

- evalset: the evaluation set (questions, gold sections, short answers, a held-out split) as Questions and qrels.
- hnsw: approximate nearest-neighbour search on a layered graph (HNSW), compared with hnswlib.
"""
