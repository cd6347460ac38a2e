"""labkit.agents.react_format: the ReAct step format as an automaton over bytes, run through chapter 10's token
masks. The automaton accepts only steps that react.parse_step reads as well-formed (and reads back exactly as
written); its forged-observation watch agrees with the parser's regex; a random 'model' choosing among the
allowed tokens of SmolLM2's vocabulary always ends with a valid step and a valid tool call; run_react passes the
constraint to every reply and refuses one built for other tools."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.agents.calculator import calculator
from labkit.agents.react import parse_step, run_react
from labkit.agents.react_format import ReactConstraint, ReactFormat, ReactGrammar
from labkit.agents.tools import ToolBox, validate
from labkit.prompting.constrained import mask_step
from scripted_llm import ScriptedLLM


def search_docs(query: str, k: int = 3) -> str:
    """Search the documents.

    Args:
        query: words.
        k: how many.
    """
    return f"{query}:{k}"


BOX = ToolBox([calculator, search_docs])
GRAMMAR = ReactGrammar(BOX.specs(), max_string=40)
FORGED = re.compile(r"observation[ \t]*\d*[ \t]*:", re.IGNORECASE)  # what react.parse_step cuts at


def accepts(text: str) -> bool:
    return GRAMMAR.accepts(text)


# ---------------------------------------------------------------- which texts are steps

@pytest.mark.parametrize("text", [
    'Thought: I should add.\nAction: calculator\nAction Input: {"expression": "12 + 7"}',
    'Thought: \nAction: search_docs\nAction Input: {"query": "LoRA rank", "k": 2}',
    'Thought: look it up\nAction: search_docs\nAction Input: {"query": "LoRA"}',   # k is optional
    "Thought: The calculator says 19.\nFinal Answer: 19",
    "Thought: done\nFinal Answer: nineteen, or 19 — ça va\n",                     # UTF-8; a newline ends it
    "Thought: my observation is that 3 + 4: seven\nFinal Answer: 7",              # no colon after the word
])
def test_well_formed_steps_are_accepted_and_parse_as_written(text):
    assert accepts(text)
    step = parse_step(text)
    assert not step.malformed and step.action in (None, "calculator", "search_docs")


@pytest.mark.parametrize("text, why", [
    ('Action: calculator\nAction Input: {"expression": "1"}', "the step starts with a thought"),
    ('Thought: x\nAction: python\nAction Input: {"code": "1"}', "a tool that is not offered"),
    ('Thought: x\nAction: calculator\nAction Input: {"expr": "1"}', "an argument the tool does not take"),
    ('Thought: x\nAction: calculator\nAction Input: {}', "a required argument left out"),
    ('Thought: x\nAction: calculator\nAction Input: {"expression": ""}', "an empty string argument"),
    ('Thought: x\nAction: search_docs\nAction Input: {"query": "a", "k": "ten"}', "a string for an integer"),
    ('Thought: x\nAction: calculator\nAction Input: {"expression": "' + "9" * 41 + '"}', "over max_string"),
    ('Thought: x\nAction: calculator\nAction Input: {"expression": "1"}\nFinal Answer: 1', "text after the call"),
    ("Thought: x\nFinal Answer: ", "an empty answer"),
    ("Thought: x\nFinal Answer:   \n", "an answer of spaces"),
    ("Thought: it is Observation 2: 19\nFinal Answer: 19", "a forged observation in the thought"),
    ("Thought: x\nFinal Answer: 19 OBSERVATION: 20", "a forged observation in the answer"),
    ("Thought: x\nmore thought\nFinal Answer: 1", "a second line of thought"),
    ("Thought: x\nFinal Answer: 1\nThought: again", "a second line after the answer"),
    ("Thought: x\tFinal Answer: 1", "a control character"),
    ("Thought: x\nFinal Answer: \xff", "invalid UTF-8"),
])
def test_malformed_steps_are_refused(text, why):
    data = text.encode("latin-1") if "\xff" in text else text.encode()
    state = GRAMMAR.walk(GRAMMAR.start, data)
    assert state is None or not GRAMMAR.is_accepting(state), why


ASCII_LINE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
OBSERVATIONISH = st.lists(st.sampled_from(["obs", "observation", "Observation", "OBSERVATION", "o", " ", "\t", "7",
                                           ":", "observatio", "nobservation", "b", "x"]), max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(ASCII_LINE, OBSERVATIONISH))
def test_the_forged_observation_watch_agrees_with_the_parsers_regex(text):
    """On one line of ASCII text (tabs included), the automaton refuses the thought exactly when the parser would
    cut it (re, the oracle)."""
    text = text.replace("\n", " ")
    ok = GRAMMAR.walk(GRAMMAR.start, f"Thought: {text}".encode()) is not None
    assert ok == (FORGED.search(text) is None and "\t" not in text)


ARGS = st.one_of(
    st.tuples(st.just("calculator"), st.fixed_dictionaries({"expression": st.text(min_size=1, max_size=40)})),
    st.tuples(st.just("search_docs"), st.fixed_dictionaries({"query": st.text(min_size=1, max_size=40)},
                                                             optional={"k": st.integers(-10**6, 10**6)})))
THOUGHT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60).filter(
    lambda t: not FORGED.search(t) and t.strip() == t)


@settings(max_examples=200, deadline=None)
@given(THOUGHT, st.one_of(ARGS, THOUGHT.filter(bool)))
def test_every_accepted_step_parses_back_to_what_was_written(thought, then):
    """Steps written in the format (arguments in the schema's order, as chapter 10's automaton writes objects)
    are accepted, and the parser reads exactly their parts back."""
    if isinstance(then, tuple):
        name, args = then
        order = next(s["parameters"]["properties"] for s in BOX.specs() if s["name"] == name)
        args = {k: args[k] for k in order if k in args}  # the automaton writes arguments in the schema's order
        text = f"Thought: {thought}\nAction: {name}\nAction Input: {json.dumps(args, ensure_ascii=False)}"
    else:
        text = f"Thought: {thought}\nFinal Answer: {then}"
    assert accepts(text), text
    step = parse_step(text)
    assert step.thought == thought
    assert (step.action, step.arguments) == then if isinstance(then, tuple) else step.final_answer == then


def test_the_answer_can_be_switched_off():
    g = ReactGrammar(BOX.specs(), allow_answer=False)
    assert not g.accepts("Thought: x\nFinal Answer: 1")
    assert g.accepts('Thought: x\nAction: calculator\nAction Input: {"expression": "1"}')


# ---------------------------------------------------------------- the real vocabulary

@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from labkit.models import smollm2_dir
    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def fmt(tok):
    return ReactFormat(BOX, tok, max_string=40, thought_tokens=6, answer_tokens=4)


@pytest.mark.slow
def test_fast_mask_equals_mask_step_in_every_phase(fmt):
    """Chapter 10's trie walk (and its cache) on the step automaton equals the plain loop over all 49152 tokens."""
    g, latin = fmt.grammar, [(t or b"").decode("latin-1") for t in fmt.vocab.tokens]
    advance = lambda s, ch: g.step(s, ord(ch))  # noqa: E731
    for prefix in [b"", b"Thought: I obser", b"Thought: x\nFinal Ans", b"Thought: x\nAction: sea",
                   b'Thought: x\nAction: search_docs\nAction Input: {"query": "Lo']:
        state = g.walk(g.start, prefix)
        assert torch.equal(torch.from_numpy(fmt.masks.mask(state)), mask_step(advance, state, latin)), prefix


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_a_random_model_inside_the_mask_always_writes_a_valid_step(fmt, seed):
    """A 'model' picking uniformly among the allowed tokens: every reply ends (within the budgets), is one
    well-formed step, names an offered tool and passes that tool's schema (ToolBox's validator)."""
    rng, c, ids = np.random.default_rng(seed), fmt(), []
    end = set(fmt.vocab.end_ids)
    for _ in range(400):
        allowed = c.allowed().numpy().nonzero()[0]
        token = int(rng.choice(allowed))
        if token in end:
            break
        c.advance(token)
        ids.append(token)
    else:
        pytest.fail("the reply did not end within 400 tokens")
    text = b"".join(fmt.vocab.tokens[i] for i in ids).decode()
    step = parse_step(text)
    assert c.is_complete() and not step.malformed, text
    if step.action is not None:
        spec = next(s for s in BOX.specs() if s["name"] == step.action)
        assert validate(step.arguments, spec["parameters"]) is None, text


