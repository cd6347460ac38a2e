"""Tool selection, measured the way the Berkeley function-calling leaderboard (BFCL) does.

Before an agent can use a tool it must pick one, or see that none fits. BFCL (Yan et al. 2024) scores that
in categories; we build three of them from chapter 9's held-out requests (`labkit.finetune.tool_data`), so
every request is asked three times, with a different set of tools offered:

    simple      only the right tool is offered: can the model fill in its arguments?
    multiple    all seven tools are offered: can it pick the right one?
    relevance   the right tool is removed, six others stay: the right behaviour is to call nothing

and three ways of answering:

    prompted     SmolLM2-135M-Instruct, told in the system turn to reply with a JSON call (or the "none" call)
    constrained  the same prompt, decoded through chapter 10's automaton: the text can only be a call to an
                 offered tool with arguments its schema allows, or {"name": "none", "arguments": {}}
    fine-tuned   the model with chapter 9's LoRA adapter merged in (trained on the seven tools, always calling)

    CATEGORIES, WAYS, NO_TOOL, SYSTEM   the categories, the ways, the "no tool" name, the instruction
    Case / build_cases / pick_records   a request with the tools offered and the expected call (None: no call)
    case_messages                       the chat a case sends (system turn with the offered tools, request)
    call_schema                         one tool's call {"name", "arguments"} as a JSON Schema the automaton reads
    ToolChoice / tool_choice            the constraint: the union of one automaton per offered tool (+ none)
    score_case / summarise              BFCL-style scoring with chapter 9's score_call; Wilson intervals
    run_way / run                       the replies of one way; the saved run '13-tool-selection'

How the constraint works. Chapter 10's compiler turns one schema into an automaton, but a call to *some* tool
is a union: {"name": "get_time", "arguments": {"city": ...}} or {"name": "calculator", ...}. The constraint
runs one automaton per offered tool side by side, allows a token if any automaton still alive allows it, and
drops the automata a chosen token rules out: once the name is written only one is left, and the arguments
follow that tool's parameters. Greedy decoding under the union picks, at the name, the likeliest of the
offered names: the choice of tool is the model's, the format is the automaton's.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from labkit.finetune.chat_formats import system_with_tools
from labkit.finetune.sft import score_call, wilson_interval
from labkit.finetune.tool_data import SYSTEM as TOOL_SYSTEM
from labkit.finetune.tool_data import TOOLS, expected_call, load_split, parse_call
from labkit.prompting.constrained import TokenMasks, Vocabulary, compile_schema

RUN_NAME = "13-tool-selection"
CATEGORIES = ("simple", "multiple", "relevance")
WAYS = ("prompted", "constrained", "fine-tuned")
NO_TOOL = "none"
# chapter 9's instruction, plus the way out that the relevance category needs (the same prompt in every way)
SYSTEM = TOOL_SYSTEM + f' If no tool fits the request, reply {{"name": "{NO_TOOL}", "arguments": {{}}}}.'


@dataclass(frozen=True)
class Case:
    """One request in one category: the tools offered, and the call expected (None: no call is right)."""
    id: str
    category: str
    request: str
    tools: tuple[dict, ...]
    expected: dict | None


def _tool_of(record: Mapping) -> str:
    return expected_call(record)["name"]


def pick_records(records: Sequence[Mapping], per_tool: int, seed: int = 0) -> list[dict]:
    """A stratified, seeded subset: `per_tool` records of each tool (random.Random(seed) picks them), kept in
    the records' order."""
    if isinstance(per_tool, bool) or not isinstance(per_tool, int) or per_tool < 1:
        raise ValueError(f"per_tool must be an int >= 1, got {per_tool!r}")
    by_tool: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_tool.setdefault(_tool_of(r), []).append(i)
    short = {t: len(ix) for t, ix in by_tool.items() if len(ix) < per_tool}
    if short:
        raise ValueError(f"per_tool={per_tool} but some tools have fewer records: {short}")
    rng = random.Random(seed)
    keep = sorted(i for t in sorted(by_tool) for i in rng.sample(by_tool[t], per_tool))
    return [dict(records[i]) for i in keep]


def build_cases(records: Sequence[Mapping], categories: Sequence[str] = CATEGORIES,
                tools: Sequence[Mapping] = TOOLS) -> list[Case]:
    """Each record once per category, category by category (records in their order)."""
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories:
        raise ValueError(f"categories must be a non-empty list from {CATEGORIES}, got {list(categories)!r}")
    names = [t["name"] for t in tools]
    cases = []
    for category in categories:
        for r in records:
            call = expected_call(r)
            if call["name"] not in names:
                raise ValueError(f"record {r['id']}: its tool {call['name']!r} is not among the tools {names}")
            right = tuple(dict(t) for t in tools if t["name"] == call["name"])
            others = tuple(dict(t) for t in tools if t["name"] != call["name"])
            offered = {"simple": right, "multiple": tuple(dict(t) for t in tools), "relevance": others}[category]
            cases.append(Case(f"{category}/{r['id']}", category, r["conversations"][0]["value"], offered,
                              None if category == "relevance" else call))
    return cases


