"""Read book.yml, the course's one manifest: parts -> chapters -> notebooks, lab, solution."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "book.yml"
NOTEBOOK_DIRS = ("chapters", "labs", "solutions")


class ManifestError(ValueError):
    """book.yml is malformed or disagrees with the files on disk."""


@dataclass(frozen=True)
class Chapter:
    id: str
    title: str
    notebooks: tuple[str, ...]
    lab: str | None = None
    solution: str | None = None
    labkit: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    title: str
    chapters: tuple[Chapter, ...]


@dataclass(frozen=True)
class Manifest:
    title: str
    author: str
    intro: str
    parts: tuple[Part, ...]
    appendix: tuple[str, ...] = ()
    publish_solutions: bool = False
    # notebook -> {why: the reason the portability run (make portability) skips it, verified: its content digest
    # when it last passed that run}; every other verified notebook is in the run
    portability_skip: dict[str, dict] = field(default_factory=dict)
    root: Path = field(default=ROOT, compare=False)

    @property
    def chapters(self) -> list[Chapter]:
        return [c for p in self.parts for c in p.chapters]

    def lab_pairs(self) -> list[tuple[str, str]]:
        """(solution, lab) paths, in course order."""
        return [(c.solution, c.lab) for c in self.chapters if c.solution and c.lab]

    def verified_notebooks(self) -> list[str]:
        """Notebooks committed with outputs and re-executed by nbval: lessons and solutions."""
        out: list[str] = []
        for c in self.chapters:
            out += list(c.notebooks)
            if c.solution:
                out.append(c.solution)
        return out

    def portable_notebooks(self) -> list[str]:
        """The verified notebooks the portability run re-executes under other CPU kernels (labkit/course/cpu.py)."""
        return [nb for nb in self.verified_notebooks() if nb not in self.portability_skip]

    def all_files(self) -> list[str]:
        files = [self.intro, *self.appendix]
        for c in self.chapters:
            files += [*c.notebooks, *(p for p in (c.lab, c.solution) if p)]
        return files

    def problems(self) -> list[str]:
        """Every disagreement between book.yml and the disk; empty when they agree."""
        listed = self.all_files()
        out = [f"book.yml names {f}, which does not exist" for f in listed if not (self.root / f).is_file()]
        dupes = sorted({f for f in listed if listed.count(f) > 1})
        out += [f"book.yml names {f} more than once" for f in dupes]
        for d in NOTEBOOK_DIRS:
            for nb in sorted((self.root / d).rglob("*.ipynb")):
                rel = nb.relative_to(self.root).as_posix()
                if ".ipynb_checkpoints" not in rel and rel not in listed:
                    out.append(f"{rel} is on disk but not in book.yml")
        verified = self.verified_notebooks()
        for nb, entry in self.portability_skip.items():
            if nb not in verified:
                out.append(f"portability_skip names {nb}, which is not a lesson or solution in book.yml")
                continue
            if not isinstance(entry, dict) or not str(entry.get("why") or "").strip():
                out.append(f"portability_skip: {nb} needs a reason (why:)")
            elif entry.get("verified") != content_digest(self.root / nb):
                out.append(f"portability_skip: {nb} changed since it passed the portability run: run `make "
                           f"portability NOTEBOOKS={nb}`, then set its verified: to "
                           f"`python -m labkit.course digest {nb}`")
        ids = [c.id for c in self.chapters]
        out += [f"chapter id {i} is used twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
        return out


SKIPPED_MIME = ("image/png", "image/jpeg")


def content_digest(path: Path, sanitize: Path = ROOT / "tests" / "sanitize.cfg") -> str:
    """A digest of what nbval runs and compares in a notebook: its code cells and their outputs, normalised as
    nbval does (streams joined, tests/sanitize.cfg applied), less what nbval does not compare (outputs of
    NBVAL_IGNORE_OUTPUT cells, widget views, PNG/JPEG images). Prose and metadata (with its timings) do not count."""
    import hashlib
    import json
    import re

    lines = sanitize.read_text().splitlines() if sanitize.is_file() else []
    rules = [(re.compile(a.split(":", 1)[1].strip()), b.split(":", 1)[1].strip())
             for a, b in zip(lines, lines[1:]) if a.startswith("regex:") and b.startswith("replace:")]

    def clean(text: str) -> str:
        for pattern, replacement in rules:
            text = pattern.sub(replacement, text)
        return text

    def compared(cell: dict) -> list:
        if "".join(cell["source"]).lstrip().startswith("# NBVAL_IGNORE_OUTPUT"):
            return []
        streams: dict[str, str] = {}
        out: list = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                streams[o["name"]] = streams.get(o["name"], "") + "".join(o["text"])
            elif "data" in o:
                out.append({k: clean(v if isinstance(v, str) else "".join(v)) if isinstance(v, (str, list)) else v
                            for k, v in o["data"].items() if "widget" not in k and k not in SKIPPED_MIME})
            else:
                out.append({k: v for k, v in o.items() if k != "execution_count"})
        return [{k: clean(v) for k, v in sorted(streams.items())}, out]

    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    kept = [("".join(c["source"]), compared(c)) for c in cells if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise ManifestError(f"{where}: missing required key {key!r}")
    return d[key]


def load(path: Path | str = MANIFEST) -> Manifest:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    parts = []
    for i, p in enumerate(_require(raw, "parts", str(path))):
        chapters = []
        for j, c in enumerate(_require(p, "chapters", f"parts[{i}]")):
            where = f"parts[{i}].chapters[{j}]"
            notebooks = _require(c, "notebooks", where)
            if not notebooks:
                raise ManifestError(f"{where}: a chapter needs at least one lesson notebook")
            if bool(c.get("lab")) != bool(c.get("solution")):
                raise ManifestError(f"{where}: lab and solution come as a pair")
            chapters.append(Chapter(
                id=str(_require(c, "id", where)), title=_require(c, "title", where),
                notebooks=tuple(notebooks), lab=c.get("lab"), solution=c.get("solution"),
                labkit=tuple(c.get("labkit", ())),
            ))
        parts.append(Part(title=_require(p, "title", f"parts[{i}]"), chapters=tuple(chapters)))
    return Manifest(
        title=_require(raw, "title", str(path)), author=raw.get("author", ""),
        intro=_require(raw, "intro", str(path)), parts=tuple(parts),
        appendix=tuple(raw.get("appendix", ())), publish_solutions=bool(raw.get("publish_solutions", False)),
        portability_skip=dict(raw.get("portability_skip") or {}), root=path.resolve().parent,
    )
