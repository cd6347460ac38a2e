"""labkit.agents.memory: the eviction policy (budget, protected messages, oldest first, minimal) on random
conversations, the wrong policies a lab might write caught by the same checks, MemGPT paging (the budget holds
after every operation, a fact planted early is evicted and then found by archival_search), core-memory limits,
the memory functions as ToolBox tools, and clear errors for bad input. No model: the default word counter."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.agents.memory import (Archive, CoreMemory, PagedMemory, TokenWindow, context_tokens, count_words,
                                  fit_to_budget)
from labkit.agents.tools import ToolBox, function_schema
from labkit.llm.base import Message


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def policy_violation(fit, messages: list[Message], budget: int, count=count_words, per_message: int = 0) -> str | None:
    """Why `fit` breaks the eviction policy on this input, or None. Used on labkit's policy and on the mutants."""
    sizes = {id(m): count(m.content) + per_message for m in messages}
    protected = [m for i, m in enumerate(messages) if m.role == "system" or i == len(messages) - 1]
    try:
        kept, evicted = fit(messages, budget, count, per_message)
    except ValueError:
        if sum(sizes[id(m)] for m in protected) > budget:
            return None  # right: the system prompt and the newest message alone do not fit
        raise
    if sum(sizes[id(m)] for m in protected) > budget:
        return "the system prompt and the newest message do not fit, and it answered instead of raising"
    if sorted(map(id, kept + evicted)) != sorted(map(id, messages)):
        return "kept + evicted is not the input (a message was lost, duplicated or invented)"
    if [id(m) for m in kept] != [id(m) for m in messages if any(m is k for k in kept)]:
        return "kept is not in the input's order"
    if sum(sizes[id(m)] for m in kept) > budget:
        return f"kept takes {sum(sizes[id(m)] for m in kept)} tokens, over the budget {budget}"
    if any(m.role == "system" for m in evicted):
        return "a system message was evicted"
    if messages and any(m is messages[-1] for m in evicted):
        return "the newest message was evicted"
    position = {id(m): i for i, m in enumerate(messages)}
    kept_free = [position[id(m)] for m in kept if m.role != "system" and m is not messages[-1]]
    if evicted and kept_free and max(position[id(m)] for m in evicted) > min(kept_free):
        return "a newer message was evicted while an older one was kept (not oldest first)"
    if evicted and sum(sizes[id(m)] for m in kept) + sizes[id(evicted[-1])] <= budget:
        return "more was evicted than needed (the last evicted message would still have fit)"
    return None


conversations = st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool", "system"]), st.integers(0, 15)),
                         max_size=25)


@settings(max_examples=400, deadline=None)
@given(spec=conversations, system=st.integers(0, 10) | st.none(), budget=st.integers(1, 120),
       per_message=st.integers(0, 3))
def test_fit_to_budget_keeps_the_policy_on_random_conversations(spec, system, budget, per_message):
    messages = ([Message("system", words(system, "s"))] if system is not None else []) + \
        [Message(role, words(n, f"m{i}_")) for i, (role, n) in enumerate(spec)]
    protected = [m for i, m in enumerate(messages) if m.role == "system" or i == len(messages) - 1]
    if context_tokens(protected, per_message=per_message) > budget:
        with pytest.raises(ValueError, match="never evicted or truncated"):
            fit_to_budget(messages, budget, per_message=per_message)
    assert policy_violation(fit_to_budget, messages, budget, per_message=per_message) is None


# wrong policies, as a student might write them (the lab's mutants): each must be caught by the checks above

def _drops_system(messages, budget, count, per_message):
    kept, evicted = list(messages), []
    while kept and sum(count(m.content) + per_message for m in kept) > budget and len(kept) > 1:
        evicted.append(kept.pop(0))  # the system prompt is the oldest message: it goes first
    return kept, evicted


def _drops_newest(messages, budget, count, per_message):
    kept, evicted = list(messages), []
    for m in list(messages):  # oldest first, but the newest is not protected
        if sum(count(k.content) + per_message for k in kept) <= budget:
            break
        if m.role != "system":
            kept.remove(m)
            evicted.append(m)
    return kept, evicted


def _newest_first(messages, budget, count, per_message):
    kept, evicted = list(messages), []
    for m in reversed(messages[:-1]):
        if sum(count(k.content) + per_message for k in kept) <= budget:
            break
        if m.role != "system":
            kept.remove(m)
            evicted.insert(0, m)
    return kept, evicted


