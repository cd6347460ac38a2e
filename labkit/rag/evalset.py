"""The course's retrieval evaluation set: questions with gold sections and short gold answers.

A retriever is only as good as the questions it is measured on. `data/rag-questions/questions.jsonl` holds
questions written by hand for this course about the corpus of `labkit.rag.documents` (CPython's pydoc topics
and the lessons of chapters 1-11); its README says how they were made. Each question carries

- `gold`: the ids of the sections (`<doc_id>@<n>`) that answer it — the relevance judgements ("qrels") that
  Recall@k, MRR and nDCG are computed against (`labkit.rag.metrics`). Some pydoc topics repeat a section
  verbatim (the "for" statement is both `pydoc/for@0` and `pydoc/compound@3`), so every copy is gold: a
  retriever must not be marked wrong for finding the other copy.
- `answers`: short answers (1-6 words) that occur, after `metrics.normalize_answer`, in a gold section's text,
  for exact match and token F1 of generated answers.
- `split`: "dev" (look at it, tune on it) or "test" (held out: report on it, never tune on it). The split is a
  seeded shuffle within each source, so both halves hold the same mix of pydoc and course questions
  (`stratified_split` below reproduces it from the ids).
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "rag-questions" / "questions.jsonl"
SPLITS: tuple[str, ...] = ("dev", "test")
SOURCES: tuple[str, ...] = ("pydoc", "course")
SPLIT_SEED = 12  # the chapter number: any fixed seed would do, what matters is that it never changes


@dataclass(frozen=True)
class Question:
    """One evaluation question (see the module docstring for what each field means)."""
    id: str
    question: str
    answers: tuple[str, ...]
    gold: tuple[str, ...]
    split: str
    source: str


def _parse(line: str, where: str) -> Question:
    row = json.loads(line)
    fields = ("id", "question", "answers", "gold", "split", "source")
    if not isinstance(row, dict) or sorted(row) != sorted(fields):
        raise ValueError(f"{where}: expected an object with exactly the keys {fields}, got {row!r:.120}")
    if row["split"] not in SPLITS or row["source"] not in SOURCES:
        raise ValueError(f"{where}: split must be one of {SPLITS} and source one of {SOURCES}, "
                         f"got {row['split']!r} and {row['source']!r}")
    if not row["answers"] or not row["gold"]:
        raise ValueError(f"{where}: a question needs at least one answer and one gold section")
    return Question(id=row["id"], question=row["question"], answers=tuple(row["answers"]),
                    gold=tuple(row["gold"]), split=row["split"], source=row["source"])


def load_questions(split: str | None = None, path: Path | str = QUESTIONS) -> list[Question]:
    """The questions of one split ("dev" or "test"), or all of them (None), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None (all questions), got {split!r}")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    questions = [_parse(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    return [q for q in questions if split is None or q.split == split]


def qrels(questions: Sequence[Question]) -> dict[str, dict[str, int]]:
    """Relevance judgements in the form `labkit.rag.metrics` (and pytrec_eval) read: {question id: {section
    id: 1}}, every gold section equally relevant (binary relevance)."""
    if isinstance(questions, Question) or not all(isinstance(q, Question) for q in questions):
        raise TypeError("qrels expects a sequence of Question (from load_questions), "
                        f"got {type(questions).__name__}")
    return {q.id: {g: 1 for g in q.gold} for q in questions}


def stratified_split(ids_and_sources: Sequence[tuple[str, str]], seed: int = SPLIT_SEED) -> dict[str, str]:
    """{id: "dev" | "test"}: within each source, in order of first appearance, the ids (in the order given) are
    shuffled with one `random.Random(seed)` and the first half (rounded down) goes to dev, the rest to test.
    Stratifying keeps each split's share of course questions equal to the whole set's, so a score on the held-out
    split is not moved by a different mix of easy and hard sources."""
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for qid, source in ids_and_sources:
        by_source.setdefault(source, []).append(qid)
    split = {}
    for ids in by_source.values():
        ids = list(ids)
        rng.shuffle(ids)
        for i, qid in enumerate(ids):
            split[qid] = "dev" if i < len(ids) // 2 else "test"
    return split
