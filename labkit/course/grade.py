"""Grade submitted labs without nbgrader: `python -m labkit.course grade SUBMISSIONS/`.

SUBMISSIONS/ holds one folder per student with their lab notebooks in it, named as in labs/
(`alice/01-ngrams.ipynb`; nbgrader's `alice/01-ngrams/01-ngrams.ipynb` works too). Each notebook runs in its
own process, with a time limit, from top to bottom the way "Restart & Run All" would, errors allowed. What runs
is the student's notebook with every graded check cell and every other read-only cell put back to the course's
own version (as nbgrader's autograder does), so editing a check cannot pass it. A check scores its points
(nbgrader metadata of the solution's check cell, 1 by default) when its cell runs without an error.

A submission that never finishes, raises from its first cell, kills its process or deleted its check cells is
reported as such, and the run goes on with the next one. The result: a table per lab (a row per student, a
column per check) on stdout and a CSV with one row per student, lab and check.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import labs, manifest as manifest_mod, nbgrader_cells

DEFAULT_TIMEOUT_S = 120  # shared/DESIGN.md: a lab's graded run takes at most 60 s on 2 cores; twice that


@dataclass
class CheckResult:
    name: str
    max_points: float
    status: str  # passed | failed | deleted | not run
    detail: str = ""

    @property
    def points(self) -> float:
        return self.max_points if self.status == "passed" else 0


@dataclass
class Graded:
    student: str
    lab: str  # the lab's file stem, e.g. 01-ngrams; "" when the notebook is no lab of the course
    path: Path
    status: str  # graded | timed out | died | unreadable | unknown lab
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_score(self) -> float:
        return sum(c.max_points for c in self.checks)


@dataclass(frozen=True)
class Reference:
    """A lab as the course generates it: the cells a submission is graded against."""
    stem: str
    nb: nbformat.NotebookNode
    points: dict[str, float]  # check name -> points, in the lab's order


def references(m: manifest_mod.Manifest | None = None) -> dict[str, Reference]:
    """Lab file stem -> its reference, built from the solution notebooks (stamped as the lab generator does)."""
    m = m or manifest_mod.load()
    out = {}
    for solution, lab in m.lab_pairs():
        stamped = nbgrader_cells.stamp(nbformat.read(m.root / solution, as_version=4), where=solution)
        nb = labs.make_lab(stamped, where=solution)
        out[Path(lab).stem] = Reference(Path(lab).stem, nb, nbgrader_cells.points(nb))
    return out


def _keys(cell) -> set[str]:
    """What identifies a cell across copies of a notebook: its nbgrader grade id and its cell id."""
    return {k for k in (cell.get("metadata", {}).get("nbgrader", {}).get("grade_id"), cell.get("id")) if k}


def plan(submission: nbformat.NotebookNode, ref: Reference) -> tuple[list[dict], list[str], list[str]]:
    """The cells to run for one submission: [{source, check, index}], the checks it lacks, and notes on what was
    put back. A submission cell counts as a reference cell when it has the same grade id or cell id, or (for
    checks) the same `# CHECK:` line; check cells and the other read-only cells run as the reference has them."""
    read_only, checks_by_line = {}, {}
    for index, cell in enumerate(ref.nb.cells):
        name = labs.check_name(cell)
        if name is not None or (cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("locked")):
            for key in _keys(cell):
                read_only[key] = (index, name, cell.source)
        if name is not None:
            checks_by_line[f"# CHECK: {name}"] = (index, name, cell.source)
    cells, seen, edited = [], set(), []
    for at, cell in enumerate(submission.cells):
        match = next((read_only[k] for k in _keys(cell) if k in read_only), None)
        first = cell.get("source", "").splitlines()[0].strip() if cell.get("source") else ""
        if match is None and first in checks_by_line:
            match = checks_by_line[first]
        if match is not None and match[0] not in seen:  # a copy of a reference cell runs as the student wrote it
            index, name, source = match
            seen.add(index)
            if cell.get("source", "").strip() != source.strip() or cell.cell_type != "code":
                edited.append(f"check {name}" if name else "a read-only cell")
            cells.append({"source": source, "check": name, "index": at})
        elif cell.cell_type == "code":
            cells.append({"source": cell.source, "check": None, "index": at})
    present = {c["check"] for c in cells if c["check"]}
    missing = [name for name in ref.points if name not in present]
    notes = [f"edited (the original ran): {', '.join(sorted(set(edited)))}"] if edited else []
    return cells, missing, notes


def _identify(nb: nbformat.NotebookNode, path: Path, refs: dict[str, Reference]) -> str | None:
    """Which lab a submission is: its file name, or else the lab it shares the most cell ids with."""
    for stem in (path.stem, path.parent.name):
        if stem in refs:
            return stem
    ids = {k for c in nb.cells for k in _keys(c)}
    overlap = {stem: len(ids & {k for c in r.nb.cells for k in _keys(c)}) for stem, r in refs.items()}
    best = max(overlap, key=overlap.get, default=None)
    return best if best and overlap[best] > 0 else None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def grade_one(student: str, path: Path, refs: dict[str, Reference], timeout: float = DEFAULT_TIMEOUT_S) -> Graded:
    """Run one submitted notebook in its own process (killed after `timeout` seconds) and score its checks."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook: report, don't stop
        return Graded(student, "", path, "unreadable", notes=[f"{type(e).__name__}: {str(e)[:200]}"])
    stem = _identify(nb, path, refs)
    if stem is None:
        return Graded(student, "", path, "unknown lab", notes=[f"{path.name} is none of {sorted(refs)}"])
    ref = refs[stem]
    cells, missing, notes = plan(nb, ref)
    out = Graded(student, stem, path, "graded", notes=notes)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        plan_file, results_file = Path(tmp) / "plan.json", Path(tmp) / "results.jsonl"
        plan_file.write_text(json.dumps(cells), encoding="utf-8")
        (Path(tmp) / "work").mkdir()  # the notebook's working folder: files it writes go away with it
        start = time.perf_counter()
        # A new session, so that a timeout kills the whole process group (and whatever the lab started).
        proc = subprocess.Popen([sys.executable, "-m", "labkit.course.grade", str(plan_file), str(results_file)],
                                cwd=Path(tmp) / "work", env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        out.seconds = time.perf_counter() - start
        records = [json.loads(line) for line in results_file.read_text(encoding="utf-8").splitlines()
                   if line.strip()] if results_file.is_file() else []
    errors = {r["cell"]: r["error"] for r in records if "error" in r}
    started = [r["cell"] for r in records if "start" in r]
    unfinished = next((i for i in started if i not in errors), None)
    if code is None:
        out.status = "timed out"
        out.notes.insert(0, f"stopped after {timeout:g} s" + (f", in cell {cells[unfinished]['index']}" if
                                                              unfinished is not None else ""))
    elif code != 0 or len(errors) < len(cells):  # os._exit(0) mid-notebook leaves cells unrun
        out.status = "died"
        out.notes.insert(0, f"the process exited with code {code}" + (f" in cell {cells[unfinished]['index']}"
                                                                      if unfinished is not None else ""))
    first_error = next(((i, e) for i, e in sorted(errors.items()) if e and cells[i]["check"] is None), None)
    if first_error:
        more = sum(1 for i, e in errors.items() if e and cells[i]["check"] is None) - 1
        out.notes.append(f"cell {cells[first_error[0]]['index']} raised {first_error[1][:120]}"
                         + (f" (+{more} more cells raised)" if more else ""))
    by_name = {c["check"]: i for i, c in enumerate(cells) if c["check"]}
    for name, pts in ref.points.items():
        if name in missing:
            out.checks.append(CheckResult(name, pts, "deleted", "the check cell is not in the submission"))
        elif by_name[name] not in errors:
            out.checks.append(CheckResult(name, pts, "not run", "the run stopped before this check"))
        elif errors[by_name[name]]:
            out.checks.append(CheckResult(name, pts, "failed", errors[by_name[name]]))
        else:
            out.checks.append(CheckResult(name, pts, "passed"))
    if missing:
        out.notes.append(f"check cells deleted: {', '.join(missing)}")
    return out


def find_submissions(root: Path) -> list[tuple[str, Path]]:
    """(student, notebook) for every notebook under root; the student is the first folder below root."""
    found = []
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        if ".ipynb_checkpoints" in rel.parts:
            continue
        found.append((rel.parts[0] if len(rel.parts) > 1 else "(no folder)", path))
    return found


def grade(root: Path | str, timeout: float = DEFAULT_TIMEOUT_S, jobs: int = 1,
          refs: dict[str, Reference] | None = None) -> list[Graded]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    subs = find_submissions(root)
    if not subs:
        raise ValueError(f"no notebooks under {root}: expected STUDENT/LAB.ipynb, e.g. alice/01-ngrams.ipynb")
    refs = refs or references()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda s: grade_one(s[0], s[1], refs, timeout), subs))


