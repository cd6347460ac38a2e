"""Chapter 13: tools and agents — the tools an agent calls, and the walls around them.

- calculator: exact arithmetic on untrusted text (ast walk, Fractions, sizes bounded before work), never `eval`.
- sandbox: untrusted Python in a separate process, held by OS resource limits (CPU, memory, file size,
  processes, open files), a wall-clock timeout that kills the whole process group, and an audit hook that
  refuses network, writes outside its folder and new processes — with an honest account of what it cannot stop.
"""
