"""Chapter 12: retrieval-augmented generation — every stage from scratch."""
