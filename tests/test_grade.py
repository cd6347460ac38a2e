"""`python -m labkit.course grade`: grading without nbgrader, on submissions this test makes.

One grading run over one lab (the cheapest to execute) and the submissions an instructor meets: the solution,
the blank lab, a wrong implementation from tests/mutants/, one that never finishes, one whose code raises as
soon as it runs, one that kills its own process, one that edited and deleted check cells, and files that are no
notebook or no lab. Each is reported for what it is, and none stops the run.
"""
import csv
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.course import grade, labs, manifest, nbgrader_cells
from mutants import mutants_for

M = manifest.load()
CH = next(c for c in M.chapters if c.id == "02-neural-lm")  # its lab executes in about 2 s
STEM = Path(CH.lab).stem
TIMEOUT_S = 40  # long enough for this lab on a busy machine; the infinite loop costs exactly this


def _solution() -> nbformat.NotebookNode:
    return nbgrader_cells.stamp(nbformat.read(M.root / CH.solution, as_version=4))


def _answer_cell(nb, function: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and re.search(rf"^def {function}\(", c.source, re.M)]
    assert len(cells) == 1
    return cells[0]


@pytest.fixture(scope="module")
def made():
    """The submissions, as `labs` would hand them out and students would hand them back."""
    solution = _solution()
    blank = labs.make_lab(solution)
    mutant = mutants_for(CH.solution)[0]
    first_answer = next(c for c in solution.cells if c.metadata["nbgrader"]["solution"])
    first_function = re.search(r"^def (\w+)\(", first_answer.source, re.M)[1]
    checks = list(nbgrader_cells.points(blank))

    def edited(nb, change):
        nb = nbformat.from_dict(nb)
        change(nb)
        return nb

    def tamper(nb):  # on the blank lab: a check emptied, another deleted, a read-only cell that disarms the checks
        check = next(c for c in nb.cells if labs.check_name(c) == checks[0])
        check.source = f"# CHECK: {checks[0]}\npass"
        nb.cells = [c for c in nb.cells if labs.check_name(c) != checks[1]]
        imports = next(c for c in nb.cells if "import" in c.source and c.cell_type == "code")
        imports.source += "\n" + "\n".join(f"{n} = lambda *a, **k: None" for n in
                                           re.findall(r"\b(check_\w+)\b", "".join(c.source for c in nb.cells)))

    return {
        "solution": solution,
        "blank": blank,
        "mutant": edited(solution, lambda nb: setattr(_answer_cell(nb, mutant.function), "source", mutant.source)),
        "loops": edited(solution, lambda nb: setattr(_answer_cell(nb, first_function), "source",
                                                      "while True:\n    pass")),
        "raises": edited(solution, lambda nb: setattr(_first_answer(nb), "source",
                                                       "import not_a_module_anywhere\n" + first_answer.source)),
        "exits": edited(solution, lambda nb: setattr(_first_answer(nb), "source",
                                                      "import os\nos._exit(0)")),  # exits "successfully"
        "tampered": edited(blank, tamper),
        "_mutant": mutant, "_checks": checks, "_first": first_function,
    }


def _first_answer(nb):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))


@pytest.fixture(scope="module")
def run(made, tmp_path_factory):
    """One `python -m labkit.course grade` run over every submission, two at a time; its output and CSV."""
    root = tmp_path_factory.mktemp("submissions")
    for student in ("solution", "blank", "mutant", "loops", "raises", "exits", "tampered"):
        (root / student).mkdir()
        nbformat.write(made[student], root / student / f"{STEM}.ipynb")
    (root / "garbled").mkdir()
    (root / "garbled" / f"{STEM}.ipynb").write_text("{ this is no notebook", encoding="utf-8")
    (root / "stranger").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]),
                   root / "stranger" / "homework.ipynb")
    out = root.parent / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "labkit.course", "grade", str(root), "--timeout", str(TIMEOUT_S),
                           "--jobs", "2", "--csv", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return done.stdout, rows


def _rows(rows, student):
    return {r["check"]: r for r in rows if r["student"] == student}


def _score(rows, student):
    mine = _rows(rows, student).values()
    return sum(float(r["points"]) for r in mine), sum(float(r["max_points"]) for r in mine)