def _evicts_everything(messages, budget, count, per_message):
    if sum(count(m.content) + per_message for m in messages) <= budget:
        return list(messages), []
    evicted = [m for m in messages[:-1] if m.role != "system"]
    return [m for m in messages if all(m is not e for e in evicted)], evicted


@pytest.mark.parametrize("mutant", [_drops_system, _drops_newest, _newest_first, _evicts_everything])
def test_the_policy_checks_catch_wrong_eviction_policies(mutant):
    rng = random.Random(0)
    found = None
    for _ in range(200):
        messages = [Message("system", words(rng.randint(1, 6), "s"))] + [
            Message(rng.choice(["user", "assistant"]), words(rng.randint(1, 12), f"m{i}_"))
            for i in range(rng.randint(1, 8))]
        budget = rng.randint(1, 60)
        if found := policy_violation(mutant, messages, budget):
            break
    assert found is not None, f"{mutant.__name__} passed every check"


def test_eviction_is_oldest_first_and_stops_as_soon_as_it_fits():
    msgs = [Message("system", "s s"), Message("user", "a a a"), Message("assistant", "b b"),
            Message("user", "c c c c"), Message("assistant", "d")]
    kept, evicted = fit_to_budget(msgs, 10)  # 2 + 3 + 2 + 4 + 1 = 12: drop "a a a" (3) -> 9
    assert [m.content for m in evicted] == ["a a a"]
    assert [m.content for m in kept] == ["s s", "b b", "c c c c", "d"]
    kept, evicted = fit_to_budget(msgs, 3)  # only the protected pair (2 + 1) is left
    assert [m.content for m in kept] == ["s s", "d"] and len(evicted) == 3
    assert fit_to_budget([], 5) == ([], [])
    assert fit_to_budget([{"role": "user", "content": "x y"}], 2) == ([Message("user", "x y")], [])


# ------------------------------------------------------------------------------------------------------------
# the short-term window

@settings(max_examples=200, deadline=None)
@given(turns=st.lists(st.integers(0, 20), max_size=30), system=st.integers(0, 8), budget=st.integers(1, 80))
def test_token_window_holds_the_budget_after_every_turn(turns, system, budget):
    if system > budget:
        with pytest.raises(ValueError, match="over the budget"):
            TokenWindow(budget, system=words(system, "s"))
        return
    window = TokenWindow(budget, system=words(system, "s"))
    history = []
    for i, n in enumerate(turns):
        turn = Message("user" if i % 2 == 0 else "assistant", words(n, f"t{i}_"))
        before = list(window.messages)
        if system + n > budget:
            with pytest.raises(ValueError, match="over the budget"):
                window.add(turn.role, turn.content)
            assert window.messages == before  # a refused turn changes nothing
            continue
        out = window.add(turn.role, turn.content)
        history.append(turn)
        assert window.tokens() <= budget
        assert window.messages[0] == Message("system", words(system, "s"))
        assert window.messages[-1] == turn
        assert window.evicted[len(window.evicted) - len(out):] == out
        # oldest first and nothing lost: the evicted turns, then the window's, are the history in order
        assert window.evicted + window.messages[1:] == history


def test_token_window_counts_with_the_given_counter_and_per_message_cost():
    window = TokenWindow(20, system="abcd", count=len, per_message=2)  # characters, + 2 per message
    window.add("user", "x" * 8)  # 6 + 10 = 16
    assert window.tokens() == 16
    assert window.add("assistant", "y" * 3) == [Message("user", "x" * 8)]  # 16 + 5 > 20: the user turn goes
    assert window.tokens() == 11


def test_token_window_without_a_system_prompt_keeps_the_newest_turn():
    window = TokenWindow(5)
    window.add("user", "a b c")
    assert window.add("assistant", "d e f") == [Message("user", "a b c")]
    assert window.messages == [Message("assistant", "d e f")]
    with pytest.raises(ValueError, match="take 6 tokens, over the budget of 5"):
        window.add("user", words(6))
    assert window.messages == [Message("assistant", "d e f")]


# ------------------------------------------------------------------------------------------------------------
# MemGPT paging

def test_archive_ranks_by_bm25_and_tags_each_entry_with_its_source():
    archive = Archive()
    archive.insert("the cat sat on the mat")
    archive.insert("user: my cat is called Pixel, a grey cat", source="evicted")
    archive.insert("the weather is fine")
    assert [e.id for e in archive.search("grey cat", k=2)] == [1, 0]
    assert archive.search("cat", k=1)[0].source == "evicted"
    assert archive.search("dog") == []
    with pytest.raises(ValueError, match="source must be one of"):
        archive.insert("x", source="dreamt")

