"""Reflection: retry with the environment's feedback — Reflexion (Shinn et al. 2023) on small code tasks.

A model that writes a function can be *checked*: run the code on unit tests and read which ones fail. Reflexion
(Shinn et al., *Reflexion: Language Agents with Verbal Reinforcement Learning*, NeurIPS 2023) turns that check
into a loop of three parts:

    actor       the model writes the code                               write_code
    evaluator   the environment runs it on unit tests (in the sandbox)  run_tests
    reflection  the model reads the failures and says, in words, what   write_reflection
                to change; the words are kept (episodic memory) and
                shown to the actor on its next attempt

and stops when the tests pass or the attempts run out (`solve`). Re-ReST (Dou et al. 2024, the seed's
"reflection-reinforced self-training") uses the same feedback to repair a model's failed samples and trains on
the repairs; this module does the inference-time loop only.

Which tests? The course's tasks (`data/code-tasks/`) each carry *visible* tests, shown to the model and used as
feedback, and *hidden* tests, never shown, that decide whether a task is solved. Reflexion's own programming
agent had no given tests: the model wrote its tests too (`write_tests`), and a wrong test misleads the loop. A
program that passes the model's tests but fails the hidden ones is a **false positive** of those tests: the loop
stops, satisfied, with wrong code. Shinn et al. report a false-positive rate of 16.3% on MBPP (Python), and point
to it to explain why Reflexion helped less there; `confusion` counts the same table (TP, FN, FP, TN) here.

Model code never runs in this process. `run_tests` builds one program — a harness, the code and the tests as
string literals — and runs it with `labkit.agents.sandbox.run_python` (separate process, OS limits, audit hook).
Inside, every test gets its own wall-clock timer, and a test of the form `assert f(x) == y` reports what
`f(x)` returned, which is the feedback a model can use ("returned 1, expected 0"). The verdicts come back on
one line marked with a random tag. A hostile program could read the tag (from its own command line) and forge
that line: the verdicts are meant for honest-but-wrong code (the model's), and it is the sandbox, not the
harness, that holds a hostile program. A program that exits early or prints too much leaves no verdict line, and
then every test counts as failed.

    task = load_code_tasks()[0]
    run_tests(task.solution, task.hidden_tests).passed        True
    run_tests(task.wrong_solution, task.hidden_tests).passed  False
    episode = solve(task, llm, feedback="visible", reflect=True, max_attempts=3)

The experiment (`reflection_run`, saved as `13-reflection`) runs the first attempt and three loops on every task
and `summarize` counts its tables; both go through `labkit.llm` only, so any backend runs them.
"""
from __future__ import annotations

import ast
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from labkit.agents.sandbox import Limits, run_python

if TYPE_CHECKING:
    from labkit.llm import LLM

TASKS = Path(__file__).resolve().parents[2] / "data" / "code-tasks" / "tasks.jsonl"
MAX_TEST_CHARS = 500  # a unit test is one line; a longer one is refused before it is parsed
MAX_TESTS = 20
Feedback = Literal["visible", "self"]


# ------------------------------------------------------------------------------------------------------------
# the tasks

@dataclass(frozen=True)
class CodeTask:
    """One hand-written task: a function's signature and docstring (`prompt`), tests shown to the model
    (`visible_tests`) and kept from it (`hidden_tests`), a reference solution and a plausible wrong one."""
    id: str
    entry_point: str
    prompt: str
    visible_tests: tuple[str, ...]
    hidden_tests: tuple[str, ...]
    solution: str
    wrong_solution: str
    wrong_because: str


