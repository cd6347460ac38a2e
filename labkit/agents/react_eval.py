"""Does ReAct help a 135M model? The chapter's task set in three conditions, and chapter 4's failed sums.

The same model, greedy, on every task of `labkit.agents.tasks` (arithmetic word problems, look-ups in chapter
12's corpus, multi-hop questions), three ways:

- `direct`: the question alone, the model's reply taken as the answer (no tools, no format);
- `react`: the ReAct loop (`react.run_react`) with the calculator and `search_docs`, the format shown in the
  system prompt and by demonstration episodes (`react.DEMOS`, those whose tools are offered); a malformed reply
  is an observation and costs a step;
- `react+format`: the same loop with every reply masked by the step automaton (`react_format.ReactFormat`), so
  each reply is one well-formed step naming an offered tool with valid arguments, or an answer.

Each episode records success (`tasks.is_correct` on the final answer), model calls, generated and prompt tokens
(as the backend counted them: LocalLLM does not re-count a prompt prefix it has cached), the malformed replies,
and the trajectory itself (`Trajectory.to_dict`), so a notebook can render any of them.

`chapter4_sums` repeats chapter 4's measurement ("What is 12 + 7?" and its 20 random two-digit sums, answer
prefilled, greedy) with the same model through `labkit.llm`, then asks each question again as a ReAct episode
with only the calculator: the before/after that chapter 4 promises.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from labkit.agents.calculator import calculator
from labkit.agents.react import DEMOS, Trajectory, parse_step, run_react
from labkit.agents.react_format import ReactFormat
from labkit.agents.tasks import KINDS, Task, is_correct, load_tasks
from labkit.agents.tools import ToolBox, default_toolbox
from labkit.llm.base import LLM

CONDITIONS = ("direct", "react", "react+format")
TOOLS = ("calculator", "search_docs")
# Sized for the CPU budget (a few minutes on an idle 2-core machine): 3 steps of at most 64 tokens; a constrained
# thought of at most 24 tokens and arguments of at most 60 characters fit in one 64-token reply.
SETTINGS = {"max_steps": 3, "max_tokens": 64, "direct_tokens": 64, "max_string": 60, "thought_tokens": 24,
            "answer_tokens": 16}


def task_toolbox() -> ToolBox:
    """The tools the task set needs: the calculator and chapter 12's search (not run_python)."""
    return default_toolbox(allow=TOOLS)


def demos_for(box: ToolBox) -> tuple[dict[str, str], ...]:
    """The demonstration episodes of `react.DEMOS` whose actions use only tools the box offers: an example with a
    tool the model cannot call invites calls that fail (measured: with the search demonstration beside the
    calculator-only box, SmolLM2 wrote "{12} + 7" for chapter 4's sum)."""
    offered, episodes = {s["name"] for s in box.specs()}, []
    for m in DEMOS:
        if m["role"] == "user" and m["content"].startswith("Question:"):
            episodes.append([])
        episodes[-1].append(m)
    used = [{parse_step(m["content"]).action for m in ep if m["role"] == "assistant"} - {None} for ep in episodes]
    return tuple(m for ep, tools in zip(episodes, used) if tools <= offered for m in ep)


def _usage(llm: LLM) -> tuple[int, int]:
    return llm.usage.prompt_tokens, llm.usage.completion_tokens


def direct(llm: LLM, question: str, max_tokens: int = SETTINGS["direct_tokens"]) -> dict:
    """The model without tools: the question as the only message, the whole reply as its answer."""
    before = _usage(llm)
    reply = llm.chat([{"role": "user", "content": question}], max_tokens=max_tokens)[0]
    after = _usage(llm)
    return {"answer": reply.text, "model_calls": 1, "prompt_tokens": after[0] - before[0],
            "completion_tokens": after[1] - before[1], "finish_reason": reply.finish_reason}


def episode(llm: LLM, task: Task, condition: str, box: ToolBox, fmt: ReactFormat | None = None,
            settings: dict = SETTINGS) -> dict:
    """One task in one condition, as a plain dict (the saved run's row)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if condition == "direct":
        row = direct(llm, task.question, settings["direct_tokens"])
    else:
        if condition == "react+format" and fmt is None:
            raise ValueError("the react+format condition needs fmt, a ReactFormat for the toolbox")
        traj = run_react(llm, task.question, box, settings["max_steps"], max_tokens=settings["max_tokens"],
                         constraint=fmt if condition == "react+format" else None, shots=demos_for(box))
        row = {"answer": traj.answer, "model_calls": traj.model_calls, "prompt_tokens": traj.prompt_tokens,
               "completion_tokens": traj.completion_tokens, "stopped": traj.stopped,
               "malformed": sum(t.step.malformed for t in traj.turns),
               "tools": [c.name for c in traj.tool_calls], "trajectory": traj.to_dict()}
    return {"id": task.id, "kind": task.kind, "condition": condition, "correct": is_correct(task, row["answer"]),
            **row}


def make_format(llm: LLM, box: ToolBox, settings: dict = SETTINGS) -> ReactFormat:
    return ReactFormat(box, llm.tokenizer, max_string=settings["max_string"],
                       thought_tokens=settings["thought_tokens"], answer_tokens=settings["answer_tokens"])


def summarize(rows: Sequence[dict]) -> dict:
    """Per condition and per kind (and "all"): tasks, successes, model calls, generated tokens, malformed replies."""
    out: dict = {}
    for cond in CONDITIONS:
        out[cond] = {}
        for kind in (*KINDS, "all"):
            r = [x for x in rows if x["condition"] == cond and (kind == "all" or x["kind"] == kind)]
            out[cond][kind] = {"n": len(r), "correct": sum(x["correct"] for x in r),
                               "model_calls": sum(x["model_calls"] for x in r),
                               "completion_tokens": sum(x["completion_tokens"] for x in r),
                               "prompt_tokens": sum(x["prompt_tokens"] or 0 for x in r),
                               "malformed": sum(x.get("malformed", 0) for x in r),
                               "answered": sum(x["answer"] is not None for x in r)}
    return out


# ---------------------------------------------------------------- chapter 4's sums, before and after

def chapter4_pairs() -> list[tuple[int, int]]:
    """Chapter 4's 20 random two-digit additions (the same generator and seed), then its 12 + 7."""
    pairs = torch.randint(10, 100, (20, 2), generator=torch.Generator().manual_seed(0)).tolist()
    return [(12, 7)] + [tuple(p) for p in pairs]


