"""Course tooling: the manifest (book.yml), the lab generator and the book builder.

Run `python -m labkit.course --help` for the commands.
"""
