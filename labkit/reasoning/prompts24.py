"""Game of 24 with a language model: the prompts and parsers that make a model the `propose` and `value` of a
Tree-of-Thoughts search (in the spirit of Yao et al. 2023's prompts; the wording here is the course's own).

    propose(state)   few-shot "possible next steps": the model lists lines like "8 - 2 = 6 (left: 6 8 14)";
                     each line is parsed with a regular expression (never eval), its arithmetic checked exactly,
                     and its operands looked up among the numbers left. Lines that fail count as malformed, by
                     reason; the state they lead to is recomputed from the step (not copied from "left: ...").
    value(state)     few-shot "can these numbers still reach 24? sure / likely / impossible": scored by the
                     log-probability of each of the three words (one logprobs call, no sampling), and mapped as
                     the paper maps the words, sure = 20, likely = 1, impossible = 0.001, weighted by the
                     probabilities renormalised over the three.
    io / cot         direct answers for the baselines: an expression ("Answer: ..."), with or without steps.

Every call goes through labkit.llm, so `llm.usage` counts calls and tokens. `Meter` keeps each method's own
cost when several methods share one memo of greedy proposals and scores (a greedy answer to the same prompt is
the same answer, so it is computed once and charged to every method that asks for it).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from labkit.llm.base import LLM
from labkit.reasoning import game24

PROPOSE_SHOT = """Use the numbers to make new numbers. Each step combines two numbers with + - * /.
Input: 2 8 8 14
Possible next steps:
2 + 8 = 10 (left: 8 10 14)
8 / 2 = 4 (left: 4 8 14)
14 + 2 = 16 (left: 8 8 16)
2 * 8 = 16 (left: 8 14 16)
8 - 2 = 6 (left: 6 8 14)
14 - 8 = 6 (left: 2 6 8)
14 / 2 = 7 (left: 7 8 8)
14 - 2 = 12 (left: 8 8 12)
Input: 4 6
Possible next steps:
4 * 6 = 24 (left: 24)
4 + 6 = 10 (left: 10)
6 - 4 = 2 (left: 2)
"""

VALUE_SHOT = """Can the numbers reach 24 with + - * /? Answer sure, likely or impossible.
Numbers: 24
Judgement: sure
Numbers: 4 6
Judgement: sure
Numbers: 1 1
Judgement: impossible
Numbers: 4 4 10
Judgement: sure
Numbers: 11 12
Judgement: impossible
Numbers: 5 7 8
Judgement: likely
Numbers: 1 3 3
Judgement: impossible
Numbers: 10 14
Judgement: sure
"""

LABELS = (" sure", " likely", " impossible")
WEIGHTS = (20.0, 1.0, 0.001)   # the ToT paper's mapping of the three words to numbers

IO_SHOT = """Use all four numbers and + - * / to make 24.
Input: 4 4 6 8
Answer: (4 + 8) * (6 - 4) = 24
Input: 2 9 10 12
Answer: 2 * 12 * (10 - 9) = 24
Input: 4 9 10 13
Answer: (13 - 9) * (10 - 4) = 24
"""

COT_SHOT = """Use all four numbers and + - * / to make 24.
Input: 4 4 6 8
Steps:
4 + 8 = 12 (left: 4 6 12)
6 - 4 = 2 (left: 2 12)
2 * 12 = 24 (left: 24)
Answer: (6 - 4) * (4 + 8) = 24
Input: 4 9 10 13
Steps:
13 - 9 = 4 (left: 4 4 10)
10 - 4 = 6 (left: 4 6)
4 * 6 = 24 (left: 24)
Answer: 4 * 6 = (13 - 9) * (10 - 4) = 24
"""
COT_SHOT = COT_SHOT.replace("Answer: 4 * 6 = (13 - 9) * (10 - 4) = 24", "Answer: (13 - 9) * (10 - 4) = 24")

_LINE = re.compile(r"^\s*(\d+(?:/\d+)?)\s*([-+*/×÷])\s*(\d+(?:/\d+)?)\s*=\s*(-?\d+(?:/\d+)?)")


def propose_prompt(state: game24.State) -> str:
    return f"{PROPOSE_SHOT}Input: {state.left()}\nPossible next steps:\n"


def value_prompt(state: game24.State) -> str:
    return f"{VALUE_SHOT}Numbers: {state.left()}\nJudgement:"


def parse_proposals(text: str, state: game24.State) -> tuple[list[game24.State], Counter]:
    """The states the model's lines lead to (in its order, repeats dropped) and a count of what went wrong:
    "unparseable" (not "a op b = c"), "wrong arithmetic", "numbers not available" (an operand not among the
    numbers left). The text is only matched by a regular expression and its numbers read as Fractions."""
    if not isinstance(state, game24.State):
        raise TypeError(f"state must be a game24.State, got {type(state).__name__}")
    out, seen, bad = [], set(), Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.translate(str.maketrans("×÷", "*/")))
        if not m:
            bad["unparseable"] += 1
            continue
        step = f"{m[1]} {m[2].translate(str.maketrans('×÷', '*/'))} {m[3]} = {m[4]}"
        try:
            a, op, b, c = game24.parse_step(step)
        except ValueError:
            bad["wrong arithmetic"] += 1
            continue
        left = list(state.numbers)
        try:
            left.remove(a)
            left.remove(b)
        except ValueError:
            bad["numbers not available"] += 1
            continue
        child = game24.State(tuple(sorted(left + [c])), state.steps + (step,))
        if child.numbers not in seen:
            seen.add(child.numbers)
            out.append(child)
    return out, bad


def label_value(logps: list[float]) -> float:
    """Σ weight · p over sure / likely / impossible, p renormalised over the three words."""
    import math

    top = max(logps)
    ps = [math.exp(x - top) for x in logps]
    return sum(w * p for w, p in zip(WEIGHTS, ps)) / sum(ps)


def answer_line(text: str) -> str:
    """The expression after the first "Answer:" (or the first line), without any '= 24' tail."""
    m = re.search(r"Answer:\s*(.*)", text)
    line = (m[1] if m else text.strip().split("\n", 1)[0]) if text.strip() else ""
    return line.split("\n", 1)[0].strip()


@dataclass
class Meter:
    """One method's cost: model calls, prompt tokens and completion tokens it was charged."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def charge(self, cost: tuple[int, int, int]) -> None:
        self.calls += cost[0]
        self.prompt_tokens += cost[1]
        self.completion_tokens += cost[2]

    def as_dict(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass
class ModelThoughts:
    """propose/value backed by a model, memoised on the numbers left (greedy and scoring are deterministic).
    Each first computation's cost is read from llm.usage; `meter` is charged on every request, cached or not.
    A cached state reached by another path keeps that path's history: the children are re-rooted."""
    llm: LLM
    max_tokens: int = 64
    meter: Meter = field(default_factory=Meter)
    malformed: Counter = field(default_factory=Counter)
    proposed: int = 0           # well-formed proposals returned
    _proposals: dict = field(default_factory=dict)
    _values: dict = field(default_factory=dict)

    def _measure(self, fn):
        u = self.llm.usage
        before = (u.calls, u.prompt_tokens, u.completion_tokens)
        result = fn()
        return result, (u.calls - before[0], u.prompt_tokens - before[1], u.completion_tokens - before[2])

    def propose(self, state: game24.State) -> list[game24.State]:
        key = state.numbers
        if key not in self._proposals:
            (text, cost) = self._measure(lambda: self.llm.generate(
                propose_prompt(state), max_tokens=self.max_tokens, stop=["Input:", "\n\n"])[0].text)
            children, bad = parse_proposals(text, game24.State(state.numbers))
            self._proposals[key] = (text, [c.steps[-1] for c in children], bad, cost)
        text, steps, bad, cost = self._proposals[key]
        self.meter.charge(cost)
        self.malformed.update(bad)
        children, _ = parse_proposals("\n".join(steps), state)
        self.proposed += len(children)
        return children

    def value(self, state: game24.State) -> float:
        key = state.numbers
        if key not in self._values:
            logps, cost = self._measure(lambda: self.llm.logprobs(value_prompt(state), list(LABELS)))
            self._values[key] = (label_value(logps), cost)
        v, cost = self._values[key]
        self.meter.charge(cost)
        return v

    def reset_meter(self) -> None:
        self.meter, self.malformed, self.proposed = Meter(), Counter(), 0


# ---------------------------------------------------------------------------------------------------------------
# the experiment (saved run 11-search)

BINS = ((1, 1), (2, 2), (3, 4), (5, 99))   # difficulty = number of distinct solutions (1 = hardest)
DEPTH = 3                                 # three steps take four numbers to one


def puzzle_set(per_bin: int = 3, seed: int = 11) -> list[tuple[int, ...]]:
    """A fixed, seeded set of solvable puzzles: `per_bin` from each difficulty bin (BINS), bin by bin."""
    import numpy as np

    census = game24.census()
    rng = np.random.default_rng(seed)
    out = []
    for lo, hi in BINS:
        pool = sorted(p for p, d in census.items() if lo <= d <= hi)
        out += [pool[i] for i in sorted(rng.choice(len(pool), size=per_bin, replace=False))]
    return out


def oracle_value(state: game24.State) -> float:
    """The exact solver as a value function: 1 if the numbers left can still make 24, else 0."""
    return float(game24.is_solvable(state))


def solved_by(state: game24.State, numbers: tuple[int, ...]) -> bool:
    """Does this final state's expression pass the checker (the only judge of correctness)?"""
    if len(state.numbers) != 1:
        return False
    try:
        return game24.check_expression(game24.expression(state), numbers).ok
    except ValueError:
        return False


def vote(answers: list[str], numbers: tuple[int, ...]) -> str:
    """Self-consistency's majority vote: answers grouped by canonical form (texts that are not expressions by
    their text); the most frequent group wins, the earliest on ties. Returns that group's first answer."""
    keys = []
    for a in answers:
        try:
            keys.append(game24.canonical(a))
        except ValueError:
            keys.append(a)
    counts = Counter(keys)
    best = max(range(len(answers)), key=lambda i: (counts[keys[i]], -keys.index(keys[i])))
    return answers[best]


def search_run(per_bin: int = 2, breadth: int = 5, sc_k: int = 8, dfs_threshold: float = 10.0,
               dfs_steps: int = 8, got_lists: int = 2, got_length: int = 16, llm: LLM | None = None,
               progress: bool = True) -> tuple[dict, dict]:
    """Saved run 11-search: every method on the same seeded puzzles, with the cost each was charged.
    Returns (record, {}) as labkit.course.saved expects."""
    from tqdm.auto import tqdm

    from labkit.llm import connect
    from labkit.reasoning.mcts import mcts
    from labkit.reasoning.tot import bfs, dfs

    llm = llm or connect()
    puzzles = puzzle_set(per_bin)
    census = game24.census()
    thoughts = ModelThoughts(llm)
    rows = []
    for numbers in tqdm(puzzles, desc="puzzles", disable=not progress):
        root, row = game24.start(numbers), {"numbers": list(numbers), "solutions": census[numbers]}

        def charge(name, fn):
            # one method: its result, the model cost it was charged, and its malformed proposals
            thoughts.reset_meter()
            result = fn()
            row[name] = {**result, **thoughts.meter.as_dict(), "proposed": thoughts.proposed,
                         "malformed": sum(thoughts.malformed.values())}

        def direct(shot, head, max_tokens, n=1, temperature=0.0):
            out = thoughts._measure(lambda: llm.generate(f"{shot}Input: {root.left()}\n{head}", n=n,
                                                         temperature=temperature, max_tokens=max_tokens,
                                                         stop=["Input:", "\n\n"], seed=0))
            thoughts.meter.charge(out[1])
            return [answer_line(("Answer:" if head == "Answer:" else "") + c.text) for c in out[0]]

        def io():
            a = direct(IO_SHOT, "Answer:", 24)[0]
            return {"answer": a, "first": game24.check_expression(a, numbers).ok}

        def cot():
            a = direct(COT_SHOT, "Steps:\n", 72)[0]
            return {"answer": a, "first": game24.check_expression(a, numbers).ok}

        def cot_sc():
            answers = direct(COT_SHOT, "Steps:\n", 72, n=sc_k, temperature=0.7)
            ok = [game24.check_expression(a, numbers).ok for a in answers]
            winner = vote(answers, numbers)
            return {"answer": winner, "first": game24.check_expression(winner, numbers).ok, "any": any(ok)}

        def tot_bfs(b, propose, value):
            def run():
                s = bfs(root, propose, value, breadth=b, depth=DEPTH, is_goal=game24.is_solved)
                ok = [solved_by(f, numbers) for f in s.frontier]
                return {"first": bool(ok) and ok[0], "any": any(ok), "evaluations": s.evaluations,
                        "answer": game24.expression(s.frontier[0]) if s.frontier else ""}
            return run

        charge("io", io)
        charge("cot", cot)
        charge("cot_sc", cot_sc)
        charge("tot_b1", tot_bfs(1, thoughts.propose, thoughts.value))
        charge(f"tot_b{breadth}", tot_bfs(breadth, thoughts.propose, thoughts.value))
        budget = max(1, row[f"tot_b{breadth}"]["evaluations"])

        def run_dfs():
            s = dfs(root, thoughts.propose, thoughts.value, depth=DEPTH, is_goal=game24.is_solved,
                    threshold=dfs_threshold, max_steps=dfs_steps)
            return {"first": any(solved_by(x, numbers) for x in s.solutions), "evaluations": s.evaluations}

        def run_mcts():
            s = mcts(root, thoughts.propose, thoughts.value, depth=DEPTH, is_goal=game24.is_solved, budget=budget)
            return {"first": any(solved_by(x, numbers) for x in s.solutions), "evaluations": s.evaluations}

        charge("tot_dfs", run_dfs)
        charge("mcts", run_mcts)
        charge("model_propose_oracle_value", tot_bfs(breadth, thoughts.propose, oracle_value))
        charge("oracle_propose_model_value", tot_bfs(1, game24.next_steps, thoughts.value))
        rows.append(row)

    # the value function's quality on every state it scored: does it rank solvable states above the rest?
    scored = [(v, game24.is_solvable(game24.State(k))) for k, (v, _) in thoughts._values.items()]
    pos = [v for v, s in scored if s]
    neg = [v for v, s in scored if not s]
    auc = (sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))) if pos and neg else None
    # the first greedy proposal and the first value prompt, kept verbatim for the notebook's live check
    first_key = game24.start(puzzles[0]).numbers
    record = {"model": llm.name, "puzzles": [list(p) for p in puzzles], "bins": [list(b) for b in BINS],
              "breadth": breadth, "sc_k": sc_k, "dfs_threshold": dfs_threshold, "dfs_steps": dfs_steps,
              "rows": rows, "value_auc": auc, "value_states": {"solvable": len(pos), "unsolvable": len(neg)},
              "first_proposal": {"numbers": list(puzzles[0]), "text": thoughts._proposals[first_key][0]},
              "values": [{"numbers": [str(x) for x in k], "value": v} for k, (v, _) in
                         list(thoughts._values.items())[:5]],
              "usage": {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                        "completion_tokens": llm.usage.completion_tokens}}
    # Graph of Thoughts in miniature on the model: short lists (each call decodes the whole list)
    from labkit.reasoning import got

    lists = got.digit_lists(got_lists, got_length, seed=5)
    record["got_model"] = {"lists": lists, **got.compare(lists, lambda: got.ModelSorter(llm), {
        "cot": lambda xs, s: got.cot_sort(xs, s),
        "tot_k2": lambda xs, s: got.tot_sort(xs, s, k=2),
        "got_c4_k1": lambda xs, s: got.got_sort(xs, s, chunks=4, k=1)})}
    record["usage"] = {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                       "completion_tokens": llm.usage.completion_tokens}
    return record, {}