ops = st.lists(st.one_of(st.tuples(st.just("add"), st.integers(0, 25)), st.tuples(st.just("core"), st.integers(1, 30)),
                         st.tuples(st.just("insert"), st.integers(1, 10))), max_size=30)


@settings(max_examples=150, deadline=None)
@given(operations=ops, budget=st.integers(60, 160))
def test_paged_memory_holds_the_budget_after_every_operation(operations, budget):
    memory = PagedMemory("You are a careful assistant.", budget, core=CoreMemory(limit=400))
    system_start = memory.context()[0].content.split("\n")[0]
    added = []
    for i, (op, n) in enumerate(operations):
        try:
            if op == "add":
                memory.add("user", words(n, f"a{i}_"))
                added.append(Message("user", words(n, f"a{i}_")))
            elif op == "core":
                memory.core_memory_append("human", words(n, f"c{i}_"))
            else:
                memory.archival_insert(words(n, f"i{i}_"))
        except ValueError as e:  # refused: too big for the budget or the block limit; nothing may change
            assert "over the budget" in str(e) or "over its limit" in str(e)
        assert memory.tokens() <= budget
        assert memory.context()[0].role == "system"
        assert memory.context()[0].content.split("\n")[0] == system_start
        if op == "add" and added and added[-1].content == words(n, f"a{i}_"):
            assert memory.queue[-1] == added[-1]  # the newest message is never evicted
        assert memory.recall + memory.queue == added  # evicted oldest first, and nothing lost
        assert len(memory.archive) >= len(memory.recall)


def test_a_fact_planted_early_is_evicted_and_then_recalled_by_archival_search():
    memory = PagedMemory("You are a helpful assistant.", budget=150)
    memory.add("user", "Remember this: my locker code is 4721 and my cat is called Pixel.")
    memory.add("assistant", "Noted.")
    for i in range(40):
        memory.add("user", f"Question {i}: what is {i} plus {i}?")
        memory.add("assistant", f"It is {2 * i}.")
        assert memory.tokens() <= 150
    assert not any("Pixel" in m.content for m in memory.context())  # paged out of the main context
    assert any("Pixel" in m.content for m in memory.recall)  # ... but not lost
    hits = memory.archive.search("what is my cat called", k=1)
    assert "locker code is 4721" in hits[0].text and hits[0].source == "evicted"
    box = ToolBox(memory.tools())  # the same recall, as the agent would make it
    assert "Pixel" in box.call("archival_search", {"query": "locker code", "k": 1})


def test_paged_memory_is_deterministic():
    def run():
        memory = PagedMemory("sys", budget=70)
        for i in range(30):
            memory.add("user", words(i % 7, f"x{i}_"))
            if i % 5 == 0:
                memory.core_memory_append("human", f"fact {i}")
        return memory.context(), memory.recall, memory.archival_search("x3_0 x4_1")
    assert run() == run()


def test_core_memory_edits_respect_their_limits():
    core = CoreMemory({"human": "Name: Ada"}, limit=30)
    core.append("human", "Likes tea")
    assert core.blocks["human"] == "Name: Ada\nLikes tea"
    with pytest.raises(ValueError, match="over its limit of 30"):
        core.append("human", "Lives in a lighthouse")
    assert core.blocks["human"] == "Name: Ada\nLikes tea"  # a refused edit changes nothing
    core.replace("human", "tea", "coffee")
    assert core.blocks["human"] == "Name: Ada\nLikes coffee"
    core.replace("human", "\nLikes coffee", "")
    assert core.blocks["human"] == "Name: Ada"
    with pytest.raises(ValueError, match="over its limit"):
        core.replace("human", "Ada", "A" * 40)
    with pytest.raises(ValueError, match="occurs 0 times"):
        core.replace("human", "Bob", "Eve")
    core.append("human", "Ada")
    with pytest.raises(ValueError, match="occurs 2 times"):
        core.replace("human", "Ada", "Eve")
    with pytest.raises(ValueError, match="no core memory block 'pet'; the blocks are human"):
        core.append("pet", "a dog")
    with pytest.raises(ValueError, match="non-empty"):
        core.append("human", "  ")
    with pytest.raises(ValueError, match="over its limit"):
        CoreMemory({"human": "x" * 31}, limit=30)
    assert "<human>\nName: Ada\nAda\n</human>" in core.render()


