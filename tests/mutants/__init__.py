"""Plausible wrong implementations for each lab: tests/mutants/<solution file stem>.py holds `MUTANTS`.

tests/test_labs.py swaps each mutant in for the solution cell that defines the same function, executes the
notebook, and asserts that the named check cells fail. Every check cell must be caught by at least one
mutant: a check that no wrong answer can fail checks nothing.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mutant:
    why: str
    function: str  # the solution cell that defines this function is replaced
    source: str
    fails: frozenset[str]


def mutants_for(solution: str) -> list[Mutant]:
    """The MUTANTS list of tests/mutants/<stem of solution>.py (file names may contain dashes)."""
    path = Path(__file__).with_name(Path(solution).stem + ".py")
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"mutants_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS
