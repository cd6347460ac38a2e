"""Memory steps and reasoning steps: which kind of step does a model get wrong?

Jin et al. 2024 (*Disentangling Memory and Reasoning Ability in Large Language Models*, arXiv:2411.13504) make
a model write every step of its solution behind one of two tags: ⟨memory⟩ for a step that recalls knowledge,
⟨reason⟩ for a step that infers from what is already written. The tags make the chain checkable step by step,
so a wrong answer can be traced to the first step that went wrong, and its tag says whether the model did not
know something or could not reason with what it knew. Their error analysis finds reasoning errors dominate
(about 75-98% of errors, depending on the dataset).

This module runs that analysis on the course's task set (`labkit.agents.tasks`), where every task has gold
steps with the same two tags:

    parse_tagged(text)          the model's tagged steps and its "Answer:" line, from free text
    equations(text)             the "a op b = c" claims a step makes, each checked by the course calculator
    judge(task, parsed)         a verdict per step, and for a wrong answer the first failing step's tag
    tagged_prompt(task, ...)    the few-shot prompt: tagged steps, or plain ones (tags=False), and with
                                facts=True the gold memory steps already written in (the paper's knowledge
                                model, here one that cannot be wrong: the facts as the corpus states them)
    step_tags_run(llm)          saved run "13-step-tags" (CONDITIONS: plain, tagged, facts given); summarize
                                turns its record into the tables

The paper fine-tunes 7-8B models on tagged chains; here SmolLM2-135M is only shown three tagged examples, so
the question is narrower: when a small model writes tagged steps, which kind goes wrong first?

How a step is judged (automatically, against the task's gold steps, never by another model):

- a ⟨memory⟩ step is wrong if it states a number that is neither a value of the task's gold steps nor a
  number of the question (the fact it recalls is not one the task needs, or is false); right if it states a
  gold value; unjudged if it states no number;
- a ⟨reason⟩ step is wrong if one of its equations is false ("576 / 9 = 60"), or if it is the last reason
  step of a chain that gave an answer and the number it ends on is not the gold answer (a valid computation
  on the wrong quantities); right if its equations hold; unjudged if it makes no claim that can be checked.

A failed task is put in one bin: the tag of its first wrong step; "no steps" (nothing tagged); "cut off" (the
token limit stopped it before an answer) or "answer only" (no step was wrong, but the answer is).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from labkit.agents.calculator import CalculatorError, evaluate
from labkit.agents.tasks import TAGS, Task, is_correct, load_tasks, numbers

if TYPE_CHECKING:
    from labkit.llm import LLM

# ---------------------------------------------------------------- parsing the model's steps

_TAG = re.compile(r"^\s*[<⟨〈]\s*(memory|reason)\s*[>⟩〉]\s*(.*)$", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*answer\s*:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class TaggedStep:
    """One step the model wrote: its tag ("memory" or "reason") and the text after the tag."""
    tag: str
    text: str


@dataclass(frozen=True)
class Parsed:
    """A chain read line by line: its tagged steps in order, the text after the first "Answer:" (None if the
    chain has none), and the lines that were neither (kept, so a reader sees what was not counted)."""
    steps: tuple[TaggedStep, ...]
    answer: str | None
    untagged: tuple[str, ...]


def parse_tagged(text: str) -> Parsed:
    """Read `text` line by line: a line starting with <memory> or <reason> (also ⟨memory⟩, any case) is a step,
    the first line starting with "Answer:" ends the chain (what follows it is ignored), any other non-blank line
    is kept as untagged. Tags inside a line are not steps: only a tag at a line's start opens one."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    steps, untagged, answer = [], [], None
    for line in text.splitlines():
        if m := _TAG.match(line):
            steps.append(TaggedStep(m.group(1).lower(), m.group(2).strip()))
        elif m := _ANSWER.match(line):
            answer = m.group(1).strip()
            break
        elif line.strip():
            untagged.append(line.strip())
    return Parsed(tuple(steps), answer, tuple(untagged))


# ---------------------------------------------------------------- checking a step's arithmetic

