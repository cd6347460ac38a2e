"""Chapter 11: reasoning as search."""
