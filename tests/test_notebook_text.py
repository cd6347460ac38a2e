"""The course's prose renders: no control characters in markdown cells.

A "\\t" or "\\b" inside a Python string that writes LaTeX turns `\\times`, `\\top`, `\\text`, `\\beta` into a tab
or a backspace and a word; the book then shows "N imes N". Any control character but a newline is a bug.
"""
import re

import nbformat
import pytest

from labkit.course import manifest

M = manifest.load()
NOTEBOOKS = [nb for c in M.chapters for nb in (*c.notebooks, c.lab, c.solution) if nb]
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_markdown_has_no_control_characters(path):
    nb = nbformat.read(M.root / path, as_version=4)
    bad = [(i, repr(CONTROL.search(c.source).group()), c.source[max(0, CONTROL.search(c.source).start() - 20):
                                                                CONTROL.search(c.source).end() + 10])
           for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and CONTROL.search(c.source)]
    assert not bad, f"{path}: control characters in markdown (cell, char, context): {bad}"
