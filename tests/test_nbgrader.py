"""The solution notebooks are nbgrader source notebooks, checked with nbgrader itself (0.9.6, a course dependency).

labkit/course/nbgrader_cells.py stamps nbgrader's cell metadata from the lab markers. Here nbgrader's own
`generate_assignment` makes the student version of every lab, and its `autograde` grades submissions made the
way students make them (the released notebook with its answer cells filled in): the solution gets full marks,
the blank lab and the lab the course generates get zero (and that lab, solved, full marks), and every wrong implementation in tests/mutants/
gets less than full. Autograding runs on one lab, the cheapest to execute, to keep the test run short.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import MetadataValidator

from labkit.course import labs, manifest, nbgrader_cells
from mutants import mutants_for

M = manifest.load()
CHAPTERS = [c for c in M.chapters if c.lab and c.solution]
GRADED = "02-neural-lm"  # autograded end to end: its lab executes in about 2 s


def _solution(ch) -> nbformat.NotebookNode:
    return nbformat.read(M.root / ch.solution, as_version=4)


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader calls `alembic` by name: the venv's bin must be on PATH, as it is for an instructor in the venv.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    done = subprocess.run([sys.executable, *args], cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.id for c in CHAPTERS])
def test_stamp_is_valid_idempotent_and_marks_every_cell(ch):
    nb = nbgrader_cells.stamp(_solution(ch), where=ch.solution)
    MetadataValidator().validate_nb(nb)  # raises on metadata nbgrader would refuse
    assert nbgrader_cells.stamp(nb) == nb
    for cell in nb.cells:
        meta = cell.metadata["nbgrader"]
        check = labs.check_name(cell)
        if check:
            assert meta["grade"] and meta["locked"] and not meta["solution"] and meta["points"] > 0
            assert meta["grade_id"] == nbgrader_cells.check_grade_id(check)
        elif "### BEGIN SOLUTION" in cell.source:
            assert meta["solution"] and not meta["locked"] and not meta["grade"]
        else:
            assert meta["locked"] and not meta["solution"] and not meta["grade"], cell.source[:80]


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.id for c in CHAPTERS])
def test_solutions_on_disk_are_stamped(ch):
    nb = _solution(ch)
    stale = [i for i, (a, b) in enumerate(zip(nb.cells, nbgrader_cells.stamp(nb).cells)) if a != b]
    assert not stale, f"{ch.solution} cells {stale} lack their nbgrader metadata: `python -m labkit.course labs`"


def test_points_set_by_the_author_are_kept_and_default_to_one():
    nb = nbgrader_cells.stamp(_solution(CHAPTERS[0]))
    cell = next(c for c in nb.cells if labs.check_name(c))
    cell.metadata["nbgrader"]["points"] = 3
    again = nbgrader_cells.stamp(nb)
    assert nbgrader_cells.points(again)[labs.check_name(cell)] == 3
    assert set(nbgrader_cells.points(again).values()) == {1, 3}
    cell.metadata["nbgrader"]["points"] = -1
    with pytest.raises(ValueError, match="points must be a number >= 0"):
        nbgrader_cells.stamp(nb)


def test_a_check_cell_with_solution_markers_is_refused():
    nb = nbgrader_cells.stamp(_solution(CHAPTERS[0]))
    check = next(c for c in nb.cells if labs.check_name(c))
    check.source += "\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION"
    with pytest.raises(labs.LabMarkerError, match="cannot hold solution markers"):
        nbgrader_cells.stamp(nb)


def test_two_checks_of_one_name_are_refused():
    nb = nbgrader_cells.stamp(_solution(CHAPTERS[0]))
    check = next(c for c in nb.cells if labs.check_name(c))
    nb.cells.append(nbformat.from_dict({**check, "id": "another"}))
    with pytest.raises(labs.LabMarkerError, match="share the nbgrader grade id"):
        nbgrader_cells.stamp(nb)


def _answered(release: nbformat.NotebookNode, source: nbformat.NotebookNode, mutant=None) -> nbformat.NotebookNode:
    """A submission as a student makes it: the released notebook, each answer cell filled in (one by a mutant)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.from_dict(release)
    replaced = 0
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
            if mutant and re.search(rf"^def {re.escape(mutant.function)}\(", cell.source, re.M):
                cell.source, replaced = mutant.source, replaced + 1
    assert mutant is None or replaced == 1, f"no single answer cell defines {mutant.function}"
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """An nbgrader course made from the stamped solutions, every lab generated by nbgrader."""
    root = tmp_path_factory.mktemp("course")
    _nbgrader(root, "-m", "labkit.course", "nbgrader", str(root))  # source/ and nbgrader_config.py
    ids = json.dumps([c.id for c in CHAPTERS])
    # Every lab in one process through nbgrader's Python API (one CLI start costs seconds); the CLI runs below.
    _nbgrader(root, "-c", "from nbgrader.apps import NbGraderAPI\nfrom nbgrader.apps.nbgraderapp import NbGraderApp\n"
              "app = NbGraderApp(); app.load_config_file(); api = NbGraderAPI(config=app.config)\n"
              f"for a in {ids}:\n"
              "    r = api.generate_assignment(a, force=True)\n"
              "    assert r['success'], r['log'] + r.get('error', '')\n")
    return root


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.id for c in CHAPTERS])
def test_nbgrader_releases_every_lab_without_its_solution(course, ch):
    name = Path(ch.lab).name
    release = nbformat.read(course / "release" / ch.id / name, as_version=4)
    source = nbformat.read(course / "source" / ch.id / name, as_version=4)
    text = "\n".join(c.source for c in release.cells)
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text
    assert not any("solution-only" in c.metadata.get("tags", []) for c in release.cells)
    assert not re.search(r"this is the solution", text, re.I)
    released = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells}
    for cell in source.cells:  # an answer cell keeps only what lies outside the markers, plus nbgrader's stub
        if cell.metadata["nbgrader"]["solution"]:
            outside = [ln for ln in labs.stub_source(cell.source).splitlines() if "NotImplementedError(" not in ln]
            allowed = {ln.strip() for ln in outside} | {"# YOUR CODE HERE", "raise NotImplementedError()"}
            extra = [ln for ln in released[cell.metadata["nbgrader"]["grade_id"]].splitlines()
                     if ln.strip() not in allowed]
            assert not extra, f"{ch.id}: solution code in the release: {extra}"
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
              for c in release.cells if c.metadata.get("nbgrader", {}).get("grade")}
    checks = nbgrader_cells.points(source)
    assert graded == {nbgrader_cells.check_grade_id(k): v for k, v in checks.items()}
    assert all(c.metadata.get("editable") is False for c in release.cells
               if c.metadata["nbgrader"]["locked"]), "nbgrader locks the read-only cells"


