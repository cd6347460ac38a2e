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


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_each_stream_is_one_output(path):
    """Consecutive chunks of one stream are one output: the book draws each output as its own box, so an
    uncoalesced log shows one box per line and a label can land in one box, its value in the next
    (labkit.course.execute coalesces them; a notebook executed another way must be too)."""
    nb = nbformat.read(M.root / path, as_version=4)
    split = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             for a, b in zip(c.outputs, c.outputs[1:])
             if a.output_type == b.output_type == "stream" and a.name == b.name]
    assert not split, f"{path}: cells whose output stream is split over several outputs: {sorted(set(split))}"
