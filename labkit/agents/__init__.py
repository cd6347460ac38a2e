"""Chapter 13: tools and agents — the tools an agent calls, and the walls around them.

- calculator: exact arithmetic on untrusted text (ast walk, Fractions, sizes bounded before work), never `eval`.
"""
