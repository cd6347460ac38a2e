"""The two data formats fine-tuning sets come in, and how each becomes a list of chat messages.

    Alpaca     {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
               one exchange per record (plus earlier turns in `history`): handy for single-turn tasks
    ShareGPT   {"conversations": [{"from", "value"}, ...], "system"?, "tools"?}
               a whole conversation; `from` is human / gpt / function_call / observation (or system / user /
               assistant), `tools` a JSON list of tool schemas: the format multi-turn and tool-call data use

(These are the shapes LLaMA-Factory reads.) A chat model does not see either shape: it sees messages
{"role", "content"} rendered by its chat template. Both formats therefore convert to the same messages, and
every later step (rendering, masking, training) reads messages only. A tool call is an assistant message
whose content is the call's JSON; ShareGPT's `function_call` turn is exactly that, and its `observation`
turn (the tool's answer) becomes a message with role "tool".

The loaders check every record and name the first problem with the record's index, so a bad line in a
10,000-line file is found at once instead of surfacing as a shape error deep inside training.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

Message = dict[str, str]

# ShareGPT's speaker names -> chat roles. `function_call` is what the assistant says when it calls a tool.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "system": "system"}


def tools_text(tools: Sequence[Mapping]) -> str:
    """Tool schemas as the system prompt lists them: one compact JSON object per line (short prompts train
    faster; the model reads JSON either way)."""
    if isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of tool schemas (dicts), got {type(tools).__name__}")
    return "\n".join(json.dumps(t, separators=(",", ":"), ensure_ascii=False) for t in tools)


def system_with_tools(system: str, tools: Sequence[Mapping] | None) -> str:
    """The system turn: the instruction, then the tool schemas under 'Tools:' (if any)."""
    return system if not tools else f"{system}\n\nTools:\n{tools_text(tools)}"


def _need(record: object, index: int, fmt: str, fields: Iterable[str]) -> Mapping:
    if not isinstance(record, Mapping):
        raise ValueError(f"{fmt} record {index}: expected a JSON object, got {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise ValueError(f"{fmt} record {index}: missing required field {field!r}")
    return record


def _text(value: object, index: int, fmt: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{fmt} record {index}: {where} must be a string, got {type(value).__name__}")
    return value


def alpaca_to_messages(record: Mapping, index: int = 0) -> list[Message]:
    """One Alpaca record -> messages: system (if given), the history's turns, then instruction (+ input on the
    next line) as the user's turn and output as the assistant's."""
    r = _need(record, index, "Alpaca", ("instruction", "output"))
    messages: list[Message] = []
    if r.get("system"):
        messages.append({"role": "system", "content": _text(r["system"], index, "Alpaca", "'system'")})
    history = r.get("history") or []
    if not isinstance(history, list):
        raise ValueError(f"Alpaca record {index}: 'history' must be a list of [user, assistant] pairs")
    for turn, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"Alpaca record {index}: history[{turn}] must be a [user, assistant] pair")
        messages += [{"role": "user", "content": _text(pair[0], index, "Alpaca", f"history[{turn}][0]")},
                     {"role": "assistant", "content": _text(pair[1], index, "Alpaca", f"history[{turn}][1]")}]
    instruction = _text(r["instruction"], index, "Alpaca", "'instruction'")
    extra = _text(r.get("input") or "", index, "Alpaca", "'input'")
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction})
    messages.append({"role": "assistant", "content": _text(r["output"], index, "Alpaca", "'output'")})
    return messages


def sharegpt_to_messages(record: Mapping, index: int = 0) -> list[Message]:
    """One ShareGPT record -> messages: the system turn (with its tool schemas), then every conversation turn."""
    r = _need(record, index, "ShareGPT", ("conversations",))
    turns = r["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"ShareGPT record {index}: 'conversations' must be a non-empty list of turns")
    tools = r.get("tools")
    if isinstance(tools, str):  # LLaMA-Factory stores the schemas as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as e:
            raise ValueError(f"ShareGPT record {index}: 'tools' is not valid JSON ({e.msg})") from None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, Mapping) for t in tools)):
        raise ValueError(f"ShareGPT record {index}: 'tools' must be a list of tool schemas")
    messages: list[Message] = []
    if r.get("system") or tools:
        messages.append({"role": "system", "content": system_with_tools(
            _text(r.get("system") or "", index, "ShareGPT", "'system'"), tools)})
    for t, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ValueError(f"ShareGPT record {index}: conversations[{t}] must be an object with 'from' and 'value'")
        for field in ("from", "value"):
            if field not in turn:
                raise ValueError(f"ShareGPT record {index}: conversations[{t}] is missing required field {field!r}")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"ShareGPT record {index}: conversations[{t}] has from={turn['from']!r}; expected one "
                             f"of {sorted(SHAREGPT_ROLES)}")
        if role == "system" and messages:
            raise ValueError(f"ShareGPT record {index}: a system turn may only come first (conversations[{t}])")
        messages.append({"role": role, "content": _text(turn["value"], index, "ShareGPT",
                                                        f"conversations[{t}]['value']")})
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"ShareGPT record {index}: the last turn must be the model's (gpt or function_call), "
                         f"got {turns[-1]['from']!r}: there is nothing to learn from it")
    return messages


def load_records(records: Iterable[Mapping], fmt: str) -> list[list[Message]]:
    """Every record of a data set in `fmt` ('alpaca' or 'sharegpt') as messages; ValueError names the first bad one."""
    if fmt not in ("alpaca", "sharegpt"):
        raise ValueError(f"fmt must be 'alpaca' or 'sharegpt', got {fmt!r}")
    convert = alpaca_to_messages if fmt == "alpaca" else sharegpt_to_messages
    return [convert(r, i) for i, r in enumerate(records)]


def sharegpt_to_alpaca(record: Mapping, index: int = 0) -> dict:
    """A single-exchange ShareGPT record in Alpaca's shape (the tool schemas go into `system`, which is where
    an Alpaca record can carry them); earlier exchanges go into `history`."""
    messages = sharegpt_to_messages(record, index)
    system = messages.pop(0)["content"] if messages[0]["role"] == "system" else ""
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        raise ValueError(f"ShareGPT record {index}: Alpaca holds alternating user/assistant turns, got {roles}")
    pairs = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, len(messages), 2)]
    out = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if system:
        out["system"] = system
    if len(pairs) > 1:
        out["history"] = pairs[:-1]
    return out
