"""Tool selection (labkit.agents.selection): the BFCL categories built from chapter 9's held-out set, the union
constraint over the offered tools' call schemas (checked against chapter 10's plain mask_step), and the scoring."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from labkit.agents import selection as S
from labkit.finetune.sft import wilson_interval
from labkit.finetune.tool_data import TOOL_NAMES, TOOLS, expected_call, load_split
from labkit.prompting.constrained import Vocabulary, compile_schema, mask_step, token_bytes
from tests.scripted_llm import ScriptedLLM

HELDOUT = load_split("heldout")
BY_NAME = {t["name"]: t for t in TOOLS}


# ------------------------------------------------------------------------------------------------ the cases
def test_pick_records_is_stratified_seeded_and_in_file_order():
    picked = S.pick_records(HELDOUT, 3, seed=0)
    assert Counter(expected_call(r)["name"] for r in picked) == {name: 3 for name in TOOL_NAMES}
    ids = [r["id"] for r in picked]
    assert ids == sorted(ids) and len(set(ids)) == 21
    assert ids == [r["id"] for r in S.pick_records(HELDOUT, 3, seed=0)]
    assert ids != [r["id"] for r in S.pick_records(HELDOUT, 3, seed=1)]


@pytest.mark.parametrize("per_tool, message", [(0, "per_tool must be an int >= 1"), (True, "per_tool must be"),
                                               (16, "fewer records")])
def test_pick_records_rejects_bad_sizes(per_tool, message):
    with pytest.raises(ValueError, match=message):
        S.pick_records(HELDOUT, per_tool)


def test_the_three_categories_offer_what_bfcl_offers():
    records = S.pick_records(HELDOUT, 1)
    cases = S.build_cases(records)
    assert [c.category for c in cases] == [c for c in S.CATEGORIES for _ in records]
    for case, record in zip(cases, records * 3):
        gold = expected_call(record)
        names = [t["name"] for t in case.tools]
        assert case.request == record["conversations"][0]["value"]
        if case.category == "simple":
            assert names == [gold["name"]] and case.expected == gold
        elif case.category == "multiple":
            assert names == TOOL_NAMES and case.expected == gold
        else:
            assert names == [n for n in TOOL_NAMES if n != gold["name"]] and case.expected is None
    system = S.case_messages(cases[-1])[0]["content"]
    assert system.startswith(S.SYSTEM) and '"name":"' + expected_call(records[-1])["name"] + '"' not in system


def test_build_cases_rejects_unknown_categories_and_tools():
    with pytest.raises(ValueError, match="categories must be"):
        S.build_cases(HELDOUT[:2], ["parallel"])
    with pytest.raises(ValueError, match="is not among the tools"):
        S.build_cases(HELDOUT[:1], tools=[t for t in TOOLS if t["name"] != expected_call(HELDOUT[0])["name"]])


# ------------------------------------------------------------------------------------------------ the schemas
def test_every_held_out_call_fits_its_call_schema_and_no_other():
    grammars = {t["name"]: compile_schema(S.call_schema(t)) for t in TOOLS}
    for record in HELDOUT:
        gold = expected_call(record)
        for text in (json.dumps(gold), json.dumps(gold, separators=(",", ":"))):
            accepted = [name for name, g in grammars.items() if g.accepts(text)]
            assert accepted == [gold["name"]], (record["id"], text, accepted)
    assert compile_schema(S.call_schema(S.NO_TOOL_SCHEMA)).accepts('{"name": "none", "arguments": {}}')


def test_call_schema_drops_only_the_bounds_the_automaton_cannot_read():
    schema = S.call_schema(BY_NAME["set_timer"])
    assert schema["properties"]["arguments"]["properties"]["minutes"] == {"type": "integer"}
    assert BY_NAME["set_timer"]["parameters"]["properties"]["minutes"]["minimum"] == 1  # the tool is unchanged
    with pytest.raises(ValueError, match="must be a dict with 'name' and 'parameters'"):
        S.call_schema({"name": "x"})


# ------------------------------------------------------------------------------------------------ the union constraint
SPECIAL = None
TOY_TOKENS = [bytes([b]) for b in range(0x20, 0x7F)] + [
    b'{"', b'name', b'":', b'": "', b'", "', b'get', b'_time', b'_weather', b'calc', b'ulator', b'arguments',
    b'": {"', b'city', b'"}}', b'none', b'{}}', b'}}', b'expression', b'Paris', b'": {}}'] + [SPECIAL]
END = len(TOY_TOKENS) - 1


def reference_allowed(grammars_states, tokens):
    """Chapter 10's plain mask_step, per offered grammar, OR-ed; the end token when some document is complete."""
    out = torch.zeros(len(tokens), dtype=torch.bool)
    plain = [t if t is not None else b"" for t in tokens]
    for g, state in grammars_states:
        out |= mask_step(g.advance, state, plain)
    out[END] = any(g.is_accepting(s) for g, s in grammars_states)
    return out