# "lhs = rhs": an arithmetic left side (digits, operators, parentheses, spaces) and the number right after "=".
# A model writes "12 x 64" and "12 × 64" for a product; the calculator reads × but not x.
_OPS = r"[\d.,\s+\-*/×÷−^()x]"
_EQUATION = re.compile(rf"((?:{_OPS})*\d(?:{_OPS})*?)\s*=\s*([-−]?\d[\d,]*(?:\.\d+)?)")


@dataclass(frozen=True)
class Equation:
    """A claim "lhs = rhs" in a step, with the calculator's value of lhs."""
    lhs: str
    rhs: Fraction
    value: Fraction

    @property
    def holds(self) -> bool:
        return self.value == self.rhs


def equations(text: str) -> list[Equation]:
    """The arithmetic claims in `text` ("15 * 24 = 360", "1,080 - 360 = 720"), each evaluated by the course
    calculator (never eval). A left side with no operator ("x = 5", "d = 576") is not a claim; one the
    calculator refuses is skipped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = []
    for m in _EQUATION.finditer(text):
        lhs = m.group(1).strip(" ,.")
        # digit-group commas go ("1,080"); an "x" between numbers is a times sign
        expr = re.sub(r"(?<=\d),(?=\d{3}\b)", "", lhs)
        expr = re.sub(r"(?<=[\d)])\s*x\s*(?=[\d(])", " * ", expr)
        if not re.search(r"\d\s*[-+*/×÷−^]\s*[\d(]|\)\s*[-+*/×÷−^]", expr):
            continue
        try:
            value = evaluate(expr)
        except CalculatorError:
            continue
        out.append(Equation(lhs, Fraction(m.group(2).replace(",", "").replace("−", "-")), value))
    return out


# ---------------------------------------------------------------- judging a chain against the gold steps

BINS: tuple[str, ...] = ("memory", "reason", "no steps", "cut off", "answer only")


@dataclass(frozen=True)
class Verdict:
    """A step's verdict: ok is True (right), False (wrong) or None (nothing in it could be checked); why says
    what decided it."""
    step: TaggedStep
    ok: bool | None
    why: str


@dataclass(frozen=True)
class Judgement:
    """A chain's verdicts, whether its answer is right, and for a wrong answer its bin (one of BINS)."""
    task_id: str
    verdicts: tuple[Verdict, ...]
    correct: bool
    first_error: str | None


def _gold_values(task: Task) -> set[Fraction]:
    """Every number a right chain may state: the gold steps' values, the numbers in their expressions (a
    constant such as 2 for "a key and a value") and the question's own numbers."""
    values = set(numbers(task.question))
    for s in task.steps:
        values.update(numbers(s.value))
        if s.expression:
            values.update(numbers(s.expression))
    return values


def _judge_step(task: Task, step: TaggedStep, allowed: set[Fraction], last: bool) -> Verdict:
    claims = equations(step.text)
    false = [e for e in claims if not e.holds]
    if false:
        e = false[0]
        return Verdict(step, False, f"false arithmetic: {e.lhs} is {_show(e.value)}, not {_show(e.rhs)}")
    if step.tag == "memory":
        if claims:  # a computation under a memory tag: judged by its arithmetic, which holds
            return Verdict(step, True, "its arithmetic holds")
        stated = numbers(step.text)
        wrong = [n for n in stated if n not in allowed]
        if wrong:
            return Verdict(step, False, f"recalls {_show(wrong[0])}, not a fact this task needs")
        return Verdict(step, True, "recalls a needed fact") if stated else Verdict(step, None, "states no number")
    # a reason step
    if last and task.answer_kind == "number":
        stated = numbers(step.text)
        if stated and not is_correct(task, step.text):
            return Verdict(step, False, f"concludes {_show(stated[-1])}, not the answer")
    if claims:
        return Verdict(step, True, "its arithmetic holds")
    return Verdict(step, None, "no equation to check")


