"""Prompt optimisation as search: propose candidate prompts, score them on minibatches, keep the best (chapter 10).

Three pieces, each small enough to read in one sitting:

    ucb1 / uniform        a multi-armed bandit over candidate prompts: each pull scores one prompt on a fresh
                          seeded minibatch; UCB1 (Auer, Cesa-Bianchi & Fischer 2002) spends the pulls on the
                          prompts that look best or are least known, uniform allocation splits them evenly
    EDITS / neighbours    a documented edit grammar over a prompt's sections (role, task, label list,
                          definitions, output constraint, zero/few-shot): a deterministic proposer
    opro / apo            two optimisation loops that propose through `labkit.llm` and choose with the bandit:
                          OPRO (Yang et al. 2023) shows the model the scored history of instructions and asks for
                          a better one; APO (Pryzant et al. 2023) asks for a critique of the errors (a "textual
                          gradient") and then for an edited prompt, keeping a beam of the best

A 135M model rarely writes a usable instruction, so every proposer counts what it produced and how much of it
was usable, and the loops fall back to the edit grammar when the model's proposals are not usable. The same
loops run unchanged on a bigger model behind the HTTP backend (LABKIT_LLM_URL).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol, Sequence, Union

from labkit.prompting.icl import LABELS, label_probs

# ---- the bandit ------------------------------------------------------------------------------------------------

Pull = Callable[[int, int], float]
"""pull(arm, j) -> reward in [0, 1]: the j-th pull of `arm` (j counts that arm's pulls from 0). For prompts the
reward is the accuracy on minibatch j, and every arm's j-th pull sees the same minibatch (common random numbers:
two prompts are compared on the same examples, which removes the examples' difficulty from the comparison)."""


@dataclass
class BanditRun:
    """What a bandit did: the arm chosen at each step, its reward, and the per-arm tallies."""
    n_arms: int
    choices: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    @property
    def pulls(self) -> list[int]:
        counts = Counter(self.choices)
        return [counts[a] for a in range(self.n_arms)]

    @property
    def means(self) -> list[float]:
        """Each arm's mean reward (nan for an arm never pulled)."""
        totals = [0.0] * self.n_arms
        for a, r in zip(self.choices, self.rewards):
            totals[a] += r
        return [t / n if n else math.nan for t, n in zip(totals, self.pulls)]

    def ranking(self) -> list[int]:
        """Arms from best to worst: by mean reward, ties broken by more pulls, then by the lower index."""
        means, pulls = self.means, self.pulls
        return sorted(range(self.n_arms), key=lambda a: (-(means[a] if pulls[a] else -1.0), -pulls[a], a))

    @property
    def best(self) -> int:
        return self.ranking()[0]


def _check_bandit(n_arms: int, budget: int) -> None:
    if isinstance(n_arms, bool) or not isinstance(n_arms, int) or n_arms < 1:
        raise ValueError(f"n_arms must be an int >= 1, got {n_arms!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < n_arms:
        raise ValueError(f"budget must be an int >= n_arms ({n_arms}) so that every arm is pulled once, "
                         f"got {budget!r}")


def _reward(pull: Pull, arm: int, j: int) -> float:
    r = float(pull(arm, j))
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"a reward must lie in [0, 1] (UCB1's bound assumes it), arm {arm} pull {j} gave {r!r}")
    return r


def ucb_index(mean: float, pulls: int, t: int, c: float) -> float:
    """UCB1's optimistic estimate of an arm: its mean plus c * sqrt(2 ln t / n).

    With rewards in [0, 1], Hoeffding's inequality makes the true mean exceed mean + sqrt(2 ln t / n) with
    probability at most t^-4; Auer et al. (2002, Theorem 1) turn that into regret O(sum_i ln T / gap_i), so c = 1
    is the constant the bound is proved for. A minibatch accuracy over m examples is an average of m such
    rewards, so n pulls average n*m of them and the same argument gives c = 1/sqrt(m): a tighter, still valid
    bonus (`minibatch_c`)."""
    return mean + c * math.sqrt(2.0 * math.log(t) / pulls)


def minibatch_c(minibatch: int) -> float:
    """The exploration constant for rewards that are accuracies on `minibatch` independent examples."""
    if isinstance(minibatch, bool) or not isinstance(minibatch, int) or minibatch < 1:
        raise ValueError(f"minibatch must be an int >= 1, got {minibatch!r}")
    return 1.0 / math.sqrt(minibatch)


def ucb1(n_arms: int, pull: Pull, budget: int, c: float = 1.0) -> BanditRun:
    """Spend `budget` pulls on `n_arms` arms with UCB1: pull every arm once (the first round explores them all),
    then always the arm with the highest ucb_index (ties: the lower index, so a run is deterministic)."""
    _check_bandit(n_arms, budget)
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 0:
        raise ValueError(f"c (the exploration constant) must be a number >= 0, got {c!r}")
    run = BanditRun(n_arms)
    totals, pulls = [0.0] * n_arms, [0] * n_arms
    for t in range(1, budget + 1):
        if t <= n_arms:
            arm = t - 1
        else:
            arm = max(range(n_arms), key=lambda a: (ucb_index(totals[a] / pulls[a], pulls[a], t, c), -a))
        r = _reward(pull, arm, pulls[arm])
        totals[arm] += r
        pulls[arm] += 1
        run.choices.append(arm)
        run.rewards.append(r)
    return run


def uniform(n_arms: int, pull: Pull, budget: int) -> BanditRun:
    """The baseline: the same budget split evenly, round-robin."""
    _check_bandit(n_arms, budget)
    run = BanditRun(n_arms)
    pulls = [0] * n_arms
    for t in range(budget):
        arm = t % n_arms
        run.choices.append(arm)
        run.rewards.append(_reward(pull, arm, pulls[arm]))
        pulls[arm] += 1
    return run


def bernoulli_bandit(means: Sequence[float], minibatch: int, seed: int) -> Pull:
    """A synthetic bandit: pull j of arm a is the accuracy of a prompt that is right with probability means[a],
    measured on `minibatch` examples. Pull (a, j) always returns the same reward for a seed, whichever strategy
    asks (common random numbers: strategies differ only in which pulls they make)."""
    means = [float(p) for p in means]
    if not means or not all(0.0 <= p <= 1.0 for p in means):
        raise ValueError(f"means must be a non-empty list of probabilities in [0, 1], got {means!r}")
    if isinstance(minibatch, bool) or not isinstance(minibatch, int) or minibatch < 1:
        raise ValueError(f"minibatch must be an int >= 1, got {minibatch!r}")

    def pull(arm: int, j: int) -> float:
        rng = random.Random(f"{seed}/{arm}/{j}")  # a string seed hashes the same on every machine
        return sum(rng.random() < means[arm] for _ in range(minibatch)) / minibatch

    return pull


def regret(run: BanditRun, means: Sequence[float]) -> list[float]:
    """Cumulative (pseudo-)regret after each step: sum over steps of (best mean - mean of the arm pulled)."""
    best, out, total = max(means), [], 0.0
    for a in run.choices:
        total += best - means[a]
        out.append(total)
    return out


# ---- prompts and the edit grammar ------------------------------------------------------------------------------

SECTIONS = ("role", "task", "definitions", "labels", "constraint")
"""A prompt's parts, in the order they are written (the anatomy of a prompt: identity, task, context, output
constraint); the few-shot examples and the query follow them."""

ROLE_LINE = "You are a careful annotator who sorts short texts into categories."
CONSTRAINT_LINE = "Answer with exactly one of the labels and nothing else."


@dataclass(frozen=True)
class Prompt:
    """A candidate instruction: named sections (kind, text) in SECTIONS order, plus how many worked examples
    (one per label, up to `shots`) go between the instruction and the query."""
    sections: tuple[tuple[str, str], ...]
    shots: int = 0

    def __post_init__(self) -> None:
        kinds = [k for k, _ in self.sections]
        if any(k not in SECTIONS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"sections must be distinct kinds among {SECTIONS}, got {kinds}")
        if "task" not in kinds:
            raise ValueError("a prompt needs a 'task' section")
        if kinds != sorted(kinds, key=SECTIONS.index):
            raise ValueError(f"sections must come in the order {SECTIONS}, got {kinds}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"shots must be an int >= 0, got {self.shots!r}")

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.sections)

    def get(self, kind: str) -> str | None:
        return dict(self.sections).get(kind)

    def with_section(self, kind: str, text: str | None) -> "Prompt":
        """A copy with `kind` set to `text` (None removes it), kept in SECTIONS order."""
        parts = dict(self.sections)
        if text is None:
            parts.pop(kind, None)
        else:
            parts[kind] = text
        return replace(self, sections=tuple((k, parts[k]) for k in SECTIONS if k in parts))

    def describe(self) -> str:
        """One line for a table: the sections present and the shots."""
        return "+".join(k for k, _ in self.sections) + f", {self.shots}-shot"


def label_section(labels: Sequence[str], style: str = "inline") -> str:
    if style == "inline":
        return "Labels: " + ", ".join(labels) + "."
    if style == "list":
        return "Labels:\n" + "\n".join(f"- {label}" for label in labels)
    raise ValueError(f"style must be 'inline' or 'list', got {style!r}")


def _labels_of(section: str) -> tuple[list[str], str]:
    """The label names and the style of a label section written by label_section."""
    if section.startswith("Labels:\n"):
        return [line[2:] for line in section.split("\n")[1:]], "list"
    return [s.strip() for s in section[len("Labels: "):].rstrip(".").split(",")], "inline"


def initial_prompt(task: str = "Classify the topic of each sentence.") -> Prompt:
    """The starting point of both loops: a bare task line, zero-shot (the labels are scored, not named)."""
    return Prompt((("task", task),))


@dataclass(frozen=True)
class TaskInfo:
    """What the edit grammar may draw on: the label names, a one-line definition of each, and how many
    worked examples a few-shot prompt shows."""
    labels: tuple[str, ...]
    definitions: Mapping[str, str]
    few_shot: int

    def __post_init__(self) -> None:
        if set(self.definitions) != set(self.labels):
            raise ValueError(f"definitions must define exactly the labels {list(self.labels)}, "
                             f"got {sorted(self.definitions)}")


# The course's topic task (data/classification): a one-line definition of each label, for "add definitions".
TOPIC_TASK = TaskInfo(LABELS, {"sports": "games, athletes, teams, training and competitions",
                               "food": "cooking, recipes, dishes, restaurants and eating",
                               "science": "research, experiments, nature and how the physical world works",
                               "music": "songs, instruments, musicians, concerts and recordings"}, few_shot=4)


def _edit_labels(p: Prompt, task: TaskInfo, how: str) -> Prompt | None:
    section = p.get("labels")
    if section is None:
        return p.with_section("labels", label_section(task.labels)) if how == "add" else None
    labels, style = _labels_of(section)
    if how == "add":
        return None
    if how == "remove":
        return p.with_section("labels", None)
    if how == "restyle":
        return p.with_section("labels", label_section(labels, "list" if style == "inline" else "inline"))
    return p.with_section("labels", label_section(labels[::-1], style))  # "reverse"


def _definitions(task: TaskInfo) -> str:
    return "Definitions:\n" + "\n".join(f"- {label}: {task.definitions[label]}" for label in task.labels)


# The edit grammar: name -> edit(prompt, task) -> the edited prompt, or None where the edit does not apply.
# Each edit changes one thing a prompt-engineering guide would tell you to try.
EDITS: dict[str, Callable[[Prompt, TaskInfo], Prompt | None]] = {
    "add role": lambda p, t: None if p.get("role") else p.with_section("role", ROLE_LINE),
    "remove role": lambda p, t: p.with_section("role", None) if p.get("role") else None,
    "add label list": lambda p, t: _edit_labels(p, t, "add"),
    "remove label list": lambda p, t: _edit_labels(p, t, "remove"),
    "restyle label list": lambda p, t: _edit_labels(p, t, "restyle"),
    "reverse label order": lambda p, t: _edit_labels(p, t, "reverse"),
    "add definitions": lambda p, t: None if p.get("definitions") else p.with_section("definitions", _definitions(t)),
    "remove definitions": lambda p, t: p.with_section("definitions", None) if p.get("definitions") else None,
    "add output constraint": lambda p, t: None if p.get("constraint") else p.with_section("constraint",
                                                                                          CONSTRAINT_LINE),
    "remove output constraint": lambda p, t: p.with_section("constraint", None) if p.get("constraint") else None,
    "few-shot": lambda p, t: replace(p, shots=t.few_shot) if p.shots != t.few_shot and t.few_shot > 0 else None,
    "zero-shot": lambda p, t: replace(p, shots=0) if p.shots else None,
}


def neighbours(p: Prompt, task: TaskInfo) -> list[tuple[str, Prompt]]:
    """Every prompt one edit away from p, in EDITS order (deterministic): the grammar's proposals."""
    out = []
    for name, edit in EDITS.items():
        q = edit(p, task)
        if q is not None and q != p:
            out.append((name, q))
    return out


# ---- scoring a prompt on the classification task ----------------------------------------------------------------

def render(p: Prompt, demos: Sequence[dict], text: str) -> str:
    """The string the scored model reads: the instruction, the worked examples, then the query, ending at a
    neutral "Answer:". (The in-context-learning lesson ends its query at "Topic:", a cue that itself names the
    task; "Answer:" leaves saying what the task is to the instruction, the part being optimised.) Each label is
    scored as the continuation " label"."""
    shown = "".join(f"Sentence: {d['text']}\nAnswer: {d['label']}\n\n" for d in demos)
    return f"{p.text}\n\n{shown}Sentence: {text}\nAnswer:"


class Evaluator:
    """Scores prompts on labelled examples ({"text", "label"} rows, `icl.load_classification`) with one model:
    the predicted label is the one with the highest log-probability (`icl.label_probs`), or, for a server that
    returns no log-probabilities, the first label named in a short greedy answer. Each (prompt, example) is
    scored once and remembered, so a bandit that pulls the same prompt on overlapping minibatches pays only for
    the examples it has not seen. `demos`: the worked examples a k-shot prompt shows (its first k)."""

    def __init__(self, llm, examples: Sequence[dict], demos: Sequence[dict] = (),
                 labels: Sequence[str] = LABELS) -> None:
        if not examples or not all(isinstance(e, dict) and e.get("label") in labels and isinstance(e.get("text"), str)
                                   for e in examples):
            raise ValueError(f"examples must be a non-empty list of {{'text', 'label'}} rows with labels among "
                             f"{list(labels)}")
        self.llm, self.demos, self.labels = llm, list(demos), list(labels)
        self.examples = [(e["text"], e["label"]) for e in examples]
        self._memo: dict[tuple[Prompt, int], str] = {}

    def predict(self, p: Prompt, i: int) -> str:
        if p.shots > len(self.demos):
            raise ValueError(f"the prompt asks for {p.shots} worked examples; the evaluator has {len(self.demos)}")
        key = (p, i)
        if key not in self._memo:
            query = render(p, self.demos[:p.shots], self.examples[i][0])
            if getattr(self.llm, "supports_logprobs", True):
                self._memo[key] = self.labels[int(label_probs(self.llm, query, self.labels).argmax())]
            else:
                answer = self.llm.generate(query, max_tokens=4, stop=["\n"])[0].text.lower()
                named = [(answer.find(label), label) for label in self.labels if label in answer]
                self._memo[key] = min(named)[1] if named else ""
        return self._memo[key]

    def correct(self, p: Prompt, indices: Sequence[int]) -> list[bool]:
        return [self.predict(p, i) == self.examples[i][1] for i in indices]

    def accuracy(self, p: Prompt, indices: Sequence[int]) -> float:
        hits = self.correct(p, indices)
        return sum(hits) / len(hits)

    def minibatch(self, j: int, size: int, seed: int) -> list[int]:
        """Minibatch j: `size` example indices drawn without replacement, the same for every prompt."""
        if not 1 <= size <= len(self.examples):
            raise ValueError(f"minibatch size must be in [1, {len(self.examples)}], got {size}")
        return random.Random(f"{seed}/minibatch/{j}").sample(range(len(self.examples)), size)

    def pull(self, arms: Sequence[Prompt], size: int, seed: int) -> Pull:
        """The bandit's reward: pull j of arm a = accuracy of arms[a] on minibatch j."""
        return lambda a, j: self.accuracy(arms[a], self.minibatch(j, size, seed))


def select(evaluator: Evaluator, arms: Sequence[Prompt], budget: int, minibatch: int, seed: int) -> BanditRun:
    """Choose among candidate prompts with UCB1 over minibatch accuracies (c = 1/sqrt(minibatch))."""
    return ucb1(len(arms), evaluator.pull(arms, minibatch, seed), budget, c=minibatch_c(minibatch))


def paired_delta(run: BanditRun, a: int, b: int) -> float | None:
    """Mean of (reward of a - reward of b) over the pulls j both arms had (the same minibatches), or None."""
    seen: dict[int, list[float]] = {a: [], b: []}
    for arm, r in zip(run.choices, run.rewards):
        if arm in seen:
            seen[arm].append(r)
    n = min(len(seen[a]), len(seen[b]))
    return sum(x - y for x, y in zip(seen[a][:n], seen[b][:n])) / n if n else None


# ---- proposing candidates: the model, or the edit grammar --------------------------------------------------------

@dataclass
class Proposal:
    """A candidate and where it came from: "llm" (the model wrote its task line) or "grammar: <edit>"."""
    prompt: Prompt
    origin: str
    raw: str = ""  # the model's text, for llm proposals


TASK_WORDS = ("topic", "classif", "categor", "label")  # a usable instruction says what the task is


def usable_instruction(text: str, task_words: Sequence[str] = TASK_WORDS) -> str | None:
    """The model's proposal cleaned to one instruction line, or None if it is not usable as one: not a line of
    4-40 mostly alphabetic words, a copy of the query format (it would confuse the scored prompt), or a line
    that never names the task (no word from `task_words`: then it is a comment or a story, not an
    instruction). The text is only ever inserted into a prompt as data, never executed."""
    line = text.strip().split("\n")[0].strip().strip('"').strip("'").strip()
    line = re.sub(r"^(new )?instruction\s*\d*\s*:\s*", "", line, flags=re.I).strip().strip('"').strip()
    words = line.split()
    if not 4 <= len(words) <= 40 or re.search(r"\b(text|label|sentence|answer)\s*:", line, re.I):
        return None
    if sum(c.isalpha() for c in line) < 0.6 * len(line):
        return None
    if not any(w in line.lower() for w in task_words):
        return None
    return line


MetaPrompt = Union[str, list[dict[str, str]]]  # what the proposer model is asked (empty: do not ask it)


class Proposer(Protocol):
    def __call__(self, parent: Prompt, context: MetaPrompt, k: int, seen: set[Prompt]) -> list[Proposal]: ...


@dataclass
class ModelProposer:
    """Asks the model for k new task lines given a meta-prompt (`context`), keeps the usable ones, and fills
    the rest from the edit grammar (the fallback). `log` records every proposal the model made, usable or not."""
    llm: object
    task: TaskInfo
    seed: int = 0
    temperature: float = 0.8
    log: list[dict] = field(default_factory=list)

    def __call__(self, parent: Prompt, context: MetaPrompt, k: int, seen: set[Prompt]) -> list[Proposal]:
        out: list[Proposal] = []
        if context:
            samples = self.llm.generate(context, max_tokens=48, temperature=self.temperature, top_p=0.95, n=k,
                                        seed=self.seed + len(self.log), stop=["\n\n"])
            for s in samples:
                line = usable_instruction(s.text)
                q = parent.with_section("task", line) if line else None
                ok = q is not None and q not in seen and all(q != o.prompt for o in out)
                self.log.append({"raw": s.text, "usable": ok})
                if ok:
                    out.append(Proposal(q, "llm", s.text))
        edits = neighbours(parent, self.task)  # the fallback: the edit grammar, in a seeded order
        random.Random(f"{self.seed}/{len(self.log)}/{parent.text}/{parent.shots}").shuffle(edits)
        for name, q in edits:
            if len(out) >= k:
                break
            if q not in seen and all(q != o.prompt for o in out):
                out.append(Proposal(q, f"grammar: {name}"))
        return out


# ---- the two loops -----------------------------------------------------------------------------------------------

def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def opro_meta_prompt(history: Sequence[tuple[Prompt, float]], task: TaskInfo,
                     samples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """OPRO's meta-prompt: the task, a few examples, and the instructions tried so far with their scores,
    sorted from worst to best (Yang et al. 2023 put the best last, nearest to where the model writes)."""
    tried = "\n\n".join(f"Instruction:\n{p.text}\nAccuracy: {round(100 * s)}%"
                        for p, s in sorted(history, key=lambda ps: ps[1]))
    shown = "\n".join(f'"{t}" -> {label}' for t, label in samples)
    return _chat(f"We want an instruction that makes a model sort short texts into the topics "
                 f"{', '.join(task.labels)}. Examples:\n{shown}\n\nInstructions tried so far, worst first:\n\n"
                 f"{tried}\n\nWrite one new instruction sentence, different from those above, that would get a "
                 f"higher accuracy. Reply with the sentence only.")


def apo_prompts(p: Prompt, errors: Sequence[tuple[str, str, str]], critique: str | None = None
                ) -> list[dict[str, str]]:
    """APO's two requests: without `critique`, ask why the prompt got these (text, label, predicted) wrong
    (the "textual gradient"); with it, ask for an edited instruction that fixes the critique."""
    shown = "\n".join(f'"{t}" is {label}, but the prompt said {pred}' for t, label, pred in errors)
    head = f"My classification prompt is:\n{p.text}\n\nIt gets these wrong:\n{shown}\n\n"
    if critique is None:
        return _chat(head + "Give one reason why the prompt gets them wrong.")
    return _chat(head + f"A reason: {critique.strip()}\n\nWrite an improved first sentence for the prompt that "
                 "fixes this. Reply with the sentence only.")


@dataclass
class LoopRun:
    """One optimisation run: a row per candidate per round (its text, origin, bandit pulls and rewards), the
    model's critiques (APO), and the best prompt found."""
    method: str
    initial: Prompt
    best: Prompt
    rows: list[dict]
    critiques: list[str] = field(default_factory=list)


def _rows(run: BanditRun, arms: Sequence[Prompt], origins: Sequence[str], rnd: int, parent: int = 0) -> list[dict]:
    out = []
    for a, p in enumerate(arms):
        rewards = [r for arm, r in zip(run.choices, run.rewards) if arm == a]
        out.append({"round": rnd, "text": p.text, "shots": p.shots, "sections": p.describe(), "origin": origins[a],
                    "pulls": len(rewards), "rewards": rewards, "mean": sum(rewards) / len(rewards),
                    "delta_vs_parent": None if a == parent else paired_delta(run, a, parent)})
    return out


def opro(evaluator: Evaluator, initial: Prompt, proposer: Proposer, task: TaskInfo, *, rounds: int = 2,
         k: int = 4, keep: int = 2, budget: int = 18, minibatch: int = 8, seed: int = 0) -> LoopRun:
    """OPRO: each round shows the proposer the scored history, takes k new candidates, and lets UCB1 choose
    among them and the `keep` best so far; a candidate's score is its mean minibatch accuracy."""
    history: dict[Prompt, tuple[float, int]] = {}  # prompt -> (mean, pulls) from its latest bandit round
    seen = {initial}
    samples = [evaluator.examples[i] for i in evaluator.minibatch(10_000, len(task.labels), seed)]
    rows: list[dict] = []
    for rnd in range(rounds):
        kept = sorted(history, key=lambda p: (-history[p][0], -history[p][1]))[:keep] or [initial]
        scored = [(p, m) for p, (m, _) in history.items()] or [(initial, evaluator.accuracy(
            initial, evaluator.minibatch(0, minibatch, seed)))]  # round 0: the initial prompt on minibatch 0
        context = opro_meta_prompt(scored, task, samples)
        proposals = proposer(kept[0], context, k, seen)
        arms = kept + [q.prompt for q in proposals]
        seen.update(arms)
        run = select(evaluator, arms, max(budget, len(arms)), minibatch, seed)
        origins = ["initial" if p == initial else "kept" for p in kept] + [q.origin for q in proposals]
        rows += _rows(run, arms, origins, rnd)
        for a, p in enumerate(arms):
            history[p] = (run.means[a], run.pulls[a])
    best = sorted(history, key=lambda p: (-history[p][0], -history[p][1]))[0]
    return LoopRun("OPRO", initial, best, rows)


def apo(evaluator: Evaluator, initial: Prompt, proposer: Proposer, llm, *, rounds: int = 2, beam: int = 2,
        expand: int = 2, budget: int = 18, minibatch: int = 8, errors: int = 3, seed: int = 0) -> LoopRun:
    """APO: each round, for every prompt in the beam, collect its errors on a minibatch, ask the model for a
    critique of them and then for an edited prompt (`expand` candidates, the grammar filling in where the
    model's are not usable); UCB1 chooses among beam + candidates and the best `beam` go on."""
    current, seen, rows, critiques = [initial], {initial}, [], []
    for rnd in range(rounds):
        proposals: list[Proposal] = []
        for p in current:
            batch = evaluator.minibatch(rnd, minibatch, seed)
            wrong = [(evaluator.examples[i][0], evaluator.examples[i][1], evaluator.predict(p, i))
                     for i in batch if evaluator.predict(p, i) != evaluator.examples[i][1]][:errors]
            context: MetaPrompt = ""
            if wrong:
                critique = llm.generate(apo_prompts(p, wrong), max_tokens=48, stop=["\n\n"])[0].text
                critiques.append(critique)
                context = apo_prompts(p, wrong, critique)
            new = proposer(p, context, expand, seen | {q.prompt for q in proposals})
            proposals += new
        arms = current + [q.prompt for q in proposals]
        seen.update(arms)
        run = select(evaluator, arms, max(budget, len(arms)), minibatch, seed)
        origins = ["initial" if p == initial else "beam" for p in current] + [q.origin for q in proposals]
        rows += _rows(run, arms, origins, rnd)
        current = [arms[a] for a in run.ranking()[:beam]]
    return LoopRun("APO", initial, current[0], rows, critiques)


# ---- the experiment (saved run 10-prompt-opt) --------------------------------------------------------------------

SYNTHETIC_MEANS = (0.30, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.75)  # eight prompts' accuracies, one clearly best


def synthetic_study(means: Sequence[float] = SYNTHETIC_MEANS, budget: int = 40, minibatch: int = 8,
                    seeds: int = 200) -> dict:
    """UCB1 (c = 1/sqrt(minibatch)) against uniform allocation on a Bernoulli bandit, over `seeds` seeds: how
    often each names the best arm, the mean pulls per arm, and the mean cumulative regret after each step."""
    best = max(range(len(means)), key=lambda a: means[a])
    out: dict = {"means": list(means), "budget": budget, "minibatch": minibatch, "seeds": seeds}
    for name in ("ucb", "uniform"):
        found, pulls, curve = 0, [0] * len(means), [0.0] * budget
        for s in range(seeds):
            pull = bernoulli_bandit(means, minibatch, s)
            run = ucb1(len(means), pull, budget, minibatch_c(minibatch)) if name == "ucb" else \
                uniform(len(means), pull, budget)
            found += run.best == best
            pulls = [x + y for x, y in zip(pulls, run.pulls)]
            curve = [x + y for x, y in zip(curve, regret(run, means))]
        out[name] = {"found_best": found, "mean_pulls": [x / seeds for x in pulls],
                     "mean_regret": [round(x / seeds, 6) for x in curve]}
    out["ucb_choices_seed0"] = ucb1(len(means), bernoulli_bandit(means, minibatch, 0), budget,
                                    minibatch_c(minibatch)).choices
    return out


def _proposal_stats(log: Sequence[dict], rows: Sequence[dict]) -> dict:
    llm_rows = [r for r in rows if r["origin"] == "llm"]
    return {"model_proposals": len(log), "usable": sum(e["usable"] for e in log),
            "better_than_parent": sum(1 for r in llm_rows if (r["delta_vs_parent"] or 0) > 0),
            "grammar_candidates": sum(1 for r in rows if r["origin"].startswith("grammar"))}


def heldout(evaluator: Evaluator, prompts: Mapping[str, Prompt]) -> dict:
    """Each prompt's per-example correctness on the held-out split, its accuracy, and an exact McNemar test
    against the first prompt (the initial one) on the same examples."""
    from labkit.prompting.cot import discordant_pairs, mcnemar_exact

    everything = range(len(evaluator.examples))
    hits = {name: evaluator.correct(p, everything) for name, p in prompts.items()}
    base = next(iter(hits.values()))
    out = {}
    for name, h in hits.items():
        b, c = discordant_pairs(h, base)
        out[name] = {"text": prompts[name].text, "shots": prompts[name].shots, "correct": [int(x) for x in h],
                     "accuracy": sum(h) / len(h), "wins_vs_initial": b, "losses_vs_initial": c,
                     "mcnemar_p": mcnemar_exact(b, c)}
    return out


def prompt_opt_run(rounds: int = 2, k: int = 4, budget: int = 12, minibatch: int = 8, seed: int = 0,
                   progress: bool = True) -> tuple[dict, dict]:
    """The chapter's experiment: the synthetic bandit study, then OPRO and APO on the topic task (the local
    SmolLM2 is the scored model; the proposer is `labkit.llm.connect()`, a server if LABKIT_LLM_URL names
    one), then best vs initial on the test split. Returns (record, {}) for `labkit.course.saved`."""
    from labkit.llm import connect
    from labkit.llm.local import LocalLLM
    from labkit.prompting.icl import balanced_counts, draw_demos, load_classification

    record: dict = {"seed": seed, "synthetic": synthetic_study()}
    demos = draw_demos(load_classification("train"), balanced_counts(TOPIC_TASK.few_shot, seed), seed)
    dev, test = load_classification("dev"), load_classification("test")
    initial = initial_prompt()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=3, desc="OPRO, APO, held-out")
    found: dict[str, Prompt] = {"initial": initial}
    for method in ("OPRO", "APO"):
        scorer, optimizer = LocalLLM.smollm2(), connect()
        evaluator = Evaluator(scorer, dev, demos)
        proposer = ModelProposer(optimizer, TOPIC_TASK, seed=seed)
        if method == "OPRO":
            run = opro(evaluator, initial, proposer, TOPIC_TASK, rounds=rounds, k=k, budget=budget,
                       minibatch=minibatch, seed=seed)
        else:
            run = apo(evaluator, initial, proposer, optimizer, rounds=rounds, expand=k // 2, budget=budget,
                      minibatch=minibatch, seed=seed)
        found[method] = run.best
        record[method] = {"rows": run.rows, "best": run.best.text, "best_shots": run.best.shots,
                          "critiques": run.critiques, "proposals": proposer.log,
                          "stats": _proposal_stats(proposer.log, run.rows),
                          "optimizer": {"backend": optimizer.name, **vars(optimizer.usage)},
                          "scorer": {"backend": scorer.name, **vars(scorer.usage)}}
        if bar:
            bar.update()
    scorer = LocalLLM.smollm2()
    record["heldout"] = heldout(Evaluator(scorer, test, demos), found)
    record["heldout_scorer_calls"] = scorer.usage.calls
    record["config"] = {"rounds": rounds, "k": k, "budget": budget, "minibatch": minibatch,
                        "dev": len(dev), "test": len(test)}
    if bar:
        bar.update()
        bar.close()
    return record, {}
