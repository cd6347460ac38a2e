"""Graded checks for the labs: one module per chapter, named like the chapter's labkit module.

Each `check_<name>(fn)` calls the student's function on several inputs (edge cases included), compares with
labkit's reference and with properties any correct answer has, and raises AssertionError saying what is wrong
(which input, expected vs got). On success it prints one line, e.g. "✓ count_ngrams passes 6 checks".
A stub that raises NotImplementedError is not caught: the blank lab must fail loudly.
"""