def test_a_core_edit_pages_out_old_messages_or_is_undone_when_it_cannot_fit():
    memory = PagedMemory("sys", budget=80)  # the system part takes 45 of the 80
    memory.add("user", words(10, "old"))
    memory.add("user", words(10, "new"))
    room = 80 - memory.tokens()
    memory.core_memory_append("human", words(room + 1, "f"))  # one word too many: the oldest message goes
    assert memory.tokens() <= 80
    assert [m.content for m in memory.recall] == [words(10, "old")]
    with pytest.raises(ValueError, match="over the budget"):  # no room even beside the newest message alone
        memory.core_memory_append("human", words(20, "g"))
    assert "g0" not in memory.core.blocks["human"] and memory.queue[-1].content == words(10, "new")


def test_memory_functions_are_tools_the_toolbox_validates():
    memory = PagedMemory("sys", budget=200)
    tools = memory.tools()
    assert [t.name for t in tools] == ["core_memory_append", "core_memory_replace", "archival_insert",
                                       "archival_search"]
    for t in tools:
        schema = function_schema(t.fn)
        assert schema == t.parameters and schema["additionalProperties"] is False
        assert t.description and all("description" in p for p in schema["properties"].values())
    assert function_schema(memory.archival_search)["properties"]["k"] == {
        "type": "integer", "description": "how many entries to return (1 to 20).", "default": 3}
    box = ToolBox(tools)
    assert box.call("core_memory_append", {"label": "human", "content": "Name: Ada"}).startswith("appended")
    assert "Name: Ada" in memory.context()[0].content
    assert box.call("core_memory_append", {"label": "pet", "content": "x"}) == (
        "error: tool 'core_memory_append' failed: ValueError: no core memory block 'pet'; "
        "the blocks are persona, human")
    assert box.call("archival_insert", {"text": "x"}) == "error: missing required argument 'content'"
    assert box.call("archival_insert", {"content": "The meeting moved to Thursday"}) == \
        "saved to archival memory as entry 0"
    assert box.call("archival_search", {"query": "meeting", "k": "two"}).startswith("error: argument 'k'")
    assert box.call("archival_search", {"query": "meeting"}) == "[0, inserted] The meeting moved to Thursday"
    assert box.call("archival_search", {"query": "zebra"}) == "no archival entry contains any word of 'zebra'"
    assert "k must be an int from 1 to 20" in box.call("archival_search", {"query": "meeting", "k": 0})


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="budget must be an int"):
        TokenWindow(True)
    with pytest.raises(TypeError, match="budget must be an int"):
        fit_to_budget([], "10")
    with pytest.raises(ValueError, match="budget must be >= 1"):
        PagedMemory("sys", 0)
    with pytest.raises(TypeError, match="count must be a function"):
        TokenWindow(10, count="words")
    with pytest.raises(TypeError, match="count must return an int"):
        TokenWindow(10, system="a b", count=lambda s: len(s) / 4)
    with pytest.raises(ValueError, match="count must return a number >= 0"):
        fit_to_budget([Message("user", "x")], 10, count=lambda s: -1)
    with pytest.raises(ValueError, match="per_message must be an int >= 0"):
        fit_to_budget([], 10, per_message=-1)
    with pytest.raises(ValueError, match="messages must be a non-empty list"):
        fit_to_budget("hello", 10)
    with pytest.raises(ValueError, match="the system prompt is set once"):
        TokenWindow(10).add("system", "new rules")
    with pytest.raises(ValueError, match="role must be one of"):
        PagedMemory("sys", 100).add("narrator", "x")
    with pytest.raises(TypeError, match="content must be a str"):
        TokenWindow(10).add("user", 42)
    with pytest.raises(ValueError, match="over the budget of 20"):
        PagedMemory(words(30), 20)  # the system part alone does not fit
    memory = PagedMemory("sys", 100)
    with pytest.raises(ValueError, match="at least one word"):
        memory.archival_insert("  ...  ")
    with pytest.raises(ValueError, match="no words to search for"):
        memory.archival_search("?!")
    with pytest.raises(TypeError, match="query must be a str"):
        memory.archive.search(["cat"])
    assert memory.archival_search("anything") == "no archival entry contains any word of 'anything'"


# ---------------------------------------------------------------- with a model: the tokenizer counter, paging study

from labkit.agents.memory import (SCENARIOS, SMALL_TALK, chat_counter, conversation, paged_memory,  # noqa: E402
                                  paging_episode, recalled, scenario_row, summarize_paging)