SYMBOL = {"passed": "ok", "failed": "FAIL", "deleted": "deleted", "not run": "-"}


def table(results: list[Graded]) -> str:
    """One table per lab: a row per student, a column per check, the score and what went wrong."""
    blocks = []
    for stem in sorted({r.lab for r in results}):
        rows = [r for r in results if r.lab == stem]
        names = [c.name for c in rows[0].checks] if stem else []
        head = ["student", *names, "score", "status", "notes"]
        body = [[r.student, *(SYMBOL[c.status] for c in r.checks), f"{r.score:g}/{r.max_score:g}", r.status,
                 "; ".join(r.notes) if stem else f"{r.path.name}: {'; '.join(r.notes)}"] for r in rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        widths[-1] = 0  # notes run to the end of the line
        lines = [f"== {stem or 'not graded'} =="] + ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                                                     for row in [head, *body]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_csv(results: list[Graded], path: Path | str) -> Path:
    """One row per student, lab and check (a row with an empty check for a notebook that was not graded)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "lab", "file", "submission", "check", "status", "points", "max_points", "detail",
                    "notes", "seconds"])
        for r in results:
            common = [r.student, r.lab, str(r.path), r.status]
            tail = ["; ".join(r.notes), f"{r.seconds:.1f}"]
            for c in r.checks or [None]:
                w.writerow(common + ([c.name, c.status, f"{c.points:g}", f"{c.max_points:g}", c.detail] if c else
                                     ["", "", "0", "0", ""]) + tail)
    return path


def _run_plan(plan_file: str, results_file: str) -> None:
    """The child process: run the planned cells in one IPython shell, recording each cell's start and error.
    This keeps honest mistakes apart; it is no sandbox against code written to forge its own grade."""
    from IPython.core.interactiveshell import InteractiveShell

    cells = json.loads(Path(plan_file).read_text(encoding="utf-8"))
    shell = InteractiveShell.instance()
    with open(results_file, "a", encoding="utf-8") as log:
        def record(**entry):
            log.write(json.dumps(entry) + "\n")
            log.flush()  # the parent reads this file even when it had to kill us mid-cell

        for i, cell in enumerate(cells):
            record(cell=i, start=True)
            result = shell.run_cell(cell["source"], store_history=True)
            err = result.error_before_exec or result.error_in_exec
            message = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300] if err else None
            record(cell=i, error=message)


if __name__ == "__main__":  # python -m labkit.course.grade PLAN RESULTS (the per-submission child)
    _run_plan(*sys.argv[1:3])
