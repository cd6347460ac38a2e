"""nbgrader cell metadata for the solution notebooks, derived from the markers the lab generator reads.

A solution notebook is also an nbgrader *source* notebook: nbgrader reads the same `### BEGIN SOLUTION` /
`### END SOLUTION` markers, and needs to know, cell by cell, what each cell is. `stamp` writes that into
`cell.metadata["nbgrader"]` (schema version 3, the one nbgrader 0.9 validates) from what the notebook already says:
- a code cell with solution markers is a **solution** cell (nbgrader replaces the block by a stub);
- a code cell tagged `check` is an **autograded** cell worth `points` (1 unless the cell's nbgrader metadata
  already gives another number): it passes when it runs without an error;
- every other cell, prose and set-up code alike, is **locked**: read-only in the student's copy, and
  `nbgrader autograde` runs the original of it, whatever a submission did to it.
Grade ids come from names that survive edits: `check-<check name>` and `cell-<cell id>`.

`write_course(dir)` lays the solutions out as an nbgrader course (source/<chapter id>/<lab>.ipynb and an
nbgrader_config.py), so an instructor runs `nbgrader generate_assignment` and `nbgrader autograde` unchanged.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata schema
DEFAULT_POINTS = 1
GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # nbgrader's schema allows nothing else in a grade id
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")


def check_grade_id(name: str) -> str:
    """The grade id of the check cell named `name` (`# CHECK: name`)."""
    return "check-" + _NOT_ALLOWED.sub("_", name)


def _cell_grade_id(cell, index: int) -> str:
    cell_id = cell.get("id")
    return "cell-" + (_NOT_ALLOWED.sub("_", cell_id) if cell_id else str(index))


def cell_metadata(cell, index: int, check: str | None) -> dict:
    """The nbgrader metadata of one solution-notebook cell (`check`: its check name, or None)."""
    old = cell.metadata.get("nbgrader", {})
    if check is not None:
        points = old.get("points", DEFAULT_POINTS)
        if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
            raise ValueError(f"cell {index}: nbgrader points must be a number >= 0, found {points!r}")
        return {"grade": True, "grade_id": check_grade_id(check), "locked": True, "points": points,
                "schema_version": SCHEMA_VERSION, "solution": False, "task": False}
    solution = cell.cell_type == "code" and "BEGIN SOLUTION" in cell.source
    return {"grade": False, "grade_id": _cell_grade_id(cell, index), "locked": not solution,
            "schema_version": SCHEMA_VERSION, "solution": solution, "task": False}


def stamp(nb: nbformat.NotebookNode, where: str = "solution") -> nbformat.NotebookNode:
    """A copy of a solution notebook with nbgrader metadata on every cell (idempotent)."""
    from .labs import LabMarkerError, check_name  # labs imports this module; import here to avoid a cycle

    out = copy.deepcopy(nb)
    seen: dict[str, int] = {}
    for i, cell in enumerate(out.cells):
        name = check_name(cell)
        if name is not None and "BEGIN SOLUTION" in cell.source:
            raise LabMarkerError(f"{where}, cell {i}: a check cell cannot hold solution markers")
        meta = cell_metadata(cell, i, name)
        if meta["grade_id"] in seen:
            raise LabMarkerError(f"{where}: cells {seen[meta['grade_id']]} and {i} would share the nbgrader "
                                 f"grade id {meta['grade_id']!r} (two checks of one name?)")
        seen[meta["grade_id"]] = i
        cell.metadata["nbgrader"] = meta
    return out


def points(nb: nbformat.NotebookNode) -> dict[str, float]:
    """Check name -> points, for a stamped notebook (unstamped check cells are worth the default)."""
    from .labs import check_name

    out = {}
    for cell in nb.cells:
        name = check_name(cell)
        if name is not None:
            out[name] = cell.metadata.get("nbgrader", {}).get("points", DEFAULT_POINTS)
    return out


NBGRADER_CONFIG = '''\
# nbgrader configuration for the course's labs (written by `python -m labkit.course nbgrader`).
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "llm-course"
# The solution notebooks' cells tagged `solution-only` (e.g. "this is the solution notebook") are not for
# students: nbconvert's TagRemovePreprocessor drops them before nbgrader's own steps.
from nbconvert.preprocessors import TagRemovePreprocessor  # noqa: E402
from nbgrader.converters import GenerateAssignment  # noqa: E402

c.TagRemovePreprocessor.enabled = True
c.TagRemovePreprocessor.remove_cell_tags = ["solution-only"]
c.GenerateAssignment.preprocessors = [TagRemovePreprocessor,
                                     *GenerateAssignment.class_traits()["preprocessors"].default()]
# Some checks load SmolLM2 or run Triton's interpreter: give a cell more than nbgrader's default 30 s.
c.Execute.timeout = 300
'''


def write_course(directory: Path | str, ids: list[str] | None = None) -> list[Path]:
    """Write an nbgrader course folder: nbgrader_config.py (unless one exists) and, for each chapter (`ids`:
    all by default), its stamped solution as source/<chapter id>/<lab file name>. Returns the files written."""
    from . import manifest as manifest_mod

    m = manifest_mod.load()
    root = Path(directory)
    written = []
    config = root / "nbgrader_config.py"
    if not config.exists():
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(NBGRADER_CONFIG, encoding="utf-8")
        written.append(config)
    chapters = {ch.id: ch for ch in m.chapters if ch.solution and ch.lab}
    unknown = sorted(set(ids or []) - set(chapters))
    if unknown:
        raise ValueError(f"no lab for {unknown}; chapters with labs: {sorted(chapters)}")
    for cid in ids or list(chapters):
        ch = chapters[cid]
        nb = stamp(nbformat.read(m.root / ch.solution, as_version=4), where=ch.solution)
        out = root / "source" / cid / Path(ch.lab).name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        written.append(out)
    return written