def case_messages(case: Case) -> list[dict[str, str]]:
    """The system turn (SYSTEM and the offered tools, listed as chapter 9 lists them) and the request."""
    return [{"role": "system", "content": system_with_tools(SYSTEM, list(case.tools))},
            {"role": "user", "content": case.request}]


# ---- the constraint: one automaton per offered tool, run side by side ---------------------------------------

_AUTOMATON_DROPS = ("minimum", "maximum")  # bounds the automaton cannot express; check_call still enforces them


def _for_automaton(schema: Mapping) -> dict:
    out = {k: v for k, v in schema.items() if k not in _AUTOMATON_DROPS}
    if "properties" in out:
        out["properties"] = {k: _for_automaton(v) for k, v in out["properties"].items()}
    return out


def call_schema(tool: Mapping) -> dict:
    """The JSON Schema of one call to `tool`: {"name": <that name>, "arguments": <its parameters>}. Numeric
    bounds (minimum, maximum) are left out: chapter 10's automaton reads only the digits' shape."""
    if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str) or "parameters" not in tool:
        raise ValueError(f"tool must be a dict with 'name' and 'parameters', got {tool!r:.80}")
    return {"type": "object", "properties": {"name": {"const": tool["name"]},
                                             "arguments": _for_automaton(tool["parameters"])},
            "required": ["name", "arguments"], "additionalProperties": False}


