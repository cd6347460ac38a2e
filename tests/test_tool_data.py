"""labkit.finetune.tool_data and chat_formats: the tool schemas, the validator (against jsonschema), the seeded
generator and its split, the committed files, and the Alpaca/ShareGPT loaders with their errors."""
import json
import re

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.finetune.chat_formats import (alpaca_to_messages, load_records, sharegpt_to_alpaca, sharegpt_to_messages,
                                          system_with_tools, tools_text)
from labkit.finetune.tool_data import (DATA_DIR, HELDOUT_TEMPLATES, SYSTEM, TOOL_NAMES, TOOLS, _TEMPLATES,
                                       build_dataset, check_call, expected_call, load_split, parse_call, validate,
                                       write_dataset)

TRAIN, HELDOUT = build_dataset()


def test_tools_are_valid_json_schemas():
    assert len(TOOLS) >= 6 and len(set(TOOL_NAMES)) == len(TOOLS)
    for tool in TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool["parameters"])
        assert set(tool["parameters"]["required"]) <= set(tool["parameters"]["properties"])


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False)
                           | st.sampled_from(["", "Paris", "EUR", "km", "celsius", "x"]),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["city", "unit", "amount", "minutes", "query", "zz"]),
                                             inner, max_size=4), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(tool=st.sampled_from(TOOLS), value=json_values)
def test_validator_agrees_with_jsonschema(tool, value):
    ours = validate(value, tool["parameters"])
    theirs = list(jsonschema.Draft202012Validator(tool["parameters"]).iter_errors(value))
    assert (ours == []) == (theirs == []), (value, ours, [e.message for e in theirs])


def test_validator_messages_and_unsupported_keywords():
    weather = TOOLS[TOOL_NAMES.index("get_weather")]["parameters"]
    assert validate({"city": "Oslo"}, weather) == []
    assert validate({"city": "Oslo", "unit": "kelvin"}, weather) == \
        ["$.unit: 'kelvin' is not one of ['celsius', 'fahrenheit']"]
    assert validate({}, weather) == ["$: missing required property 'city'"]
    assert validate({"city": 3}, weather) == ["$.city: expected string, got int 3"]
    assert validate({"city": "Oslo", "when": "now"}, weather)[0].startswith("$: unexpected property 'when'")
    timer = TOOLS[TOOL_NAMES.index("set_timer")]["parameters"]
    assert validate({"minutes": 0}, timer) == ["$.minutes: 0 is less than the minimum 1"]
    assert validate({"minutes": True}, timer) == ["$.minutes: expected integer, got bool True"]
    with pytest.raises(ValueError, match=r"keyword\(s\) \['pattern'\] at \$ are outside the subset"):
        validate("x", {"type": "string", "pattern": "a+"})
    with pytest.raises(TypeError, match="schema must be a dict"):
        validate("x", "string")


def test_parse_call_accepts_calls_only():
    call, why = parse_call('{"name": "get_time", "arguments": {"city": "Lima"}}')
    assert call == {"name": "get_time", "arguments": {"city": "Lima"}} and why == ""
    assert parse_call('{"name": "get_time", "arguments": {"city": "Lima"}')[1].startswith("not JSON")
    assert parse_call("[1, 2]") == (None, "JSON list, not an object")
    assert parse_call('{"name": "get_time", "args": {}}')[1].startswith("not a call")
    assert parse_call("__import__('os').system('true')")[0] is None  # text, never evaluated
    with pytest.raises(TypeError, match="text must be a str"):
        parse_call(None)


def test_check_call():
    assert check_call({"name": "get_time", "arguments": {"city": "Lima"}}) == []
    assert check_call({"name": "fly", "arguments": {}})[0].startswith("unknown tool 'fly'")
    assert check_call({"name": "set_timer", "arguments": {"minutes": "5"}}) == \
        ["arguments.minutes: expected integer, got str '5'"]


def test_generator_is_seeded_and_sized():
    assert build_dataset() == (TRAIN, HELDOUT)
    assert build_dataset(seed=1) != (TRAIN, HELDOUT)
    assert len(TRAIN) + len(HELDOUT) >= 300
    for split in (TRAIN, HELDOUT):  # every tool equally often (the generator cycles through them)
        counts = [sum(expected_call(r)["name"] == name for r in split) for name in TOOL_NAMES]
        assert max(counts) - min(counts) <= 1
    with pytest.raises(ValueError, match="n_train must be an int >= 7"):
        build_dataset(n_train=3)


def test_every_expected_call_is_valid_and_requests_are_unique():
    requests = [r["conversations"][0]["value"] for r in TRAIN + HELDOUT]
    assert len(set(requests)) == len(requests)
    for r in TRAIN + HELDOUT:
        assert check_call(expected_call(r)) == []
        jsonschema.validate(expected_call(r)["arguments"],
                            TOOLS[TOOL_NAMES.index(expected_call(r)["name"])]["parameters"])