def prefilled_prompt(llm: LLM, a: int, b: int) -> str:
    """Chapter 4's prompt: the chat template with the question, and the answer begun for the model: "a + b = "."""
    return llm.format([{"role": "user", "content": f"What is {a} + {b}?"}]) + f"{a} + {b} = "


def chapter4_sums(llm: LLM | None = None, *, settings: dict = SETTINGS, progress: bool = False) -> dict:
    """Before: greedy completion of chapter 4's prefilled prompt (4 tokens, the first number read, as chapter 4
    read it). After, for each sum the model got wrong: "What is a + b?" as a ReAct episode with only the
    calculator, prompted (with the calculator's demonstration) and with the format automaton. And "What is 12 + 7?" once more with the system prompt's example alone (no DEMOS)."""
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    if not hasattr(llm, "format"):
        raise TypeError(f"chapter 4's prompt needs a backend that writes the chat template (LocalLLM), got {llm.name}")
    box = ToolBox([calculator])
    fmt = make_format(llm, box, settings)
    pairs = chapter4_pairs()
    if progress:
        from tqdm.auto import tqdm
        pairs = tqdm(pairs, desc="sums")
    steps, tokens = settings["max_steps"], settings["max_tokens"]
    rows = []
    for a, b in pairs:
        before = llm.generate(prefilled_prompt(llm, a, b), max_tokens=4)[0].text
        number = re.match(r"\d+", before)
        row = {"a": a, "b": b, "sum": a + b, "before": before,
               "before_ok": number is not None and int(number.group()) == a + b}
        rows.append(row)
        if row["before_ok"]:  # the tool is for the sums the model gets wrong (and it costs minutes of CPU)
            continue
        for cond, constraint in (("react", None), ("react+format", fmt)):
            traj = run_react(llm, f"What is {a} + {b}?", box, steps, max_tokens=tokens, constraint=constraint,
                             shots=demos_for(box))
            said = re.findall(r"\d+", traj.answer or "")
            row[cond] = {"answer": traj.answer, "ok": bool(said) and int(said[-1]) == a + b,
                         "model_calls": traj.model_calls, "tools": [c.name for c in traj.tool_calls],
                         "trajectory": traj.to_dict()}
    zero_shot = run_react(llm, "What is 12 + 7?", box, steps, max_tokens=tokens)
    return {"rows": rows, "zero_shot": zero_shot.to_dict()}


# ---------------------------------------------------------------- the saved run

def react_run(llm: LLM | None = None, tasks: Sequence[Task] | None = None, *, settings: dict = SETTINGS,
              progress: bool = True) -> dict:
    """Saved run `13-react`: every task in the three conditions, and chapter 4's sums before and after.

    With a backend that cannot mask logits (an HTTP server), the react+format condition is left out, and so are
    chapter 4's sums (their "before" needs the local chat template): the record says which ran."""
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    tasks = list(tasks) if tasks is not None else load_tasks()
    box = task_toolbox()
    local = llm.supports_constraints and hasattr(llm, "tokenizer")
    fmt = make_format(llm, box, settings) if local else None
    conditions = CONDITIONS if local else tuple(c for c in CONDITIONS if c != "react+format")
    jobs = [(t, c) for t in tasks for c in conditions]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="episodes")
    rows = [episode(llm, t, c, box, fmt, settings) for t, c in jobs]
    return {"model": llm.name, "settings": dict(settings), "tools": list(TOOLS), "tasks": [t.id for t in tasks],
            "conditions": list(conditions), "rows": rows, "summary": summarize(rows),
            "chapter4": chapter4_sums(llm, settings=settings, progress=progress) if hasattr(llm, "format") else None}


def trajectory(record: dict, task_id: str, condition: str) -> Trajectory:
    """The saved trajectory of one episode, ready for render_html."""
    row = next((r for r in record["rows"] if r["id"] == task_id and r["condition"] == condition), None)
    if row is None or "trajectory" not in row:
        raise KeyError(f"no ReAct episode for task {task_id!r} in condition {condition!r}")
    return Trajectory.from_dict(row["trajectory"])