NO_TOOL_SCHEMA = {"name": NO_TOOL, "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}


class ToolChoice:
    """labkit.llm's Constraint for one reply: the automata of the offered calls still alive, and their states."""

    def __init__(self, masks: Sequence[TokenMasks]) -> None:
        self.alive = [(m, m.grammar.start) for m in masks]
        self.tokens = 0

    def allowed(self) -> torch.Tensor:
        out = self.alive[0][0].allowed(self.alive[0][1]).clone()
        for m, state in self.alive[1:]:
            out |= m.allowed(state)
        return out

    def advance(self, token_id: int) -> None:
        data = self.alive[0][0].vocab.tokens[token_id]
        if data is None:
            raise ValueError(f"token {token_id} is special: it cannot be part of a tool call")
        nxt = [(m, s) for m, s in ((m, m.grammar.walk(s, data)) for m, s in self.alive) if s is not None]
        if not nxt:
            raise ValueError(f"token {token_id} ({data!r}) fits no offered call after {self.tokens} tokens: the "
                             "mask should have removed it")
        self.alive, self.tokens = nxt, self.tokens + 1

    def is_complete(self) -> bool:
        return any(m.grammar.is_accepting(s) for m, s in self.alive)


class ToolGrammars:
    """The compiled automaton and token masks of each tool's call, built once per tool and reused by every
    case that offers it (the masks' cache fills as cases run)."""

    def __init__(self, vocab: Vocabulary) -> None:
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a labkit.prompting.constrained.Vocabulary, got {type(vocab).__name__}")
        self.vocab, self._masks = vocab, {}

    def masks(self, tool: Mapping) -> TokenMasks:
        key = json.dumps(tool, sort_keys=True)
        if key not in self._masks:
            self._masks[key] = TokenMasks(compile_schema(call_schema(tool)), self.vocab)
        return self._masks[key]

    def factory(self, tools: Sequence[Mapping], allow_none: bool = True) -> Callable[[], ToolChoice]:
        """The zero-argument factory generate(constraint=...) takes: a call to one of `tools`, or the none call."""
        if not tools and not allow_none:
            raise ValueError("no tool offered and no 'none' choice: nothing could be written")
        names = [t["name"] for t in tools]
        if NO_TOOL in names:
            raise ValueError(f"a tool may not be named {NO_TOOL!r}: that name means 'no tool'")
        masks = [self.masks(t) for t in tools] + ([self.masks(NO_TOOL_SCHEMA)] if allow_none else [])
        return lambda: ToolChoice(masks)


# ---- scoring --------------------------------------------------------------------------------------------------

HOWS = ("offered tool", "tool not offered", "none", "not a call", "cut off")


def score_case(case: Case, reply: str, finish: str = "stop") -> dict:
    """BFCL-style: simple and multiple score the reply with chapter 9's score_call against the offered tools
    (json, tool, args, valid); relevance asks whether the reply calls nothing (abstain): the none call, or
    text that is not a call at all, BFCL's rule. `how` says which (one of HOWS): "cut off" is a reply that is
    not a call because max_tokens ended it (finish "length"), which BFCL's rule also counts as no call."""
    if not isinstance(case, Case) or not isinstance(reply, str) or finish not in ("stop", "length"):
        raise TypeError(f"score_case takes a Case, the reply text and finish 'stop' or 'length', got "
                        f"{type(case).__name__}, {type(reply).__name__}, {finish!r}")
    call, _ = parse_call(reply)
    if call is None:
        how = "cut off" if finish == "length" else "not a call"
    elif call["name"] == NO_TOOL:
        how = "none"
    elif any(t["name"] == call["name"] for t in case.tools):
        how = "offered tool"
    else:
        how = "tool not offered"
    if case.category == "relevance":
        return {"abstain": how in ("not a call", "cut off", "none"), "how": how}
    return {**score_call(reply, case.expected, list(case.tools)), "how": how}


HEADLINE = {"simple": "tool", "multiple": "tool", "relevance": "abstain"}


def summarise(rows: Sequence[Mapping]) -> dict:
    """Per category: each metric's k, n, rate and 95% Wilson interval, and how the replies divide (`how`)."""
    out = {}
    for category in CATEGORIES:
        scores = [r["score"] for r in rows if r["category"] == category]
        if not scores:
            continue
        metrics = ("abstain",) if category == "relevance" else ("json", "tool", "args", "valid")
        cell = {}
        for m in metrics:
            k, n = sum(bool(s[m]) for s in scores), len(scores)
            cell[m] = {"k": k, "n": n, "rate": k / n, "ci95": list(wilson_interval(k, n))}
        hows: dict[str, int] = {}
        for s in scores:
            hows[s["how"]] = hows.get(s["how"], 0) + 1
        cell["how"] = dict(sorted(hows.items()))
        out[category] = cell
    return out


# ---- running ----------------------------------------------------------------------------------------------------

def run_way(llm, cases: Sequence[Case], constraint: ToolGrammars | None = None, max_tokens: int = 48,
            progress: bool = True, desc: str = "cases") -> list[dict]:
    """Greedy replies to every case (a constrained way when `constraint` is given), scored. Cases are sent
    grouped by their system turn, so the prefix cache holds it; the rows come back in the cases' order."""
    from tqdm.auto import tqdm

    if not cases or not all(isinstance(c, Case) for c in cases):
        raise TypeError("cases must be a non-empty list of Case (from build_cases)")
    order = sorted(range(len(cases)), key=lambda i: (case_messages(cases[i])[0]["content"], i))
    rows: dict[int, dict] = {}
    for i in tqdm(order, desc=desc, disable=not progress):
        case = cases[i]
        factory = constraint.factory(case.tools) if constraint is not None else None
        c = llm.generate(case_messages(case), max_tokens=max_tokens, constraint=factory)[0]
        rows[i] = {"id": case.id, "category": case.category, "reply": c.text, "finish": c.finish_reason,
                   "tokens": c.tokens, "score": score_case(case, c.text, c.finish_reason)}
    return [rows[i] for i in range(len(cases))]


def tuned_llm(base=None):
    """A LocalLLM over a fresh SmolLM2 with chapter 9's tool adapter merged in (the shared model of
    LocalLLM.smollm2() is never touched). `base`: a LocalLLM whose tokenizer to reuse."""
    from labkit.finetune.sft import load_tool_adapter, smollm2_tokenizer
    from labkit.llama import Llama
    from labkit.llm.local import LocalLLM

    tokenizer = base.tokenizer if base is not None else smollm2_tokenizer()
    return LocalLLM(load_tool_adapter(Llama.from_pretrained(), merge=True), tokenizer, name="smollm2-135m+tool-lora")


def run(per_tool: int = 6, seed: int = 0, llm=None, tuned=None, threads: int = 1,
        max_tokens: int = 48) -> tuple[dict, dict]:
    """The saved run '13-tool-selection': `per_tool` held-out requests per tool (seeded; 6 x 7 = 42 requests,
    126 cases, 378 replies: about 8 minutes on one idle core), each in the three categories, answered the three
    ways. `llm` defaults to labkit.llm.connect(); the constrained way needs a
    local model (token masks), the fine-tuned way chapter 9's adapter (`tuned`, default tuned_llm())."""
    from labkit.llm import connect

    torch.set_num_threads(threads)
    llm = llm if llm is not None else connect()
    records = pick_records(load_split("heldout"), per_tool, seed)
    cases = build_cases(records)
    grammars = ToolGrammars(Vocabulary.from_tokenizer(llm.tokenizer))
    tuned = tuned if tuned is not None else tuned_llm(llm)
    ways = {}
    for way, model, constraint in (("prompted", llm, None), ("constrained", llm, grammars),
                                   ("fine-tuned", tuned, None)):
        model.usage.reset()
        t0 = time.perf_counter()
        rows = run_way(model, cases, constraint, max_tokens, desc=way)
        ways[way] = {"seconds": round(time.perf_counter() - t0, 1), "summary": summarise(rows),
                     "usage": {"calls": model.usage.calls, "prompt_tokens": model.usage.prompt_tokens,
                               "completion_tokens": model.usage.completion_tokens}, "rows": rows}
    record = {"seed": seed, "per_tool": per_tool, "model": llm.name, "tuned_model": tuned.name,
              "max_tokens": max_tokens, "system": SYSTEM, "records": [r["id"] for r in records],
              "n_cases": len(cases), "torch_threads": threads, "ways": ways}
    return record, {}