def greedy_segment(text: bytes, tokens) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        j = max((k for k, t in enumerate(tokens) if t and text.startswith(t, i)), key=lambda k: len(tokens[k]))
        ids.append(j)
        i += len(tokens[j])
    return ids


@pytest.mark.parametrize("offered, text", [
    (["get_time", "calculator"], '{"name": "get_time", "arguments": {"city": "Paris"}}'),
    (["get_time", "get_weather"], '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    (["get_time", "calculator"], '{"name": "none", "arguments": {}}'),
])
def test_tool_choice_mask_equals_the_union_of_plain_masks(offered, text):
    voc = Vocabulary(TOY_TOKENS, [END])
    grammars = S.ToolGrammars(voc)
    tools = [BY_NAME[n] for n in offered]
    choice = grammars.factory(tools)()
    plain = [compile_schema(S.call_schema(t)) for t in tools + [S.NO_TOOL_SCHEMA]]
    states = [(g, g.start) for g in plain]
    ids = greedy_segment(text.encode(), TOY_TOKENS)
    for k, token in enumerate(ids):
        live = choice.allowed()
        assert torch.equal(live, reference_allowed(states, TOY_TOKENS)), (text, k)
        assert live[token], (text, k, TOY_TOKENS[token])
        choice.advance(token)
        states = [(g, g.walk(s, TOY_TOKENS[token])) for g, s in states]
        states = [(g, s) for g, s in states if s is not None]
    assert len(choice.alive) == 1 and choice.is_complete() and choice.allowed()[END]


def test_tool_choice_refuses_a_name_that_is_not_offered():
    voc = Vocabulary(TOY_TOKENS, [END])
    choice = S.ToolGrammars(voc).factory([BY_NAME["calculator"]], allow_none=False)()
    for token in greedy_segment(b'{"name": "', TOY_TOKENS):
        choice.advance(token)
    allowed = choice.allowed()
    assert allowed[TOY_TOKENS.index(b"calc")] and not allowed[TOY_TOKENS.index(b"get")]
    assert not allowed[TOY_TOKENS.index(b"none")]
    with pytest.raises(ValueError, match="fits no offered call"):
        choice.advance(TOY_TOKENS.index(b"get"))
    with pytest.raises(ValueError, match="is special"):
        choice.advance(END)


def test_tool_grammars_check_their_arguments():
    with pytest.raises(TypeError, match="must be a labkit.prompting.constrained.Vocabulary"):
        S.ToolGrammars(TOY_TOKENS)
    grammars = S.ToolGrammars(Vocabulary(TOY_TOKENS, [END]))
    with pytest.raises(ValueError, match="may not be named 'none'"):
        grammars.factory([{"name": "none", "parameters": {"type": "object", "properties": {}}}])
    with pytest.raises(ValueError, match="nothing could be written"):
        grammars.factory([], allow_none=False)
    assert grammars.masks(BY_NAME["get_time"]) is grammars.masks(dict(BY_NAME["get_time"]))  # built once


def test_real_vocabulary_lets_every_gold_call_through_when_its_tool_is_offered():
    from labkit.finetune.sft import smollm2_tokenizer

    tok = smollm2_tokenizer()
    grammars = S.ToolGrammars(Vocabulary(token_bytes(tok), [tok.eos_token_id]))
    for record in S.pick_records(HELDOUT, 1, seed=3):
        gold = expected_call(record)
        ids = tok.encode(json.dumps(gold), add_special_tokens=False)
        for offered, fits in ((TOOLS, True), ([t for t in TOOLS if t["name"] != gold["name"]], False)):
            choice, ok = grammars.factory(offered)(), True
            for token in ids:
                if not choice.allowed()[token]:
                    ok = False
                    break
                choice.advance(token)
            assert ok == fits, (record["id"], fits)
            if fits:
                assert choice.is_complete() and choice.allowed()[tok.eos_token_id]


# ------------------------------------------------------------------------------------------------ scoring
def case(category: str) -> S.Case:
    return [c for c in S.build_cases(HELDOUT[:1]) if c.category == category][0]


def test_relevance_counts_no_call_the_way_bfcl_does():
    rel = case("relevance")
    offered = rel.tools[0]["name"]
    gold = expected_call(HELDOUT[0])["name"]
    assert S.score_case(rel, '{"name": "none", "arguments": {}}') == {"abstain": True, "how": "none"}
    assert S.score_case(rel, "The weather is sunny.") == {"abstain": True, "how": "not a call"}
    assert S.score_case(rel, '{"name": "get', "length") == {"abstain": True, "how": "cut off"}
    assert S.score_case(rel, json.dumps({"name": offered, "arguments": {}})) == {"abstain": False,
                                                                              "how": "offered tool"}
    assert S.score_case(rel, json.dumps({"name": gold, "arguments": {}})) == {"abstain": False,
                                                                           "how": "tool not offered"}


def test_simple_and_multiple_use_chapter_9s_scorer_against_the_offered_tools():
    simple, multiple = case("simple"), case("multiple")
    gold = json.dumps(simple.expected)
    assert S.score_case(simple, gold) == {"json": True, "tool": True, "args": True, "valid": True,
                                          "how": "offered tool"}
    wrong = json.dumps({"name": "get_time", "arguments": {"city": "Paris"}})
    assert simple.expected["name"] != "get_time"
    assert S.score_case(simple, wrong)["how"] == "tool not offered"
    assert S.score_case(multiple, wrong) == {"json": True, "tool": False, "args": False, "valid": True,
                                             "how": "offered tool"}
    assert S.score_case(multiple, '{"name": "none", "arguments": {}}')["how"] == "none"
    with pytest.raises(TypeError, match="finish 'stop' or 'length'"):
        S.score_case(simple, gold, "eos")


def test_summarise_counts_and_wilson_intervals():
    rows = [{"category": "multiple", "score": {"json": True, "tool": t, "args": False, "valid": True,
                                               "how": "offered tool"}} for t in (True, True, False)]
    rows += [{"category": "relevance", "score": {"abstain": a, "how": h}}
             for a, h in ((True, "none"), (False, "offered tool"))]
    s = S.summarise(rows)
    assert set(s) == {"multiple", "relevance"}
    assert s["multiple"]["tool"] == {"k": 2, "n": 3, "rate": 2 / 3, "ci95": list(wilson_interval(2, 3))}
    assert s["relevance"]["abstain"]["k"] == 1 and s["relevance"]["how"] == {"none": 1, "offered tool": 1}


# ------------------------------------------------------------------------------------------------ running
def test_run_way_groups_by_system_turn_and_returns_rows_in_case_order():
    cases = S.build_cases(S.pick_records(HELDOUT, 1), ["simple", "multiple"])
    llm = ScriptedLLM(['{"name": "none", "arguments": {}}'])
    rows = S.run_way(llm, cases, progress=False)
    assert [r["id"] for r in rows] == [c.id for c in cases]
    systems = [p[0].content for p in llm.prompts]
    assert len(systems) == len(cases) and sum(a != b for a, b in zip(systems, systems[1:])) == 7  # 8 groups
    assert all(r["score"]["how"] == "none" and not r["score"]["tool"] for r in rows)
    with pytest.raises(TypeError, match="non-empty list of Case"):
        S.run_way(llm, [])