def _show(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def judge(task: Task, parsed: Parsed, finish: str = "stop") -> Judgement:
    """Judge every step of `parsed` (a chain for `task`), score its answer with `tasks.is_correct`, and for a
    wrong answer name the bin: the first wrong step's tag, else "no steps", "cut off" (finish == "length" and no
    answer line) or "answer only". The chain's last reason step must conclude the answer (see the module
    docstring)."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    if not isinstance(parsed, Parsed):
        raise TypeError(f"parsed must be a Parsed (from parse_tagged), got {type(parsed).__name__}")
    if finish not in ("stop", "length"):
        raise ValueError(f"finish must be 'stop' or 'length', got {finish!r}")
    allowed = _gold_values(task)
    reasons = [i for i, s in enumerate(parsed.steps) if s.tag == "reason"]
    last_reason = reasons[-1] if reasons and parsed.answer is not None else None  # a cut chain has no last step
    verdicts = tuple(_judge_step(task, s, allowed, i == last_reason) for i, s in enumerate(parsed.steps))
    correct = is_correct(task, parsed.answer)
    first = None
    if not correct:
        wrong = [v for v in verdicts if v.ok is False]
        if wrong:
            first = wrong[0].step.tag
        elif not parsed.steps:
            first = "no steps"
        elif parsed.answer is None and finish == "length":
            first = "cut off"
        else:
            first = "answer only"
    return Judgement(task.id, verdicts, correct, first)


# ---------------------------------------------------------------- the prompt

INSTRUCTION = ("Solve each problem in short steps, one per line. Start a step that recalls a fact with <memory> "
               "and a step that computes or infers with <reason>. End with a line \"Answer: \" and the number.")

# Worked examples written for this prompt, on facts outside the task set (nothing a task asks is shown here).
EXAMPLES: tuple[tuple[str, tuple[tuple[str, str], ...], str], ...] = (
    ("How many hours are there in 3 weeks?",
     (("memory", "A week has 7 days."), ("memory", "A day has 24 hours."), ("reason", "3 * 7 = 21 days."),
      ("reason", "21 * 24 = 504 hours.")), "504"),
    ("A box holds 24 pencils. A school buys 15 boxes and hands out 137 pencils. How many pencils are left?",
     (("reason", "15 * 24 = 360 pencils."), ("reason", "360 - 137 = 223 pencils.")), "223"),
    ("How many legs do 12 spiders and 9 ants have together?",
     (("memory", "A spider has 8 legs."), ("memory", "An ant has 6 legs."), ("reason", "12 * 8 = 96."),
      ("reason", "9 * 6 = 54."), ("reason", "96 + 54 = 150.")), "150"),
)
PLAIN_INSTRUCTION = ("Solve each problem in short steps, one per line. End with a line \"Answer: \" and the "
                     "number.")
STOP = ("\nQ:", "\n\n")  # a chain ends where the next question would start


def _steps_text(steps: Sequence[tuple[str, str]], tags: bool = True) -> str:
    return "".join(f"<{tag}> {text}\n" if tags else f"{text}\n" for tag, text in steps)


def _given(task: Task) -> list[tuple[str, str]]:
    return [(s.tag, s.text + ".") for s in task.steps if s.tag == "memory"]


def tagged_prompt(task: Task, facts: bool = False, tags: bool = True) -> str:
    """The few-shot prompt for `task`: the instruction, three worked examples, then the question.

    With `facts`, the task's gold memory steps (facts stated in the corpus) are already written after the
    question, so the model only has to reason: the paper's dual setting, with a knowledge source that cannot be
    wrong. With `tags=False`, the same examples without tags (plain step-by-step chain-of-thought), the
    baseline the tags are compared with."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    instruction = INSTRUCTION if tags else PLAIN_INSTRUCTION
    shots = "\n".join(f"Q: {q}\n{_steps_text(steps, tags)}Answer: {a}\n" for q, steps, a in EXAMPLES)
    given = _steps_text(_given(task), tags) if facts else ""
    return f"{instruction}\n\n{shots}\nQ: {task.question}\n{given}"


# ---------------------------------------------------------------- the saved run and its tables

# plain: the examples without tags (chain-of-thought, the baseline); tagged: the paper's format; facts given:
# tagged, with the gold memory steps written in (multihop only: arithmetic tasks recall nothing)
CONDITIONS: tuple[str, ...] = ("plain", "tagged", "facts given")
STUDY_KINDS: tuple[str, ...] = ("arithmetic", "multihop")
MAX_TOKENS = 120


def condition_tasks(condition: str) -> list[Task]:
    """The tasks a condition runs on, in file order."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    kinds = ("multihop",) if condition == "facts given" else STUDY_KINDS
    return [t for k in kinds for t in load_tasks(k)]


def condition_prompt(task: Task, condition: str) -> str:
    """The prompt `condition` gives `task` (see CONDITIONS)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return tagged_prompt(task, facts=condition == "facts given", tags=condition != "plain")


def step_tags_run(llm: LLM | None = None, *, limit: int | None = None, progress: bool = True) -> dict:
    """Saved run "13-step-tags": for each condition, the greedy chain of every task it applies to (the first
    `limit` only, if given) with its finish reason and log-probability under the prompt (None where the backend
    cannot score); prompts are left out (condition_prompt rebuilds them). Any `labkit.llm` backend works
    (default: connect(), the local SmolLM2-135M-Instruct)."""
    from labkit.llm import connect

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    llm = llm if llm is not None else connect()
    record: dict = {"model": getattr(llm, "name", type(llm).__name__), "max_tokens": MAX_TOKENS,
                    "stop": list(STOP), "temperature": 0.0, "conditions": {}}
    for condition in CONDITIONS:
        tasks = condition_tasks(condition)[:limit]
        bar = tasks
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(tasks, desc=condition)
        rows = []
        for t in bar:
            prompt = condition_prompt(t, condition)
            out = llm.generate(prompt, max_tokens=MAX_TOKENS, stop=STOP, temperature=0.0)[0]
            logprob = None
            if out.text and llm.supports_logprobs:  # the notebook's live check re-scores it
                logprob = llm.logprobs(prompt, [out.text])[0]
            rows.append({"id": t.id, "text": out.text, "finish": out.finish_reason, "logprob": logprob})
        record["conditions"][condition] = rows
    record["usage"] = {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                       "completion_tokens": llm.usage.completion_tokens}
    return record


def chain_text(row: Mapping, task: Task, condition: str) -> str:
    """The whole chain of a record row: for "facts given", the memory steps the prompt wrote come first."""
    return (_steps_text(_given(task)) if condition == "facts given" else "") + row["text"]


def summarize(record: Mapping) -> dict:
    """The tables of a step_tags_run record, by condition: accuracy by kind, steps written and judged by tag,
    and the bins of the failed tasks (with the share of reasoning among the step errors)."""
    if not isinstance(record, Mapping) or "conditions" not in record:
        raise TypeError("record must be the dict step_tags_run returned (with 'conditions')")
    tasks = {t.id: t for t in load_tasks()}
    out: dict = {}
    for condition, rows in record["conditions"].items():
        chains = [(tasks[r["id"]], parse_tagged(chain_text(r, tasks[r["id"]], condition)), r["finish"]) for r in rows]
        kinds = Counter(t.kind for t, _, _ in chains)
        right = Counter(t.kind for t, p, _ in chains if is_correct(t, p.answer))
        table: dict = {"tasks": len(chains), "correct": sum(right.values()),
                       "by_kind": {k: {"tasks": kinds[k], "correct": right[k]} for k in STUDY_KINDS if kinds[k]},
                       "answered": sum(p.answer is not None for _, p, _ in chains),
                       "cut": sum(f == "length" for _, _, f in chains)}
        if condition != "plain":  # untagged chains have no steps to bin
            judged = [judge(t, p, f) for t, p, f in chains]
            steps = {tag: Counter() for tag in TAGS}
            for j in judged:
                for v in j.verdicts:
                    steps[v.step.tag]["written"] += 1
                    steps[v.step.tag][{True: "right", False: "wrong", None: "unjudged"}[v.ok]] += 1
            bins = Counter(j.first_error for j in judged if not j.correct)
            step_errors = bins["memory"] + bins["reason"]
            table.update(steps={tag: {k: c[k] for k in ("written", "right", "wrong", "unjudged")}
                                for tag, c in steps.items()},
                         bins={b: bins[b] for b in BINS},
                         reason_share=bins["reason"] / step_errors if step_errors else None,
                         judgements=judged)
        out[condition] = table
    return out