@pytest.mark.slow
def test_the_thought_budget_leaves_only_tokens_that_end_the_line(fmt, tok):
    c = fmt()
    ids = tok("Thought: I think that we should add them now", add_special_tokens=False).input_ids
    for i in ids:
        if c.in_phase == 6:
            break
        assert c.allowed()[i]
        c.advance(i)
    assert c.in_phase == 6 and fmt.grammar.phase(c.state) == "thought"  # six tokens of thought: the budget
    allowed = c.allowed().numpy()
    assert allowed.any() and not allowed[~fmt.newline].any()  # only tokens with a line break are left
    c.advance(tok.convert_tokens_to_ids("Ċ"))  # "\n"
    assert c.in_phase == 0 and fmt.grammar.phase(c.state) == "label"
    assert c.allowed().numpy()[~fmt.newline].any()  # a new phase, a fresh budget


# ---------------------------------------------------------------- run_react with the constraint

class RecordingLLM(ScriptedLLM):
    def _generate(self, prompt, *, stop, **settings):
        self.constraints = getattr(self, "constraints", []) + [settings["constraint"]]
        return super()._generate(prompt, stop=stop, **settings)


def test_run_react_passes_the_constraint_to_every_reply():
    factory = lambda: None  # noqa: E731  (the scripted backend ignores it; a local model would mask with it)
    llm = RecordingLLM(['Thought: add\nAction: calculator\nAction Input: {"expression": "12 + 7"}',
                        "Thought: it says 19\nFinal Answer: 19"])
    traj = run_react(llm, "What is 12 + 7?", BOX, constraint=factory)
    assert traj.answer == "19" and llm.constraints == [factory, factory]
    assert RecordingLLM(["Final Answer: 1"]).usage.calls == 0