def load_code_tasks(path: Path | None = None) -> list[CodeTask]:
    """The course's code tasks, in file order (data/code-tasks/tasks.jsonl; its README says how they were made)."""
    path = Path(path) if path is not None else TASKS
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            tasks.append(CodeTask(row["id"], row["entry_point"], row["prompt"], tuple(row["visible_tests"]),
                                  tuple(row["hidden_tests"]), row["solution"], row["wrong_solution"],
                                  row["wrong_because"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: a code task needs id, entry_point, prompt, visible_tests, hidden_tests, "
                             f"solution, wrong_solution, wrong_because; {e!r}") from None
    return tasks


def check_test(test: object) -> str | None:
    """None if `test` is one `assert` statement (parsed with ast, never run here); otherwise what is wrong."""
    if not isinstance(test, str):
        return f"a test must be a str, got {type(test).__name__}"
    if len(test) > MAX_TEST_CHARS:
        return f"a test is one line of at most {MAX_TEST_CHARS} characters, got {len(test)}"
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        return f"not valid Python: {e.msg}"
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return "a test must be exactly one assert statement"
    return None


# ------------------------------------------------------------------------------------------------------------
# the evaluator: code + tests, run in the sandbox

@dataclass(frozen=True)
class TestOutcome:
    test: str
    passed: bool
    message: str  # "" when passed; else what went wrong ("count_vowels('sky') returned 1, expected 0")


@dataclass(frozen=True)
class TestReport:
    outcomes: tuple[TestOutcome, ...]
    stopped_by: str | None  # the sandbox's reason when the program left no verdicts (else None)

    @property
    def passed(self) -> bool:
        """Every test passed (and there was at least one)."""
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    @property
    def n_passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    def feedback(self, limit: int = 2) -> str:
        """The first `limit` failures as the model will read them."""
        failed = [o for o in self.outcomes if not o.passed]
        if not self.outcomes:
            return "No tests were run."
        if not failed:
            return "All tests passed."
        lines = [f"{o.test}\n  -> {o.message}" for o in failed[:limit]]
        more = f"\n({len(failed) - limit} more failed)" if len(failed) > limit else ""
        return f"{len(failed)} of {len(self.outcomes)} tests failed:\n" + "\n".join(lines) + more


# The program the sandbox runs, after one line that binds CODE, TESTS, TAG and SECONDS to repr()s of a str, a list
# of str, a str and a float: the model's code and tests are string literals, compiled inside the sandbox only.
HARNESS = r'''
import ast, io, json, signal, sys


class _Timeout(BaseException):  # BaseException: a bare `except Exception` in the model's code does not eat it
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _run(source, mode, namespace):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)  # a wall-clock timer per test, inside the sandbox's own limits
    try:
        return eval(compile(source, "solution.py", mode), namespace)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _why(e):
    if isinstance(e, _Timeout):
        return "timed out after %g s" % SECONDS
    return (type(e).__name__ + ": " + str(e))[:200]


def _show(value):
    try:
        return repr(value)[:100]
    except BaseException:
        return "<unprintable>"


def _check(test, namespace):
    node = ast.parse(test).body[0].test
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.Is)):
        left = ast.unparse(node.left)
        got = _run(left, "eval", namespace)
        want = _run(ast.unparse(node.comparators[0]), "eval", namespace)
        same = got is want if isinstance(node.ops[0], ast.Is) else bool(got == want)
        return [True, ""] if same else [False, "%s returned %s, expected %s" % (left, _show(got), _show(want))]
    _run(test, "exec", namespace)
    return [True, ""]


def _main():
    real, printed = sys.stdout, io.StringIO()
    sys.stdout = printed  # what the code prints is kept apart from the verdict line
    namespace, results, broken = {"__name__": "solution"}, [], None
    try:
        _run(CODE, "exec", namespace)
    except BaseException as e:
        broken = "the code did not run: " + _why(e)
    for test in TESTS:
        if broken:
            results.append([False, broken])
            continue
        try:
            results.append(_check(test, namespace))
        except AssertionError:
            results.append([False, "assertion failed"])
        except _Timeout as e:
            results.append([False, _why(e)])
            broken = "not run: an earlier test timed out"  # bounded cost: one timeout per program
        except BaseException as e:
            results.append([False, _why(e)])
    sys.stdout = real
    real.write(TAG + json.dumps(results) + "\n")
    real.flush()


_main()
'''


def _check_code(code: object, name: str = "code") -> str:
    if not isinstance(code, str):
        raise TypeError(f"{name} must be a str of Python source, got {type(code).__name__}")
    return code


def _check_tests(tests: object) -> tuple[str, ...]:
    if isinstance(tests, str) or not isinstance(tests, Sequence):
        raise TypeError(f"tests must be a list of assert statements (str), got {type(tests).__name__}")
    if len(tests) > MAX_TESTS:
        raise ValueError(f"at most {MAX_TESTS} tests per run, got {len(tests)}")
    for i, t in enumerate(tests):
        why = check_test(t)
        if why:
            raise ValueError(f"test {i} is not a unit test: {why}: {t!r:.80}")
    return tuple(tests)


def run_tests(code: str, tests: Sequence[str], *, seconds_per_test: float = 2.0) -> TestReport:
    """Run `code`, then each test (one `assert` statement) against it, in one sandboxed process; say which pass.

    A test `assert f(x) == y` that fails reports what f(x) returned. A test that raises reports the exception;
    one that runs longer than `seconds_per_test` is stopped, and the tests after it are not run. Code that does
    not run (a syntax error, an exception at import) fails every test with that reason."""
    code, tests = _check_code(code), _check_tests(tests)
    if isinstance(seconds_per_test, bool) or not isinstance(seconds_per_test, (int, float)) \
            or not 0 < seconds_per_test <= 10:
        raise ValueError(f"seconds_per_test must be a number in (0, 10], got {seconds_per_test!r}")
    if not tests:
        return TestReport((), None)
    tag = "@@verdicts-" + secrets.token_hex(8) + "@@"
    program = f"CODE, TESTS, TAG, SECONDS = {code!r}, {list(tests)!r}, {tag!r}, {float(seconds_per_test)!r}\n" + HARNESS
    budget = seconds_per_test * (len(tests) + 1)  # the code's own top level counts as one more
    limits = Limits(cpu_seconds=math.ceil(budget) + 1, wall_seconds=budget + 5.0)
    result = run_python(program, limits)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(tag):
            try:
                verdicts = json.loads(line[len(tag):])
            except json.JSONDecodeError:
                break
            if isinstance(verdicts, list) and len(verdicts) == len(tests):
                return TestReport(tuple(TestOutcome(t, bool(v[0]), str(v[1])) for t, v in zip(tests, verdicts)),
                                  None)
            break
    why = result.stopped_by or "the program left no verdicts (it exited early or printed too much)"
    return TestReport(tuple(TestOutcome(t, False, f"stopped by the sandbox: {why}") for t in tests), why)


# ------------------------------------------------------------------------------------------------------------
# the actor and the reflection: prompts and parsing

SYSTEM = "You are a Python programmer. Reply with one Python code block that defines the function, and nothing else."
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ASSERT = re.compile(r"^[ \t>]*(assert\b.*)$", re.MULTILINE)


def extract_code(reply: str) -> str:
    """The code in a model's reply: the first fenced block (a block cut off by max_tokens counts), else the reply
    from its first line that starts a definition or import, else the whole reply."""
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a str, got {type(reply).__name__}")
    fenced = _FENCE.search(reply)
    if fenced:
        return fenced.group(1).rstrip() + "\n"
    lines = reply.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("def ", "import ", "from ", "class ")):
            return "\n".join(lines[i:]).rstrip() + "\n"
    return reply.strip() + "\n"


def extract_tests(reply: str, entry_point: str, limit: int = 5) -> list[str]:
    """The model's unit tests: every line that is one `assert` statement naming the function, in order, without
    repeats, at most `limit`. Lines that do not parse, or test something else, are dropped."""
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a str, got {type(reply).__name__}")
    out: list[str] = []
    for line in _ASSERT.findall(reply):
        line = line.strip()
        if line not in out and check_test(line) is None and re.search(rf"\b{re.escape(entry_point)}\s*\(", line):
            out.append(line)
    return out[:limit]


def task_message(task: CodeTask, tests: Sequence[str]) -> str:
    shown = "\n".join(tests)
    return (f"Complete this Python function:\n```python\n{task.prompt}```\n"
            f"It must pass these tests:\n```python\n{shown}\n```")


@dataclass(frozen=True)
class Attempt:
    """One try: the reply, the code read from it, the feedback tests' report, and the reflection written after
    it failed (None when it passed, or it was the last attempt, or reflection is off)."""
    reply: str
    code: str
    tokens: int
    report: TestReport
    reflection: str | None = None
    reflection_tokens: int = 0


def retry_messages(task: CodeTask, tests: Sequence[str], attempts: Sequence[Attempt]) -> list[dict[str, str]]:
    """The actor's prompt: the task, then the last attempt with its failures and every reflection so far (the
    episodic memory). Only the last code is shown: a small model's context is short."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task_message(task, tests)}]
    if attempts:
        last = attempts[-1]
        memory = [a.reflection for a in attempts if a.reflection]
        note = "".join(f"\nLesson from attempt {i + 1}: {r}" for i, r in enumerate(memory))
        messages += [{"role": "assistant", "content": f"```python\n{last.code}```"},
                     {"role": "user", "content": f"That code is wrong. {last.report.feedback()}{note}\n"
                                                 "Write the corrected function in one Python code block."}]
    return messages


def reflect_messages(task: CodeTask, tests: Sequence[str], attempt: Attempt) -> list[dict[str, str]]:
    """The reflection prompt: the failed code and its failures; the model answers in words, no code."""
    return [{"role": "system", "content": "You are a careful Python reviewer."},
            {"role": "user", "content": f"{task_message(task, tests)}\n\nThis attempt:\n```python\n{attempt.code}```\n"
                                        f"{attempt.report.feedback()}\n"
                                        "In one or two sentences, say why the code is wrong and what to change. "
                                        "Do not write code."}]


# A reply is cut where the model starts a second definition or a demo after a blank line: a small model rambles
# on with variants of the function (which would replace the first one) and examples of calling it.
CODE_STOP = ("\n```", "\n\ndef ", "\n\nclass ", "\n\nif __name__", "\n\nprint(", "\n\nassert ", "\n\n# ")


def write_code(llm: LLM, task: CodeTask, tests: Sequence[str], attempts: Sequence[Attempt] = (), *,
               max_tokens: int = 128) -> tuple[str, str, int]:
    """(reply, code, tokens generated): one greedy attempt at the task, given the earlier attempts."""
    out = llm.chat(retry_messages(task, tests, attempts), max_tokens=max_tokens, stop=CODE_STOP)[0]
    return out.text, extract_code(out.text), out.tokens


def write_reflection(llm: LLM, task: CodeTask, tests: Sequence[str], attempt: Attempt, *, max_tokens: int = 60
                     ) -> tuple[str, int]:
    """(reflection, tokens generated): the model's words on why `attempt` failed (one paragraph)."""
    out = llm.chat(reflect_messages(task, tests, attempt), max_tokens=max_tokens, stop=("```", "\n"))[0]
    return out.text.strip(), out.tokens


def tests_prompt(task: CodeTask) -> str:
    """A plain-text prompt (not chat) that the model continues with assert lines: the function's signature and
    docstring, a body left out, and the first word of the first test. Asked in chat, the model writes the
    function instead of tests."""
    return f"{task.prompt}    ...\n\n\n# unit tests for {task.entry_point}\nassert {task.entry_point}("


def write_tests(llm: LLM, task: CodeTask, *, max_tokens: int = 80) -> tuple[str, list[str], int]:
    """(reply, tests, tokens): the model writes unit tests for the task from its signature and docstring only
    (the visible tests are not shown: these are its own). The reply starts with the prompt's last words."""
    out = llm.generate(tests_prompt(task), max_tokens=max_tokens, stop=("\n\n", "\ndef ", "\n#"))[0]
    reply = f"assert {task.entry_point}(" + out.text
    return reply, extract_tests(reply, task.entry_point), out.tokens


# ------------------------------------------------------------------------------------------------------------
# the loop

@dataclass
class Episode:
    task_id: str
    feedback: str  # "visible" or "self": whose tests judged each attempt
    reflect: bool
    tests: tuple[str, ...]  # the feedback tests
    attempts: list[Attempt] = field(default_factory=list)
    calls: int = 0  # model calls spent (attempts + reflections; not the model's test writing)
    tokens: int = 0  # tokens generated over those calls

    @property
    def code(self) -> str:
        """The code the loop settled on: the last attempt's."""
        return self.attempts[-1].code


def _check_solve(llm: object, task: object, max_attempts: object, feedback: object) -> None:
    from labkit.llm.base import LLM

    if not isinstance(llm, LLM):
        raise TypeError(f"llm must be a labkit.llm LLM, got {type(llm).__name__}")
    if not isinstance(task, CodeTask):
        raise TypeError(f"task must be a CodeTask, got {type(task).__name__}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if feedback not in ("visible", "self"):
        raise ValueError(f"feedback must be 'visible' (the task's shown tests) or 'self' (the model's own), "
                         f"got {feedback!r}")


def solve(task: CodeTask, llm: LLM | None = None, *, feedback: Feedback = "visible", reflect: bool = True,
          max_attempts: int = 3, self_tests: Sequence[str] | None = None, first: Attempt | None = None) -> Episode:
    """Attempt the task until the feedback tests pass or `max_attempts` attempts are spent.

    feedback="visible" judges each attempt with the task's visible tests; "self" with `self_tests`, the model's
    own (from `write_tests`; with none, nothing can judge an attempt and the loop stops after the first). With
    `reflect=True` the model writes a reflection after each failed attempt but the last (Reflexion); with False
    it retries on the raw test feedback alone. `first` reuses an attempt already made (the greedy first attempt
    is the same in every condition); it is re-judged with this condition's tests and counted as one call."""
    if llm is None:
        from labkit.llm import connect
        llm = connect()
    _check_solve(llm, task, max_attempts, feedback)
    if feedback == "self":
        if self_tests is None:
            raise ValueError("feedback='self' needs self_tests (the model's own tests, from write_tests)")
        tests = tuple(self_tests)
    else:
        tests = task.visible_tests
    shown = task.visible_tests  # the prompt always shows the visible tests; `tests` judge the attempts
    episode = Episode(task.id, feedback, bool(reflect), tests)
    if not tests:  # no usable test: nothing can judge an attempt, so there is nothing to reflect on
        max_attempts = 1
    for k in range(max_attempts):
        if k == 0 and first is not None:
            reply, code, tokens = first.reply, first.code, first.tokens
        else:
            reply, code, tokens = write_code(llm, task, shown, episode.attempts)
        episode.calls += 1
        episode.tokens += tokens
        attempt = Attempt(reply, code, tokens, run_tests(code, tests))
        if tests and not attempt.report.passed and reflect and k < max_attempts - 1:
            words, used = write_reflection(llm, task, shown, attempt)
            attempt = Attempt(reply, code, tokens, attempt.report, words, used)
            episode.calls += 1
            episode.tokens += used
        episode.attempts.append(attempt)
        if attempt.report.passed:
            break
    return episode


# ------------------------------------------------------------------------------------------------------------
# the experiment (saved run 13-reflection) and its tables

CONDITIONS = ("retry", "reflexion", "self-reflexion")  # feedback retries; + reflections; on the model's own tests


def _attempt_row(attempt: Attempt, hidden: TestReport) -> dict:
    return {"reply": attempt.reply, "code": attempt.code, "tokens": attempt.tokens,
            "feedback_passed": attempt.report.n_passed, "feedback_total": len(attempt.report.outcomes),
            "feedback": attempt.report.feedback(), "reflection": attempt.reflection,
            "reflection_tokens": attempt.reflection_tokens,
            "hidden_passed": hidden.n_passed, "hidden_ok": hidden.passed}


def _episode_row(task: CodeTask, episode: Episode) -> dict:
    rows = [_attempt_row(a, run_tests(a.code, task.hidden_tests)) for a in episode.attempts]
    return {"calls": episode.calls, "tokens": episode.tokens, "tests": list(episode.tests),
            "stopped": ("tests passed" if episode.attempts[-1].report.passed
                        else "attempt limit" if episode.tests else "no tests"),
            "attempts": rows, "hidden_ok": rows[-1]["hidden_ok"]}


def reflection_run(llm: LLM | None = None, *, max_attempts: int = 3, self_attempts: int = 2,
                   limit: int | None = None, progress: bool = True) -> dict:
    """Saved run `13-reflection`: on every code task, the greedy first attempt, then three loops that reuse it —
    retry on the visible tests' feedback (max_attempts), Reflexion on the same feedback (+ a reflection before
    each retry), and Reflexion on the model's own tests (self_attempts) — each attempt judged by the hidden
    tests afterwards; and the model's own tests judged against the reference solution. Any labkit.llm backend
    (default: connect())."""
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    tasks = load_code_tasks()[:limit]
    bar = tasks
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(tasks, desc="code tasks")
    rows = []
    for task in bar:
        reply, code, tokens = write_code(llm, task, task.visible_tests)
        first = Attempt(reply, code, tokens, run_tests(code, task.visible_tests))
        test_reply, own, test_tokens = write_tests(llm, task)
        row = {"id": task.id, "first": _attempt_row(first, run_tests(code, task.hidden_tests)),
               "own_tests": {"reply": test_reply, "tests": own, "tokens": test_tokens,
                             "on_reference": [o.passed for o in run_tests(task.solution, own).outcomes],
                             "on_first": [o.passed for o in run_tests(code, own).outcomes]}}
        for name, kwargs in (("retry", {"feedback": "visible", "reflect": False, "max_attempts": max_attempts}),
                             ("reflexion", {"feedback": "visible", "reflect": True, "max_attempts": max_attempts}),
                             ("self-reflexion", {"feedback": "self", "reflect": True, "max_attempts": self_attempts,
                                                 "self_tests": own})):
            row[name] = _episode_row(task, solve(task, llm, first=first, **kwargs))
        rows.append(row)
    return {"model": llm.name, "max_attempts": max_attempts, "self_attempts": self_attempts,
            "code_stop": list(CODE_STOP), "tasks": rows,
            "usage": {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                      "completion_tokens": llm.usage.completion_tokens}}


def confusion(own_pass: Sequence[bool | None], hidden_pass: Sequence[bool]) -> dict[str, int]:
    """Reflexion's table for a set of programs: TP (the model's tests pass, the hidden tests pass), FN (its tests
    fail a right program), FP (its tests pass a wrong program), TN; `untested` when it wrote no usable test
    (None in own_pass)."""
    if len(own_pass) != len(hidden_pass):
        raise ValueError(f"own_pass and hidden_pass must have the same length, got {len(own_pass)} and "
                         f"{len(hidden_pass)}")
    out = {"TP": 0, "FN": 0, "FP": 0, "TN": 0, "untested": 0}
    for own, hidden in zip(own_pass, hidden_pass):
        key = "untested" if own is None else ("T" if own == hidden else "F") + ("P" if own else "N")
        out[key] += 1
    return out


def summarize(record: dict) -> dict:
    """The chapter's tables from a `reflection_run` record (counting only, so it prints the same on every CPU)."""
    rows = record["tasks"]
    if not rows:
        raise ValueError("the record has no tasks")
    n = len(rows)
    first_ok = [r["first"]["hidden_ok"] for r in rows]
    table = {"first attempt": {"solved": sum(first_ok), "calls": n,
                               "tokens": sum(r["first"]["tokens"] for r in rows)}}
    by_attempt = {}
    for name in CONDITIONS:
        # what each method costs on its own: its attempts and reflections (the shared first attempt included), and
        # for self-reflexion the call that wrote the model's tests
        own_cost = name == "self-reflexion"
        table[name] = {"solved": sum(r[name]["hidden_ok"] for r in rows),
                       "calls": sum(r[name]["calls"] + own_cost for r in rows),
                       "tokens": sum(r[name]["tokens"] + own_cost * r["own_tests"]["tokens"] for r in rows),
                       "stopped by its tests": sum(r[name]["stopped"] == "tests passed" for r in rows)}
        most = max(len(r[name]["attempts"]) for r in rows)
        by_attempt[name] = [sum(r[name]["attempts"][min(k, len(r[name]["attempts"])) - 1]["hidden_ok"] for r in rows)
                            for k in range(1, most + 1)]
    # the visible tests as a judge: programs they accept that the hidden tests reject
    accepted = [(r["first"]["feedback_passed"] == r["first"]["feedback_total"], r["first"]["hidden_ok"]) for r in rows]
    own = [r["own_tests"] for r in rows]
    usable = [o for o in own if o["tests"]]
    own_pass = [all(o["on_first"]) if o["tests"] else None for o in own]
    repeated = sum(1 for r in rows for name in CONDITIONS for a, b in zip(r[name]["attempts"], r[name]["attempts"][1:])
                   if a["code"] == b["code"])
    retries = sum(len(r[name]["attempts"]) - 1 for r in rows for name in CONDITIONS)
    return {
        "tasks": n, "table": table, "solved_after_attempt": by_attempt,
        "visible_judge": {"accepted": sum(a for a, _ in accepted), "accepted_wrong": sum(a and not h for a, h in accepted)},
        "own_tests": {"tasks_with_tests": len(usable), "tests": sum(len(o["tests"]) for o in own),
                      "right_tests": sum(sum(o["on_reference"]) for o in own),
                      "confusion_first": confusion(own_pass, first_ok),
                      "confusion_self_final": confusion(
                          [r["self-reflexion"]["stopped"] == "tests passed" if r["own_tests"]["tests"] else None
                           for r in rows], [r["self-reflexion"]["hidden_ok"] for r in rows])},
        "repeated_code": {"retries": retries, "same_code_as_before": repeated},
    }