def test_nbgrader_autograde_gives_full_marks_zero_and_less_than_full(course):
    ch = next(c for c in CHAPTERS if c.id == GRADED)
    name = Path(ch.lab).name
    release = nbformat.read(course / "release" / ch.id / name, as_version=4)
    source = nbformat.read(course / "source" / ch.id / name, as_version=4)
    mutants = mutants_for(ch.solution)
    assert mutants, f"tests/mutants/ has no wrong implementation for {ch.solution}"
    course_lab = labs.make_lab(nbgrader_cells.stamp(_solution(ch)))  # what labs/ hands out
    submissions = {"solution": _answered(release, source), "blank": release, "course-lab": course_lab,
                   "course-lab-solved": _answered(course_lab, source)}
    submissions |= {f"mutant{i}": _answered(release, source, m) for i, m in enumerate(mutants)}
    for student, nb in submissions.items():
        path = course / "submitted" / student / ch.id / name
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    _nbgrader(course, "-m", "nbgrader", "generate_assignment", ch.id, "--force")  # the instructor's commands
    _nbgrader(course, "-m", "nbgrader", "autograde", ch.id, "--force")

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s.student_id: (s.score, s.max_score) for s in gb.assignment_submissions(ch.id)}
    full = sum(nbgrader_cells.points(source).values())
    assert set(scores) == set(submissions)
    assert scores["solution"] == (full, full) and scores["course-lab-solved"] == (full, full)
    assert scores["blank"] == (0, full) and scores["course-lab"] == (0, full)
    lenient = {mutants[int(s[6:])].why: sc for s, sc in scores.items() if s.startswith("mutant") and sc[0] >= full}
    assert not lenient, f"wrong implementations with full marks: {lenient}"


def test_the_lab_generator_stamps_solutions_and_changes_nothing_else(tmp_path):
    """On copies of two solutions: `write_labs` stamps the ones it is told to (all by default), once."""
    import dataclasses
    import shutil

    pairs = CHAPTERS[:2]
    for ch in pairs:
        (tmp_path / ch.solution).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(M.root / ch.solution, tmp_path / ch.solution)
        nb = _solution(ch)
        for cell in nb.cells:
            cell.metadata.pop("nbgrader", None)
        nbformat.write(nb, tmp_path / ch.solution)
    copy = dataclasses.replace(M, parts=(dataclasses.replace(M.parts[0], chapters=tuple(pairs)),), root=tmp_path)
    before = {ch.solution: nbformat.read(tmp_path / ch.solution, as_version=4) for ch in pairs}

    assert labs.stamp_solutions(copy, only=[str(tmp_path / pairs[1].solution)]) == [tmp_path / pairs[1].solution]
    changed = labs.write_labs(copy)
    assert changed == [tmp_path / pairs[0].solution] + [tmp_path / ch.lab for ch in pairs]
    assert labs.write_labs(copy) == []
    for ch in pairs:
        after = nbformat.read(tmp_path / ch.solution, as_version=4)
        for old, new in zip(before[ch.solution].cells, after.cells, strict=True):
            same = [k for k in {*old, *new} if k != "metadata"]
            assert {k: new.get(k) for k in same} == {k: old.get(k) for k in same}
            assert {k: v for k, v in new.metadata.items() if k != "nbgrader"} == old.metadata
        lab = nbformat.read(tmp_path / ch.lab, as_version=4)
        assert all("nbgrader" in c.metadata for c in lab.cells)