def test_solution_gets_full_marks_and_the_blank_lab_none(run, made):
    _, rows = run
    full = sum(nbgrader_cells.points(made["blank"]).values())
    assert _score(rows, "solution") == (full, full)
    assert {r["status"] for r in _rows(rows, "solution").values()} == {"passed"}
    assert _score(rows, "blank") == (0, full)
    assert {r["status"] for r in _rows(rows, "blank").values()} == {"failed"}
    assert any("NotImplementedError: Exercise" in r["detail"] for r in _rows(rows, "blank").values())


def test_a_wrong_implementation_fails_the_checks_it_must(run, made):
    _, rows = run
    mine = _rows(rows, "mutant")
    assert {name for name, r in mine.items() if r["status"] == "failed"} >= made["_mutant"].fails
    assert 0 < _score(rows, "mutant")[0] < _score(rows, "mutant")[1]


def test_an_endless_loop_is_stopped_and_the_run_goes_on(run):
    out, rows = run
    mine = list(_rows(rows, "loops").values())
    assert {r["submission"] for r in mine} == {"timed out"}
    assert all(r["status"] in {"not run", "failed"} for r in mine) and _score(rows, "loops")[0] == 0
    assert f"stopped after {TIMEOUT_S} s" in mine[0]["notes"]
    assert TIMEOUT_S <= float(mine[0]["seconds"]) < TIMEOUT_S + 10
    assert "loops" in out and "timed out" in out
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count("labkit.course.grade")]
    assert not left, "a graded notebook's process outlived its timeout"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_code_that_raises_when_run_is_reported_and_the_other_checks_still_count(run, made):
    _, rows = run
    mine = list(_rows(rows, "raises").values())
    assert {r["submission"] for r in mine} == {"graded"}
    assert "ModuleNotFoundError" in mine[0]["notes"]
    assert any(r["status"] == "failed" and f"'{made['_first']}' is not defined" in r["detail"] for r in mine)
    assert 0 < _score(rows, "raises")[0] < _score(rows, "raises")[1]


def test_a_process_that_exits_is_reported(run):
    _, rows = run
    mine = list(_rows(rows, "exits").values())
    assert {r["submission"] for r in mine} == {"died"} and "exited with code 0 in cell" in mine[0]["notes"]
    assert _score(rows, "exits")[0] == 0


def test_edited_and_deleted_checks_are_reported_and_run_as_written_by_the_course(run, made):
    out, rows = run
    mine = _rows(rows, "tampered")
    first, second = made["_checks"][:2]
    assert mine[second]["status"] == "deleted" and mine[first]["status"] == "failed"
    assert {r["status"] for n, r in mine.items() if n != second} == {"failed"}
    assert f"check cells deleted: {second}" in mine[first]["notes"]
    assert f"check {first}" in mine[first]["notes"] and "a read-only cell" in mine[first]["notes"]
    assert _score(rows, "tampered")[0] == 0


def test_files_that_are_no_lab_are_listed_not_graded(run):
    out, rows = run
    garbled, stranger = _rows(rows, "garbled")[""], _rows(rows, "stranger")[""]
    assert garbled["submission"] == "unreadable" and stranger["submission"] == "unknown lab"
    assert "== not graded ==" in out and "homework.ipynb" in out


def test_the_table_has_a_row_per_student_and_a_column_per_check(run, made):
    out, _ = run
    block = out.split(f"== {STEM} ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block[0].split()[:len(made["_checks"]) + 1] == ["student", *made["_checks"]]
    students = [line.split()[0] for line in block[1:]]
    assert sorted(students) == sorted(["solution", "blank", "mutant", "loops", "raises", "exits", "tampered"])


def test_plan_matches_checks_by_grade_id_cell_id_or_check_line(made):
    ref = grade.references()[STEM]
    name = made["_checks"][0]
    for strip in ("nothing", "ids", "ids and metadata"):
        nb = nbformat.from_dict(made["blank"])
        for cell in nb.cells:
            if cell.source.startswith(f"# CHECK: {name}\n"):
                cell.source += "\nprint('edited')"
            if strip != "nothing":
                cell.pop("id", None)
            if strip == "ids and metadata":
                cell.metadata = {}
            if labs.check_name(cell) == name:
                cell.source += "\nprint('edited')"
        cells, missing, notes = grade.plan(nb, ref)
        assert not missing and f"check {name}" in notes[0]
        assert [c["check"] for c in cells if c["check"]] == made["_checks"]


def test_grading_an_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no notebooks under"):
        grade.grade(tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        grade.grade(tmp_path / "absent")