from scripted_llm import ScriptedLLM  # noqa: E402
from test_llm_local import tiny  # noqa: E402  (a tiny Llama with a one-token-per-character chat tokenizer)


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), st.text("ab <>|\n", max_size=12)),
                      max_size=6), system=st.text("xyz ", max_size=10))
def test_chat_counter_bounds_the_real_prompt_and_is_exact_for_assistant_turns(turns, system):
    llm = tiny()
    count, per_message, reply_prompt = chat_counter(llm)
    assert (per_message, reply_prompt) == (len("assistant") + 4, 21 - 13)  # the character template's wrapping
    messages = [Message("system", system), *(Message(r, c) for r, c in turns)]
    real, counted = len(llm.prompt_ids(messages)), context_tokens(messages, count, per_message) + reply_prompt
    assert real <= counted
    if all(r == "assistant" for r, _ in turns):
        assert real == counted


def test_chat_counter_needs_a_tokenizer():
    with pytest.raises(TypeError, match="needs a backend with a tokenizer"):
        chat_counter(ScriptedLLM(["x"]))


def test_recalled_matches_whole_words_only():
    assert recalled("Your locker code is 4821.", "4821")
    assert recalled("it is GERALD", "Gerald")
    assert not recalled("48213", "4821") and not recalled("B170", "B17") and not recalled("", "6")
    assert not recalled(None, "6") and recalled("level 6.", "6") and not recalled("level 16", "6")


def test_the_scenarios_plant_a_fact_the_small_talk_pages_out():
    assert len({s.id for s in SCENARIOS}) == len(SCENARIOS)
    for s in SCENARIOS:
        assert recalled(s.fact, s.answer) and not recalled(s.question, s.answer)
        assert not any(recalled(text, s.answer) for pair in SMALL_TALK for text in pair)  # only the fact holds it
        memory = paged_memory(s, room=60)
        assert memory.tokens() <= memory.budget
        assert not any(s.fact in m.content for m in memory.context()) and s.fact in memory.recall[0].content
        assert s.fact in memory.archive.search(s.question, k=3)[0].text  # BM25 finds it from the question alone
    assert [m.role for m in conversation(SCENARIOS[0], 2)] == ["user", "assistant"] * 3


SEARCH = 'Thought: search.\nAction: archival_search\nAction Input: {"query": "locker code"}'


def test_paging_episode_searches_then_answers_within_the_budget():
    memory = paged_memory(SCENARIOS[0], room=60)
    llm = ScriptedLLM([SEARCH, "Thought: found.\nFinal Answer: 4821"])
    out = paging_episode(llm, memory, SCENARIOS[0].question)
    assert out["answer"] == "4821" and out["model_calls"] == 2
    assert [s["kind"] for s in out["steps"]] == ["action", "answer"]
    assert SCENARIOS[0].fact in out["steps"][0]["observation"]
    assert out["largest_context"] <= out["budget"] == memory.budget
    assert out["completion_tokens"] == len(SEARCH.split()) + 5 and out["prompt_tokens"] > 0
    assert "Final Answer: 4821" not in llm.prompts[0][-1].content and "Question:" in llm.prompts[0][-1].content


def test_paging_episode_turns_junk_into_observations_and_stops_at_its_limit():
    memory = paged_memory(SCENARIOS[1], room=80)
    out = paging_episode(ScriptedLLM(["I do not know.", 'Action: nope\nAction Input: {}']), memory, "Who?",
                         max_steps=3)
    assert out["answer"] is None and out["model_calls"] == 3
    assert [s["kind"] for s in out["steps"]] == ["malformed", "action", "malformed"]
    assert out["steps"][1]["observation"].startswith("error:")  # an unknown tool: an observation, not a crash
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        paging_episode(ScriptedLLM(["x"]), memory, "Who?", max_steps=0)


def test_a_scripted_run_is_summarised_by_counting():
    replies = ["Your code is 4821.", "I forgot.", "It is 4821", SEARCH, "Thought: ok\nFinal Answer: 4821"]
    rows = [scenario_row(ScriptedLLM(replies), SCENARIOS[0], room=60)]
    summary = summarize_paging({"scenarios": rows})
    assert {c: v["recalled"] for c, v in summary["conditions"].items()} == {"full": 1, "window": 0,
                                                                            "retrieval": 1, "agent": 1}
    assert summary["agent"]["searched_first"] == summary["agent"]["search_found_fact"] == 1
    assert summary["agent"]["tool_calls"] == {"archival_search": 1}
    assert summary["window_fact_evicted"] == summary["search_found"] == 1
    assert summary["conditions"]["agent"]["model_calls"] == 2
