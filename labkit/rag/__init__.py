"""Chapter 12: retrieval-augmented generation — every stage from scratch.

- hnsw: approximate nearest-neighbour search on a layered graph (HNSW), compared with hnswlib.
"""