def _values(records):
    out = set()
    for r in records:
        for key, value in expected_call(r)["arguments"].items():
            if key in ("city", "query", "label", "minutes", "amount", "value"):
                out.add((key if key not in ("amount", "value") else "number", value))
    return out


def test_heldout_values_are_unseen_and_half_its_templates_too():
    assert not _values(TRAIN) & _values(HELDOUT)  # no city, topic, label or number of held-out occurs in train
    unseen = [r for r in HELDOUT if r["unseen_template"]]
    assert abs(len(unseen) - len(HELDOUT) / 2) <= 1 and not any(r["unseen_template"] for r in TRAIN)
    for r in TRAIN + HELDOUT:  # which templates can have made the request: held-out-only ones for unseen only
        tool, text = expected_call(r)["name"], r["conversations"][0]["value"]
        made_by = [i for i, t in enumerate(_TEMPLATES[tool]) if _pattern(t).fullmatch(text)]
        held_out_only = [i >= len(_TEMPLATES[tool]) - HELDOUT_TEMPLATES for i in made_by]
        assert made_by and all(held_out_only) == r["unseen_template"] and (any(held_out_only) == r["unseen_template"])


def _pattern(template):
    return re.compile(re.sub(r"\\{\w+\\}", ".+", re.escape(template)))


def test_committed_files_are_what_the_generator_writes(tmp_path):
    write_dataset(tmp_path)
    for name in ("train", "heldout"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (DATA_DIR / f"{name}.jsonl").read_bytes(), \
            f"data/tool-calls/{name}.jsonl is stale: run `python -m labkit.finetune.tool_data`"
    assert load_split("train") == TRAIN and load_split("heldout") == HELDOUT
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("test")
    with pytest.raises(FileNotFoundError, match="python -m labkit.finetune.tool_data"):
        load_split("train", folder=tmp_path / "nowhere")


# ---- the formats -----------------------------------------------------------------------------------------

def test_sharegpt_record_becomes_system_user_assistant():
    messages = sharegpt_to_messages(TRAIN[0])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == system_with_tools(SYSTEM, TOOLS)
    assert messages[0]["content"].endswith(tools_text(TOOLS)) and tools_text(TOOLS).count("\n") == len(TOOLS) - 1
    assert json.loads(messages[2]["content"]) == expected_call(TRAIN[0])


def test_sharegpt_roles_follow_the_seed_format():
    record = {"system": "s", "conversations": [{"from": "human", "value": "weather?"},
                                               {"from": "function_call", "value": '{"name": "w"}'},
                                               {"from": "observation", "value": "sunny"},
                                               {"from": "gpt", "value": "It is sunny."}]}
    assert [m["role"] for m in sharegpt_to_messages(record)] == ["system", "user", "assistant", "tool", "assistant"]


def test_alpaca_and_sharegpt_give_the_same_messages():
    for r in TRAIN[:20]:
        assert alpaca_to_messages(sharegpt_to_alpaca(r)) == sharegpt_to_messages(r)
    alpaca = {"instruction": "Translate", "input": "bonjour", "output": "hello", "history": [["hi", "hello!"]]}
    assert alpaca_to_messages(alpaca) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
                                          {"role": "user", "content": "Translate\nbonjour"},
                                          {"role": "assistant", "content": "hello"}]


def test_loaders_name_the_bad_record_and_field():
    good = {"instruction": "a", "output": "b"}
    with pytest.raises(ValueError, match="Alpaca record 2: missing required field 'output'"):
        load_records([good, good, {"instruction": "a"}], "alpaca")
    with pytest.raises(ValueError, match="Alpaca record 1: missing required field 'instruction'"):
        load_records([good, {"input": "x", "output": "b"}], "alpaca")
    with pytest.raises(ValueError, match="Alpaca record 0: 'output' must be a string"):
        load_records([{"instruction": "a", "output": 3}], "alpaca")
    ok = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    with pytest.raises(ValueError, match="ShareGPT record 1: missing required field 'conversations'"):
        load_records([ok, {"system": "s"}], "sharegpt")
    with pytest.raises(ValueError, match=r"ShareGPT record 2: conversations\[1\] is missing required field 'value'"):
        load_records([ok, ok, {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}], "sharegpt")
    with pytest.raises(ValueError, match=r"ShareGPT record 0: conversations\[0\] has from='bot'"):
        load_records([{"conversations": [{"from": "bot", "value": "a"}]}], "sharegpt")
    with pytest.raises(ValueError, match="ShareGPT record 0: the last turn must be the model's"):
        load_records([{"conversations": [{"from": "human", "value": "a"}]}], "sharegpt")
    with pytest.raises(ValueError, match="ShareGPT record 0: 'tools' is not valid JSON"):
        load_records([{**ok, "tools": "[{"}], "sharegpt")
    with pytest.raises(ValueError, match="fmt must be 'alpaca' or 'sharegpt'"):
        load_records([ok], "openai")
    with pytest.raises(ValueError, match="ShareGPT record 0: expected a JSON object, got list"):
        load_records([[1]], "sharegpt")
