"""The course's agent task set: 30 hand-written tasks an agent is scored on, and the rule that scores an answer.

Three kinds, ten each (`data/agent-tasks/README.md` says how they were written):

- `arithmetic`: word problems needing two or three operations on 2-4-digit numbers, which chapter 4's model gets
  wrong on its own and a calculator gets right;
- `lookup`: one fact stated in one section of chapter 12's corpus (`labkit.rag.documents.load_documents()`),
  for `search_docs` to find;
- `multihop`: two or three facts of the corpus, then arithmetic on them.

Every task carries gold steps, each tagged as in Jin et al. 2024 (*Disentangling Memory and Reasoning Ability in
Large Language Models*, arXiv:2411.13504): a `memory` step recalls a fact (its `value` occurs in the corpus
section `section`), a `reason` step infers (its `value` is what `expression` evaluates to, by the course's safe
calculator). The last step's value is the answer. `labkit.agents.step_tags` judges a model's tagged steps
against them.

`is_correct` scores a free-text answer: for a number, the *last* number the answer states must equal the gold
exactly (a model that writes "12 + 7 = 19" ends with its result); for text, the gold must occur as whole words.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from labkit.rag.metrics import normalize_answer

KINDS: tuple[str, ...] = ("arithmetic", "lookup", "multihop")
TAGS: tuple[str, ...] = ("memory", "reason")
ANSWER_KINDS: tuple[str, ...] = ("number", "text")
TASKS_PATH = Path(__file__).resolve().parents[2] / "data" / "agent-tasks" / "tasks.jsonl"


@dataclass(frozen=True)
class GoldStep:
    """One step of a task's gold solution: `memory` (a recalled fact, found in corpus section `section`) or
    `reason` (an inference; `expression`, when given, is arithmetic the calculator evaluates to `value`)."""
    tag: str
    text: str
    value: str
    section: str | None = None
    expression: str | None = None


@dataclass(frozen=True)
class Task:
    """A task: a question, its gold answer (`answer_kind` "number" or "text") and its gold steps."""
    id: str
    kind: str
    question: str
    answer: str
    answer_kind: str
    steps: tuple[GoldStep, ...]


def _step(raw: dict, where: str) -> GoldStep:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a step must be a JSON object, got {type(raw).__name__}")
    step = GoldStep(**raw)
    if step.tag not in TAGS:
        raise ValueError(f"{where}: tag must be one of {TAGS}, got {step.tag!r}")
    if step.tag == "memory" and not step.section:
        raise ValueError(f"{where}: a memory step needs the section its fact is in")
    return step


def _task(raw: dict, where: str) -> Task:
    fields = {"id", "kind", "question", "answer", "answer_kind", "steps"}
    if not isinstance(raw, dict) or set(raw) != fields:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{where}: a task needs exactly the fields {sorted(fields)}, got {got}")
    if raw["kind"] not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {raw['kind']!r}")
    if raw["answer_kind"] not in ANSWER_KINDS:
        raise ValueError(f"{where}: answer_kind must be one of {ANSWER_KINDS}, got {raw['answer_kind']!r}")
    if not raw["steps"]:
        raise ValueError(f"{where}: a task needs at least one gold step")
    steps = tuple(_step(s, f"{where}, step {i}") for i, s in enumerate(raw["steps"]))
    return Task(id=raw["id"], kind=raw["kind"], question=raw["question"], answer=raw["answer"],
                answer_kind=raw["answer_kind"], steps=steps)


def load_tasks(kind: str | None = None, path: Path | None = None) -> list[Task]:
    """The tasks of `path` (default: the course's `data/agent-tasks/tasks.jsonl`) in file order, only those of
    `kind` if it is given (one of KINDS). ValueError on an unknown kind or a malformed line."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None or one of {KINDS}, got {kind!r}")
    path = TASKS_PATH if path is None else Path(path)
    tasks = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path.name}:{n}: not JSON ({e.msg})") from None
            tasks.append(_task(raw, f"{path.name}:{n}"))
    return [t for t in tasks if kind is None or t.kind == kind]


# ---------------------------------------------------------------- scoring an answer

# A number as people write it: digits grouped by commas or spaces in threes ("28,311,552", "28 311 552") or not,
# with an optional decimal part. A minus sign in front counts only where it cannot be a subtraction: "9 - 4" and
# "9-4" end with 4; "-4", "is -4" and "= - 4" end with minus four.
_NUMBER = r"\d{1,3}(?:[, ]\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?"
_PLAIN = re.compile(rf"(?<![\w.])(?:{_NUMBER})")
_FRACTION = re.compile(rf"(?<![\w.])(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?")
_MINUS = "-\u2212"
_SIGN = re.compile(rf"(?:(?:^|[^\w).])[{_MINUS}]|(?:^|[=(:\[,])\s*[{_MINUS}]\s)\Z")


def _read(number: str) -> Fraction:
    """The exact value of one matched number ("1,234.50" -> 2469/2; "3/4" -> 3/4)."""
    parts = [re.sub(r"[,\s]", "", p) for p in number.split("/")]
    value = Fraction(parts[0])
    return value / Fraction(parts[1]) if len(parts) == 2 else value


def numbers(text: str, fractions: bool = False) -> list[Fraction]:
    """Every number in `text`, in order, as exact Fractions. A slash is read as a fraction ("1/2" -> 1/2) only
    when `fractions` is True; otherwise "1/2" is the two numbers 1 and 2. A fraction with a zero denominator is
    skipped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = []
    for m in (_FRACTION if fractions else _PLAIN).finditer(text):
        try:
            value = _read(m.group())
        except ZeroDivisionError:
            continue
        out.append(-value if _SIGN.search(text[max(0, m.start() - 8):m.start()]) else value)
    return out


def is_correct(task: Task, answer: str | None) -> bool:
    """Whether a free-text `answer` states `task`'s gold answer.

    number: the last number in `answer` equals the gold exactly ("19.0" == "19"; digit-group commas or spaces
    ignored; "1/2" is read as a fraction only when the gold is written as one). text: the gold, normalised as
    SQuAD does (lowercase, no punctuation or articles), occurs as whole words in the normalised answer.
    None or an empty answer is never correct."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task (from load_tasks), got {type(task).__name__}")
    if answer is None:
        return False
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str or None, got {type(answer).__name__}")
    if not answer.strip():
        return False
    if task.answer_kind == "number":
        as_fraction = "/" in task.answer
        (gold,) = numbers(task.answer, fractions=as_fraction)
        found = numbers(answer, fractions=as_fraction)
        return bool(found) and found[-1] == gold
    gold_words, said = normalize_answer(task.answer), normalize_answer(answer)
    return bool(gold_words) and f" {gold_words} " in f" {said} "