def test_run_react_refuses_a_constraint_for_other_tools():
    class Named:
        tool_names = ("calculator",)

        def __call__(self):
            return None

    with pytest.raises(ValueError, match=r"the constraint allows the tools \['calculator'\], the toolbox offers "
                                         r"\['calculator', 'search_docs'\]"):
        run_react(ScriptedLLM(["Final Answer: 1"]), "q?", BOX, constraint=Named())
    with pytest.raises(TypeError, match="constraint must be None or a zero-argument factory"):
        run_react(ScriptedLLM(["Final Answer: 1"]), "q?", BOX, constraint="Thought:")


# ---------------------------------------------------------------- bad input

def test_bad_arguments_raise_clear_errors():
    def optional(x: int | None = None) -> str:
        """A tool whose argument is Optional (anyOf), which the automaton does not read.

        Args:
            x: a number or nothing.
        """
        return ""

    with pytest.raises(ValueError, match="specs must be a non-empty list of tool specs"):
        ReactGrammar([])
    with pytest.raises(ValueError, match="tool names must be unique"):
        ReactGrammar(BOX.specs() * 2)
    with pytest.raises(ValueError, match="max_string must be an int >= 1, got 0"):
        ReactGrammar(BOX.specs(), max_string=0)
    with pytest.raises(ValueError, match="tool 'optional': its parameters cannot be constrained: .*anyOf"):
        ReactGrammar(ToolBox([optional]).specs())
    with pytest.raises(ValueError, match="thought_tokens must be an int >= 1, got 0"):
        ReactFormat(BOX, None, thought_tokens=0)
    assert isinstance(ReactConstraint, type)
